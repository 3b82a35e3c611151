"""The one owner of user-given paths: `~` and `~user` expanded, over-long names and symlink loops refused in one
line (PathError) before anything opens them, and the kind of an existing file named in words."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from edge_smsp.core.errors import PathError

NAME_MAX = 255  # bytes of one path component (Linux, macOS)
PATH_MAX = 4096  # bytes of a whole path


def expand_user(path: str | os.PathLike[str]) -> Path:
    """`path` with a leading `~` or `~user` expanded; PathError for an unknown user (never a literal '~x' folder)
    or a name too long for the filesystem."""
    text = os.fspath(path)
    if "\x00" in text:
        raise PathError(f"{safe_text(text)}: a path must not contain a NUL character")
    expanded = os.path.expanduser(text)
    if expanded.startswith("~"):
        user = expanded[1:].split("/", 1)[0]
        raise PathError(f"{safe_text(text)}: no user {safe_text(user)!r} on this machine to expand '~{user}'")
    check_length(expanded)
    return Path(expanded)


def check_length(text: str) -> None:
    """PathError when a path or one of its names is longer than the filesystem takes (ENAMETOOLONG)."""
    encoded = os.fsencode(text)
    if len(encoded) > PATH_MAX:
        raise PathError(f"{short(text)}: path too long ({len(encoded):,} bytes; at most {PATH_MAX:,})")
    longest = max(encoded.split(b"/"), key=len, default=b"")
    if len(longest) > NAME_MAX:
        raise PathError(
            f"{short(text)}: a file name is too long ({len(longest):,} bytes; at most {NAME_MAX})"
        )


def status(path: Path) -> os.stat_result | None:
    """os.stat of `path` following links; None when nothing is there (a dangling link included); PathError for
    a symlink loop or a name too long."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise PathError(f"{short(str(path))}: a symlink loop") from None
        if error.errno == errno.ENAMETOOLONG:
            raise PathError(f"{short(str(path))}: name too long") from None
        raise PathError(f"{short(str(path))}: {error.strerror or error}") from None


def kind(mode: int) -> str:
    """A file's kind in words, for messages."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def safe_text(text: str) -> str:
    """`text` with control characters (terminal escape codes among them) shown as escapes, never raw."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def short(text: str, limit: int = 120) -> str:
    """A path for a message: control characters escaped, cut short (an error never quotes a 100 KB name)."""
    text = safe_text(text)
    return text if len(text) <= limit else text[: limit - 1] + f"… ({len(text):,} characters)"
