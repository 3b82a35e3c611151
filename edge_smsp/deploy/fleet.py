"""One task deployed to a fleet of devices: the task loaded once, every device connected to and checked
concurrently, each planned, the similarity step and the score mask computed once (a ScoringCache), one
adaptation per distinct (ratio, recipe), one export per distinct (ratio, opset, precision, batch shape), then
upload, bench and report on every device concurrently. At most `max_connections` devices are connected at once:
each device is reached twice (check, then ship), and not held while the host adapts.

A device that fails (unreachable, an impossible plan, the wrong stack, a cut link) is reported as failed with
its one-line reason; the others go on. Ctrl-C (or SIGTERM) stops every device's remote work: the threads that
hold a device are interrupted where they are, so each transport's own interruption handling runs (the command
in flight is stopped on the device, temporaries removed, the connection closed), as in a single deploy.

    OUT/<device>/deploy_report.json   per device (failed ones too, with "status" and "error")
    OUT/models/<ratio>-opset<N>-<precision>[-batch]/   each distinct export, shared by its devices
    OUT/fleet_report.json             {"devices": [...], "shared": {...}, "seconds": {...}}
    OUT/deploy_report.html            the table and the plots of every device
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_smsp import adaptation as adapting
from edge_smsp.core.errors import ProfileError
from edge_smsp.core.fileio import checked_output_path
from edge_smsp.deploy import steps as stages
from edge_smsp.deploy.bench import BenchSettings, DeviceRun, run_bench
from edge_smsp.deploy.html_report import HTML_NAME, write_html_report
from edge_smsp.deploy.report import REPORT_NAME, write_json_atomically
from edge_smsp.deploy.session import _report, prepare_out_dir, stage_timer
from edge_smsp.deploy.steps import DeployRequest
from edge_smsp.deploy.workers import run_concurrently
from edge_smsp.devices.profiles import DeviceProfile

FLEET_REPORT_NAME = "fleet_report.json"
DEFAULT_MAX_CONNECTIONS = 4
DEPLOYED, FAILED = "deployed", "failed"


@dataclass(frozen=True)
class FleetRequest:
    """The adaptation and bench of `request` (its profile and out_dir are replaced per device) for every
    profile; the fleet's files go under `out_dir`."""

    request: DeployRequest
    profiles: tuple[DeviceProfile, ...]
    out_dir: Path
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    benches: tuple[BenchSettings, ...] = ()  # per profile (its runtime and precision); empty: request.bench


@dataclass
class FleetDevice:
    """One device's way through the fleet deploy; `error` (with the `stage` it failed in) once it failed."""

    name: str  # its folder under the fleet's out dir: the profile's name, made unique
    request: DeployRequest
    seconds: dict[str, float] = field(default_factory=dict)
    check: stages.DeviceCheck | None = None
    choice: stages.RatioChoice | None = None
    adaptation_key: tuple[Any, ...] | None = None
    export_key: tuple[Any, ...] | None = None
    scoring_reused: bool = False  # its adaptation reused another ratio's selection and score mask
    remote_model: str | None = None
    run: DeviceRun | None = None
    bench_lock: threading.Lock | None = None  # held while benching: shared by the devices on one machine
    shares_machine_with: list[str] = field(default_factory=list)
    bench_window: tuple[float, float] | None = None  # seconds after the fleet started
    stage: str | None = None
    error: str | None = None

    @property
    def alive(self) -> bool:
        return self.error is None

    def fail(self, stage: str, error: BaseException | str) -> None:
        if self.error is None:  # the first failure is the reason (closing the link may fail after it)
            self.stage, self.error = stage, _one_line(error)


@dataclass
class FleetReport:
    """Every device's report (deployed or failed), what ran once for all, and the phases' wall times."""

    devices: list[dict[str, Any]]
    shared: dict[str, Any]
    seconds: dict[str, float]
    out_dir: str

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [device for device in self.devices if device["status"] == FAILED]

    def to_dict(self) -> dict[str, Any]:
        out = Path(self.out_dir)
        return {
            "devices": self.devices,
            "shared": self.shared,
            "seconds": self.seconds,
            "out_dir": self.out_dir,
            "report_path": str(out / FLEET_REPORT_NAME),
            "html_path": str(out / HTML_NAME),
        }


