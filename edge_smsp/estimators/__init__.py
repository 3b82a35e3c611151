"""Task-similarity estimators: how similar a pool entry's model is to a new task (SMSP ranks entries by it).

A new estimator is one file here (a `SimilarityEstimator` subclass) and one line in SIMILARITY_ESTIMATORS.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module

from edge_smsp.errors import PruneError
from edge_smsp.estimators.base import SimilarityEstimator

__all__ = ["SIMILARITY_ESTIMATORS", "SimilarityEstimator", "similarity_estimator"]

# name -> "module:class"
SIMILARITY_ESTIMATORS: dict[str, str] = {
    "leep": "edge_smsp.estimators.leep:Leep",
}


@cache
def similarity_estimator(name: str) -> SimilarityEstimator:
    """The registered estimator called `name`; PruneError naming the choices otherwise."""
    if name not in SIMILARITY_ESTIMATORS:
        raise PruneError(
            f"unknown similarity estimator {name!r}: choose one of {', '.join(SIMILARITY_ESTIMATORS)}"
        )
    module, _, attribute = SIMILARITY_ESTIMATORS[name].partition(":")
    return getattr(import_module(module), attribute)()
