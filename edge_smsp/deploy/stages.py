"""The stages of a deploy, each a function from typed inputs to a frozen result, so that a deploy to one device
(edge_smsp.deploy.session.deploy) or to many can string them together:

    connect -> check -> plan -> adapt -> export -> upload -> bench -> record
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_smsp import smsp
from edge_smsp.cost import ModelCost, measure_cost
from edge_smsp.data import Task
from edge_smsp.deploy.bench import BenchSettings, DeviceRun
from edge_smsp.deploy.transport import Transport
from edge_smsp.device_stack import DeviceStack, check_device_stack, device_opset
from edge_smsp.errors import NoPoolEntriesError
from edge_smsp.export import ExportResult, export_onnx
from edge_smsp.onnx_metadata import metadata_from_pruned
from edge_smsp.planner import (
    LatencyModel,
    Measurement,
    MemoryModel,
    Plan,
    cost_at_ratio,
    hint_memory_model,
    latency_model_for,
    memory_model_for,
    plan,
    run_macs,
)
from edge_smsp.pool import DEFAULT_PRECISION, DEFAULT_RUNTIME, DeviceMeasurement, Pool
from edge_smsp.profiles import DeviceProfile
from edge_smsp.prune import replace_classifier
from edge_smsp.ratio import canonical_ratio
from edge_smsp.score_sources import needs_pool
from edge_smsp.zoo import backbone_spec

FALLBACK_METHOD = "magnitude"
CALIBRATION_RATIOS: tuple[float, ...] = (0.0, 0.4, 0.7)
PARITY_IMAGES = 4


@dataclass(frozen=True)
class DeployRequest:
    """What to deploy where: the adaptation (config.ratio None: the planner chooses it) and how to ship it."""

    profile: DeviceProfile
    backbone: nn.Module
    task: Task
    pool: Pool | None
    config: smsp.AdaptConfig
    out_dir: Path
    trust_new_host: bool = False
    calibrate: bool = False
    calibration_ratios: tuple[float, ...] = CALIBRATION_RATIOS
    bench: BenchSettings = BenchSettings()
    progress: bool = False
    opset: int | None = None  # None: the newest the profile's max_opset allows (edge_smsp.device_stack)

    @property
    def backbone_name(self) -> str:
        return backbone_spec(self.backbone).name

    @property
    def image_size(self) -> int:
        return int(self.task.image_size)


@dataclass(frozen=True)
class DeviceCheck:
    """What the device said it runs (checked against its profile and the opset the model will have)."""

    device_info: dict[str, Any]
    profile: DeviceProfile
    stack: DeviceStack
    opset: int  # the ONNX opset the model is exported at

    @property
    def imported_rss_mib(self) -> float | None:
        """The device's imported runtime (numpy + the engine), MiB, as its `info` measured it."""
        return self.device_info.get("imported_rss_mib")

    def memory_hint(self) -> MemoryModel:
        """The memory model before any measurement: the hint on top of this device's imported runtime."""
        return hint_memory_model(self.profile, self.imported_rss_mib)


@dataclass(frozen=True)
class RatioChoice:
    """The pruning ratio to ship, where it came from, and the models that predict its speed and memory."""

    ratio: float
    source: str  # "plan" | "given"
    latency_model: LatencyModel
    memory_model: MemoryModel
    plan: Plan | None


@dataclass(frozen=True)
class Adaptation:
    """The adapted model, and why its method differs from the one requested (if it does)."""

    result: smsp.AdaptResult
    method_note: str | None


@dataclass(frozen=True)
class ExportedModel:
    """The saved and exported adapted model and its costs (one MAC counter, the planner's, for all)."""

    model_dir: Path
    onnx: ExportResult
    cost: ModelCost  # the shipped model
    cost_before: ModelCost  # the backbone with the task's head, unpruned


@dataclass(frozen=True)
class Recorded:
    """The pool measurement a device run became, or why it did not become one."""

    measurement_id: int | None
    note: str | None