def deploy_fleet(fleet: FleetRequest, *, on_stage: Callable[[str], None] | None = None) -> FleetReport:
    """Deploy `fleet.request`'s task to every profile (see the module's docstring); never raises for one
    device's failure, only for the fleet's own (an unwritable out dir, an interruption)."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    stage = stage_timer(seconds, on_stage)
    out = checked_output_path(fleet.out_dir, directory=True)
    devices = _devices(fleet, out)
    with stage("device_check"):
        run_concurrently("device_check", devices, _check_device, fleet.max_connections)
    prepare_out_dir(out)
    with stage("plan"):
        for device in _alive(devices):
            _timed_step(device, "plan", lambda d=device: _plan(d))
    cache = adapting.ScoringCache()
    with stage("adapt"):
        adaptations = _adapt_each(_alive(devices), cache)
    with stage("export"):
        exports = _export_each(_alive(devices), adaptations, out)
    with stage("ship"):
        _share_bench_locks(_alive(devices))
        run_concurrently(
            "ship", _alive(devices), lambda device: _ship(device, exports), fleet.max_connections
        )
    with stage("record"):
        reports = [_device_report(device, adaptations, exports, started) for device in devices]
    seconds["total"] = time.perf_counter() - started
    shared = {
        **cache.to_dict(),
        "adaptations": sum(1 for value in adaptations.values() if not isinstance(value, str)),
        "exports": sum(1 for value in exports.values() if not isinstance(value, str)),
        "devices": len(devices),
        "deployed": sum(1 for report in reports if report["status"] != FAILED),
        "failed": sum(1 for report in reports if report["status"] == FAILED),
        "max_connections": fleet.max_connections,
        "image_size": fleet.request.image_size,
        "task_id": fleet.request.task.task_id,
    }
    report = FleetReport(reports, shared, {k: round(v, 3) for k, v in seconds.items()}, str(out))
    for device, payload in zip(devices, reports, strict=True):
        payload["seconds"]["total"] = report.seconds["total"]
        write_json_atomically(out / device.name / REPORT_NAME, payload)
    write_json_atomically(out / FLEET_REPORT_NAME, report.to_dict())
    write_html_report(out / HTML_NAME, reports, title="edge-smsp fleet deploy")
    return report


def _devices(fleet: FleetRequest, out: Path) -> list[FleetDevice]:
    devices, taken, reached = [], set(), set()
    benches = fleet.benches or (fleet.request.bench,) * len(fleet.profiles)
    for profile, bench in zip(fleet.profiles, benches, strict=True):
        # One profile twice on one connection is one device listed twice: it would bench against itself and
        # store two measurements of one run. (Profiles of other names may share a connection on purpose.)
        where = (profile.name, profile.connection)
        if where in reached:
            raise ProfileError(
                f"the fleet lists device {profile.name} twice (same profile, same {profile.connection.transport} "
                "connection): list each device once"
            )
        reached.add(where)
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", profile.name).strip("._") or "device"
        name, count = base, 1
        while name in taken or name == "models":
            count += 1
            name = f"{base}-{count}"
        taken.add(name)
        request = dataclasses.replace(fleet.request, profile=profile, out_dir=out / name, bench=bench)
        devices.append(FleetDevice(name, request))
    return devices


def _alive(devices: Sequence[FleetDevice]) -> list[FleetDevice]:
    return [device for device in devices if device.alive]


def _check_device(device: FleetDevice) -> None:
    request = device.request
    with _timed(device, "connect"):
        transport = _guarded(
            device, "connect", lambda: stages.connect(request.profile, request.trust_new_host)
        )
    if transport is None:
        return
    with transport, _timed(device, "device_check"):
        device.check = _guarded(
            device,
            "device_check",
            lambda: stages.check(
                transport, request.profile, request.bench.timeout, request.opset, request.bench.runtime
            ),
        )


def _plan(device: FleetDevice) -> None:
    assert device.check is not None
    device.choice = stages.plan_ratio(device.request, device.check)
    device.adaptation_key = (device.choice.ratio, device.request.config.recipe)
    device.export_key = (
        *device.adaptation_key,
        device.check.opset,
        device.choice.precision,
        device.check.profile.batch_size > 1,
    )


def _adapt_each(devices: Sequence[FleetDevice], cache: adapting.ScoringCache) -> dict[Any, Any]:
    """One adaptation per distinct (ratio, recipe), in the order devices need them; a failed one is its reason."""
    done: dict[Any, Any] = {}
    took: dict[Any, tuple[float, bool]] = {}  # seconds, and whether it reused another's scoring
    for device in devices:
        key = device.adaptation_key
        if key not in done:
            started, hits = time.perf_counter(), cache.hits
            try:
                done[key] = _adapt(device.request, device.choice, cache)
            except Exception as error:  # noqa: BLE001 (it fails the devices at this ratio, not the fleet)
                done[key] = _one_line(error)
            took[key] = (time.perf_counter() - started, cache.hits > hits)
        device.seconds["adapt"], device.scoring_reused = took[key]
        if isinstance(done[key], str):
            device.fail("adapt", done[key])
    return done


def _adapt(
    request: DeployRequest, choice: stages.RatioChoice | None, cache: adapting.ScoringCache
) -> stages.Adaptation:
    """steps.adapt, with the fleet's scoring cache."""
    assert choice is not None
    config, note = stages.choose_method(
        dataclasses.replace(request.config, ratio=choice.ratio),
        request.pool,
        request.backbone,
        request.image_size,
    )
    result = adapting.adapt(
        request.backbone, request.pool, request.task, config, progress=request.progress, cache=cache
    )
    return stages.Adaptation(result, note)


