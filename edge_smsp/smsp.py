"""SMSP: rank pool entries by LEEP on a new task, sum the top-K masks into a score mask, prune once, adapt.

Baselines take the same path and differ only in where the unit scores come from (see `METHODS`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_smsp.data import Task
from edge_smsp.errors import NoPoolEntriesError, PoolError, PruneError
from edge_smsp.importance import score_units, unit_l1_norms
from edge_smsp.leep import leep
from edge_smsp.methods import METHODS, POOL_METHODS
from edge_smsp.pool import BackboneRecord, Pool, PoolEntry, TaskRecord
from edge_smsp.prune import (
    PruneSummary,
    backbone_group_sizes,
    checked_ratio,
    keep_count,
    kept_indices,
    kept_mask,
    load_pruned,
    prune,
    replace_classifier,
    save_pruned,
)
from edge_smsp.train import evaluate, finetune, predict_proba
from edge_smsp.units import group_layouts
from edge_smsp.zoo import backbone_spec, weights_hash


@dataclass(frozen=True)
class AdaptConfig:
    """Everything about one adaptation besides the backbone, pool and task."""

    ratio: float
    iters: int = 100
    method: str = "smsp"
    top_k: int = 5
    weighting: str = "uniform"  # "uniform" sums binary masks; "leep" weights them by normalised similarity
    mask_source: str = (
        "masks"  # "masks" (binary, as in the paper) or "scores" (the entries' real-valued ranks)
    )
    round_to: int = 8
    batch_size: int = 32
    lr: float | None = None
    optimizer: str = "sgd"
    seed: int = 0
    similarity_samples: int = 500
    taylor_batches: int = 4
    warmup_fraction: float = 0.2  # of the iterations, spent before one-shot Taylor scores the new task
    scratch_rounds: int = 4
    scratch_importance: str = "taylor"  # the pool-building criterion: "taylor" or "magnitude"

    def __post_init__(self) -> None:
        checked_ratio(self.ratio)
        if self.method not in METHODS:
            raise PruneError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.weighting not in ("uniform", "leep"):
            raise PruneError(f"weighting must be 'uniform' or 'leep', got {self.weighting!r}")
        if self.mask_source not in ("masks", "scores"):
            raise PruneError(f"mask_source must be 'masks' or 'scores', got {self.mask_source!r}")
        if self.iters < 0:
            raise PruneError(f"iterations must be >= 0, got {self.iters}")
        if self.top_k < 1:
            raise PruneError(f"top-k must be >= 1, got {self.top_k}")
        if self.scratch_importance not in ("taylor", "magnitude"):
            raise PruneError(
                f"scratch importance must be 'taylor' or 'magnitude', got {self.scratch_importance!r}"
            )
        if self.scratch_rounds < 1:
            raise PruneError(f"scratch rounds must be >= 1, got {self.scratch_rounds}")

    @property
    def pool_method(self) -> str:
        """How pool entries made with this config are labelled (scratch names its criterion and rounds)."""
        if self.method == "scratch":
            return f"scratch-{self.scratch_importance}-r{self.scratch_rounds}"
        return self.method


@dataclass(frozen=True)
class SimilarTask:
    """One pool entry's similarity to the new task."""

    entry_id: int
    task_id: str
    classes: tuple[int, ...]
    leep: float | None
    selected: bool


