"""What a score source is (Torch-Pruning's Importance, one level up): it declares what it needs, may choose pool
entries, and returns one score per unit of every group of the backbone; higher means more important."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edge_smsp.core.errors import PruneError

if TYPE_CHECKING:  # sources import torch only when they score, so the CLI can read the registry torch-free
    from torch import nn

    from edge_smsp.data.tasks import Task
    from edge_smsp.pool import Pool, PoolEntry

UnitScores = dict[str, np.ndarray]
Batches = Iterator[tuple[Any, Any]]


@dataclass(frozen=True)
class Needs:
    """What a source needs besides the backbone and the task; adapt provides it, the CLI opens a pool for it."""

    pool: bool = False  # entries of this backbone in a pool, chosen by `select`
    batches: bool = False  # labelled training batches of the new task
    warmup: bool = False  # part of the iteration budget, to fine-tune the task model before scoring it


@dataclass(frozen=True)
class SimilarTask:
    """One pool entry's similarity to the new task (by the run's estimator; None: not measured)."""

    entry_id: int
    task_id: str
    classes: tuple[int, ...]
    ratio: float
    similarity: float | None
    selected: bool


@dataclass(frozen=True)
class Selection:
    """Pool entries a source ranked, best first, with their similarity to the task (NaN: not measured), the
    ones it chose, how many entries it drew from (the shortlist's pool) and what the report should say."""

    ranked: tuple[tuple[PoolEntry, float], ...]
    selected: tuple[tuple[PoolEntry, float], ...]
    candidates: int = 0
    notes: tuple[str, ...] = ()
    query: Any = (
        None  # the estimators' view of the task (edge_smsp.transfer.estimators.TaskQuery), when one was made
    )

    def similar_tasks(self) -> list[SimilarTask]:
        """The report's view: every considered entry, its rounded similarity and whether it was chosen."""
        chosen = {entry.id for entry, _ in self.selected}
        return [
            SimilarTask(
                entry_id=entry.id,
                task_id=entry.task.task_key,
                classes=tuple(entry.task.classes),
                ratio=entry.ratio,
                similarity=None if math.isnan(value) else round(float(value), 6),
                selected=entry.id in chosen,
            )
            for entry, value in self.ranked
        ]


@dataclass(frozen=True)
class ScoringSettings:
    """The part of an adaptation's settings that score sources read (a narrow view of AdaptConfig)."""

    ratio: float | None = None
    seed: int = 0
    k: int = 5  # pool entries a pool source selects
    weighting: str = "uniform"
    mask_source: str = "masks"
    similarity: str = "prototype"
    shortlist: int | None = None
    similarity_samples: int = 500
    iters: int = 100
    warmup_fraction: float = 0.2
    taylor_batches: int = 4


@dataclass(frozen=True)
class ScoreInputs:
    """Everything a source may use; the optional parts are there when its `needs` ask for them."""

    backbone: nn.Module  # the pre-trained backbone as loaded
    model: nn.Module  # the backbone with the new task's head: the model pruned next
    task: Task
    config: ScoringSettings
    pool: Pool | None = None  # needs.pool
    selection: Selection | None = None  # what `select` chose
    batches: Callable[[int], Batches] | None = None  # needs.batches: `count` seeded training batches
    train: Callable[[nn.Module, int], None] | None = None  # needs.warmup: fine-tune for n budget iterations
    # The task as the similarity estimators see it, when the caller has it already (a TaskQuery.described of
    # a task whose images stay on its device); None: pool sources make one from `task` and `backbone`.
    query: Any = None


class ScoreSource:
    """Base of every source: `needs`, optionally `select`, and `__call__` returning the unit scores."""

    name: ClassVar[str]
    needs: ClassVar[Needs] = Needs()

    def select(self, inputs: ScoreInputs) -> Selection | None:
        """Pool entries to draw on (pool sources only)."""
        return None

    def __call__(self, inputs: ScoreInputs) -> UnitScores:
        """One score per unit of every group of the backbone."""
        raise NotImplementedError


class Criterion(ScoreSource):
    """A source that scores the units of any model by itself (`prune`, and the rounds of iterative pruning)."""

    # Whether re-scoring between pruning rounds means anything (a fresh random draw is one-shot random pruning).
    iterative: ClassVar[bool] = True

    def score_model(self, model: nn.Module, batches: Batches | None = None, seed: int = 0) -> UnitScores:
        """Scores of `model`'s own units (Taylor: gradients from the (images, labels) batches)."""
        raise NotImplementedError

    def __call__(self, inputs: ScoreInputs) -> UnitScores:
        return self.score_model(inputs.backbone, seed=inputs.config.seed)


def needed(value: Any, source: ScoreSource, what: str) -> Any:
    """`value`, which the source's needs promised; a clear error when the caller did not provide it."""
    if value is None:
        raise PruneError(f"score source {source.name} needs {what}")
    return value


def best_per_task(ranked: Sequence[tuple[PoolEntry, float]]) -> list[tuple[PoolEntry, float]]:
    """Keep each pool task once (its most similar entry), so one task cannot fill several of the top K."""
    seen: set[str] = set()
    best = []
    for entry, similarity in ranked:
        if entry.task.task_key not in seen:
            seen.add(entry.task.task_key)
            best.append((entry, similarity))
    return best
