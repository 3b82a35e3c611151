"""Write benchmarks/RESULTS.md (tables, verdicts, PNG plots) from the machine-readable results/*.json.

    python -m benchmarks.report [--mode full|quick]

For each benchmark the full-mode result is used when it exists, else the quick one (the section says which).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import BENCHMARKS_DIR, DEFAULT_RESULTS_DIR, read_json, result_path
from benchmarks.study import paper_variant_name

NAMES = (
    "accuracy",
    "tuning",
    "budgets",
    "mechanism",
    "adapt_time",
    "similarity_cost",
    "speed",
    "planner_check",
)
METHOD_ORDER = ("smsp", "smsp-random", "random", "magnitude", "taylor", "scratch")


def load_results(results_dir: Path, mode: str | None) -> dict[str, dict[str, Any]]:
    """name -> payload, preferring full over quick unless a mode is forced."""
    found = {}
    for name in NAMES:
        for candidate in [mode] if mode else ["full", "quick"]:
            payload = read_json(result_path(results_dir, name, candidate))
            if payload:
                found[name] = payload
                break
    return found


# --- formatting -------------------------------------------------------------------------------------------------


def pct(stats: dict[str, Any] | None, std: bool = True) -> str:
    """'91.2 ± 3.4' (percent) from a mean_std dict."""
    if not stats or stats.get("mean") is None:
        return "–"
    text = f"{100 * stats['mean']:.1f}"
    return f"{text} ± {100 * stats['std']:.1f}" if std else text


def num(value: float | None, digits: int = 2) -> str:
    """A number or a dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def variant_order(variant: str) -> tuple[int, str]:
    """Methods in the paper's order, variants of a method together."""
    base = variant.split("[")[0]
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), variant)


def label(variant: str, paper: str) -> str:
    """Display name: SMSP variants spelled out, the paper's configuration first."""
    if not variant.startswith("smsp["):
        return variant
    k, weighting, source = variant[len("smsp[") : -1].split(",")
    source = "binary masks" if source == "masks" else "score ranks"
    weighting = "LEEP-weighted" if weighting == "leep" else "uniform"
    name = f"smsp (K={k[1:]}, {weighting}, {source})"
    return name if variant == paper else f"{name}, chosen on pool tasks"


def mode_note(payload: dict[str, Any]) -> str:
    """Where a section's numbers come from."""
    machine = payload.get("machine", {})
    return (
        f"*Mode `{payload['mode']}`, {machine.get('date', '?')}; command: `{payload.get('command', '?')}`.*"
    )


# --- verdicts ---------------------------------------------------------------------------------------------------


def claim1(mechanism: dict[str, Any] | None) -> tuple[str, str]:
    """Similar tasks share more kept units."""
    if not mechanism or mechanism.get("spearman_iou_vs_leep") is None:
        return "not measured", "the mechanism benchmark has not run"
    rho, p = mechanism["spearman_iou_vs_leep"], mechanism.get("mantel_p_one_sided")
    if rho > 0 and p is not None and p < 0.05:
        verdict = "holds"
    elif rho > 0:
        verdict = "mixed (positive but not significant)"
    else:
        verdict = "does not hold here"
    iou, chance = mechanism["iou"], mechanism["iou_chance"]
    text = (
        f"Spearman ρ(IoU, LEEP) = {rho:.2f} over {mechanism['pairs']} pool-task pairs (Mantel one-sided p = "
        f"{num(p, 3)}); IoU of kept units {iou['min']:.2f}-{iou['max']:.2f} (mean {iou['mean']:.2f}) vs "
        f"{chance:.2f} for random masks of the same size"
    )
    if iou["min"] > chance and verdict != "holds":
        text += (
            ". Every pair overlaps far above chance, but the overlap barely depends on how similar the tasks "
            "are: the kept units are mostly a task-independent core"
        )
    return verdict, text


def _summary_row(accuracy: dict[str, Any], variant: str, ratio: float) -> dict[str, Any] | None:
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
    ref_row, other_row = _summary_row(accuracy, reference, ratio), _summary_row(accuracy, other, ratio)
    if not ref_row or not other_row:
        return []
    tasks = sorted(set(ref_row["per_task"]) & set(other_row["per_task"]))
    return [ref_row["per_task"][task] - other_row["per_task"][task] for task in tasks]


