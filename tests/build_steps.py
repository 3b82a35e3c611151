"""Pool-build helpers for tests: a traced build step (counts training runs) and a build driver to run as a
separate process (`python -m tests.build_steps POOL MARKERS [ADDRESS]`), locally or on a Ray cluster."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SIZE = 32
TASK_CLASSES = ((0, 1), (2, 3), (4, 5), (6, 7))


@dataclass(frozen=True)
class TracedStep:
    """The real per-task build step, after appending "<task> <pid>" to a marker file: one line per training run.
    The first run of `stall_task` sleeps first, so that a kill lands while it is running."""

    markers: str
    stall_task: str | None = None
    stall_seconds: float = 120.0

    def __call__(self, backbone, task, config, progress=False):
        from edge_smsp.pool.build import build_entry

        first = task.task_id not in {line.split()[0] for line in read_lines(self.markers)}
        with open(self.markers, "a") as stream:  # O_APPEND: lines of concurrent processes do not mix
            stream.write(f"{task.task_id} {os.getpid()}\n")
        if first and task.task_id == self.stall_task:
            time.sleep(self.stall_seconds)
        return build_entry(backbone, task, config, progress)


def read_lines(path: str | Path) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


def training_runs(markers: str | Path) -> dict[str, list[int]]:
    """task id -> pids of the processes that started training it, in order."""
    runs: dict[str, list[int]] = {}
    for line in read_lines(markers):
        task_id, pid = line.split()
        runs.setdefault(task_id, []).append(int(pid))
    return runs


def tiny_build(backbone_size: int = SIZE):
    """The backbone, tasks and config of the tests' builds: 2-class tasks at 32 px, 2 iterations."""
    from edge_smsp import adaptation
    from edge_smsp.data.tasks import load_task
    from edge_smsp.models.zoo import backbone_spec, load_backbone

    backbone = load_backbone("efficientnet_lite0", pretrained=True, image_size=backbone_size)
    spec = backbone_spec(backbone)
    tasks = [
        load_task(
            "fashion-mnist",
            classes,
            image_size=backbone_size,
            mean=spec.mean,
            std=spec.std,
            train_per_class=24,
            val_per_class=12,
        )
        for classes in TASK_CLASSES
    ]
    config = adaptation.AdaptConfig(ratio=0.5, iters=2, method="scratch", scratch_rounds=1, batch_size=16)
    return backbone, tasks, config


def stall_in_commit(pool, entry: int, depth: int, report: str) -> None:
    """Freeze this process inside the `entry`-th entry commit of this run, `depth` SQLite progress callbacks after
    the transaction first grew the WAL (the model blobs being written), and write "<wal growth> <wal size>" to
    `report`: the test SIGKILLs the process there, with the commit half in the WAL."""
    import sqlite3

    connection: sqlite3.Connection = pool._db  # the pool's own connection: the build's real transactions
    wal = f"{pool.path}-wal"
    state = {"start": None, "commits": 0, "calls": 0}

    def wal_size() -> int:
        return os.path.getsize(wal) if os.path.exists(wal) else 0

    def on_progress() -> int:
        if not connection.in_transaction:
            state["start"] = None
            return 0
        if state["start"] is None:
            state["start"], state["calls"] = wal_size(), 0
        growth = wal_size() - state["start"]
        if growth < 64 * 1024:  # claims and renewals write a page or two; an entry writes megabytes
            return 0
        state["calls"] += 1
        if state["calls"] == 1:
            state["commits"] += 1
        if state["commits"] == entry and state["calls"] == depth:
            Path(report).write_text(f"{growth} {wal_size()}\n")
            time.sleep(3600)
        return 0

    connection.set_progress_handler(on_progress, 1)


def main() -> None:
    import torch

    from edge_smsp.pool import Pool
    from edge_smsp.pool import build as pool_build

    parser = argparse.ArgumentParser()
    parser.add_argument("pool")
    parser.add_argument("markers")
    parser.add_argument("--ray", default=None, help="address of the Ray cluster; in-process without")
    parser.add_argument("--stall-task", default=None)
    parser.add_argument("--lease", type=float, default=60.0)
    parser.add_argument("--stall-commit", default=None, help="ENTRY:DEPTH:REPORT (see stall_in_commit)")
    parser.add_argument("--go", default=None, help="print 'ready' once loaded, then wait for this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = sys.stdout  # the Ray build sends stdout to stderr while it runs: lines for the test go here
    backbone, tasks, config = tiny_build()
    if args.go is not None:
        print("ready", file=out, flush=True)
        while not os.path.exists(args.go):
            time.sleep(0.02)
    step = TracedStep(args.markers, args.stall_task)
    outcomes = []

    def on_task(outcome) -> None:
        outcomes.append(
            {"task_id": outcome.task.task_id, "status": outcome.status, "entry_id": outcome.entry_id}
        )
        print(json.dumps(outcomes[-1]), file=out, flush=True)

    def on_wait(task, holder) -> None:
        print(json.dumps({"task_id": task.task_id, "waiting_for": holder}), file=out, flush=True)

    options = dict(on_task=on_task, on_wait=on_wait, step=step, lease_seconds=args.lease)
    with Pool(args.pool) as pool:
        if args.stall_commit is not None:
            entry, depth, report = args.stall_commit.split(":", 2)
            stall_in_commit(pool, int(entry), int(depth), report)
        if args.ray is None:
            added = pool_build.build_pool(backbone, pool, tasks, config, **options)
        else:
            from edge_smsp.pool.build.ray_build import ray_build_pool

            added = ray_build_pool(backbone, pool, tasks, config, address=args.ray, **options)
    print(json.dumps({"added": added}), file=out, flush=True)


if __name__ == "__main__":
    sys.exit(main())
