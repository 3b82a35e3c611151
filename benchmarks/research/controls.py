"""Controls for "does similarity matter?" (issue 24): the product's pipeline with the pool entry chosen some
other way than prototype similarity plus the probe. Research only: registered into the criteria table by the
held-out driver, never by the product.

- `smsp-random` (the product's own control): a random pool entry per seed;
- `smsp-least` (here): the LEAST similar pool task's entry, by the product's estimator.
"""

from __future__ import annotations

import dataclasses

from edge_smsp.criteria import SCORE_SOURCES
from edge_smsp.criteria.base import ScoreInputs, Selection, best_per_task
from edge_smsp.criteria.smsp import Smsp

LEAST_SIMILAR = "smsp-least"


class LeastSimilar(Smsp):
    name = LEAST_SIMILAR

    def select(self, inputs: ScoreInputs) -> Selection:
        ranked = super().select(inputs)
        least_first = tuple(reversed(ranked.ranked))
        return dataclasses.replace(
            ranked, ranked=least_first, selected=tuple(best_per_task(least_first)[: inputs.config.k])
        )


def register() -> None:
    """Make `smsp-least` a method AdaptConfig accepts, in this process only."""
    SCORE_SOURCES.setdefault(LEAST_SIMILAR, f"{__name__}:LeastSimilar")
