"""Task-similarity estimators: how similar a pool entry is to a new task (SMSP ranks entries by it), and the
search stage that shortlists entries for them in large pools.

A new estimator is one file here (a `SimilarityEstimator` subclass) and one line in SIMILARITY_ESTIMATORS.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module

from edge_smsp.errors import PruneError
from edge_smsp.estimators.base import SimilarityEstimator, TaskQuery
from edge_smsp.estimators.shortlist import DEFAULT_SHORTLIST, shortlist

__all__ = [
    "DEFAULT_ESTIMATOR",
    "DEFAULT_SHORTLIST",
    "SIMILARITY_ESTIMATORS",
    "SimilarityEstimator",
    "TaskQuery",
    "shortlist",
    "similarity_estimator",
]

# name -> "module:class"
SIMILARITY_ESTIMATORS: dict[str, str] = {
    "prototype": "edge_smsp.estimators.prototype:Prototype",
    "leep": "edge_smsp.estimators.leep:Leep",
}
# Ranking quality on the benchmark pool, leave-one-out: prototype 36/36, LEEP 9/12 (edge_smsp.estimators.prototype).
DEFAULT_ESTIMATOR = "prototype"


@cache
def similarity_estimator(name: str) -> SimilarityEstimator:
    """The registered estimator called `name`; PruneError naming the choices otherwise."""
    if name not in SIMILARITY_ESTIMATORS:
        raise PruneError(
            f"unknown similarity estimator {name!r}: choose one of {', '.join(SIMILARITY_ESTIMATORS)}"
        )
    module, _, attribute = SIMILARITY_ESTIMATORS[name].partition(":")
    return getattr(import_module(module), attribute)()
