"""A time limit on each inference: a model that never finishes (a Loop of 1e12 trips) must not hang the device."""

import os
import sys
import threading
import time
from typing import Any, Dict, List

from .backends.base import Session
from .errors import PROG, RuntimeToolError

DEFAULT_RUN_TIMEOUT = 60.0  # seconds: far above any model a board of this project runs (emulated ARM: ~1.2 s)
# The first run gets longer: it also builds an engine's kernels or plans. TensorRT builds whole engines (minutes
# for a large model on a Jetson); other providers only pick kernels.
FIRST_RUN_FACTOR = 5
ENGINE_BUILDING_PROVIDERS = ("TensorrtExecutionProvider",)
PLAIN_FIRST_RUN_FACTOR = 2
STOP_GRACE_SECONDS = 10.0  # how long a stopped engine may take to return before the process gives up on it


def first_run_factor(providers: List[str]) -> float:
    """How many times --run-timeout the first inference may take on a session running on `providers`."""
    if any(provider in ENGINE_BUILDING_PROVIDERS for provider in providers):
        return FIRST_RUN_FACTOR
    return PLAIN_FIRST_RUN_FACTOR


class RunDeadline:
    """Runs a session with a limit on each run. When a run passes it, the engine is asked to stop (onnxruntime's
    terminate flag) and the run raises; an engine that cannot stop, or does not within the grace, ends the
    process with the one-line error, because a run inside native code cannot be interrupted otherwise."""

    def __init__(self, session: Session, seconds: float, command: str, what: str) -> None:
        self._session = session
        self._seconds = seconds
        providers = session.providers()
        self._first_factor = first_run_factor(providers)
        self._provider = providers[0] if providers else "this engine"
        self._command = command
        self._what = what
        # Written by the running thread, read by the watcher: plain attribute stores are atomic in CPython, so
        # a timed run pays two stores and no lock.
        self._run_started = None  # type: Optional[float]
        self._run_number = 0
        self._limit = seconds
        self._expired = False
        self._closed = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="run-deadline", daemon=True)
        self._watcher.start()

    def _message(self, limit: float) -> str:
        which = "the first inference" if limit > self._seconds else "one inference"
        return (
            f"{self._what}: {which} ran over {limit:g} s and was stopped (--run-timeout {self._seconds:g}; the "
            f"first run gets {self._first_factor:g} times it on {self._provider}); the model may loop without end: "
            "raise --run-timeout if it is only slow"
        )

    def _watch(self) -> None:
        while not self._closed.wait(0.2):
            started, number, limit = self._run_started, self._run_number, self._limit
            if started is None or time.monotonic() - started < limit:
                continue
            self._expired = True
            if self._session.stop():
                deadline = time.monotonic() + STOP_GRACE_SECONDS
                while (
                    time.monotonic() < deadline
                    and self._run_number == number
                    and self._run_started is not None
                ):
                    time.sleep(0.05)
                if self._run_number != number or self._run_started is None:
                    continue  # the run returned (with the engine's error): run() raises ours
            sys.stderr.write(f"{PROG} {self._command}: error: {self._message(limit)}\n")
            sys.stderr.flush()
            os._exit(2)

    def run(self, feeds: Dict[str, Any], first: bool = False) -> List[Any]:
        """The session's outputs for `feeds`, or RuntimeToolError when the run passed its limit."""
        self._limit = self._seconds * (self._first_factor if first else 1)
        self._run_number += 1
        self._run_started = time.monotonic()
        try:
            outputs = self._session.run(feeds)
        except Exception:
            if self._expired:
                raise RuntimeToolError(self._message(self._limit)) from None
            raise
        finally:
            self._run_started = None
        if self._expired:  # stopped at the very end: its outputs cannot be trusted
            raise RuntimeToolError(self._message(self._limit))
        return outputs

    def close(self) -> None:
        self._closed.set()
        self._watcher.join()

    def __enter__(self) -> "RunDeadline":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
