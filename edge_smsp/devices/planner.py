"""Cost model of a pruned backbone on a device and the choice of the pruning ratio.

Memory model: edge_smsp.devices.memory_model (the device's imported runtime, plus a line in the weights fitted to the
device's measurements, or the hint until it has any); `memory_model_for` fits it for one backbone here.

Latency model per (device, backbone, input size): latency = a + b * MACs, fitted by least squares to the
measured latencies of earlier device runs at the profile's percentile (two or more measurements at different
MACs), proportional scaling from a single measurement, else the profile's hint
(latency_overhead_ms + MACs / throughput_gmacs).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from edge_smsp.core.errors import PlanError, PruneError
from edge_smsp.core.ratio import canonical_ratio
from edge_smsp.devices.memory_model import (
    IMPORTED_RUNTIME_BYTES,
    MEMORY_MARGIN_FLOOR_BYTES,
    MIN_WEIGHT_COPIES,
    RUNTIME_OVERHEAD_BYTES,
    SESSION_OVERHEAD_BYTES,
    WEIGHT_COPIES,
    MemoryModel,
    RuntimeOverhead,
    fit_memory_model,
    hint_memory_model,
    predict_memory_bytes,
    record_reader,
    runtime_overhead,
)
from edge_smsp.devices.profiles import DeviceProfile, check_input_fits, format_bytes
from edge_smsp.models.cost import ModelCost, measure_cost

__all__ = [  # the memory model's names are the planner's too
    "IMPORTED_RUNTIME_BYTES",
    "MEMORY_MARGIN_FLOOR_BYTES",
    "MIN_WEIGHT_COPIES",
    "RUNTIME_OVERHEAD_BYTES",
    "SESSION_OVERHEAD_BYTES",
    "WEIGHT_COPIES",
    "Candidate",
    "LatencyModel",
    "Measurement",
    "MemoryModel",
    "Plan",
    "RuntimeOverhead",
    "as_measurement",
    "clear_cost_cache",
    "cost_at_ratio",
    "fit_latency_model",
    "fit_memory_model",
    "hint_memory_model",
    "latency_model_for",
    "measure_cost",
    "memory_model_for",
    "plan",
    "predict_latency_ms",
    "predict_memory_bytes",
    "run_macs",
    "runtime_overhead",
    "structure_hash",
]

DEFAULT_RATIOS: tuple[float, ...] = tuple(round(0.05 * step, 2) for step in range(19))  # 0.0 .. 0.9
SEARCHES = ("bisect", "grid")


@dataclass(frozen=True)
class Measurement:
    """A latency measured on the device for the backbone pruned at `ratio`, one timed run of a whole batch."""

    ratio: float
    latency_ms: Mapping[str, float]  # "p50" | "p90" | "p99" -> ms
    macs: int | None = None  # MACs of one timed run (per image x batch); None -> recomputed from the ratio


@dataclass(frozen=True)
class LatencyModel:
    """latency_ms = intercept_ms + ms_per_gmac * GMACs, at one percentile."""

    intercept_ms: float
    ms_per_gmac: float
    percentile: str
    source: str  # "fit" (least squares) | "scaled" (one measurement) | "hint" (profile throughput)
    n_measurements: int = 0

    def predict(self, macs: float) -> float:
        """Predicted latency in ms of one inference of `macs` multiply-accumulates."""
        return self.intercept_ms + self.ms_per_gmac * macs / 1e9


@dataclass(frozen=True)
class Candidate:
    """A ratio the planner tried and the numbers behind its verdict."""

    ratio: float
    params: int
    weight_bytes: int
    macs: int
    peak_activation_bytes: int
    memory_bytes: int
    predicted_latency_ms: float
    fits_memory: bool
    fits_latency: bool

    @property
    def fits(self) -> bool:
        return self.fits_memory and self.fits_latency


@dataclass(frozen=True)
class Plan:
    """The chosen pruning ratio for a device, and every candidate tried on the way."""

    profile: str
    backbone: str
    input_size: int
    batch_size: int
    ratio: float
    chosen: Candidate
    candidates: tuple[Candidate, ...]
    latency_model: LatencyModel
    memory_model: MemoryModel
    memory_budget_bytes: int
    latency_target_ms: float
    latency_percentile: str
    runtime_overhead_bytes: int
    search: str
    full_model: Candidate | None = field(default=None)

    @property
    def predicted_latency_ms(self) -> float:
        return self.chosen.predicted_latency_ms

    @property
    def memory_bytes(self) -> int:
        return self.chosen.memory_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (candidates in the order tried)."""
        payload = asdict(self)
        payload["predicted_latency_ms"] = self.predicted_latency_ms
        payload["memory_bytes"] = self.memory_bytes
        return payload


