"""What one adaptation is asked (AdaptConfig) and what it produced (AdaptResult)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_smsp.core.errors import PruneError
from edge_smsp.core.ratio import checked_ratio
from edge_smsp.criteria import SCRATCH, SimilarTask, criterion_names, method_names, needs_pool
from edge_smsp.criteria.base import ScoringSettings
from edge_smsp.criteria.pool_masks import MASK_SOURCES, WEIGHTING_ALIASES, WEIGHTINGS
from edge_smsp.training.recipe import ADAPT_BATCH_SIZE, INITS, RECIPES
from edge_smsp.transfer.estimators import DEFAULT_ESTIMATOR, DEFAULT_SHORTLIST, SIMILARITY_ESTIMATORS

if TYPE_CHECKING:
    from torch import nn

    from edge_smsp.data.tasks import Task
    from edge_smsp.models.prune import PruneSummary


MAX_TIME_BUDGET = 86400.0


@dataclass(frozen=True)
class AdaptConfig:
    """Everything about one adaptation besides the backbone, pool and task."""

    ratio: float | None = None  # None: not chosen yet (deploy plans it); adapt needs one
    iters: int = 100
    method: str = "smsp"  # a score source, or "scratch" (see edge_smsp.criteria)
    top_k: int | None = None  # None: `k` (1 with a pool initialisation, else 5, the paper's)
    weighting: str = (
        "uniform"  # "uniform" sums binary masks; "similarity" weights them by normalised similarity
    )
    mask_source: str = (
        "masks"  # "masks" (binary, as in the paper) or "scores" (the entries' real-valued ranks)
    )
    similarity: str = DEFAULT_ESTIMATOR  # how pool entries are ranked (edge_smsp.transfer.estimators)
    shortlist: int | None = DEFAULT_SHORTLIST  # tasks the search stage keeps for `similarity`; None: all
    init: str | None = None  # "backbone" or "pool" (the top entry's weights); None: `init_mode`
    probe: int = 3  # pool init: of this many most similar entries, the one whose features fit the task best
    recipe: str = "recover"  # recovery steps after pruning (edge_smsp.training.recipe)
    round_to: int = 8
    batch_size: int = ADAPT_BATCH_SIZE
    # fine-tune each batch in chunks of this many images (less memory); None: edge_smsp.training.finetune.auto_micro_batch
    micro_batch: int | None = None
    lr: float | None = None  # None: edge_smsp.training.finetune.default_lr(optimizer, batch_size)
    optimizer: str = "sgd"
    seed: int = 0
    similarity_samples: int = 500
    taylor_batches: int = 4
    warmup_fraction: float = 0.2  # of the iterations, spent before one-shot Taylor scores the new task
    scratch_rounds: int = 4
    scratch_criterion: str = "taylor"  # the pool-building criterion (an iterative criterion)
    # seconds for the whole adaptation: fine-tuning's batch and iterations are then measured to fit it
    time_budget: float | None = None

    def __post_init__(self) -> None:
        if self.ratio is not None:
            checked_ratio(self.ratio)
        _check_choice("method", self.method, method_names())
        _check_choice("weighting", self.weighting, (*WEIGHTINGS, *WEIGHTING_ALIASES))
        _check_choice("mask_source", self.mask_source, MASK_SOURCES)
        _check_choice("similarity", self.similarity, tuple(SIMILARITY_ESTIMATORS))
        _check_choice("recipe", self.recipe, tuple(RECIPES))
        if self.init is not None:
            _check_choice("init", self.init, INITS)
            if self.init == "pool" and not needs_pool(self.method):
                raise PruneError(f"--init pool needs a method that draws on the pool, not {self.method}")
        if self.shortlist is not None and self.shortlist < 1:
            raise PruneError(f"shortlist must be >= 1, got {self.shortlist}")
        _check_choice("scratch criterion", self.scratch_criterion, criterion_names(iterative=True))
        if self.iters < 0:
            raise PruneError(f"iterations must be >= 0, got {self.iters}")
        if self.probe < 1:
            raise PruneError(f"probe must be >= 1, got {self.probe}")
        if self.top_k is not None and self.top_k < 1:
            raise PruneError(f"top-k must be >= 1, got {self.top_k}")
        if self.batch_size < 1:
            raise PruneError(f"batch size must be >= 1, got {self.batch_size}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise PruneError(f"micro-batch must be >= 1, got {self.micro_batch}")
        if self.time_budget is not None and not 0 < self.time_budget <= MAX_TIME_BUDGET:  # refuses NaN too
            raise PruneError(f"time budget must be 0-{MAX_TIME_BUDGET:g} seconds, got {self.time_budget}")
        if self.scratch_rounds < 1:
            raise PruneError(f"scratch rounds must be >= 1, got {self.scratch_rounds}")

    @property
    def init_mode(self) -> str:
        """The weights a sub-network starts from: the top pool entry's for pool methods, unless told."""
        return self.init or ("pool" if needs_pool(self.method) else "backbone")

    @property
    def k(self) -> int:
        """Pool entries selected: top_k, else 1 with a pool initialisation (one entry's mask and weights fit
        each other; averaging several was worse, RESULTS.md) and 5 from the backbone (the paper's)."""
        return self.top_k or (1 if self.init_mode == "pool" else 5)

    def scoring(self) -> ScoringSettings:
        """What score sources may read of these settings."""
        return ScoringSettings(
            ratio=self.ratio,
            seed=self.seed,
            k=self.k,
            weighting=self.weighting,
            mask_source=self.mask_source,
            similarity=self.similarity,
            shortlist=self.shortlist,
            similarity_samples=self.similarity_samples,
            iters=self.iters,
            warmup_fraction=self.warmup_fraction,
            taylor_batches=self.taylor_batches,
        )

    @property
    def pool_method(self) -> str:
        """How pool entries made with this config are labelled (scratch names its criterion and rounds)."""
        if self.method == SCRATCH:
            return f"{SCRATCH}-{self.scratch_criterion}-r{self.scratch_rounds}"
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
    init: str = (
        "backbone"  # what the sub-network started from ("pool" only when an entry's weights were used)
    )
    recovery: list[str] = field(default_factory=list)  # the recipe's steps that ran
    candidates: int = 0  # pool entries the selection drew from (before any shortlist)
    probed: list[dict[str, Any]] = field(default_factory=list)  # entries probed for the weights, and how
    notes: list[str] = field(default_factory=list)  # fallbacks a reader should know about
    descriptor: np.ndarray | None = field(default=None, repr=False)  # the task's, when similarity computed it
    # how the fine-tuning ran: batch, micro-batch, learning rate, optimizer
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def ratio(self) -> float:
        assert self.config.ratio is not None  # adapt refuses a config without one
        return self.config.ratio

    @property
    def iters(self) -> int:
        """Fine-tuning iterations run: the config's, or those a time budget chose and ran."""
        budget = self.training.get("time_budget")
        return int(budget["iters_done"]) if budget else self.config.iters

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
            "init": self.init,
            "recipe": self.config.recipe,
            "recovery_steps": self.recovery,
            "similarity": self.config.similarity if self.similar_tasks else None,
            "shortlist": self.config.shortlist,
            "candidates": self.candidates,
            "similar_tasks": [dataclasses.asdict(similar) for similar in self.similar_tasks],
            "probed": self.probed,
            "notes": self.notes,
            "training": self.training,
            "seconds": self.seconds,
            "groups": self.summary.groups,
        }


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PruneError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")
