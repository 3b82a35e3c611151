"""The shared study: one pool and one set of adaptation runs, computed once, read by every benchmark.

`accuracy`, `budgets`, `tuning`, `mechanism` and `adapt_time` all call `Study.ensure(...)` for the runs they
need; finished runs are cached in results/study.<mode>.json (and the pool in results/tmp/<mode>/pool.sqlite),
so a rerun, or another benchmark, skips them. Runs execute in single-thread worker processes: on shared
cores, PyTorch's multi-threaded kernels slow down by 5-15x whenever another process takes a core, a single
thread per process does not.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    BACKBONE,
    DATASET,
    PAPER_VARIANT,
    SETTINGS,
    RunCache,
    StudySettings,
    default_workers,
    log,
    pack_mask,
    quiet_warnings,
    result_path,
    tmp_dir,
)

POOL_METHODS = ("smsp", "smsp-random")
ALL_ENTRIES = 999  # top_k meaning "every pool entry"


@dataclass(frozen=True)
class RunSpec:
    """One adaptation: a method at a ratio and iteration budget on one task (held-out, or a left-out pool task)."""

    phase: str  # "heldout": a new task against the whole pool; "loo": a pool task against the pool without it
    classes: tuple[int, ...]
    method: str
    ratio: float
    iters: int
    seed: int
    top_k: int = 5
    weighting: str = "uniform"
    mask_source: str = "masks"
    export: bool = False

    @property
    def variant(self) -> str:
        """Method name, with K, weighting and mask source for the pool methods."""
        if self.method not in POOL_METHODS:
            return self.method
        k = "all" if self.top_k >= ALL_ENTRIES else str(self.top_k)
        if self.method == "smsp-random":
            return f"smsp-random[k{k}]"
        return f"smsp[k{k},{self.weighting},{self.mask_source}]"

    @property
    def key(self) -> str:
        """Cache key: everything that changes the result."""
        classes = "-".join(map(str, self.classes))
        return f"{self.phase}|{classes}|{self.variant}|r{self.ratio:g}|it{self.iters}|s{self.seed}"


def variant_spec(
    phase: str,
    classes: Sequence[int],
    variant: Sequence[Any],
    ratio: float,
    iters: int,
    seed: int,
    export: bool = False,
) -> RunSpec:
    """A RunSpec from a (method, top_k, weighting, mask_source) tuple."""
    method, top_k, weighting, mask_source = variant
    if method not in POOL_METHODS:
        return RunSpec(phase, tuple(classes), method, ratio, iters, seed, export=export)
    return RunSpec(
        phase,
        tuple(classes),
        method,
        ratio,
        iters,
        seed,
        int(top_k),
        weighting or "uniform",
        mask_source or "masks",
        export,
    )


def paper_variant_name() -> str:
    """Display name of the paper's default SMSP configuration."""
    return variant_spec("heldout", (0, 1), PAPER_VARIANT, 0.5, 1, 0).variant


