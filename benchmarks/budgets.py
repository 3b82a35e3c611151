"""One score mask, many budgets (claim 3): accuracy vs pruning ratio, each method's one score ranking reused.

    python -m benchmarks.budgets --quick|--full

For every held-out task, SMSP's score mask S (and each baseline's scores) is computed once and cut at every
ratio; the checks below confirm the scores are identical across ratios and the kept sets nested. Shares the
pool and the runs of benchmarks.accuracy. Writes results/budgets.<mode>.json.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks import accuracy
from benchmarks.common import (
    add_mode_arguments,
    command_line,
    log,
    machine_facts,
    result_path,
    write_json,
)
from benchmarks.formatting import BASELINES, label, mode_note, pct, pyplot, save_figure, table, variant_order
from benchmarks.specs import (
    paper_variant_name,
)
from benchmarks.stats import (
    summarise,
    unpack_mask,
)
from benchmarks.study import (
    Study,
)
from benchmarks.workers import (
    group_sizes,
)
from edge_smsp.criteria import SCRATCH

NAME = "budgets"


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
        "command": command_line(NAME, mode),
        "machine": machine_facts(),
        "ratios": list(study.settings.budget_ratios),
        "methods": list(study.settings.budget_methods),
        "iters": iters,
        "summary": summarise(records),
        "one_mask_checks": one_mask_checks(budget_records, sizes),
        "runs": [{k: v for k, v in r.items() if k not in ("mask", "similar_tasks")} for r in records],
    }
    path = write_json(result_path(results_dir, NAME, mode), payload)
    log(f"budgets: wrote {path}")
    return payload


def claim(budgets: dict[str, Any] | None) -> tuple[str, str]:
    """One score mask serves many ratios."""
    if not budgets:
        return "not measured", "the budgets benchmark has not run"
    checks = budgets["one_mask_checks"]
    smsp_checks = [c for c in checks if c["variant"].startswith("smsp[")]
    mechanical = all(c["same_scores"] and c["nested_masks"] for c in smsp_checks)
    paper = paper_variant_name()
    rows = {(r["variant"], r["ratio"]): r["accuracy"]["mean"] for r in budgets["summary"]}
    ratios = sorted({ratio for variant, ratio in rows if variant == paper})
    baselines = sorted({v for v, _ in rows if v in BASELINES})
    ahead, total = 0, 0
    for ratio in ratios:
        for baseline in baselines:
            if (baseline, ratio) in rows:
                total += 1
                ahead += rows[(paper, ratio)] > rows[(baseline, ratio)]
    curve = ", ".join(f"r={r:g}: {100 * rows[(paper, r)]:.1f} %" for r in ratios)
    margins = [rows[(paper, r)] - rows[("taylor", r)] for r in ratios if ("taylor", r) in rows]
    if margins:
        curve += f" (SMSP − Taylor {100 * min(margins):+.1f} to {100 * max(margins):+.1f} pt)"
    if not mechanical:
        verdict = "does not hold here"
    elif total and ahead == total:
        verdict = "holds"
    elif total and ahead == 0:
        verdict = "mixed (one mask does serve every ratio, but below the one-shot baselines)"
    else:
        verdict = "mixed (one mask serves every ratio; accuracy vs baselines varies by ratio)"
    text = (
        f"one S per task, identical scores and nested kept sets at every ratio: {mechanical} "
        f"({len(smsp_checks)} tasks); SMSP curve {curve}; above the one-shot baseline in {ahead}/{total} "
        f"(baseline, ratio) points"
    )
    return verdict, text


def plot(budgets: dict[str, Any], accuracy: dict[str, Any] | None, out: Path) -> Path:
    """Accuracy vs ratio per method (mean ± std over held-out tasks), scratch@10x as points."""
    plt = pyplot()
    paper = paper_variant_name()
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    variants = sorted({r["variant"] for r in budgets["summary"]}, key=variant_order)
    for variant in variants:
        rows = sorted((r for r in budgets["summary"] if r["variant"] == variant), key=lambda r: r["ratio"])
        axis.errorbar(
            [r["ratio"] for r in rows],
            [100 * r["accuracy"]["mean"] for r in rows],
            yerr=[100 * r["accuracy"]["std"] for r in rows],
            marker="o",
            capsize=3,
            label=label(variant, paper).replace(" (K=5, uniform, binary masks)", ""),
            linewidth=2.2 if variant == paper else 1.2,
        )
    if accuracy:
        scratch = [r for r in accuracy["summary"] if r["variant"] == SCRATCH]
        if scratch:
            axis.errorbar(
                [r["ratio"] for r in scratch],
                [100 * r["accuracy"]["mean"] for r in scratch],
                yerr=[100 * r["accuracy"]["std"] for r in scratch],
                marker="*",
                markersize=12,
                linestyle="none",
                color="black",
                label=f"scratch@{scratch[0]['iters']}",
            )
    axis.set_xlabel("pruning ratio (fraction of units removed per layer)")
    axis.set_ylabel("held-out val accuracy (%)")
    axis.set_title(f"Accuracy vs budget, {budgets['iters']} iterations (EfficientNet-Lite0)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, out)


def section(found: Mapping[str, dict[str, Any]], plots: Path) -> str | None:
    """Accuracy vs ratio from one score mask."""
    budgets = found.get(NAME)
    if not budgets:
        return None
    paper = paper_variant_name()
    image = plot(budgets, found.get(accuracy.NAME), plots / "accuracy_vs_ratio.png")
    ratios = sorted({r["ratio"] for r in budgets["summary"]})
    variants = sorted({r["variant"] for r in budgets["summary"]}, key=variant_order)
    rows = []
    for variant in variants:
        cells = []
        for ratio in ratios:
            row = next(
                (r for r in budgets["summary"] if r["variant"] == variant and r["ratio"] == ratio), None
            )
            cells.append(pct(row["accuracy"]) if row else "–")
        rows.append([label(variant, paper), *cells])
    checks = budgets["one_mask_checks"]
    ok = sum(c["same_scores"] and c["nested_masks"] for c in checks)
    return "\n\n".join(
        [
            "## 3. One mask, many budgets (claim 3)",
            mode_note(budgets),
            table(["method", *[f"r={r:g}" for r in ratios]], rows),
            f"Each method's unit scores for a task are computed once and cut at every ratio: for {ok}/{len(checks)} "
            "(method, task) pairs the scores were identical at every ratio and each tighter budget kept a subset of "
            "the looser budget's units (no re-pruning, no new similarity search).",
            f"![accuracy vs ratio](plots/{image.name})",
        ]
    )


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
