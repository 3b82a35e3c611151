"""Which of the most similar pool entries to take weights from: the one whose own features already separate the
new task's classes best.

Similarity says which pool tasks resemble the new one; it cannot say which of several equally similar entries
(each sharing two classes, say) learned the distinction the new task finds hard. Each candidate's pruned,
fine-tuned model is run once on a class-balanced sample of the task's training images, and a nearest class mean
classifier (cosine, class means from one half of the sample, accuracy on the other half, then the halves swapped)
scores its penultimate features. No training step, no validation image: a few forward passes per candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from edge_smsp.core.errors import DataError
from edge_smsp.training.features import penultimate_features, task_sample
from edge_smsp.transfer.entry_models import borrowed_entry_model

if TYPE_CHECKING:
    from edge_smsp.data.tasks import Task
    from edge_smsp.pool import Pool, PoolEntry


@dataclass(frozen=True)
class ProbedEntry:
    """A candidate entry, its similarity to the task and the nearest-mean accuracy of its features."""

    entry: PoolEntry
    similarity: float
    accuracy: float


def nearest_mean_accuracy(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Two-fold accuracy of a cosine nearest-class-mean classifier: each class's samples alternate between the
    folds; means from one fold classify the other."""
    counts = torch.bincount(labels, minlength=num_classes)
    if len(labels) != len(features) or bool((counts < 2).any()):
        raise DataError(
            f"the probe needs two training images of every class, got {counts.tolist()}: give "
            "--train-per-class 2 or more, or --probe 1 (no probe)"
        )
    unit = torch.nn.functional.normalize(features.to(torch.float64), dim=1)
    fold = torch.zeros(len(labels), dtype=torch.bool)
    for label in range(num_classes):
        fold[torch.nonzero(labels == label).flatten()[1::2]] = True
    correct = 0
    for held_out in (fold, ~fold):
        means = torch.zeros(num_classes, unit.shape[1], dtype=torch.float64)
        means.index_add_(0, labels[~held_out], unit[~held_out])
        nearest = (unit[held_out] @ torch.nn.functional.normalize(means, dim=1).T).argmax(dim=1)
        correct += int((nearest == labels[held_out]).sum())
    return correct / len(labels)


def probe_entries(
    pool: Pool,
    candidates: Sequence[tuple[PoolEntry, float]],
    task: Task,
    *,
    samples: int = 512,
    seed: int = 0,
) -> list[ProbedEntry]:
    """Every candidate (entry, similarity) with the nearest-mean accuracy of its own model's features on the
    task, in the candidates' order."""
    images, labels = task_sample(task, samples, seed)
    probed = []
    for entry, similarity in candidates:
        features = penultimate_features(borrowed_entry_model(pool, entry), images)
        probed.append(
            ProbedEntry(entry, similarity, nearest_mean_accuracy(features, labels, len(task.classes)))
        )
    return probed


def best_probed(probed: Sequence[ProbedEntry]) -> ProbedEntry:
    """The candidate with the highest accuracy; the more similar one (earlier) on a tie."""
    if not probed:
        raise DataError("no pool entries to probe")
    return max(probed, key=lambda candidate: candidate.accuracy)
