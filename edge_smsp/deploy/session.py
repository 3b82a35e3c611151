"""One deploy session: profile -> planned ratio -> adapted sub-network -> ONNX -> device benchmark -> report.

The measured latency is stored in the pool as a device measurement, so the next plan for the same device,
backbone and input size fits its latency model to the device instead of the profile's throughput hint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_smsp import smsp
from edge_smsp.cost import ModelCost
from edge_smsp.data import Task
from edge_smsp.deploy import Transport, open_transport
from edge_smsp.deploy.transport import sha256_file
from edge_smsp.errors import ExportError, NoPoolEntriesError, PlanError, TransportError
from edge_smsp.export import ExportResult, export_onnx, metadata_from_pruned
from edge_smsp.fileio import write_atomically
from edge_smsp.importance import score_units, unit_l1_norms
from edge_smsp.planner import (
    LatencyModel,
    Measurement,
    Plan,
    cost_at_ratio,
    fit_latency_model,
    measure_cost,
    plan,
    predict_memory_bytes,
    runtime_overhead_bytes,
    with_device_runtime_memory,
)
from edge_smsp.pool import DeviceMeasurement, Pool
from edge_smsp.profiles import MIB, DeviceProfile, load_profile
from edge_smsp.prune import checked_ratio, prune, replace_classifier
from edge_smsp.zoo import backbone_spec

FALLBACK_METHOD = "magnitude"
CALIBRATION_RATIOS: tuple[float, ...] = (0.0, 0.4, 0.7)
REPORT_NAME = "deploy_report.json"
PARITY_IMAGES = 4


@dataclass(frozen=True)
class BenchSettings:
    """How long the device benchmark runs (edge_smsp_runtime bench: warm-ups, then runs or seconds)."""

    runs: int = 100
    min_seconds: float = 2.0
    warmup: int = 10
    timeout: float = 600.0

    def runtime_args(self, model_path: str, profile: DeviceProfile) -> list[str]:
        """`python -m edge_smsp_runtime` arguments benchmarking model_path with the profile's session options."""
        return [
            "bench",
            "--model",
            model_path,
            "--warmup",
            str(self.warmup),
            "--runs",
            str(self.runs),
            "--min-seconds",
            repr(float(self.min_seconds)),
            "--threads",
            str(profile.threads),
            "--providers",
            ",".join(profile.providers),
            # Only when batching: a runtime older than the flag still benches batch-1 models.
            *(["--batch-size", str(profile.batch_size)] if profile.batch_size > 1 else []),
        ]


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
    runtime_overhead_bytes: int  # the memory model's runtime part
    runtime_overhead_source: str  # "profile" | "device" (its imported runtime + a session) | "default"
    latency_model: dict[str, Any]
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