@dataclass
class AdaptResult:
    """What one adaptation produced; `model` is the adapted, physically pruned network."""

    config: AdaptConfig
    val_accuracy: float
    summary: PruneSummary
    similar_tasks: list[SimilarTask]
    seconds: dict[str, float]
    model: nn.Module = field(repr=False)
    unit_scores: dict[str, np.ndarray] = field(repr=False)
    task: Task = field(repr=False)

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def ratio(self) -> float:
        return self.config.ratio

    @property
    def iters(self) -> int:
        return self.config.iters

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report (the model itself is left out)."""
        return {
            "method": self.method,
            "ratio": self.ratio,
            "iters": self.iters,
            "val_accuracy": self.val_accuracy,
            "task_id": self.task.task_id,
            "classes": list(self.task.classes),
            "params_before": self.summary.params_before,
            "params_after": self.summary.params_after,
            "macs_before": self.summary.macs_before,
            "macs_after": self.summary.macs_after,
            "image_size": self.summary.image_size,
            "similar_tasks": [dataclasses.asdict(similar) for similar in self.similar_tasks],
            "seconds": self.seconds,
            "groups": self.summary.groups,
        }


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


def pool_entries_for(pool: Pool, backbone: nn.Module, image_size: int) -> list[PoolEntry]:
    """Pool entries pruned from exactly this backbone at this input size; a clear error when there are none."""
    entries = pool.entries(backbone_hash=weights_hash(backbone), image_size=image_size)
    if entries:
        return entries
    sizes = sorted(
        {entry.backbone.image_size for entry in pool.entries(backbone_hash=weights_hash(backbone))}
    )
    if sizes:
        raise NoPoolEntriesError(
            f"pool {pool.path} holds entries for these weights at {', '.join(f'{size} px' for size in sizes)}, "
            f"not {image_size} px; use --image-size {sizes[0]} or build a pool at {image_size} px"
        )
    name = backbone_spec(backbone).name
    others = sorted({entry.backbone.name for entry in pool.entries()})
    if others:
        raise NoPoolEntriesError(
            f"pool {pool.path} holds entries for {', '.join(others)} but none for these {name} weights; "
            f"build one with `edge-smsp pool build --backbone {name}` or choose a baseline (--method magnitude)"
        )
    raise NoPoolEntriesError(
        f"pool {pool.path} is empty; build one with `edge-smsp pool build --backbone {name} ...` "
        "or choose a baseline method (--method random, magnitude or taylor)"
    )


def rank_pool(
    entries: Sequence[PoolEntry],
    pool: Pool,
    task: Task,
    *,
    samples: int = 500,
    batch_size: int = 64,
    seed: int = 0,
) -> list[tuple[PoolEntry, float]]:
    """LEEP of every entry's pruned model on a bounded, seeded sample of the task's training set, best first."""
    images, labels = sample_task(task, samples, seed)
    ranked = []
    with tempfile.TemporaryDirectory(prefix="edge-smsp-pool-") as scratch_dir:
        for entry in entries:
            model_dir = pool.materialise_model_dir(entry.id, f"{scratch_dir}/{entry.id}")
            model, _ = load_pruned(model_dir)
            probabilities = predict_proba(model, images, batch_size=batch_size)
            ranked.append((entry, leep(probabilities, labels)))
    ranked.sort(key=lambda pair: pair[1], reverse=True)
    return ranked


def sample_task(task: Task, samples: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """A seeded sample of at most `samples` training images and their labels."""
    count = min(samples, len(task.train))
    order = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(seed))[:count]
    images, labels = task.train.batch(order)
    return images, labels.numpy().astype(np.int64)


def score_mask(
    pool: Pool,
    selected: Sequence[tuple[PoolEntry, float]],
    *,
    weighting: str = "uniform",
    source: str = "masks",
) -> dict[str, np.ndarray]:
    """S = sum of the selected entries' masks (or real-valued scores), optionally weighted by similarity."""
    if weighting == "leep":
        similarities = np.array([similarity for _, similarity in selected], dtype=np.float64)
        # LEEP is a mean log-likelihood: exp() turns it into a likelihood, normalised to sum to one.
        weights = np.exp(similarities - similarities.max())
        weights /= weights.sum()
    else:
        weights = np.ones(len(selected))
    total: dict[str, np.ndarray] = {}
    for (entry, _), weight in zip(selected, weights, strict=True):
        scores = pool.entry_scores(entry.id) if source == "scores" else None
        if scores is not None:
            arrays = {key: _unit_ranks(values) for key, values in scores.items()}
        else:
            arrays = {
                key: np.asarray(mask, dtype=np.float64) for key, mask in pool.entry_masks(entry.id).items()
            }
        for key, values in arrays.items():
            total[key] = total.get(key, 0.0) + weight * values
    return total


def adapt(
    backbone: nn.Module,
    pool: Pool | None,
    task: Task,
    config: AdaptConfig,
    *,
    progress: bool = False,
) -> AdaptResult:
    """Prune `backbone` for `task` with the configured method, attach a fresh head, fine-tune, evaluate."""
    timings = {"similarity": 0.0, "pruning": 0.0, "finetuning": 0.0}
    similar: list[SimilarTask] = []
    started = time.perf_counter()
    if config.method == "scratch":
        model, summary, scores, finetune_seconds = prune_from_scratch(
            backbone, task, config, progress=progress
        )
        timings["finetuning"] = finetune_seconds
        timings["pruning"] = time.perf_counter() - started - finetune_seconds
    else:
        # The task's head goes on first, so sizes before/after both count the model that is shipped.
        with_head = with_task_head(backbone, task, config.seed)
        warmup_iters = 0
        if config.method in POOL_METHODS:
            if pool is None:
                raise PoolError(f"method {config.method} needs a pool (--pool) built for this backbone")
            similarity_started = time.perf_counter()
            scores, similar = _pool_scores(backbone, pool, task, config)
            timings["similarity"] = time.perf_counter() - similarity_started
        elif config.method == "taylor":
            # Gradients through a random head are noise: train briefly first, from the same iteration budget.
            warmup_iters = round(config.iters * config.warmup_fraction)
            timings["finetuning"] += _finetune(with_head, task, config, warmup_iters, progress)
        pruning_started = time.perf_counter()
        if config.method not in POOL_METHODS:
            scored = with_head if config.method == "taylor" else backbone
            scores = score_units(
                scored, config.method, batches=_batches(task, config, config.taylor_batches), seed=config.seed
            )
        model, summary = prune(
            with_head, scores, config.ratio, round_to=config.round_to, tie_break=unit_l1_norms(backbone)
        )
        timings["pruning"] = time.perf_counter() - pruning_started
        timings["finetuning"] += _finetune(
            model, task, config, config.iters - warmup_iters, progress, seed_offset=1 if warmup_iters else 0
        )
    accuracy = evaluate(model.eval(), task.val, batch_size=max(64, config.batch_size))
    timings["total"] = time.perf_counter() - started
    return AdaptResult(
        config=config,
        val_accuracy=float(accuracy),
        summary=summary,
        similar_tasks=similar,
        seconds={name: round(value, 3) for name, value in timings.items()},
        model=model,
        unit_scores={key: np.asarray(value, dtype=np.float64) for key, value in scores.items()},
        task=task,
    )