class Study:
    """The pool and the runs of one mode, in one results directory."""

    def __init__(self, mode: str, results_dir: Path, workers: int | None = None) -> None:
        self.settings: StudySettings = SETTINGS[mode]
        self.mode = mode
        self.results_dir = Path(results_dir)
        self.tmp = tmp_dir(self.results_dir, mode)
        self.pool_path = self.tmp / "pool.sqlite"
        self.workers = workers or default_workers(mode)
        self.cache = RunCache(
            result_path(self.results_dir, "study", mode), meta={"settings": self.settings.to_dict()}
        )
        from edge_smsp.data import generate_tasks

        settings = self.settings
        every = generate_tasks(
            DATASET, settings.pool_tasks + settings.new_tasks, settings.classes_per_task, settings.task_seed
        )
        # Pool and held-out tasks are distinct class sets (they may share single classes).
        self.pool_classes: list[tuple[int, ...]] = [
            tuple(int(c) for c in task) for task in every[: settings.pool_tasks]
        ]
        self.new_classes: list[tuple[int, ...]] = [
            tuple(int(c) for c in task) for task in every[settings.pool_tasks :]
        ]

    # --- specs ---------------------------------------------------------------------------------------------

    def task_seed(self, classes: Sequence[int]) -> int:
        """One seed per task, shared by every method on it (paired comparison), different across tasks."""
        ordered = self.pool_classes + self.new_classes
        return self.settings.seed + ordered.index(tuple(classes))

    def core_specs(self, extra_variants: Sequence[Sequence[Any]] = ()) -> list[RunSpec]:
        """The accuracy table: every one-shot method at every ratio, and scratch at 10x the iterations."""
        s = self.settings
        specs = []
        for classes in self.new_classes:
            seed = self.task_seed(classes)
            for ratio in s.ratios:
                for method in s.oneshot_methods:
                    variant = PAPER_VARIANT if method == "smsp" else (method, 5, "uniform", "masks")
                    export = method == "smsp" and ratio == s.export_ratio
                    specs.append(
                        variant_spec("heldout", classes, variant, ratio, s.oneshot_iters, seed, export)
                    )
                for variant in extra_variants:
                    specs.append(variant_spec("heldout", classes, variant, ratio, s.oneshot_iters, seed))
            for ratio in s.scratch_ratios:
                export = ratio == s.export_ratio
                specs.append(
                    RunSpec("heldout", classes, "scratch", ratio, s.scratch_iters, seed, export=export)
                )
        return specs

    def budget_specs(self) -> list[RunSpec]:
        """Accuracy vs ratio: the budget methods at every budget ratio (ratios of the core table are shared)."""
        s = self.settings
        specs = []
        for classes in self.new_classes:
            seed = self.task_seed(classes)
            for method in s.budget_methods:
                variant = PAPER_VARIANT if method == "smsp" else (method, 5, "uniform", "masks")
                for ratio in s.budget_ratios:
                    export = method == "smsp" and ratio == s.export_ratio
                    specs.append(
                        variant_spec("heldout", classes, variant, ratio, s.oneshot_iters, seed, export)
                    )
        return specs

    def tuning_specs(self) -> list[RunSpec]:
        """Leave-one-out on pool tasks only: each variant adapts a pool task from the pool without it."""
        s = self.settings
        specs = []
        for classes in self.pool_classes[: s.tuning_tasks]:
            seed = self.task_seed(classes)
            for variant in s.tuning_variants:
                # K larger than the pool means "every entry" (adapt takes the top min(K, pool size)).
                specs.append(variant_spec("loo", classes, variant, s.tuning_ratio, s.oneshot_iters, seed))
        return specs

    # --- running --------------------------------------------------------------------------------------------

    def pool_key(self, classes: Sequence[int]) -> str:
        """Cache key of a pool build."""
        s = self.settings
        return f"pool|{'-'.join(map(str, classes))}|scratch|r{s.pool_ratio:g}|it{s.pool_iters}"

    def ensure_pool(self) -> list[dict[str, Any]]:
        """Build the missing pool entries (scratch, in parallel workers); the pool build records in pool order."""
        self.cache.reload()
        jobs = [
            (
                self.pool_key(classes),
                _build_pool_entry,
                (self.mode, str(self.pool_path), classes, self.task_seed(classes)),
            )
            for classes in self.pool_classes
            if self.cache.get(self.pool_key(classes)) is None
        ]
        if jobs:
            log(
                f"pool: building {len(jobs)} of {len(self.pool_classes)} entries ({self.settings.pool_iters} iters each)"
            )
        self._execute(jobs, "pool")
        return [self.cache.get(self.pool_key(classes)) for classes in self.pool_classes]

    def ensure(self, specs: Sequence[RunSpec], label: str = "runs") -> list[dict[str, Any]]:
        """Run what is missing (the pool first), return the records of `specs` in order."""
        self.ensure_pool()
        self.cache.reload()
        unique = list(dict.fromkeys(specs))
        missing = [spec for spec in unique if self.cache.get(spec.key) is None]
        # Longest runs first, so the two workers finish together.
        missing.sort(key=lambda spec: -spec.iters)
        jobs = []
        for spec in missing:
            pool_path = self.loo_pool(spec.classes) if spec.phase == "loo" else self.pool_path
            jobs.append((spec.key, _run_spec, (self.mode, str(pool_path), asdict(spec), str(self.tmp))))
        if jobs:
            log(f"{label}: {len(unique) - len(missing)} of {len(unique)} runs cached, running {len(missing)}")
        self._execute(jobs, label)
        return [self.cache.get(spec.key) for spec in specs]

    def loo_pool(self, classes: Sequence[int]) -> Path:
        """A copy of the pool without the entry of `classes` (SQLite backup API: WAL content included)."""
        from edge_smsp.pool import Pool

        path = self.tmp / "loo" / f"without-{'-'.join(map(str, classes))}.sqlite"
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        source, target = sqlite3.connect(self.pool_path), sqlite3.connect(partial)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        task_key = f"{DATASET}:{'-'.join(map(str, classes))}"
        with Pool(partial, create=False) as pool:
            for entry in pool.entries():
                if entry.task.task_key == task_key:
                    pool.delete_entry(entry.id)
        # Closing the last connection checkpoints the WAL into the file; a leftover WAL would be lost by the rename.
        if Path(f"{partial}-wal").exists():
            raise RuntimeError(f"{partial}-wal was not checkpointed on close")
        os.replace(partial, path)
        return path

    def _execute(self, jobs: list[tuple[str, Callable[..., dict[str, Any]], tuple]], label: str) -> None:
        if not jobs:
            return
        started = time.perf_counter()
        done = 0

        def finished(key: str, record: dict[str, Any]) -> None:
            nonlocal done
            done += 1
            self.cache.put(key, record)
            elapsed = time.perf_counter() - started
            eta = elapsed / done * (len(jobs) - done)
            accuracy = record.get("val_accuracy")
            seconds = record.get("seconds", {}).get("total")
            log(
                f"{label} [{done}/{len(jobs)}] {key}: acc {accuracy:.4f} in {seconds:.0f} s "
                f"(elapsed {elapsed / 60:.1f} min, eta {eta / 60:.1f} min)"
            )

        if self.workers <= 1:
            with _single_thread():
                for key, function, arguments in jobs:
                    finished(key, function(*arguments))
            return
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers, mp_context=context, initializer=_worker_init
        ) as executor:
            futures = {executor.submit(function, *arguments): key for key, function, arguments in jobs}
            for future in concurrent.futures.as_completed(futures):
                finished(futures[future], future.result())


