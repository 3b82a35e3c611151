"""What a path is, in words, for one-line errors. Only stat is used: a FIFO is never opened (that would block)."""

import errno
import os
import stat
from typing import Optional

from .errors import RuntimeToolError


def path_kind(path: str) -> Optional[str]:
    """None for a regular file (through symlinks); else 'missing', 'a symlink loop', 'a name too long for this file
    system', 'a directory', 'a FIFO',
    'a socket', 'a device' or 'not a regular file'."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            return TOO_LONG
        return "a symlink loop" if error.errno == errno.ELOOP else "missing"
    except ValueError:  # an embedded NUL byte
        return "missing"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


TOO_LONG = "a name too long for this file system"


def _unusable(path: str, kind: str, what: str) -> Optional[RuntimeToolError]:
    """The error for a path that cannot be looked at: missing, or a name too long to look up."""
    if kind == "missing":
        return _missing(path, what)
    if kind == TOO_LONG:
        return RuntimeToolError(
            f"{what} path is too long for this file system: {path[:120]}...; use a shorter one"
        )
    return None


def _missing(path: str, what: str) -> RuntimeToolError:
    """'X not found: PATH', saying which folder a relative PATH was looked up in (the host's user may have
    meant one of their own)."""
    where = "" if os.path.isabs(path) else f" (looked up in {os.getcwd()}, the runtime's working folder)"
    return RuntimeToolError(f"{what} not found: {path}{where}")


def require_file(path: str, what: str) -> None:
    """A RuntimeToolError naming what `path` is unless it is a regular file: `what` is 'model file', 'image'..."""
    kind = path_kind(path)
    unusable = _unusable(path, kind, what) if kind else None
    if unusable:
        raise unusable
    if kind is not None:
        raise RuntimeToolError(f"{path} is {kind}, not a regular file; give the {what} to read")


def require_folder(path: str, what: str) -> None:
    """A RuntimeToolError naming what `path` is unless it is a folder (through symlinks)."""
    kind = path_kind(path)
    unusable = _unusable(path, kind, what) if kind else None
    if unusable:
        raise unusable
    if kind is None:
        raise RuntimeToolError(f"{path} is a file where a folder is expected; give the {what}")
    if kind != "a directory":
        raise RuntimeToolError(f"{path} is {kind}, not a folder; give the {what}")


def check_replaceable(path: str, option: str) -> None:
    """Refuse an output that exists and is not a regular file (a device, FIFO, socket, directory, symlink loop):
    an atomic rename would replace the node itself with a file."""
    kind = path_kind(path)
    if kind == TOO_LONG:
        raise RuntimeToolError(
            f"{option} path is too long for this file system: {path[:120]}...; use a shorter one"
        )
    if kind is not None and kind != "missing":
        raise RuntimeToolError(
            f"{option} {path} is {kind}, not a regular file: refusing to replace it; name a regular file"
        )
    if kind == "missing" and os.path.islink(path):
        raise RuntimeToolError(f"{option} {path} is a dangling symlink; name a regular file")
