"""The planner's memory model: peak resident memory of the device's inference process for a model.

    memory = runtime + session + weight copies x fp32 weight bytes + batch x peak activation bytes + margin

* runtime: Python + numpy + onnxruntime once imported, as the device's `info` measures it, because that varies
  by 15+ MiB with the same binaries (how many of the libraries' file pages are mapped: 50.6 MiB in an older
  virtual environment, 66.4 MiB in a freshly installed one, same wheels, same machine; 121 MiB on the emulated
  aarch64 device).
* The rest is what one model adds on top of the imported runtime. Until the device has been measured it is the
  *hint*: a session (thread pool, arenas: SESSION_OVERHEAD_BYTES) plus WEIGHT_COPIES x the weights (while ONNX
  Runtime creates a session it holds the file bytes, the parsed protobuf and its own optimised, pre-packed
  initializers at once) plus the activations: the largest sum of live tensors over one eager forward pass. Fitted
  on x86-64 with onnxruntime 1.32 over efficientnet_lite0 and resnet18 pruned at 0/0.3/0.6 at 64 and 224 px, it
  over-predicted all of them; a profile's own `runtime_overhead` (GPU stacks: CUDA/TensorRT contexts) replaces
  runtime + session, and without `info` the runtime is IMPORTED_RUNTIME_BYTES.
* Once the device has been measured, the model part is *fitted*, as latency is, to the comparable measurements:
  each bench reports its peak RSS and its own imported runtime, and the difference is a line in the weight bytes
  (least squares; activations count once). Where the device differs is in that line: on the emulated aarch64
  device (onnxruntime 1.32, 4 threads) a session costs ~50 MiB and each weight byte ~2.4, against ~15 MiB and
  ~3.3 on x86-64, so the hint under-predicted a Raspberry Pi 5 by 20 MiB. Outside the measured weight range the
  line is only extended with slopes that over-predict: the hint's WEIGHT_COPIES towards bigger models,
  MIN_WEIGHT_COPIES (the weights resident once) towards smaller ones. The margin is the larger of
  MEMORY_MARGIN_FLOOR_BYTES, the largest residual and twice their RMS, so every measured run lies at or under
  its prediction and the next run's jitter (imported runtime: up to 2.3 MiB between runs on the emulated device)
  fits too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edge_smsp.devices.profiles import MIB, DeviceProfile
from edge_smsp.models.cost import ModelCost

RUNTIME_OVERHEAD_BYTES = 72 * MIB  # the default runtime + session (no profile value, no device measurement)
# What the device runtime's `info` reported (numpy + onnxruntime imported) when the hint was fitted.
IMPORTED_RUNTIME_BYTES = 50 * MIB
SESSION_OVERHEAD_BYTES = RUNTIME_OVERHEAD_BYTES - IMPORTED_RUNTIME_BYTES
WEIGHT_COPIES = 3.4
MIN_WEIGHT_COPIES = 1.0
MEMORY_MARGIN_FLOOR_BYTES = 4 * MIB
# The first plan for a device that was never measured: the hint was fitted on x86-64 (HINT_MACHINES), where it
# over-predicts every model measured; on other machines it under-predicted (the emulated Raspberry Pi 5: 187.0 MiB
# predicted, 194.2 MiB measured, issue 22; 188.2 vs 208.3 before), so there a hint-only prediction adds the larger
# of HINT_MARGIN_FLOOR_BYTES and HINT_MARGIN_FRACTION of what the model adds above the imported runtime (25 % of
# the Pi's 66 MiB: 16.5 MiB, so 203.5 MiB predicted against 194.2 measured).
HINT_MACHINES = ("x86_64", "amd64", "AMD64")
HINT_MARGIN_FRACTION = 0.25
HINT_MARGIN_FLOOR_BYTES = 8 * MIB
# Weight bytes of a precision relative to fp32's, for the hint before that precision has been measured: INT8
# weights are 1 byte (per-channel scales are negligible), FP16 2; activations are counted as fp32 (QDQ models
# dequantize around float ops, and onnxruntime's CPU provider casts fp16 to fp32).
PRECISION_WEIGHT_FRACTION = {"fp32": 1.0, "int8": 0.25, "fp16": 0.5}


@dataclass(frozen=True)
class RuntimeOverhead:
    """The hint's model-independent part and where it came from."""

    bytes: int
    source: str  # "profile" | "device" (its imported runtime + a session) | "default"


