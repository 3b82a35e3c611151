"""Saving adapted models, storing them as pool entries, and building a pool from scratch-pruned tasks."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from edge_smsp.adaptation.config import AdaptConfig, AdaptResult
from edge_smsp.adaptation.pipeline import adapt
from edge_smsp.core.errors import PoolError, PruneError
from edge_smsp.data.tasks import Task
from edge_smsp.models.prune import backbone_group_sizes, kept_mask
from edge_smsp.models.pruned_model import save_pruned
from edge_smsp.models.zoo import backbone_spec, weights_hash
from edge_smsp.pool import (
    DEFAULT_LEASE_SECONDS,
    BackboneRecord,
    BuildKey,
    NewEntry,
    Pool,
    TaskRecord,
    new_entry,
)
from edge_smsp.pool.build.loop import BuildStep, BuiltTask, InProcessRunner, TaskOutcome, run_build


def backbone_record(backbone: nn.Module, image_size: int) -> BackboneRecord:
    """How the pool identifies a backbone: its name and the hash of its weights."""
    spec = backbone_spec(backbone)
    return BackboneRecord(
        name=spec.name, weights_hash=weights_hash(backbone), image_size=image_size, checkpoint=spec.checkpoint
    )


def task_record(task: Task) -> TaskRecord:
    """The pool's description of a task."""
    return TaskRecord(
        task_key=task.task_id,
        dataset=task.dataset,
        classes=tuple(task.classes),
        seed=task.seed,
        n_train=len(task.train),
        n_val=len(task.val),
        class_names=tuple(task.class_names),
    )


def save_adapted(result: AdaptResult, out_dir: str | os.PathLike[str]) -> Path:
    """Save the adapted model (loadable with pruned_model.load_pruned) with its task and method in the metadata."""
    return save_pruned(
        result.model,
        out_dir,
        {
            "class_names": list(result.task.class_names),
            "task": result.task.task_id,
            "classes": list(result.task.classes),
            "dataset": result.task.dataset,
            "ratio": result.ratio,
            "method": result.method,
            "iters": result.iters,
            "val_accuracy": result.val_accuracy,
            "mean": list(result.task.mean),
            "std": list(result.task.std),
        },
    )


def finished_entry(backbone: nn.Module, result: AdaptResult) -> NewEntry:
    """An adapted model (mask, scores, weights) checked and encoded as a pool entry of `backbone`."""
    record = backbone_record(backbone, result.summary.image_size)
    with tempfile.TemporaryDirectory(prefix="edge-smsp-entry-") as scratch_dir:
        return new_entry(
            task=task_record(result.task),
            backbone=record,
            ratio=result.ratio,
            method=result.config.pool_method,
            iters=result.iters,
            val_accuracy=result.val_accuracy,
            masks=kept_mask(result.model),
            scores=_backbone_scores(result.unit_scores, backbone_group_sizes(result.model)),
            model_dir=save_adapted(result, Path(scratch_dir) / "model"),
            extra={
                "similar_tasks": [similar.task_id for similar in result.similar_tasks if similar.selected]
            },
        )


ANY_ENTRY = "any"  # add_to_pool's `replacing`: replace whatever entry holds the key


def add_to_pool(
    pool: Pool, backbone: nn.Module, result: AdaptResult, *, replacing: int | None | str = ANY_ENTRY
) -> int:
    """Store an adapted model as a pool entry (replacing one of the same key), and its task's descriptor when the
    pool has none yet; returns the entry id. With `replacing` (entry_before: the key's entry when the run began)
    an entry another run stored meanwhile is kept and this one refused (PoolError), not silently replaced."""
    record = backbone_record(backbone, result.summary.image_size)
    if not pool.has_descriptor(result.task.task_id, record):
        describe_task(pool, backbone, result.task, result.descriptor)
    entry = finished_entry(backbone, result)
    if replacing == ANY_ENTRY:
        return pool.commit_entry(entry, replace=True)
    return pool.commit_replacing(entry, replacing if isinstance(replacing, int) else None)


def entry_before(pool: Pool, backbone: nn.Module, task: Task, config: AdaptConfig) -> int | None | str:
    """The id of the entry an adaptation of `task` with `config` will replace, read before it runs (ANY_ENTRY when
    the key is only known after it: no ratio given)."""
    if config.ratio is None:
        return ANY_ENTRY
    if not pool.path.exists():  # a lazy pool is made when the entry is stored, not before the run
        return None
    return pool.entry_id(build_keys(backbone, [task], config)[0])


def build_entry(backbone: nn.Module, task: Task, config: AdaptConfig, progress: bool = False) -> BuiltTask:
    """The per-task step of a pool build: prune `task` from scratch and encode the finished entry."""
    result = adapt(backbone, None, task, config, progress=progress)
    return BuiltTask(finished_entry(backbone, result), result.to_dict())


