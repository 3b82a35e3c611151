"""Random unit scores (seeded): the floor every other source must clear."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_smsp.criteria.base import Batches, Criterion, UnitScores

if TYPE_CHECKING:
    from torch import nn


class RandomScores(Criterion):
    name = "random"
    iterative = False

    def score_model(self, model: nn.Module, batches: Batches | None = None, seed: int = 0) -> UnitScores:
        from edge_smsp.models.unit_scores import random_scores

        return random_scores(model, seed)
