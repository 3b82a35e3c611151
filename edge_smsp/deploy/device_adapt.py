"""`deploy --device-data DIR`: the task's images stay on the device; the device adapts the model itself.

    connect -> check (info) -> scan (class names, counts) -> plan (ratio; the adaptation's memory, before any
    upload) -> describe (the backbone's class prototypes, on the device) -> rank the pool -> probe (the top
    entries' features, on the device) -> prune with the chosen entry's mask and weights -> export the adaptable
    bundle -> upload -> adapt (on the device: the light tier, or the torch tier where it has torch) -> bench ->
    record -> report

Only kilobytes come back: class names and counts, prototypes (float16), one score per probed entry, the adapt
and bench reports. The transport counts every byte each way (`bytes_to_device`, `bytes_from_device`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from edge_smsp import adaptation
from edge_smsp.core.errors import PlanError, PruneError
from edge_smsp.core.fileio import checked_output_path, removed_on_failure
from edge_smsp.core.precisions import DEFAULT_PRECISION
from edge_smsp.deploy import device_steps as device
from edge_smsp.deploy import steps as stages
from edge_smsp.deploy.bench import BenchSettings, run_bench
from edge_smsp.deploy.html_report import HTML_NAME, write_html_report
from edge_smsp.deploy.report import REPORT_NAME, DeployReport, write_json_atomically
from edge_smsp.deploy.session import stage_timer
from edge_smsp.device_runtime.adapt import DEFAULT_TRAINABLE_BLOCKS
from edge_smsp.devices.adapt_memory import TIERS, AdaptMemory, fit_adapt_memory
from edge_smsp.devices.planner import cost_at_ratio, predict_latency_ms, predict_memory_bytes
from edge_smsp.devices.profiles import MIB, DeviceProfile
from edge_smsp.export.feature_graph import export_adaptable_bundle, export_feature_graph
from edge_smsp.models.cost import measure_cost
from edge_smsp.models.prune import prune
from edge_smsp.models.zoo import backbone_spec
from edge_smsp.pool import Pool
from edge_smsp.transfer.estimators import TaskQuery
from edge_smsp.transport.base import PayloadHook

ADAPTED_ON_DEVICE = "device"


@dataclass(frozen=True)
class DeviceDeployRequest:
    """A deploy whose task is an ImageFolder on the device (`data`): no image of it reaches the host."""

    profile: DeviceProfile
    backbone: nn.Module
    pool: Pool | None
    config: adaptation.AdaptConfig
    out_dir: Path
    data: device.DeviceData
    image_size: int
    trust_new_host: bool = False
    bench: BenchSettings = BenchSettings()
    progress: bool = False
    opset: int | None = None
    on_payload: PayloadHook | None = None  # hears every payload the transport moves (tests record them)

    def with_task(self, task: Any) -> stages.DeployRequest:
        """The host deploy's request for the described task: the shared steps (plan, method) read it."""
        return stages.DeployRequest(
            profile=self.profile, backbone=self.backbone, task=task, pool=self.pool, config=self.config,
            out_dir=self.out_dir, trust_new_host=self.trust_new_host, bench=self.bench, progress=self.progress,
            opset=self.opset,
        )  # fmt: skip


@dataclass
class DeviceDeployReport(DeployReport):
    """A deploy report (DeployReport's keys) plus what the on-device adaptation measured and moved."""

    adapted_on: str = ADAPTED_ON_DEVICE
    device_data: str = ""
    accuracy_numpy: float | None = None  # the device's numpy engine on its held-out split
    accuracy_onnxruntime: float | None = None  # the written file in onnxruntime, same images
    agreement: float | None = None
    bytes_to_device: int = 0
    bytes_from_device: int = 0
    device_seconds: dict[str, float] = field(default_factory=dict)  # per device stage: scan ... bench
    device_bytes_from: dict[str, int] = field(default_factory=dict)  # per device stage: bytes it sent back
    adapt_peak_rss_mib: float | None = None
    bench_peak_rss_mib: float | None = None
    adapt_memory: dict[str, Any] = field(default_factory=dict)  # the plan's prediction and image cap
    trainable_blocks: int = 0
    device_adapt: dict[str, Any] = field(default_factory=dict)  # the device's adapt report
    device_train: str = "light"  # the tier that ran: light (numpy + onnxruntime) or torch
    device_train_note: str = ""  # why, when --device-train auto chose