def connect(profile: DeviceProfile, trust_new_host: bool = False) -> Transport:
    """A connected transport: an unknown host key or a wrong key fails in seconds, before any fine-tuning."""
    from edge_smsp.deploy import open_transport

    return open_transport(profile.connection, trust_new_host=trust_new_host)


def check(
    transport: Transport, profile: DeviceProfile, timeout: float, opset: int | None = None
) -> DeviceCheck:
    """Push the runtime and run its `info` there: a bare device, or one whose Python or engine could not run
    the model (exported at `opset`, else the profile's), fails now with one line, not after fine-tuning."""
    export_opset = device_opset(opset, profile)
    device_info = transport.run_runtime(["info"], timeout=timeout)
    stack = check_device_stack(device_info, profile, export_opset)
    return DeviceCheck(device_info, profile, stack, export_opset)


def plan_ratio(
    request: DeployRequest, device: DeviceCheck, calibration: Sequence[dict[str, Any]] = ()
) -> RatioChoice:
    """The smallest ratio that fits the device (unless the request gives one), and its latency model."""
    profile, size, config = device.profile, request.image_size, request.config
    shipped_shape = with_untrained_head(request.backbone, request.task)
    measurements: list[Any] = []
    memory_records: list[Any] = []
    if request.pool is not None:
        measurements = memory_records = request.pool.comparable_measurements(
            device=profile.name,
            backbone=request.backbone_name,
            image_size=size,
            batch_size=profile.batch_size,
            threads=profile.threads,
            runtime=request.bench.runtime,
            precision=request.bench.precision,
        )
    else:  # calibration results were not stored: use them directly
        measurements = [
            Measurement(ratio=row["ratio"], latency_ms=row["latency_ms"], macs=row["run_macs"])
            for row in calibration
        ]
        memory_records = list(calibration)
    memory_model = memory_model_for(
        profile, shipped_shape, size, memory_records, device.imported_rss_mib, config.round_to
    )
    if config.ratio is not None:
        return RatioChoice(
            ratio=canonical_ratio(config.ratio),
            source="given",
            latency_model=latency_model_for(profile, shipped_shape, size, measurements, config.round_to),
            memory_model=memory_model,
            plan=None,
        )
    chosen = plan(
        profile,
        shipped_shape,
        measurements,
        input_size=size,
        backbone_name=request.backbone_name,
        round_to=config.round_to,
        memory_model=memory_model,
    )
    return RatioChoice(
        ratio=chosen.ratio,
        source="plan",
        latency_model=chosen.latency_model,
        memory_model=memory_model,
        plan=chosen,
    )


def adapt(request: DeployRequest, choice: RatioChoice) -> Adaptation:
    """Adapt at the chosen ratio: the requested method, or the magnitude baseline where the pool cannot serve."""
    config, note = choose_method(
        dataclasses.replace(request.config, ratio=choice.ratio),
        request.pool,
        request.backbone,
        request.image_size,
    )
    result = smsp.adapt(request.backbone, request.pool, request.task, config, progress=request.progress)
    return Adaptation(result, note)


def choose_method(
    config: smsp.AdaptConfig, pool: Pool | None, backbone: nn.Module, image_size: int
) -> tuple[smsp.AdaptConfig, str | None]:
    """The requested method when the pool can serve it, else the magnitude baseline and why."""
    if not needs_pool(config.method):
        return config, None
    if pool is None:
        reason = "no pool was given"
    else:
        try:
            smsp.pool_entries_for(pool, backbone, image_size)
            return config, None
        except NoPoolEntriesError as error:
            reason = str(error)
    note = f"baseline {FALLBACK_METHOD} instead of {config.method}: {reason}"
    return dataclasses.replace(config, method=FALLBACK_METHOD, init=None), note


