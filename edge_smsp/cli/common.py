"""Helpers shared by the command modules: JSON output and argument groups used by several commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def print_json(payload: Any) -> None:
    """One JSON object on stdout."""
    json.dump(payload, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal, never under --json."""
    return not getattr(args, "json", False) and sys.stderr.isatty()


def ratio_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio must be a number in [0, 1), got {text!r}") from None
    return value