def structure_hash(model: nn.Module) -> str:
    """sha256 of a model's class and parameter/buffer names and shapes: equal for equal architectures."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return digest.hexdigest()


_cost_cache: dict[tuple[str, int, float, int], ModelCost] = {}
_cost_cache_lock = threading.Lock()


def cost_at_ratio(model: nn.Module, input_size: int, ratio: float, round_to: int = 8) -> ModelCost:
    """Cost of the backbone physically pruned at `ratio` with prune's `round_to` rounding; cached."""
    ratio = canonical_ratio(ratio, error=PlanError)
    key = (structure_hash(model), int(input_size), ratio, int(round_to))
    with _cost_cache_lock:
        cached = _cost_cache.get(key)
    if cached is not None:
        return cached
    if ratio == 0.0:
        cost = measure_cost(model, input_size, ratio)
    else:
        from edge_smsp.models.prune import prune

        try:
            # Unit counts per group depend on the ratio only, so the importance order does not change the cost.
            pruned, _ = prune(model, ratio=ratio, image_size=input_size, round_to=round_to, tie_break={})
        except PruneError as error:
            raise PlanError(f"cannot prune the backbone at ratio {ratio}: {error}") from None
        cost = measure_cost(pruned, input_size, ratio)
    with _cost_cache_lock:
        _cost_cache[key] = cost
    return cost


def clear_cost_cache() -> None:
    """Forget cached costs (e.g. after changing prune's rounding)."""
    with _cost_cache_lock:
        _cost_cache.clear()


def run_macs(macs: int, profile: DeviceProfile) -> int:
    """MACs of one timed run on the device: per image x the profile's batch size."""
    return int(macs) * profile.batch_size


def predict_latency_ms(latency_model: LatencyModel, macs: int, profile: DeviceProfile) -> float:
    """Predicted latency of one timed run of a model of `macs` MACs per image."""
    return float(latency_model.predict(run_macs(macs, profile)))


def as_measurement(record: Any) -> Measurement:
    """A Measurement from a Measurement, a mapping or an object with ratio, latency_ms and optional macs."""
    if isinstance(record, Measurement):
        return record
    get = record_reader(record)
    ratio, latency, macs = get("ratio"), get("latency_ms"), get("macs")
    if ratio is None or latency is None:
        raise PlanError(f"measurement {record!r}: needs ratio and latency_ms")
    if isinstance(latency, Mapping):
        latency_map = {str(key).removesuffix("_ms"): float(value) for key, value in latency.items()}
    elif isinstance(latency, int | float) and not isinstance(latency, bool):
        latency_map = {percentile: float(latency) for percentile in ("p50", "p90", "p99")}
    else:
        raise PlanError(f"measurement {record!r}: latency_ms must be a number or a percentile mapping")
    return Measurement(ratio=float(ratio), latency_ms=latency_map, macs=None if macs is None else int(macs))


