"""Accuracy study (claim 2): SMSP@100 vs one-shot baselines@100 and iterative pruning from scratch@1000.

    python -m benchmarks.accuracy --quick|--full

Builds the shared pool (from-scratch iterative Taylor pruning of every pool task) and runs every method on the
held-out tasks; writes results/accuracy.<mode>.json. Resumable: finished runs are cached in study.<mode>.json.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PAPER_VARIANT,
    add_mode_arguments,
    command_line,
    log,
    machine_facts,
    mean_std,
    read_json,
    result_path,
    write_json,
)
from benchmarks.study import Study, paper_variant_name, variant_spec


def tuned_variants(results_dir: Path, mode: str) -> list[tuple[Any, ...]]:
    """The SMSP variant chosen on pool tasks (benchmarks.tuning), when it differs from the paper's default."""
    tuning = read_json(result_path(results_dir, "tuning", mode))
    if not tuning or not tuning.get("selected_variant"):
        return []
    selected = tuple(tuning["selected_variant"])
    return [] if selected == PAPER_VARIANT else [selected]


def summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std of val accuracy and wall time per (variant, ratio, iters), over tasks."""
    groups: dict[tuple[str, float, int], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["variant"], record["ratio"], record["iters"])].append(record)
    rows = []
    for (variant, ratio, iters), members in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        rows.append(
            {
                "variant": variant,
                "method": members[0]["method"],
                "ratio": ratio,
                "iters": iters,
                "accuracy": mean_std([m["val_accuracy"] for m in members]),
                "seconds_total": mean_std([m["seconds"]["total"] for m in members]),
                "seconds": {
                    part: mean_std([m["seconds"].get(part, 0.0) for m in members])["mean"]
                    for part in ("similarity", "pruning", "finetuning", "total")
                },
                "params_after": mean_std([m["params_after"] for m in members])["mean"],
                "params_before": members[0]["params_before"],
                "macs_after": mean_std([m["macs_after"] for m in members])["mean"],
                "macs_before": members[0]["macs_before"],
                "per_task": {m["task_id"]: m["val_accuracy"] for m in members},
            }
        )
    return rows


def paired(records: Sequence[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Per-task differences reference - other, at the same ratio (every method sees the same task and seed)."""
    by_key = {(r["variant"], r["ratio"], r["iters"], r["task_id"]): r["val_accuracy"] for r in records}
    ref_items = {
        (ratio, task): acc for (variant, ratio, _iters, task), acc in by_key.items() if variant == reference
    }
    comparisons: dict[tuple[str, float, int], list[float]] = defaultdict(list)
    for (variant, ratio, iters, task), accuracy in by_key.items():
        if variant == reference or (ratio, task) not in ref_items:
            continue
        comparisons[(variant, ratio, iters)].append(ref_items[(ratio, task)] - accuracy)
    rows = []
    for (variant, ratio, iters), differences in sorted(
        comparisons.items(), key=lambda item: (item[0][1], item[0][0])
    ):
        rows.append(
            {
                "reference": reference,
                "other": variant,
                "ratio": ratio,
                "other_iters": iters,
                "difference": mean_std(differences),
                "wins": sum(d > 0 for d in differences),
                "ties": sum(d == 0 for d in differences),
                "losses": sum(d < 0 for d in differences),
            }
        )
    return rows


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
        "command": command_line("accuracy", mode),
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
    path = write_json(result_path(results_dir, "accuracy", mode), payload)
    log(f"accuracy: wrote {path}")
    return payload


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