def deploy(
    profile: DeviceProfile | str | os.PathLike[str],
    backbone: nn.Module,
    task: Task,
    pool: Pool | None,
    config: smsp.AdaptConfig,
    out_dir: str | os.PathLike[str],
    *,
    ratio: float | None = None,
    trust_new_host: bool = False,
    calibrate: bool = False,
    calibration_ratios: Sequence[float] = CALIBRATION_RATIOS,
    bench: BenchSettings | None = None,
    progress: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> DeployReport:
    """Plan the ratio (unless `ratio` is given; config.ratio is ignored), adapt, export, ship, bench, report."""
    started = time.perf_counter()
    profile = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    bench = bench or BenchSettings()
    given_ratio = None if ratio is None else _checked_ratio(ratio)
    out = Path(out_dir)
    _prepare_out_dir(out)
    name = backbone_spec(backbone).name
    size = int(task.image_size)
    timings: dict[str, float] = {}
    stage = _stage_timer(timings, on_stage)

    # Connect first: an unknown host key or a wrong key fails in seconds, before minutes of fine-tuning.
    with stage("connect"):
        transport = open_transport(profile.connection, trust_new_host=trust_new_host)
    with transport:
        with stage("device_check"):
            # Pushes the runtime and imports numpy + onnxruntime there: a bare device fails now, not after export.
            device_info = transport.run_runtime(["info"], timeout=bench.timeout)
        imported_rss = device_info.get("imported_rss_mib")
        planned_profile = with_device_runtime_memory(profile, int(float(imported_rss or 0) * MIB))
        if profile.runtime_overhead_bytes is not None:
            overhead_source = "profile"
        else:
            overhead_source = "device" if planned_profile is not profile else "default"
        profile = planned_profile
        calibration: list[dict[str, Any]] = []
        if calibrate:
            with stage("calibrate"):
                calibration = calibrate_device(
                    profile,
                    backbone,
                    task,
                    pool,
                    transport,
                    out / "calibration",
                    calibration_ratios,
                    bench,
                    round_to=config.round_to,
                )

        with stage("plan"):
            shipped_shape = replace_classifier(copy.deepcopy(backbone), task.num_classes)
            measurements = stored_measurements(pool, profile, name, size)
            if pool is None:  # calibration results were not stored: use them directly
                measurements += [
                    Measurement(ratio=row["ratio"], latency_ms=row["latency_ms"], macs=row["run_macs"])
                    for row in calibration
                ]
            chosen_plan: Plan | None = None
            if given_ratio is None:
                chosen_plan = plan(
                    profile,
                    shipped_shape,
                    measurements,
                    input_size=size,
                    backbone_name=name,
                    round_to=config.round_to,
                )
                chosen_ratio, latency_model = chosen_plan.ratio, chosen_plan.latency_model
            else:
                chosen_ratio = given_ratio
                latency_model = fit_latency_model(
                    profile,
                    measurements,
                    macs_at_ratio=lambda r: (
                        cost_at_ratio(shipped_shape, size, r, config.round_to).macs * profile.batch_size
                    ),
                )

        adapt_config, method_note = choose_method(
            dataclasses.replace(config, ratio=chosen_ratio), pool, backbone, task.image_size
        )
        with stage("adapt"):
            result = smsp.adapt(backbone, pool, task, adapt_config, progress=progress)
        for part in ("similarity", "pruning", "finetuning"):
            timings[part] = result.seconds[part]

        with stage("export"):
            model_dir = smsp.save_adapted(result, out / "model")
            meta = json.loads((model_dir / "pruned.json").read_text(encoding="utf-8"))
            exported = export_onnx(
                result.model,
                out / "model.onnx",
                image_size=size,
                metadata=metadata_from_pruned(result.model, meta),
                dynamic_batch=profile.batch_size > 1,
                parity_inputs=_parity_images(task),
            )
            # One MAC counter (the planner's) for the plan, the report and the stored measurement.
            cost = measure_cost(result.model, size, chosen_ratio)
            cost_before = cost_at_ratio(shipped_shape, size, 0.0)

        with stage("upload"):
            remote_model = upload_model(transport, exported)
        with stage("bench"):
            measured = transport.run_runtime(bench.runtime_args(remote_model, profile), timeout=bench.timeout)
        _check_device_copy(measured, exported)

    measured_latency = _latency_at(measured, profile.latency_percentile)
    peak_rss = measured.get("peak_rss_mib")
    measurement_id = None
    fallback = fallback_providers(measured)
    measurement_note = (
        f"not stored as a calibration: the device lacks {', '.join(fallback)} and ran on "
        f"{', '.join(measured.get('providers') or [])}"
        if fallback
        else None
    )
    if pool is not None and not fallback:
        measurement_id = pool.add_measurement(
            device_measurement(profile, name, size, chosen_ratio, cost, measured, task)
        )
    timings["total"] = time.perf_counter() - started
    report = DeployReport(
        profile=profile.name,
        device_transport=profile.connection.transport,
        backbone=name,
        image_size=size,
        task_id=task.task_id,
        class_names=list(task.class_names),
        method=adapt_config.method,
        method_requested=config.method,
        method_note=method_note,
        ratio=chosen_ratio,
        ratio_source="plan" if chosen_plan is not None else "given",
        latency_percentile=profile.latency_percentile,
        latency_target_ms=profile.latency_target_ms,
        memory_budget_bytes=profile.memory_budget_bytes,
        runtime_overhead_bytes=runtime_overhead_bytes(profile),
        runtime_overhead_source=overhead_source,
        latency_model=dataclasses.asdict(latency_model),
        predicted_latency_ms=_predicted_latency(latency_model, cost.macs, profile),
        predicted_memory_bytes=predict_memory_bytes(cost, profile),
        measured=measured,
        measured_latency_ms=measured_latency,
        measured_peak_rss_bytes=None if peak_rss is None else int(float(peak_rss) * MIB),
        val_accuracy=result.val_accuracy,
        params_before=cost_before.params,
        params_after=cost.params,
        macs_before=cost_before.macs,
        macs_after=cost.macs,
        onnx_path=str(exported.onnx_path),
        card_path=str(exported.card_path),
        model_dir=str(model_dir),
        onnx_size_bytes=exported.size_bytes,
        onnx_sha256=exported.sha256,
        max_abs_diff=exported.max_abs_diff,
        remote_model_path=remote_model,
        measurement_id=measurement_id,
        measurement_note=measurement_note,
        device_info=device_info,
        similar_tasks=[dataclasses.asdict(similar) for similar in result.similar_tasks],
        calibration=calibration,
        plan=None if chosen_plan is None else chosen_plan.to_dict(),
        seconds={key: round(value, 3) for key, value in timings.items()},
        out_dir=str(out),
        report_path=str(out / REPORT_NAME),
    )
    write_json_atomically(out / REPORT_NAME, report.to_dict())
    return report


def bench_model(
    profile: DeviceProfile | str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    *,
    trust_new_host: bool = False,
    bench: BenchSettings | None = None,
) -> dict[str, Any]:
    """Upload any ONNX file to the profile's device (verified) and return the runtime's bench report."""
    profile = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    bench = bench or BenchSettings()
    path = Path(model_path)
    if not path.is_file():
        raise TransportError(f"--model {path}: no such ONNX file")
    digest = sha256_file(path)
    with open_transport(profile.connection, trust_new_host=trust_new_host) as transport:
        remote = transport.upload(path, f"models/{digest[:16]}.onnx")
        report = transport.run_runtime(bench.runtime_args(remote, profile), timeout=bench.timeout)
    if report.get("model_sha256") != digest:
        raise TransportError(f"the device benchmarked a different file than {path} (SHA-256 mismatch)")
    report["profile"] = profile.name
    report["remote_model_path"] = remote
    report["latency_percentile"] = profile.latency_percentile
    report["latency_target_ms"] = profile.latency_target_ms
    report["memory_budget_bytes"] = profile.memory_budget_bytes
    return report


def fallback_providers(measured: dict[str, Any]) -> list[str]:
    """Requested providers the device lacks: such a run must not calibrate the plan (it ran slower ones)."""
    return list(measured.get("providers_unavailable") or [])


def calibrate_device(
    profile: DeviceProfile,
    backbone: nn.Module,
    task: Task,
    pool: Pool | None,
    transport: Transport,
    out_dir: Path,
    ratios: Sequence[float] = CALIBRATION_RATIOS,
    bench: BenchSettings | None = None,
    *,
    round_to: int = 8,
) -> list[dict[str, Any]]:
    """NetAdapt-style: export and bench the magnitude-pruned backbone at a few ratios; store the results."""
    if len(set(ratios)) < 2:
        raise PlanError("calibration needs at least two different ratios")
    bench = bench or BenchSettings()
    name = backbone_spec(backbone).name
    size = int(task.image_size)
    # The head is untrained: latency and memory depend only on the shapes.
    with_head = replace_classifier(copy.deepcopy(backbone), task.num_classes)
    scores = score_units(backbone, "magnitude")
    tie_break = unit_l1_norms(backbone)
    metadata = {
        "labels": list(task.class_names),
        "mean": list(task.mean),
        "std": list(task.std),
        "backbone": name,
        "task": f"{task.task_id} (calibration, untrained head)",
    }
    rows = []
    for ratio in sorted({_checked_ratio(value) for value in ratios}):
        pruned, _ = prune(with_head, scores, ratio, round_to=round_to, tie_break=tie_break)
        exported = export_onnx(
            pruned,
            out_dir / f"ratio-{ratio:.2f}.onnx",
            image_size=size,
            metadata={**metadata, "ratio": ratio},
            dynamic_batch=profile.batch_size > 1,
            parity_inputs=_parity_images(task),
        )
        remote = upload_model(transport, exported)
        measured = transport.run_runtime(bench.runtime_args(remote, profile), timeout=bench.timeout)
        _check_device_copy(measured, exported)
        cost = measure_cost(pruned, size, ratio)
        measurement_id = None
        if pool is not None and not fallback_providers(measured):
            measurement_id = pool.add_measurement(
                device_measurement(profile, name, size, ratio, cost, measured, task, calibration=True)
            )
        rows.append(
            {
                "ratio": ratio,
                "params": cost.params,
                "macs": cost.macs,
                "run_macs": cost.macs * profile.batch_size,
                "latency_ms": measured["latency_ms"],
                "peak_rss_mib": measured.get("peak_rss_mib"),
                "predicted_memory_bytes": predict_memory_bytes(cost, profile),
                "onnx_path": str(exported.onnx_path),
                "measurement_id": measurement_id,
            }
        )
    return rows


def choose_method(
    config: smsp.AdaptConfig, pool: Pool | None, backbone: nn.Module, image_size: int
) -> tuple[smsp.AdaptConfig, str | None]:
    """SMSP when the pool holds entries for these backbone weights, else the magnitude baseline and why."""
    if config.method not in smsp.POOL_METHODS:
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
    return dataclasses.replace(config, method=FALLBACK_METHOD), note


def stored_measurements(
    pool: Pool | None, profile: DeviceProfile, backbone: str, image_size: int
) -> list[Measurement]:
    """The pool's device measurements of this backbone and input size, run with the profile's batch and threads."""
    if pool is None:
        return []
    return [
        Measurement(
            ratio=row.ratio,
            latency_ms={"p50": row.latency_p50_ms, "p90": row.latency_p90_ms, "p99": row.latency_p99_ms},
            macs=row.macs,
        )
        for row in pool.measurements(device=profile.name, backbone=backbone, image_size=image_size)
        # Batching and threads change the fixed cost per run: one line cannot fit both regimes.
        if row.report.get("batch_size", 1) == profile.batch_size
        and row.report.get("threads", profile.threads) == profile.threads
    ]


def device_measurement(
    profile: DeviceProfile,
    backbone: str,
    image_size: int,
    ratio: float,
    cost: ModelCost,
    measured: dict[str, Any],
    task: Task,
    calibration: bool = False,
) -> DeviceMeasurement:
    """A pool record of one device benchmark; `macs` is per timed run, so the batch is included."""
    latency = measured["latency_ms"]
    return DeviceMeasurement(
        device=profile.name,
        backbone=backbone,
        image_size=image_size,
        ratio=ratio,
        params=cost.params,
        macs=cost.macs * profile.batch_size,
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
        },
    )


