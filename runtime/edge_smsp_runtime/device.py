"""Facts about the device and this process: CPU, cores, RAM, board name, resident memory; a clock."""

import os
import platform
import sys
import time
from typing import Any, Dict, Optional

_PERF_COUNTER_NS = getattr(time, "perf_counter_ns", None)  # Python 3.7+


def now_ns() -> int:
    """A monotonic clock in integer nanoseconds (perf_counter_ns where the Python has it)."""
    if _PERF_COUNTER_NS is not None:
        return _PERF_COUNTER_NS()
    return int(time.perf_counter() * 1e9)


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return None


def _status_kib(field: str) -> Optional[float]:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB; None off Linux."""
    text = _read_text("/proc/self/status")
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return None


def current_rss_mib() -> Optional[float]:
    """Resident memory now, MiB."""
    kib = _status_kib("VmRSS")
    return None if kib is None else round(kib / 1024.0, 2)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (VmHWM, else getrusage)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return round(kib / 1024.0, 2)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is bytes on macOS and KiB on Linux and the BSDs.
    divisor = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
    return round(peak / divisor, 2)


def _cpu_model(cpuinfo: Optional[str]) -> str:
    if cpuinfo:
        # x86 names the CPU in "model name"; ARM boards use "Model" (Raspberry Pi), "Hardware" or "Processor".
        for key in ("model name", "Model", "Hardware", "Processor", "cpu model", "cpu"):
            for line in cpuinfo.splitlines():
                name, _, value = line.partition(":")
                if name.strip() == key and value.strip():
                    return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def _total_ram_mib() -> Optional[float]:
    text = _read_text("/proc/meminfo")
    if text:
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                return round(float(line.split()[1]) / 1024.0, 1)
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1024.0 * 1024.0), 1)
    except (ValueError, OSError, AttributeError):
        return None


def mem_available_mib() -> Optional[float]:
    """MemAvailable of /proc/meminfo (what a new process may take without swapping), MiB; None off Linux."""
    text = _read_text("/proc/meminfo")
    if text:
        for line in text.splitlines():
            if line.startswith("MemAvailable:"):
                return round(float(line.split()[1]) / 1024.0, 1)
    return None


def _usable_cores() -> Optional[int]:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def device_facts() -> Dict[str, Any]:
    """CPU model, cores, total RAM, board name (/proc/device-tree/model on Jetson and Raspberry Pi), OS."""
    board = _read_text("/proc/device-tree/model")
    return {
        "cpu_model": _cpu_model(_read_text("/proc/cpuinfo")),
        "cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "total_ram_mib": _total_ram_mib(),
        "device_tree_model": board.strip("\x00\n ") if board else None,
        "machine": platform.machine(),
        "system": platform.system(),
        "release": platform.release(),
        # the running kernel: devices that report one boot id share the hardware (a fleet benches them in turn)
        "boot_id": (_read_text("/proc/sys/kernel/random/boot_id") or "").strip() or None,
    }
