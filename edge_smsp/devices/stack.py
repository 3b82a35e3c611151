"""A device's software stack: the ONNX opsets edge-smsp exports, and checks of a device's runtime `info` report
against its profile and the model meant for it.

Which opset an onnxruntime release runs is the device runtime's table (edge_smsp_runtime/opsets.py): the device
reports from it and the host reads the same copy, through the runtime that edge_smsp ships.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from edge_smsp.core.documents import shown
from edge_smsp.core.errors import DeviceStackError
from edge_smsp.core.paths import safe_text
from edge_smsp.core.plausible import implausible_value
from edge_smsp.device_runtime.opsets import NEWEST_KNOWN_OPSET, major_minor, onnxruntime_max_opset

__all__ = [
    "DEFAULT_OPSET",
    "NEWEST_KNOWN_OPSET",
    "OLDEST_EXPORT_OPSET",
    "OLDEST_PYTHON",
    "DeviceStack",
    "check_device_stack",
    "device_opset",
    "onnxruntime_max_opset",
    "opset_problem",
    "major_minor",
]

# The Jetson Nano's JetPack 4.6 (onnxruntime 1.10, Python 3.6): the oldest stack edge-smsp supports.
OLDEST_EXPORT_OPSET = 15
OLDEST_PYTHON = (3, 6)
DEFAULT_OPSET = 18  # the torch.onnx dynamo exporter's own opset


class StackPromise(Protocol):
    """What a device profile promises about its software (edge_smsp.devices.profiles.DeviceProfile)."""

    name: str
    python_version: str | None
    max_opset: int | None
    providers: tuple[str, ...]  # ONNX Runtime execution providers, in order of preference


def opset_problem(value: Any, newest: int = NEWEST_KNOWN_OPSET) -> str | None:
    """Why `value` is not an opset edge-smsp exports (OLDEST_EXPORT_OPSET..newest), or None when it is one."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer opset {OLDEST_EXPORT_OPSET}-{newest}, got {value!r}"
    if not OLDEST_EXPORT_OPSET <= value <= newest:
        return f"must be {OLDEST_EXPORT_OPSET}-{newest} (the ONNX opsets edge-smsp exports), got {value}"
    return None


def device_opset(requested: int | None, profile: StackPromise) -> int:
    """The opset to export for a device: the requested one, else DEFAULT_OPSET capped at the profile's max_opset."""
    limit = profile.max_opset
    if requested is None:
        return DEFAULT_OPSET if limit is None else min(DEFAULT_OPSET, limit)
    problem = opset_problem(requested)
    if problem:
        raise DeviceStackError(f"opset: {problem}")
    if limit is not None and requested > limit:
        raise DeviceStackError(
            f"opset {requested} is newer than {profile.name} runs (its profile's max_opset is {limit}): "
            f"ask for opset {limit} or lower"
        )
    return requested


@dataclass(frozen=True)
class DeviceStack:
    """What a device runs, read from its runtime's `info` report."""

    python_version: str
    runtime: str  # the runtime backend, e.g. "onnxruntime"
    engine_version: str
    max_opset: int | None  # None: the engine version is not in the table
    machine: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "python_version": self.python_version,
            "runtime": self.runtime,
            "engine_version": self.engine_version,
            "max_opset": self.max_opset,
            "machine": self.machine,
        }


MEMORY_FIELDS = ("baseline_rss_mib", "imported_rss_mib", "mem_available_mib")


def check_device_stack(info: Mapping[str, Any], profile: StackPromise, opset: int) -> DeviceStack:
    """The device's stack from its runtime `info` report, or DeviceStackError (one line) when the device cannot run
    a model exported at `opset`, or runs older software than its profile promises."""
    missing = [key for key in ("python_version", "runtime", "engine_version", "max_opset") if key not in info]
    if missing:
        raise DeviceStackError(
            f"the device runtime's info lacks {', '.join(missing)}: an older edge-smsp runtime answered; "
            "upload the current one"
        )
    device = info.get("device") if isinstance(info.get("device"), Mapping) else {}
    problem = implausible_value(
        {**{name: info.get(name) for name in MEMORY_FIELDS}, "total_ram_mib": device.get("total_ram_mib")}
    )
    if problem:  # these numbers size the memory plan
        raise DeviceStackError(
            f"the device runtime's info is not plausible: {problem}; check the device's Python and its packages"
        )
    problem = _info_problem(info, device)
    if problem:
        raise DeviceStackError(
            f"the device runtime's info is not plausible: {problem}; check the device's Python and its packages"
        )
    stack = DeviceStack(
        python_version=str(info["python_version"]),
        runtime=str(info["runtime"]),
        engine_version=str(info["engine_version"]),
        max_opset=info["max_opset"] if isinstance(info["max_opset"], int) else None,
        machine=str(device.get("machine") or "unknown"),
    )
    where = f"{profile.name} ({stack.machine})"
    python = major_minor(stack.python_version)
    if python is None or python < OLDEST_PYTHON:
        raise DeviceStackError(
            f"{where} runs Python {stack.python_version}; the device runtime needs Python "
            f"{'.'.join(map(str, OLDEST_PYTHON))} or newer"
        )
    promised = major_minor(profile.python_version) if profile.python_version else None
    if promised is not None and python < promised:
        raise DeviceStackError(
            f"{where} runs Python {stack.python_version}, older than its profile's python_version "
            f"{profile.python_version}: correct python_version in the profile"
        )
    available = info.get("available_providers")
    if (
        isinstance(available, list)
        and profile.providers
        and not set(profile.providers) & set(map(str, available))
    ):
        raise DeviceStackError(
            f"{where} has none of its profile's providers ({', '.join(profile.providers)}); it has "
            f"{', '.join(map(str, available)) or 'none'}: list one of those under providers in the profile"
        )
    if stack.max_opset is not None:
        if profile.max_opset is not None and stack.max_opset < profile.max_opset:
            raise DeviceStackError(
                f"{where} runs {stack.runtime} {stack.engine_version}, which runs ONNX opset {stack.max_opset} at "
                f"most, but its profile promises max_opset {profile.max_opset}: set max_opset: {stack.max_opset} "
                f"in the profile or upgrade {stack.runtime} on the device"
            )
        if opset > stack.max_opset:
            raise DeviceStackError(
                f"{where} runs {stack.runtime} {stack.engine_version}, which runs ONNX opset {stack.max_opset} at "
                f"most; the model would be opset {opset}: export at opset {stack.max_opset}"
            )
    return stack


def _info_problem(info: Mapping[str, Any], device: Mapping[str, Any]) -> str | None:
    """What in an `info` report no real runtime says: an engine version that is none, a max_opset its own engine
    version does not run (the device reads the same table as this host), no cores."""
    engine = info["engine_version"]
    if not isinstance(engine, str) or major_minor(engine) is None:
        return f"engine version {shown(engine)} is not a version"
    if info["runtime"] == "onnxruntime" and info["max_opset"] != onnxruntime_max_opset(engine):
        return (
            f"max_opset {shown(info['max_opset'])} is not the {onnxruntime_max_opset(engine)} that onnxruntime "
            f"{safe_text(engine)} runs"
        )
    for name in ("cores", "usable_cores"):
        cores = device.get(name)
        if cores is not None and (
            isinstance(cores, bool) or not isinstance(cores, int) or not 1 <= cores <= 2**20
        ):
            return f"{name} {shown(cores)} is not a number of CPU cores"
    return None
