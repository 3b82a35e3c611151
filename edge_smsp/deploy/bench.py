"""Benchmarking a model on the device: the runtime's `bench` with the profile's session options, checked."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_smsp.core.documents import shown
from edge_smsp.core.errors import ModelError, TransportError, error_text
from edge_smsp.core.paths import safe_text
from edge_smsp.core.plausible import MAX_MS, implausible_value
from edge_smsp.device_runtime.deadline import (
    DEFAULT_RUN_TIMEOUT,
    ENGINE_BUILDING_PROVIDERS,
    PLAIN_FIRST_RUN_FACTOR,
)
from edge_smsp.device_runtime.model import read_opsets
from edge_smsp.device_runtime.precision import model_precision
from edge_smsp.devices.profiles import DeviceProfile, load_profile
from edge_smsp.devices.stack import check_device_stack
from edge_smsp.pool.measurements import DEFAULT_PRECISION, DEFAULT_RUNTIME
from edge_smsp.transport.base import INFO_TIMEOUT, Transport, sha256_file

if TYPE_CHECKING:
    from edge_smsp.export.onnx_export import ExportResult


MAX_BENCH_RUNS = 100_000
MAX_BENCH_SECONDS = 3600.0
# The device's share of a bench before and around its timed runs: importing numpy and onnxruntime, creating
# the session and the first inference (minutes on an emulated ARM board), plus the report's way back.
BENCH_STARTUP_SECONDS = 300.0
# Once the device has run a runtime command (its `info`), start-up is known: a bench gets a minute plus five times
# that, so a device that hangs only in bench is reported in about a minute and a half, not five. TensorRT keeps
# the full allowance: its first run builds an engine (minutes on a Jetson) however fast the device starts.
MIN_BENCH_STARTUP_SECONDS = 60.0
BENCH_STARTUP_FACTOR = 5.0
CPU_PROVIDER = "CPUExecutionProvider"
# The runtime's start before its first inference and its report's way back, within the start-up share.
REPORT_SECONDS = 10.0
RUN_SECONDS_CEILING = 2.0  # one inference of any model a board of this project runs (emulated ARM: ~1.2 s)


def startup_allowance(start_seconds: float | None, providers: Sequence[str]) -> float:
    """The bench deadline's share for start-up, session and first inference on a device whose runtime starts
    in `start_seconds` (None: not measured yet)."""
    if start_seconds is None or set(providers) & set(ENGINE_BUILDING_PROVIDERS):
        return BENCH_STARTUP_SECONDS
    return min(BENCH_STARTUP_SECONDS, MIN_BENCH_STARTUP_SECONDS + BENCH_STARTUP_FACTOR * start_seconds)


@dataclass(frozen=True)
class BenchSettings:
    """How long the device benchmark runs (edge_smsp_runtime bench: warm-ups, then runs or seconds), and on
    which runtime and precision: measurements of others never calibrate its plans."""

    runs: int = 100
    min_seconds: float = 2.0
    warmup: int = 10
    runtime: str = DEFAULT_RUNTIME
    precision: str | None = DEFAULT_PRECISION  # None: the runtime reads it from the model's graph

    def __post_init__(self) -> None:
        if not 1 <= self.runs <= MAX_BENCH_RUNS:
            raise TransportError(f"bench runs must be 1-{MAX_BENCH_RUNS:,}, got {self.runs}")
        if not 0 <= self.min_seconds <= MAX_BENCH_SECONDS:  # also refuses NaN
            raise TransportError(f"bench seconds must be 0-{MAX_BENCH_SECONDS:g}, got {self.min_seconds}")

    @property
    def timeout(self) -> float:
        """The deadline of the bench command, derived from its work: start-up, the seconds asked for, and
        every warm-up and timed run at the slowest a device runs one."""
        return self.timeout_after(None, ())

    def timeout_after(self, start_seconds: float | None, providers: Sequence[str]) -> float:
        """The bench's deadline on a device whose runtime starts in `start_seconds` (None: not measured yet)."""
        startup = startup_allowance(start_seconds, providers)
        return startup + self.min_seconds + (self.warmup + self.runs) * RUN_SECONDS_CEILING

    @staticmethod
    def run_timeout_after(start_seconds: float | None, providers: Sequence[str]) -> float | None:
        """The runtime's --run-timeout, so that a first inference that never ends is stopped by the runtime
        (which names the model) inside the start-up share of the deadline, not by the host (which cannot tell a
        hung model from a hung device); None keeps the runtime's default."""
        startup = startup_allowance(start_seconds, providers)
        if start_seconds is None or startup >= BENCH_STARTUP_SECONDS:
            return None
        first_run = startup - start_seconds - REPORT_SECONDS
        return max(1.0, min(float(DEFAULT_RUN_TIMEOUT), first_run / PLAIN_FIRST_RUN_FACTOR))

    def runtime_args(
        self, model_path: str, profile: DeviceProfile, run_timeout: float | None = None
    ) -> list[str]:
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
            "--runtime",
            self.runtime,
            *(["--precision", self.precision] if self.precision else []),
            # Only when batching: a runtime older than the flag still benches batch-1 models.
            *(["--batch-size", str(profile.batch_size)] if profile.batch_size > 1 else []),
            *(["--run-timeout", repr(round(run_timeout, 1))] if run_timeout is not None else []),
        ]


