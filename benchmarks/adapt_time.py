"""Time to adapt: one SMSP adaptation (similarity + pruning + 100 iterations + ONNX export) vs scratch@1000.

    python -m benchmarks.adapt_time --quick|--full

Reads (or runs) the held-out runs of the shared study at the export ratio: both methods are timed end to end
in the same kind of single-thread worker and exported with edge_smsp.export.onnx_export.export_onnx. Writes
results/adapt_time.<mode>.json.
"""

from __future__ import annotations

import argparse
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
from benchmarks.formatting import mode_note, num, pct, pyplot, save_figure, table
from benchmarks.stats import (
    mean_std,
)
from benchmarks.study import (
    Study,
)
from edge_smsp.criteria import SCRATCH

PARTS = ("similarity", "pruning", "finetuning", "export")

NAME = "adapt_time"


def run(mode: str, results_dir: Path, workers: int | None = None) -> dict[str, Any]:
    """Ensure the exported smsp and scratch runs, write adapt_time.<mode>.json."""
    study = Study(mode, results_dir, workers)
    specs = [spec for spec in study.core_specs() if spec.export]
    records = study.ensure(specs, "adapt_time")
    rows = []
    for variant in dict.fromkeys(record["variant"] for record in records):
        members = [r for r in records if r["variant"] == variant]
        end_to_end = [r["seconds"]["total"] + r["seconds"].get("export", 0.0) for r in members]
        rows.append(
            {
                "variant": variant,
                "method": members[0]["method"],
                "ratio": members[0]["ratio"],
                "iters": members[0]["iters"],
                "accuracy": mean_std([r["val_accuracy"] for r in members]),
                "seconds": {part: mean_std([r["seconds"].get(part, 0.0) for r in members]) for part in PARTS},
                "seconds_end_to_end": mean_std(end_to_end),
                "seconds_per_iteration": mean_std(
                    [r["seconds"]["finetuning"] / max(r["iters"], 1) for r in members]
                ),
                "per_task": {
                    r["task_id"]: {"accuracy": r["val_accuracy"], "seconds": e}
                    for r, e in zip(members, end_to_end, strict=True)
                },
            }
        )
    by_method = {row["method"]: row for row in rows}
    speedup = None
    if "smsp" in by_method and SCRATCH in by_method:
        speedup = (
            by_method[SCRATCH]["seconds_end_to_end"]["mean"] / by_method["smsp"]["seconds_end_to_end"]["mean"]
        )
    payload = {
        "benchmark": "adapt_time",
        "mode": mode,
        "command": command_line(NAME, mode),
        "machine": machine_facts(),
        "note": "wall time of one single-thread worker process; two workers shared the 2 cores",
        "rows": rows,
        "speedup_end_to_end": speedup,
        "runs": [{k: v for k, v in r.items() if k not in ("mask", "similar_tasks")} for r in records],
    }
    path = write_json(result_path(results_dir, NAME, mode), payload)
    log(f"adapt_time: wrote {path}")
    return payload


def plot(adapt: dict[str, Any], out: Path) -> Path:
    """Stacked wall time per adaptation step, accuracy on top."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.6, 4.0))
    names = [f"{row['method']}@{row['iters']}" for row in adapt["rows"]]
    bottom = [0.0] * len(names)
    for part in ("similarity", "pruning", "finetuning", "export"):
        values = [row["seconds"][part]["mean"] or 0.0 for row in adapt["rows"]]
        axis.bar(names, values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for index, row in enumerate(adapt["rows"]):
        axis.text(index, bottom[index], f"{pct(row['accuracy'], std=False)} %", ha="center", va="bottom")
    axis.set_ylabel("wall time per task (s)")
    axis.set_title("Time to adapt one task (accuracy on top)")
    axis.legend(fontsize=8)
    return save_figure(figure, out)


def section(found: Mapping[str, dict[str, Any]], plots: Path) -> str | None:
    """Time to adapt."""
    adapt = found.get(NAME)
    if not adapt:
        return None
    image = plot(adapt, plots / "adapt_time.png")
    rows = [
        [
            row["variant"],
            f"{row['ratio']:g}",
            row["iters"],
            pct(row["accuracy"]),
            num(row["seconds"]["similarity"]["mean"], 1),
            num(row["seconds"]["pruning"]["mean"], 1),
            num(row["seconds"]["finetuning"]["mean"], 1),
            num(row["seconds"]["export"]["mean"], 1),
            f"{num(row['seconds_end_to_end']['mean'], 1)} ± {num(row['seconds_end_to_end']['std'], 1)}",
        ]
        for row in adapt["rows"]
    ]
    speedup = adapt.get("speedup_end_to_end")
    return "\n\n".join(
        [
            "## 5. Time to adapt",
            mode_note(adapt),
            table(
                [
                    "method",
                    "ratio",
                    "iters",
                    "val acc %",
                    "similarity s",
                    "pruning s",
                    "fine-tune s",
                    "ONNX export s",
                    "end to end s",
                ],
                rows,
            ),
            (f"Scratch takes {speedup:.1f}x the wall time of SMSP end to end. " if speedup else "")
            + "Each adaptation ran in a single-thread process (two such workers shared the two cores).",
            f"![time to adapt](plots/{image.name})",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.adapt_time", description=__doc__.splitlines()[0]
    )
    add_mode_arguments(parser)
    args = parser.parse_args(argv)
    payload = run(args.mode, args.results_dir, args.workers)
    for row in payload["rows"]:
        print(
            f"{row['variant']:<28} it={row['iters']:<5d} acc {row['accuracy']['mean']:.4f}  "
            f"end-to-end {row['seconds_end_to_end']['mean']:.1f} s"
        )
    if payload["speedup_end_to_end"]:
        print(f"scratch / smsp wall time: {payload['speedup_end_to_end']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
