"""Accuracy study (claim 2): SMSP@100 vs one-shot baselines@100 and iterative pruning from scratch@1000.

    python -m benchmarks.accuracy --quick|--full

Builds the shared pool (from-scratch iterative Taylor pruning of every pool task) and runs every method on the
held-out tasks; writes results/accuracy.<mode>.json. Resumable: finished runs are cached in study.<mode>.json.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks import tuning
from benchmarks.common import (
    add_mode_arguments,
    command_line,
    log,
    machine_facts,
    read_json,
    result_path,
    write_json,
)
from benchmarks.formatting import BASELINES, label, mode_note, num, pct, table, variant_order
from benchmarks.settings import (
    PAPER_VARIANT,
)
from benchmarks.specs import (
    paper_variant_name,
    variant_spec,
)
from benchmarks.stats import mean_std, paired, sign_flip_p, summarise
from benchmarks.study import (
    Study,
)
from edge_smsp.criteria import SCRATCH

NAME = "accuracy"
AFTER = (tuning.NAME,)  # the variant chosen on pool tasks runs next to the paper's default


def tuned_variants(results_dir: Path, mode: str) -> list[tuple[Any, ...]]:
    """The SMSP variant chosen on pool tasks (benchmarks.tuning), when it differs from the paper's default."""
    chosen = read_json(result_path(results_dir, tuning.NAME, mode))
    if not chosen or not chosen.get("selected_variant"):
        return []
    selected = tuple(chosen["selected_variant"])
    return [] if selected == PAPER_VARIANT else [selected]


