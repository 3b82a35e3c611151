"""What every benchmark shares: its command line, result files, machine facts and progress."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_smsp.core.fileio import write_atomically

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
DEFAULT_RESULTS_DIR = BENCHMARKS_DIR / "results"


# --- command line ---------------------------------------------------------------------------------------------


def add_mode_arguments(parser: argparse.ArgumentParser) -> None:
    """--smoke/--quick/--full, --results-dir and --workers, shared by every benchmark."""
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--quick", dest="mode", action="store_const", const="quick", help="<= 10 min (default)"
    )
    modes.add_argument("--full", dest="mode", action="store_const", const="full", help="the full study")
    modes.add_argument("--smoke", dest="mode", action="store_const", const="smoke", help="tiny, for tests")
    parser.set_defaults(mode="quick")
    parser.add_argument(
        "--results-dir", type=Path, default=DEFAULT_RESULTS_DIR, help="where results/*.json go (and tmp/)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel single-thread training processes (default: 2 on >= 2 cores, 1 in --smoke)",
    )


def default_workers(mode: str) -> int:
    """Two single-thread workers use both cores and stay fast when other processes share them."""
    if mode == "smoke":
        return 1
    return max(1, min(2, len(os.sched_getaffinity(0))))


def command_line(module: str, mode: str) -> str:
    """The command that reproduces a result file."""
    return f".venv/bin/python -m benchmarks.{module} --{mode}"


# --- result files ---------------------------------------------------------------------------------------------


def result_path(results_dir: Path, name: str, mode: str) -> Path:
    """benchmarks/results/<name>.<mode>.json"""
    return Path(results_dir) / f"{name}.{mode}.json"


def tmp_dir(results_dir: Path, mode: str) -> Path:
    """Large, regenerable artefacts (pools, ONNX files): git-ignored."""
    path = Path(results_dir) / "tmp" / mode
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write JSON atomically (temp file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=1, sort_keys=False, default=_json_default, allow_nan=True) + "\n"
    write_atomically(path, text.encode("utf-8"))
    return path


def read_json(path: Path) -> dict[str, Any] | None:
    """A result file, or None when it does not exist yet."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class RunCache:
    """Finished runs keyed by a string, in one JSON file; every put re-reads and merges under a file lock."""

    def __init__(self, path: Path, meta: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.meta = dict(meta or {})
        self.runs: dict[str, dict[str, Any]] = {}
        self.reload()

    def reload(self) -> None:
        """Pick up runs written by other processes."""
        stored = read_json(self.path) or {}
        self.runs = dict(stored.get("runs", {}))

    def get(self, key: str) -> dict[str, Any] | None:
        """A finished run or None."""
        return self.runs.get(key)

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Store one finished run (atomic write, merged with whatever another process wrote meanwhile)."""
        with self._locked():
            stored = read_json(self.path) or {}
            runs = dict(stored.get("runs", {}))
            runs[key] = dict(record)
            write_json(self.path, {"meta": {**stored.get("meta", {}), **self.meta}, "runs": runs})
            self.runs = runs

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.parent / "tmp" / f"{self.path.stem}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


# --- machine facts --------------------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    """CPU, cores, memory, load, library versions, date and commit: what a reader needs to compare numbers."""
    import onnx
    import onnxruntime
    import timm
    import torch
    import torch_pruning

    import edge_smsp

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cores_total": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "edge_smsp": getattr(edge_smsp, "__version__", "?"),
            "torch": torch.__version__,
            "timm": timm.__version__,
            "torch_pruning": getattr(torch_pruning, "__version__", "?"),
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
        "git_commit": _git_commit(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() or None


# --- progress ---------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    """One progress line on stderr."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def quiet_warnings() -> None:
    """Torch-Pruning and the exporters warn on every call; the benchmark logs would drown in them."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("torch.onnx", "onnxscript", "torch._dynamo", "torch.export"):
        logging.getLogger(name).setLevel(logging.ERROR)


def source_entries(source_path: Path, scratch: Path, with_files: bool = True) -> list[tuple[Any, ...]]:
    """Every entry of a pool with its masks, scores and (materialised under `scratch`) model directory."""
    from edge_smsp.pool import Pool

    with Pool(source_path, create=False) as source:
        return [
            (
                entry,
                source.entry_masks(entry.id),
                source.entry_scores(entry.id),
                source.materialise_model_dir(entry.id, scratch / f"entry-{entry.id}") if with_files else None,
            )
            for entry in source.entries()
        ]


def rebuilt_pool(path: Path, count: int, fill: Callable[[Any], None]) -> Path:
    """`path` when it already holds `count` entries; else a new pool, filled by `fill(pool)` under a temporary
    name and renamed into place (an interrupted build never looks finished)."""
    from edge_smsp.pool import Pool

    if path.exists():
        with Pool(path, create=False) as existing:
            if len(existing.entries()) == count:
                return path
        path.unlink()
    partial = path.with_name(path.name + ".partial")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    with Pool(partial) as pool:
        fill(pool)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial.replace(path)
    return path
