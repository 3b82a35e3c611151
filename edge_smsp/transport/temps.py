"""Upload temporaries on the device: names that say which host process made them, and which are abandoned.

An upload lands under a temporary name and is renamed into place once its SHA-256 is verified. A host process
that is killed, or whose link is cut, during an upload cannot remove its temporaries. Their names carry the
host and the process (pid and start time), so the next connection from this host removes every temporary whose
process is gone, at once; temporaries of other hosts are removed once they are an hour old (by the device's clock,
see Transport.cleanup).
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from pathlib import Path

TEMP_PREFIX = ".edge-smsp-tmp-"
STALE_TEMP_SECONDS = 3600  # another host's temporary is abandoned after this long without a write


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (from /proc); None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


HOST_ID = hashlib.sha256(f"{socket.gethostname()}\0{_boot_id()}".encode()).hexdigest()[:10]
_HAS_PROC = Path("/proc/self/stat").exists()


def owner_token(pid: int | None = None) -> str:
    """host.pid.start of a process of this host (the current one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{HOST_ID}.{pid}.{_start_time(pid) or 0}"


def temp_name(final_name: str) -> str:
    """A temporary name beside a final one, owned by this process."""
    return f"{TEMP_PREFIX}{owner_token()}-{uuid.uuid4().hex[:12]}-{final_name}"


def abandoned_here(name: str) -> bool:
    """Whether a name in the work dir is a temporary of a process of this host that is gone."""
    if not name.startswith(f"{TEMP_PREFIX}{HOST_ID}."):
        return False
    owner = name[len(TEMP_PREFIX) :].split("-", 1)[0].split(".")
    return len(owner) == 3 and owner[1].isdigit() and not _process_alive(int(owner[1]), owner[2])


def _process_alive(pid: int, start: str) -> bool:
    """Whether the process that wrote a temporary still runs (a pid taken over by another process does not count)."""
    if not _HAS_PROC:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    current = _start_time(pid)
    return current is not None and start in ("0", current)
