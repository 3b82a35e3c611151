"""Toy source: the negated L1 magnitude, which keeps each group's smallest units (a floor, not a method)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_smsp.score_sources.base import Batches, Criterion, UnitScores

if TYPE_CHECKING:
    from torch import nn


class NegativeMagnitude(Criterion):
    name = "negative-magnitude"

    def score_model(self, model: nn.Module, batches: Batches | None = None, seed: int = 0) -> UnitScores:
        from edge_smsp.importance import unit_l1_norms

        return {key: -values for key, values in unit_l1_norms(model).items()}
