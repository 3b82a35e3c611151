"""The fields of a device profile, each checked on its own: numbers finite and bounded, strings, names, ports,
providers, the Python version and opset; messages name the field path and never quote a whole value."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from edge_smsp.core.documents import shown
from edge_smsp.core.errors import EdgeSmspError, ProfileError
from edge_smsp.core.paths import expand_user, short
from edge_smsp.devices.stack import OLDEST_PYTHON, opset_problem

MIB = 1024**2
MAX_MEMORY = 1024**5  # bytes: a budget, an overhead
MAX_PROFILE_BYTES = 256 * 1024
MAX_NUMBER = 1e12  # latency targets in ms, throughputs in GMAC/s: far beyond any device

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


def _reject_passwords(mapping: dict, prefix: str) -> None:
    for key in mapping:
        if isinstance(key, str) and ("password" in key.lower() or "passphrase" in key.lower()):
            raise ProfileError(
                f"{prefix}{key}: passwords are not allowed in profiles; use key_file or ssh-agent"
            )


def _reject_unknown(mapping: dict, allowed: tuple[str, ...], prefix: str) -> None:
    for key in mapping:
        if key not in allowed:
            named = short(key, 60) if isinstance(key, str) else shown(key)
            # YAML reads 'workdir:/tmp/x' as one key: a known field glued to its value lacks a space.
            glued = isinstance(key, str) and key.partition(":")[0] in allowed and ":" in key
            hint = f"; write '{key.partition(':')[0]}: ...' with a space after the colon" if glued else ""
            raise ProfileError(f"{prefix}{named}: unknown field (allowed: {', '.join(allowed)}){hint}")


def _require(mapping: dict, required: tuple[str, ...], prefix: str) -> None:
    for key in required:
        if key not in mapping or mapping[key] is None:
            raise ProfileError(f"{prefix}{key}: required field is missing")


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _string(value: Any, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ProfileError(f"{path}: must be a non-empty string, got {shown(value)}")
    return value


def _optional_string(value: Any, path: str) -> str | None:
    return None if value is None else _string(value, path)


def _name(value: Any, path: str) -> str:
    text = _string(value, path)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text):
        raise ProfileError(f"{path}: use letters, digits, '_', '-' or '.', got {shown(value)}")
    return text


def _integer(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProfileError(f"{path}: must be an integer, got {shown(value)}")
    if not low <= value <= high:
        raise ProfileError(f"{path}: must be {low}-{high}, got {value}")
    return value


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ProfileError(f"connection.port: must be 1-65535, got {shown(value)}")
    return value


def _yaml_float(text: str) -> str | None:
    """`text` as a YAML 1.1 float (1e-300 -> 1.0e-300), when it is a finite number that YAML read as text."""
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    mantissa, _, exponent = repr(number).partition("e")
    return f"{mantissa}{'' if '.' in mantissa else '.0'}e{exponent}" if exponent else repr(number)


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        written = _yaml_float(value) if isinstance(value, str) else None
        hint = f" (YAML read it as text: write {written}, unquoted)" if written else ""
        raise ProfileError(f"{path}: must be a number, got {shown(value)}{hint}")
    if not -MAX_NUMBER <= value <= MAX_NUMBER:  # also NaN and inf
        raise ProfileError(f"{path}: must be a finite number of at most {MAX_NUMBER:g}, got {shown(value)}")
    return float(value)


def _positive_number(value: Any, path: str) -> float:
    number = _number(value, path)
    if not number > 0 or number == float("inf"):
        raise ProfileError(f"{path}: must be a positive number, got {shown(value)}")
    return number


def _non_negative_number(value: Any, path: str) -> float:
    number = _number(value, path)
    if not 0 <= number < float("inf"):
        raise ProfileError(f"{path}: must be zero or a positive number, got {shown(value)}")
    return number


def _choice(value: Any, choices: tuple[str, ...], path: str) -> str:
    if value not in choices:
        raise ProfileError(f"{path}: must be one of {', '.join(choices)}, got {shown(value)}")
    return value


def _python_version(value: Any) -> str | None:
    if value is None:
        return None
    oldest = ".".join(map(str, OLDEST_PYTHON))
    if not isinstance(value, str):  # YAML reads 3.10 as the number 3.1
        raise ProfileError(f'python_version: must be a quoted string such as "{oldest}", got {shown(value)}')
    match = re.fullmatch(r"(\d+)\.(\d+)", value.strip())
    if match is None:
        raise ProfileError(f'python_version: must be MAJOR.MINOR such as "{oldest}", got {shown(value)}')
    if (int(match[1]), int(match[2])) < OLDEST_PYTHON:
        raise ProfileError(
            f"python_version: the device runtime needs Python {oldest} or newer, got {shown(value)}"
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
        if not isinstance(provider, str) or provider not in known:
            raise ProfileError(
                f"{path}[{index}]: unknown execution provider {shown(provider)} (e.g. CPUExecutionProvider, "
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
    try:
        resolved = expand_user(_string(value, path))
    except EdgeSmspError as error:
        raise ProfileError(f"{path}: {error}") from None
    if not resolved.is_absolute() and base_dir is not None:
        resolved = base_dir / resolved
    return resolved


def _read_text(path: Path) -> str:
    """A profile's text: a regular file of at most 256 KiB (a FIFO or /dev/zero never ends)."""
    with path.open("rb") as stream:
        if not path.is_file():
            raise OSError(0, "not a regular file")
        data = stream.read(MAX_PROFILE_BYTES + 1)
    if len(data) > MAX_PROFILE_BYTES:
        raise OSError(0, f"larger than {MAX_PROFILE_BYTES // 1024} KiB")
    return data.decode("utf-8")


def _reason(error: BaseException) -> str:
    if isinstance(error, UnicodeDecodeError):  # UTF-16, Latin-1 or binary
        return f"not UTF-8 text: byte 0x{error.object[error.start]:02x} at offset {error.start}; save it as UTF-8"
    return (error.strerror if isinstance(error, OSError) else None) or type(error).__name__
