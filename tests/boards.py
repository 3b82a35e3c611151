"""A small device profile for tests that need a valid board and choose only its connection."""

from __future__ import annotations

import json
from pathlib import Path


def small_board_profile(path: Path, name: str, connection: dict) -> Path:
    """Write a valid device profile (a small CPU board, 512 MiB, 100 ms p90) with `connection`; returns `path`."""
    document = {
        "name": name,
        "memory_budget": "512MiB",
        "latency_target_ms": 100,
        "latency_percentile": "p90",
        "input_size": 32,
        "threads": 1,
        "providers": ["CPUExecutionProvider"],
        "throughput_gmacs": 5,
        "connection": connection,
    }
    path.write_text(json.dumps(document))  # JSON is YAML
    return path
