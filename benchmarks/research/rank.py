"""Similarity estimators on pool tasks, leave-one-out: scores of the other 11 entries for each pool task.

Scores are cached in results/rankings.jsonl (key: pool, estimator, task, threads, sample seed); `quality`
summarises how often the top-ranked entry is one sharing the most classes with the task.
Usage: .venv/bin/python -m benchmarks.research.rank --pool 0.5:400 --estimator leep --estimator proto ...
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from benchmarks.research import common

ESTIMATORS = ("leep", "logme", "proto", "proto-p1", "proto-raw")
_MODELS: dict[tuple, Any] = {}
_DESCRIPTORS: dict[tuple, np.ndarray] = {}


def entry_models(size: int, ratio: float, iters: int) -> dict[str, Any]:
    """task_id -> (entry, pruned fine-tuned model) of a research pool, loaded once per process."""
    from edge_smsp.pool import Pool

    key = (size, ratio, iters)
    if key not in _MODELS:
        with Pool(common.pool_path(size, ratio, iters), create=False) as pool:
            entries = pool.entries()
            models = load_entry_models(pool, [entry.id for entry in entries])
        _MODELS[key] = {
            entry.task.task_key: (entry, model) for entry, model in zip(entries, models, strict=True)
        }
    return _MODELS[key]


def descriptor(classes: Sequence[int], size: int, seed: int = 0) -> np.ndarray:
    """Backbone class prototypes of a pool task (the descriptor stored per entry at build time)."""
    from edge_smsp.transfer.task_descriptor import task_descriptor

    key = (tuple(classes), size, seed)
    if key not in _DESCRIPTORS:
        _DESCRIPTORS[key] = task_descriptor(common.backbone(size), common.task(classes, size), seed=seed)
    return _DESCRIPTORS[key]


def scores(
    estimator: str, classes: Sequence[int], size: int, pool: tuple[float, int], seed: int = 0
) -> dict[str, float]:
    """Similarity of every other pool entry to the pool task `classes` (higher = more similar)."""
    from benchmarks.research.transfer_scores import logme
    from edge_smsp.data.descriptors import DEFAULT_POWER, descriptor_centre, prototype_similarity
    from edge_smsp.training.features import penultimate_features, task_sample
    from edge_smsp.training.finetune import predict_proba
    from edge_smsp.transfer.leep_score import leep

    task = common.task(classes, size)
    others = [c for c in common.pool_tasks() if c != tuple(classes)]
    if estimator.startswith("proto"):
        query = descriptor(classes, size, seed)
        descriptors = {c: descriptor(c, size, 0) for c in others}
        centre = descriptor_centre(list(descriptors.values())) if estimator != "proto-raw" else None
        power = {"proto": DEFAULT_POWER}.get(estimator, 1.0)
        return {_task_id(c): prototype_similarity(query, d, centre, power) for c, d in descriptors.items()}
    images, labels = task_sample(task, common.SIMILARITY_SAMPLES, seed)
    result = {}
    for task_id, (_entry, model) in entry_models(size, *pool).items():
        if task_id == task.task_id:
            continue
        if estimator == "leep":
            result[task_id] = leep(predict_proba(model, images), labels.numpy())
        elif estimator == "logme":
            result[task_id] = logme(penultimate_features(model, images), labels)
        else:
            raise SystemExit(f"unknown estimator {estimator}")
    return result


def cached_scores(estimator: str, classes: Sequence[int], size: int, pool: tuple[float, int], seed: int = 0):
    """scores(), from results/rankings.jsonl when already computed at this thread count."""
    results = common.Results("rankings")
    threads = torch.get_num_threads()
    pool_tag = "backbone" if estimator.startswith("proto") else f"r{pool[0]:g}-it{pool[1]}"
    key = f"px{size}|{pool_tag}|{estimator}|{'-'.join(map(str, classes))}|t{threads}|s{seed}"
    found = results.load().get(key)
    if found is not None:
        return found["scores"]
    started = time.perf_counter()
    values = scores(estimator, classes, size, pool, seed)
    results.put({"key": key, "scores": values, "seconds": round(time.perf_counter() - started, 2)})
    return values


def shared(a: Sequence[int], task_id: str) -> int:
    return len(set(a) & {int(c) for c in task_id.split(":")[1].split("-")})


def quality(per_task: dict[tuple[int, ...], dict[str, float]]) -> dict[str, Any]:
    """Top-1 hit rate (top entry shares the most classes), mean shared classes of top-1/top-3, and margins."""
    hits, top1_shared, top3_shared, margins = 0, [], [], []
    for classes, values in per_task.items():
        ranked = sorted(values, key=values.get, reverse=True)
        best = max(shared(classes, t) for t in ranked)
        hits += shared(classes, ranked[0]) == best
        top1_shared.append(shared(classes, ranked[0]))
        top3_shared.append(np.mean([shared(classes, t) for t in ranked[:3]]))
        best_score = max(values[t] for t in ranked if shared(classes, t) == best)
        rest = [values[t] for t in ranked if shared(classes, t) < best]
        spread = np.std(list(values.values())) or 1.0
        margins.append((best_score - max(rest)) / spread if rest else float("nan"))
    return {
        "tasks": len(per_task),
        "top1_hit": hits / len(per_task),
        "top1_shared": float(np.mean(top1_shared)),
        "top3_shared": float(np.mean(top3_shared)),
        "margin_min_sd": float(np.nanmin(margins)),
        "margin_median_sd": float(np.nanmedian(margins)),
    }


def _task_id(classes: Sequence[int]) -> str:
    return f"{common.DATASET}:{'-'.join(map(str, classes))}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--pool", action="append", default=[], help="RATIO:ITERS (for leep/logme)")
    parser.add_argument("--estimator", action="append", choices=ESTIMATORS, required=True)
    parser.add_argument("--seed", type=int, action="append", default=None, help="sample seeds")
    args = parser.parse_args()
    common.single_thread()
    pools = [(float(p.split(":")[0]), int(p.split(":")[1])) for p in args.pool] or [(0.5, 400)]
    for estimator in args.estimator:
        for pool in pools if not estimator.startswith("proto") else pools[:1]:
            for seed in args.seed or [0]:
                per_task = {
                    c: cached_scores(estimator, c, args.size, pool, seed) for c in common.pool_tasks()
                }
                summary = quality(per_task)
                common.log(
                    f"px{args.size} {estimator} pool {pool} seed {seed} threads "
                    f"{torch.get_num_threads()}: {summary}"
                )


if __name__ == "__main__":
    main()


def load_entry_models(pool, entry_ids):
    """The pruned, fine-tuned models stored with these pool entries (checksums verified)."""
    import os
    import tempfile

    from edge_smsp.models.pruned_model import load_pruned

    models = []
    with tempfile.TemporaryDirectory(prefix="edge-smsp-inherit-") as scratch:
        for entry_id in entry_ids:
            model, _ = load_pruned(pool.materialise_model_dir(entry_id, os.path.join(scratch, str(entry_id))))
            models.append(model)
    return models
