"""Phase A of the held-out study, summarised from the research leave-one-out runs on the pool tasks
(results/loo.jsonl): how the probe was chosen, and what else was tried around the default without being adopted.
Only pool tasks appear here; `benchmarks.heldout` puts these tables beside the held-out results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks.stats import sign_flip_p


def probe_choice(
    loo_runs: Mapping[str, Mapping[str, Any]], pool_tasks: Sequence[Sequence[int]]
) -> list[dict]:
    """Phase A of the probe: per ratio, leave-one-out on the pool tasks (research results/loo.jsonl), the top
    entry's weights with recipe `recover` (bn+imprint) without and with the probe of the 3 most similar."""
    found = []
    for ratio in ("0.5", "0.7"):
        cells = {}
        for suffix in ("", ",probe3"):
            variant = f"smsp[proto,k1,top1,bn+imprint,pool{ratio}@1000{suffix}]"
            cells[suffix] = {
                task: loo_runs[key]["val_accuracy"]
                for task in ("-".join(map(str, classes)) for classes in pool_tasks)
                if (key := f"px32|{variant}|r{ratio}|it100|{task}") in loo_runs
            }
        if len(cells[""]) == len(cells[",probe3"]) == len(pool_tasks):
            diffs = [100 * (cells[",probe3"][t] - cells[""][t]) for t in cells[""]]
            found.append(
                {
                    "ratio": float(ratio),
                    "tasks": len(diffs),
                    "most_similar": 100 * float(np.mean(list(cells[""].values()))),
                    "probe3": 100 * float(np.mean(list(cells[",probe3"].values()))),
                    "better": sum(d > 0 for d in diffs),
                    "worse": sum(d < 0 for d in diffs),
                    "p": sign_flip_p(diffs),
                }
            )
    return found


# Tried on the pool tasks around the probed default at batch 32, r = 0.5 (benchmarks.research.loo --exp
# default05, pool05_2000 and batch05): label -> the loo variant's name. ADOPTED is the one the product took.
DEFAULT_LOO = "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,probe3]"
ADOPTED = "batch 128 (4x), learning rate 0.04 (scaled; adopted)"
TRIED_AFTER_PROBE = {
    "batch 64 (2x the images per iteration), learning rate 0.01": (
        "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,probe3,batch64]"
    ),
    "batch 64, learning rate 0.02 (scaled with the batch)": (
        "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,lr0.02,probe3,batch64]"
    ),
    "batch 128 (4x), learning rate 0.02": "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,lr0.02,probe3,batch128]",
    ADOPTED: "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,lr0.04,probe3,batch128]",
    "SGD learning rate 0.005 (default 0.01)": "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,lr0.005,probe3]",
    "SGD learning rate 0.02": "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,lr0.02,probe3]",
    "AdamW (lr 1e-3, wd 0.01)": "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,adamw,probe3]",
    "label smoothing 0.1": "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,probe3,ls0.1]",
    "2048 recipe images (default 512)": "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,probe3,samples2048]",
    "first 25 % of the blocks frozen": "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,probe3,freeze0.25]",
    "first 50 % of the blocks frozen": "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,probe3,freeze0.5]",
    "distillation 0.2 from the unpruned backbone": "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,probe3,kd0.2]",
    "distillation 0.5 from the unpruned backbone": "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,probe3,kd0.5]",
    "distillation 0.5 from the 3 probed entries": (
        "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,probe3,kd0.5,teacher-entries]"
    ),
    "distillation 0.8 from the 3 probed entries": (
        "smsp[proto,k1,top1,bn+imprint,pool0.5@1000,probe3,kd0.8,teacher-entries]"
    ),
    "LP-FT (linear probe before fine-tuning)": "smsp[proto,k1,top1,bn+imprint+probe,pool0.5@1000,probe3]",
    "plain recipe (no adaptive BN, no imprint)": "smsp[proto,k1,top1,plain,pool0.5@1000,probe3]",
    "pool entries trained @2000": "smsp[proto,k1,top1,bn+imprint,pool0.5@2000,probe3]",
}


def tried_after_probe(
    loo_runs: Mapping[str, Mapping[str, Any]], pool_tasks: Sequence[Sequence[int]]
) -> list[dict]:
    """Each of TRIED_AFTER_PROBE against the default on the pool tasks (leave-one-out, r = 0.5, @100)."""

    def runs(variant: str) -> dict[str, Mapping[str, Any]]:
        return {
            task: loo_runs[key]
            for task in ("-".join(map(str, classes)) for classes in pool_tasks)
            if (key := f"px32|{variant}|r0.5|it100|{task}") in loo_runs
        }

    def accuracies(variant: str) -> dict[str, float]:
        return {task: run["val_accuracy"] for task, run in runs(variant).items()}

    reference = accuracies(DEFAULT_LOO)
    default_seconds = float(np.mean([run["seconds"]["total"] for run in runs(DEFAULT_LOO).values()]))
    found = []
    for label, variant in TRIED_AFTER_PROBE.items():
        cell = accuracies(variant)
        if len(cell) != len(pool_tasks) or len(reference) != len(pool_tasks):
            continue
        diffs = [100 * (cell[task] - reference[task]) for task in reference]
        found.append(
            {
                "change": label,
                "accuracy": 100 * float(np.mean(list(cell.values()))),
                "difference": float(np.mean(diffs)),
                "better": sum(d > 0 for d in diffs),
                "worse": sum(d < 0 for d in diffs),
                "p": sign_flip_p(diffs),
                "seconds": float(np.mean([run["seconds"]["total"] for run in runs(variant).values()])),
                "default_seconds": default_seconds,
            }
        )
    return found
