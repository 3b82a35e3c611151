"""The held-out study of issue 8 as a RESULTS.md section: the product's default adaptation on held-out tasks
against pruning from scratch and the Torch-Pruning criteria, over seeds, paired.

The runs come from `benchmarks.research.heldout` (resumable, results/heldout.jsonl in the research folder);
this module turns them into results/heldout.full.json and renders the section (`benchmarks.report` adds it).

    python -m benchmarks.research.build_pools --size 32 --pool 0.5:1000 --pool 0.7:1000
    python -m benchmarks.research.heldout --ratio 0.5 --ratio 0.7 --seeds 3
    python -m benchmarks.research.heldout --seeds 3 --iters 25 --iters 50 --iters 200 --iters 400 \\
        --only "smsp, batch 32"
    python -m benchmarks.heldout          # writes results/heldout.full.json
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import DEFAULT_RESULTS_DIR, log, machine_facts, read_json, result_path, write_json
from benchmarks.formatting import pyplot, save_figure, table
from benchmarks.heldout_choices import ADOPTED, probe_choice, tried_after_probe
from benchmarks.heldout_store import merged, stored_run
from benchmarks.stats import sign_flip_p

NAME = "heldout"
REFERENCE = "scratch@1000"
DEFAULT = "smsp (default)"
CRITERIA = ("taylor + recipe", "magnitude + recipe", "random + recipe")
# Variants marked ", batch 32" fine-tuned 32 images per iteration (SGD 0.01), as every run did before the
# default took batch 128 (SGD 0.04); scratch and scratch@1000 train at batch 32.
EARLIER_DEFAULT = "smsp, batch 32"
EARLIER_CRITERIA = tuple(f"{criterion}, batch 32" for criterion in CRITERIA)
# The default before the probe stage (the most similar entry's weights): what the probe is measured against.
MOST_SIMILAR = "smsp, most similar entry (probe 1), batch 32"
# Long training at the default's batch: does the reference rise with the batch as the default did?
REFERENCE_AT_BATCH_128 = "scratch@1000, batch 128"
# Variants trained for a budget of their own, whatever the driver's --iters.
FIXED_BUDGET = {REFERENCE: 1000, REFERENCE_AT_BATCH_128: 1000}


def cells(runs: Sequence[Mapping[str, Any]]) -> dict[tuple[float, str, int], dict[tuple[str, int], float]]:
    """(ratio, variant, iterations) -> (task, seed) -> accuracy."""
    found: dict[tuple[float, str, int], dict[tuple[str, int], float]] = {}
    for run in runs:
        found.setdefault((run["ratio"], run["variant"], run["iters"]), {})[(run["task"], run["seed"])] = run[
            "val_accuracy"
        ]
    return found


def paired(first: Mapping[Any, float], second: Mapping[Any, float]) -> dict[str, Any] | None:
    """Mean ± std of first − second (pt) over their common (task, seed) pairs, wins/losses and sign-flip p."""
    pairs = sorted(set(first) & set(second))
    if not pairs:
        return None
    diffs = np.array([first[p] - second[p] for p in pairs]) * 100
    # Seeds of one task are not independent samples: the test runs on the per-task mean differences.
    by_task: dict[str, list[float]] = {}
    for (task, _seed), diff in zip(pairs, diffs, strict=True):
        by_task.setdefault(task, []).append(float(diff))
    return {
        "pairs": len(pairs),
        "mean": float(diffs.mean()),
        "std": float(diffs.std()),
        "better": int((diffs > 0).sum()),
        "worse": int((diffs < 0).sum()),
        "tasks": len(by_task),
        "p": sign_flip_p([float(np.mean(values)) for values in by_task.values()]),
    }


def ranking(runs: Sequence[Mapping[str, Any]], pool_tasks: Sequence[Sequence[int]]) -> dict[str, int]:
    """Per held-out task, whether the default similarity's top entry is a pool task sharing the most classes (the
    ranking does not depend on the training seed; a task whose runs disagree counts as a miss)."""
    tops: dict[str, set[str]] = {}
    for run in runs:
        if run["variant"] == DEFAULT and run.get("similar_tasks"):
            tops.setdefault(run["task"], set()).add(run["similar_tasks"][0])
    hits = 0
    for task, chosen in tops.items():
        classes = {int(c) for c in task.split("-")}
        best = max(len(classes & set(pool_task)) for pool_task in pool_tasks)
        shared = {len(classes & {int(c) for c in top.split(":")[1].split("-")}) for top in chosen}
        hits += shared == {best}
    return {"hits": hits, "tasks": len(tops)}


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def estimator_hits(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """estimator -> held-out tasks whose top-ranked pool task shares the most classes, out of those ranked."""
    found: dict[str, dict[str, int]] = {}
    for record in records:
        cell = found.setdefault(record["estimator"], {"hits": 0, "tasks": 0})
        cell["hits"] += bool(record["hit"])
        cell["tasks"] += 1
    return found


def claims(payload: Mapping[str, Any] | None) -> list[list[str]]:
    """Verdict rows (claim, verdict, numbers) for the product's default @100 on the held-out tasks: against
    scratch@1000, and against each Torch-Pruning criterion with the same recipe."""
    if not payload:
        return []
    found = cells(payload["runs"])
    ratios = sorted({key[0] for key in found})
    rows = []
    for claim, others in (
        ("2a. the same for the product's defaults (held-out study)", (REFERENCE, REFERENCE_AT_BATCH_128)),
        ("2b. the same for the product's defaults (held-out study, criteria + the same recipe)", CRITERIA),
    ):
        parts, above, below = [], [], []
        for ratio in ratios:
            default = found.get((ratio, DEFAULT, 100), {})
            for other in others:
                result = paired(default, found.get((ratio, other, FIXED_BUDGET.get(other, 100)), {}))
                if result is None:
                    continue
                (above if result["mean"] >= 0 else below).append((f"r={ratio:g} vs {other}", result["p"]))
                parts.append(
                    f"r={ratio:g} vs {other}: {result['mean']:+.2f} pt (better in {result['better']}/"
                    f"{result['pairs']} runs, p = {_p(result['p'])})"
                )
        if parts:
            rows.append([claim, _verdict(above, below), "; ".join(parts)])
    return rows


def _verdict(above: Sequence[tuple[str, float]], below: Sequence[tuple[str, float]]) -> str:
    """A claim's verdict from its comparisons (label, p), split by the sign of the default's mean difference."""
    noisy = [label for label, p in (*above, *below) if p >= 0.05]
    if not below:
        return f"holds on the mean; within noise (p ≥ 0.05) for {', '.join(noisy)}" if noisy else "holds"
    if not above:
        return "does not hold here"
    if all(p >= 0.05 for _label, p in below):
        return f"level: below on the mean only within noise (p ≥ 0.05), for {', '.join(label for label, _p in below)}"
    return "mixed"


def section(payload: Mapping[str, Any] | None, plots: Path) -> str | None:
    """Held-out study: tables per ratio, the paired tests, ranking quality, the accuracy-vs-iterations plot."""
    if not payload:
        return None
    found = cells(payload["runs"])
    parts = [
        "## Held-out study: the default adaptation against long training (issue 8)",
        f"{payload['tasks']} held-out Fashion-MNIST 3-class tasks (never used to choose anything), "
        f"{payload['seeds']} training seeds each, 32 px, bundled EfficientNet-Lite0, one thread per run; pools of "
        "the 12 pool tasks pruned from scratch @1000 at the same ratio. *smsp (default)* is `adapt`'s defaults: "
        "prototype similarity, then of the 3 most similar entries the one whose own features separate the new "
        "classes best (nearest class mean on training images: the probe), its mask and weights, recipe `recover` "
        "(adaptive BN + imprinted head), then 100 iterations at **batch 128** with SGD's learning rate scaled "
        f"to 0.04. Rows marked *batch 32* fine-tune 32 images per iteration at 0.01: *{EARLIER_DEFAULT}* is the "
        f"default until batch 128 was adopted, *{MOST_SIMILAR}* the same without the probe (the default of the "
        "study's first run). *+ recipe* criteria get the same recipe and, unless marked, the same batch. "
        "*scratch@1000* and *scratch* prune from scratch at batch 32: at @100 the default sees 12,800 training "
        "images, scratch@1000 32,000 (plus its pruning rounds' scores); *scratch@1000, batch 128* is the same at the "
        "default's batch and rate (128,000 images). Differences are paired over (task, seed), "
        "their mean ± std over those runs; better/worse counts runs; p is the exact two-sided sign-flip test on "
        "the per-task mean differences (seeds of one task are not independent; with 8 tasks the smallest possible "
        "p is 0.0078). s / run: one adaptation's wall time, two 1-thread runs at a time on the 2 cores.",
    ]
    if payload.get("probe_choice"):
        parts.append(
            "The probe was chosen on pool tasks before these runs (leave-one-out, 12 pool tasks, 1 seed, "
            "`benchmarks.research.loo`): "
            + "; ".join(
                f"r = {row['ratio']:g}: {row['most_similar']:.2f} % with the most similar entry, "
                f"{row['probe3']:.2f} % with the probe ({row['better']} tasks better, {row['worse']} worse, "
                f"p = {_p(row['p'])})"
                for row in payload["probe_choice"]
            )
            + "."
        )
    if tried := payload.get("tried_after_probe"):
        best = max(tried, key=lambda row: row["difference"])
        adopted = best["change"] == ADOPTED
        rows = [
            [
                row["change"],
                f"{row['accuracy']:.2f}",
                f"{row['difference']:+.2f}",
                f"{row['better']}/{row['worse']}",
                _p(row["p"]),
                f"{row['seconds']:.0f}",
            ]
            for row in tried
        ]
        parts += [
            "Tried on the pool tasks around the batch-32 default after the probe (leave-one-out, 12 pool tasks, "
            f"r = 0.5, @100, 1 seed; that default there: {best['accuracy'] - best['difference']:.2f} %; "
            "`benchmarks.research.loo --exp default05`, `--exp probe05`, `--exp pool05_2000`, `--exp batch05`). "
            f"The largest gain: {best['change']}, {best['difference']:+.2f} pt (p = {_p(best['p'])}); "
            + (
                "it became the default (the held-out runs below), the rest were not adopted."
                if adopted
                else "none was adopted."
            )
            + f" s / run: one adaptation's wall time (the batch-32 default: {tried[0]['default_seconds']:.0f} s; "
            "the machine's load varied between these runs; distillation adds the teacher's fit and its forward "
            "pass at every step).",
            table(
                [
                    "change to the default",
                    "val acc %",
                    "vs the default (pt)",
                    "tasks better/worse",
                    "p",
                    "s / run",
                ],
                rows,
            ),
        ]
    seconds = wall_seconds(payload["runs"])
    for ratio in sorted({key[0] for key in found}):
        reference = found.get((ratio, REFERENCE, 1000), {})
        rows = []
        variants = [key for key in found if key[0] == ratio and (key[2] == 100 or key[1] in FIXED_BUDGET)]
        for key in sorted(variants, key=lambda k: -np.mean(list(found[k].values()))):
            values = np.array(list(found[key].values())) * 100
            against = paired(found[key], reference) if key[1] != REFERENCE else None
            rows.append(
                [
                    key[1] if key[1] in FIXED_BUDGET else f"{key[1]} @{key[2]}",
                    len(values),
                    f"{values.mean():.2f} ± {values.std():.2f}",
                    "" if against is None else f"{against['mean']:+.2f} ± {against['std']:.2f}",
                    "" if against is None else f"{against['better']}/{against['worse']}",
                    "" if against is None else _p(against["p"]),
                    f"{seconds[key]:.0f}" if key in seconds else "",
                ]
            )
        parts += [
            f"**r = {ratio:g}**",
            table(
                ["variant", "runs", "val acc %", "vs scratch@1000 (pt)", "better/worse", "p", "s / run"], rows
            ),
        ]
        lines = []
        comparisons = [(DEFAULT, other) for other in (*CRITERIA, EARLIER_DEFAULT, REFERENCE_AT_BATCH_128)]
        comparisons += [(EARLIER_DEFAULT, other) for other in (MOST_SIMILAR, *EARLIER_CRITERIA)]
        for first, second in comparisons:
            result = paired(
                found.get((ratio, first, 100), {}),
                found.get((ratio, second, FIXED_BUDGET.get(second, 100)), {}),
            )
            if result:
                lines.append(
                    f"{first} − {second}: {result['mean']:+.2f} ± {result['std']:.2f} pt "
                    f"({result['better']}/{result['worse']}, p = {_p(result['p'])})"
                )
        parts.append("; ".join(lines) + ".")
        switched = [run for run in _default_runs(payload["runs"], ratio) if run.get("chosen")]
        if switched:
            other = sum(run["chosen"][0] != run["similar_tasks"][0] for run in switched)
            parts.append(
                f"The probe took another entry than the most similar one in {other} of {len(switched)} default runs."
            )
    parts += iteration_tables(found)
    rank = payload["ranking"]
    parts.append(
        f"Ranking quality (default prototype similarity): the top entry shares the most classes with the held-out "
        f"task for {rank['hits']}/{rank['tasks']} tasks (target ≥ 90 %)."
    )
    if payload.get("estimators"):
        parts.append(
            table(
                ["similarity estimator", "held-out tasks whose top entry shares the most classes"],
                [[name, f"{cell['hits']}/{cell['tasks']}"] for name, cell in payload["estimators"].items()],
            )
            + "\n\nLEEP and LogME score each entry's pruned model on a 500-image sample of the task (pool r=0.5 "
            "@1000); the prototype estimator compares the backbone's class prototypes (no entry model)."
        )
    image = plot(found, plots / "heldout_accuracy_vs_iterations.png")
    if image is not None:
        parts.append(f"![held-out accuracy vs iterations](plots/{image.name})")
    return "\n\n".join(parts)


def _curves(
    found: Mapping[tuple[float, str, int], Mapping[Any, float]],
) -> dict[tuple[float, str], list[int]]:
    """(ratio, variant) -> its budgets, for the variants run at more than one budget (scratch@1000 aside)."""
    budgets: dict[tuple[float, str], list[int]] = {}
    for ratio, variant, iters in found:
        if variant not in FIXED_BUDGET:
            budgets.setdefault((ratio, variant), []).append(iters)
    return {key: sorted(values) for key, values in sorted(budgets.items()) if len(values) > 1}


def _seed_mean(cell: Mapping[tuple[str, int], float], seed: int) -> float | None:
    values = [accuracy for (_task, run_seed), accuracy in cell.items() if run_seed == seed]
    return 100 * float(np.mean(values)) if values else None


def iteration_tables(found: Mapping[tuple[float, str, int], Mapping[Any, float]]) -> list[str]:
    """Accuracy against iterations: every curve on seed 0 (the seed every variant ran) side by side; then each
    curve run with several seeds beyond @100, every seed at each budget, paired against scratch@1000."""
    curves = _curves(found)
    parts = []
    for ratio in sorted({ratio for ratio, _variant in curves}):
        variants = [variant for curve_ratio, variant in curves if curve_ratio == ratio]
        budgets = sorted({n for (r, _variant), values in curves.items() if r == ratio for n in values})
        reference = _seed_mean(found.get((ratio, REFERENCE, 1000), {}), 0)
        rows = []
        for iters in budgets:
            row = [iters]
            for variant in variants:
                mean = _seed_mean(found.get((ratio, variant, iters), {}), 0)
                row.append(
                    ""
                    if mean is None
                    else f"{mean:.2f}" + ("" if reference is None else f" ({mean - reference:+.2f})")
                )
            rows.append(row)
        parts += [
            f"**Accuracy against fine-tuning iterations, r = {ratio:g}, seed 0** (mean over the 8 held-out tasks; "
            f"in brackets: against scratch@1000 on the same seed"
            + ("" if reference is None else f", {reference:.2f} %")
            + "; *scratch* prunes from scratch with the row's iterations):",
            table(["iterations", *variants], rows),
        ]
    for (ratio, variant), budgets in curves.items():
        reference = found.get((ratio, REFERENCE, 1000), {})
        rows = []
        for iters in budgets:
            cell = found[(ratio, variant, iters)]
            against = paired(cell, reference)
            rows.append(
                [
                    iters,
                    len(cell),
                    f"{100 * np.mean(list(cell.values())):.2f}",
                    "" if against is None else f"{against['mean']:+.2f} ± {against['std']:.2f}",
                    "" if against is None else f"{against['better']}/{against['worse']}",
                    "" if against is None else _p(against["p"]),
                ]
            )
        if any(len({seed for _task, seed in found[(ratio, variant, n)]}) > 1 for n in budgets if n != 100):
            parts += [
                f"**{variant}, r = {ratio:g}, against fine-tuning iterations, every seed run at each budget:**",
                table(["iterations", "runs", "val acc %", "vs scratch@1000 (pt)", "better/worse", "p"], rows),
            ]
    return parts


def plot(found: Mapping[tuple[float, str, int], Mapping[Any, float]], out: Path) -> Path | None:
    """Mean held-out accuracy (seed 0) against fine-tuning iterations: a line per variant run at several budgets,
    a dotted line for scratch@1000."""
    curves = _curves(found)
    if not curves:
        return None
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.2, 4.0))
    ticks: set[int] = set()
    for index, ratio in enumerate(sorted({ratio for ratio, _variant in curves})):
        reference = _seed_mean(found.get((ratio, REFERENCE, 1000), {}), 0)
        if reference is not None:
            style = (":", "--", "-.")[index % 3]
            axis.axhline(reference, linestyle=style, color="grey", label=f"{REFERENCE} r={ratio:g}")
    for (ratio, variant), budgets in curves.items():
        points = [(n, _seed_mean(found[(ratio, variant, n)], 0)) for n in budgets]
        points = [(n, mean) for n, mean in points if mean is not None]
        ticks.update(n for n, _mean in points)
        axis.plot(*zip(*points, strict=True), marker="o", label=f"{variant} r={ratio:g}")
    axis.set_xscale("log")
    axis.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
    axis.minorticks_off()
    axis.set_xlabel("fine-tuning iterations")
    axis.set_ylabel("held-out val accuracy % (seed 0)")
    axis.legend(fontsize=6)
    axis.grid(alpha=0.3)
    return save_figure(figure, out)


def wall_seconds(runs: Iterable[Mapping[str, Any]]) -> dict[tuple[float, str, int], float]:
    """(ratio, variant, iterations) -> mean wall time of one run, for the runs that recorded it."""
    times: dict[tuple[float, str, int], list[float]] = {}
    for run in runs:
        if "wall_s" in run:
            times.setdefault((run["ratio"], run["variant"], run["iters"]), []).append(run["wall_s"])
    return {key: float(np.mean(values)) for key, values in times.items()}


def _default_runs(runs: Iterable[Mapping[str, Any]], ratio: float) -> list[Mapping[str, Any]]:
    return [
        run for run in runs if run["variant"] == DEFAULT and run["ratio"] == ratio and run["iters"] == 100
    ]


def payload_from(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON payload of a set of research runs (benchmarks.research.heldout records)."""
    from benchmarks.research import common

    runs = sorted(runs, key=lambda run: run["key"])
    loo_runs = common.Results("loo").load()
    return {
        "benchmark": NAME,
        "mode": "full",
        "command": ".venv/bin/python -m benchmarks.research.heldout --ratio 0.5 --ratio 0.7 --seeds 3",
        "machine": machine_facts(),
        "tasks": len({run["task"] for run in runs}),
        "seeds": len({run["seed"] for run in runs}),
        "ranking": ranking(runs, common.pool_tasks()),
        "estimators": estimator_hits(common.Results("heldout_rank").load().values()),
        "probe_choice": probe_choice(loo_runs, common.pool_tasks()),
        "tried_after_probe": tried_after_probe(loo_runs, common.pool_tasks()),
        "runs": [stored_run(run) for run in runs],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Collect the research runs into results/heldout.full.json."""
    from benchmarks.research import common

    parser = argparse.ArgumentParser(prog="python -m benchmarks.heldout", description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument(
        "--merge",
        action="store_true",
        help="add the research folder's runs to the stored results instead of rebuilding them from it",
    )
    args = parser.parse_args(argv)
    runs = list(common.Results("heldout").load().values())
    path = result_path(args.results_dir, NAME, "full")
    if args.merge:
        payload, added = merged(read_json(path), runs)
        log(f"heldout: {added} of {len(runs)} runs added to {len(payload['runs']) - added} stored")
    else:
        payload = payload_from(runs)
        log(f"heldout: {len(runs)} runs")
    log(f"heldout -> {write_json(path, payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