def sign_flip_p(differences: Sequence[float]) -> float | None:
    """Exact two-sided paired sign-flip (permutation) test of mean difference 0; None for fewer than 3 pairs."""
    values = [d for d in differences if d == d]
    n = len(values)
    if n < 3 or n > 20:
        return None
    observed = abs(sum(values))
    extreme = 0
    for pattern in range(2**n):
        total = sum(v if (pattern >> i) & 1 else -v for i, v in enumerate(values))
        extreme += abs(total) >= observed - 1e-12
    return extreme / 2**n


def claim2(accuracy: dict[str, Any] | None) -> tuple[str, str, str, str]:
    """(verdict vs scratch, text, verdict vs one-shot, text)."""
    if not accuracy:
        return "not measured", "the accuracy benchmark has not run", "not measured", ""
    paper = accuracy["smsp_variant"]
    comparisons = accuracy["paired_vs_smsp"]
    scratch = [c for c in comparisons if c["other"] == "scratch"]
    if scratch:
        parts, verdicts = [], []
        for row in scratch:
            diff = row["difference"]["mean"]
            verdicts.append("holds" if diff >= 0 else ("mixed" if row["wins"] + row["ties"] > 0 else "no"))
            smsp_row = _summary_row(accuracy, paper, row["ratio"])
            scratch_row = _summary_row(accuracy, "scratch", row["ratio"])
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
    oneshot = [c for c in comparisons if c["other"] in ("smsp-random[k5]", "random", "magnitude", "taylor")]
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


def claim3(budgets: dict[str, Any] | None) -> tuple[str, str]:
    """One score mask serves many ratios."""
    if not budgets:
        return "not measured", "the budgets benchmark has not run"
    checks = budgets["one_mask_checks"]
    smsp_checks = [c for c in checks if c["variant"].startswith("smsp[")]
    mechanical = all(c["same_scores"] and c["nested_masks"] for c in smsp_checks)
    paper = paper_variant_name()
    rows = {(r["variant"], r["ratio"]): r["accuracy"]["mean"] for r in budgets["summary"]}
    ratios = sorted({ratio for variant, ratio in rows if variant == paper})
    baselines = sorted({v for v, _ in rows if v in ("taylor", "magnitude", "random")})
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