# --- worker side -------------------------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    quiet_warnings()


class _single_thread:
    """In-process runs (one worker): one thread for their duration, the caller's setting restored after."""

    def __enter__(self) -> None:
        import torch

        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)
        quiet_warnings()

    def __exit__(self, *exc_info: object) -> None:
        import torch

        torch.set_num_threads(self.threads)


def study_backbone(mode: str):
    """The study's backbone (bundled ImageNet EfficientNet-Lite0 at the study's image size), loaded once."""
    from edge_smsp.zoo import load_backbone

    key = ("backbone", mode)
    if key not in _STATE:
        _STATE[key] = load_backbone(BACKBONE, pretrained=True, image_size=SETTINGS[mode].image_size)
    return _STATE[key]


def study_task(mode: str, classes: Sequence[int]):
    """A study task (same images for every method and run), loaded once per process."""
    from edge_smsp.data import load_task
    from edge_smsp.zoo import backbone_spec

    key = ("task", mode, tuple(classes))
    if key not in _STATE:
        s = SETTINGS[mode]
        spec = backbone_spec(study_backbone(mode))
        _STATE[key] = load_task(
            DATASET,
            tuple(classes),
            image_size=s.image_size,
            mean=spec.mean,
            std=spec.std,
            seed=s.seed,
            train_per_class=s.train_per_class,
            val_per_class=s.val_per_class,
        )
    return _STATE[key]


def group_sizes(mode: str) -> dict[str, int]:
    """Unit group sizes of the study backbone, in the order masks are packed."""
    from edge_smsp.prune import backbone_group_sizes

    return backbone_group_sizes(study_backbone(mode))


