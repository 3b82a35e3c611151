"""What every benchmark shares: modes and their settings, result files, machine facts, statistics, progress."""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import fcntl
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_smsp.fileio import write_atomically

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
DEFAULT_RESULTS_DIR = BENCHMARKS_DIR / "results"
MODES = ("smoke", "quick", "full")
BACKBONE = "efficientnet_lite0"
DATASET = "fashion-mnist"


@dataclass(frozen=True)
class StudySettings:
    """One mode of the shared study: the pool, the held-out tasks and every run the benchmarks read."""

    mode: str
    image_size: int  # Fashion-MNIST is 28 px: 32 px loses nothing and keeps fine-tuning cheap on a CPU
    batch_size: int
    train_per_class: int
    val_per_class: int
    classes_per_task: int
    pool_tasks: int
    new_tasks: int
    task_seed: int
    pool_ratio: float
    pool_iters: int
    scratch_rounds: int
    ratios: tuple[float, ...]  # the accuracy table's ratios
    oneshot_methods: tuple[str, ...]
    oneshot_iters: int
    scratch_iters: int  # 10x oneshot_iters: the paper's headline comparison
    scratch_ratios: tuple[float, ...]
    export_ratio: float  # the ratio at which smsp and scratch models are also exported (time-to-adapt)
    budget_ratios: tuple[float, ...]
    budget_methods: tuple[str, ...]
    tuning_tasks: int  # leave-one-out over this many pool tasks
    tuning_ratio: float
    tuning_variants: tuple[tuple[str, int, str, str], ...]  # (method, top_k, weighting, mask_source)
    similarity_samples: int
    simcost_sizes: tuple[int, ...]
    simcost_sample: int  # pools larger than this are timed on a sample of this many entries and extrapolated
    speed_models: tuple[str, ...]
    speed_sizes: tuple[int, ...]
    speed_ratios: tuple[float, ...]
    speed_rounds: int
    speed_runs_per_round: int
    runtime_models: tuple[tuple[str, int], ...]  # (model, size) also measured through the device runtime
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)


# The paper's defaults: top-5 similar tasks, binary masks summed uniformly.
PAPER_VARIANT = ("smsp", 5, "uniform", "masks")

_FULL_TUNING = (
    ("smsp", 1, "uniform", "masks"),
    ("smsp", 3, "uniform", "masks"),
    PAPER_VARIANT,
    ("smsp", 5, "leep", "masks"),
    ("smsp", 5, "uniform", "scores"),
    ("smsp", 999, "uniform", "masks"),  # every pool entry: a plain consensus mask
    ("smsp-random", 5, "uniform", "masks"),
    ("taylor", 0, "", ""),  # the strongest one-shot baseline in the quick study: the bar to clear
)

