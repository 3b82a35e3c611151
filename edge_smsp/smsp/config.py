"""What one adaptation is asked (AdaptConfig) and what it produced (AdaptResult)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_smsp.errors import PruneError
from edge_smsp.estimators import SIMILARITY_ESTIMATORS
from edge_smsp.ratio import checked_ratio
from edge_smsp.score_sources import SCRATCH, SimilarTask, criterion_names, method_names
from edge_smsp.score_sources.pool_masks import MASK_SOURCES, WEIGHTINGS

if TYPE_CHECKING:
    from torch import nn

    from edge_smsp.data import Task
    from edge_smsp.prune import PruneSummary


@dataclass(frozen=True)
class AdaptConfig:
    """Everything about one adaptation besides the backbone, pool and task."""

    ratio: float | None = None  # None: not chosen yet (deploy plans it); adapt needs one
    iters: int = 100
    method: str = "smsp"  # a score source, or "scratch" (see edge_smsp.score_sources)
    top_k: int = 5
    weighting: str = "uniform"  # "uniform" sums binary masks; "leep" weights them by normalised similarity
    mask_source: str = (
        "masks"  # "masks" (binary, as in the paper) or "scores" (the entries' real-valued ranks)
    )
    similarity: str = "leep"  # how pool entries are ranked (edge_smsp.estimators)
    round_to: int = 8
    batch_size: int = 32
    lr: float | None = None
    optimizer: str = "sgd"
    seed: int = 0
    similarity_samples: int = 500
    taylor_batches: int = 4
    warmup_fraction: float = 0.2  # of the iterations, spent before one-shot Taylor scores the new task
    scratch_rounds: int = 4
    scratch_importance: str = "taylor"  # the pool-building criterion (an iterative criterion)

    def __post_init__(self) -> None:
        if self.ratio is not None:
            checked_ratio(self.ratio)
        _check_choice("method", self.method, method_names())
        _check_choice("weighting", self.weighting, WEIGHTINGS)
        _check_choice("mask_source", self.mask_source, MASK_SOURCES)
        _check_choice("similarity", self.similarity, tuple(SIMILARITY_ESTIMATORS))
        _check_choice("scratch importance", self.scratch_importance, criterion_names(iterative=True))
        if self.iters < 0:
            raise PruneError(f"iterations must be >= 0, got {self.iters}")
        if self.top_k < 1:
            raise PruneError(f"top-k must be >= 1, got {self.top_k}")
        if self.scratch_rounds < 1:
            raise PruneError(f"scratch rounds must be >= 1, got {self.scratch_rounds}")

    @property
    def pool_method(self) -> str:
        """How pool entries made with this config are labelled (scratch names its criterion and rounds)."""
        if self.method == SCRATCH:
            return f"{SCRATCH}-{self.scratch_importance}-r{self.scratch_rounds}"
        return self.method


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
        assert self.config.ratio is not None  # adapt refuses a config without one
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


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PruneError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")
