"""The evidence of issues 21 and 24 as a RESULTS.md section: does similarity choose the pool entry better than
chance (the controls at the defaults), what `--time-budget` reaches, and how on-device adaptation (the light
tier) compares with host adaptation, all paired on the held-out study's tasks and seeds.

The runs come from `benchmarks.research.heldout --controls` / `--only "smsp, time budget N s"` and
`benchmarks.research.light_tier` (results/heldout.jsonl and results/light_tier.jsonl in the research folder);
this module pairs them into results/evidence.full.json and renders the section (`benchmarks.report` adds it).

    python -m benchmarks.research.heldout --ratio 0.5 --seeds 3 --controls
    python -m benchmarks.research.light_tier --ratio 0.5 --seeds 1
    python -m benchmarks.evidence
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import DEFAULT_RESULTS_DIR, log, machine_facts, read_json, result_path, write_json
from benchmarks.formatting import table

NAME = "evidence"
DEFAULT = "smsp (default)"
CONTROLS = (
    "control: random entry",
    "control: least similar entry",
    "control: most similar entry, no probe",
)
TIME_BUDGETS = tuple(f"smsp, time budget {budget} s" for budget in (10, 30, 60))
# The best criterion with the recipe and long training at the default's batch: the references beside the controls
# where the held-out table does not cover a size (64 px).
REFERENCES = ("random + recipe", "scratch@1000, batch 128")
POOL_ITERS = 1000  # the study's pools, unless a row says otherwise (the 64 px study's are @100)
VAL_IMAGES = (
    600  # 3 classes x 200: accuracies are multiples of 1/600, so paired differences are exact integers
)


def exact_sign_flip_p(differences: Sequence[float], unit: float = 1.0 / VAL_IMAGES) -> float | None:
    """Two-sided paired sign-flip test of mean difference 0, exact for any number of pairs: the differences,
    in whole validation images, flipped in every combination (a convolution over the sums)."""
    steps = [abs(round(d / unit)) for d in differences if d == d]
    if len(steps) < 3:
        return None
    observed = abs(sum(round(d / unit) for d in differences if d == d))
    total = sum(steps)
    counts = np.zeros(2 * total + 1, dtype=np.float64)
    counts[total] = 1.0
    for step in steps:
        shifted = np.zeros_like(counts)
        if step == 0:
            shifted = 2 * counts
        else:
            shifted[step:] += counts[:-step]
            shifted[:-step] += counts[step:]
        counts = shifted
    sums = np.arange(-total, total + 1)
    return float(counts[np.abs(sums) >= observed].sum() / counts.sum())


def _research_results(name: str) -> list[dict[str, Any]]:
    from benchmarks.research import common

    path = common.ROOT / "results" / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def payload_from(
    heldout_runs: Sequence[dict[str, Any]],
    light_runs: Sequence[dict[str, Any]],
    pool_iters: int = POOL_ITERS,
) -> dict[str, Any]:
    """Each comparison against the defaults, paired by (size, ratio, task, seed), from pools pruned @pool_iters."""
    runs: dict[tuple[str, int, float], dict[tuple[str, int], float]] = defaultdict(dict)
    for run in heldout_runs:
        at_defaults = run["variant"] in (DEFAULT, *CONTROLS, *TIME_BUDGETS) and run.get("iters", 100) == 100
        if at_defaults or run["variant"] in REFERENCES:
            runs[(run["variant"], run["size"], run["ratio"])][(run["task"], run["seed"])] = run[
                "val_accuracy"
            ]
    for run in light_runs:
        runs[(run["variant"], run["size"], run["ratio"])][(run["task"], run["seed"])] = run["val_accuracy"]
    rows = []
    for (variant, size, ratio), accuracies in sorted(
        runs.items(), key=lambda item: (item[0][1], item[0][2], item[0][0])
    ):
        if variant == DEFAULT:
            continue
        reference = runs.get((DEFAULT, size, ratio), {})
        keys = sorted(set(accuracies) & set(reference))
        if not keys:
            continue
        differences = [accuracies[key] - reference[key] for key in keys]
        rows.append(
            {
                "variant": variant,
                "size": size,
                "ratio": ratio,
                "pool_iters": pool_iters,
                "pairs": len(keys),
                "seeds": sorted({seed for _, seed in keys}),
                "mean": float(np.mean([accuracies[key] for key in keys])),
                "default_mean": float(np.mean([reference[key] for key in keys])),
                "difference": float(np.mean(differences)),
                "better": sum(d > 0 for d in differences),
                "worse": sum(d < 0 for d in differences),
                "p": exact_sign_flip_p(differences),
            }
        )
    extras = {
        "light_tier": [
            {key: run.get(key) for key in ("task", "seed", "ratio", "val_accuracy", "bytes_from_device",
                                           "bytes_to_device", "adapt_peak_rss_mib", "trainable_blocks", "wall_s")}
            for run in light_runs
        ],
        "time_budgets": [
            {"variant": run["variant"], "task": run["task"], "seed": run["seed"], "val_accuracy": run["val_accuracy"],
             "training": run.get("training"), "total_s": (run.get("seconds") or {}).get("total")}
            for run in heldout_runs if run["variant"] in TIME_BUDGETS
        ],
    }  # fmt: skip
    return {"benchmark": NAME, "machine": machine_facts(), "comparisons": rows, **extras}


def device_study(
    host_runs: Sequence[dict[str, Any]], device_runs: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """On-device adaptation against host adaptation from the same pool (the pool-@100 runs): per tier and count
    of trained blocks, paired accuracy, the accuracy after BN + imprint alone, bytes and seconds per device stage,
    and the measured adaptation peak against the predicted one."""
    host = {
        (run["size"], run["ratio"], run["task"], run["seed"]): run["val_accuracy"]
        for run in host_runs
        if run["variant"] == DEFAULT
    }
    groups: dict[tuple[int, float, str], list[dict[str, Any]]] = defaultdict(list)
    for run in device_runs:
        classes = len(run["task"].split("-"))
        variant = run["variant"] if classes == 3 else f"{run['variant']}, {classes} classes"
        groups[(run["size"], run["ratio"], variant)].append(run)
    rows = []
    for (size, ratio, variant), runs in sorted(
        groups.items(), key=lambda item: (item[0][0], item[0][1], item[0][2])
    ):
        paired = [run for run in runs if (size, ratio, run["task"], run["seed"]) in host]
        differences = [run["val_accuracy"] - host[(size, ratio, run["task"], run["seed"])] for run in paired]
        stages: dict[str, list[float]] = defaultdict(list)
        for run in runs:
            for stage, seconds in (run.get("device_seconds") or {}).items():
                stages[stage].append(seconds)
        memory = [
            (run["adapt_peak_rss_mib"], run["adapt_predicted_peak_mib"])
            for run in runs
            if run.get("adapt_peak_rss_mib") is not None and run.get("adapt_predicted_peak_mib") is not None
        ]
        imprinted = [run["accuracy_imprinted"] for run in paired if run.get("accuracy_imprinted") is not None]
        rows.append(
            {
                "variant": variant,
                "size": size,
                "ratio": ratio,
                "classes": sorted({len(run["task"].split("-")) for run in runs}),
                "runs": len(runs),
                "all_mean": float(np.mean([run["val_accuracy"] for run in runs])),
                "pairs": len(paired),
                "mean": float(np.mean([run["val_accuracy"] for run in paired])) if paired else None,
                "host_mean": float(np.mean([host[(size, ratio, r["task"], r["seed"])] for r in paired]))
                if paired
                else None,
                "imprinted_mean": float(np.mean(imprinted)) if imprinted else None,
                "difference": float(np.mean(differences)) if differences else None,
                "better": sum(d > 0 for d in differences),
                "worse": sum(d < 0 for d in differences),
                "p": exact_sign_flip_p(differences),
                "bytes_from_device": int(max(run["bytes_from_device"] for run in runs)),
                "describe_bytes": max(
                    (run.get("device_bytes_from") or {}).get("describe", 0) for run in runs
                ),
                "device_seconds": {stage: float(np.median(values)) for stage, values in stages.items()},
                "peak_mib": max((measured for measured, _ in memory), default=None),
                "peak_within_prediction": all(measured <= predicted for measured, predicted in memory)
                if memory
                else None,
                "peak_over_predicted": max((m / p for m, p in memory), default=None),
            }
        )
    return {"rows": rows}


def device_section(study: dict[str, Any] | None) -> list[str]:
    """The on-device study's lines of the section (none before it ran)."""
    if not study or not study.get("rows"):
        return []
    rows = []
    for row in study["rows"]:
        paired = row["pairs"] > 0
        stages = ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in row["device_seconds"].items())
        rows.append(
            [
                row["variant"],
                f"{row['size']} px",
                f"{row['ratio']:g}",
                "/".join(map(str, row["classes"])),
                f"{row['pairs']}" if paired else f"0 ({row['runs']} runs)",
                f"{100 * row['imprinted_mean']:.2f}" if row["imprinted_mean"] is not None else "-",
                f"{100 * (row['mean'] if paired else row['all_mean']):.2f}",
                f"{100 * row['host_mean']:.2f}" if paired else "-",
                f"{100 * row['difference']:+.2f}" if paired else "-",
                f"{row['better']}/{row['worse']}" if paired else "-",
                "-" if row["p"] is None else f"{row['p']:.3f}",
                f"{row['describe_bytes'] / 1024:.1f} / {row['bytes_from_device'] / 1024:.1f}",
                "-"
                if row["peak_mib"] is None
                else f"{row['peak_mib']:.0f} ({100 * row['peak_over_predicted']:.0f} %)",
                stages,
            ]
        )
    header = [
        "device adaptation", "size", "r", "classes", "pairs", "after BN + imprint %", "final %", "host %",
        "difference pt", "better/worse", "p", "KiB back: similarity / all", "peak MiB (of predicted)",
        "median s per device stage",
    ]  # fmt: skip
    return [
        "",
        "**On-device adaptation, step by step** (issue 21; pool: the 12 pool tasks pruned from scratch @100 at "
        "r = 0.5 (and r = 0.7 where listed); seeds 0-2 (24 pairs) or seed 0 (8); `deploy --device-data` through "
        "the local transport, one thread). Host: `adapt`'s defaults "
        "on the same pool. *light tier, K n* trains after the bundle's n-th cut (0: the classifier alone; no K: the "
        "default, 6); *after BN + imprint* is the device's accuracy before its first SGD step. KiB back: the "
        "descriptor and probe replies (the similarity step) and everything the device sent. Peak: the largest "
        "measured RSS of the adaptation, and its share of the host's prediction.",
        "",
        table(header, rows),
        "",
        *demo_lines(),
        "Reproduce: `python -m benchmarks.research.build_pools --size 32 --pool 0.5:100`, "
        '`python -m benchmarks.research.heldout --pool-iters 100 --only "smsp (default)" --seeds 3 [--ratio R]`, '
        "`python -m benchmarks.research.light_tier --pool-iters 100 --seeds 3 [--ratio R] [--tier torch]` (the K "
        "sweep and the 10-class task: `--seeds 1 [--blocks K] [--ten-class]`), then `python -m benchmarks.evidence`. "
        "The demo's task at 64 px: `bash scripts/demo.sh`, then `python -m benchmarks.research.demo_device` "
        "(benchmarks/results/demo_device.json).",
    ]