# --- plots ------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_budgets(budgets: dict[str, Any], accuracy: dict[str, Any] | None, out: Path) -> Path:
    """Accuracy vs ratio per method (mean ± std over held-out tasks), scratch@10x as points."""
    plt = _pyplot()
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
        scratch = [r for r in accuracy["summary"] if r["variant"] == "scratch"]
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
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def plot_mechanism(mechanism: dict[str, Any], out: Path) -> Path:
    """IoU of kept units vs LEEP for every pool-task pair, coloured by shared classes."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.6, 4.2))
    rows = mechanism["pair_rows"]
    scatter = axis.scatter(
        [r["leep"] for r in rows],
        [r["iou"] for r in rows],
        c=[r["shared_classes"] for r in rows],
        cmap="viridis",
    )
    figure.colorbar(scatter, ax=axis, label="shared classes")
    axis.axhline(mechanism["iou_chance"], color="grey", linestyle="--", label="random masks")
    axis.set_xlabel("task similarity: LEEP (mean of both directions)")
    axis.set_ylabel("IoU of kept units")
    axis.set_title(f"Spearman ρ = {num(mechanism['spearman_iou_vs_leep'])}")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def plot_speed(speed: dict[str, Any], out: Path) -> Path:
    """Measured speedup vs MAC reduction per model and size; the diagonal is the compute-bound limit."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.6, 4.2))
    top = 1.0
    for key, group in speed["groups"].items():
        rows = group["rows"]
        axis.plot([r["mac_reduction"] for r in rows], [r["speedup_p50"] for r in rows], marker="o", label=key)
        top = max(top, *(r["mac_reduction"] for r in rows), *(r["speedup_p50"] for r in rows))
    axis.plot([1, top], [1, top], color="grey", linestyle="--", label="speedup = MAC reduction")
    axis.set_xlabel("MAC reduction (x)")
    axis.set_ylabel("p50 latency speedup (x)")
    axis.set_title(f"ONNX Runtime CPU, batch 1, {speed['threads']} thread(s)")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def plot_adapt_time(adapt: dict[str, Any], out: Path) -> Path:
    """Stacked wall time per adaptation step, accuracy on top."""
    plt = _pyplot()
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
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def plot_similarity(similarity: dict[str, Any], out: Path) -> Path:
    """Similarity step seconds vs pool size (log-log), measured vs extrapolated."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 3.8))
    rows = similarity["rows"]
    axis.plot([r["entries"] for r in rows], [r["seconds_total"] for r in rows], color="grey", linestyle=":")
    for measured, marker in ((True, "o"), (False, "x")):
        chosen = [r for r in rows if r["measured"] == measured]
        axis.scatter(
            [r["entries"] for r in chosen],
            [r["seconds_total"] for r in chosen],
            marker=marker,
            s=60,
            label="measured" if measured else "extrapolated (sampled)",
        )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("pool entries")
    axis.set_ylabel("similarity step (s)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, which="both")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


# --- sections -----------------------------------------------------------------------------------------------------


def headline(accuracy: dict[str, Any]) -> str:
    """Compact table: method x ratio accuracy, iterations and wall time per run."""
    paper = accuracy["smsp_variant"]
    ratios = sorted({row["ratio"] for row in accuracy["summary"]})
    variants = sorted({row["variant"] for row in accuracy["summary"]}, key=variant_order)
    rows = []
    for variant in variants:
        cells, seconds, iters = [], [], None
        for ratio in ratios:
            row = _summary_row(accuracy, variant, ratio)
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


def accuracy_section(accuracy: dict[str, Any]) -> str:
    """Full accuracy table with params/MACs and time breakdown, paired comparisons, pool summary."""
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


def tuning_section(tuning: dict[str, Any] | None, accuracy: dict[str, Any] | None) -> str:
    """What was tried, on pool tasks only."""
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


def budgets_section(budgets: dict[str, Any], accuracy: dict[str, Any] | None, plots: Path) -> str:
    """Accuracy vs ratio from one score mask."""
    paper = paper_variant_name()
    image = plot_budgets(budgets, accuracy, plots / "accuracy_vs_ratio.png")
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


def mechanism_section(mechanism: dict[str, Any], plots: Path) -> str:
    """IoU vs LEEP."""
    image = plot_mechanism(mechanism, plots / "mechanism_iou_vs_leep.png")
    shared = mechanism["iou_by_shared_classes"]
    groups = sorted(mechanism["spearman_per_group"].items(), key=lambda item: -(item[1] or -9))
    positive = sum(1 for _, rho in groups if rho is not None and rho > 0)
    heldout = mechanism.get("heldout_iou_with_scratch") or []
    lines = [
        "## 2. Mechanism: do similar tasks keep the same units? (claim 1)",
        mode_note(mechanism),
        table(
            ["quantity", "value"],
            [
                ["pool-task pairs", mechanism["pairs"]],
                ["Spearman ρ(IoU, LEEP)", num(mechanism["spearman_iou_vs_leep"])],
                ["Mantel permutation p (one-sided)", num(mechanism["mantel_p_one_sided"], 4)],
                ["Spearman ρ(IoU, shared classes)", num(mechanism["spearman_iou_vs_shared_classes"])],
                ["mean IoU of kept units", pct(mechanism["iou"]).replace(" ±", " % ±") + " %"],
                ["IoU of two random masks (same sizes)", f"{100 * mechanism['iou_chance']:.1f} %"],
                [
                    "IoU with the backbone's L1-magnitude mask",
                    pct(mechanism["iou_with_backbone_magnitude_mask"]) + " %",
                ],
                ["layers with ρ > 0", f"{positive} / {len(groups)}"],
            ],
        ),
        "Mean IoU by number of shared classes: "
        + ", ".join(f"{k}: {100 * v['mean']:.1f} % (n={v['n']})" for k, v in shared.items()),
        f"![IoU vs LEEP](plots/{image.name})",
    ]
    if heldout:
        lines.append(
            "On held-out tasks, overlap (IoU) of each method's kept units with the from-scratch mask of the same task:"
        )
        lines.append(
            table(
                ["method", "ratio", "IoU with scratch mask %"],
                [
                    [label(r["variant"], paper_variant_name()), f"{r['ratio']:g}", pct(r["iou_with_scratch"])]
                    for r in heldout
                ],
            )
        )
    return "\n\n".join(lines)


def speed_section(speed: dict[str, Any], plots: Path) -> str:
    """Latency vs ratio next to params and MACs; runtime vs direct."""
    image = plot_speed(speed, plots / "speed_vs_macs.png")
    rows, runtime_rows = [], []
    for key, group in speed["groups"].items():
        for r in group["rows"]:
            rows.append(
                [
                    key,
                    f"{r['ratio']:g}",
                    f"{r['params'] / 1e6:.2f}",
                    f"{r['macs'] / 1e6:.1f}",
                    num(r["direct_ms"]["p50"]),
                    num(r["direct_ms"]["p90"]),
                    f"{r['mac_reduction']:.2f}x",
                    f"{r['speedup_p50']:.2f}x",
                    num(r["speedup_over_mac_reduction"]),
                ]
            )
            if r.get("runtime_ms"):
                runtime_rows.append(
                    [
                        key,
                        f"{r['ratio']:g}",
                        num(r["direct_ms"]["p50"]),
                        num(r["runtime_ms"]["p50"]),
                        num(r["direct_ms"]["p90"]),
                        num(r["runtime_ms"]["p90"]),
                        num(r.get("runtime_over_direct_p50")),
                    ]
                )
    ratios = [
        r["speedup_over_mac_reduction"] for g in speed["groups"].values() for r in g["rows"] if r["ratio"] > 0
    ]
    lines = [
        "## 4. Inference speed",
        mode_note(speed),
        f"ONNX Runtime {speed['machine']['versions']['onnxruntime']} CPUExecutionProvider, batch 1, "
        f"{speed['threads']} intra-op thread(s), 3-class head; models pruned with L1-magnitude scores at each ratio "
        "(latency depends on how many units are kept, not which) and exported with `edge_smsp.export.export_onnx`. "
        "resnet18 and deit_small use random weights (no network here), efficientnet_lite0 the bundled ImageNet "
        "weights. Ratios are measured interleaved, round by round, so that load from other processes hits them alike.",
        table(
            [
                "model @ px",
                "ratio",
                "params M",
                "MACs M",
                "p50 ms",
                "p90 ms",
                "MAC reduction",
                "speedup (p50)",
                "speedup / MAC reduction",
            ],
            rows,
        ),
        f"Speedup / MAC reduction over the pruned models: min {min(ratios):.2f}, median "
        f"{sorted(ratios)[len(ratios) // 2]:.2f}, max {max(ratios):.2f} (1.0 = the compute-bound limit); median by "
        "ratio: "
        + ", ".join(
            f"r={ratio:g}: {_median([r['speedup_over_mac_reduction'] for g in speed['groups'].values() for r in g['rows'] if r['ratio'] == ratio]):.2f}"
            for ratio in sorted(
                {r["ratio"] for g in speed["groups"].values() for r in g["rows"] if r["ratio"] > 0}
            )
        )
        + ". Where it falls well below 1 (the CNNs at high ratios), the thin pruned layers are no longer "
        "compute-bound: per-operator overhead and memory traffic, which shrink less than the MACs, dominate."
        if ratios
        else "",
        f"![speedup vs MAC reduction](plots/{image.name})",
    ]
    if runtime_rows:
        lines += [
            "Through the device runtime (`edge_smsp_runtime bench` on the `localhost` profile, local transport: "
            "upload, SHA-256 check, a fresh Python process) against the direct in-process measurement:",
            table(
                [
                    "model @ px",
                    "ratio",
                    "direct p50",
                    "runtime p50",
                    "direct p90",
                    "runtime p90",
                    "runtime / direct p50",
                ],
                runtime_rows,
            ),
        ]
    return "\n\n".join(line for line in lines if line)


def adapt_section(adapt: dict[str, Any], plots: Path) -> str:
    """Time to adapt."""
    image = plot_adapt_time(adapt, plots / "adapt_time.png")
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


def similarity_section(similarity: dict[str, Any], plots: Path) -> str:
    """Similarity cost vs pool size."""
    image = plot_similarity(similarity, plots / "similarity_cost.png")
    rows = [
        [
            r["entries"],
            "measured" if r["measured"] else f"extrapolated from {r['entries_ranked']} entries",
            num(r["seconds_list"], 3),
            num(r["seconds_rank"], 1),
            num(r["seconds_score_mask"], 3),
            num(r["seconds_total"], 1),
        ]
        for r in similarity["rows"]
    ]
    breakdown = similarity["per_entry_breakdown"]
    return "\n\n".join(
        [
            "## 6. Similarity cost vs pool size",
            mode_note(similarity),
            table(["pool entries", "how", "list s", "LEEP ranking s", "score mask s", "total s"], rows),
            f"{similarity['note']}. The step grows linearly with the pool: ~{similarity['seconds_per_entry']:.3f} s per "
            f"entry on one thread ({similarity['similarity_samples']} target images), of which per entry (median): "
            + ", ".join(f"{name} {1000 * value:.0f} ms" for name, value in breakdown.items())
            + ". Listing the pool and summing the top-K masks are negligible; each entry's pruned model must be "
            "materialised, rebuilt and run, so 1,000 entries cost minutes, not seconds: caching the loaded "
            "models or ranking a candidate subset would be needed at that size.",
            f"![similarity cost](plots/{image.name})",
        ]
    )


def planner_section(check: dict[str, Any]) -> str:
    """The planner's latency and memory predictions against device measurements."""
    parts = [
        "## 7. Planner predictions against the device",
        mode_note(check),
        "The `localhost` profile through the device runtime (local transport; the profile's threads, providers and "
        "percentile): the backbone with a 3-class head, pruned with L1-magnitude scores at each ratio, measured in "
        f"{check['settings']['rounds']} interleaved rounds (median kept). *Hint*: the profile's throughput hint "
        "alone, what the first deploy to a new device uses. *Calibrated*: the line fitted to the measurements at "
        "`deploy --calibrate`'s ratios, judged at the other ratios. *Memory*: the runtime overhead the device "
        "reports (`info`: numpy + onnxruntime imported) plus a session, 3.4x the weights and the activations, "
        "against the bench process's peak RSS; the built-in default overhead is shown for comparison.",
    ]
    for key, group in check["groups"].items():
        percentile = group["percentile"]
        rows = [
            [
                f"{r['ratio']:g}" + (" (cal.)" if r["in_calibration"] else ""),
                f"{r['macs'] / 1e6:.1f}",
                num(r["measured_ms"][percentile], 3),
                f"{num(r['predicted_hint_ms'], 3)} ({100 * r['error_hint']:+.0f}%)",
                f"{num(r['predicted_calibrated_ms'], 3)} ({100 * r['error_calibrated']:+.0f}%)",
                num(r["peak_rss_mib"], 1),
                f"{num(r['predicted_memory_device_mib'], 1)} ({r['memory_error_device_mib']:+.1f})",
                f"{num(r['predicted_memory_default_mib'], 1)} ({r['memory_error_default_mib']:+.1f})",
            ]
            for r in group["rows"]
        ]
        held_out = group["held_out_abs_error_calibrated"]
        hint = group["abs_error_hint"]
        memory_errors = [r["memory_error_device_mib"] for r in group["rows"]]
        parts += [
            f"**{key}** ({percentile}; imported runtime on the device {group['imported_rss_mib']:.1f} MiB, so a "
            f"runtime overhead of {group['runtime_overhead_device_mib']:.1f} MiB against the default "
            f"{group['runtime_overhead_default_mib']:.1f} MiB):",
            table(
                [
                    "ratio",
                    "MACs M",
                    f"measured {percentile} ms",
                    "hint ms (error)",
                    "calibrated ms (error)",
                    "peak RSS MiB",
                    "predicted MiB, device overhead (error)",
                    "predicted MiB, default overhead (error)",
                ],
                rows,
            ),
            f"Calibrated latency at held-out ratios: median |error| {100 * held_out['median']:.0f}%, max "
            f"{100 * held_out['max']:.0f}%; the hint alone: median {100 * hint['median']:.0f}%, max "
            f"{100 * hint['max']:.0f}%. Memory with the device's overhead is off by "
            f"{min(memory_errors):+.1f} to {max(memory_errors):+.1f} MiB (positive = conservative)."
            if held_out["median"] is not None
            else "",
        ]
    return "\n\n".join(part for part in parts if part)


