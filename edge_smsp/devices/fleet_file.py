"""A fleet file: the devices one deploy ships to, as a YAML list of profile and connection pairs

    - profile: profiles/nano.yaml          # a profile file (relative to this file) or a bundled name
      connection: {host: 10.0.0.7}         # optional: connection keys replacing the profile's (or a YAML file)
    - profile: localhost

read with the bounded document loader; every problem names the entry and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_smsp.core.documents import MAX_BYTES, DocumentError, load_yaml
from edge_smsp.core.errors import ProfileError
from edge_smsp.devices.profiles import (
    DeviceProfile,
    load_connection_override,
    load_profile,
    with_connection,
)

MAX_FLEET_DEVICES = 256
_ENTRY_KEYS = ("profile", "connection")


def load_fleet(path: str | Path) -> list[DeviceProfile]:
    """The fleet file's devices, each its profile reached through its connection override when it has one."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_file():  # a FIFO or a device would block or never end
        raise ProfileError(f"fleet file {path}: not a regular file; give a YAML file listing the devices")
    try:
        with path.open("rb") as stream:
            text = stream.read(MAX_BYTES + 1)
        document = load_yaml(text)
    except OSError as error:
        raise ProfileError(f"fleet file {path}: cannot read ({error.strerror or error})") from None
    except DocumentError as error:
        raise ProfileError(f"fleet file {path}: {error}") from None
    if not isinstance(document, list) or not document:
        raise ProfileError(
            f"fleet file {path}: must be a non-empty list of devices such as "
            "'- {profile: nano.yaml, connection: {host: 10.0.0.7}}'"
        )
    if len(document) > MAX_FLEET_DEVICES:
        raise ProfileError(f"fleet file {path}: {len(document)} devices, at most {MAX_FLEET_DEVICES}")
    return [_entry(item, index, path.parent, path) for index, item in enumerate(document)]


def _entry(item: Any, index: int, base: Path, path: Path) -> DeviceProfile:
    where = f"fleet file {path}: [{index}]"
    if isinstance(item, str):
        item = {"profile": item}
    if not isinstance(item, dict):
        raise ProfileError(f"{where}: must be a mapping with keys profile and connection")
    unknown = sorted(str(key) for key in item if key not in _ENTRY_KEYS)
    if unknown:
        raise ProfileError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(_ENTRY_KEYS)})")
    name = item.get("profile")
    if not isinstance(name, str) or not name.strip():
        raise ProfileError(f"{where}.profile: required, a profile file or a bundled profile name")
    relative = base / name
    try:
        # Anything at the relative path (a directory or a FIFO too) is meant: load_profile names what is wrong.
        profile = load_profile(relative if _present(relative) else name)
        connection = item.get("connection")
        if connection is None:
            return profile
        if isinstance(connection, str):
            target = base / connection
            overrides, overrides_base = load_connection_override(
                str(target if _present(target) else connection)
            )
            return with_connection(profile, overrides, overrides_base)
        return with_connection(profile, connection, base)
    except ProfileError as error:
        raise ProfileError(f"{where}: {error}") from None


def _present(path: Path) -> bool:
    """Whether something is at `path`: a file, a directory, a FIFO, or a symlink (even a dangling one)."""
    try:
        return path.exists() or path.is_symlink()
    except OSError:  # a name too long, say: then it is not a relative file either
        return False
