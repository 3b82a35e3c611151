"""Device profiles: schema, loading and validation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from edge_smsp.datasets import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from edge_smsp.device_stack import OLDEST_PYTHON, opset_problem
from edge_smsp.errors import ProfileError


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


MIB = 1024**2
PERCENTILES = ("p50", "p90", "p99")
TRANSPORTS = ("ssh", "local")
BUNDLED_PROFILES_DIR = Path(__file__).resolve().parent / "device_profiles"  # a link to ../device_profiles
MEMORY_HINT = "use 512MiB, 2GiB or a MiB integer"
CONNECTION_KEYS = ("transport", "host", "port", "user", "key_file", "known_hosts", "python", "workdir")

# Fallback when onnxruntime cannot be imported: the providers a profile of this project may name.
KNOWN_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "DnnlExecutionProvider",
    "XnnpackExecutionProvider",
    "ArmNNExecutionProvider",
    "ACLExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
)


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
    source: Path | None = field(default=None, compare=False)

    @property
    def memory_budget_mib(self) -> float:
        return self.memory_budget_bytes / MIB

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
            "connection": connection,
            "source": None if self.source is None else str(self.source),
        }


_MEMORY_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(KiB|MiB|GiB|TiB)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {"kib": 1024, "mib": MIB, "gib": 1024**3, "tib": 1024**4}


def parse_memory(value: Any, field_path: str = "memory") -> int:
    """Bytes from `512MiB`, `2GiB`, `1.5GiB` or a plain MiB integer (int or digit string)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ProfileError(f"{field_path}: cannot parse {value!r} ({MEMORY_HINT})")
    if isinstance(value, int | float):
        size = int(value * MIB)
    else:
        match = _MEMORY_PATTERN.match(value)
        if match is None:
            raise ProfileError(f"{field_path}: cannot parse {value!r} ({MEMORY_HINT})")
        number, unit = match.groups()
        size = int(float(number) * _UNIT_BYTES[(unit or "MiB").lower()])
    if size <= 0:
        raise ProfileError(f"{field_path}: must be positive, got {value!r}")
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
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    text = str(name_or_path)
    if "/" not in text and "\\" not in text:
        bundled = bundled_profiles()
        stem = text[: -len(".yaml")] if text.endswith(".yaml") else text
        if stem in bundled:
            return bundled[stem]
        names = ", ".join(bundled) or "none found"
        raise ProfileError(f"profile {text!r}: no such file and not a bundled profile (bundled: {names})")
    raise ProfileError(f"profile {text}: no such file")


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """Read and validate a device profile YAML (a path or a bundled name); errors name the field path."""
    path = resolve_profile_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ProfileError(f"profile {path}: cannot read ({error})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ProfileError(f"profile {path}: {_yaml_error_line(error)}") from None
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
        connection=_connection(document["connection"], base_dir),
        source=source,
    )


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
    path = Path(text).expanduser()
    if path.is_file():
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            raise ProfileError(f"connection override {path}: cannot read ({error})") from None
        except yaml.YAMLError as error:
            raise ProfileError(f"connection override {path}: {_yaml_error_line(error)}") from None
        where, base_dir = str(path), path.parent
    else:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError:
            document = None
        where, base_dir = repr(text), Path.cwd()
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
)


def _connection(value: Any, base_dir: Path | None) -> ConnectionSpec:
    if not isinstance(value, dict):
        raise ProfileError(f"connection: must be a mapping with keys {', '.join(CONNECTION_KEYS)}")
    _reject_passwords(value, "connection.")
    _reject_unknown(value, CONNECTION_KEYS, "connection.")
    _require(value, ("transport",), "connection.")
    transport = _choice(value["transport"], TRANSPORTS, "connection.transport")
    defaults = ConnectionSpec(transport=transport)
    host = _optional_string(value.get("host"), "connection.host") or defaults.host
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
        workdir=_optional_string(value.get("workdir"), "connection.workdir") or defaults.workdir,
    )


