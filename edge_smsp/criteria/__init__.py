"""Score sources: where an adaptation's unit scores come from. This table is the one list of them: the CLI's
choices, AdaptConfig's checks, the pool labels, deploy's method choice and benchmarks/ all read it.

A new source is one file here (a `ScoreSource` subclass) and one line in SCORE_SOURCES. Source modules stay
torch-free when imported (they import torch inside their methods), so the CLI reads names and needs cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import TYPE_CHECKING, Any

from edge_smsp.core.errors import PruneError
from edge_smsp.core.registry import load_registered
from edge_smsp.criteria.base import Criterion, Needs, ScoreInputs, ScoreSource, Selection, SimilarTask

if TYPE_CHECKING:  # the registry stays torch-free: the CLI reads names and needs without importing torch
    import numpy as np
    from torch import nn

__all__ = [
    "SCORE_SOURCES",
    "SCRATCH",
    "Criterion",
    "Needs",
    "ScoreInputs",
    "ScoreSource",
    "Selection",
    "SimilarTask",
    "criterion",
    "criterion_names",
    "method_names",
    "needs_pool",
    "pool_source_names",
    "score_source",
    "score_units",
]

# name -> "module:class", in the order methods are listed (CLI choices, benchmark tables).
SCORE_SOURCES: dict[str, str] = {
    "smsp": "edge_smsp.criteria.smsp:Smsp",
    "smsp-random": "edge_smsp.criteria.smsp_random:SmspRandom",
    "random": "edge_smsp.criteria.random_scores:RandomScores",
    "magnitude": "edge_smsp.criteria.magnitude:Magnitude",
    "taylor": "edge_smsp.criteria.taylor:Taylor",
}
# Not a source: iterative pruning from scratch, re-scoring with a criterion between rounds (how the pool is built).
SCRATCH = "scratch"


@cache
def score_source(name: str) -> ScoreSource:
    """The registered source called `name`; PruneError naming the choices otherwise."""
    return load_registered(SCORE_SOURCES, name, "score source", PruneError)


def method_names() -> tuple[str, ...]:
    """Every adaptation method: the score sources, then iterative pruning from scratch."""
    return (*SCORE_SOURCES, SCRATCH)


def needs_pool(method: str) -> bool:
    """Whether the method draws on pool entries (it needs a pool built for the backbone)."""
    return method in SCORE_SOURCES and score_source(method).needs.pool


def pool_source_names() -> tuple[str, ...]:
    """Sources that draw on pool entries."""
    return tuple(name for name in SCORE_SOURCES if needs_pool(name))


def criterion_names(*, batches: bool = True, iterative: bool = False) -> tuple[str, ...]:
    """Sources that score any model by themselves; `batches=False`: only those needing no data; `iterative`:
    only those that mean something when re-run between rounds of iterative pruning."""
    return tuple(
        name
        for name in SCORE_SOURCES
        if isinstance(source := score_source(name), Criterion)
        and (batches or not source.needs.batches)
        and (source.iterative or not iterative)
    )


def criterion(name: str) -> Criterion:
    """The criterion called `name` (a source that scores any model), for prune and iterative pruning."""
    source = score_source(name) if name in SCORE_SOURCES else None
    if not isinstance(source, Criterion):
        raise PruneError(f"unknown criterion {name!r} (choose from {', '.join(criterion_names())})")
    return source


def score_units(
    model: nn.Module, method: str, batches: Iterable[tuple[Any, Any]] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """One score per unit for every group with the criterion `method`; higher means more important. Taylor
    needs (x, y) batches."""
    return criterion(method).score_model(model, batches, seed)