def upload_model(transport: Transport, exported: ExportResult) -> str:
    """Upload the ONNX file and its card under a content-addressed name; returns the model's device path."""
    stem = f"models/{exported.sha256[:16]}"
    return transport.upload_many(
        [(exported.onnx_path, f"{stem}.onnx"), (exported.card_path, f"{stem}.json")]
    )[0]


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON through a temporary file in the same folder and os.replace it into place."""
    write_atomically(path, (json.dumps(payload, indent=2, default=str) + "\n").encode("utf-8"))


def _stage_timer(timings: dict[str, float], on_stage: Callable[[str], None] | None) -> Callable[[str], Any]:
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


def _prepare_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"--out {out}: cannot create ({error.strerror or error})") from None


def _checked_ratio(ratio: float) -> float:
    # Rounded like the planner's candidates, so a given ratio and a planned one name the same model.
    return round(checked_ratio(ratio), 6)


def _parity_images(task: Task) -> torch.Tensor:
    """A few real validation images: parity is checked on the inputs the model will see."""
    count = min(PARITY_IMAGES, len(task.val))
    return task.val.batch(list(range(count)))[0]


def _latency_at(measured: dict[str, Any], percentile: str) -> float:
    try:
        return float(measured["latency_ms"][percentile])
    except (KeyError, TypeError, ValueError):
        raise TransportError(f"the device's bench report has no latency_ms.{percentile}") from None


def _predicted_latency(latency_model: LatencyModel, macs: int, profile: DeviceProfile) -> float:
    return float(latency_model.predict(macs * profile.batch_size))


def _check_device_copy(measured: dict[str, Any], exported: ExportResult) -> None:
    if measured.get("model_sha256") != exported.sha256:
        raise TransportError(
            f"the device benchmarked a file whose SHA-256 differs from {exported.onnx_path}; upload again"
        )
