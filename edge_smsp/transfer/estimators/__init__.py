"""Task-similarity estimators: how similar a pool entry is to a new task (SMSP ranks entries by it), and the
search stage that shortlists entries for them in large pools.

A new estimator is one file here (a `SimilarityEstimator` subclass) and one line in SIMILARITY_ESTIMATORS.
"""

from __future__ import annotations

from functools import cache

from edge_smsp.core.errors import PruneError
from edge_smsp.core.registry import load_registered
from edge_smsp.transfer.estimators.base import SimilarityEstimator, TaskQuery
from edge_smsp.transfer.estimators.shortlist import DEFAULT_SHORTLIST, shortlist

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
    "prototype": "edge_smsp.transfer.estimators.prototype:Prototype",
    "leep": "edge_smsp.transfer.estimators.leep:Leep",
}
# Ranking quality on the benchmark pool, leave-one-out: prototype 36/36, LEEP 9/12 (edge_smsp.transfer.estimators.prototype).
DEFAULT_ESTIMATOR = "prototype"


@cache
def similarity_estimator(name: str) -> SimilarityEstimator:
    """The registered estimator called `name`; PruneError naming the choices otherwise."""
    return load_registered(SIMILARITY_ESTIMATORS, name, "similarity estimator", PruneError)
