"""Output helpers shared by the command modules."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, TextIO

from edge_smsp.core.paths import safe_text

MAX_MESSAGE = 500  # characters of an error line: what is wrong and what to do, never a whole argument


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """A message as one line of at most `limit` characters (a library's or a dependency's may span lines), its
    control characters shown as escapes: a file name holding terminal escape codes never reaches the terminal."""
    line = safe_text(" ".join(text.split()))
    return line if len(line) <= limit else line[: limit - 1] + "…"


class EscapedOutput(io.TextIOBase):
    """A text stream that shows control characters as escapes (newlines and tabs pass): pool rows, folder and class
    names reach the summaries, and an escape code stored in one must not clear or recolour the user's terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if not text.isprintable():
            text = "\n".join(
                "\t".join(safe_text(part) for part in line.split("\t")) for line in text.split("\n")
            )
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


@contextlib.contextmanager
def escaped_stdout() -> Iterator[None]:
    """sys.stdout as an EscapedOutput for the duration."""
    original = sys.stdout
    sys.stdout = EscapedOutput(original)
    try:
        yield
    finally:
        sys.stdout = original


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds like an interruption."""


@contextlib.contextmanager
def unwind_on_signals() -> Iterator[list[int]]:
    """For the duration (main thread only: other threads cannot set handlers), SIGTERM and SIGHUP raise Terminated
    and SIGINT KeyboardInterrupt where the program is, so that every `finally` runs. The yielded list records the
    signals that arrived: a dependency may turn the interruption into another error (a KeyboardInterrupt caught
    and wrapped, a module left half-imported), or swallow it, which is still the interruption."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def raise_terminated(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        signal.signal(signum, signal.SIG_IGN)  # a second one must not cut the clean-up short
        raise Terminated

    def raise_interrupted(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, raise_terminated)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:  # not when Ctrl-C is ignored (a background job)
        signal.signal(signal.SIGINT, raise_interrupted)
    # A closed terminal (SIGHUP) ends the run as SIGTERM does, device work stopped; not under nohup (ignored).
    previous_hup = signal.getsignal(signal.SIGHUP)
    if previous_hup == signal.SIG_DFL:
        signal.signal(signal.SIGHUP, raise_terminated)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)
        if previous_hup == signal.SIG_DFL:
            signal.signal(signal.SIGHUP, previous_hup)


def print_json(payload: Any) -> None:
    """One JSON object on stdout."""
    json.dump(payload, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal, never under --json."""
    return not getattr(args, "json", False) and sys.stderr.isatty()