def deploy_on_device(
    request: DeviceDeployRequest, *, on_stage: Callable[[str], None] | None = None
) -> DeviceDeployReport:
    """The whole flow (module doc); one-line errors (typed) for bad input, before anything is uploaded where
    the input can tell (the folder, the memory budget); a deploy that fails leaves nothing new in --out."""
    checked_output_path(request.out_dir, directory=True)
    _check_request(request)
    with removed_on_failure(request.out_dir):
        return _deploy_on_device(request, on_stage)


def _deploy_on_device(
    request: DeviceDeployRequest, on_stage: Callable[[str], None] | None
) -> DeviceDeployReport:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    stage = stage_timer(timings, on_stage)
    log = device.DeviceLog()
    config, size, spec = request.config, request.image_size, backbone_spec(request.backbone)
    with stage("connect"):
        transport = stages.connect(request.profile, request.trust_new_host)
    transport.bytes.hook = request.on_payload
    with transport:
        with stage("device_check"):
            checked = stages.check(
                transport, request.profile, request.bench.timeout, request.opset, request.bench.runtime
            )
        with stage("scan"):
            scanned = device.scan(transport, request.data, log, config.seed)
        task = device.described_task(scanned, request.data, size, spec.mean, spec.std, config.seed)
        deploy_request = request.with_task(task)
        request.out_dir.mkdir(parents=True, exist_ok=True)
        with stage("plan"):
            choice = stages.plan_ratio(deploy_request, checked)
            chosen, note = stages.choose_method(
                dataclasses.replace(config, ratio=choice.ratio), request.pool, request.backbone, size
            )
            skeleton = export_adaptable_bundle(
                prune(stages.with_untrained_head(request.backbone, task), ratio=choice.ratio, image_size=size,
                      round_to=config.round_to, tie_break={})[0],
                request.out_dir / "skeleton", image_size=size, opset=checked.opset, labels=task.class_names,
                mean=spec.mean, std=spec.std,
            )  # fmt: skip
            blocks = _trainable_blocks(request.data, skeleton.sizes.num_cuts)
            tier, tier_note, memory = _plan_tier(
                transport, log, skeleton.sizes, blocks, scanned, checked, request
            )
            if tier == "torch":
                blocks = skeleton.sizes.num_cuts - 1  # every parameter
        with stage("describe"):
            graph = export_feature_graph(
                request.backbone, request.out_dir / "features" / "backbone.onnx", image_size=size,
                opset=checked.opset, mean=spec.mean, std=spec.std,
            )  # fmt: skip
            descriptor = device.describe(transport, graph, request.data, log, task.num_classes)
        prober = device.DeviceProber(
            transport, request.pool, request.data, log, request.out_dir / "features",
            image_size=size, opset=checked.opset, mean=spec.mean, std=spec.std, seed=config.seed,
        )  # fmt: skip
        with stage("select_and_prune"):
            run = adaptation.prepare_elsewhere(
                request.backbone, request.pool, task, chosen, query=TaskQuery.described(descriptor),
                prober=prober, progress=request.progress,
            )  # fmt: skip
        assert run.model is not None
        with stage("export"):
            bundle = export_adaptable_bundle(
                run.model, request.out_dir / "bundle", image_size=size, opset=checked.opset,
                labels=task.class_names, mean=spec.mean, std=spec.std,
            )  # fmt: skip
        with stage("upload"):
            remote_bundle = device.upload_bundle(transport, bundle)
        with stage("device_adapt"):
            adapted = device.adapt_on_device(
                transport, remote_bundle, request.data, log, iters=chosen.iters, trainable_blocks=blocks,
                batch_size=chosen.batch_size, lr=chosen.lr, seed=config.seed, threads=request.profile.threads,
                max_per_class=memory.max_per_class, tier=tier,
            )  # fmt: skip
        device.check_adapt_reply(adapted, scanned)
        remote_model = str(adapted["out_path"])
        with stage("bench"):
            shipped = _Shipped(onnx_path=Path(remote_model), sha256=str(adapted["out_sha256"]))
            bench_started = time.perf_counter()
            measured = run_bench(transport, remote_model, shipped, checked.profile, request.bench)  # type: ignore[arg-type]
            log.seconds["bench"] = round(time.perf_counter() - bench_started, 3)
    bytes_moved = (transport.bytes.to_device, transport.bytes.from_device)  # the clean-up's commands too
    cost = measure_cost(run.model, size, choice.ratio)
    recorded = _record(request, checked.profile, choice.ratio, cost, measured, task, adapted)
    timings["total"] = time.perf_counter() - started
    report = DeviceDeployReport(
        profile=checked.profile.name,
        device_transport=checked.profile.connection.transport,
        backbone=spec.name,
        image_size=size,
        task_id=task.task_id,
        class_names=list(task.class_names),
        method=chosen.method,
        method_requested=config.method,
        method_note=note,
        ratio=choice.ratio,
        ratio_source=choice.source,
        latency_percentile=checked.profile.latency_percentile,
        latency_target_ms=checked.profile.latency_target_ms,
        memory_budget_bytes=checked.profile.memory_budget_bytes,
        runtime_overhead_bytes=choice.memory_model.fixed_bytes,
        runtime_overhead_source=choice.memory_model.runtime_source,
        latency_model=dataclasses.asdict(choice.latency_model),
        memory_model=dataclasses.asdict(choice.memory_model),
        predicted_latency_ms=predict_latency_ms(choice.latency_model, cost.macs, checked.profile),
        predicted_memory_bytes=predict_memory_bytes(cost, checked.profile, choice.memory_model),
        measured=measured.measured,
        measured_latency_ms=measured.latency_ms,
        measured_peak_rss_bytes=_mib_to_bytes(measured.measured.get("peak_rss_mib")),
        val_accuracy=float(adapted["accuracy_onnxruntime"]),
        params_before=cost_at_ratio(stages.with_untrained_head(request.backbone, task), size, 0.0).params,
        params_after=cost.params,
        macs_before=cost_at_ratio(stages.with_untrained_head(request.backbone, task), size, 0.0).macs,
        macs_after=cost.macs,
        onnx_path=remote_model,
        card_path="",
        model_dir=str(bundle.directory),
        onnx_size_bytes=int(adapted["out_bytes"]),
        onnx_sha256=str(adapted["out_sha256"]),
        max_abs_diff=float(adapted["max_abs_logit_diff"]),
        opset=checked.opset,
        device_stack=checked.stack.to_dict(),
        remote_model_path=remote_model,
        measurement_id=recorded.measurement_id,
        measurement_note=recorded.note,
        device_info=checked.device_info,
        similar_tasks=[] if run.selection is None else [dataclasses.asdict(t) for t in run.selection.similar_tasks()],
        calibration=[],
        plan=None if choice.plan is None else choice.plan.to_dict(),
        seconds={key: round(value, 3) for key, value in timings.items()},
        out_dir=str(request.out_dir),
        report_path=str(request.out_dir / REPORT_NAME),
        extra={"init": run.init, "probed": run.probed, "notes": run.notes, "skeleton_matches": skeleton.sizes == bundle.sizes},
        device_data=request.data.path,
        accuracy_numpy=float(adapted["accuracy"]),
        accuracy_onnxruntime=float(adapted["accuracy_onnxruntime"]),
        agreement=float(adapted["agreement"]),
        bytes_to_device=bytes_moved[0],
        bytes_from_device=bytes_moved[1],
        device_seconds=dict(log.seconds),
        device_bytes_from=dict(log.bytes_from_device),
        adapt_peak_rss_mib=adapted.get("peak_rss_mib"),
        bench_peak_rss_mib=measured.measured.get("peak_rss_mib"),
        adapt_memory={**memory.to_dict(), "peak_mib": round(memory.peak_bytes / MIB, 1)},
        trainable_blocks=blocks,
        device_adapt={key: value for key, value in adapted.items() if key not in ("classes",)},
        device_train=tier,
        device_train_note=tier_note,
    )  # fmt: skip
    payload = report.to_dict()
    write_json_atomically(request.out_dir / REPORT_NAME, payload)
    write_html_report(request.out_dir / HTML_NAME, [payload])
    return report


