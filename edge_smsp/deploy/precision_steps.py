"""Deploy's precision work beside its stages (edge_smsp.deploy.steps): the device's measurements per precision for
the plan, and the shipped file at the planned precision, gated against its fp32 export."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from edge_smsp.core.errors import PlanError
from edge_smsp.core.precisions import FP32
from edge_smsp.devices.precision_plan import JointPlan, fallback_message
from edge_smsp.export.onnx_export import ExportResult
from edge_smsp.export.precision import PrecisionResult, export_precision, shipped_export, task_images


def measurements_by_precision(
    request: Any, device: Any, calibration: Sequence[dict[str, Any]], precisions: Iterable[str]
) -> dict[str, list[Any]]:
    """precision -> the device's measurements in it: the pool's comparable ones, else this deploy's calibration
    rows (not stored without a pool), which carry the latency and the memory facts."""
    profile = device.profile
    found = {}
    for precision in precisions:
        if request.pool is not None:
            found[precision] = list(
                request.pool.comparable_measurements(
                    device=profile.name,
                    backbone=request.backbone_name,
                    image_size=request.image_size,
                    batch_size=profile.batch_size,
                    threads=profile.threads,
                    runtime=request.bench.runtime,
                    precision=precision,
                )
            )
        else:
            found[precision] = [
                dict(row, macs=row["run_macs"])
                for row in calibration
                if row.get("precision", FP32) == precision
            ]
    return found


def ship_at_precision(
    fp32: ExportResult,
    shipped: Path,
    precision: str,
    task: Any,
    *,
    max_drop_pt: float,
    options: dict[str, Any],
    joint: JointPlan | None,
) -> tuple[ExportResult, PrecisionResult]:
    """The shipped file at `precision` (or fp32 when its gate fails) and its card, from the fp32 export. When
    the joint plan chose INT8 and fp32 does not fit at its ratio, a failed gate is a PlanError (one line)."""
    checked = export_precision(
        fp32.onnx_path, shipped, precision, **task_images(task), max_drop_pt=max_drop_pt, **options
    )
    if not checked.gate.passed and joint is not None and joint.fp32_fallback() is None:
        raise PlanError(fallback_message(joint, checked.gate.reason))
    return shipped_export(fp32, checked), checked
