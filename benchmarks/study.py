"""The shared study: one pool and one set of adaptation runs, computed once, read by every benchmark.

`accuracy`, `budgets`, `tuning`, `mechanism` and `adapt_time` all call `Study.ensure(...)` for the runs they
need; finished runs are cached in results/study.<mode>.json (and the pool in results/tmp/<mode>/pool.sqlite),
so a rerun, or another benchmark, skips them. Runs execute in single-thread worker processes
(benchmarks.workers): on shared cores, PyTorch's multi-threaded kernels slow down by 5-15x whenever another
process takes a core, a single thread per process does not.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RunCache,
    default_workers,
    log,
    result_path,
    tmp_dir,
)
from benchmarks.settings import (
    DATASET,
    PAPER_VARIANT,
    SETTINGS,
    StudySettings,
)
from benchmarks.specs import RunSpec, variant_spec
from benchmarks.workers import build_pool_entry, run_spec, single_thread, worker_init
from edge_smsp.criteria import SCRATCH


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
        from edge_smsp.data.tasks import generate_tasks

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
                    RunSpec("heldout", classes, SCRATCH, ratio, s.scratch_iters, seed, export=export)
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
                build_pool_entry,
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
            jobs.append((spec.key, run_spec, (self.mode, str(pool_path), asdict(spec), str(self.tmp))))
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
            with single_thread():
                for key, function, arguments in jobs:
                    finished(key, function(*arguments))
            return
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers, mp_context=context, initializer=worker_init
        ) as executor:
            futures = {executor.submit(function, *arguments): key for key, function, arguments in jobs}
            for future in concurrent.futures.as_completed(futures):
                finished(futures[future], future.result())


def clean_tmp(results_dir: Path, mode: str) -> None:
    """Remove the regenerable artefacts of a mode (pools, ONNX files)."""
    shutil.rmtree(Path(results_dir) / "tmp" / mode, ignore_errors=True)
