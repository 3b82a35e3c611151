"""NetAdapt-style calibration: the backbone pruned at a few ratios, benchmarked on the device before planning."""

from __future__ import annotations

from typing import Any

from edge_smsp.cost import measure_cost
from edge_smsp.deploy.bench import run_bench
from edge_smsp.deploy.stages import (
    DeployRequest,
    DeviceCheck,
    parity_images,
    record,
    upload,
    with_untrained_head,
)
from edge_smsp.deploy.transport import Transport
from edge_smsp.errors import PlanError
from edge_smsp.export import export_onnx
from edge_smsp.importance import unit_l1_norms
from edge_smsp.planner import predict_memory_bytes, run_macs
from edge_smsp.prune import prune
from edge_smsp.ratio import canonical_ratio


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
    hint = device.memory_hint()
    rows = []
    for ratio in sorted({canonical_ratio(value) for value in request.calibration_ratios}):
        pruned, _ = prune(with_head, scores, ratio, round_to=request.config.round_to, tie_break=scores)
        exported = export_onnx(
            pruned,
            out_dir / f"ratio-{ratio:.2f}.onnx",
            image_size=size,
            metadata={**metadata, "ratio": ratio},
            dynamic_batch=profile.batch_size > 1,
            parity_inputs=parity_images(task),
            opset=device.opset,
        )
        run = run_bench(transport, upload(transport, exported), exported, profile, request.bench)
        cost = measure_cost(pruned, size, ratio)
        recorded = record(request.pool, profile, name, ratio, cost, run, task, calibration=True)
        rows.append(
            {
                "ratio": ratio,
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
                "predicted_memory_hint_bytes": predict_memory_bytes(cost, profile, hint),
                "onnx_path": str(exported.onnx_path),
                "measurement_id": recorded.measurement_id,
            }
        )
    return rows
