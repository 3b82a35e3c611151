"""LEEP of an entry's pruned model on the task: its softmax outputs as a predictor of the task's labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edge_smsp.transfer.estimators.base import SimilarityEstimator

if TYPE_CHECKING:
    import torch
    from torch import nn


class Leep(SimilarityEstimator):
    name = "leep"

    def similarity(
        self, model: nn.Module, images: torch.Tensor, labels: np.ndarray, batch_size: int
    ) -> float:
        from edge_smsp.training.finetune import predict_proba
        from edge_smsp.transfer.leep_score import leep

        return leep(predict_proba(model, images, batch_size=batch_size), labels)
