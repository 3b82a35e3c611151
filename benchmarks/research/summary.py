"""Tables from the research results: mean +- std over LOO pool tasks, paired differences with sign-flip p-values.

Usage: .venv/bin/python -m benchmarks.research.summary [--size 32] [--ratio 0.5] [--iters 100] [--ref VARIANT]
Scratch rows come from the research pools (each entry is that task pruned from scratch with `iters`).
"""

from __future__ import annotations

import argparse
import itertools
from collections import defaultdict

import numpy as np

from benchmarks.research import common


def sign_flip_p(differences: list[float]) -> float:
    """Exact two-sided sign-flip permutation p-value of the mean paired difference (n <= 16)."""
    values = np.asarray(differences, dtype=np.float64)
    if len(values) == 0 or np.allclose(values, 0):
        return 1.0
    observed = abs(values.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(values))))
    means = np.abs((signs * values).mean(axis=1))
    return float(np.mean(means >= observed - 1e-12))


def table(size: int, ratio: float, iters: int, reference: str | None, contains: str = "") -> list[str]:
    runs = common.Results("loo").load().values()
    by_variant: dict[str, dict[str, float]] = defaultdict(dict)
    seconds: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        if (
            run["size"] == size
            and run["ratio"] == ratio
            and run["iters"] == iters
            and contains in run["variant"]
        ):
            by_variant[run["variant"]][run["task"]] = 100 * run["val_accuracy"]
            seconds[run["variant"]].append(run["seconds"]["total"])
    for scratch_iters in (400, 1000):
        for build in common.Results("pool_builds").load().values():
            if build["size"] == size and build["ratio"] == ratio and build["iters"] == scratch_iters:
                by_variant[f"scratch@{scratch_iters}"][build["task"]] = 100 * build["val_accuracy"]
    if reference is None or reference not in by_variant:
        reference = next(iter(sorted(by_variant)), None)
    lines = [
        f"px{size} r={ratio:g} @{iters} (scratch rows: their own iterations); reference: {reference}",
        "| variant | n | acc % | vs ref (pt) | better/worse | sign-flip p | s/run |",
        "|---|---|---|---|---|---|---|",
    ]
    ref = by_variant.get(reference, {})
    order = sorted(by_variant, key=lambda v: -np.mean(list(by_variant[v].values())))
    for variant in order:
        values = by_variant[variant]
        accs = np.array(list(values.values()))
        shared = sorted(set(values) & set(ref))
        diffs = [values[t] - ref[t] for t in shared]
        diff_text, wins, p_text = "", "", ""
        if variant != reference and shared:
            diff_text = f"{np.mean(diffs):+.2f} +- {np.std(diffs, ddof=1) if len(diffs) > 1 else 0:.2f}"
            wins = f"{sum(d > 0 for d in diffs)}/{sum(d < 0 for d in diffs)}"
            p_text = f"{sign_flip_p(diffs):.3f}"
        spent = f"{np.mean(seconds[variant]):.1f}" if seconds.get(variant) else ""
        lines.append(
            f"| {variant} | {len(accs)} | {accs.mean():.2f} +- {accs.std(ddof=1) if len(accs) > 1 else 0:.2f} "
            f"| {diff_text} | {wins} | {p_text} | {spent} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--ref", default=None)
    parser.add_argument("--contains", default="")
    args = parser.parse_args()
    print("\n".join(table(args.size, args.ratio, args.iters, args.ref, args.contains)))


if __name__ == "__main__":
    main()
