"""Latency benchmark of one ONNX model (batch 1 by default), after onnxruntime_perf_test and MLPerf habits."""

import gc
import os
import platform
from typing import Any, Dict, List, Optional

from . import __version__
from .backends import get_backend
from .deadline import DEFAULT_RUN_TIMEOUT, RunDeadline
from .device import current_rss_mib, device_facts, now_ns, peak_rss_mib
from .errors import RuntimeToolError, engine_reason
from .model import (
    check_model_path,
    check_onnx_model,
    file_sha256,
    image_size,
    import_numpy,
    metadata_input_size,
    open_model,
    seeded_feeds,
)
from .precision import device_precisions, fallback

MIN_WARMUP_RUNS = 10


def _ms(nanoseconds: float) -> float:
    return round(nanoseconds / 1e6, 4)


def latency_summary(latencies_ns: List[int]) -> Dict[str, float]:
    """p50/p90/p99/mean/min/max/std of per-run latencies, in milliseconds."""
    np = import_numpy()
    values = np.asarray(latencies_ns, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50": _ms(p50),
        "p90": _ms(p90),
        "p99": _ms(p99),
        "mean": _ms(values.mean()),
        "min": _ms(values.min()),
        "max": _ms(values.max()),
        "std": _ms(values.std()),
    }


def latency_histogram(latencies_ns: List[int], bins: int = 24) -> Dict[str, List[float]]:
    """Run counts in equal-width latency bins from the fastest to the 99th percentile (slower runs fall in the
    last bin), in milliseconds: the distribution the report plots, in a few hundred bytes."""
    np = import_numpy()
    values = np.asarray(latencies_ns, dtype=np.float64) / 1e6
    if values.size == 0:
        return {"edges": [], "counts": []}
    low, high = float(values.min()), float(np.percentile(values, 99))
    if not high > low:
        high = low + 1e-3
    counts, edges = np.histogram(np.clip(values, low, high), bins=bins, range=(low, high))
    return {"edges": [round(float(edge), 4) for edge in edges], "counts": [int(count) for count in counts]}


def run_bench(
    model_path: str,
    *,
    warmup: int = MIN_WARMUP_RUNS,
    runs: int = 100,
    min_seconds: float = 1.0,
    threads: int = 0,
    providers: Optional[List[str]] = None,
    seed: int = 0,
    batch_size: Optional[int] = None,
    runtime: Optional[str] = None,
    precision: Optional[str] = None,
    run_timeout: float = DEFAULT_RUN_TIMEOUT,
) -> Dict[str, Any]:
    """Create a session, run warm-ups, then time runs until both `runs` and `min_seconds` are reached."""
    if warmup < MIN_WARMUP_RUNS:
        raise RuntimeToolError(f"--warmup must be at least {MIN_WARMUP_RUNS} (MLPerf and perf_test habit)")
    if runs < 1:
        raise RuntimeToolError("--runs must be at least 1")
    if min_seconds < 0:
        raise RuntimeToolError("--min-seconds must be >= 0")
    if batch_size is not None and batch_size < 1:
        raise RuntimeToolError("--batch-size must be at least 1")
    np = import_numpy()
    check_model_path(model_path)
    opsets = check_onnx_model(model_path)  # garbage is refused before the file is hashed
    requested = list(providers or ["CPUExecutionProvider"])
    size_bytes = os.path.getsize(model_path)
    sha256 = file_sha256(model_path)
    baseline_rss = current_rss_mib()
    # The engine imported, no session yet: the device's runtime footprint, as `info` reports it; the host's
    # memory model is fitted to what a model adds on top of it.
    get_backend(runtime)
    imported_rss = current_rss_mib()

    started = now_ns()
    backend, session, skipped = open_model(model_path, runtime, requested, threads, precision)
    session_creation_ns = now_ns() - started

    metadata = session.metadata()
    if not session.inputs():
        raise RuntimeToolError(
            f"{model_path} has no inputs: there is nothing to feed it; bench a model that takes one"
        )
    shape = session.inputs()[0]["shape"]
    if metadata_input_size(metadata) is not None and len(shape) == 4:
        image_size(
            metadata, shape
        )  # metadata that contradicts the graph is named, not run into an engine error
    feeds = seeded_feeds(session, seed, metadata_input_size(metadata), batch_size)
    # The batch actually run: the first dimension of the first input (a fixed batch when none was asked for).
    shapes = [feed.shape for feed in feeds.values()]
    run_batch = int(shapes[0][0]) if shapes and len(shapes[0]) else 1
    deadline = RunDeadline(session, run_timeout, "bench", model_path)
    run = deadline.run
    try:
        started = now_ns()
        run(feeds, first=True)
        first_inference_ns = now_ns() - started
        for _ in range(warmup):
            run(feeds)

        latencies = []  # type: List[int]
        # Collections during the timed loop would show up as latency outliers that are not the model's.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            loop_started = now_ns()
            min_ns = int(min_seconds * 1e9)
            while len(latencies) < runs or now_ns() - loop_started < min_ns:
                started = now_ns()
                run(feeds)
                latencies.append(now_ns() - started)
            measured_ns = now_ns() - loop_started
        finally:
            if gc_was_enabled:
                gc.enable()
    except RuntimeToolError:
        raise
    except Exception as error:  # the engine's own exception types
        raise RuntimeToolError(
            f"inference failed on {model_path}: {engine_reason(error)}; the model does not run on its own inputs"
        ) from None
    finally:
        deadline.close()

    report = {
        "command": "bench",
        "runtime_version": __version__,
        "runtime_path": os.path.dirname(os.path.abspath(__file__)),
        "runtime": backend.name,
        "precision": session.precision,
        "model_path": os.path.abspath(model_path),
        "model_size_bytes": size_bytes,
        "model_sha256": sha256,
        "opset": opsets["opset"],
        "opset_imports": opsets["opset_imports"],
        "ir_version": opsets["ir_version"],
        "inputs": session.inputs(),
        "outputs": session.outputs(),
        "input_shape": list(next(iter(feeds.values())).shape) if feeds else [],
        "metadata": metadata,
        "batch_size": run_batch,
        "warmup_runs": warmup,
        "min_runs": runs,
        "min_seconds": min_seconds,
        "runs": len(latencies),
        "seed": seed,
        "threads": threads,
        "providers_requested": requested,
        "providers_unavailable": skipped,
        "providers": session.providers(),
        # Requested accelerators the session does not run on (missing from this build, or refused by the engine).
        "fallback": fallback(requested, session.providers()),
        # Whether the provider it runs on has kernels for the model's precision (fp16 on a CPU is cast to fp32).
        "precision_native": session.precision in device_precisions(session.providers()[:1]),
        "session_creation_ms": _ms(session_creation_ns),
        "first_inference_ms": _ms(first_inference_ns),
        "latency_ms": latency_summary(latencies),
        "latency_histogram_ms": latency_histogram(latencies),
        "measured_seconds": round(measured_ns / 1e9, 6),
        # Images per second: each timed run classifies one batch.
        "throughput_ips": round(len(latencies) * run_batch / (measured_ns / 1e9), 3) if measured_ns else None,
        "baseline_rss_mib": baseline_rss,
        "imported_rss_mib": imported_rss,
        "peak_rss_mib": peak_rss_mib(),
        "engine_version": backend.version(),
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "device": device_facts(),
    }
    report.update(backend.version_keys())
    return report