def _reject_passwords(mapping: dict, prefix: str) -> None:
    for key in mapping:
        if isinstance(key, str) and ("password" in key.lower() or "passphrase" in key.lower()):
            raise ProfileError(
                f"{prefix}{key}: passwords are not allowed in profiles; use key_file or ssh-agent"
            )


def _reject_unknown(mapping: dict, allowed: tuple[str, ...], prefix: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise ProfileError(f"{prefix}{key}: unknown field (allowed: {', '.join(allowed)})")


def _require(mapping: dict, required: tuple[str, ...], prefix: str) -> None:
    for key in required:
        if key not in mapping or mapping[key] is None:
            raise ProfileError(f"{prefix}{key}: required field is missing")


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _string(value: Any, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ProfileError(f"{path}: must be a non-empty string, got {value!r}")
    return value


def _optional_string(value: Any, path: str) -> str | None:
    return None if value is None else _string(value, path)


def _name(value: Any, path: str) -> str:
    text = _string(value, path)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text):
        raise ProfileError(f"{path}: use letters, digits, '_', '-' or '.', got {value!r}")
    return text


def _integer(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProfileError(f"{path}: must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ProfileError(f"{path}: must be {low}-{high}, got {value}")
    return value


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ProfileError(f"connection.port: must be 1-65535, got {value!r}")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProfileError(f"{path}: must be a number, got {value!r}")
    return float(value)


def _positive_number(value: Any, path: str) -> float:
    number = _number(value, path)
    if not number > 0 or number == float("inf"):
        raise ProfileError(f"{path}: must be a positive number, got {value!r}")
    return number


def _non_negative_number(value: Any, path: str) -> float:
    number = _number(value, path)
    if not 0 <= number < float("inf"):
        raise ProfileError(f"{path}: must be zero or a positive number, got {value!r}")
    return number


def _choice(value: Any, choices: tuple[str, ...], path: str) -> str:
    if value not in choices:
        raise ProfileError(f"{path}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def _python_version(value: Any) -> str | None:
    if value is None:
        return None
    oldest = ".".join(map(str, OLDEST_PYTHON))
    if not isinstance(value, str):  # YAML reads 3.10 as the number 3.1
        raise ProfileError(f'python_version: must be a quoted string such as "{oldest}", got {value!r}')
    match = re.fullmatch(r"(\d+)\.(\d+)", value.strip())
    if match is None:
        raise ProfileError(f'python_version: must be MAJOR.MINOR such as "{oldest}", got {value!r}')
    if (int(match[1]), int(match[2])) < OLDEST_PYTHON:
        raise ProfileError(
            f"python_version: the device runtime needs Python {oldest} or newer, got {value!r}"
        )
    return value.strip()


def _max_opset(value: Any) -> int | None:
    problem = None if value is None else opset_problem(value)
    if problem:
        raise ProfileError(f"max_opset: {problem}")
    return value


def _providers(value: Any, path: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list) or not value:
        raise ProfileError(f"{path}: must be a non-empty list of ONNX Runtime execution providers")
    known = _known_providers()
    for index, provider in enumerate(value):
        if provider not in known:
            raise ProfileError(
                f"{path}[{index}]: unknown execution provider {provider!r} (e.g. CPUExecutionProvider, "
                "CUDAExecutionProvider, TensorrtExecutionProvider)"
            )
    if len(set(value)) != len(value):
        raise ProfileError(f"{path}: lists a provider twice")
    return tuple(value)


def _known_providers() -> set[str]:
    try:
        import onnxruntime

        return set(onnxruntime.get_all_providers()) | set(KNOWN_PROVIDERS)
    except ImportError:
        return set(KNOWN_PROVIDERS)


def _host_path(value: Any, path: str, base_dir: Path | None) -> Path | None:
    if value is None:
        return None
    resolved = Path(_string(value, path)).expanduser()
    if not resolved.is_absolute() and base_dir is not None:
        resolved = base_dir / resolved
    return resolved


def _yaml_error_line(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is None:
        return f"malformed YAML: {problem}"
    return f"malformed YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
