"""Inference speed vs pruning ratio: ONNX Runtime CPU latency next to params and MACs, and the device runtime check.

    python -m benchmarks.speed --quick|--full [--threads 1]

For resnet18, deit_small_patch16_224 and efficientnet_lite0 at 224 px and at the study's size, each pruned at
every ratio (magnitude scores: latency depends on how many units are kept, not which), exported with
edge_smsp.export.onnx_export.export_onnx (3-class head, batch 1). Latency is measured directly with onnxruntime in this
process, the ratios interleaved round by round so that load from other processes hits them alike; then once
through the device runtime on the `localhost` profile (local transport) to check the runtime's numbers.
Writes results/speed.<mode>.json (resumable per model and size).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    add_mode_arguments,
    command_line,
    log,
    machine_facts,
    quiet_warnings,
    read_json,
    result_path,
    tmp_dir,
    write_json,
)
from benchmarks.formatting import median, mode_note, num, pyplot, save_figure, table
from benchmarks.settings import SETTINGS as MODE_SETTINGS

HEAD_CLASSES = 3
WARMUP = 10

NAME = "speed"


def export_pruned(name: str, size: int, ratios: Sequence[float], out_dir: Path) -> list[dict[str, Any]]:
    """ONNX files of `name` at `size` px pruned at each ratio, with params and MACs (reused when present)."""
    from edge_smsp.export.onnx_export import export_onnx
    from edge_smsp.models.prune import prune, replace_classifier
    from edge_smsp.models.unit_scores import unit_l1_norms
    from edge_smsp.models.zoo import backbone_spec, default_pretrained, load_backbone

    pretrained = default_pretrained(name)
    backbone = replace_classifier(load_backbone(name, pretrained=pretrained, image_size=size), HEAD_CLASSES)
    spec = backbone_spec(backbone)
    scores = unit_l1_norms(backbone)
    rows = []
    for ratio in ratios:
        model, summary = prune(backbone, scores, ratio)
        path = out_dir / f"{name}-{size}px-r{ratio:g}.onnx"
        if not path.exists():
            export_onnx(
                model,
                path,
                image_size=size,
                metadata={
                    "labels": [f"class{i}" for i in range(HEAD_CLASSES)],
                    "mean": list(spec.mean),
                    "std": list(spec.std),
                    "backbone": name,
                    "ratio": ratio,
                },
            )
        rows.append(
            {
                "model": name,
                "image_size": size,
                "ratio": ratio,
                "weights": "bundled ImageNet"
                if pretrained
                else "random init (latency does not depend on values)",
                "params": summary.params_after,
                "macs": summary.macs_after,
                "onnx": str(path),
                "onnx_bytes": path.stat().st_size,
            }
        )
    return rows


def direct_latency(
    paths: Sequence[Path], size: int, threads: int, rounds: int, runs: int
) -> list[dict[str, float]]:
    """p50/p90 latency (ms) of each model with onnxruntime in this process; models interleaved round by round."""
    from edge_smsp_runtime.backends import get_backend
    from edge_smsp_runtime.bench import latency_summary

    backend = get_backend("onnxruntime")
    sessions = [backend.create_session(str(path), ["CPUExecutionProvider"], threads)[0] for path in paths]
    feeds = [
        {
            session.inputs()[0]["name"]: np.random.default_rng(0)
            .standard_normal((1, 3, size, size))
            .astype(np.float32)
        }
        for session in sessions
    ]
    for session, feed in zip(sessions, feeds, strict=True):
        for _ in range(WARMUP):
            session.run(feed)
    latencies: list[list[int]] = [[] for _ in sessions]
    for _ in range(rounds):
        for index, (session, feed) in enumerate(zip(sessions, feeds, strict=True)):
            for _ in range(runs):
                started = time.perf_counter_ns()
                session.run(feed)
                latencies[index].append(time.perf_counter_ns() - started)
    return [latency_summary(values) | {"runs": len(values)} for values in latencies]


def runtime_latency(paths: Sequence[Path], threads: int, runs: int, workdir: Path) -> list[dict[str, Any]]:
    """The same models through the device runtime on the localhost profile (local transport)."""
    from edge_smsp.devices.profiles import load_profile
    from edge_smsp.transport import open_transport

    profile = load_profile("localhost")
    # This interpreter (it has onnxruntime) and a work dir inside the results' tmp folder, not ~/.cache.
    connection = dataclasses.replace(profile.connection, python=sys.executable, workdir=str(workdir))
    reports = []
    with open_transport(connection) as transport:
        for path in paths:
            remote = transport.upload(path, f"models/{path.name}")
            report = transport.run_runtime(
                [
                    "bench",
                    "--model",
                    remote,
                    "--threads",
                    str(threads),
                    "--runs",
                    str(runs),
                    "--min-seconds",
                    "1",
                ],
                timeout=600,
            )
            reports.append(
                {
                    "latency_ms": report["latency_ms"],
                    "runs": report["runs"],
                    "peak_rss_mib": report.get("peak_rss_mib"),
                    "session_creation_ms": report.get("session_creation_ms"),
                }
            )
        transport.cleanup()
    return reports


def run(mode: str, results_dir: Path, workers: int | None = None, threads: int = 1) -> dict[str, Any]:
    """Measure every (model, size) group not yet in speed.<mode>.json (in this process: `workers` is not used)."""
    quiet_warnings()
    s = MODE_SETTINGS[mode]
    path = result_path(results_dir, NAME, mode)
    previous = read_json(path) or {}
    groups: dict[str, Any] = previous.get("groups", {}) if previous.get("threads") == threads else {}
    out_dir = tmp_dir(results_dir, mode) / "speed"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in s.speed_models:
        for size in s.speed_sizes:
            key = f"{name}@{size}"
            if key in groups:
                continue
            log(f"speed: {key}: export at ratios {list(s.speed_ratios)}")
            rows = export_pruned(name, size, s.speed_ratios, out_dir)
            paths = [Path(row["onnx"]) for row in rows]
            log(
                f"speed: {key}: direct onnxruntime latency ({s.speed_rounds} rounds x {s.speed_runs_per_round} runs)"
            )
            load_before = list(_load())
            direct = direct_latency(paths, size, threads, s.speed_rounds, s.speed_runs_per_round)
            runtime = None
            if (name, size) in s.runtime_models:
                log(f"speed: {key}: through the device runtime (localhost profile, local transport)")
                runtime = runtime_latency(
                    paths, threads, s.speed_rounds * s.speed_runs_per_round, out_dir / "device"
                )
            base = rows[0]
            for index, row in enumerate(rows):
                row["direct_ms"] = direct[index]
                row["runtime_ms"] = runtime[index]["latency_ms"] if runtime else None
                row["runtime_peak_rss_mib"] = runtime[index]["peak_rss_mib"] if runtime else None
                row["mac_reduction"] = base["macs"] / row["macs"]
                row["param_reduction"] = base["params"] / row["params"]
                row["speedup_p50"] = direct[0]["p50"] / direct[index]["p50"]
                row["speedup_over_mac_reduction"] = row["speedup_p50"] / row["mac_reduction"]
                if runtime:
                    row["runtime_over_direct_p50"] = (
                        runtime[index]["latency_ms"]["p50"] / direct[index]["p50"]
                    )
                row["onnx"] = Path(row["onnx"]).name
            groups[key] = {
                "rows": rows,
                "load_average_before": load_before,
                "load_average_after": list(_load()),
            }
            write_json(path, _payload(mode, threads, groups))
    payload = _payload(mode, threads, groups)
    write_json(path, payload)
    log(f"speed: wrote {path}")
    return payload


def _load() -> tuple[float, ...]:
    import os

    return tuple(round(value, 2) for value in os.getloadavg())


def _payload(mode: str, threads: int, groups: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": "speed",
        "mode": mode,
        "command": command_line(NAME, mode) + (f" --threads {threads}" if threads != 1 else ""),
        "machine": machine_facts(),
        "threads": threads,
        "batch_size": 1,
        "provider": "CPUExecutionProvider",
        "head_classes": HEAD_CLASSES,
        "groups": groups,
    }


def plot(speed: dict[str, Any], out: Path) -> Path:
    """Measured speedup vs MAC reduction per model and size; the diagonal is the compute-bound limit."""
    plt = pyplot()
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
    return save_figure(figure, out)


def section(found: Mapping[str, dict[str, Any]], plots: Path) -> str | None:
    """Latency vs ratio next to params and MACs; runtime vs direct."""
    speed = found.get(NAME)
    if not speed:
        return None
    image = plot(speed, plots / "speed_vs_macs.png")
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
        "(latency depends on how many units are kept, not which) and exported with `edge_smsp.export.onnx_export.export_onnx`. "
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
            f"r={ratio:g}: {median([r['speedup_over_mac_reduction'] for g in speed['groups'].values() for r in g['rows'] if r['ratio'] == ratio]):.2f}"
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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.splitlines()[0])
    add_mode_arguments(parser)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    args = parser.parse_args(argv)
    payload = run(args.mode, args.results_dir, threads=args.threads)
    for key, group in payload["groups"].items():
        for row in group["rows"]:
            runtime = row["runtime_ms"]["p50"] if row["runtime_ms"] else float("nan")
            print(
                f"{key:<32} r={row['ratio']:<4g} MACs {row['macs'] / 1e6:9.1f}M  p50 {row['direct_ms']['p50']:8.2f} ms "
                f"(runtime {runtime:.2f})  speedup {row['speedup_p50']:.2f} / MAC {row['mac_reduction']:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
