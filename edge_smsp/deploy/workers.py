"""Device work run concurrently, one thread per device, and stopped everywhere at once on an interruption."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol


class Failable(Protocol):
    """A device's way through a multi-device deploy: its own failures are recorded on it."""

    def fail(self, stage: str, error: BaseException | str) -> None: ...


def run_concurrently(
    stage: str, devices: Sequence[Failable], work: Callable[[Any], None], bound: int
) -> None:
    """work(device) for every device, at most `bound` at once. An interruption of the calling thread (Ctrl-C,
    SIGTERM) interrupts every worker where it is, waits for them to unwind (their transports stop the device
    work and close), and is raised again."""
    if not devices:
        return
    working: dict[int, int] = {}  # thread ident -> native id, while a worker runs a device's work
    lock = threading.Lock()

    def guarded(device: Failable) -> None:
        with lock:
            working[threading.get_ident()] = threading.get_native_id()
        try:
            work(device)
        except Exception as error:  # noqa: BLE001 (closing this device's link failed: its failure alone)
            device.fail(stage, error)
        finally:
            with lock:
                working.pop(threading.get_ident(), None)

    executor = ThreadPoolExecutor(max_workers=max(1, bound), thread_name_prefix="edge-smsp-device")
    futures = [executor.submit(guarded, device) for device in devices]
    try:
        for future in futures:
            future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        with lock:
            for ident, native_id in working.items():
                _interrupt_thread(ident, native_id)
        executor.shutdown(wait=True)
        raise
    executor.shutdown(wait=True)


def _interrupt_thread(ident: int, native_id: int) -> None:
    """Raise KeyboardInterrupt in a worker thread at its next Python instruction, and stop the local device
    commands it is waiting on (each its own process group: the local transport starts them in a new session),
    so that a wait in C returns and the interruption is handled where the transport expects it."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt))
    try:
        children = Path(f"/proc/self/task/{native_id}/children").read_text().split()
    except OSError:
        return
    for pid in map(int, children):
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGTERM)
            else:
                os.kill(pid, signal.SIGTERM)