def _build_pool_entry(mode: str, pool_path: str, classes: tuple[int, ...], seed: int) -> dict[str, Any]:
    import torch

    from edge_smsp import smsp
    from edge_smsp.pool import Pool

    s = SETTINGS[mode]
    torch.manual_seed(seed)  # the new head's initial weights come from the global RNG
    backbone = study_backbone(mode)
    task = study_task(mode, classes)
    config = smsp.AdaptConfig(
        ratio=s.pool_ratio,
        iters=s.pool_iters,
        method="scratch",
        scratch_rounds=s.scratch_rounds,
        batch_size=s.batch_size,
        seed=seed,
    )
    results: list[Any] = []
    with Pool(pool_path) as pool:
        smsp.build_pool(backbone, pool, [task], config, on_task=lambda _task, result: results.append(result))
        entry = next(e for e in pool.entries() if e.task.task_key == task.task_id and e.ratio == s.pool_ratio)
        masks = pool.entry_masks(entry.id)
    result = results[0] if results else None
    kept = {key: np.flatnonzero(mask).tolist() for key, mask in masks.items()}
    return {
        "phase": "pool",
        "task_id": task.task_id,
        "classes": list(classes),
        "class_names": list(task.class_names),
        "entry_id": entry.id,
        "val_accuracy": entry.val_accuracy,
        "iters": entry.iters,
        "ratio": entry.ratio,
        "params_after": result.summary.params_after if result else None,
        "macs_after": result.summary.macs_after if result else None,
        "seconds": result.seconds if result else {"total": float("nan")},
        "mask": pack_mask(kept, group_sizes(mode)),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _run_spec(mode: str, pool_path: str, spec_fields: dict[str, Any], tmp: str) -> dict[str, Any]:
    import torch

    from edge_smsp import smsp
    from edge_smsp.pool import Pool

    spec = RunSpec(**{**spec_fields, "classes": tuple(spec_fields["classes"])})
    s = SETTINGS[mode]
    # adapt() draws the new head's initial weights from the global RNG: seed it, so that every method on a
    # task starts from the same head whatever ran before in this worker (a paired comparison, reproducible).
    torch.manual_seed(spec.seed)
    backbone = study_backbone(mode)
    task = study_task(mode, spec.classes)
    config = smsp.AdaptConfig(
        ratio=spec.ratio,
        iters=spec.iters,
        method=spec.method,
        top_k=spec.top_k,
        weighting=spec.weighting,
        mask_source=spec.mask_source,
        batch_size=s.batch_size,
        seed=spec.seed,
        similarity_samples=s.similarity_samples,
        scratch_rounds=s.scratch_rounds,
    )
    if spec.method in POOL_METHODS:
        with Pool(pool_path, create=False) as pool:
            result = smsp.adapt(backbone, pool, task, config)
    else:
        result = smsp.adapt(backbone, None, task, config)
    digest = hashlib.sha256()
    for key in sorted(result.unit_scores):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(result.unit_scores[key], dtype=np.float64).tobytes())
    record = result.to_dict()
    record.pop("groups", None)
    record.update(
        {
            "key": spec.key,
            "phase": spec.phase,
            "variant": spec.variant,
            "seed": spec.seed,
            "top_k": spec.top_k,
            "weighting": spec.weighting,
            "mask_source": spec.mask_source,
            "class_names": list(task.class_names),
            "mask": pack_mask(result.summary.kept_indices, group_sizes(mode)),
            "score_digest": digest.hexdigest()[:16],
            "threads": torch.get_num_threads(),
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    if spec.export:
        record["export"] = _export(result, Path(tmp) / "onnx", spec.key)
        record["seconds"]["export"] = record["export"]["seconds"]
    return record


def _export(result: Any, out_dir: Path, key: str) -> dict[str, Any]:
    from edge_smsp.export import export_onnx
    from edge_smsp.zoo import backbone_spec

    out_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:12]
    spec = backbone_spec(result.model)
    exported = export_onnx(
        result.model,
        out_dir / f"{name}.onnx",
        image_size=result.summary.image_size,
        metadata={
            "labels": list(result.task.class_names),
            "mean": list(result.task.mean),
            "std": list(result.task.std),
            "backbone": spec.name,
            "ratio": result.ratio,
            "task": result.task.task_id,
        },
    )
    return {
        "seconds": round(exported.seconds, 3),
        "size_bytes": exported.size_bytes,
        "max_abs_diff": exported.max_abs_diff,
        "onnx": str(exported.onnx_path),
    }


def clean_tmp(results_dir: Path, mode: str) -> None:
    """Remove the regenerable artefacts of a mode (pools, ONNX files)."""
    shutil.rmtree(Path(results_dir) / "tmp" / mode, ignore_errors=True)