def fit_latency_model(
    profile: DeviceProfile,
    measurements: Iterable[Any] = (),
    *,
    macs_at_ratio: Callable[[float], int] | None = None,
    percentile: str | None = None,
) -> LatencyModel:
    """Latency model from device measurements (least squares, or scaling one), else the profile's hint."""
    percentile = percentile or profile.latency_percentile
    points: list[tuple[float, float]] = []
    for record in measurements:
        measurement = as_measurement(record)
        latency = measurement.latency_ms.get(percentile)
        if latency is None or not latency > 0:
            continue
        macs = measurement.macs
        if macs is None:
            if macs_at_ratio is None:
                raise PlanError(
                    f"measurement at ratio {measurement.ratio}: macs missing and no backbone given"
                )
            macs = macs_at_ratio(measurement.ratio)
        points.append((float(macs), float(latency)))

    if not points:
        return LatencyModel(
            intercept_ms=profile.latency_overhead_ms,
            ms_per_gmac=1000.0 / profile.throughput_gmacs,
            percentile=percentile,
            source="hint",
        )
    gmacs = np.array([macs / 1e9 for macs, _ in points])
    latency = np.array([ms for _, ms in points])
    if len(points) >= 2 and np.ptp(gmacs) > 1e-3 * gmacs.max():
        slope, intercept = np.polyfit(gmacs, latency, 1)
        if intercept < 0 or slope <= 0:
            # Noise can tilt the line; fall back to a line through the origin (least squares).
            intercept, slope = 0.0, float(gmacs @ latency / (gmacs @ gmacs))
        return LatencyModel(float(intercept), float(slope), percentile, "fit", len(points))
    # One distinct operating point: latency proportional to MACs.
    slope = float(latency.mean() / max(gmacs.mean(), 1e-12))
    return LatencyModel(0.0, slope, percentile, "scaled", len(points))


def latency_model_for(
    profile: DeviceProfile,
    backbone_model: nn.Module,
    input_size: int,
    measurements: Iterable[Any] = (),
    round_to: int = 8,
) -> LatencyModel:
    """The device's latency model for this backbone: measurements without MACs are costed at their ratio."""
    return fit_latency_model(
        profile,
        measurements,
        macs_at_ratio=lambda ratio: run_macs(
            cost_at_ratio(backbone_model, input_size, ratio, round_to).macs, profile
        ),
    )


def memory_model_for(
    profile: DeviceProfile,
    backbone_model: nn.Module,
    input_size: int,
    measurements: Iterable[Any] = (),
    imported_rss_mib: float | None = None,
    round_to: int = 8,
    *,
    machine: str | None = None,
    precision: str = "fp32",
) -> MemoryModel:
    """The device's memory model for this backbone on top of the runtime `info` reports (imported_rss_mib):
    measurements without weight and activation bytes are costed at their ratio. machine and precision shape the
    hint (memory_model.hint_memory_model) until there are measurements."""
    return fit_memory_model(
        profile,
        measurements,
        imported_rss_mib,
        cost_at=lambda ratio: cost_at_ratio(backbone_model, input_size, ratio, round_to),
        machine=machine,
        precision=precision,
    )


