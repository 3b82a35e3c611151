"""One deploy session: profile -> planned ratio -> adapted sub-network -> ONNX -> device benchmark -> report.

The measured latency is stored in the pool as a device measurement, so the next plan for the same device,
backbone and input size fits its latency model to the device instead of the profile's throughput hint.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_smsp.core.errors import EdgeSmspError, ExportError
from edge_smsp.core.fileio import Undo, checked_output_path, removed_on_failure
from edge_smsp.deploy import steps as stages
from edge_smsp.deploy.bench import BenchSettings, DeviceRun, bench_model, run_bench
from edge_smsp.deploy.calibration import calibrate
from edge_smsp.deploy.html_report import HTML_NAME, write_html_report
from edge_smsp.deploy.report import REPORT_NAME, DeployReport, write_json_atomically
from edge_smsp.deploy.steps import CALIBRATION_RATIOS, DeployRequest
from edge_smsp.devices.planner import predict_latency_ms, predict_memory_bytes
from edge_smsp.devices.profiles import MIB

__all__ = [
    "CALIBRATION_RATIOS",
    "REPORT_NAME",
    "BenchSettings",
    "DeployReport",
    "DeployRequest",
    "bench_model",
    "deploy",
]


def deploy(request: DeployRequest, *, on_stage: Callable[[str], None] | None = None) -> DeployReport:
    """Connect, check the device, plan the ratio (unless the config gives one), adapt, export, ship, bench,
    record and report; `on_stage` hears each stage's name as it starts. A deploy that fails before its model is
    exported leaves no out dir (nor anything new in an existing one); after, the exported model stays there."""
    checked_output_path(request.out_dir, directory=True)  # made once the device answered: no empty out dir
    check_out_replaceable(request.out_dir)
    with removed_on_failure(request.out_dir) as undo:
        return _deploy(request, on_stage, undo)


def check_out_replaceable(out: Path) -> None:
    """ExportError before any work when the deploy would replace files in `out` that no deploy wrote: a model,
    report or fp32 reference counts as a deploy's only beside edge-smsp's own model card (model.json)."""
    from edge_smsp.export.onnx_export import is_own_card
    from edge_smsp.export.precision import reference_path
    from edge_smsp.models.pruned_model import check_model_dir_replaceable

    check_model_dir_replaceable(out / "model")
    shipped = out / "model.onnx"
    card = shipped.with_suffix(".json")
    if is_own_card(card, shipped.name):
        return
    names = (card.name, shipped.name, reference_path(shipped).name, REPORT_NAME, HTML_NAME)
    found = [name for name in names if os.path.lexists(out / name)]
    if found:
        raise ExportError(
            f"--out {out} holds {', '.join(found)}, which no edge-smsp deploy wrote (no edge-smsp model card "
            "beside them); the deploy would replace them: name another --out (or move them)"
        )


def _deploy(request: DeployRequest, on_stage: Callable[[str], None] | None, undo: Undo) -> DeployReport:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    stage = stage_timer(timings, on_stage)
    with stage("connect"):
        transport = stages.connect(request.profile, request.trust_new_host)
    with transport:
        with stage("device_check"):
            device = stages.check(
                transport, request.profile, request.bench.timeout, request.opset, request.bench.runtime
            )
        prepare_out_dir(request.out_dir)
        calibration: list[dict[str, Any]] = []
        if request.calibrate:
            with stage("calibrate"):
                calibration = calibrate(request, device, transport)
        with stage("plan"):
            choice = stages.plan_ratio(request, device, calibration)
        with stage("adapt"):
            adaptation = stages.adapt(request, choice)
        timings.update(
            {part: adaptation.result.seconds[part] for part in ("similarity", "pruning", "finetuning")}
        )
        with stage("export"):
            exported = stages.export(request, adaptation, device, choice)
        undo.keep()  # a whole model and its card: a failed upload or bench leaves them for `edge-smsp bench`
        try:
            with stage("upload"):
                remote_model = stages.upload(transport, exported.onnx)
            with stage("bench"):
                # Benched in the precision that shipped (fp32 when the INT8 gate failed): stored under it.
                bench = dataclasses.replace(request.bench, precision=exported.shipped_precision)
                run = run_bench(transport, remote_model, exported.onnx, device.profile, bench)
        except EdgeSmspError as error:
            error.add_note(
                f"the exported model stays in {exported.onnx.onnx_path}: edge-smsp bench --model with the same "
                "--profile measures it again"
            )
            raise
    recorded = stages.record(
        request.pool, device.profile, request.backbone_name, choice.ratio, exported.cost, run, request.task
    )
    timings["total"] = time.perf_counter() - started
    report = _report(request, device, choice, adaptation, exported, remote_model, run, recorded, calibration)
    report.seconds.update({key: round(value, 3) for key, value in timings.items()})
    payload = report.to_dict()
    write_json_atomically(request.out_dir / REPORT_NAME, payload)
    write_html_report(request.out_dir / HTML_NAME, [payload])
    return report


def _report(
    request: DeployRequest,
    device: stages.DeviceCheck,
    choice: stages.RatioChoice,
    adaptation: stages.Adaptation,
    exported: stages.ExportedModel,
    remote_model: str,
    run: DeviceRun,
    recorded: stages.Recorded,
    calibration: list[dict[str, Any]],
) -> DeployReport:
    profile, task, result, onnx = device.profile, request.task, adaptation.result, exported.onnx
    peak_rss = run.measured.get("peak_rss_mib")
    return DeployReport(
        profile=profile.name,
        device_transport=profile.connection.transport,
        backbone=request.backbone_name,
        image_size=request.image_size,
        task_id=task.task_id,
        class_names=list(task.class_names),
        method=result.method,
        method_requested=request.config.method,
        method_note=adaptation.method_note,
        ratio=choice.ratio,
        ratio_source=choice.source,
        latency_percentile=profile.latency_percentile,
        latency_target_ms=profile.latency_target_ms,
        memory_budget_bytes=profile.memory_budget_bytes,
        runtime_overhead_bytes=choice.memory_model.fixed_bytes,
        runtime_overhead_source=choice.memory_model.runtime_source,
        latency_model=dataclasses.asdict(choice.latency_model),
        memory_model=dataclasses.asdict(choice.memory_model),
        predicted_latency_ms=predict_latency_ms(choice.latency_model, exported.cost.macs, profile),
        predicted_memory_bytes=predict_memory_bytes(exported.cost, profile, choice.memory_model),
        measured=run.measured,
        measured_latency_ms=run.latency_ms,
        measured_peak_rss_bytes=None if peak_rss is None else int(float(peak_rss) * MIB),
        val_accuracy=result.val_accuracy,
        params_before=exported.cost_before.params,
        params_after=exported.cost.params,
        macs_before=exported.cost_before.macs,
        macs_after=exported.cost.macs,
        onnx_path=str(onnx.onnx_path),
        card_path=str(onnx.card_path),
        model_dir=str(exported.model_dir),
        onnx_size_bytes=onnx.size_bytes,
        onnx_sha256=onnx.sha256,
        max_abs_diff=onnx.max_abs_diff,
        opset=onnx.opset,
        device_stack=device.stack.to_dict(),
        remote_model_path=remote_model,
        measurement_id=recorded.measurement_id,
        measurement_note=recorded.note,
        device_info=device.device_info,
        similar_tasks=[dataclasses.asdict(similar) for similar in result.similar_tasks],
        calibration=calibration,
        plan=None if choice.plan is None else choice.plan.to_dict(),
        seconds={},
        out_dir=str(request.out_dir),
        report_path=str(request.out_dir / REPORT_NAME),
        precision=exported.shipped_precision,
        precision_requested=request.precision_requested,
        precision_planned=choice.precision,
        precision_gate=None if exported.precision is None else exported.precision.gate.to_dict(),
        fp32_accuracy=None if exported.precision is None else exported.precision.fp32_accuracy,
        agreement=None if exported.precision is None else exported.precision.agreement,
        fp32_onnx_path=None if exported.fp32_onnx is None else str(exported.fp32_onnx.onnx_path),
        precision_plan=None if choice.joint is None else choice.joint.to_dict(),
        extra={
            "init": result.init,
            "recipe": result.config.recipe,
            "probed": result.probed,
            "notes": result.notes,
            "training": result.training,
        },
    )


def stage_timer(timings: dict[str, float], on_stage: Callable[[str], None] | None) -> Callable[[str], Any]:
    """A context manager per named stage: announces it to `on_stage` and adds its wall time to `timings`."""

    @contextmanager
    def stage(name: str) -> Iterator[None]:
        if on_stage is not None:
            on_stage(name)
        started = time.perf_counter()
        try:
            yield
        finally:
            timings[name] = time.perf_counter() - started

    return stage


def prepare_out_dir(out: Path) -> None:
    """Make the deploy's output folder (once the device answered, so a failed check leaves none)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"--out {out}: cannot create ({error.strerror or error})") from None
