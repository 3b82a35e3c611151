"""Phase B of issue 8: the held-out study, run once with everything chosen on pool tasks (phase A).

The 8 held-out tasks (the last 8 of `generate_tasks("fashion-mnist", 20, 3, 0)`) are adapted with the
product's own `smsp.adapt` and its defaults (prototype similarity, the probed top-3 entries' best one's weights,
recipe `recover`)
from the research pools of the 12 pool tasks (pruned from scratch @1000 at the same ratio), against pruning
from scratch @1000 and the Torch-Pruning criteria, with and without the recipe, over several training seeds.
The pools are fixed (built once); a seed changes the head, the data order and the scores' batches.
Results: results/heldout.jsonl, resumable. Usage:
  .venv/bin/python -m benchmarks.research.heldout --ratio 0.5 --seeds 3
  .venv/bin/python -m benchmarks.research.heldout --summary
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.research import common, rank

# name -> AdaptConfig fields (besides ratio, seed). "full" variants run at every ratio; the rest at 0.5 only.
VARIANTS: dict[str, dict[str, Any]] = {
    "smsp (default)": {},
    # the default before the probe stage (the study's first run): the most similar entry's weights
    "smsp, most similar entry (probe 1)": {"probe": 1},
    "smsp, plain recipe, probe 1": {"recipe": "plain", "probe": 1},
    "smsp masks only, K5, plain (paper)": {"init": "backbone", "top_k": 5, "recipe": "plain"},
    "taylor + recipe": {"method": "taylor"},
    "magnitude + recipe": {"method": "magnitude"},
    "random + recipe": {"method": "random"},
    # the best criterion without the recipe in phase A
    "random, plain": {"method": "random", "recipe": "plain"},
    "scratch@1000": {"method": "scratch", "iters": 1000, "scratch_rounds": common.SCRATCH_ROUNDS},
    # pruning from scratch with the budget of the other variants (--iters): the accuracy-vs-iterations curves
    "scratch": {"method": "scratch", "scratch_rounds": common.SCRATCH_ROUNDS},
}
FULL = (
    "smsp (default)",
    "smsp, most similar entry (probe 1)",
    "taylor + recipe",
    "magnitude + recipe",
    "random + recipe",
    "scratch@1000",
)
REFERENCE = "scratch@1000"


def pool_file(size: int, ratio: float):
    return common.pool_path(size, ratio, 1000)


def ensure_descriptors(size: int, ratio: float) -> None:
    """The research pools predate descriptors: `pool index` them once (the prototype similarity needs them)."""
    from edge_smsp.pool import Pool
    from edge_smsp.smsp.pool_build import index_pool

    with Pool(pool_file(size, ratio)) as pool:
        described, already = index_pool(pool, common.backbone(size), size)
    common.log(f"pool r{ratio:g}: described {len(described)} tasks, {already} already")


def run(
    name: str, classes: tuple[int, ...], size: int, ratio: float, iters: int, seed: int
) -> dict[str, Any]:
    from edge_smsp.pool import Pool
    from edge_smsp.smsp import AdaptConfig, adapt

    fields = {"batch_size": common.BATCH_SIZE, "iters": iters, **VARIANTS[name]}
    config = AdaptConfig(ratio=ratio, seed=seed, **fields)
    task = common.task(classes, size)
    torch.manual_seed(seed)
    with Pool(pool_file(size, ratio), create=False) as pool:
        result = adapt(common.backbone(size), pool, task, config)
    report = result.to_dict()
    return {
        "val_accuracy": result.val_accuracy,
        "params_after": result.summary.params_after,
        "init": report["init"],
        "recipe": report["recipe"],
        "similar_tasks": [s["task_id"] for s in report["similar_tasks"]],
        "chosen": [s["task_id"] for s in report["similar_tasks"] if s["selected"]],
        "probed": report["probed"],
        "seconds": {k: round(v, 2) for k, v in report["seconds"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--ratio", type=float, action="append")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iters", type=int, action="append", help="fine-tuning iterations (default 100)")
    parser.add_argument("--only", action="append", help="variant names (default: all at 0.5, FULL otherwise)")
    parser.add_argument("--summary", action="store_true")
    parser.add_argument(
        "--rank", action="store_true", help="ranking quality of each estimator on the held-out tasks"
    )
    parser.add_argument("--reverse", action="store_true", help="walk the grid backwards (a second process)")
    args = parser.parse_args()
    if args.rank:
        common.single_thread()
        common.open_heldout()
        rank_estimators(args.size)
        return
    if args.summary:
        summarise(common.Results("heldout").load())
        return
    common.single_thread()
    common.open_heldout()
    results = common.Results("heldout")
    done = results.load()
    for ratio in args.ratio or [0.5]:
        ensure_descriptors(args.size, ratio)
        names = args.only or (list(VARIANTS) if ratio == 0.5 else list(FULL))
        grid = list(itertools.product(range(args.seeds), common.heldout_tasks(), names, args.iters or [100]))
        for seed, classes, name, budget in reversed(grid) if args.reverse else grid:
            iters = VARIANTS[name].get("iters", budget)
            key = f"px{args.size}|{name}|r{ratio:g}|it{iters}|{'-'.join(map(str, classes))}|s{seed}"
            if key in done or key in results.load():  # another process (--reverse) may have run it
                continue
            started = time.perf_counter()
            record = run(name, classes, args.size, ratio, iters, seed)
            record.update(
                {
                    "key": key,
                    "variant": name,
                    "task": "-".join(map(str, classes)),
                    "size": args.size,
                    "ratio": ratio,
                    "iters": iters,
                    "seed": seed,
                    "wall_s": round(time.perf_counter() - started, 1),
                }
            )
            results.put(record)
            done[key] = record
            common.log(f"{key}: {record['val_accuracy']:.4f} ({record['wall_s']:.0f} s)")


def rank_estimators(size: int, pool: tuple[float, int] = (0.5, 1000)) -> None:
    """Top-1 hit (a pool task sharing the most classes) of each estimator for every held-out task, stored in
    results/heldout_rank.jsonl (LEEP and LogME score the entries' pruned models on a 500-image sample)."""
    results = common.Results("heldout_rank")
    for estimator in ("prototype", "leep", "logme"):
        for classes in common.heldout_tasks():
            key = f"px{size}|{estimator}|r{pool[0]:g}-it{pool[1]}|{'-'.join(map(str, classes))}"
            if key in results.load():
                continue
            values = rank.scores("proto" if estimator == "prototype" else estimator, classes, size, pool)
            top = max(values, key=values.get)
            best = max(rank.shared(classes, task_id) for task_id in values)
            record = {"key": key, "estimator": estimator, "task": "-".join(map(str, classes)), "top": top}
            results.put({**record, "hit": rank.shared(classes, top) == best})
            common.log(f"{key}: top {top}, hit {rank.shared(classes, top) == best}")


def summarise(runs: dict[str, dict[str, Any]]) -> None:
    """Print the RESULTS.md section these runs give (benchmarks.heldout), plot in a temporary folder."""
    import tempfile

    from benchmarks import heldout

    with tempfile.TemporaryDirectory() as plots:
        print(heldout.section(heldout.payload_from(list(runs.values())), Path(plots)))


if __name__ == "__main__":
    main()
