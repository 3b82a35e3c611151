"""The pruning ratio and the numeric precision chosen together (`precision: auto`).

Candidates are (ratio, precision) for the precisions the device runs natively. Each precision has its own latency
and memory models, fitted to its own measurements on the device (the pool keys them by precision); before a
precision has any, its models are *hints* derived from fp32's (said so in the plan):

* latency: fp32's model (fitted or the profile's hint) x LATENCY_FACTOR_HINTS[precision]. INT8's factor is
  1 / 1.05, the smallest INT8 speedup measured on this project's backbones (benchmarks/results/int8_choices.json:
  1.05x for EfficientNet-Lite0 at half width, 224 px; 2.0-3.3x for the unpruned resnet18, deit_small and Lite0):
  conservative on purpose. FP16 gets 1.0 (no gain assumed until measured).
* memory: the hint with the precision's share of the weight bytes (memory_model.PRECISION_WEIGHT_FRACTION: INT8
  1/4, FP16 1/2) and fp32 activations.

Among the candidates that meet latency and memory, the plan takes the one expected to be most accurate: the
lowest ratio, and at equal ratio fp32 > fp16 > int8 (ACCURACY_ORDER). INT8 is never a candidate at a ratio where
the device measured it slower than fp32; the accuracy gate (edge_smsp.export.precision) runs after adaptation,
and when INT8 fails it the deploy ships fp32 at the same ratio if that fits (`fallback_for`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from edge_smsp.core.errors import PlanError
from edge_smsp.core.precisions import FP16, FP32, INT8, PRECISIONS
from edge_smsp.devices.planner import (
    DEFAULT_RATIOS,
    Candidate,
    LatencyModel,
    MemoryModel,
    Plan,
    as_measurement,
    latency_model_for,
    memory_model_for,
    plan,
)
from edge_smsp.devices.profiles import DeviceProfile, format_bytes

INT8_SPEEDUP_FLOOR = 1.05  # the smallest INT8 speedup measured (see the module)
LATENCY_FACTOR_HINTS = {FP32: 1.0, INT8: round(1 / INT8_SPEEDUP_FLOOR, 4), FP16: 1.0}
ACCURACY_ORDER = (FP32, FP16, INT8)  # at equal ratio, the first is expected to be the most accurate


@dataclass(frozen=True)
class PrecisionModels:
    """One precision's latency and memory models, and whether they are its own fits or hints from fp32's."""

    precision: str
    latency_model: LatencyModel
    memory_model: MemoryModel
    measured: int  # this precision's own measurements
    hint: str | None  # how the hint was made; None when fitted to its own measurements


@dataclass(frozen=True)
class WeighedCandidate:
    """A (ratio, precision) the planner weighed, and why it was taken or not."""

    ratio: float
    precision: str
    predicted_latency_ms: float
    predicted_memory_bytes: int
    fits_latency: bool
    fits_memory: bool
    latency_hint: bool
    memory_hint: bool
    verdict: str  # "chosen" | "not chosen: ..." | "does not fit: ..." | "excluded: ..."


@dataclass(frozen=True)
class JointPlan:
    """The chosen (ratio, precision), the plan of each precision, every candidate weighed and the exclusions."""

    ratio: float
    precision: str
    plans: dict[str, Plan]  # precision -> its smallest fitting ratio's plan (precisions with none are absent)
    models: dict[str, PrecisionModels]
    candidates: tuple[WeighedCandidate, ...]
    excluded: dict[str, str]  # precision -> why it is no candidate at all
    int8_slower_ratios: tuple[float, ...]  # ratios where the device measured INT8 slower than fp32

    @property
    def chosen(self) -> Plan:
        return self.plans[self.precision]

    def fp32_fallback(self) -> Candidate | None:
        """fp32 at the chosen ratio, when it fits (what ships if INT8 fails its gate); None when it does not."""
        fp32 = self.plans.get(FP32)
        if fp32 is None:
            return None
        match = [c for c in fp32.candidates if c.ratio == self.ratio]
        return match[0] if match and match[0].fits else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "precision": self.precision,
            "candidates": [asdict(candidate) for candidate in self.candidates],
            "excluded": dict(self.excluded),
            "int8_slower_ratios": list(self.int8_slower_ratios),
            "models": {
                name: {
                    "latency_model": asdict(models.latency_model),
                    "memory_model": asdict(models.memory_model),
                    "measured": models.measured,
                    "hint": models.hint,
                }
                for name, models in self.models.items()
            },
        }


def precision_models(
    profile: DeviceProfile,
    backbone_model: nn.Module,
    input_size: int,
    measurements: Mapping[str, Sequence[Any]],
    *,
    imported_rss_mib: float | None = None,
    machine: str | None = None,
    round_to: int = 8,
    precisions: Iterable[str] = PRECISIONS,
) -> dict[str, PrecisionModels]:
    """Latency and memory models per precision: fitted to its own measurements, else hints from fp32's."""
    fp32_rows = list(measurements.get(FP32, ()))
    fp32_latency = latency_model_for(profile, backbone_model, input_size, fp32_rows, round_to)
    result = {}
    for precision in precisions:
        rows = list(measurements.get(precision, ()))
        latency = latency_model_for(profile, backbone_model, input_size, rows, round_to)
        memory = memory_model_for(
            profile,
            backbone_model,
            input_size,
            rows,
            imported_rss_mib,
            round_to,
            machine=machine,
            precision=precision,
        )
        hint = None
        if latency.source == "hint" and precision != FP32:
            factor = LATENCY_FACTOR_HINTS[precision]
            latency = replace(
                fp32_latency,
                intercept_ms=fp32_latency.intercept_ms * factor,
                ms_per_gmac=fp32_latency.ms_per_gmac * factor,
                source=f"hint: fp32 {fp32_latency.source} x {factor:g}",
            )
            hint = (
                f"{precision} not measured on this device: latency = fp32's {fp32_latency.source} x {factor:g}, "
                f"memory = the hint with {precision} weights"
            )
        elif latency.source == "hint":
            hint = "not measured on this device: the profile's throughput hint and the memory hint"
        result[precision] = PrecisionModels(precision, latency, memory, len(rows), hint)
    return result