@dataclass(frozen=True)
class _Shipped:
    """What run_bench checks the device's report against: the file's SHA-256 (the device wrote it)."""

    onnx_path: Path
    sha256: str


def _check_request(request: DeviceDeployRequest) -> None:
    """What the flow cannot do, refused before connecting."""
    if request.bench.precision not in (DEFAULT_PRECISION, None):
        raise PlanError(f"precision {request.bench.precision}: on-device adaptation writes fp32 only")
    config = request.config
    if config.similarity != "prototype":
        raise PruneError(
            f"--similarity {config.similarity} runs pool models on the task's images, which stay on the device: "
            "use --similarity prototype with --device-data"
        )
    if request.data.tier not in ("auto", *TIERS):
        raise PlanError(f"--device-train must be auto, light or torch, got {request.data.tier}")
    if request.data.trainable_blocks is not None and request.data.trainable_blocks < 0:
        raise PlanError(f"--trainable-blocks must be >= 0, got {request.data.trainable_blocks}")


def _trainable_blocks(data: device.DeviceData, num_cuts: int) -> int:
    if data.trainable_blocks is None:
        return min(DEFAULT_TRAINABLE_BLOCKS, num_cuts - 1)
    if data.trainable_blocks >= num_cuts:
        raise PlanError(
            f"--trainable-blocks must be from 0 to {num_cuts - 1} for this model, got {data.trainable_blocks}"
        )
    return data.trainable_blocks