def plan(
    profile: DeviceProfile,
    backbone_model: nn.Module,
    measurements: Iterable[Any] = (),
    ratios: Sequence[float] | None = None,
    *,
    input_size: int | None = None,
    search: str = "bisect",
    backbone_name: str | None = None,
    round_to: int = 8,
    memory_model: MemoryModel | None = None,
    latency_model: LatencyModel | None = None,
) -> Plan:
    """Smallest pruning ratio whose predicted memory and latency fit the profile; PlanError if none does.
    memory_model (latency_model) None: fitted to the measurements, else the hint."""
    if search not in SEARCHES:
        raise PlanError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    size = int(input_size or profile.input_size)
    check_input_fits(profile, size)  # before any forward pass at this size
    grid = sorted(
        {
            canonical_ratio(ratio, error=PlanError, what="ratios")
            for ratio in (DEFAULT_RATIOS if ratios is None else ratios)
        }
    )
    if not grid:
        raise PlanError("no candidate ratios given")
    name = backbone_name or _backbone_name(backbone_model)
    measurements = list(measurements)
    if latency_model is None:
        latency_model = latency_model_for(profile, backbone_model, size, measurements, round_to)
    if memory_model is None:
        memory_model = memory_model_for(profile, backbone_model, size, measurements, None, round_to)
    tried: dict[float, Candidate] = {}

    def evaluate(ratio: float) -> Candidate:
        if ratio not in tried:
            tried[ratio] = _candidate(
                cost_at_ratio(backbone_model, size, ratio, round_to), profile, latency_model, memory_model
            )
        return tried[ratio]

    chosen: Candidate | None = None
    if search == "grid":
        for ratio in grid:
            if evaluate(ratio).fits:
                chosen = tried[ratio]
                break
    elif evaluate(grid[-1]).fits:
        # Cost falls as the ratio grows, so the fitting ratios form a suffix of the grid: bisect its start.
        low, high = -1, len(grid) - 1  # grid[high] fits; grid[low] does not (or is before the grid)
        if evaluate(grid[0]).fits:
            high = 0
        else:
            low = 0
        while high - low > 1:
            middle = (low + high) // 2
            if evaluate(grid[middle]).fits:
                high = middle
            else:
                low = middle
        chosen = tried[grid[high]]

    candidates = tuple(tried.values())
    if chosen is None:
        raise PlanError(_nothing_fits_message(profile, name, size, grid, candidates))
    return Plan(
        profile=profile.name,
        backbone=name,
        input_size=size,
        batch_size=profile.batch_size,
        ratio=chosen.ratio,
        chosen=chosen,
        candidates=candidates,
        latency_model=latency_model,
        memory_model=memory_model,
        memory_budget_bytes=profile.memory_budget_bytes,
        latency_target_ms=profile.latency_target_ms,
        latency_percentile=profile.latency_percentile,
        runtime_overhead_bytes=memory_model.fixed_bytes,
        search=search,
        full_model=tried.get(0.0),
    )


def _candidate(
    cost: ModelCost, profile: DeviceProfile, latency_model: LatencyModel, memory_model: MemoryModel
) -> Candidate:
    memory = predict_memory_bytes(cost, profile, memory_model)
    latency = predict_latency_ms(latency_model, cost.macs, profile)
    return Candidate(
        ratio=cost.ratio,
        params=cost.params,
        weight_bytes=cost.weight_bytes,
        macs=cost.macs,
        peak_activation_bytes=cost.peak_activation_bytes,
        memory_bytes=memory,
        predicted_latency_ms=latency,
        fits_memory=memory <= profile.memory_budget_bytes,
        fits_latency=latency <= profile.latency_target_ms,
    )


def _nothing_fits_message(
    profile: DeviceProfile, name: str, size: int, grid: list[float], candidates: tuple[Candidate, ...]
) -> str:
    best = min(candidates, key=lambda candidate: (candidate.memory_bytes, candidate.predicted_latency_ms))
    fastest = min(candidates, key=lambda candidate: candidate.predicted_latency_ms)
    changes = []
    if not best.fits_memory:
        changes.append(f"raise memory_budget above {format_bytes(best.memory_bytes)}")
    if not fastest.fits_latency:
        changes.append(f"raise latency_target_ms above {fastest.predicted_latency_ms:.1f}")
    # The size comes from --image-size when given, else from the profile's input_size: name both.
    changes.append(f"use a smaller input (now {size} px: --image-size, or the profile's input_size)")
    changes.append("pick a smaller backbone")
    if grid[-1] < 0.9:
        changes.append(f"allow ratios above {grid[-1]:.2f}")
    return (
        f"no pruning ratio in {grid[0]:.2f}-{grid[-1]:.2f} fits {profile.name} with {name}: best achievable "
        f"(ratio {best.ratio:.2f}) is {format_bytes(best.memory_bytes)} "
        f"(budget {format_bytes(profile.memory_budget_bytes)}) and {fastest.predicted_latency_ms:.1f} ms "
        f"{profile.latency_percentile} (target {profile.latency_target_ms:g} ms); " + ", or ".join(changes)
    )


def _backbone_name(model: nn.Module) -> str:
    spec = getattr(model, "backbone_spec", None)
    if spec is not None and getattr(spec, "name", None):
        return str(spec.name)
    config = getattr(model, "pretrained_cfg", None) or {}
    return str(config.get("architecture") or type(model).__name__)
