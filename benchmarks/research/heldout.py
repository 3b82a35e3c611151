"""Phase B of issue 8: the held-out study, run once with everything chosen on pool tasks (phase A).

The 8 held-out tasks (the last 8 of `generate_tasks("fashion-mnist", 20, 3, 0)`) are adapted with the
product's own `smsp.adapt` and its defaults (prototype similarity, the top entry's weights, recipe `recover`)
from the research pools of the 12 pool tasks (pruned from scratch @1000 at the same ratio), against pruning
from scratch @1000 and the Torch-Pruning criteria, with and without the recipe, over several training seeds.
The pools are fixed (built once); a seed changes the head, the data order and the scores' batches.
Results: results/heldout.jsonl, resumable. Usage:
  .venv/bin/python -m benchmarks.research.heldout --ratio 0.5 --seeds 3
  .venv/bin/python -m benchmarks.research.heldout --summary
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from benchmarks.research import common, rank

# name -> AdaptConfig fields (besides ratio, seed). "full" variants run at every ratio; the rest at 0.5 only.
VARIANTS: dict[str, dict[str, Any]] = {
    "smsp (default)": {},
    "smsp, plain recipe": {"recipe": "plain"},
    "smsp masks only, K5, plain (paper)": {"init": "backbone", "top_k": 5, "recipe": "plain"},
    "taylor + recipe": {"method": "taylor"},
    "magnitude + recipe": {"method": "magnitude"},
    "random + recipe": {"method": "random"},
    "random, plain": {
        "method": "random",
        "recipe": "plain",
    },  # the best criterion without the recipe (phase A)
    "scratch@1000": {"method": "scratch", "iters": 1000, "scratch_rounds": common.SCRATCH_ROUNDS},
}
FULL = ("smsp (default)", "taylor + recipe", "magnitude + recipe", "random + recipe", "scratch@1000")
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
        "seconds": {k: round(v, 2) for k, v in report["seconds"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--ratio", type=float, action="append")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--only", action="append", help="variant names (default: all at 0.5, FULL otherwise)")
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
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
        for seed in range(args.seeds):
            for classes in common.heldout_tasks():
                for name in names:
                    iters = VARIANTS[name].get("iters", args.iters)
                    key = f"px{args.size}|{name}|r{ratio:g}|it{iters}|{'-'.join(map(str, classes))}|s{seed}"
                    if key in done:
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
                    common.log(f"{key}: {record['val_accuracy']:.4f} ({record['wall_s']:.0f} s)")


def summarise(runs: dict[str, dict[str, Any]]) -> None:
    """Per ratio: mean accuracy per variant over (task, seed) pairs, paired against scratch@1000 and the best
    Torch-Pruning criterion with the same recipe; and the ranking quality of the default similarity."""
    by_ratio: dict[float, dict[str, dict[tuple[str, int], float]]] = {}
    for record in runs.values():
        cell = by_ratio.setdefault(record["ratio"], {}).setdefault(record["variant"], {})
        cell[(record["task"], record["seed"])] = record["val_accuracy"]
    for ratio, variants in sorted(by_ratio.items()):
        reference = variants.get(REFERENCE, {})
        print(f"\npx32 r={ratio:g}, held-out tasks; paired over (task, seed) with {REFERENCE}")
        print("| variant | pairs | acc % | vs scratch@1000 (pt) | better/worse | sign-flip p |")
        print("|---|---|---|---|---|---|")
        for name, cell in sorted(variants.items(), key=lambda item: -np.mean(list(item[1].values()))):
            pairs = sorted(set(cell) & set(reference))
            values = np.array(list(cell.values())) * 100
            if name == REFERENCE or not pairs:
                print(f"| {name} | {len(cell)} | {values.mean():.2f} ± {values.std():.2f} | | | |")
                continue
            diffs = np.array([cell[p] - reference[p] for p in pairs]) * 100
            print(
                f"| {name} | {len(pairs)} | {values.mean():.2f} ± {values.std():.2f} | "
                f"{diffs.mean():+.2f} ± {diffs.std():.2f} | {(diffs > 0).sum()}/{(diffs < 0).sum()} | "
                f"{_p(diffs)} |"
            )
        default = variants.get("smsp (default)", {})
        for tp in ("taylor + recipe", "magnitude + recipe", "random + recipe"):
            pairs = sorted(set(default) & set(variants.get(tp, {})))
            if pairs:
                diffs = np.array([default[p] - variants[tp][p] for p in pairs]) * 100
                print(
                    f"smsp (default) − {tp}: {diffs.mean():+.2f} ± {diffs.std():.2f} pt over {len(pairs)} "
                    f"pairs, p = {_p(diffs)}"
                )
    ranking(runs)


def _p(diffs: np.ndarray) -> str:
    from benchmarks.stats import sign_flip_p

    p = sign_flip_p(list(diffs))
    return "n/a" if p is None else f"{p:.4f}"


def ranking(runs: dict[str, dict[str, Any]]) -> None:
    """How often the default similarity's top entry shares the most classes with the held-out task."""
    pool_ids = [f"{common.DATASET}:{'-'.join(map(str, c))}" for c in common.pool_tasks()]
    seen: dict[tuple[str, int], str] = {}
    for record in runs.values():
        if record["variant"] == "smsp (default)" and record["similar_tasks"]:
            seen[(record["task"], record["seed"])] = record["similar_tasks"][0]
    hits = 0
    for (task, _seed), top in seen.items():
        classes = [int(c) for c in task.split("-")]
        best = max(rank.shared(classes, t) for t in pool_ids)
        hits += rank.shared(classes, top) == best
    if seen:
        print(f"\nranking (prototype, default): top-1 shares the most classes in {hits}/{len(seen)} runs")


if __name__ == "__main__":
    main()
