"""Atomic file writes: a temporary file in the target's folder, fsync, then os.replace."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from edge_smsp.errors import OutputPathError


def write_atomically(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `target` so that readers see the old file or the whole new one, never a part."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, mode)  # mkstemp creates 0600; most results are ordinary shared files
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def checked_output_path(path: str | os.PathLike[str], *, directory: bool) -> Path:
    """`path` if a command can write it (a directory, or a file) and make its missing folders; OutputPathError
    saying why not. Nothing is left behind: the probe is a uniquely named folder, removed at once."""
    text = os.fspath(path)
    if not text.strip():
        raise OutputPathError("an output path must not be empty")
    target = Path(text).expanduser()
    if target.exists():
        if directory and not target.is_dir():
            raise OutputPathError(f"{target} exists and is not a directory")
        if not directory and target.is_dir():
            raise OutputPathError(f"{target} is a directory; name the file to write")
    existing = target if target.is_dir() else target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"cannot write {target}: {existing} is a file, not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".edge-smsp-probe-", dir=existing))
    except OSError as error:
        raise OutputPathError(
            f"cannot write {target}: nothing can be created in {existing} ({error.strerror or error})"
        ) from None
    return target