def pool_summary(pool_records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How good and how costly the pool entries were."""
    return {
        "entries": [
            {
                "task_id": r["task_id"],
                "class_names": r["class_names"],
                "val_accuracy": r["val_accuracy"],
                "seconds": r["seconds"].get("total"),
            }
            for r in pool_records
        ],
        "accuracy": mean_std([r["val_accuracy"] for r in pool_records]),
        "seconds": mean_std([r["seconds"].get("total") for r in pool_records]),
    }


def run(mode: str, results_dir: Path, workers: int | None = None) -> dict[str, Any]:
    """Ensure the pool and the accuracy runs, write accuracy.<mode>.json, return it."""
    study = Study(mode, results_dir, workers)
    extra = tuned_variants(results_dir, mode)
    if extra:
        log(f"accuracy: also running the variant selected on pool tasks: {extra[0]}")
    facts_before = machine_facts()
    pool_records = study.ensure_pool()
    records = study.ensure(study.core_specs(extra), "accuracy")
    tuned = [variant_spec("heldout", (0, 1), v, 0.5, 1, 0).variant for v in extra]
    payload = {
        "benchmark": "accuracy",
        "mode": mode,
        "command": command_line(NAME, mode),
        "machine": facts_before,
        "machine_after": machine_facts(),
        "settings": study.settings.to_dict(),
        "backbone": "efficientnet_lite0 (bundled ImageNet weights)",
        "pool_tasks": [list(c) for c in study.pool_classes],
        "new_tasks": [list(c) for c in study.new_classes],
        "smsp_variant": paper_variant_name(),
        "tuned_variants": tuned,
        "pool": pool_summary(pool_records),
        "summary": summarise(records),
        "paired_vs_smsp": paired(records, paper_variant_name()),
        "paired_vs_tuned": paired(records, tuned[0]) if tuned else [],
        "runs": [{k: v for k, v in r.items() if k != "mask"} for r in records],
    }
    path = write_json(result_path(results_dir, NAME, mode), payload)
    log(f"accuracy: wrote {path}")
    return payload


def summary_row(accuracy: dict[str, Any], variant: str, ratio: float) -> dict[str, Any] | None:
    return next(
        (
            row
            for row in accuracy["summary"]
            if row["variant"] == variant and math.isclose(row["ratio"], ratio)
        ),
        None,
    )


def paired_differences(accuracy: dict[str, Any], reference: str, other: str, ratio: float) -> list[float]:
    """Per-task accuracy differences reference - other at one ratio (tasks both ran)."""
    ref_row, other_row = summary_row(accuracy, reference, ratio), summary_row(accuracy, other, ratio)
    if not ref_row or not other_row:
        return []
    tasks = sorted(set(ref_row["per_task"]) & set(other_row["per_task"]))
    return [ref_row["per_task"][task] - other_row["per_task"][task] for task in tasks]


def claims(accuracy: dict[str, Any] | None) -> tuple[str, str, str, str]:
    """(verdict vs scratch, text, verdict vs one-shot, text)."""
    if not accuracy:
        return "not measured", "the accuracy benchmark has not run", "not measured", ""
    paper = accuracy["smsp_variant"]
    comparisons = accuracy["paired_vs_smsp"]
    scratch = [c for c in comparisons if c["other"] == SCRATCH]
    if scratch:
        parts, verdicts = [], []
        for row in scratch:
            diff = row["difference"]["mean"]
            verdicts.append("holds" if diff >= 0 else ("mixed" if row["wins"] + row["ties"] > 0 else "no"))
            smsp_row = summary_row(accuracy, paper, row["ratio"])
            scratch_row = summary_row(accuracy, SCRATCH, row["ratio"])
            parts.append(
                f"r={row['ratio']:g}: SMSP@{smsp_row['iters']} {pct(smsp_row['accuracy'])} % vs scratch@"
                f"{scratch_row['iters']} {pct(scratch_row['accuracy'])} % (paired diff {100 * diff:+.1f} pt, SMSP better "
                f"on {row['wins']}/{row['wins'] + row['ties'] + row['losses']} tasks)"
            )
        verdict_scratch = (
            "holds"
            if all(v == "holds" for v in verdicts)
            else "does not hold here"
            if all(v == "no" for v in verdicts)
            else "mixed"
        )
        text_scratch = "; ".join(parts)
    else:
        verdict_scratch, text_scratch = "not measured", ""
    oneshot = [c for c in comparisons if c["other"] in ("smsp-random[k5]", *BASELINES)]
    better = [c for c in oneshot if c["difference"]["mean"] > 0]
    significant = [
        c
        for c in better
        if (p := sign_flip_p(paired_differences(accuracy, paper, c["other"], c["ratio"]))) is not None
        and p < 0.05
    ]
    if not oneshot:
        verdict_oneshot = "not measured"
    elif len(better) == len(oneshot) and len(significant) * 2 >= len(oneshot):
        verdict_oneshot = "holds"
    elif len(better) == len(oneshot):
        verdict_oneshot = "mixed: ahead on average everywhere, by margins mostly within task-to-task noise"
    elif not better:
        verdict_oneshot = "does not hold here"
    else:
        verdict_oneshot = "mixed"
    text_oneshot = (
        f"SMSP ahead on average in {len(better)} of {len(oneshot)} (baseline, ratio) comparisons, significantly "
        f"(paired sign-flip test, p < 0.05) in {len(significant)}; SMSP − baseline: "
        + (
            "; ".join(
                f"r={ratio:g}: "
                + ", ".join(
                    f"{c['other']} {100 * c['difference']['mean']:+.1f} pt"
                    for c in oneshot
                    if c["ratio"] == ratio
                )
                for ratio in sorted({c["ratio"] for c in oneshot})
            )
        )
    )
    return verdict_scratch, text_scratch, verdict_oneshot, text_oneshot


def headline(accuracy: dict[str, Any]) -> str:
    """Compact table: method x ratio accuracy, iterations and wall time per run."""
    paper = accuracy["smsp_variant"]
    ratios = sorted({row["ratio"] for row in accuracy["summary"]})
    variants = sorted({row["variant"] for row in accuracy["summary"]}, key=variant_order)
    rows = []
    for variant in variants:
        cells, seconds, iters = [], [], None
        for ratio in ratios:
            row = summary_row(accuracy, variant, ratio)
            cells.append(pct(row["accuracy"]) if row else "–")
            if row:
                seconds.append(row["seconds_total"]["mean"])
                iters = row["iters"]
        rows.append([label(variant, paper), iters, *cells, f"{sum(seconds) / len(seconds):.0f}"])
    header = ["method", "iters", *[f"r={ratio:g}" for ratio in ratios], "s / run"]
    settings = accuracy["settings"]
    return (
        table(header, rows)
        + f"\n\nHeld-out val accuracy (%), mean ± std over {len(accuracy['new_tasks'])} new Fashion-MNIST tasks "
        f"({settings['classes_per_task']} classes, {settings['image_size']} px), EfficientNet-Lite0 ImageNet weights, "
        f"pool of {len(accuracy['pool_tasks'])} tasks pruned from scratch at r={settings['pool_ratio']:g}; "
        f"r = fraction of units removed per layer; s / run = mean wall time of one adaptation (1 thread)."
    )


def bottom_line(
    accuracy: dict[str, Any], mechanism: dict[str, Any] | None, adapt: dict[str, Any] | None
) -> str | None:
    """Three sentences with the numbers that matter, generated from the results."""
    paper = accuracy["smsp_variant"]
    comparisons = accuracy["paired_vs_smsp"]
    scratch = next((c for c in comparisons if c["other"] == SCRATCH), None)
    smsp_row = summary_row(accuracy, paper, scratch["ratio"]) if scratch else None
    if not scratch or not smsp_row:
        return None
    scratch_row = summary_row(accuracy, SCRATCH, scratch["ratio"])
    oneshot = [c for c in comparisons if c["other"] in BASELINES]
    versus_random_pool = [c for c in comparisons if c["other"].startswith("smsp-random")]
    lines = [
        f"**Bottom line.** At r={scratch['ratio']:g}, SMSP with {smsp_row['iters']} iterations reaches "
        f"{pct(smsp_row['accuracy'], std=False)} %, {-100 * scratch['difference']['mean']:.1f} pt below pruning from "
        f"scratch with {scratch_row['iters']} ({pct(scratch_row['accuracy'], std=False)} %, worse on "
        f"{scratch['losses']} of {scratch['wins'] + scratch['ties'] + scratch['losses']} tasks)"
    ]
    if adapt and adapt.get("speedup_end_to_end"):
        lines[0] += (
            f", but adapts {adapt['speedup_end_to_end']:.0f}x faster end to end (ONNX export included)"
        )
    lines[0] += "."
    if oneshot:
        diffs = [100 * c["difference"]["mean"] for c in oneshot]
        lines.append(
            f"Against the Torch-Pruning one-shot criteria at the same 100 iterations it is ahead on average at every "
            f"ratio tested, by {min(diffs):+.1f} to {max(diffs):+.1f} pt — small against the task-to-task spread."
            if min(diffs) > 0
            else f"Against the Torch-Pruning one-shot criteria at the same iterations it is between {min(diffs):+.1f} "
            f"and {max(diffs):+.1f} pt."
        )
    if versus_random_pool:
        diffs = [100 * c["difference"]["mean"] for c in versus_random_pool]
        text = (
            f"Choosing the K most similar pool tasks by LEEP adds only {min(diffs):+.1f} to {max(diffs):+.1f} pt over "
            "K random pool tasks"
        )
        if mechanism:
            heldout = {
                r["variant"]: r["iou_with_scratch"]["mean"]
                for r in mechanism.get("heldout_iou_with_scratch", [])
            }
            text += (
                f": pool masks share a large task-independent core (pairwise IoU {mechanism['iou']['mean']:.2f} vs "
                f"{mechanism['iou_chance']:.2f} by chance)"
            )
            if paper in heldout and "taylor" in heldout:
                text += (
                    f", and a summed pool mask overlaps the new task's own from-scratch mask more ({heldout[paper]:.2f}) "
                    f"than one-shot Taylor does ({heldout['taylor']:.2f})"
                )
        lines.append(text + ".")
    return " ".join(lines)


def section(found: Mapping[str, dict[str, Any]], plots: Path) -> str | None:
    """Full accuracy table with params/MACs and time breakdown, paired comparisons, pool summary."""
    accuracy = found.get(NAME)
    if not accuracy:
        return None
    paper = accuracy["smsp_variant"]
    rows = []
    for row in sorted(accuracy["summary"], key=lambda r: (r["ratio"], variant_order(r["variant"]))):
        rows.append(
            [
                label(row["variant"], paper),
                f"{row['ratio']:g}",
                row["iters"],
                pct(row["accuracy"]),
                f"{row['params_after'] / 1e6:.2f} / {row['params_before'] / 1e6:.2f}",
                f"{row['macs_after'] / 1e6:.2f} / {row['macs_before'] / 1e6:.2f}",
                num(row["seconds"]["similarity"], 1),
                num(row["seconds"]["pruning"], 1),
                num(row["seconds"]["finetuning"], 1),
                num(row["seconds"]["total"], 1),
            ]
        )
    parts = [
        "## 1. Accuracy study (claim 2)",
        mode_note(accuracy),
        table(
            [
                "method",
                "ratio",
                "iters",
                "val acc %",
                "params M (after/before)",
                "MACs M (after/before)",
                "similarity s",
                "pruning s",
                "fine-tune s",
                "total s",
            ],
            rows,
        ),
        "Paired per-task differences, SMSP minus the other method at the same ratio (every method sees the same "
        "task, data, seed and initial head); p: exact two-sided sign-flip permutation test over the tasks:",
        table(
            [
                "other",
                "ratio",
                "other iters",
                "SMSP − other (pt)",
                "SMSP better / tie / worse",
                "sign-flip p",
            ],
            [
                [
                    label(c["other"], paper),
                    f"{c['ratio']:g}",
                    c["other_iters"],
                    f"{100 * c['difference']['mean']:+.1f} ± {100 * c['difference']['std']:.1f}",
                    f"{c['wins']} / {c['ties']} / {c['losses']}",
                    num(sign_flip_p(paired_differences(accuracy, paper, c["other"], c["ratio"])), 3),
                ]
                for c in sorted(
                    accuracy["paired_vs_smsp"], key=lambda c: (c["ratio"], variant_order(c["other"]))
                )
            ],
        ),
    ]
    pool = accuracy["pool"]
    parts.append(
        f"Pool: {len(pool['entries'])} tasks, each pruned from scratch (iterative Taylor, "
        f"{accuracy['settings']['scratch_rounds']} rounds, {accuracy['settings']['pool_iters']} iterations) to "
        f"r={accuracy['settings']['pool_ratio']:g}: val accuracy {pct(pool['accuracy'])} %, "
        f"{num(pool['seconds']['mean'], 0)} s per task. Pool tasks: "
        + ", ".join(f"{e['task_id'].split(':')[1]}" for e in pool["entries"])
        + "; held-out tasks: "
        + ", ".join("-".join(map(str, c)) for c in accuracy["new_tasks"])
        + " (Fashion-MNIST class ids)."
    )
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.accuracy", description=__doc__.splitlines()[0]
    )
    add_mode_arguments(parser)
    args = parser.parse_args(argv)
    payload = run(args.mode, args.results_dir, args.workers)
    for row in payload["summary"]:
        acc = row["accuracy"]
        print(
            f"{row['variant']:<28} r={row['ratio']:<4g} it={row['iters']:<5d} "
            f"acc {acc['mean']:.4f} ± {acc['std']:.4f} (n={acc['n']})  {row['seconds_total']['mean']:.0f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
