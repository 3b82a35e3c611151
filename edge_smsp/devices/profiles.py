"""Device profiles: schema, loading and validation."""

from __future__ import annotations

import ipaddress
import posixpath
import re
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_smsp.core.documents import DocumentError, load_yaml, shown
from edge_smsp.core.errors import EdgeSmspError, PathError, PlanError, ProfileError
from edge_smsp.core.paths import expand_user, kind, short, status
from edge_smsp.core.precisions import AUTO, DEFAULT_PRECISION, PRECISIONS
from edge_smsp.data.catalog import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from edge_smsp.device_runtime.backends import DEFAULT_BACKEND, backend_names
from edge_smsp.devices.profile_fields import (
    MAX_MEMORY,
    MIB,
    _choice,
    _host_path,
    _integer,
    _kind,
    _max_opset,
    _name,
    _non_negative_number,
    _optional_string,
    _port,
    _positive_number,
    _providers,
    _python_version,
    _read_text,
    _reason,
    _reject_passwords,
    _reject_unknown,
    _require,
    _string,
)


@dataclass(frozen=True)
class ConnectionSpec:
    """How to reach a device: `local` runs on this machine, `ssh` through paramiko."""

    transport: str  # "ssh" | "local"
    host: str = "127.0.0.1"
    port: int = 22
    user: str | None = None
    key_file: Path | None = None
    known_hosts: Path | None = None
    python: str | None = None  # None: the transport's default (local: this interpreter; ssh: python3)
    workdir: str = "~/.cache/edge-smsp-runtime"


PERCENTILES = ("p50", "p90", "p99")
TRANSPORTS = ("ssh", "local")
BUNDLED_PROFILES_DIR = Path(__file__).resolve().parents[1] / "device_profiles"  # a link to ../device_profiles
MEMORY_HINT = "use 512MiB, 2GiB or a MiB integer"
CONNECTION_KEYS = ("transport", "host", "port", "user", "key_file", "known_hosts", "python", "workdir")


@dataclass(frozen=True)
class DeviceProfile:
    """A device: what the model may use there (memory, latency) and how to reach it."""

    name: str
    memory_budget_bytes: int  # peak resident memory of the inference process on the device
    latency_target_ms: float
    latency_percentile: str  # "p50" | "p90" | "p99"
    input_size: int
    threads: int
    providers: tuple[str, ...]  # ONNX Runtime execution providers, in order of preference
    throughput_gmacs: float  # effective GMAC/s at batch 1: latency hint until the device is measured
    connection: ConnectionSpec
    batch_size: int = 1
    latency_overhead_ms: float = 0.0  # fixed cost per inference (session.run, kernel launches)
    runtime_overhead_bytes: int | None = (
        None  # interpreter + runtime libraries; None -> the planner's default
    )
    description: str = ""
    # The device's software contract: its Python ("3.6") and the newest ONNX opset its runtime runs.
    python_version: str | None = None
    max_opset: int | None = None
    runtime: str = DEFAULT_BACKEND  # the device runtime's inference engine (edge_smsp_runtime.backends)
    precision: str = DEFAULT_PRECISION  # fp32 | int8 | fp16, or auto: the planner chooses with the ratio
    # Peak resident memory of an on-device adaptation (deploy --device-data), a one-off run while the app is not
    # running; None: the inference budget.
    adapt_memory_budget_bytes: int | None = None
    source: Path | None = field(default=None, compare=False)

    @property
    def memory_budget_mib(self) -> float:
        return self.memory_budget_bytes / MIB

    @property
    def adaptation_budget_bytes(self) -> int:
        """What an on-device adaptation may use: adapt_memory_budget, or the inference budget without one."""
        return self.adapt_memory_budget_bytes or self.memory_budget_bytes

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able view (paths as strings, memory in bytes)."""
        connection = {key: getattr(self.connection, key) for key in CONNECTION_KEYS}
        for key in ("key_file", "known_hosts"):
            connection[key] = None if connection[key] is None else str(connection[key])
        return {
            "name": self.name,
            "description": self.description,
            "memory_budget_bytes": self.memory_budget_bytes,
            "latency_target_ms": self.latency_target_ms,
            "latency_percentile": self.latency_percentile,
            "batch_size": self.batch_size,
            "input_size": self.input_size,
            "threads": self.threads,
            "providers": list(self.providers),
            "throughput_gmacs": self.throughput_gmacs,
            "latency_overhead_ms": self.latency_overhead_ms,
            "runtime_overhead_bytes": self.runtime_overhead_bytes,
            "python_version": self.python_version,
            "max_opset": self.max_opset,
            "runtime": self.runtime,
            "precision": self.precision,
            "adapt_memory_budget_bytes": self.adapt_memory_budget_bytes,
            "connection": connection,
            "source": None if self.source is None else str(self.source),
        }


_MEMORY_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(KiB|MiB|GiB|TiB)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {"kib": 1024, "mib": MIB, "gib": 1024**3, "tib": 1024**4}


def parse_memory(value: Any, field_path: str = "memory") -> int:
    """Bytes from `512MiB`, `2GiB`, `1.5GiB` or a plain MiB integer (int or digit string)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ProfileError(f"{field_path}: cannot parse {shown(value)} ({MEMORY_HINT})")
    if isinstance(value, int | float):
        size = float(value) * MIB
    else:
        match = _MEMORY_PATTERN.match(value)
        if match is None:
            raise ProfileError(f"{field_path}: cannot parse {shown(value)} ({MEMORY_HINT})")
        number, unit = match.groups()
        size = float(number) * _UNIT_BYTES[(unit or "MiB").lower()]
    if not size <= MAX_MEMORY:  # also NaN and inf
        raise ProfileError(f"{field_path}: must be at most 1 PiB, got {shown(value)}")
    size = int(size)
    if size <= 0:
        raise ProfileError(f"{field_path}: must be positive, got {shown(value)}")
    return size