def describe_task(
    pool: Pool,
    backbone: nn.Module,
    task: Task,
    descriptor: np.ndarray | None = None,
    record: TaskRecord | None = None,
) -> None:
    """Store the task's descriptor for this backbone (computed here unless given: one forward pass), under
    `record` (default: the task's own record)."""
    from edge_smsp.transfer.estimators.base import DESCRIPTOR_SAMPLES, DESCRIPTOR_SEED
    from edge_smsp.transfer.task_descriptor import task_descriptor

    if descriptor is None:
        descriptor = task_descriptor(backbone, task, samples=DESCRIPTOR_SAMPLES, seed=DESCRIPTOR_SEED)
    pool.put_descriptor(
        record or task_record(task),
        backbone_record(backbone, task.image_size),
        descriptor,
        samples=DESCRIPTOR_SAMPLES,
        seed=DESCRIPTOR_SEED,
    )


def build_pool(
    backbone: nn.Module,
    pool: Pool,
    tasks: Sequence[Task],
    config: AdaptConfig,
    *,
    progress: bool = False,
    on_task: Callable[[TaskOutcome], None] | None = None,
    on_wait: Callable[[Task, str], None] | None = None,
    step: BuildStep = build_entry,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> list[int]:
    """Prune every task from scratch and store it, in this process; returns the ids this build added.
    Tasks in the pool are skipped (resumable); tasks another build has claimed are left to it (see
    edge_smsp.pool.build.loop), so concurrent builds on one pool do each task once."""
    describe_missing(pool, backbone, tasks)
    runner = InProcessRunner(backbone, config, step, progress)
    return run_build(
        pool,
        tasks,
        build_keys(backbone, tasks, config),
        runner,
        on_task=on_task,
        on_wait=on_wait,
        lease_seconds=lease_seconds,
    )


def describe_missing(pool: Pool, backbone: nn.Module, tasks: Sequence[Task]) -> None:
    """Store the descriptor of every task the pool has none for (the driver does it: one forward pass each)."""
    record = backbone_record(backbone, task_image_size(tasks))
    for task in tasks:
        if not pool.has_descriptor(task.task_id, record):
            describe_task(pool, backbone, task)


def build_keys(backbone: nn.Module, tasks: Sequence[Task], config: AdaptConfig) -> list[BuildKey]:
    """The pool key each task's entry will fill."""
    if config.ratio is None:
        raise PruneError("building a pool needs a pruning ratio (AdaptConfig.ratio)")
    record = backbone_record(backbone, task_image_size(tasks))
    return [
        BuildKey(
            task_key=task.task_id,
            weights_hash=record.weights_hash,
            image_size=record.image_size,
            ratio=config.ratio,
            method=config.pool_method,
            iters=config.iters,
        )
        for task in tasks
    ]


def index_pool(
    pool: Pool,
    backbone: nn.Module,
    image_size: int,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    on_task: Callable[[TaskRecord], None] | None = None,
) -> tuple[list[TaskRecord], int]:
    """Describe every task of this backbone's entries at `image_size` that has no descriptor yet, reloading
    its images from its dataset; each is committed on its own, so an interrupted run resumes. Returns the tasks
    described and how many already were."""
    from tqdm import tqdm

    from edge_smsp.data.tasks import load_task
    from edge_smsp.models.zoo import backbone_spec

    record = backbone_record(backbone, image_size)
    tasks = {
        entry.task.task_key: entry.task
        for entry in pool.entries(backbone_hash=record.weights_hash, image_size=image_size)
    }
    missing = [task for key, task in tasks.items() if not pool.has_descriptor(key, record)]
    spec = backbone_spec(backbone)
    for task in tqdm(missing, desc=f"describe tasks ({image_size} px)", unit="task", disable=not progress):
        count = len(task.classes)
        images = load_task(
            task.dataset,
            task.classes,
            data_dir=data_dir,
            image_size=image_size,
            mean=spec.mean,
            std=spec.std,
            seed=task.seed,
            train_per_class=max(1, task.n_train // count),
            val_per_class=max(1, task.n_val // count),
        )
        describe_task(pool, backbone, images, record=task)
        if on_task is not None:
            on_task(task)
    return missing, len(tasks) - len(missing)


def task_image_size(tasks: Sequence[Task]) -> int:
    """The one input size all tasks of a pool build share."""
    sizes = {task.image_size for task in tasks}
    if len(sizes) != 1:
        raise PoolError(f"all tasks of one pool build must share one image size, got {sorted(sizes)}")
    return sizes.pop()


def _backbone_scores(scores: dict[str, np.ndarray], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Scores over the backbone's units (SMSP and one-shot scores already are; keep only matching groups)."""
    return {
        key: np.asarray(scores[key], dtype=np.float64)
        for key in sizes
        if len(scores.get(key, ())) == sizes[key]
    }
