"""NetAdapt-style calibration: the backbone pruned at a few ratios, benchmarked on the device before planning."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
from typing import Any

from edge_smsp.core.errors import PlanError
from edge_smsp.core.precisions import AUTO, FP32, INT8
from edge_smsp.core.ratio import canonical_ratio
from edge_smsp.deploy.bench import run_bench
from edge_smsp.deploy.steps import (
    DeployRequest,
    DeviceCheck,
    parity_images,
    record,
    upload,
    with_untrained_head,
)
from edge_smsp.devices.planner import predict_memory_bytes, run_macs
from edge_smsp.export.onnx_export import ExportResult, export_onnx
from edge_smsp.export.precision import task_images
from edge_smsp.export.quantize import convert_fp16, quantize_int8
from edge_smsp.models.cost import measure_cost
from edge_smsp.models.prune import prune
from edge_smsp.models.unit_scores import unit_l1_norms
from edge_smsp.transport.base import Transport


def calibrate(request: DeployRequest, device: DeviceCheck, transport: Transport) -> list[dict[str, Any]]:
    """Export and bench the magnitude-pruned backbone at the request's calibration ratios; store the results.
    One row per ratio: costs, the device's latency and memory, and the pool measurement it became."""
    if len(set(request.calibration_ratios)) < 2:
        raise PlanError("calibration needs at least two different ratios")
    profile, out_dir = device.profile, request.out_dir / "calibration"
    task, name, size = request.task, request.backbone_name, request.image_size
    # The head is untrained: latency and memory depend only on the shapes.
    with_head = with_untrained_head(request.backbone, task)
    scores = unit_l1_norms(request.backbone)
    metadata = {
        "labels": list(task.class_names),
        "mean": list(task.mean),
        "std": list(task.std),
        "backbone": name,
        "task": f"{task.task_id} (calibration, untrained head)",
    }
    # The precisions the plan can choose: with auto, those the device runs natively; else the one asked for.
    requested = request.precision_requested
    precisions = device.precisions() if requested == AUTO else [requested]
    calibration_images = task_images(task)["calibration_images"] if INT8 in precisions else None
    rows = []
    for ratio in sorted({canonical_ratio(value) for value in request.calibration_ratios}):
        pruned, _ = prune(with_head, scores, ratio, round_to=request.config.round_to, tie_break=scores)
        fp32 = export_onnx(
            pruned,
            out_dir / f"ratio-{ratio:.2f}.onnx",
            image_size=size,
            metadata={**metadata, "ratio": ratio},
            dynamic_batch=profile.batch_size > 1,
            parity_inputs=parity_images(task),
            opset=device.opset,
        )
        cost = measure_cost(pruned, size, ratio)
        for precision in precisions:
            exported = _at_precision(fp32, precision, calibration_images)
            bench = dataclasses.replace(request.bench, precision=precision)
            run = run_bench(transport, upload(transport, exported), exported, profile, bench)
            recorded = record(request.pool, profile, name, ratio, cost, run, task, calibration=True)
            rows.append(
                {
                    "ratio": ratio,
                    "precision": run.measured.get("precision") or precision,
                    "params": cost.params,
                    "macs": cost.macs,
                    "run_macs": run_macs(cost.macs, profile),
                    "latency_ms": run.measured["latency_ms"],
                    "peak_rss_mib": run.measured.get("peak_rss_mib"),
                    # The memory model's inputs, for plans without a pool.
                    "imported_rss_mib": run.measured.get("imported_rss_mib"),
                    "weight_bytes": cost.weight_bytes,
                    "peak_activation_bytes": cost.peak_activation_bytes,
                    "batch_size": profile.batch_size,
                    "predicted_memory_hint_bytes": predict_memory_bytes(
                        cost, profile, device.memory_hint(precision)
                    ),
                    "onnx_path": str(exported.onnx_path),
                    "measurement_id": recorded.measurement_id,
                }
            )
    return rows


def _at_precision(fp32: ExportResult, precision: str, calibration_images: Any) -> ExportResult:
    """The calibration model in `precision` (no gate: its head is untrained; only speed and memory count)."""
    if precision == FP32:
        return fp32
    path = fp32.onnx_path.with_name(f"{fp32.onnx_path.stem}.{precision}.onnx")
    with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime's calibrators print progress
        if precision == INT8:
            quantize_int8(fp32.onnx_path, path, calibration_images)
        else:
            convert_fp16(fp32.onnx_path, path)
    payload = path.read_bytes()
    return dataclasses.replace(
        fp32, onnx_path=path, sha256=hashlib.sha256(payload).hexdigest(), size_bytes=len(payload)
    )
