"""What one deploy chose, shipped and measured: the report printed, saved as JSON and returned."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_smsp.core.fileio import write_atomically

REPORT_NAME = "deploy_report.json"


@dataclass
class DeployReport:
    """What one deploy chose, shipped and measured on the device."""

    profile: str
    device_transport: str
    backbone: str
    image_size: int
    task_id: str
    class_names: list[str]
    method: str
    method_requested: str
    method_note: str | None
    ratio: float
    ratio_source: str  # "plan" | "given"
    latency_percentile: str
    latency_target_ms: float
    memory_budget_bytes: int
    runtime_overhead_bytes: int  # the memory model's part that no model changes: runtime + session
    runtime_overhead_source: (
        str  # where its runtime came from: "device" | "measurements" | "profile" | "default"
    )
    latency_model: dict[str, Any]
    memory_model: dict[str, Any]  # edge_smsp.devices.memory_model.MemoryModel
    predicted_latency_ms: float
    predicted_memory_bytes: int
    measured: dict[str, Any]
    measured_latency_ms: float
    measured_peak_rss_bytes: int | None
    val_accuracy: float
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    onnx_path: str
    card_path: str
    model_dir: str
    onnx_size_bytes: int
    onnx_sha256: str
    max_abs_diff: float
    opset: int  # the ONNX opset of the shipped model
    device_stack: dict[str, Any]  # edge_smsp.devices.stack.DeviceStack: Python, engine, its opset, machine
    remote_model_path: str
    measurement_id: int | None
    measurement_note: str | None
    device_info: dict[str, Any]
    similar_tasks: list[dict[str, Any]]
    calibration: list[dict[str, Any]]
    plan: dict[str, Any] | None
    seconds: dict[str, float]
    out_dir: str
    report_path: str
    # The numeric precision (edge_smsp.export.precision): what shipped, what was asked for (fp32|int8|fp16|auto)
    # and planned, the accuracy gate's verdict (INT8: at most --max-int8-drop points below fp32 on the val split,
    # both measured with onnxruntime), fp32's accuracy there, top-1 agreement with fp32, the fp32 reference file,
    # and with auto every (ratio, precision) the planner weighed (edge_smsp.devices.precision_plan).
    precision: str = "fp32"
    precision_requested: str = "fp32"
    precision_planned: str = "fp32"
    precision_gate: dict[str, Any] | None = None
    fp32_accuracy: float | None = None
    agreement: dict[str, Any] | None = None
    fp32_onnx_path: str | None = None
    precision_plan: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def latency_error(self) -> float:
        """(predicted - measured) / measured latency at the profile's percentile."""
        return (self.predicted_latency_ms - self.measured_latency_ms) / self.measured_latency_ms

    @property
    def meets_latency_target(self) -> bool:
        return self.measured_latency_ms <= self.latency_target_ms

    @property
    def meets_memory_budget(self) -> bool | None:
        if self.measured_peak_rss_bytes is None:
            return None
        return self.measured_peak_rss_bytes <= self.memory_budget_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary, with the derived verdicts."""
        payload = dataclasses.asdict(self)
        payload["latency_error"] = round(self.latency_error, 4)
        payload["meets_latency_target"] = self.meets_latency_target
        payload["meets_memory_budget"] = self.meets_memory_budget
        return payload


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON through a temporary file in the same folder and os.replace it into place."""
    write_atomically(path, (json.dumps(payload, indent=2, default=str) + "\n").encode("utf-8"))