def format_bytes(size: float) -> str:
    """Human form used in messages: MiB below 1 GiB, else GiB."""
    if size >= 1024**3:
        return f"{size / 1024**3:.2f} GiB"
    return f"{size / MIB:.1f} MiB"


def bundled_profiles() -> dict[str, Path]:
    """Profiles shipped with edge-smsp: name -> YAML path."""
    if not BUNDLED_PROFILES_DIR.is_dir():
        return {}
    return {path.stem: path for path in sorted(BUNDLED_PROFILES_DIR.glob("*.yaml"))}


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or a bare bundled name such as `jetson_nano` -> its bundled YAML."""
    path = _user_path(name_or_path, "profile")
    if path.is_file():
        return path
    text = str(name_or_path)
    if "/" not in text and "\\" not in text:
        bundled = bundled_profiles()
        stem = text[: -len(".yaml")] if text.endswith(".yaml") else text
        if stem in bundled:
            return bundled[stem]
        _refuse_directory(path, text)
        names = ", ".join(bundled) or "none found"
        raise ProfileError(f"profile {text!r}: no such file and not a bundled profile (bundled: {names})")
    _refuse_directory(path, text)
    raise ProfileError(f"profile {short(text)}: no such file")


def _refuse_directory(path: Path, text: str, what: str = "profile") -> None:
    """A directory, a symlink loop or a special file (a FIFO, /dev/null: never opened) in one line."""
    try:
        found = status(path)
    except PathError as error:
        if "symlink loop" not in str(error):
            return  # too long a name, say: the caller's own "no such file" (or an inline mapping) follows
        raise ProfileError(f"{what} {short(text)} is a symlink loop: name the YAML file itself") from None
    if found is None or stat.S_ISREG(found.st_mode):
        return
    if stat.S_ISDIR(found.st_mode):
        raise ProfileError(f"{what} {short(text)} is a directory: name the {what}'s YAML file in it")
    raise ProfileError(f"{what} {short(text)} is {kind(found.st_mode)}, not a regular file: name a YAML file")


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """Read and validate a device profile YAML (a path or a bundled name); errors name the field path."""
    path = resolve_profile_path(name_or_path)
    try:
        document = load_yaml(_read_text(path))
    except (OSError, UnicodeDecodeError) as error:
        raise ProfileError(f"profile {short(str(path))}: cannot read ({_reason(error)})") from None
    except DocumentError as error:
        raise ProfileError(f"profile {short(str(path))}: {error}") from None
    try:
        return profile_from_dict(document, base_dir=path.parent, source=path)
    except ProfileError as error:
        raise ProfileError(f"profile {path}: {error}") from None


def profile_from_dict(
    document: Any, *, base_dir: Path | None = None, source: Path | None = None
) -> DeviceProfile:
    """Validate a parsed profile mapping; relative key files resolve against base_dir."""
    if not isinstance(document, dict):
        raise ProfileError(f"top level: must be a mapping of fields, got {_kind(document)}")
    _reject_passwords(document, "")
    _reject_unknown(document, _TOP_LEVEL_KEYS, "")
    _require(document, _REQUIRED_KEYS, "")
    overhead = document.get("runtime_overhead")
    adapt_budget = document.get("adapt_memory_budget")
    return DeviceProfile(
        name=_name(document["name"], "name"),
        description=_string(document.get("description", ""), "description", allow_empty=True),
        memory_budget_bytes=parse_memory(document["memory_budget"], "memory_budget"),
        latency_target_ms=_positive_number(document["latency_target_ms"], "latency_target_ms"),
        latency_percentile=_choice(document["latency_percentile"], PERCENTILES, "latency_percentile"),
        batch_size=_integer(document.get("batch_size", 1), "batch_size", 1, 1024),
        input_size=_integer(document["input_size"], "input_size", MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
        threads=_integer(document["threads"], "threads", 1, 256),
        providers=_providers(document["providers"], "providers"),
        throughput_gmacs=_positive_number(document["throughput_gmacs"], "throughput_gmacs"),
        latency_overhead_ms=_non_negative_number(
            document.get("latency_overhead_ms", 0.0), "latency_overhead_ms"
        ),
        runtime_overhead_bytes=None if overhead is None else parse_memory(overhead, "runtime_overhead"),
        python_version=_python_version(document.get("python_version")),
        max_opset=_max_opset(document.get("max_opset")),
        runtime=_choice(document.get("runtime", DEFAULT_BACKEND), tuple(backend_names()), "runtime"),
        precision=_choice(document.get("precision", DEFAULT_PRECISION), (*PRECISIONS, AUTO), "precision"),
        adapt_memory_budget_bytes=None
        if adapt_budget is None
        else parse_memory(adapt_budget, "adapt_memory_budget"),
        connection=_connection(document["connection"], base_dir),
        source=source,
    )


def _user_path(text: str | Path, what: str) -> Path:
    try:
        return expand_user(text)
    except EdgeSmspError as error:
        raise ProfileError(f"{what} {error}") from None


def with_connection(
    profile: DeviceProfile, overrides: dict[str, Any], base_dir: Path | None = None
) -> DeviceProfile:
    """The profile reached another way: `overrides` replace connection keys, validated like a profile's own
    connection (relative key files resolve against base_dir). Host keys are verified as before."""
    if not isinstance(overrides, dict):
        raise ProfileError(
            f"connection override: must be a mapping of connection keys, got {_kind(overrides)}"
        )
    current = {key: getattr(profile.connection, key) for key in CONNECTION_KEYS}
    current.update({key: str(value) for key in ("key_file", "known_hosts") if (value := current[key])})
    merged = {**current, **overrides}
    try:
        _reject_passwords(overrides, "connection.")
        _reject_unknown(overrides, CONNECTION_KEYS, "connection.")
        connection = _connection(merged, base_dir)
    except ProfileError as error:
        raise ProfileError(f"connection override: {error}") from None
    return replace(profile, connection=connection)


def load_connection_override(text: str) -> tuple[dict[str, Any], Path]:
    """A connection override: a YAML file of connection keys, or such a mapping inline ('{port: 2222}'); with
    the directory its relative paths resolve against (the file's, else the working directory)."""
    if not text.strip():
        raise ProfileError("connection override is empty: name a YAML file or give an inline mapping")
    try:
        path: Path | None = expand_user(text)
    except EdgeSmspError:  # not a path (an inline mapping is longer than a file name may be)
        path = None
    if path is not None:
        _refuse_directory(path, str(path), "connection override")
    if path is not None and path.is_file():
        try:
            document = load_yaml(_read_text(path))
        except (OSError, UnicodeDecodeError) as error:
            raise ProfileError(
                f"connection override {short(str(path))}: cannot read ({_reason(error)})"
            ) from None
        except DocumentError as error:
            raise ProfileError(f"connection override {short(str(path))}: {error}") from None
        where, base_dir = str(path), path.parent
    else:
        try:
            document = load_yaml(text)
        except DocumentError as error:
            if text.lstrip().startswith("{"):  # meant as a mapping: say what is wrong with it
                raise ProfileError(f"connection override {shown(text)}: {error}") from None
            document = None
        where, base_dir = shown(text), Path.cwd()
        if not isinstance(document, dict):
            raise ProfileError(
                f"connection override {where}: no such file, and not an inline YAML mapping such as "
                "'{host: 192.168.1.20, user: pi}'"
            )
    if not isinstance(document, dict):
        raise ProfileError(f"connection override {where}: must be a mapping of connection keys")
    return document, base_dir


_REQUIRED_KEYS = (
    "name",
    "memory_budget",
    "latency_target_ms",
    "latency_percentile",
    "input_size",
    "threads",
    "providers",
    "throughput_gmacs",
    "connection",
)
_TOP_LEVEL_KEYS = (
    *_REQUIRED_KEYS,
    "description",
    "batch_size",
    "latency_overhead_ms",
    "runtime_overhead",
    "python_version",
    "max_opset",
    "runtime",
    "precision",
    "adapt_memory_budget",
)


def _connection(value: Any, base_dir: Path | None) -> ConnectionSpec:
    if not isinstance(value, dict):
        raise ProfileError(f"connection: must be a mapping with keys {', '.join(CONNECTION_KEYS)}")
    _reject_passwords(value, "connection.")
    _reject_unknown(value, CONNECTION_KEYS, "connection.")
    _require(value, ("transport",), "connection.")
    transport = _choice(value["transport"], TRANSPORTS, "connection.transport")
    defaults = ConnectionSpec(transport=transport)
    host = _host_name(_optional_string(value.get("host"), "connection.host") or defaults.host)
    user = _optional_string(value.get("user"), "connection.user")
    port = value.get("port")
    port = defaults.port if port is None else _port(port)
    if transport == "ssh":
        if "host" not in value or value.get("host") is None:
            raise ProfileError("connection.host: required when transport is ssh")
        if user is None:
            raise ProfileError("connection.user: required when transport is ssh")
    return ConnectionSpec(
        transport=transport,
        host=host,
        port=port,
        user=user,
        key_file=_host_path(value.get("key_file"), "connection.key_file", base_dir),
        known_hosts=_host_path(value.get("known_hosts"), "connection.known_hosts", base_dir),
        python=_optional_string(value.get("python"), "connection.python"),
        workdir=_workdir(value.get("workdir")) or defaults.workdir,
    )


def _workdir(value: Any) -> str | None:
    """connection.workdir: any folder but the filesystem's root, where the runtime's models/ would land at /."""
    workdir = _optional_string(value, "connection.workdir")
    if workdir is not None and posixpath.normpath(workdir) in ("/", "//"):
        raise ProfileError(
            f"connection.workdir: {workdir!r} is the device's root folder, where the runtime would put models/ "
            "and runtime/; name a folder of its own, such as ~/.cache/edge-smsp-runtime"
        )
    return workdir


MIN_MEMORY_BUDGET = 1 * MIB  # below it, no Python process runs, let alone a model


def check_input_fits(profile: DeviceProfile, input_size: int) -> None:
    """PlanError before any forward pass when the input tensor alone (batch x 3 x size x size float32), plus the
    profile's own runtime_overhead where it states one, exceeds the memory budget: no ratio can make it fit."""
    size, batch = int(input_size), profile.batch_size
    tensor = batch * 3 * size * size * 4
    overhead = profile.runtime_overhead_bytes or 0
    if profile.memory_budget_bytes < MIN_MEMORY_BUDGET:  # a smaller --image-size would not help: say so
        raise PlanError(
            f"{profile.name}'s memory_budget {_size_text(profile.memory_budget_bytes)} holds no model: Python and "
            "ONNX Runtime alone take tens of MiB; raise memory_budget in the profile"
        )
    if tensor + overhead <= profile.memory_budget_bytes:
        return
    largest = (
        int(((profile.memory_budget_bytes - overhead) / (batch * 3 * 4)) ** 0.5)
        if overhead < profile.memory_budget_bytes
        else 0
    )
    with_overhead = f" plus its runtime_overhead {overhead / MIB:.1f} MiB" if overhead else ""
    raise PlanError(
        f"the input tensor alone ({batch} x 3 x {size} x {size} x 4 bytes = {tensor / MIB:.1f} MiB){with_overhead} "
        f"exceeds {profile.name}'s memory_budget {_size_text(profile.memory_budget_bytes)}: "
        + (
            f"use a smaller --image-size (at most {largest})"
            if largest >= 1
            else "raise memory_budget in the profile"
        )
    )


def _size_text(size: float) -> str:
    """Bytes as MiB, or KiB under one MiB (a 1 KiB budget is not '0.0 MiB')."""
    return f"{size / MIB:.1f} MiB" if size >= MIB else f"{size / 1024:.1f} KiB"


def _host_name(host: str) -> str:
    """An IP address or a DNS name (labels of 1 to 63 characters, 253 in all): `a..b` is said to be the host's
    fault here, not found later as an encoding error that paramiko's key loading would blame on the key file."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return host
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(re.fullmatch(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)", label) for label in labels):
        raise ProfileError(
            f"connection.host: {short(host, 80)!r} is neither an IP address nor a host name (letters, digits and "
            "hyphens in dot-separated labels of 1 to 63 characters)"
        )
    return host
