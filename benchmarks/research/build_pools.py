"""Build the research pools: every pool task pruned from scratch (iterative Taylor) at a ratio and budget.

Each entry's val accuracy is also that pool task's scratch@iters result, the bar SMSP must reach.
Usage: .venv/bin/python -m benchmarks.research.build_pools --size 32 --pool 0.5:400 --pool 0.5:1000 ...
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.research import common


def build(size: int, ratio: float, iters: int, tasks: int = common.POOL_TASKS, reverse: bool = False) -> None:
    from edge_smsp import adaptation
    from edge_smsp.pool import Pool
    from edge_smsp.pool import build as pool_build

    path = common.pool_path(size, ratio, iters)
    path.parent.mkdir(parents=True, exist_ok=True)
    results = common.Results("pool_builds")
    chosen = common.pool_tasks()[:tasks]
    # A second process walks the tasks backwards: going the same way it would only wait on the first one's claims.
    for classes in reversed(chosen) if reverse else chosen:
        seed = common.task_seed(classes)
        config = adaptation.AdaptConfig(
            ratio=ratio,
            iters=iters,
            method="scratch",
            scratch_rounds=common.SCRATCH_ROUNDS,
            batch_size=common.BATCH_SIZE,
            seed=seed,
        )
        torch.manual_seed(seed)
        task = common.task(classes, size)
        started = time.perf_counter()
        with Pool(path) as pool:
            made = pool_build.build_pool(common.backbone(size), pool, [task], config)
        if made:
            with Pool(path) as pool:
                entry = pool.entry(made[0])
            record = {
                "key": f"px{size}|r{ratio:g}|it{iters}|{task.task_id}",
                "size": size,
                "ratio": ratio,
                "iters": iters,
                "task": task.task_id,
                "val_accuracy": entry.val_accuracy,
                "seconds": round(time.perf_counter() - started, 1),
            }
            results.put(record)
            common.log(
                f"pool px{size} r{ratio:g} it{iters} {task.task_id}: {entry.val_accuracy:.4f} "
                f"in {record['seconds']} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--pool", action="append", required=True, help="RATIO:ITERS")
    parser.add_argument("--tasks", type=int, default=common.POOL_TASKS, help="only the first N pool tasks")
    parser.add_argument("--reverse", action="store_true", help="last task first (a second process)")
    args = parser.parse_args()
    common.single_thread()
    for spec in args.pool:
        ratio, iters = spec.split(":")
        build(args.size, float(ratio), int(iters), args.tasks, args.reverse)


if __name__ == "__main__":
    main()
