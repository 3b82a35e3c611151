"""SMSP variants tried on pool tasks only (leave-one-out): K, LEEP weighting, real-valued scores vs binary masks.

    python -m benchmarks.tuning --quick|--full

Each of the first `tuning_tasks` pool tasks is adapted as if it were new, from a copy of the pool without its
own entry. The held-out tasks are never used here; `benchmarks.accuracy` runs the selected variant on them
next to the paper's default (K=5, uniform, binary masks). Writes results/tuning.<mode>.json.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    add_mode_arguments,
    command_line,
    log,
    machine_facts,
    result_path,
    write_json,
)
from benchmarks.formatting import mode_note, num, pct, table, variant_order
from benchmarks.settings import (
    PAPER_VARIANT,
)
from benchmarks.specs import (
    paper_variant_name,
)
from benchmarks.stats import mean_std, paired
from benchmarks.study import (
    Study,
)

NAME = "tuning"


def run(mode: str, results_dir: Path, workers: int | None = None) -> dict[str, Any]:
    """Ensure the leave-one-out runs, pick the best SMSP variant by mean accuracy, write tuning.<mode>.json."""
    study = Study(mode, results_dir, workers)
    specs = study.tuning_specs()
    records = study.ensure(specs, "tuning")
    by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    tuple_of: dict[str, tuple[Any, ...]] = {}
    for spec, record in zip(specs, records, strict=True):
        by_variant[spec.variant].append(record)
        tuple_of[spec.variant] = (spec.method, spec.top_k, spec.weighting, spec.mask_source)
    rows = [
        {
            "variant": variant,
            "accuracy": mean_std([r["val_accuracy"] for r in members]),
            "per_task": {r["task_id"]: r["val_accuracy"] for r in members},
            "seconds_total": mean_std([r["seconds"]["total"] for r in members]),
        }
        for variant, members in by_variant.items()
    ]
    smsp_rows = [row for row in rows if row["variant"].startswith("smsp[")]
    paper = paper_variant_name()
    # The paper's default wins ties: a different variant must be strictly better on the pool tasks.
    best = max(smsp_rows, key=lambda row: (row["accuracy"]["mean"], row["variant"] == paper), default=None)
    selected = tuple_of[best["variant"]] if best else PAPER_VARIANT
    payload = {
        "benchmark": "tuning",
        "mode": mode,
        "command": command_line(NAME, mode),
        "machine": machine_facts(),
        "protocol": "leave-one-out on pool tasks: each adapts from the pool without its own entry; held-out "
        "tasks unused",
        "ratio": study.settings.tuning_ratio,
        "iters": study.settings.oneshot_iters,
        "tasks": [r["task_id"] for r in by_variant[next(iter(by_variant))]],
        "variants": rows,
        "paired_vs_paper": paired(records, paper),
        "selected_variant": list(selected),
        "selected_name": best["variant"] if best else paper,
        "runs": [{k: v for k, v in r.items() if k != "mask"} for r in records],
    }
    path = write_json(result_path(results_dir, NAME, mode), payload)
    log(f"tuning: wrote {path}; selected {payload['selected_name']}")
    return payload


def section(found: Mapping[str, dict[str, Any]], plots: Path) -> str | None:
    """What was tried, on pool tasks only."""
    tuning, accuracy = found.get(NAME), found.get("accuracy")  # benchmarks.accuracy imports this module
    if not tuning:
        return "## What was tried (pool tasks only)\n\nNot run yet: `python -m benchmarks.tuning --full`."
    rows = [
        [row["variant"], pct(row["accuracy"]), num(row["seconds_total"]["mean"], 1)]
        for row in sorted(tuning["variants"], key=lambda r: variant_order(r["variant"]))
    ]
    text = [
        "## What was tried (pool tasks only, leave-one-out)",
        mode_note(tuning),
        f"Each of {len(tuning['tasks'])} pool tasks ({', '.join(tuning['tasks'])}) adapted at r={tuning['ratio']:g} "
        f"with {tuning['iters']} iterations from the pool *without its own entry*; the held-out tasks were not "
        "used to choose anything. K = pool tasks whose masks are summed; `leep` weights them by softmax(LEEP); "
        "`scores` sums the entries' real-valued unit ranks instead of binary masks.",
        table(["variant", "val acc % (LOO pool tasks)", "s / run"], rows),
        f"Selected on pool tasks: **{tuning['selected_name']}** (the paper's default wins ties).",
    ]
    smsp_means = [row["accuracy"]["mean"] for row in tuning["variants"] if row["variant"].startswith("smsp[")]
    paired_std = [c["difference"]["std"] for c in tuning.get("paired_vs_paper", []) if c["difference"]["std"]]
    if smsp_means and paired_std:
        text.append(
            f"The SMSP variants' means span {100 * (max(smsp_means) - min(smsp_means)):.1f} pt, while paired "
            f"per-task differences between two variants vary by ±{100 * sorted(paired_std)[len(paired_std) // 2]:.1f} "
            f"pt (median std over {len(tuning['tasks'])} tasks): on pool tasks no variant is clearly better than "
            "another, so the selection is close to a coin toss."
            if max(smsp_means) - min(smsp_means) < 2 * sorted(paired_std)[len(paired_std) // 2]
            else f"The SMSP variants' means span {100 * (max(smsp_means) - min(smsp_means)):.1f} pt."
        )
    if accuracy and accuracy.get("tuned_variants"):
        text.append(
            f"The selected variant was then run once on the held-out tasks; it appears in the tables as "
            f"`{accuracy['tuned_variants'][0]}`."
        )
    text.append(
        "Not tried for lack of CPU time: a pool pruned at another ratio (every entry here is pruned at "
        "r=0.5; ratios 0.3 and 0.7 reuse those masks), larger pools, more seeds per task."
    )
    return "\n\n".join(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tuning", description=__doc__.splitlines()[0])
    add_mode_arguments(parser)
    args = parser.parse_args(argv)
    payload = run(args.mode, args.results_dir, args.workers)
    for row in payload["variants"]:
        acc = row["accuracy"]
        print(f"{row['variant']:<32} acc {acc['mean']:.4f} ± {acc['std']:.4f} (n={acc['n']})")
    print(f"selected: {payload['selected_name']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