def _plan_tier(
    transport: Any, log: device.DeviceLog, sizes: Any, blocks: int, scanned: dict[str, Any],
    checked: stages.DeviceCheck, request: DeviceDeployRequest,
) -> tuple[str, str, AdaptMemory]:  # fmt: skip
    """The tier that runs (--device-train), why, and its memory plan. auto: torch when `info` found torch and its
    plan fits the budget, else light."""
    wanted = request.data.tier
    version = checked.device_info.get("torch_version")
    if wanted == "light" or (wanted == "auto" and not version):
        note = "" if wanted == "light" else "the device has no torch"
        return "light", note, _fit_memory(sizes, blocks, scanned, checked, request)
    if not version:
        raise PlanError(
            f"--device-train torch: {checked.profile.name} has no torch (its `info` found none): install torch "
            "there (JetPack's or PyPI's wheel), or use --device-train light"
        )
    torch_mib = device.torch_import_mib(transport, log)
    try:
        memory = _fit_memory(sizes, blocks, scanned, checked, request, tier="torch", torch_rss_mib=torch_mib)
    except PlanError as error:
        if wanted == "torch":
            raise
        note = f"torch {version} found, but {error}"
        return "light", note, _fit_memory(sizes, blocks, scanned, checked, request)
    return "torch", f"torch {version} on the device" if wanted == "auto" else "", memory


def _fit_memory(
    sizes: Any,
    blocks: int,
    scanned: dict[str, Any],
    checked: stages.DeviceCheck,
    request: DeviceDeployRequest,
    tier: str = "light",
    torch_rss_mib: float | None = None,
) -> AdaptMemory:
    return fit_adapt_memory(
        sizes,
        checked.profile.adaptation_budget_bytes,
        trainable_blocks=blocks,
        train_counts=[int(count) for count in scanned["train_counts"]],
        val_counts=[int(count) for count in scanned["val_counts"]],
        batch_size=request.config.batch_size,
        imported_rss_mib=checked.imported_rss_mib,
        tier=tier,
        torch_rss_mib=torch_rss_mib,
    )


def _record(
    request: DeviceDeployRequest, profile: DeviceProfile, ratio: float, cost: Any, run: Any, task: Any,
    adapted: dict[str, Any],
) -> stages.Recorded:  # fmt: skip
    """The bench as a pool measurement, with the adaptation's measured peak beside the inference one."""
    if run.fallback_providers or request.pool is None:
        return stages.record(
            request.pool, profile, backbone_spec(request.backbone).name, ratio, cost, run, task
        )
    measurement = stages.device_measurement(
        profile, backbone_spec(request.backbone).name, ratio, cost, run.measured, task
    )
    peak = adapted.get("peak_rss_mib")
    measurement = dataclasses.replace(
        measurement,
        adapt_peak_rss_mib=None if peak is None else float(peak),
        report={**measurement.report, "adapted_on": ADAPTED_ON_DEVICE, "trainable_blocks": adapted.get("trainable_blocks"),
                "device_train": adapted.get("tier", "light")},
    )  # fmt: skip
    return stages.Recorded(request.pool.add_measurement(measurement), None)


def _mib_to_bytes(value: Any) -> int | None:
    return None if value is None else int(float(value) * MIB)
