"""Phase-A research on pool tasks only (issue 8): settings, cached tasks/backbones, resumable result files.

Everything here runs leave-one-out on the FIRST 12 tasks of `generate_tasks("fashion-mnist", 20, 3, 0)`; the
last 8 are the held-out tasks of the phase-B study and are never loaded (`pool_tasks()` refuses them).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DATASET = "fashion-mnist"
BACKBONE = "efficientnet_lite0"
ALL_TASKS = 20
POOL_TASKS = 12
CLASSES_PER_TASK = 3
TRAIN_PER_CLASS = 500
VAL_PER_CLASS = 200
BATCH_SIZE = 32
SCRATCH_ROUNDS = 4
SIMILARITY_SAMPLES = 500
# Pools, models and raw runs: large, kept out of git (benchmarks/research/runs/); the summaries are committed in
# benchmarks/results/. EDGE_SMSP_RESEARCH_DIR moves them elsewhere.
ROOT = Path(os.environ.get("EDGE_SMSP_RESEARCH_DIR", Path(__file__).resolve().parent / "runs"))

_STATE: dict[Any, Any] = {}


def pool_tasks() -> list[tuple[int, ...]]:
    """The 12 pool tasks (classes); the held-out 8 are cut off here and nowhere else."""
    from edge_smsp.data.tasks import generate_tasks

    every = generate_tasks(DATASET, ALL_TASKS, CLASSES_PER_TASK, 0)
    return [tuple(int(c) for c in classes) for classes in every[:POOL_TASKS]]


def heldout_tasks() -> list[tuple[int, ...]]:
    """The 8 held-out tasks of the phase-B study (benchmarks.research.heldout), never used to choose anything."""
    from edge_smsp.data.tasks import generate_tasks

    every = generate_tasks(DATASET, ALL_TASKS, CLASSES_PER_TASK, 0)
    return [tuple(int(c) for c in classes) for classes in every[POOL_TASKS:]]


def open_heldout() -> None:
    """Let `task` load held-out tasks: only the phase-B driver calls this, after every choice was made."""
    _STATE["heldout_open"] = True


def task_seed(classes: Sequence[int]) -> int:
    """The study's per-task seed (index in the task list)."""
    return pool_tasks().index(tuple(classes))


def backbone(size: int):
    """Bundled ImageNet EfficientNet-Lite0 at `size` px, loaded once per process."""
    from edge_smsp.models.zoo import load_backbone

    key = ("backbone", size)
    if key not in _STATE:
        _STATE[key] = load_backbone(BACKBONE, pretrained=True, image_size=size)
    return _STATE[key]


def task(classes: Sequence[int], size: int):
    """A pool task at `size` px, loaded once per process."""
    from edge_smsp.data.tasks import load_task
    from edge_smsp.models.zoo import backbone_spec

    classes = tuple(classes)
    if classes not in pool_tasks() and not (_STATE.get("heldout_open") and classes in heldout_tasks()):
        raise SystemExit(f"{classes} is not a pool task: phase A never touches held-out tasks")
    key = ("task", classes, size)
    if key not in _STATE:
        spec = backbone_spec(backbone(size))
        _STATE[key] = load_task(
            DATASET,
            classes,
            image_size=size,
            mean=spec.mean,
            std=spec.std,
            seed=0,
            train_per_class=TRAIN_PER_CLASS,
            val_per_class=VAL_PER_CLASS,
        )
    return _STATE[key]


def pool_path(size: int, ratio: float, iters: int) -> Path:
    """The research pool of every pool task pruned from scratch at `ratio` with `iters` iterations."""
    return ROOT / "pools" / f"px{size}-r{ratio:g}-it{iters}.sqlite"


class Results:
    """Finished runs as JSON lines keyed by "key"; appends under a lock, so a rerun skips what is done."""

    def __init__(self, name: str) -> None:
        self.path = ROOT / "results" / f"{name}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, dict[str, Any]]:
        runs: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    runs[record["key"]] = record
        return runs

    def put(self, record: dict[str, Any]) -> None:
        record = {**record, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        with open(self.path, "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(json.dumps(record) + "\n")
            fcntl.flock(handle, fcntl.LOCK_UN)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def single_thread() -> None:
    import warnings

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warnings.filterwarnings("ignore")
