"""Latency benchmark of one ONNX model (batch 1 by default), after onnxruntime_perf_test and MLPerf habits."""

from __future__ import annotations

import gc
import os
import platform
import time
from typing import Any

from . import __version__
from .device import current_rss_mib, device_facts, peak_rss_mib
from .errors import RuntimeToolError, one_line
from .model import (
    check_model_path,
    create_session,
    describe_io,
    file_sha256,
    import_numpy,
    import_onnxruntime,
    metadata_input_size,
    model_metadata,
    read_opsets,
    seeded_feeds,
)

MIN_WARMUP_RUNS = 10


def _ms(nanoseconds: float) -> float:
    return round(nanoseconds / 1e6, 4)


def latency_summary(latencies_ns: list[int]) -> dict[str, float]:
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


def run_bench(
    model_path: str,
    *,
    warmup: int = MIN_WARMUP_RUNS,
    runs: int = 100,
    min_seconds: float = 1.0,
    threads: int = 0,
    providers: list[str] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> dict[str, Any]:
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
    ort = import_onnxruntime()
    check_model_path(model_path)
    requested = list(providers or ["CPUExecutionProvider"])
    size_bytes = os.path.getsize(model_path)
    sha256 = file_sha256(model_path)
    opsets = read_opsets(model_path)
    baseline_rss = current_rss_mib()

    started = time.perf_counter_ns()
    session, skipped = create_session(model_path, requested, threads)
    session_creation_ns = time.perf_counter_ns() - started

    metadata = model_metadata(session)
    feeds = seeded_feeds(session, seed, metadata_input_size(metadata), batch_size)
    # The batch actually run: the first dimension of the first input (a fixed batch when none was asked for).
    shapes = [feed.shape for feed in feeds.values()]
    run_batch = int(shapes[0][0]) if shapes and len(shapes[0]) else 1
    run = session.run
    try:
        started = time.perf_counter_ns()
        run(None, feeds)
        first_inference_ns = time.perf_counter_ns() - started
        for _ in range(warmup):
            run(None, feeds)

        latencies: list[int] = []
        # Collections during the timed loop would show up as latency outliers that are not the model's.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            loop_started = time.perf_counter_ns()
            min_ns = int(min_seconds * 1e9)
            while len(latencies) < runs or time.perf_counter_ns() - loop_started < min_ns:
                started = time.perf_counter_ns()
                run(None, feeds)
                latencies.append(time.perf_counter_ns() - started)
            measured_ns = time.perf_counter_ns() - loop_started
        finally:
            if gc_was_enabled:
                gc.enable()
    except RuntimeToolError:
        raise
    except Exception as error:  # onnxruntime's own exception types
        raise RuntimeToolError(f"inference failed on {model_path}: {one_line(error)}") from None

    inputs = describe_io(session.get_inputs())
    return {
        "command": "bench",
        "runtime_version": __version__,
        "runtime_path": os.path.dirname(os.path.abspath(__file__)),
        "model_path": os.path.abspath(model_path),
        "model_size_bytes": size_bytes,
        "model_sha256": sha256,
        "opset": opsets["opset"],
        "opset_imports": opsets["opset_imports"],
        "ir_version": opsets["ir_version"],
        "inputs": inputs,
        "outputs": describe_io(session.get_outputs()),
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
        "providers": list(session.get_providers()),
        "session_creation_ms": _ms(session_creation_ns),
        "first_inference_ms": _ms(first_inference_ns),
        "latency_ms": latency_summary(latencies),
        "measured_seconds": round(measured_ns / 1e9, 6),
        # Images per second: each timed run classifies one batch.
        "throughput_ips": round(len(latencies) * run_batch / (measured_ns / 1e9), 3) if measured_ns else None,
        "baseline_rss_mib": baseline_rss,
        "peak_rss_mib": peak_rss_mib(),
        "onnxruntime_version": ort.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "device": device_facts(),
    }
