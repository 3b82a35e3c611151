"""L1 magnitude of each unit's weights over its coupled group (Torch-Pruning's GroupMagnitudeImportance, p=1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_smsp.criteria.base import Batches, Criterion, UnitScores

if TYPE_CHECKING:
    from torch import nn


class Magnitude(Criterion):
    name = "magnitude"

    def score_model(self, model: nn.Module, batches: Batches | None = None, seed: int = 0) -> UnitScores:
        from edge_smsp.models.unit_scores import unit_l1_norms

        return unit_l1_norms(model)
