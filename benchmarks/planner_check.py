"""The planner's predictions against the device: latency (hint and calibrated) and peak memory vs measured.

    python -m benchmarks.planner_check --quick|--full

On the `localhost` profile (local transport, the profile's threads and providers): the backbone with a 3-class
head, pruned with magnitude scores at every ratio of a grid and exported to ONNX, is benchmarked through the
device runtime in rounds (the ratios interleaved, so that load from other processes hits them alike; the median
per ratio is kept). Then, as `deploy` does:
- latency from the profile's throughput hint alone;
- latency from the line fitted to the measurements at deploy's calibration ratios, judged at the other ratios;
- peak memory from the hint and from the memory model fitted to the calibration runs.
Writes results/planner_check.<mode>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    add_mode_arguments,
    command_line,
    log,
    machine_facts,
    quiet_warnings,
    result_path,
    tmp_dir,
    write_json,
)
from benchmarks.formatting import mode_note, num, table
from benchmarks.speed import HEAD_CLASSES, export_pruned

NAME = "planner_check"


@dataclasses.dataclass(frozen=True)
class CheckSettings:
    """One mode: which models, the ratio grid and how long each benchmark runs."""

    models: tuple[tuple[str, int], ...]  # (backbone, input size)
    ratios: tuple[float, ...]
    rounds: int
    runs: int
    min_seconds: float


SETTINGS = {
    "smoke": CheckSettings((("efficientnet_lite0", 32),), (0.0, 0.4, 0.5, 0.7), 1, 20, 0.1),
    "quick": CheckSettings((("efficientnet_lite0", 64),), (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7), 2, 200, 0.5),
    "full": CheckSettings(
        (("efficientnet_lite0", 64), ("resnet18", 64)),
        tuple(round(0.1 * step, 1) for step in range(9)),
        3,
        300,
        1.0,
    ),
}


def measure(paths: Sequence[Path], settings: CheckSettings, workdir: Path) -> tuple[list[list[dict]], dict]:
    """Per model, the runtime's bench report of every round; and the device's `info`."""
    from edge_smsp.deploy.session import BenchSettings
    from edge_smsp.devices.profiles import load_profile
    from edge_smsp.transport import open_transport

    profile = load_profile("localhost")
    # This interpreter (it has onnxruntime) and a work dir inside the results' tmp folder, not ~/.cache.
    connection = dataclasses.replace(profile.connection, python=sys.executable, workdir=str(workdir))
    bench = BenchSettings(runs=settings.runs, min_seconds=settings.min_seconds)
    reports: list[list[dict]] = [[] for _ in paths]
    with open_transport(connection) as transport:
        info = transport.run_runtime(["info"], timeout=120)
        remotes = [transport.upload(path, f"models/{path.name}") for path in paths]
        for round_index in range(settings.rounds):
            log(f"planner_check: round {round_index + 1}/{settings.rounds} over {len(paths)} models")
            for index, remote in enumerate(remotes):
                reports[index].append(
                    transport.run_runtime(bench.runtime_args(remote, profile), timeout=bench.timeout)
                )
        transport.cleanup()
    return reports, info


def check_model(name: str, size: int, settings: CheckSettings, out_dir: Path) -> dict[str, Any]:
    """Measure one backbone over the ratio grid and compare with every prediction the planner makes."""
    from edge_smsp.deploy.steps import CALIBRATION_RATIOS
    from edge_smsp.devices.planner import (
        Measurement,
        cost_at_ratio,
        fit_latency_model,
        fit_memory_model,
        hint_memory_model,
        predict_latency_ms,
        predict_memory_bytes,
        run_macs,
    )
    from edge_smsp.devices.profiles import MIB, load_profile
    from edge_smsp.models.prune import replace_classifier
    from edge_smsp.models.zoo import default_pretrained, load_backbone

    profile = load_profile("localhost")
    percentile = profile.latency_percentile
    exported = export_pruned(name, size, settings.ratios, out_dir)
    reports, info = measure([Path(row["onnx"]) for row in exported], settings, out_dir / "device")
    shipped = replace_classifier(
        load_backbone(name, pretrained=default_pretrained(name), image_size=size), HEAD_CLASSES
    )
    hint_memory = hint_memory_model(profile, info["imported_rss_mib"])

    rows = []
    for row, runs in zip(exported, reports, strict=True):
        cost = cost_at_ratio(shipped, size, row["ratio"])
        measured = {
            key: statistics.median(run["latency_ms"][key] for run in runs) for key in ("p50", "p90", "p99")
        }
        rows.append(
            {
                "ratio": row["ratio"],
                "params": cost.params,
                "macs": cost.macs,
                "measured_ms": measured,
                "measured_rounds_ms": [run["latency_ms"][percentile] for run in runs],
                "peak_rss_mib": statistics.median(run["peak_rss_mib"] for run in runs),
                "imported_rss_mib": statistics.median(run["imported_rss_mib"] for run in runs),
                "weight_bytes": cost.weight_bytes,
                "peak_activation_bytes": cost.peak_activation_bytes,
                "cost": cost,
            }
        )
    for row in rows:
        row["in_calibration"] = row["ratio"] in CALIBRATION_RATIOS
    calibration = [row for row in rows if row["in_calibration"]]
    # As deploy --calibrate fits it: to the calibration runs, on top of the runtime `info` reported.
    fitted_memory = fit_memory_model(profile, calibration, info["imported_rss_mib"])
    for row in rows:
        cost = row.pop("cost")
        for label, model in (("hint", hint_memory), ("fitted", fitted_memory)):
            row[f"predicted_memory_{label}_mib"] = predict_memory_bytes(cost, profile, model) / MIB
            row[f"memory_error_{label}_mib"] = row[f"predicted_memory_{label}_mib"] - row["peak_rss_mib"]
    hint = fit_latency_model(profile)
    fitted = fit_latency_model(
        profile,
        [
            Measurement(row["ratio"], row["measured_ms"], run_macs(row["macs"], profile))
            for row in calibration
        ],
    )
    for row in rows:
        measured = row["measured_ms"][percentile]
        for label, model in (("hint", hint), ("calibrated", fitted)):
            predicted = predict_latency_ms(model, row["macs"], profile)
            row[f"predicted_{label}_ms"] = predicted
            row[f"error_{label}"] = (predicted - measured) / measured
    held_out = [row for row in rows if not row["in_calibration"]]
    return {
        "model": name,
        "image_size": size,
        "percentile": percentile,
        "calibration_ratios": [row["ratio"] for row in calibration],
        "latency_model_hint": dataclasses.asdict(hint),
        "latency_model_calibrated": dataclasses.asdict(fitted),
        "imported_rss_mib": info["imported_rss_mib"],
        "memory_model_hint": dataclasses.asdict(hint_memory),
        "memory_model_fitted": dataclasses.asdict(fitted_memory),
        "rows": rows,
        "held_out_abs_error_calibrated": _abs_summary([row["error_calibrated"] for row in held_out]),
        "abs_error_hint": _abs_summary([row["error_hint"] for row in rows]),
    }


def _abs_summary(errors: Sequence[float]) -> dict[str, float | None]:
    values = [abs(error) for error in errors]
    if not values:
        return {"median": None, "max": None}
    return {"median": statistics.median(values), "max": max(values)}


def run(mode: str, results_dir: Path, workers: int | None = None) -> dict[str, Any]:
    """Check every model of the mode (in this process: `workers` is not used), write planner_check.<mode>.json."""
    quiet_warnings()
    settings = SETTINGS[mode]
    out_dir = tmp_dir(results_dir, mode) / "planner_check"
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = {}
    for name, size in settings.models:
        log(f"planner_check: {name}@{size} at ratios {list(settings.ratios)}")
        groups[f"{name}@{size}"] = check_model(name, size, settings, out_dir)
    payload = {
        "benchmark": "planner_check",
        "mode": mode,
        "command": command_line(NAME, mode),
        "machine": machine_facts(),
        "profile": "localhost",
        "settings": dataclasses.asdict(settings),
        "groups": groups,
    }
    path = result_path(results_dir, NAME, mode)
    write_json(path, payload)
    log(f"planner_check: wrote {path}")
    return payload


def section(found: Mapping[str, dict[str, Any]], plots: Path) -> str | None:
    """The planner's latency and memory predictions against device measurements."""
    check = found.get(NAME)
    if not check:
        return None
    parts = [
        "## 7. Planner predictions against the device",
        mode_note(check),
        "The `localhost` profile through the device runtime (local transport; the profile's threads, providers and "
        "percentile): the backbone with a 3-class head, pruned with L1-magnitude scores at each ratio, measured in "
        f"{check['settings']['rounds']} interleaved rounds (median kept). *Hint*: the profile's throughput hint "
        "alone, what the first deploy to a new device uses. *Calibrated*: the line fitted to the measurements at "
        "`deploy --calibrate`'s ratios, judged at the other ratios. *Memory* against the bench process's peak "
        "RSS, on top of the imported runtime the device reports (`info`: numpy + onnxruntime): the *hint* (a "
        "session, 3.4x the weights and the activations), and the model *fitted* to the calibration runs (a line "
        "in the weights, slopes that over-predict outside them, a margin from the residuals: "
        "`edge_smsp.devices.memory_model`).",
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
                f"{num(r['predicted_memory_hint_mib'], 1)} ({r['memory_error_hint_mib']:+.1f})",
                f"{num(r['predicted_memory_fitted_mib'], 1)} ({r['memory_error_fitted_mib']:+.1f})",
            ]
            for r in group["rows"]
        ]
        held_out = group["held_out_abs_error_calibrated"]
        hint = group["abs_error_hint"]
        errors = {
            label: [r[f"memory_error_{label}_mib"] for r in group["rows"]] for label in ("hint", "fitted")
        }
        fitted = group["memory_model_fitted"]
        parts += [
            f"**{key}** ({percentile}; imported runtime on the device {group['imported_rss_mib']:.1f} MiB; fitted: "
            f"{fitted['session_bytes'] / 2**20:.1f} MiB + {fitted['weight_copies']:.2f} x weights, margin "
            f"{fitted['margin_bytes'] / 2**20:.1f} MiB):",
            table(
                [
                    "ratio",
                    "MACs M",
                    f"measured {percentile} ms",
                    "hint ms (error)",
                    "calibrated ms (error)",
                    "peak RSS MiB",
                    "hint MiB (error)",
                    "fitted MiB (error)",
                ],
                rows,
            ),
            f"Calibrated latency at held-out ratios: median |error| {100 * held_out['median']:.0f}%, max "
            f"{100 * held_out['max']:.0f}%; the hint alone: median {100 * hint['median']:.0f}%, max "
            f"{100 * hint['max']:.0f}%. Memory is off by {min(errors['hint']):+.1f} to "
            f"{max(errors['hint']):+.1f} MiB with the hint and {min(errors['fitted']):+.1f} to "
            f"{max(errors['fitted']):+.1f} MiB fitted (positive = conservative)."
            if held_out["median"] is not None
            else "",
        ]
    return "\n\n".join(part for part in parts if part)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.planner_check", description=__doc__.splitlines()[0]
    )
    add_mode_arguments(parser)
    args = parser.parse_args(argv)
    payload = run(args.mode, args.results_dir)
    for key, group in payload["groups"].items():
        for row in group["rows"]:
            print(
                f"{key:<24} r={row['ratio']:<4g} measured {row['measured_ms'][group['percentile']]:7.3f} ms  "
                f"hint {row['predicted_hint_ms']:7.3f}  calibrated {row['predicted_calibrated_ms']:7.3f}"
                f"{' (calibration point)' if row['in_calibration'] else ''}  "
                f"memory {row['peak_rss_mib']:.1f} MiB, predicted {row['predicted_memory_hint_mib']:.1f} (hint), "
                f"{row['predicted_memory_fitted_mib']:.1f} (fitted)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
