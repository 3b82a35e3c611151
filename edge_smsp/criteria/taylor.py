"""First-order Taylor scores on the new task (Torch-Pruning's GroupTaylorImportance), after a short warm-up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_smsp.criteria.base import Batches, Criterion, Needs, ScoreInputs, UnitScores, needed

if TYPE_CHECKING:
    from torch import nn


class Taylor(Criterion):
    name = "taylor"
    needs = Needs(batches=True, warmup=True)

    def score_model(self, model: nn.Module, batches: Batches | None = None, seed: int = 0) -> UnitScores:
        from edge_smsp.models.unit_scores import taylor_scores

        return taylor_scores(model, batches)

    def __call__(self, inputs: ScoreInputs) -> UnitScores:
        # Gradients through a random head are noise: train the task model briefly first, from the same budget.
        config = inputs.config
        needed(inputs.train, self, "a warm-up")(inputs.model, round(config.iters * config.warmup_fraction))
        batches = needed(inputs.batches, self, "training batches")(config.taylor_batches)
        return self.score_model(inputs.model, batches, config.seed)
