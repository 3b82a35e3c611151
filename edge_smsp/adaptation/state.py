"""One adaptation in progress: what its stages read and leave for the stages after them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_smsp.adaptation.config import AdaptConfig, AdaptResult
from edge_smsp.adaptation.scoring_cache import ScoringCache
from edge_smsp.criteria import ScoreInputs, ScoreSource, Selection, score_source
from edge_smsp.data.tasks import Task
from edge_smsp.models.prune import PruneSummary
from edge_smsp.pool import Pool
from edge_smsp.training.finetune import auto_micro_batch, chunk_count, finetune


@dataclass
class AdaptRun:
    """The state of one adaptation, passed from stage to stage (see edge_smsp.adaptation.pipeline)."""

    backbone: nn.Module
    pool: Pool | None
    task: Task
    config: AdaptConfig
    progress: bool = False
    # Wall time per report bucket; fine-tuning counts itself wherever it happens (a warm-up, a recipe).
    seconds: dict[str, float] = field(
        default_factory=lambda: {"similarity": 0.0, "pruning": 0.0, "init": 0.0, "finetuning": 0.0}
    )
    model: nn.Module | None = None  # the backbone with the task's head; after `prune`, the sub-network
    selection: Selection | None = None  # pool entries the source chose, with their similarity to the task
    scores: dict[str, np.ndarray] | None = None  # over the backbone's units
    summary: PruneSummary | None = None
    iters_done: int = 0  # fine-tuning iterations spent so far, of config.iters
    train_calls: int = 0  # fine-tuning runs so far: each draws its own batches
    val_accuracy: float | None = None
    init: str = "backbone"  # what the sub-network's weights came from (set by the init stage)
    # the probe stage's candidates and which one it chose, for the report
    probed: list[dict[str, Any]] = field(default_factory=list)
    recovery: list[str] = field(default_factory=list)  # recovery steps that ran
    notes: list[str] = field(default_factory=list)
    # how the last fine-tuning ran: batch, micro-batch, learning rate, optimizer
    training: dict[str, Any] = field(default_factory=dict)
    # A task whose images stay on its device: its query (TaskQuery.described) for the similarity estimators,
    # and the probe run there: (entry, similarity) candidates -> their ProbedEntry, in order.
    query: Any = None
    prober: Callable[[Sequence[tuple[Any, float]]], list[Any]] | None = None
    started: float = field(default_factory=time.perf_counter)  # the adaptation's start, for a time budget
    # Shared by adaptations of one task at several ratios (a fleet): the selection, probe and scores by key.
    cache: ScoringCache | None = None
    scoring_key: Any = None  # this run's key in the cache (None: not shared)
    reused: bool = False  # the selection, probe and scores came from the cache

    @property
    def source(self) -> ScoreSource:
        return score_source(self.config.method)

    @property
    def micro_batch(self) -> int | None:
        """The config's micro-batch, else chunks that bound a step's memory at the task's image size."""
        if self.config.micro_batch is not None:
            return self.config.micro_batch
        return auto_micro_batch(self.config.batch_size, self.task.image_size)

    def train(
        self,
        model: nn.Module,
        iters: int,
        seed_offset: int | None = None,
        *,
        batch_size: int | None = None,
        deadline: float | None = None,
    ) -> None:
        """Fine-tune `model` for `iters` iterations of the budget, with its own seed (the call's index); a time
        budget's plan gives its own batch and a deadline."""
        if iters <= 0:
            return
        offset = self.train_calls if seed_offset is None else seed_offset
        started = time.perf_counter()
        done = finetune(
            model,
            self.task,
            iters,
            batch_size=batch_size or self.config.batch_size,
            micro_batch=self.micro_batch,
            lr=self.config.lr,
            optimizer=self.config.optimizer,
            seed=self.config.seed * 1000 + offset,
            progress=self.progress,
            deadline=deadline,
        )
        self.seconds["finetuning"] += time.perf_counter() - started
        self.training = {
            "batch_size": done.batch_size,
            "micro_batch": done.micro_batch,
            "lr": done.lr,
            "optimizer": self.config.optimizer,
        }
        self.train_calls += 1
        self.iters_done += done.iters

    def batches(self, count: int, offset: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`count` training batches in a seeded order (offset: another order, e.g. per pruning round), each in
        equal chunks when the micro-batch asks for it (Taylor scores in eval mode: the chunks' summed gradients
        are the batch's, times the chunk count, the same for every unit)."""
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + offset)
        order = torch.randperm(len(self.task.train), generator=generator)
        size = self.config.batch_size
        for batch_index in range(count):
            indices = order[batch_index * size : (batch_index + 1) * size]
            if len(indices) == 0:
                return
            for part in indices.tensor_split(chunk_count(len(indices), self.micro_batch)):
                yield self.task.train.batch(part)

    def score_inputs(self) -> ScoreInputs:
        """What the score source may use, as its needs declare."""
        needs = self.source.needs
        assert self.model is not None
        return ScoreInputs(
            backbone=self.backbone,
            model=self.model,
            task=self.task,
            config=self.config.scoring(),
            pool=self.pool if needs.pool else None,
            selection=self.selection,
            batches=self.batches if needs.batches else None,
            train=self.train if needs.warmup else None,
            query=self.query,
        )

    def result(self, total_seconds: float) -> AdaptResult:
        """The finished adaptation."""
        assert self.model is not None and self.summary is not None and self.scores is not None
        assert self.val_accuracy is not None
        seconds = {**self.seconds, "total": total_seconds}
        selection = self.selection
        return AdaptResult(
            config=self.config,
            val_accuracy=float(self.val_accuracy),
            summary=self.summary,
            similar_tasks=[] if selection is None else selection.similar_tasks(),
            seconds={name: round(value, 3) for name, value in seconds.items()},
            model=self.model,
            unit_scores={key: np.asarray(value, dtype=np.float64) for key, value in self.scores.items()},
            task=self.task,
            init=self.init,
            recovery=list(self.recovery),
            candidates=0 if selection is None else selection.candidates,
            probed=list(self.probed),
            notes=[*(() if selection is None else selection.notes), *self.notes],
            descriptor=_computed_descriptor(selection),
            training=dict(self.training),
        )


def _computed_descriptor(selection: Selection | None) -> np.ndarray | None:
    query = None if selection is None else selection.query
    return None if query is None else query.known_descriptor