def prune_from_scratch(
    backbone: nn.Module, task: Task, config: AdaptConfig, *, progress: bool = False
) -> tuple[nn.Module, PruneSummary, dict[str, np.ndarray], float]:
    """Iterative pruning: fine-tune, then `scratch_rounds` rounds of scoring, pruning towards the ratio and
    fine-tuning (the iterations split evenly over the warm-up and the rounds).

    Returns the model, a summary against the backbone, real-valued unit scores over the backbone's units (units
    that survive longer rank higher) and the seconds spent fine-tuning.
    """
    rounds = config.scratch_rounds
    sizes = backbone_group_sizes(backbone)
    kinds = {layout.key: layout.kind for layout in group_layouts(backbone)}
    final_counts = {
        key: keep_count(size, config.ratio, kinds[key], config.round_to) for key, size in sizes.items()
    }
    survival = {key: np.full(size, float(rounds), dtype=np.float64) for key, size in sizes.items()}
    model = with_task_head(backbone, task, config.seed)
    chunks = _split(config.iters, rounds + 1)
    finetune_seconds = _finetune(model, task, config, chunks[0], progress)
    first_summary: PruneSummary | None = None
    summary: PruneSummary | None = None
    for round_index in range(rounds):
        importance = score_units(
            model,
            config.scratch_importance,
            batches=_batches(task, config, config.taylor_batches, round_index),
            seed=config.seed,
        )
        before = kept_indices(model)
        fraction = (round_index + 1) / rounds
        counts = {
            key: min(
                len(before[key]), max(final_counts[key], round(size - (size - final_counts[key]) * fraction))
            )
            for key, size in sizes.items()
        }
        model, summary = prune(model, importance, keep_counts=counts, round_to=config.round_to)
        first_summary = first_summary or summary
        after = kept_indices(model)
        for key, indices in before.items():
            ranks = _unit_ranks(importance[key])
            removed = sorted(set(indices) - set(after[key]))
            position = {unit: slot for slot, unit in enumerate(indices)}
            for unit in removed:
                survival[key][unit] = round_index + ranks[position[unit]]
            if round_index == rounds - 1:
                for unit in after[key]:
                    survival[key][unit] = rounds + ranks[position[unit]]
        finetune_seconds += _finetune(model, task, config, chunks[round_index + 1], progress, round_index + 1)
    assert summary is not None and first_summary is not None
    total = dataclasses.replace(
        summary,
        ratio=config.ratio,
        params_before=first_summary.params_before,
        macs_before=first_summary.macs_before,
        groups={key: {**summary.groups[key], "size": sizes[key]} for key in summary.groups},
        kept_indices=kept_indices(model),
    )
    return model, total, survival, finetune_seconds


def save_adapted(result: AdaptResult, out_dir: str | os.PathLike[str]) -> Path:
    """Save the adapted model (loadable with prune.load_pruned) with its task and method in the metadata."""
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


def add_to_pool(pool: Pool, backbone: nn.Module, result: AdaptResult) -> int:
    """Store an adapted model (mask, scores, weights) as a new pool entry; returns the entry id."""
    with tempfile.TemporaryDirectory(prefix="edge-smsp-entry-") as scratch_dir:
        model_dir = save_adapted(result, Path(scratch_dir) / "model")
        return _add_entry(pool, backbone, result, model_dir)


def _add_entry(pool: Pool, backbone: nn.Module, result: AdaptResult, model_dir: Path) -> int:
    return pool.add_entry(
        task=task_record(result.task),
        backbone=backbone_record(backbone, result.summary.image_size),
        ratio=result.ratio,
        method=result.config.pool_method,
        iters=result.iters,
        val_accuracy=result.val_accuracy,
        masks=kept_mask(result.model),
        scores=_backbone_scores(result.unit_scores, backbone_group_sizes(result.model)),
        model_dir=model_dir,
        extra={"similar_tasks": [similar.task_id for similar in result.similar_tasks if similar.selected]},
        replace=True,
    )