def export(request: DeployRequest, adaptation: Adaptation, device: DeviceCheck) -> ExportedModel:
    """Save the adapted model and export it, at the opset the device check settled, to a parity-checked ONNX
    file with its model card."""
    result, out_dir, size = adaptation.result, request.out_dir, request.image_size
    model_dir = smsp.save_adapted(result, out_dir / "model")
    meta = json.loads((model_dir / "pruned.json").read_text(encoding="utf-8"))
    onnx = export_onnx(
        result.model,
        out_dir / "model.onnx",
        image_size=size,
        metadata=metadata_from_pruned(result.model, meta),
        dynamic_batch=device.profile.batch_size > 1,
        parity_inputs=parity_images(result.task),
        opset=device.opset,
    )
    return ExportedModel(
        model_dir=model_dir,
        onnx=onnx,
        cost=measure_cost(result.model, size, result.ratio),
        cost_before=cost_at_ratio(with_untrained_head(request.backbone, request.task), size, 0.0),
    )


def upload(transport: Transport, exported: ExportResult) -> str:
    """Upload the ONNX file and its card under a content-addressed name; returns the model's device path."""
    stem = f"models/{exported.sha256[:16]}"
    return transport.upload_many(
        [(exported.onnx_path, f"{stem}.onnx"), (exported.card_path, f"{stem}.json")]
    )[0]


def record(
    pool: Pool | None,
    profile: DeviceProfile,
    backbone: str,
    ratio: float,
    cost: ModelCost,
    run: DeviceRun,
    task: Task,
    calibration: bool = False,
) -> Recorded:
    """Store the device run as a measurement that calibrates later plans, unless it ran on fallback providers."""
    if run.fallback_providers:
        note = (
            f"not stored as a calibration: the device lacks {', '.join(run.fallback_providers)} and ran on "
            f"{', '.join(run.measured.get('providers') or [])}"
        )
        return Recorded(None, note)
    if pool is None:
        return Recorded(None, None)
    measurement = device_measurement(profile, backbone, ratio, cost, run.measured, task, calibration)
    return Recorded(pool.add_measurement(measurement), None)


def device_measurement(
    profile: DeviceProfile,
    backbone: str,
    ratio: float,
    cost: ModelCost,
    measured: dict[str, Any],
    task: Task,
    calibration: bool = False,
) -> DeviceMeasurement:
    """A pool record of one device benchmark; `macs` is per timed run, so the batch is included."""
    latency = measured["latency_ms"]
    return DeviceMeasurement(
        runtime=measured.get("runtime") or DEFAULT_RUNTIME,
        precision=measured.get("precision") or DEFAULT_PRECISION,
        device=profile.name,
        backbone=backbone,
        image_size=int(task.image_size),
        ratio=ratio,
        params=cost.params,
        macs=run_macs(cost.macs, profile),
        latency_p50_ms=float(latency["p50"]),
        latency_p90_ms=float(latency["p90"]),
        latency_p99_ms=float(latency["p99"]),
        peak_rss_mib=measured.get("peak_rss_mib"),
        report={
            **measured,
            "task_id": task.task_id,
            "num_classes": task.num_classes,
            "calibration": calibration,
            "batch_size": profile.batch_size,
            "threads": profile.threads,
            "profile_providers": list(profile.providers),
            # What the memory model is fitted against (with the bench's peak and imported runtime).
            "weight_bytes": cost.weight_bytes,
            "peak_activation_bytes": cost.peak_activation_bytes,
        },
    )


def with_untrained_head(backbone: nn.Module, task: Task) -> nn.Module:
    """The backbone with an untrained head for the task: the shape that is shipped, for costs and latency."""
    return replace_classifier(copy.deepcopy(backbone), task.num_classes)


def parity_images(task: Task) -> torch.Tensor:
    """A few real validation images: parity is checked on the inputs the model will see."""
    count = min(PARITY_IMAGES, len(task.val))
    return task.val.batch(list(range(count)))[0]
