"""What a similarity estimator is: it ranks pool entries by their similarity to a new task, best first."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edge_smsp.data import Task
    from edge_smsp.pool import Pool, PoolEntry


class SimilarityEstimator:
    """Scores each entry's pruned model on a bounded, seeded sample of the task's training set.

    Estimators that look at something other than each entry's model on the sample (a cheap shortlist first,
    say) override `rank`; the others implement `similarity`."""

    name: ClassVar[str]

    def rank(
        self,
        entries: Sequence[PoolEntry],
        pool: Pool,
        task: Task,
        *,
        samples: int = 500,
        batch_size: int = 64,
        seed: int = 0,
    ) -> list[tuple[PoolEntry, float]]:
        """(entry, similarity) for every entry, most similar first."""
        from edge_smsp.prune import load_pruned

        images, labels = sample_task(task, samples, seed)
        ranked = []
        with tempfile.TemporaryDirectory(prefix="edge-smsp-pool-") as scratch_dir:
            for entry in entries:
                model, _ = load_pruned(pool.materialise_model_dir(entry.id, f"{scratch_dir}/{entry.id}"))
                ranked.append((entry, self.similarity(model, images, labels, batch_size)))
        ranked.sort(key=lambda pair: pair[1], reverse=True)
        return ranked

    def similarity(
        self, model: nn.Module, images: torch.Tensor, labels: np.ndarray, batch_size: int
    ) -> float:
        """How well `model` suits the task whose sample is (images, labels); higher is more similar."""
        raise NotImplementedError


def sample_task(task: Task, samples: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """A seeded sample of at most `samples` training images and their labels."""
    import torch

    count = min(samples, len(task.train))
    order = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(seed))[:count]
    images, labels = task.train.batch(order)
    return images, labels.numpy().astype(np.int64)
