"""One score mask, many budgets (claim 3): accuracy vs pruning ratio, each method's one score ranking reused.

    python -m benchmarks.budgets --quick|--full

For every held-out task, SMSP's score mask S (and each baseline's scores) is computed once and cut at every
ratio; the checks below confirm the scores are identical across ratios and the kept sets nested. Shares the
pool and the runs of benchmarks.accuracy. Writes results/budgets.<mode>.json.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.accuracy import summarise
from benchmarks.common import (
    add_mode_arguments,
    command_line,
    log,
    machine_facts,
    result_path,
    unpack_mask,
    write_json,
)
from benchmarks.study import Study, group_sizes


def one_mask_checks(records: Sequence[dict[str, Any]], sizes: dict[str, int]) -> list[dict[str, Any]]:
    """Per (variant, task): are the unit scores identical at every ratio, and the kept sets nested?"""
    by_task: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_task[(record["variant"], record["task_id"])].append(record)
    checks = []
    for (variant, task_id), members in sorted(by_task.items()):
        members.sort(key=lambda r: r["ratio"])
        digests = {r["score_digest"] for r in members}
        nested = True
        for looser, tighter in zip(members, members[1:], strict=False):
            loose_mask, tight_mask = unpack_mask(looser["mask"], sizes), unpack_mask(tighter["mask"], sizes)
            nested &= all(not (tight_mask[key] & ~loose_mask[key]).any() for key in sizes)
        checks.append(
            {
                "variant": variant,
                "task_id": task_id,
                "ratios": [r["ratio"] for r in members],
                "same_scores": len(digests) == 1,
                "nested_masks": bool(nested),
            }
        )
    return checks


def run(mode: str, results_dir: Path, workers: int | None = None) -> dict[str, Any]:
    """Ensure the budget runs, add whatever core runs exist at those iterations, write budgets.<mode>.json."""
    study = Study(mode, results_dir, workers)
    specs = study.budget_specs()
    budget_records = study.ensure(specs, "budgets")
    study.cache.reload()
    iters = study.settings.oneshot_iters
    # Every other held-out run at the same iteration budget (the accuracy table's ratios) joins the curves.
    others = [
        record
        for record in study.cache.runs.values()
        if record.get("phase") == "heldout"
        and record.get("iters") == iters
        and record["key"] not in {s.key for s in specs}
    ]
    records = budget_records + others
    sizes = group_sizes(mode)
    payload = {
        "benchmark": "budgets",
        "mode": mode,
        "command": command_line("budgets", mode),
        "machine": machine_facts(),
        "ratios": list(study.settings.budget_ratios),
        "methods": list(study.settings.budget_methods),
        "iters": iters,
        "summary": summarise(records),
        "one_mask_checks": one_mask_checks(budget_records, sizes),
        "runs": [{k: v for k, v in r.items() if k not in ("mask", "similar_tasks")} for r in records],
    }
    path = write_json(result_path(results_dir, "budgets", mode), payload)
    log(f"budgets: wrote {path}")
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.budgets", description=__doc__.splitlines()[0])
    add_mode_arguments(parser)
    args = parser.parse_args(argv)
    payload = run(args.mode, args.results_dir, args.workers)
    for row in payload["summary"]:
        acc = row["accuracy"]
        print(
            f"{row['variant']:<28} r={row['ratio']:<4g} acc {acc['mean']:.4f} ± {acc['std']:.4f} (n={acc['n']})"
        )
    same = all(check["same_scores"] and check["nested_masks"] for check in payload["one_mask_checks"])
    print(f"one score mask per task, nested kept sets across ratios: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