def merged(stored: dict[str, Any] | None, fresh: dict[str, Any]) -> dict[str, Any]:
    """The fresh comparisons over the stored ones (by variant, size and ratio): the research folder that gave
    the stored ones may be gone, and a later run may hold only some of the variants."""
    if not stored:
        return fresh
    key = lambda row: (row["variant"], row["size"], row["ratio"], row.get("pool_iters", POOL_ITERS))  # noqa: E731
    rows = {key(row): row for row in stored.get("comparisons", [])}
    rows.update({key(row): row for row in fresh["comparisons"]})
    ordered = sorted(
        rows.values(),
        key=lambda row: (row["size"], row["ratio"], -row.get("pool_iters", POOL_ITERS), row["variant"]),
    )
    return {
        **stored,
        **{name: value for name, value in fresh.items() if value or name not in stored},
        "comparisons": ordered,
    }


def demo_lines(path: Path = DEFAULT_RESULTS_DIR / "demo_device.json") -> list[str]:
    """The demo's task at 64 px, adapted on the host and on the device (benchmarks.research.demo_device)."""
    demo = read_json(path)
    if not demo or not demo.get("rows"):
        return []
    parts = []
    for row in demo["rows"]:
        if "accuracy" not in row:
            parts.append(f"{row['where']}: not run ({row.get('error', 'failed')})")
            continue
        text = f"{row['where']} {100 * row['accuracy']:.2f} %"
        if row.get("accuracy_imprinted") is not None:
            text += f" (after BN + imprint {100 * row['accuracy_imprinted']:.2f} %)"
        if row.get("adapt_peak_rss_mib") is not None and row.get("adapt_predicted_peak_mib"):
            text += f", adaptation peak {row['adapt_peak_rss_mib']:.0f} of {row['adapt_predicted_peak_mib']:.0f} MiB predicted"
        if (row.get("device_seconds") or {}).get("adapt") is not None:
            text += f", {row['device_seconds']['adapt']:.0f} s adapting"
        if row.get("note"):
            text += f" ({row['note']})"
        parts.append(text)
    ratio = next((row["ratio"] for row in demo["rows"] if "ratio" in row), None)
    return [
        f"The demo's task at {demo['image_size']} px ({demo['task']}, the demo's pool, r = {ratio}, the bundled "
        f"`localhost` profile, one thread): " + "; ".join(parts) + ".",
        "",
    ]


