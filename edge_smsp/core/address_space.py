"""The address-space limit (`ulimit -v`, RLIMIT_AS) a job runs under, and the failures it causes.

A torch process maps far more address space than it touches: shared libraries, allocator arenas and thread
stacks. Measured VmPeak / VmHWM (x86-64, 2 cores, torch 2.14, one thread, 32 px; /proc/PID/status polled):
prune 3.66 / 0.85 GB, adapt 3.91 / 0.95, export 4.13 / 0.95, deploy 4.50 / 1.12, pool build 4.16 / 0.99, and a
`pool build --ray` driver 12.0 / 0.96 (Ray's own mappings). Under a lower limit the job dies wherever the first
mapping fails: an import (onnxsim), torch's allocator, or OpenBLAS, which exits the process itself, so nothing
could remove what the job had begun. Hence the check before the work, with a tenth more than measured.
"""

from __future__ import annotations

import resource

from edge_smsp.core.errors import PlanError

GIB = 1024**3
# VmPeak above, plus a tenth: what each command maps at its smallest settings.
JOB_ADDRESS_SPACE = {
    "prune": int(3.75 * GIB),
    "adapt": int(4.0 * GIB),
    "export": int(4.25 * GIB),
    "deploy": int(4.6 * GIB),
    "pool build": int(4.25 * GIB),
    "pool build --ray": int(12.3 * GIB),
}
# How allocation failures read in the exceptions of torch, oneDNN, the dynamic loader and numpy.
MEMORY_FAILURE_TEXTS = (
    "can't allocate memory",
    "cannot allocate memory",
    "unable to allocate",
    "failed to map segment",
    "out of memory",
    "bad_alloc",
)


def address_space_limit() -> int | None:
    """The soft RLIMIT_AS in bytes, or None when there is none."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def check_address_space(job: str) -> None:
    """PlanError (one line) when `ulimit -v` is below what `job` (a key of JOB_ADDRESS_SPACE) maps."""
    limit = address_space_limit()
    needed = JOB_ADDRESS_SPACE[job]
    if limit is None or limit >= needed:
        return
    raise PlanError(
        f"the address-space limit (ulimit -v) is {limit / GIB:.2f} GiB, and `edge-smsp {job}` maps about "
        f"{needed / GIB:.1f} GiB (most of it never touched): raise it (ulimit -v unlimited), or cap memory with "
        "a cgroup instead (systemd-run --scope -p MemoryMax=...)"
    )


def is_memory_failure(error: BaseException) -> bool:
    """Whether `error` is an allocation that failed (MemoryError, or a library's failure said in words)."""
    if isinstance(error, MemoryError):
        return True
    if not isinstance(error, (RuntimeError, ImportError, OSError)):
        return False
    text = str(error).lower()
    return any(words in text for words in MEMORY_FAILURE_TEXTS)


def memory_failure_line(error: BaseException) -> str:
    """The one line for an allocation that failed: what failed, and what to change."""
    detail = str(error).strip().splitlines()
    limit = address_space_limit()
    advice = (
        f"the address-space limit (ulimit -v) is {limit / GIB:.2f} GiB: raise it, or cap memory with a cgroup"
        if limit is not None
        else "free memory, or lower --image-size, --micro-batch or --batch-size"
    )
    return f"out of memory ({detail[0][:200] if detail else type(error).__name__}); {advice}"