def int8_slower_ratios(measurements: Mapping[str, Sequence[Any]], percentile: str) -> tuple[float, ...]:
    """Ratios where the device measured INT8 slower than fp32 (medians of each precision's runs there)."""

    def by_ratio(rows: Sequence[Any]) -> dict[float, list[float]]:
        found: dict[float, list[float]] = {}
        for row in rows:
            measurement = as_measurement(row)
            value = measurement.latency_ms.get(percentile)
            if value:
                found.setdefault(round(measurement.ratio, 4), []).append(float(value))
        return found

    fp32, int8 = by_ratio(measurements.get(FP32, ())), by_ratio(measurements.get(INT8, ()))
    return tuple(sorted(r for r in set(fp32) & set(int8) if _median(int8[r]) > _median(fp32[r])))


def plan_joint(
    profile: DeviceProfile,
    backbone_model: nn.Module,
    measurements: Mapping[str, Sequence[Any]],
    precisions: Sequence[str],
    *,
    input_size: int | None = None,
    backbone_name: str | None = None,
    round_to: int = 8,
    imported_rss_mib: float | None = None,
    machine: str | None = None,
    ratios: Sequence[float] | None = None,
) -> JointPlan:
    """The most accurate (ratio, precision) that fits the device (see the module); PlanError if none does.
    precisions: those the device runs natively (its `info`); measurements: the device's, per precision."""
    size = int(input_size or profile.input_size)
    known = [p for p in ACCURACY_ORDER if p in precisions]
    if not known:
        raise PlanError(f"the device runs none of {', '.join(PRECISIONS)} natively: cannot plan a precision")
    excluded = {p: "the device's providers do not run it natively" for p in PRECISIONS if p not in known}
    models = precision_models(
        profile,
        backbone_model,
        size,
        measurements,
        imported_rss_mib=imported_rss_mib,
        machine=machine,
        round_to=round_to,
        precisions=known,
    )
    grid = sorted(set(DEFAULT_RATIOS if ratios is None else ratios))
    slower = int8_slower_ratios(measurements, profile.latency_percentile)
    plans: dict[str, Plan] = {}
    failures: dict[str, str] = {}
    for precision in known:
        allowed = [r for r in grid if not (precision == INT8 and round(r, 4) in slower)]
        if not allowed:
            excluded[precision] = "measured slower than fp32 at every ratio"
            continue
        try:
            plans[precision] = plan(
                profile,
                backbone_model,
                (),
                allowed,
                input_size=size,
                backbone_name=backbone_name,
                round_to=round_to,
                memory_model=models[precision].memory_model,
                latency_model=models[precision].latency_model,
            )
        except PlanError as error:
            failures[precision] = str(error)
    if not plans:
        raise PlanError(
            "no (ratio, precision) fits: "
            + "; ".join(f"{p}: {failures.get(p) or excluded.get(p)}" for p in known)
        )
    best = min(plans, key=lambda p: (plans[p].ratio, ACCURACY_ORDER.index(p)))
    candidates = _weighed(plans, models, best, slower, profile)
    return JointPlan(plans[best].ratio, best, plans, models, candidates, excluded, slower)


