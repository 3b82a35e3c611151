"""Output helpers shared by the command modules."""

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