@dataclass(frozen=True)
class MemoryPoint:
    """One measured run: what its model weighs and how far its peak RSS rose above the imported runtime."""

    weight_bytes: int
    activation_bytes: int  # peak activations x the run's batch
    above_runtime_bytes: float  # peak RSS - the imported runtime's RSS, one process
    runtime_bytes: float  # that process's imported runtime


@dataclass(frozen=True)
class MemoryModel:
    """memory = runtime + session + weight_copies x weights + activations + margin (bytes; see the module).

    weight_range: the weight bytes measured (None: the hint); outside it the line continues with the slopes that
    over-predict (WEIGHT_COPIES above, MIN_WEIGHT_COPIES below)."""

    runtime_bytes: int
    runtime_source: str  # "device" (info) | "measurements" (their mean) | "profile" | "default"
    session_bytes: float
    weight_copies: float
    margin_bytes: int
    source: str  # "fit" (a line) | "offset" (one weight size measured) | "hint"
    n_measurements: int = 0
    weight_range: tuple[int, int] | None = None
    margin_fraction: float = 0.0  # of the part above the runtime (a hint on a machine it was not fitted on)

    @property
    def fixed_bytes(self) -> int:
        """The part no model changes: runtime + session."""
        return int(self.runtime_bytes + self.session_bytes)

    def above_runtime(self, weight_bytes: float, activation_bytes: float) -> float:
        """What a model of these weights and activations adds to the imported runtime (no margin)."""
        line = self.weight_copies
        if self.weight_range is None:
            return self.session_bytes + line * weight_bytes + activation_bytes
        low, high = self.weight_range
        anchor = min(max(weight_bytes, low), high)
        beyond = weight_bytes - anchor
        slope = max(line, WEIGHT_COPIES) if beyond > 0 else min(line, MIN_WEIGHT_COPIES)
        return self.session_bytes + line * anchor + slope * beyond + activation_bytes

    def predict(self, weight_bytes: float, activation_bytes: float) -> int:
        """Predicted peak resident memory, bytes."""
        above = self.above_runtime(weight_bytes, activation_bytes)
        return int(self.runtime_bytes + above + max(self.margin_bytes, self.margin_fraction * above))


def runtime_overhead(profile: DeviceProfile, imported_rss_mib: float | None = None) -> RuntimeOverhead:
    """The profile's runtime overhead; else the device's imported runtime (as `info` reports it, MiB) plus a
    session; else RUNTIME_OVERHEAD_BYTES."""
    if profile.runtime_overhead_bytes is not None:
        return RuntimeOverhead(profile.runtime_overhead_bytes, "profile")
    imported = int(float(imported_rss_mib or 0) * MIB)
    if imported:
        return RuntimeOverhead(imported + SESSION_OVERHEAD_BYTES, "device")
    return RuntimeOverhead(RUNTIME_OVERHEAD_BYTES, "default")


def hint_memory_model(
    profile: DeviceProfile,
    imported_rss_mib: float | None = None,
    *,
    machine: str | None = None,
    precision: str = "fp32",
) -> MemoryModel:
    """The memory model of a device never measured: the runtime overhead, WEIGHT_COPIES x the precision's share
    of the weights (PRECISION_WEIGHT_FRACTION) and the activations; on a machine (`info`'s) other than the
    hint's own, a margin (HINT_MARGIN_FRACTION, at least HINT_MARGIN_FLOOR_BYTES). machine None: no margin."""
    overhead = runtime_overhead(profile, imported_rss_mib)
    session = 0 if overhead.source == "profile" else SESSION_OVERHEAD_BYTES
    foreign = machine is not None and machine not in HINT_MACHINES
    return MemoryModel(
        runtime_bytes=overhead.bytes - session,
        runtime_source=overhead.source,
        session_bytes=float(session),
        weight_copies=WEIGHT_COPIES * PRECISION_WEIGHT_FRACTION.get(precision, 1.0),
        margin_bytes=HINT_MARGIN_FLOOR_BYTES if foreign else 0,
        source="hint",
        margin_fraction=HINT_MARGIN_FRACTION if foreign else 0.0,
    )


