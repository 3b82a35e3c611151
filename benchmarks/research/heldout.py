"""Phase B of issue 8: the held-out study, run once with everything chosen on pool tasks (phase A).

The 8 held-out tasks (the last 8 of `generate_tasks("fashion-mnist", 20, 3, 0)`) are adapted with the
product's own `smsp.adapt` and its defaults (prototype similarity, the probed top-3 entries' best one's weights,
recipe `recover`, 100 iterations at batch 128) from the research pools of the 12 pool tasks (pruned from
scratch @1000 at the same ratio), against pruning from scratch @1000 and the Torch-Pruning criteria, with and
without the recipe, over several training seeds.
The pools are fixed (built once); a seed changes the head, the data order and the scores' batches.
Results: results/heldout.jsonl, resumable. Usage:
  .venv/bin/python -m benchmarks.research.heldout --ratio 0.5 --seeds 3
  .venv/bin/python -m benchmarks.research.heldout --summary
  .venv/bin/python -m benchmarks.research.heldout --rename   # once, after the batch-128 runs (RENAMED)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.research import common, controls, rank
from edge_smsp.training.recipe import ADAPT_BATCH_SIZE

# name -> AdaptConfig fields (besides ratio, seed). "full" variants run at every ratio; the rest at 0.5 only.
# Every run trains at batch 32 (SGD 0.01) unless its fields say otherwise; the product's default takes batch 128
# (SGD 0.04: chosen on the pool tasks, benchmarks.research.loo --exp batch05), and so do the criteria compared
# with it. Variants named ", batch 32" are the earlier default and the criteria as they ran before.
VARIANTS: dict[str, dict[str, Any]] = {
    "smsp (default)": {"batch_size": ADAPT_BATCH_SIZE},
    "smsp, batch 32": {},
    # the default before the probe stage (the study's first run): the most similar entry's weights
    "smsp, most similar entry (probe 1), batch 32": {"probe": 1},
    "smsp, plain recipe, probe 1, batch 32": {"recipe": "plain", "probe": 1},
    "smsp masks only, K5, plain (paper), batch 32": {"init": "backbone", "top_k": 5, "recipe": "plain"},
    "taylor + recipe": {"method": "taylor", "batch_size": ADAPT_BATCH_SIZE},
    "magnitude + recipe": {"method": "magnitude", "batch_size": ADAPT_BATCH_SIZE},
    "random + recipe": {"method": "random", "batch_size": ADAPT_BATCH_SIZE},
    "taylor + recipe, batch 32": {"method": "taylor"},
    "magnitude + recipe, batch 32": {"method": "magnitude"},
    "random + recipe, batch 32": {"method": "random"},
    # the best criterion without the recipe in phase A
    "random, plain, batch 32": {"method": "random", "recipe": "plain"},
    "scratch@1000": {"method": "scratch", "iters": 1000, "scratch_rounds": common.SCRATCH_ROUNDS},
    # long training at the default's batch and rate: whether the reference rises with the batch too
    "scratch@1000, batch 128": {
        "method": "scratch",
        "iters": 1000,
        "scratch_rounds": common.SCRATCH_ROUNDS,
        "batch_size": ADAPT_BATCH_SIZE,
    },
    # pruning from scratch with the budget of the other variants (--iters): the accuracy-vs-iterations curves
    "scratch": {"method": "scratch", "scratch_rounds": common.SCRATCH_ROUNDS},
    # Issue 24's controls at the defaults (init pool, recipe recover, batch 128, 100 iterations): is the entry
    # that similarity and the probe choose better than one chosen otherwise?
    "control: random entry": {"method": "smsp-random", "batch_size": ADAPT_BATCH_SIZE},
    "control: least similar entry": {
        "method": controls.LEAST_SIMILAR,
        "probe": 1,
        "batch_size": ADAPT_BATCH_SIZE,
    },
    "control: most similar entry, no probe": {"probe": 1, "batch_size": ADAPT_BATCH_SIZE},
    # The product's --time-budget (issue 24): batch and iterations measured to fit the seconds, at 1 thread.
    **{f"smsp, time budget {budget} s": {"time_budget": float(budget)} for budget in (10, 30, 60)},
}
CONTROLS = ("smsp (default)", *(name for name in VARIANTS if name.startswith("control: ")))
FULL = (
    "smsp (default)",
    "smsp, batch 32",
    "smsp, most similar entry (probe 1), batch 32",
    "taylor + recipe",
    "magnitude + recipe",
    "random + recipe",
    "taylor + recipe, batch 32",
    "magnitude + recipe, batch 32",
    "random + recipe, batch 32",
    "scratch@1000",
)
# Stored runs named before batch 128 was adopted -> their names now (`--rename` migrates results/heldout.jsonl).
RENAMED = {
    "smsp (default)": "smsp, batch 32",
    "smsp (default), batch 128": "smsp (default)",
    "smsp, most similar entry (probe 1)": "smsp, most similar entry (probe 1), batch 32",
    "smsp, plain recipe, probe 1": "smsp, plain recipe, probe 1, batch 32",
    "smsp masks only, K5, plain (paper)": "smsp masks only, K5, plain (paper), batch 32",
    "random, plain": "random, plain, batch 32",
    **{f"{c} + recipe": f"{c} + recipe, batch 32" for c in ("taylor", "magnitude", "random")},
    **{f"{c} + recipe, batch 128": f"{c} + recipe" for c in ("taylor", "magnitude", "random")},
}
# Names only the stored runs of before the rename carry: while any is left, new runs would mix generations.
OLD_ONLY = frozenset(RENAMED) - frozenset(VARIANTS)
REFERENCE = "scratch@1000"


def pool_file(size: int, ratio: float, iters: int = 1000):
    return common.pool_path(size, ratio, iters)


def ensure_descriptors(size: int, ratio: float, pool_iters: int = 1000) -> None:
    """The research pools predate descriptors: `pool index` them once (the prototype similarity needs them)."""
    from edge_smsp.pool import Pool
    from edge_smsp.pool.build.tasks import index_pool

    with Pool(pool_file(size, ratio, pool_iters)) as pool:
        described, already = index_pool(pool, common.backbone(size), size)
    common.log(f"pool r{ratio:g}: described {len(described)} tasks, {already} already")


def uses_pool(name: str) -> bool:
    """Whether a variant adapts from pool entries (SMSP and its controls) rather than the backbone alone."""
    return VARIANTS[name].get("method", "smsp") not in ("scratch", "taylor", "magnitude", "random")


def run(
    name: str,
    classes: tuple[int, ...],
    size: int,
    ratio: float,
    iters: int,
    seed: int,
    pool_iters: int = 1000,
) -> dict[str, Any]:
    from edge_smsp.adaptation import AdaptConfig, adapt
    from edge_smsp.pool import Pool

    fields = {"batch_size": common.BATCH_SIZE, "iters": iters, **VARIANTS[name]}
    config = AdaptConfig(ratio=ratio, seed=seed, **fields)
    task = common.task(classes, size)
    torch.manual_seed(seed)
    with contextlib.ExitStack() as stack:
        if uses_pool(name):
            pool = stack.enter_context(Pool(pool_file(size, ratio, pool_iters), create=False))
        else:  # scratch and the criteria never read the pool: an empty one spares building the research pools
            folder = stack.enter_context(tempfile.TemporaryDirectory())
            pool = stack.enter_context(Pool(Path(folder) / "empty.sqlite"))
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
        "training": report["training"],
        "seconds": {k: round(v, 2) for k, v in report["seconds"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--ratio", type=float, action="append")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pool-iters", type=int, default=1000, help="the research pools' budget (@1000)")
    parser.add_argument("--first-seed", type=int, default=0, help="skip the seeds below (run elsewhere)")
    parser.add_argument("--iters", type=int, action="append", help="fine-tuning iterations (default 100)")
    parser.add_argument("--only", action="append", help="variant names (default: all at 0.5, FULL otherwise)")
    parser.add_argument(
        "--controls", action="store_true", help="the defaults and the similarity controls only"
    )
    parser.add_argument("--summary", action="store_true")
    parser.add_argument(
        "--rename", action="store_true", help="migrate stored runs to today's names (RENAMED)"
    )
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
    if args.rename:
        rename_stored_runs(common.Results("heldout"))
        return
    if args.summary:
        summarise(common.Results("heldout").load())
        return
    common.single_thread()
    common.open_heldout()
    controls.register()
    results = common.Results("heldout" if args.pool_iters == 1000 else f"heldout_pool{args.pool_iters}")
    done = results.load()
    if any(run["variant"] in OLD_ONLY for run in done.values()):
        raise SystemExit("stored runs still carry the names of before batch 128: run --rename first")
    for ratio in args.ratio or [0.5]:
        names = (
            list(CONTROLS) if args.controls else args.only or (list(VARIANTS) if ratio == 0.5 else list(FULL))
        )
        if any(uses_pool(name) for name in names):
            ensure_descriptors(args.size, ratio, args.pool_iters)
        seeds = range(args.first_seed, args.seeds)
        grid = list(itertools.product(seeds, common.heldout_tasks(), names, args.iters or [100]))
        for seed, classes, name, budget in reversed(grid) if args.reverse else grid:
            iters = VARIANTS[name].get("iters", budget)
            pool = "" if args.pool_iters == 1000 or not uses_pool(name) else f"|pool{args.pool_iters}"
            key = f"px{args.size}|{name}|r{ratio:g}{pool}|it{iters}|{'-'.join(map(str, classes))}|s{seed}"
            if key in done or key in results.load():  # another process (--reverse) may have run it
                continue
            started = time.perf_counter()
            record = run(name, classes, args.size, ratio, iters, seed, args.pool_iters)
            record.update(
                {
                    "key": key,
                    "variant": name,
                    "task": "-".join(map(str, classes)),
                    "size": args.size,
                    "ratio": ratio,
                    "iters": iters,
                    "seed": seed,
                    "pool_iters": args.pool_iters,
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


def rename_stored_runs(results: common.Results) -> None:
    """Rewrite the stored runs under RENAMED's names (once: it refuses a file with no old-only name left); the
    old file is kept beside it as heldout.before-rename.jsonl."""
    import json
    import os

    records = list(results.load().values())
    if not any(record["variant"] in OLD_ONLY for record in records):
        raise SystemExit("no run has a pre-batch-128 name: already migrated")
    lines = []
    for record in records:
        old = record["variant"]
        new = RENAMED.get(old, old)
        lines.append(
            json.dumps({**record, "variant": new, "key": record["key"].replace(f"|{old}|", f"|{new}|")})
        )
    backup = results.path.with_name("heldout.before-rename.jsonl")
    backup.write_bytes(results.path.read_bytes())
    temporary = results.path.with_suffix(".tmp")
    temporary.write_text("\n".join(lines) + "\n")
    os.replace(temporary, results.path)
    common.log(
        f"renamed {sum(RENAMED.get(r['variant']) is not None for r in records)} of {len(records)} runs"
    )


def summarise(runs: dict[str, dict[str, Any]]) -> None:
    """Print the RESULTS.md section these runs give (benchmarks.heldout), plot in a temporary folder."""
    import tempfile

    from benchmarks import heldout

    with tempfile.TemporaryDirectory() as plots:
        print(heldout.section(heldout.payload_from(list(runs.values())), Path(plots)))


if __name__ == "__main__":
    main()