def machine_section(found: dict[str, dict[str, Any]]) -> str:
    """CPU, cores, versions, dates, commands."""
    any_payload = found.get("accuracy") or next(iter(found.values()))
    machine = any_payload["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    commands = "\n".join(f"    {payload['command']}" for payload in found.values())
    dates = ", ".join(
        f"{name}: {payload['machine']['date']} (load {payload['machine'].get('load_average')})"
        for name, payload in found.items()
    )
    return "\n\n".join(
        [
            "## Machine and how to reproduce",
            f"CPU: {machine['cpu']}, {machine['cores_usable']} usable cores, {machine['memory_gib']} GiB RAM, "
            f"{machine['os']}, Python {machine['python']}; {versions}; commit {machine.get('git_commit')}.",
            "The cores were shared with other users' jobs while these ran (load averages below), so absolute times are "
            "pessimistic and somewhat noisy; comparisons within a table ran under the same conditions. Training runs "
            "use one thread per process (`torch.set_num_threads(1)`): with two threads, PyTorch slowed down 5-15x "
            "whenever another process took a core.",
            f"Dates and load averages: {dates}.",
            "Commands (each resumable: rerun to continue; `python -m benchmarks.all --full` runs them all):\n\n"
            + commands
            + "\n    .venv/bin/python -m benchmarks.report",
        ]
    )


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def bottom_line(
    accuracy: dict[str, Any], mechanism: dict[str, Any] | None, adapt: dict[str, Any] | None
) -> str | None:
    """Three sentences with the numbers that matter, generated from the results."""
    paper = accuracy["smsp_variant"]
    comparisons = accuracy["paired_vs_smsp"]
    scratch = next((c for c in comparisons if c["other"] == "scratch"), None)
    smsp_row = _summary_row(accuracy, paper, scratch["ratio"]) if scratch else None
    if not scratch or not smsp_row:
        return None
    scratch_row = _summary_row(accuracy, "scratch", scratch["ratio"])
    oneshot = [c for c in comparisons if c["other"] in ("random", "magnitude", "taylor")]
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


def render(found: dict[str, dict[str, Any]], plots: Path) -> str:
    """The whole RESULTS.md."""
    plots.mkdir(parents=True, exist_ok=True)
    accuracy, mechanism, budgets = found.get("accuracy"), found.get("mechanism"), found.get("budgets")
    v1, t1 = claim1(mechanism)
    v2s, t2s, v2o, t2o = claim2(accuracy)
    v3, t3 = claim3(budgets)
    parts = ["# Benchmark results: do the SMSP paper's claims hold here?"]
    if accuracy:
        parts += ["## Headline", headline(accuracy)]
        summary = bottom_line(accuracy, mechanism, found.get("adapt_time"))
        if summary:
            parts += [summary]
    parts += [
        "## Verdicts",
        table(
            ["paper claim", "verdict", "numbers"],
            [
                ["1. similar tasks share more kept units", v1, t1],
                ["2a. SMSP@100 ≥ pruning from scratch@1000", v2s, t2s],
                ["2b. SMSP > one-shot baselines at equal iterations", v2o, t2o],
                ["3. one score mask serves many budgets", v3, t3],
            ],
        ),
        "The one-shot baselines are what a user of Torch-Pruning would pick: `magnitude` and `taylor` scores come "
        "from `torch_pruning.importance.GroupMagnitudeImportance(p=1)` and `GroupTaylorImportance` over each "
        "coupled channel group (see `edge_smsp/importance.py`; Taylor on 4 batches of the new task), then the same "
        "physical pruning and the same fine-tuning as SMSP. `scratch` is the pool-building method (iterative Taylor "
        "pruning with fine-tuning between rounds) run on the new task with 10x the iterations; `smsp-random` sums "
        "the masks of K random pool tasks instead of the K most similar.",
    ]
    if accuracy:
        parts.append(accuracy_section(accuracy))
    if mechanism:
        parts.append(mechanism_section(mechanism, plots))
    if budgets:
        parts.append(budgets_section(budgets, accuracy, plots))
    parts.append(tuning_section(found.get("tuning"), accuracy))
    if "speed" in found:
        parts.append(speed_section(found["speed"], plots))
    if "adapt_time" in found:
        parts.append(adapt_section(found["adapt_time"], plots))
    if "similarity_cost" in found:
        parts.append(similarity_section(found["similarity_cost"], plots))
    if "planner_check" in found:
        parts.append(planner_section(found["planner_check"]))
    missing = [name for name in NAMES if name not in found]
    if missing:
        parts.append(
            "Not run yet: " + ", ".join(f"`python -m benchmarks.{name} --full`" for name in missing) + "."
        )
    if found:
        parts.append(machine_section(found))
    parts.append(
        "*Generated by `python -m benchmarks.report` from `benchmarks/results/*.json`; do not edit by hand.*"
    )
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument("--mode", choices=("full", "quick", "smoke"), default=None, help="force one mode")
    parser.add_argument("--out", type=Path, default=BENCHMARKS_DIR / "RESULTS.md")
    args = parser.parse_args(argv)
    found = load_results(args.results_dir, args.mode)
    if not found:
        print(f"no results in {args.results_dir}; run e.g. python -m benchmarks.all --quick first")
        return 1
    plots = args.out.parent / "plots"
    text = render(found, plots)
    temp = args.out.with_name(f".{args.out.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    temp.replace(args.out)
    sources = ", ".join(f"{name} ({payload['mode']})" for name, payload in found.items())
    print(f"wrote {args.out} from {sources}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
