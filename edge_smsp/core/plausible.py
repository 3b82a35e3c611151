"""Whether a device's numbers could come from a real benchmark: a broken or altered device must not steer plans."""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

from edge_smsp.core.documents import shown

# What a real benchmark can report: milliseconds up to about 3 hours, memory up to 16 TiB, images per second up
# to a billion. A device that says otherwise is broken or altered, and its numbers would steer the planner.
MAX_MS = 1e7
MAX_MIB = 2.0**24
MAX_IPS = 1e9


def implausible_value(values: Mapping[str, Any]) -> str | None:
    """The first of a device's numbers (named by key: *_ms, *_mib, *_ips, accuracies and agreements: fractions) that
    no real run gives, as 'name value', or None; None values are absent ones. Latencies must also be in order:
    min <= p50 <= p90 <= p99 <= max."""
    for name, value in values.items():
        if value is None:
            continue
        high = (
            MAX_MIB if name.endswith("_mib")
            else MAX_IPS if name.endswith("_ips")
            else 1.0 if _is_fraction(name)
            else MAX_MS
        )  # fmt: skip
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        # JSON integers have no size limit: compared, never converted (math.isfinite(10**400) overflows).
        finite = number and (isinstance(value, int) or math.isfinite(value))
        if not finite or not 0 <= value <= high:
            return f"{name} {shown(value)} (a measurement lies from 0 to {high:g})"
        if name.startswith("latency_p") and value == 0:  # a timed run takes time: 0 ms is no measurement
            return f"{name} 0 (a timed run takes more than 0 ms)"
    order = ("min", "p50", "p90", "p99", "max")
    given = [
        (name, values[f"latency_{name}_ms"]) for name in order if values.get(f"latency_{name}_ms") is not None
    ]
    if any(low[1] > high[1] for low, high in pairwise(given)):
        return (
            "latency statistics out of order (" + ", ".join(f"{name} {value}" for name, value in given) + ")"
        )
    return None


def _is_fraction(name: str) -> bool:
    """Accuracies and agreements: fractions of images, as the runtime reports them."""
    return "accuracy" in name or name.endswith("agreement")


def fraction_problem(report: Mapping[str, Any]) -> str | None:
    """The first accuracy or agreement of a device's reply (at its top level or in its `scores`) that is no
    fraction from 0 to 1, as 'name value', or None."""
    found = {name: value for name, value in report.items() if _is_fraction(name)}
    scores = report.get("scores")
    for index, score in enumerate(scores if isinstance(scores, list) else ()):
        if isinstance(score, Mapping):
            found.update(
                {f"scores[{index}].{name}": value for name, value in score.items() if _is_fraction(name)}
            )
    return implausible_value(found)


def reply_problem(command: str, report: Mapping[str, Any], runtime_version: str) -> str | None:
    """Why a JSON reply is not the answer of the uploaded runtime (version `runtime_version`) to `command`."""
    said = report.get("command")
    if said != command:
        return f"it answered {shown(said)} to '{command}'"
    version = report.get("runtime_version")
    if version is not None and version != runtime_version:
        return f"it says it is runtime {shown(version)}, but {runtime_version} was uploaded"
    return None