def _weighed(
    plans: Mapping[str, Plan],
    models: Mapping[str, PrecisionModels],
    best: str,
    slower: Sequence[float],
    profile: DeviceProfile,
) -> tuple[WeighedCandidate, ...]:
    chosen_ratio = plans[best].ratio
    weighed = []
    for precision, one in plans.items():
        for candidate in sorted(one.candidates, key=lambda c: c.ratio):
            if precision == best and candidate.ratio == chosen_ratio:
                verdict = "chosen"
            elif not candidate.fits:
                why = []
                if not candidate.fits_latency:
                    why.append(
                        f"{candidate.predicted_latency_ms:.2f} ms > target {profile.latency_target_ms:g} ms"
                    )
                if not candidate.fits_memory:
                    why.append(
                        f"{format_bytes(candidate.memory_bytes)} > budget {format_bytes(profile.memory_budget_bytes)}"
                    )
                verdict = "does not fit: " + ", ".join(why)
            elif candidate.ratio > chosen_ratio:
                verdict = f"not chosen: fits, but {best} at the lower ratio {chosen_ratio:.2f} fits too"
            elif candidate.ratio == chosen_ratio:
                verdict = f"not chosen: {best} at the same ratio is expected to be more accurate"
            else:  # a lower fitting ratio than the chosen one cannot exist; kept for completeness
                verdict = "not chosen"
            weighed.append(
                WeighedCandidate(
                    ratio=candidate.ratio,
                    precision=precision,
                    predicted_latency_ms=round(candidate.predicted_latency_ms, 4),
                    predicted_memory_bytes=candidate.memory_bytes,
                    fits_latency=candidate.fits_latency,
                    fits_memory=candidate.fits_memory,
                    latency_hint=models[precision].latency_model.source.startswith("hint"),
                    memory_hint=models[precision].memory_model.source == "hint",
                    verdict=verdict,
                )
            )
    for ratio in slower:
        weighed.append(
            WeighedCandidate(ratio, INT8, float("nan"), 0, False, False, False, False,
                             "excluded: the device measured int8 slower than fp32 at this ratio")
        )  # fmt: skip
    return tuple(weighed)


def fallback_message(joint: JointPlan, gate_reason: str) -> str:
    """One line: INT8 failed its gate and fp32 at the same ratio does not fit the device."""
    fp32 = joint.plans.get(FP32)
    if fp32 is None:
        return f"int8 at ratio {joint.ratio:.2f} {gate_reason}, and fp32 fits at no ratio: raise the budgets"
    return (
        f"int8 at ratio {joint.ratio:.2f} {gate_reason}, and fp32 does not fit at that ratio (it needs "
        f"{fp32.ratio:.2f}): deploy again with --precision fp32, or raise --max-int8-drop"
    )


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