@dataclass(frozen=True)
class DeviceRun:
    """The runtime's bench report of one model, checked to be of the file that was shipped."""

    measured: dict[str, Any]
    latency_ms: float  # at the profile's percentile
    fallback_providers: tuple[str, ...]  # requested providers the device lacks: it ran slower ones


def run_bench(
    transport: Transport,
    remote_model: str,
    exported: ExportResult,
    profile: DeviceProfile,
    settings: BenchSettings,
) -> DeviceRun:
    """Benchmark the uploaded model (its SHA-256 checked against the runtime's) with the profile's options."""
    start_seconds = transport.runtime_start_seconds
    timeout = settings.timeout_after(start_seconds, profile.providers)
    run_timeout = settings.run_timeout_after(start_seconds, profile.providers)
    measured = transport.run_runtime(
        settings.runtime_args(remote_model, profile, run_timeout), timeout=timeout
    )
    if measured.get("model_sha256") != exported.sha256:
        raise TransportError(
            f"the device benchmarked a file whose SHA-256 differs from {exported.onnx_path}; upload again"
        )
    check_report_values(measured)
    check_report_answers(measured, settings, profile, model_precision(str(exported.onnx_path)))
    try:
        latency = float(measured["latency_ms"][profile.latency_percentile])
    except (KeyError, TypeError, ValueError):
        raise TransportError(
            f"the device's bench report has no latency_ms.{profile.latency_percentile}"
        ) from None
    return DeviceRun(measured, latency, tuple(fallback_providers(measured)))


def check_report_values(report: dict[str, Any]) -> None:
    """TransportError when a bench report holds a number no benchmark measures (a negative latency, a peak of
    1e300 MiB): a broken or altered device must not reach the plan, the report or the pool."""
    latencies = report.get("latency_ms")
    if not isinstance(latencies, dict) or not latencies:
        raise TransportError(
            "the device's bench report has no latencies; check the device's runtime, then bench again"
        )
    values = {f"latency_{name}_ms": value for name, value in latencies.items()}
    values.update(
        {name: report.get(name) for name in ("session_creation_ms", "first_inference_ms", "throughput_ips")}
    )
    values.update(
        {name: report.get(name) for name in ("peak_rss_mib", "baseline_rss_mib", "imported_rss_mib")}
    )
    facts = report.get("device")
    values["total_ram_mib"] = facts.get("total_ram_mib") if isinstance(facts, dict) else None
    problem = implausible_value(values)
    if problem:
        raise TransportError(
            f"the device's bench report is not plausible: {problem}; check the device's Python, numpy and "
            "onnxruntime, then bench again"
        )


def check_onnx_file(path: Path) -> None:
    """A regular file that holds an ONNX model (its opset read the way the device runtime reads it), before
    anything is uploaded."""
    if not path.is_file():
        what = (
            "is a directory"
            if path.is_dir()
            else "is not a regular file"
            if path.exists()
            else "does not exist"
        )
        raise TransportError(f"{path}: no such ONNX file ({what})")
    if read_opsets(str(path))["opset"] is None:
        raise TransportError(
            f"{path} is not an ONNX model (no ai.onnx opset in it); export one with edge-smsp export"
        )
    external = external_data_files(path)
    if external:
        raise TransportError(
            f"{path} keeps its weights in {len(external)} separate file(s) ({', '.join(external[:3])}), and bench "
            "uploads the one .onnx file: save the model as one file (onnx.save without save_as_external_data) and "
            "bench that"
        )