def merged_study(stored: dict[str, Any] | None, fresh: dict[str, Any]) -> dict[str, Any]:
    """The fresh device-study rows over the stored ones (by variant, size and ratio), as `merged` does for the
    comparisons: a session that reruns some rows keeps the others."""
    key = lambda row: (row["variant"], row["size"], row["ratio"])  # noqa: E731
    rows = {key(row): row for row in (stored or {}).get("rows", [])}
    rows.update({key(row): row for row in fresh["rows"]})
    return {"rows": sorted(rows.values(), key=lambda row: (row["size"], row["ratio"], row["variant"]))}


def _verdict(row: dict[str, Any]) -> str:
    if row["p"] is None:
        return "too few pairs"
    if row["p"] >= 0.05:
        return "level with the defaults (p >= 0.05)"
    return "above the defaults" if row["difference"] > 0 else "below the defaults"


def section(payload: dict[str, Any] | None) -> str | None:
    """The RESULTS.md section, or None before any run."""
    if not payload or not payload.get("comparisons"):
        return None
    rows = [
        [
            row["variant"],
            f"{row['size']} px",
            f"@{row.get('pool_iters', POOL_ITERS)}",
            f"{row['ratio']:g}",
            f"{row['pairs']} ({len(row['seeds'])} seed{'s' if len(row['seeds']) > 1 else ''})",
            f"{100 * row['mean']:.2f}",
            f"{100 * row['default_mean']:.2f}",
            f"{100 * row['difference']:+.2f}",
            f"{row['better']}/{row['worse']}",
            "-" if row["p"] is None else f"{row['p']:.3f}",
            _verdict(row),
        ]
        for row in payload["comparisons"]
    ]
    lines = [
        "## Does similarity matter? Controls, time budgets and on-device adaptation (issues 21 and 24)",
        "",
        "Each row is paired with the defaults (`smsp (default)`: prototype similarity, the best-probed of the top 3 "
        "entries' mask and weights, recipe `recover`, 100 iterations at batch 128) on the same held-out tasks, "
        "seeds and research pools; val accuracy %, 600 validation images per task; p: exact two-sided paired "
        "sign-flip test. Controls change only which pool entry is used. Time-budget rows use wall-clock "
        "budgets on a machine shared with other jobs (their iterations depend on the load at the time). The light "
        "tier is `deploy --device-data` (numpy + onnxruntime on the device) against host adaptation. Pool: the "
        "iterations each pool entry was pruned from scratch with (@1000: the study's pools; the 64 px rows use pools "
        "@100, built in minutes, so they compare entries of one pool, not pools).",
        "",
        table(
            [
                "variant",
                "size",
                "pool",
                "r",
                "pairs",
                "variant %",
                "defaults %",
                "difference pt",
                "better/worse",
                "p",
                "verdict",
            ],
            rows,
        ),
        "",
        "Reproduce: `python -m benchmarks.research.heldout --ratio 0.5 --seeds 3 --controls`, "
        "`python -m benchmarks.research.light_tier --ratio 0.5 --seeds 1`; the 64 px rows: "
        "`python -m benchmarks.research.build_pools --size 64 --pool 0.5:100`, then "
        "`python -m benchmarks.research.heldout --size 64 --pool-iters 100 --seeds 1 --ratio 0.5 --controls` and "
        '`... --only "random + recipe"`; then `python -m benchmarks.evidence` and `python -m benchmarks.report`.',
        *device_section(payload.get("device_study")),
    ]
    return "\n".join(lines)


def read_results(results_dir: Path = DEFAULT_RESULTS_DIR) -> dict[str, Any] | None:
    return read_json(result_path(results_dir, NAME, "full"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    args = parser.parse_args(argv)
    path = result_path(args.results_dir, NAME, "full")
    fresh = payload_from(_research_results("heldout"), _research_results("light_tier"))
    # The 64 px study runs on pools @100; their 32 px defaults @100 belong to the device study below.
    small_pools = [run for run in _research_results("heldout_pool100") if run["size"] != 32]
    fresh["comparisons"] += payload_from(small_pools, [], pool_iters=100)["comparisons"]
    payload = merged(read_json(path), fresh)
    study = device_study(_research_results("heldout_pool100"), _research_results("light_tier_pool100"))
    payload["device_study"] = merged_study(payload.get("device_study"), study)
    path = write_json(path, payload)
    log(f"{NAME}: {len(payload['comparisons'])} comparisons -> {path}")
    print(section(payload) or "no runs yet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