def _export_each(devices: Sequence[FleetDevice], adaptations: dict[Any, Any], out: Path) -> dict[Any, Any]:
    """One export per distinct (ratio, recipe, opset, precision, batch shape), under OUT/models/."""
    done: dict[Any, Any] = {}
    took: dict[Any, float] = {}
    for device in devices:
        key = device.export_key
        if key not in done:
            ratio, _, opset, precision, dynamic = key
            folder = out / "models" / f"r{ratio:.2f}-opset{opset}-{precision}{'-batch' if dynamic else ''}"
            request = dataclasses.replace(device.request, out_dir=folder)
            started = time.perf_counter()
            try:
                folder.mkdir(parents=True, exist_ok=True)
                done[key] = stages.export(
                    request, adaptations[device.adaptation_key], device.check, device.choice
                )
            except Exception as error:  # noqa: BLE001 (it fails the devices of this export only)
                done[key] = _one_line(error)
            took[key] = time.perf_counter() - started
        device.seconds["export"] = took[key]
        if isinstance(done[key], str):
            device.fail("export", done[key])
    return done


def _ship(device: FleetDevice, exports: dict[Any, Any]) -> None:
    """Connect again, upload the device's export, bench it there."""
    request, exported = device.request, exports[device.export_key]
    with _timed(device, "reconnect"):
        transport = _guarded(
            device, "connect", lambda: stages.connect(request.profile, request.trust_new_host)
        )
    if transport is None:
        return
    with transport:
        with _timed(device, "upload"):
            device.remote_model = _guarded(device, "upload", lambda: stages.upload(transport, exported.onnx))
        if device.remote_model is None:
            return
        bench = dataclasses.replace(request.bench, precision=exported.shipped_precision)
        waited = time.perf_counter()
        with device.bench_lock or contextlib.nullcontext():
            begun = time.perf_counter()
            device.seconds["bench_wait"] = begun - waited
            device.run = _guarded(
                device,
                "bench",
                lambda: run_bench(transport, device.remote_model, exported.onnx, request.profile, bench),
            )
            ended = time.perf_counter()
        device.bench_window = (begun, ended)
        device.seconds["bench"] = ended - begun