def external_data_files(path: Path) -> list[str]:
    """The files an ONNX model's initializers are stored in beside it (ONNX external data), sorted."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and onnx's own types
        raise TransportError(f"{path} is not a readable ONNX model: {error_text(error)}") from None
    locations = set()
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            locations.update(entry.value for entry in tensor.external_data if entry.key == "location")
    return sorted(locations)


def check_report_answers(
    report: dict[str, Any], settings: BenchSettings, profile: DeviceProfile, precision: str
) -> None:
    """TransportError when a bench report does not answer what was asked: fewer timed runs, a provider the
    profile does not list, another precision than the file's own, a histogram that is not of its runs."""
    runs = report.get("runs")
    problem = None
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < settings.runs:
        problem = f"it reports {shown(runs)} timed runs where {settings.runs} were asked"
    elif report.get("precision") != precision:
        problem = f"it reports precision {shown(report.get('precision'))} for a {precision} file"
    else:
        problem = _providers_problem(report.get("providers"), profile) or _histogram_problem(
            report.get("latency_histogram_ms"), runs
        )
    peak, imported = report.get("peak_rss_mib"), report.get("imported_rss_mib")
    numbers = isinstance(peak, int | float) and isinstance(imported, int | float)
    if problem is None and numbers and peak + 1 < imported:  # a peak is at least any size measured before it
        problem = f"its peak memory {peak} MiB is below the {imported} MiB it held before the session"
    if problem:
        raise TransportError(
            f"the device's bench report does not answer the bench that was asked: {problem}; check the "
            "device's Python and runtime, then bench again"
        )


def _providers_problem(providers: Any, profile: DeviceProfile) -> str | None:
    allowed = {*profile.providers, CPU_PROVIDER}  # onnxruntime always keeps the CPU provider as the fallback
    if (
        not isinstance(providers, list)
        or not providers
        or not all(isinstance(name, str) for name in providers)
    ):
        return f"its providers {shown(providers)} are not a list of names"
    unknown = [name for name in providers if name not in allowed]
    if unknown:
        return f"it ran on {safe_text(', '.join(unknown))}, which the profile does not list"
    return None


def _histogram_problem(histogram: Any, runs: int) -> str | None:
    if histogram is None:
        return None
    edges = histogram.get("edges") if isinstance(histogram, dict) else None
    counts = histogram.get("counts") if isinstance(histogram, dict) else None
    numbers = isinstance(edges, list) and all(
        isinstance(edge, int | float) and not isinstance(edge, bool) and 0 <= edge <= MAX_MS  # NaN fails too
        for edge in edges
    )
    whole = isinstance(counts, list) and all(
        isinstance(count, int) and not isinstance(count, bool) and count >= 0 for count in counts
    )
    if not (numbers and whole and len(edges) == len(counts) + 1 and sum(counts) == runs):
        return f"its latency histogram {shown(histogram)} is not one of its {runs} runs"
    if edges != sorted(edges):
        return "its latency histogram's edges are out of order"
    return None


def fallback_providers(measured: dict[str, Any]) -> list[str]:
    """Requested providers the device lacks: such a run must not calibrate the plan (it ran slower ones)."""
    return list(measured.get("providers_unavailable") or [])


def bench_model(
    profile: DeviceProfile | str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    *,
    trust_new_host: bool = False,
    bench: BenchSettings | None = None,
) -> dict[str, Any]:
    """Upload any ONNX file to the profile's device (verified) and return the runtime's bench report. The
    device's runtime is asked first (`info`) whether it runs the model's opset: a model it cannot run is
    refused before it is uploaded."""
    from edge_smsp.transport import open_transport

    profile = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    bench = bench or BenchSettings()
    path = Path(model_path)
    check_onnx_file(path)
    precision = model_precision(str(path))
    if bench.precision is not None and bench.precision != precision:  # said here, not of the device's copy
        raise ModelError(
            f"{path} is a {precision} model, not {bench.precision}: bench it with --precision {precision}, or "
            "without --precision"
        )
    opset = int(read_opsets(str(path))["opset"])
    digest = sha256_file(path)
    with open_transport(profile.connection, trust_new_host=trust_new_host) as transport:
        info = transport.run_runtime(
            ["info", "--runtime", bench.runtime], timeout=min(bench.timeout, INFO_TIMEOUT)
        )
        check_device_stack(info, profile, opset)
        remote = transport.upload(path, f"models/{digest[:16]}.onnx")
        start_seconds = transport.runtime_start_seconds
        timeout = bench.timeout_after(start_seconds, profile.providers)
        run_timeout = bench.run_timeout_after(start_seconds, profile.providers)
        report = transport.run_runtime(bench.runtime_args(remote, profile, run_timeout), timeout=timeout)
    if report.get("model_sha256") != digest:
        raise TransportError(f"the device benchmarked a different file than {path} (SHA-256 mismatch)")
    check_report_values(report)
    check_report_answers(report, bench, profile, precision)
    report["profile"] = profile.name
    report["remote_model_path"] = remote
    report["latency_percentile"] = profile.latency_percentile
    report["latency_target_ms"] = profile.latency_target_ms
    report["memory_budget_bytes"] = profile.memory_budget_bytes
    return report
