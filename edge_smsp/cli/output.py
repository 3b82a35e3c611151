"""Output helpers shared by the command modules."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from edge_smsp.core.paths import safe_text

MAX_MESSAGE = 500  # characters of an error line: what is wrong and what to do, never a whole argument


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """A message as one line of at most `limit` characters (a library's or a dependency's may span lines), its
    control characters shown as escapes: a file name holding terminal escape codes never reaches the terminal."""
    line = safe_text(" ".join(text.split()))
    return line if len(line) <= limit else line[: limit - 1] + "…"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds like an interruption."""


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into Terminated for the duration (main thread only; other threads cannot set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_json(payload: Any) -> None:
    """One JSON object on stdout."""
    json.dump(payload, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal, never under --json."""
    return not getattr(args, "json", False) and sys.stderr.isatty()
