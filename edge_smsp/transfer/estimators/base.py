"""What a similarity estimator is: it ranks pool entries by their similarity to a new task, best first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edge_smsp.core.errors import PruneError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edge_smsp.data.tasks import Task
    from edge_smsp.pool import Pool, PoolEntry

# Class-balanced training images behind a task descriptor, and their sampling seed, in the pool and for a new
# task alike (one task has one descriptor, whatever the adaptation's seed).
DESCRIPTOR_SAMPLES = 512
DESCRIPTOR_SEED = 0


@dataclass
class TaskQuery:
    """The new task as the estimators see it; its image sample and its descriptor are computed once, on use."""

    task: Task | None  # None: known by its descriptor alone (`described`)
    backbone: nn.Module | None  # the unpruned backbone (its descriptor is the backbone's class prototypes)
    samples: int = 500
    seed: int = 0
    batch_size: int = 64
    _cached: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def described(cls, descriptor: np.ndarray) -> TaskQuery:
        """A task known only by its descriptor, computed where its images are (the device's `describe`):
        estimators that read stored descriptors rank it; those that need its images refuse it."""
        from edge_smsp.data.descriptors import DESCRIPTOR_DTYPE

        values = np.asarray(descriptor)
        if values.ndim != 2 or min(values.shape) < 1 or not np.isfinite(values).all():
            raise PruneError(f"a task descriptor is a finite [classes, features] array, got {values.shape}")
        query = cls(task=None, backbone=None)
        query._cached["descriptor"] = values.astype(DESCRIPTOR_DTYPE)
        return query

    @property
    def sample(self) -> tuple[torch.Tensor, np.ndarray]:
        """A seeded sample of at most `samples` training images and their labels."""
        if self.task is None:
            raise PruneError(
                "this similarity estimator runs the pool's models on the task's images, which stay on the "
                "device: use --similarity prototype"
            )
        if "sample" not in self._cached:
            self._cached["sample"] = sample_task(self.task, self.samples, self.seed)
        return self._cached["sample"]

    @property
    def descriptor(self) -> np.ndarray:
        """The task's class prototypes under the backbone ([k, F]; one forward pass over a sample)."""
        if "descriptor" not in self._cached:
            from edge_smsp.transfer.task_descriptor import task_descriptor

            assert self.task is not None and self.backbone is not None  # else `described` set it

            self._cached["descriptor"] = task_descriptor(
                self.backbone, self.task, samples=DESCRIPTOR_SAMPLES, seed=DESCRIPTOR_SEED
            )
        return self._cached["descriptor"]

    @property
    def known_descriptor(self) -> np.ndarray | None:
        """The descriptor if it was computed already (no forward pass), else None."""
        return self._cached.get("descriptor")


class SimilarityEstimator:
    """Scores each entry's pruned model on the task's sample (`similarity`).

    Estimators that look at something other than each entry's model (stored task descriptors, say) override
    `rank` instead."""

    name: ClassVar[str]

    def rank(
        self, entries: Sequence[PoolEntry], pool: Pool, query: TaskQuery
    ) -> list[tuple[PoolEntry, float]]:
        """(entry, similarity) for every entry, most similar first."""
        from edge_smsp.transfer.entry_models import borrowed_entry_model

        images, labels = query.sample
        ranked = [
            (entry, self.similarity(borrowed_entry_model(pool, entry), images, labels, query.batch_size))
            for entry in entries
        ]
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
