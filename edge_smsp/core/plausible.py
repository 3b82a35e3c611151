"""Whether a device's numbers could come from a real benchmark: a broken or altered device must not steer plans."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from edge_smsp.core.documents import shown

# What a real benchmark can report: milliseconds up to about 3 hours, memory up to 16 TiB, images per second up
# to a billion. A device that says otherwise is broken or altered, and its numbers would steer the planner.
MAX_MS = 1e7
MAX_MIB = 2.0**24
MAX_IPS = 1e9


def implausible_value(values: Mapping[str, Any]) -> str | None:
    """The first of a benchmark's numbers (named by key: *_ms, *_mib, *_ips) that no real benchmark gives, as
    'name value', or None; None values are absent ones."""
    for name, value in values.items():
        if value is None:
            continue
        high = MAX_MIB if name.endswith("_mib") else MAX_IPS if name.endswith("_ips") else MAX_MS
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        # JSON integers have no size limit: compared, never converted (math.isfinite(10**400) overflows).
        finite = number and (isinstance(value, int) or math.isfinite(value))
        if not finite or not 0 <= value <= high:
            return f"{name} {shown(value)} (a measurement lies from 0 to {high:g})"
        if name.startswith("latency_p") and value == 0:  # a timed run takes time: 0 ms is no measurement
            return f"{name} 0 (a timed run takes more than 0 ms)"
    percentiles = [values.get(name) for name in ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms")]
    if None not in percentiles and not percentiles[0] <= percentiles[1] <= percentiles[2]:
        return f"latency percentiles out of order (p50 {percentiles[0]}, p90 {percentiles[1]}, p99 {percentiles[2]})"
    return None


def reply_problem(command: str, report: Mapping[str, Any], runtime_version: str) -> str | None:
    """Why a JSON reply is not the answer of the uploaded runtime (version `runtime_version`) to `command`."""
    said = report.get("command")
    if said != command:
        return f"it answered {shown(said)} to '{command}'"
    version = report.get("runtime_version")
    if version is not None and version != runtime_version:
        return f"it says it is runtime {shown(version)}, but {runtime_version} was uploaded"
    return None