def _share_bench_locks(devices: Sequence[FleetDevice]) -> None:
    """One lock for the devices that run on one machine (the same kernel: the device's boot id), so that their
    benches take turns: benched at once, they would measure each other's load, and the pool would keep it."""
    by_machine: dict[str, list[FleetDevice]] = {}
    for device in devices:
        facts = (device.check.device_info.get("device") or {}) if device.check else {}
        if facts.get("boot_id"):
            by_machine.setdefault(str(facts["boot_id"]), []).append(device)
    for group in by_machine.values():
        lock = threading.Lock()
        for device in group:
            device.bench_lock = lock
            device.shares_machine_with = [other.name for other in group if other is not device]


def _device_report(
    device: FleetDevice, adaptations: dict[Any, Any], exports: dict[Any, Any], started: float
) -> dict[str, Any]:
    """The device's deploy report (recorded in the pool first), or what failed where."""
    seconds = {key: round(value, 3) for key, value in device.seconds.items()}
    if device.alive and device.run is not None:
        request, choice = device.request, device.choice
        assert choice is not None and device.check is not None and device.remote_model is not None
        adaptation, exported = adaptations[device.adaptation_key], exports[device.export_key]
        try:
            recorded = stages.record(
                request.pool, request.profile, request.backbone_name, choice.ratio, exported.cost, device.run,
                request.task,
            )  # fmt: skip
        except Exception as error:  # noqa: BLE001 (a pool that cannot store it: the deploy still happened)
            recorded = stages.Recorded(None, f"not stored in the pool: {_one_line(error)}")
        report = _report(
            request, device.check, choice, adaptation, exported, device.remote_model, device.run, recorded, []
        )
        timings = {part: adaptation.result.seconds[part] for part in ("similarity", "pruning", "finetuning")}
        report.seconds.update({**seconds, **timings})
        report.extra["fleet"] = {
            "adaptation": _key_name(device.adaptation_key),
            "export": _key_name(device.export_key),
            "scoring_reused": device.scoring_reused,
            # benched in turn with these devices (one machine), within this window of the fleet's run
            "shares_machine_with": device.shares_machine_with,
            "bench_window_s": [round(moment - started, 3) for moment in device.bench_window or ()],
        }
        payload = report.to_dict()
        met = payload["meets_latency_target"] is not False and payload["meets_memory_budget"] is not False
        payload.update(status=DEPLOYED if met else f"{DEPLOYED} (over budget)", error=None, stage=None)
        return payload
    return {
        "profile": device.request.profile.name,
        "device_transport": device.request.profile.connection.transport,
        "status": FAILED,
        "error": device.error or "not deployed",
        "stage": device.stage,
        "seconds": seconds,
        "report_path": str(device.request.out_dir / REPORT_NAME),
    }


def _key_name(key: tuple[Any, ...] | None) -> str:
    return "-".join(f"{part:.2f}" if isinstance(part, float) else str(part) for part in key or ())


# --- running device work concurrently, and stopping it ----------------------------------------------------


def _guarded(device: FleetDevice, stage: str, step: Callable[[], Any]) -> Any:
    """step()'s result, or None with the device failed at `stage` (any error is this device's alone)."""
    try:
        return step()
    except Exception as error:  # noqa: BLE001 (one device's failure, reported as such)
        device.fail(stage, error)
        return None


def _timed_step(device: FleetDevice, stage: str, step: Callable[[], None]) -> None:
    with _timed(device, stage):
        _guarded(device, stage, step)


@contextmanager
def _timed(device: FleetDevice, name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        device.seconds[name] = device.seconds.get(name, 0.0) + time.perf_counter() - started


def _one_line(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else (str(error) or type(error).__name__)
    return " ".join(text.split())