def predict_memory_bytes(cost: ModelCost, profile: DeviceProfile, model: MemoryModel | None = None) -> int:
    """Peak resident memory of the inference process on the device (default: the profile's hint model)."""
    model = model or hint_memory_model(profile)
    return model.predict(cost.weight_bytes, profile.batch_size * cost.peak_activation_bytes)


def record_reader(record: Any) -> Callable[..., Any]:
    """get(name, default) over a mapping or an object's attributes."""
    if isinstance(record, Mapping):
        return record.get
    return lambda name, default=None: getattr(record, name, default)


def memory_point(record: Any, cost_at: Callable[[float], ModelCost] | None = None) -> MemoryPoint | None:
    """The memory facts of a stored measurement or a calibration row; None when it lacks them (runtimes older
    than the imported-runtime report). Weights and activations missing from it are costed at its ratio."""
    get = record_reader(record)
    report = get("report") or {}
    fact = report.get if report else get
    peak, imported = get("peak_rss_mib"), fact("imported_rss_mib")
    if peak is None or imported is None:
        return None
    weight_bytes, activation_bytes = fact("weight_bytes"), fact("peak_activation_bytes")
    if weight_bytes is None or activation_bytes is None:
        if cost_at is None:
            return None
        cost = cost_at(float(get("ratio")))
        weight_bytes, activation_bytes = cost.weight_bytes, cost.peak_activation_bytes
    batch = int(fact("batch_size") or 1)
    return MemoryPoint(
        weight_bytes=int(weight_bytes),
        activation_bytes=batch * int(activation_bytes),
        above_runtime_bytes=(float(peak) - float(imported)) * MIB,
        runtime_bytes=float(imported) * MIB,
    )


def fit_memory_model(
    profile: DeviceProfile,
    measurements: Iterable[Any] = (),
    imported_rss_mib: float | None = None,
    *,
    cost_at: Callable[[float], ModelCost] | None = None,
    machine: str | None = None,
    precision: str = "fp32",
) -> MemoryModel:
    """The memory model fitted to the device's measurements (see the module), on top of the imported runtime
    `info` reports now (else their mean); the hint when none carries memory facts."""
    points = [point for point in (memory_point(record, cost_at) for record in measurements) if point]
    if not points:
        return hint_memory_model(profile, imported_rss_mib, machine=machine, precision=precision)
    weights = np.array([point.weight_bytes for point in points], dtype=np.float64)
    above = np.array([point.above_runtime_bytes - point.activation_bytes for point in points])
    if np.ptp(weights) > 0.01 * weights.max():
        slope, intercept = np.polyfit(weights, above, 1)
        if slope < 0:  # noise across nearly equal models: no trend to follow
            slope, intercept = 0.0, float(above.mean())
        source = "fit"
    else:  # one weight size: the hint's copies through the measured level
        slope, intercept = WEIGHT_COPIES, float(np.mean(above - WEIGHT_COPIES * weights))
        source = "offset"
    if imported_rss_mib:
        runtime, runtime_source = int(float(imported_rss_mib) * MIB), "device"
    else:
        runtime, runtime_source = int(np.mean([point.runtime_bytes for point in points])), "measurements"
    model = MemoryModel(
        runtime_bytes=runtime,
        runtime_source=runtime_source,
        session_bytes=float(intercept),
        weight_copies=float(slope),
        margin_bytes=0,
        source=source,
        n_measurements=len(points),
        weight_range=(int(weights.min()), int(weights.max())),
    )
    residuals = np.array(
        [
            point.above_runtime_bytes - model.above_runtime(point.weight_bytes, point.activation_bytes)
            for point in points
        ]
    )
    rms = float(np.sqrt(np.mean(residuals**2)))
    margin = max(MEMORY_MARGIN_FLOOR_BYTES, float(residuals.max()), 2 * rms)
    return replace(model, margin_bytes=int(np.ceil(margin)))