def build_pool(
    backbone: nn.Module,
    pool: Pool,
    tasks: Sequence[Task],
    config: AdaptConfig,
    *,
    progress: bool = False,
    on_task: Callable[[Task, AdaptResult | None], None] | None = None,
) -> list[int]:
    """Prune every task from scratch and store it; tasks already in the pool are skipped (resumable)."""
    record = backbone_record(backbone, task_image_size(tasks))
    added = []
    for task in tasks:
        if pool.has_entry(
            task.task_id,
            record.weights_hash,
            config.ratio,
            config.pool_method,
            config.iters,
            record.image_size,
        ):
            if on_task is not None:
                on_task(task, None)
            continue
        result = adapt(backbone, None, task, config, progress=progress)
        added.append(add_to_pool(pool, backbone, result))
        if on_task is not None:
            on_task(task, result)
    return added


def task_image_size(tasks: Sequence[Task]) -> int:
    sizes = {task.image_size for task in tasks}
    if len(sizes) != 1:
        raise PoolError(f"all tasks of one pool build must share one image size, got {sorted(sizes)}")
    return sizes.pop()


def _pool_scores(
    backbone: nn.Module, pool: Pool, task: Task, config: AdaptConfig
) -> tuple[dict[str, np.ndarray], list[SimilarTask]]:
    entries = pool_entries_for(pool, backbone, task.image_size)
    if config.method == "smsp":
        ranked = rank_pool(entries, pool, task, samples=config.similarity_samples, seed=config.seed)
        selected = _best_per_task(ranked)[: config.top_k]
    else:
        generator = np.random.default_rng(config.seed)
        picks = generator.choice(len(entries), size=min(config.top_k, len(entries)), replace=False)
        ranked = [(entries[int(index)], math.nan) for index in picks]
        selected = ranked
    chosen = {entry.id for entry, _ in selected}
    similar = [
        SimilarTask(
            entry_id=entry.id,
            task_id=entry.task.task_key,
            classes=tuple(entry.task.classes),
            leep=None if math.isnan(value) else round(float(value), 6),
            selected=entry.id in chosen,
        )
        for entry, value in ranked
    ]
    weighting = config.weighting if config.method == "smsp" else "uniform"
    scores = score_mask(pool, selected, weighting=weighting, source=config.mask_source)
    sizes = backbone_group_sizes(backbone)
    if set(scores) != set(sizes):
        raise PoolError(
            f"pool masks do not match the unit groups of {backbone_spec(backbone).name}; "
            "the pool was built with another model layout: rebuild it"
        )
    return scores, similar


def with_task_head(backbone: nn.Module, task: Task, seed: int) -> nn.Module:
    """A copy of the backbone with a fresh classifier for the task, initialised from `seed` (not global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return replace_classifier(copy.deepcopy(backbone), len(task.classes))


def _best_per_task(ranked: Sequence[tuple[PoolEntry, float]]) -> list[tuple[PoolEntry, float]]:
    """Keep each pool task once (its most similar entry), so one task cannot fill several of the top K."""
    seen: set[str] = set()
    best = []
    for entry, similarity in ranked:
        if entry.task.task_key not in seen:
            seen.add(entry.task.task_key)
            best.append((entry, similarity))
    return best


def _batches(
    task: Task, config: AdaptConfig, count: int, offset: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(config.seed * 1000 + offset)
    order = torch.randperm(len(task.train), generator=generator)
    for batch_index in range(count):
        indices = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
        if len(indices) == 0:
            return
        yield task.train.batch(indices)


def _finetune(
    model: nn.Module, task: Task, config: AdaptConfig, iters: int, progress: bool, seed_offset: int = 0
) -> float:
    """Fine-tune for `iters` iterations; each stage gets its own seed so stages see different batches."""
    if iters <= 0:
        return 0.0
    started = time.perf_counter()
    finetune(
        model,
        task,
        iters,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer=config.optimizer,
        seed=config.seed * 1000 + seed_offset,
        progress=progress,
    )
    return time.perf_counter() - started


def _split(total: int, parts: int) -> list[int]:
    base, remainder = divmod(total, parts)
    return [base + (1 if index >= parts - remainder else 0) for index in range(parts)]


def _unit_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1): comparable across groups and entries whatever the scores' scale."""
    values = np.asarray(values, dtype=np.float64)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks / max(len(values), 1)


def _backbone_scores(scores: dict[str, np.ndarray], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Scores over the backbone's units (SMSP and one-shot scores already are; keep only matching groups)."""
    return {
        key: np.asarray(scores[key], dtype=np.float64)
        for key in sizes
        if len(scores.get(key, ())) == sizes[key]
    }
