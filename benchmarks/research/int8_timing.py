"""Timing and profiling of ONNX models for the INT8 study (benchmarks/research/int8_choices.py): p50 latency at
one thread, fp32 and INT8 alternated, and onnxruntime's profiler per op type and per kind of convolution."""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

SCRATCH = Path(tempfile.mkdtemp(prefix="int8-choices-"))


# Model path -> onnxruntime optimizers its sessions run without (see stage_float_depthwise).
DISABLED_OPTIMIZERS: dict[str, list[str]] = {}


def session_for(path: Path, profile: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(
        str(path),
        sess_options=options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=DISABLED_OPTIMIZERS.get(str(path), []),
    )


def p50_ms(path: Path, image: np.ndarray, seconds: float = 1.5, min_runs: int = 30) -> float:
    """Median batch-1 latency at one thread after 10 warm-ups, timed for `seconds` and `min_runs` at least."""
    session = session_for(path)
    name = session.get_inputs()[0].name
    feed = {name: image[None].astype(np.float32)}
    for _ in range(10):
        session.run(None, feed)
    times, started = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < seconds:
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    return round(float(np.median(times)) * 1e3, 3)


def paired_p50(paths: dict[str, Path], image: np.ndarray, rounds: int = 4) -> dict[str, float]:
    """p50 of each model, measured in alternation over `rounds` (the median of rounds): shared cores drift."""
    runs = defaultdict(list)
    for _ in range(rounds):
        for key, path in paths.items():
            runs[key].append(p50_ms(path, image))
    return {key: float(np.median(values)) for key, values in runs.items()}


def profile_by_op(path: Path, image: np.ndarray, runs: int = 30) -> dict[str, float]:
    """Milliseconds per run spent in each node type (onnxruntime's profiler, after the graph's fusions)."""
    session = session_for(path, profile=str(SCRATCH / path.stem))
    feed = {session.get_inputs()[0].name: image[None].astype(np.float32)}
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"] / 1e3
    return {op: round(ms / runs, 3) for op, ms in sorted(totals.items(), key=lambda item: -item[1])}


def conv_kinds(fp32: Path) -> dict[str, str]:
    """Conv node name -> 'depthwise', 'pointwise' (1x1) or 'full' (the stem), from the fp32 graph."""

    graph = onnx.load(str(fp32)).graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    kinds = {}
    for node in graph.node:
        if node.op_type == "Conv":
            weight = shapes.get(node.input[1], [0, 0, 0, 0])
            kind = "depthwise" if weight[1] == 1 else "pointwise" if weight[2:] == [1, 1] else "full"
            kinds[node.name] = kinds[node.output[0]] = kind
    # onnxruntime names fused fp32 nodes after their output: a conv's activation (Clip, Relu) output included.
    for node in graph.node:
        if node.op_type in ("Clip", "Relu") and node.input[0] in kinds:
            kinds[node.output[0]] = kinds[node.input[0]]
    return kinds


def profile_by_kind(fp32: Path, path: Path, image: np.ndarray, runs: int = 30) -> dict[str, float]:
    """Milliseconds per run in depthwise, pointwise and full convs and in everything else, per node of `path`."""
    kinds = conv_kinds(fp32)
    session = session_for(path, profile=str(SCRATCH / (path.stem + "_kinds")))
    feed = {session.get_inputs()[0].name: image[None].astype(np.float32)}
    for _ in range(runs):
        session.run(None, feed)
    totals: dict[str, float] = defaultdict(float)
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"][: -len("_kernel_time")]
            bare = node[: -len("_nchwc")] if node.endswith("_nchwc") else node
            kind = kinds.get(node) or kinds.get(bare)
            if (
                kind is None
            ):  # fused int8 nodes add suffixes to the conv's name: the longest name it starts with
                prefixes = [name for name in kinds if node.startswith(name + "_")]
                kind = kinds[max(prefixes, key=len)] if prefixes else None
            key = f"{kind} conv" if kind else event["args"]["op_name"]
            totals[key] += event["dur"] / 1e3
    return {key: round(ms / runs, 3) for key, ms in sorted(totals.items(), key=lambda item: -item[1])}
