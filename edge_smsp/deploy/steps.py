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

from edge_smsp import adaptation
from edge_smsp.core.errors import NoPoolEntriesError, PoolError
from edge_smsp.core.precisions import AUTO, FP32, PRECISIONS
from edge_smsp.core.ratio import canonical_ratio
from edge_smsp.criteria import needs_pool
from edge_smsp.data.tasks import Task
from edge_smsp.deploy.bench import BenchSettings, DeviceRun
from edge_smsp.deploy.precision_steps import measurements_by_precision, ship_at_precision
from edge_smsp.devices.planner import (
    LatencyModel,
    MemoryModel,
    Plan,
    cost_at_ratio,
    hint_memory_model,
    plan,
    run_macs,
)
from edge_smsp.devices.precision_plan import JointPlan, plan_joint, precision_models
from edge_smsp.devices.profiles import DeviceProfile, check_input_fits
from edge_smsp.devices.stack import DeviceStack, check_device_stack, device_opset
from edge_smsp.export.metadata import metadata_from_pruned
from edge_smsp.export.onnx_export import ExportResult, export_onnx
from edge_smsp.export.precision import DEFAULT_MAX_INT8_DROP_PT, PrecisionResult, reference_path
from edge_smsp.models.cost import ModelCost, measure_cost
from edge_smsp.models.prune import replace_classifier
from edge_smsp.models.zoo import backbone_spec
from edge_smsp.pool import DEFAULT_PRECISION, DEFAULT_RUNTIME, DeviceMeasurement, Pool
from edge_smsp.pool import build as pool_build
from edge_smsp.transport.base import INFO_TIMEOUT, Transport

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
    config: adaptation.AdaptConfig
    out_dir: Path
    trust_new_host: bool = False
    calibrate: bool = False
    calibration_ratios: tuple[float, ...] = CALIBRATION_RATIOS
    bench: BenchSettings = BenchSettings()
    progress: bool = False
    opset: int | None = None  # None: the newest the profile's max_opset allows (edge_smsp.devices.stack)
    max_int8_drop_pt: float = DEFAULT_MAX_INT8_DROP_PT  # the INT8 accuracy gate (edge_smsp.export.precision)
    precision_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # export_precision's keywords

    @property
    def precision_requested(self) -> str:
        """fp32 | int8 | fp16 | auto: the bench settings' precision (the flag, else the profile's)."""
        return self.bench.precision or FP32

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

    @property
    def machine(self) -> str | None:
        """The device's machine (`info`): the memory hint adds a margin on machines it was not fitted on."""
        return self.device_info.get("machine")

    def precisions(self) -> list[str]:
        """The precisions the profile's providers run natively on the device (its `info`), fp32 at least."""
        per_provider = self.device_info.get("provider_precisions") or {}
        found = {p for name in self.profile.providers for p in per_provider.get(name, ())}
        found = found or set(self.device_info.get("precisions") or ())
        return [p for p in PRECISIONS if p in found or p == FP32]

    def memory_hint(self, precision: str = FP32) -> MemoryModel:
        """The memory model before any measurement: the hint on top of this device's imported runtime."""
        return hint_memory_model(
            self.profile, self.imported_rss_mib, machine=self.machine, precision=precision
        )


@dataclass(frozen=True)
class RatioChoice:
    """The pruning ratio to ship, where it came from, and the models that predict its speed and memory."""

    ratio: float
    source: str  # "plan" | "given"
    latency_model: LatencyModel
    memory_model: MemoryModel
    plan: Plan | None
    precision: str = FP32  # planned (or requested): what export makes, unless its gate fails
    joint: JointPlan | None = None  # precision auto: every (ratio, precision) weighed


@dataclass(frozen=True)
class Adaptation:
    """The adapted model, and why its method differs from the one requested (if it does)."""

    result: adaptation.AdaptResult
    method_note: str | None


@dataclass(frozen=True)
class ExportedModel:
    """The saved and exported adapted model and its costs (one MAC counter, the planner's, for all)."""

    model_dir: Path
    onnx: ExportResult  # the shipped file
    cost: ModelCost  # the shipped model
    cost_before: ModelCost  # the backbone with the task's head, unpruned
    precision: PrecisionResult | None = None  # None: fp32 asked for, exported directly
    fp32_onnx: ExportResult | None = None  # the fp32 reference, when another precision was asked for

    @property
    def shipped_precision(self) -> str:
        return FP32 if self.precision is None else self.precision.precision


@dataclass(frozen=True)
class Recorded:
    """The pool measurement a device run became, or why it did not become one."""

    measurement_id: int | None
    note: str | None


def connect(profile: DeviceProfile, trust_new_host: bool = False) -> Transport:
    """A connected transport: an unknown host key or a wrong key fails in seconds, before any fine-tuning."""
    from edge_smsp.transport import open_transport

    return open_transport(profile.connection, trust_new_host=trust_new_host)


def check(
    transport: Transport,
    profile: DeviceProfile,
    timeout: float,
    opset: int | None = None,
    runtime: str = DEFAULT_RUNTIME,
) -> DeviceCheck:
    """Push the runtime and run its `info` there (with the engine `runtime`): a bare device, or one whose Python
    or engine could not run the model (exported at `opset`, else the profile's), fails now with one line, not
    after fine-tuning."""
    export_opset = device_opset(opset, profile)
    device_info = transport.run_runtime(["info", "--runtime", runtime], timeout=min(timeout, INFO_TIMEOUT))
    stack = check_device_stack(device_info, profile, export_opset)
    return DeviceCheck(device_info, profile, stack, export_opset)


