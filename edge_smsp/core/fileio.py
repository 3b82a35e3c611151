"""Atomic file writes: a temporary file in the target's folder, fsync, then os.replace. Only a regular file (or
nothing) is ever replaced: a symlink's target is updated in place of the link, and a device, FIFO or socket is
refused in one line (OutputPathError), never swapped for a file."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edge_smsp.core.errors import OutputPathError, PathError
from edge_smsp.core.paths import expand_user, kind, short, status


def replaceable_target(target: str | os.PathLike[str]) -> Path:
    """The file a write to `target` must replace: `target` itself, or through symlinks the file they name (a
    shared known_hosts behind a link is updated, the link kept). OutputPathError when that is not a regular
    file: a device such as /dev/null, a FIFO or a socket is never replaced by a file."""
    path = Path(target)
    try:
        info = status(path)
    except PathError as error:
        raise OutputPathError(f"cannot write {error}") from None
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise OutputPathError(
            f"{short(str(path))} is {kind(info.st_mode)}, not a regular file: refusing to replace it; "
            "name a regular file"
        )
    return Path(os.path.realpath(path)) if path.is_symlink() or info is not None else path


def write_atomically(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `target` so that readers see the old file or the whole new one, never a part. Through a
    symlink the linked file is written (atomically beside it); anything but a regular file is refused. A
    failed write (a full disk) removes its temporary and raises OutputPathError naming the target."""
    real = replaceable_target(target)
    real.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, mode)  # mkstemp creates 0600; most results are ordinary shared files
        os.replace(temp_name, real)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        if isinstance(error, OSError):
            raise OutputPathError(f"cannot write {short(str(target))}: {error.strerror or error}") from None
        raise


def checked_output_path(path: str | os.PathLike[str], *, directory: bool) -> Path:
    """`path` if a command can write it (a directory, or a file) and make its missing folders; OutputPathError
    saying why not. Nothing is left behind: the probe is a uniquely named folder, removed at once."""
    text = os.fspath(path)
    if not text.strip():
        raise OutputPathError("an output path must not be empty")
    try:
        target = expand_user(text)
        info = status(target)
    except PathError as error:
        raise OutputPathError(f"cannot write {error}") from None
    if info is not None:
        if directory and not stat.S_ISDIR(info.st_mode):
            raise OutputPathError(f"{short(str(target))} exists and is not a directory")
        if not directory and stat.S_ISDIR(info.st_mode):
            raise OutputPathError(f"{short(str(target))} is a directory; name the file to write")
        if not directory:
            replaceable_target(target)  # a device, FIFO or socket: refused now, not after the work
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


class Undo:
    """What `removed_on_failure` removes when its block fails; `keep()` once the output is whole on its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.armed = True

    def keep(self) -> None:
        """From here on a failure leaves what was made (a finished model, say, that the user can still use)."""
        self.armed = False


@contextlib.contextmanager
def removed_on_failure(directory: str | os.PathLike[str]) -> Iterator[Undo]:
    """A block that makes `directory` (and its missing parents) and writes into it: when the block fails (an
    error, Ctrl-C) before it calls keep(), what it made is removed, so that nothing half-written is left. A
    folder that was not there goes with everything in it (and the missing parents made for it); in one that was,
    only the new entries."""
    undo = Undo(Path(directory))
    top = None  # the outermost folder of the directory that is not there yet
    probe = undo.path
    while not os.path.lexists(probe) and probe != probe.parent:
        top, probe = probe, probe.parent
    before = None if top is not None else set(_names(undo.path))
    try:
        yield undo
    except BaseException:
        if undo.armed and top is not None:
            shutil.rmtree(top, ignore_errors=True)
        elif undo.armed and before is not None:
            for name in set(_names(undo.path)) - before:
                _remove_entry(undo.path / name)
        raise


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def _remove_entry(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
