"""How to choose among the most similar pool entries (the study behind edge_smsp.transfer.entry_probe), pool tasks only.

For every pool task and each of its 5 most similar entries (prototype similarity, leave-one-out), cheap scores
of the entry's own model on 512 training images of the task (LEEP, LogME, cosine nearest-class-mean accuracy,
a Fisher ratio; each also after adaptive BN), against the accuracy that adapting from that entry reached
(`loo --exp probe05`: the variants ...,pick1..pick4 and the top entry itself). Prints, per score, the mean accuracy
when the score chooses among the top 2/3/5, its mean within-task Spearman correlation with the accuracy, and the
oracle. Scores are cached in results/probe.jsonl.
Usage: .venv/bin/python -m benchmarks.research.probe_scores
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from benchmarks.research import common, rank

POOL = (0.5, 1000)
CANDIDATES = 5
BASE = "smsp[proto,k1,top1,bn+imprint,pool0.5@1000{}]"
SCORES = ("proto", "leep", "logme", "ncm", "fisher", "logme_bn", "ncm_bn", "fisher_bn")


def fisher_ratio(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Between-class over within-class scatter (traces)."""
    values = features.to(torch.float64)
    centre = values.mean(0)
    between = within = 0.0
    for label in range(num_classes):
        members = values[labels == label]
        between += float(((members.mean(0) - centre) ** 2).sum()) * len(members)
        within += float(((members - members.mean(0)) ** 2).sum())
    return between / within


def candidate_scores(classes: tuple[int, ...]) -> list[dict[str, Any]]:
    from benchmarks.research.transfer_scores import logme
    from edge_smsp.training.features import penultimate_features, task_sample
    from edge_smsp.training.finetune import predict_proba
    from edge_smsp.training.recovery import adaptive_bn
    from edge_smsp.transfer.entry_probe import nearest_mean_accuracy
    from edge_smsp.transfer.leep_score import leep

    similarity = rank.cached_scores("proto", classes, 32, POOL)
    entries = rank.entry_models(32, *POOL)
    task = common.task(classes, 32)
    images, labels = task_sample(task, 512, 0)
    found = []
    for pick, task_id in enumerate(sorted(similarity, key=similarity.get, reverse=True)[:CANDIDATES]):
        model = copy.deepcopy(entries[task_id][1])
        record = {"pick": pick, "entry": task_id, "proto": similarity[task_id]}
        record["leep"] = leep(predict_proba(model, images), labels.numpy())
        for suffix in ("", "_bn"):
            if suffix:
                adaptive_bn(model, images)
            features = penultimate_features(model, images)
            record["logme" + suffix] = logme(features, labels)
            record["ncm" + suffix] = nearest_mean_accuracy(features, labels, len(classes))
            record["fisher" + suffix] = fisher_ratio(features, labels, len(classes))
        found.append(record)
    return found


def main() -> None:
    from scipy.stats import spearmanr

    common.single_thread()
    cache = common.Results("probe")
    runs = common.Results("loo").load()
    table = {}
    for classes in common.pool_tasks():
        name = "-".join(map(str, classes))
        key = f"px32|r0.5-it1000|{name}"
        if key not in cache.load():
            cache.put({"key": key, "candidates": candidate_scores(classes)})
        candidates = cache.load()[key]["candidates"]
        accuracy = [
            runs[f"px32|{BASE.format(f',pick{p}' if p else '')}|r0.5|it100|{name}"]["val_accuracy"]
            for p in range(CANDIDATES)
        ]
        table[name] = (accuracy, candidates)
    for score in SCORES:
        chosen = {
            m: np.mean([acc[int(np.argmax([c[score] for c in cands[:m]]))] for acc, cands in table.values()])
            for m in (2, 3, 5)
        }
        correlation = np.nanmean(
            [spearmanr(acc, [c[score] for c in cands])[0] for acc, cands in table.values()]
        )
        print(
            f"{score:10s} choose among top 2/3/5: "
            + " / ".join(f"{100 * value:.2f}" for value in chosen.values())
            + f" %; within-task Spearman {correlation:+.2f}"
        )
    for m in (1, 3, 5):
        print(f"oracle top {m}: {100 * np.mean([max(acc[:m]) for acc, _ in table.values()]):.2f} %")


if __name__ == "__main__":
    main()