SETTINGS: dict[str, StudySettings] = {
    "smoke": StudySettings(
        mode="smoke",
        image_size=32,
        batch_size=8,
        train_per_class=16,
        val_per_class=8,
        classes_per_task=3,
        pool_tasks=2,
        new_tasks=1,
        task_seed=0,
        pool_ratio=0.5,
        pool_iters=4,
        scratch_rounds=2,
        ratios=(0.5,),
        oneshot_methods=("smsp", "smsp-random", "random", "magnitude", "taylor"),
        oneshot_iters=2,
        scratch_iters=4,
        scratch_ratios=(0.5,),
        export_ratio=0.5,
        budget_ratios=(0.3, 0.5),
        budget_methods=("smsp",),
        tuning_tasks=1,
        tuning_ratio=0.5,
        tuning_variants=(PAPER_VARIANT, ("taylor", 0, "", "")),
        similarity_samples=16,
        simcost_sizes=(2, 4),
        simcost_sample=2,
        speed_models=("efficientnet_lite0",),
        speed_sizes=(32,),
        speed_ratios=(0.0, 0.5),
        speed_rounds=2,
        speed_runs_per_round=5,
        runtime_models=(("efficientnet_lite0", 32),),
    ),
    "quick": StudySettings(
        mode="quick",
        image_size=32,
        batch_size=32,
        train_per_class=300,
        val_per_class=100,
        classes_per_task=3,
        pool_tasks=4,
        new_tasks=2,
        task_seed=0,
        pool_ratio=0.5,
        pool_iters=120,
        scratch_rounds=3,
        ratios=(0.5,),
        oneshot_methods=("smsp", "smsp-random", "random", "magnitude", "taylor"),
        oneshot_iters=40,
        scratch_iters=400,
        scratch_ratios=(0.5,),
        export_ratio=0.5,
        budget_ratios=(0.3, 0.5, 0.7),
        budget_methods=("smsp", "taylor"),
        tuning_tasks=2,
        tuning_ratio=0.5,
        tuning_variants=(("smsp", 1, "uniform", "masks"), PAPER_VARIANT, ("taylor", 0, "", "")),
        similarity_samples=300,
        simcost_sizes=(10, 100, 1000),
        simcost_sample=10,
        speed_models=("resnet18", "deit_small_patch16_224", "efficientnet_lite0"),
        speed_sizes=(224, 32),
        speed_ratios=(0.0, 0.5),
        speed_rounds=3,
        speed_runs_per_round=10,
        runtime_models=(("efficientnet_lite0", 32),),
    ),
    "full": StudySettings(
        mode="full",
        image_size=32,
        batch_size=32,
        train_per_class=500,
        val_per_class=200,
        classes_per_task=3,
        pool_tasks=12,
        new_tasks=6,
        task_seed=0,
        pool_ratio=0.5,
        pool_iters=400,
        scratch_rounds=4,
        ratios=(0.3, 0.5, 0.7),
        oneshot_methods=("smsp", "smsp-random", "random", "magnitude", "taylor"),
        oneshot_iters=100,
        scratch_iters=1000,
        scratch_ratios=(0.5,),
        export_ratio=0.5,
        budget_ratios=(0.3, 0.4, 0.5, 0.6, 0.7),
        budget_methods=("smsp", "taylor"),
        tuning_tasks=4,
        tuning_ratio=0.5,
        tuning_variants=_FULL_TUNING,
        similarity_samples=500,
        simcost_sizes=(10, 100, 1000),
        simcost_sample=100,
        speed_models=("resnet18", "deit_small_patch16_224", "efficientnet_lite0"),
        speed_sizes=(224, 32),
        speed_ratios=(0.0, 0.3, 0.5, 0.7),
        speed_rounds=5,
        speed_runs_per_round=20,
        runtime_models=(("efficientnet_lite0", 224), ("efficientnet_lite0", 32), ("resnet18", 224)),
    ),
}


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


# --- statistics ---------------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation, min, max and count."""
    array = np.asarray([value for value in values if value is not None and math.isfinite(value)], dtype=float)
    if array.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {
        "mean": float(array.mean()),
        "std": std,
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(array.size),
    }


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties get the average of their positions (as Spearman's rho needs)."""
    array = np.asarray(values, dtype=float)
    order = np.argsort(array, kind="stable")
    ranks = np.empty(len(array), dtype=float)
    sorted_values = array[order]
    start = 0
    while start < len(array):
        end = start
        while end + 1 < len(array) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson on average ranks); None when either side is constant."""
    if len(x) != len(y) or len(x) < 3:
        return None
    rank_x, rank_y = average_ranks(x), average_ranks(y)
    if rank_x.std() == 0 or rank_y.std() == 0:
        return None
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


# --- masks ------------------------------------------------------------------------------------------------------


def pack_mask(kept: Mapping[str, Sequence[int]], sizes: Mapping[str, int]) -> str:
    """Kept unit indices of every group (in `sizes` order) as one base64 bit string."""
    bits = []
    for key, size in sizes.items():
        row = np.zeros(size, dtype=bool)
        row[list(kept.get(key, ()))] = True
        bits.append(row)
    return base64.b64encode(np.packbits(np.concatenate(bits)).tobytes()).decode("ascii")


def unpack_mask(packed: str, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Inverse of pack_mask."""
    total = sum(sizes.values())
    bits = np.unpackbits(np.frombuffer(base64.b64decode(packed), dtype=np.uint8))[:total].astype(bool)
    masks, start = {}, 0
    for key, size in sizes.items():
        masks[key] = bits[start : start + size]
        start += size
    return masks


def iou(first: Mapping[str, np.ndarray], second: Mapping[str, np.ndarray]) -> tuple[float, dict[str, float]]:
    """Overall IoU of kept units (all groups pooled) and the IoU of each group."""
    per_group, inter_total, union_total = {}, 0, 0
    for key, mask in first.items():
        a, b = np.asarray(mask, dtype=bool), np.asarray(second[key], dtype=bool)
        inter, union = int(np.sum(a & b)), int(np.sum(a | b))
        per_group[key] = inter / union if union else 1.0
        inter_total, union_total = inter_total + inter, union_total + union
    return (inter_total / union_total if union_total else 1.0), per_group


def chance_iou(counts: Mapping[str, int], sizes: Mapping[str, int]) -> float:
    """Expected overall IoU of two independent random masks keeping `counts` of `sizes` units per group."""
    inter = sum(counts[key] ** 2 / sizes[key] for key in sizes)
    kept = sum(counts[key] for key in sizes)
    return inter / (2 * kept - inter)