def plan_ratio(
    request: DeployRequest, device: DeviceCheck, calibration: Sequence[dict[str, Any]] = ()
) -> RatioChoice:
    """The smallest ratio that fits the device (unless the request gives one), and its latency model; with
    precision auto, the most accurate (ratio, precision) that fits (edge_smsp.devices.precision_plan)."""
    profile, size, config = device.profile, request.image_size, request.config
    check_input_fits(profile, size)  # before any forward pass measures a cost at this size
    shipped_shape = with_untrained_head(request.backbone, request.task)
    requested = request.precision_requested
    precisions = device.precisions() if requested == AUTO else [requested]
    rows = measurements_by_precision(request, device, calibration, {FP32, *precisions})
    models = precision_models(
        profile,
        shipped_shape,
        size,
        rows,
        imported_rss_mib=device.imported_rss_mib,
        machine=device.machine,
        round_to=config.round_to,
        precisions=[p for p in PRECISIONS if p in rows],
    )
    if requested == AUTO:
        joint = plan_joint(
            profile,
            shipped_shape,
            rows,
            precisions,
            input_size=size,
            backbone_name=request.backbone_name,
            round_to=config.round_to,
            imported_rss_mib=device.imported_rss_mib,
            machine=device.machine,
            ratios=None if config.ratio is None else [canonical_ratio(config.ratio)],
        )
        chosen = models[joint.precision]
        return RatioChoice(
            ratio=joint.ratio,
            source="plan" if config.ratio is None else "given",
            latency_model=chosen.latency_model,
            memory_model=chosen.memory_model,
            plan=joint.chosen,
            precision=joint.precision,
            joint=joint,
        )
    latency_model, memory_model = models[requested].latency_model, models[requested].memory_model
    if config.ratio is not None:
        return RatioChoice(
            ratio=canonical_ratio(config.ratio),
            source="given",
            latency_model=latency_model,
            memory_model=memory_model,
            plan=None,
            precision=requested,
        )
    chosen = plan(
        profile,
        shipped_shape,
        (),
        input_size=size,
        backbone_name=request.backbone_name,
        round_to=config.round_to,
        memory_model=memory_model,
        latency_model=latency_model,
    )
    return RatioChoice(
        ratio=chosen.ratio,
        source="plan",
        latency_model=chosen.latency_model,
        memory_model=memory_model,
        plan=chosen,
        precision=requested,
    )


def adapt(request: DeployRequest, choice: RatioChoice) -> Adaptation:
    """Adapt at the chosen ratio: the requested method, or the magnitude baseline where the pool cannot serve."""
    config, note = choose_method(
        dataclasses.replace(request.config, ratio=choice.ratio),
        request.pool,
        request.backbone,
        request.image_size,
    )
    result = adaptation.adapt(request.backbone, request.pool, request.task, config, progress=request.progress)
    return Adaptation(result, note)


def choose_method(
    config: adaptation.AdaptConfig, pool: Pool | None, backbone: nn.Module, image_size: int
) -> tuple[adaptation.AdaptConfig, str | None]:
    """The requested method when the pool can serve it, else the magnitude baseline and why."""
    if not needs_pool(config.method):
        return config, None
    if pool is None:
        reason = "no pool was given"
    else:
        try:
            adaptation.pool_entries_for(pool, backbone, image_size)
            return config, None
        except NoPoolEntriesError as error:
            reason = str(error)
    note = f"baseline {FALLBACK_METHOD} instead of {config.method}: {reason}"
    return dataclasses.replace(config, method=FALLBACK_METHOD, init=None), note


def export(
    request: DeployRequest, adaptation: Adaptation, device: DeviceCheck, choice: RatioChoice | None = None
) -> ExportedModel:
    """Save the adapted model and export it, at the opset the device check settled, to a parity-checked ONNX
    file with its model card; at the planned precision when it is not fp32 (the fp32 file beside it as the
    reference, the task's training images to calibrate INT8 and its val split for the gate)."""
    result, out_dir, size = adaptation.result, request.out_dir, request.image_size
    precision = FP32 if choice is None else choice.precision
    model_dir = pool_build.save_adapted(result, out_dir / "model")
    meta = json.loads((model_dir / "pruned.json").read_text(encoding="utf-8"))
    shipped = out_dir / "model.onnx"
    onnx = export_onnx(
        result.model,
        shipped if precision == FP32 else reference_path(shipped),
        image_size=size,
        metadata=metadata_from_pruned(result.model, meta),
        dynamic_batch=device.profile.batch_size > 1,
        parity_inputs=parity_images(result.task),
        opset=device.opset,
    )
    fp32_onnx, checked = None, None
    if precision != FP32:
        fp32_onnx = onnx
        onnx, checked = ship_at_precision(
            fp32_onnx,
            shipped,
            precision,
            result.task,
            max_drop_pt=request.max_int8_drop_pt,
            options=request.precision_options,
            joint=None if choice is None else choice.joint,
        )
    return ExportedModel(
        model_dir=model_dir,
        onnx=onnx,
        cost=measure_cost(result.model, size, result.ratio),
        cost_before=cost_at_ratio(with_untrained_head(request.backbone, request.task), size, 0.0),
        precision=checked,
        fp32_onnx=fp32_onnx,
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
    try:
        return Recorded(pool.add_measurement(measurement), None)
    except PoolError as error:  # locked past its wait, say: the model and its bench are whole, and reported
        return Recorded(None, f"not stored in the pool ({error}); later plans go without this measurement")


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
