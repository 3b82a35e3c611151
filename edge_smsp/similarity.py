"""Task similarity besides LEEP: class prototypes of the shared backbone, and LogME on an entry's features.

Prototype similarity needs no pool model at all: each task is described once by the class means of the
*unpruned backbone's* penultimate features (a [k, F] array, float16 in storage: 7.5 KiB for 3 classes of
EfficientNet-Lite0), and two tasks are compared by how well each new class finds a matching pool class. A pool
task that shares a class with the new task has a near-identical prototype for it (same images' distribution,
same network), so shared classes dominate the score whatever the machine or thread count.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from edge_smsp.data import Task
from edge_smsp.errors import DataError
from edge_smsp.features import class_means, penultimate_features, task_sample

DESCRIPTOR_DTYPE = np.float16


def task_descriptor(backbone: nn.Module, task: Task, samples: int = 512, seed: int = 0) -> np.ndarray:
    """Class prototypes of a task: mean penultimate feature of the unpruned backbone per class, [k, F]."""
    images, labels = task_sample(task, samples, seed)
    features = penultimate_features(backbone, images)
    return class_means(features, labels, len(task.classes)).astype(DESCRIPTOR_DTYPE)


def descriptor_centre(descriptors: list[np.ndarray]) -> np.ndarray:
    """The mean class prototype over a set of task descriptors (one shared origin for cosine similarity)."""
    if not descriptors:
        raise DataError("need at least one descriptor to centre on")
    return np.concatenate([np.asarray(d, dtype=np.float64) for d in descriptors]).mean(axis=0)


# Chosen leave-one-out on the 12 Fashion-MNIST pool tasks (benchmarks/research/rank.py): the class-sharing
# entry ranked first for 12/12 tasks with p in 4..32 (11/12 with p = 1 or 2, where several merely *similar*
# classes, e.g. coat/pullover/shirt, outweigh one identical class); 8 had the widest margin.
DEFAULT_POWER = 8.0


def prototype_similarity(
    query: np.ndarray, entry: np.ndarray, centre: np.ndarray | None = None, power: float = DEFAULT_POWER
) -> float:
    """Soft count of shared classes: sum over the query's classes of (best cosine to an entry class)^power.

    Centred on `centre` (e.g. `descriptor_centre` of the pool), the cosine of two prototypes of one class is
    0.96-1.0 and of two different classes at most ~0.9 (sneaker vs sandal); the power turns that gap into
    ~1 per shared class and a small remainder per merely similar one. Negative cosines count as 0.
    """
    query, entry = _checked(query, "query"), _checked(entry, "entry")
    if query.shape[1] != entry.shape[1]:
        raise DataError(f"descriptors of different widths: {query.shape[1]} vs {entry.shape[1]}")
    if not power > 0:
        raise DataError(f"power must be positive, got {power}")
    if centre is not None:
        query, entry = query - centre, entry - centre
    cosine = _unit_rows(query) @ _unit_rows(entry).T
    return float(np.sum(np.clip(cosine.max(axis=1), 0.0, None) ** power))


def logme(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """LogME (You et al., ICML 2021): mean over classes of the per-sample log maximum evidence of a Bayesian
    linear regression from the features to that class's one-hot target. Higher = more transferable."""
    f = np.asarray(features.numpy() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    y = np.asarray(labels.numpy() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    if f.ndim != 2 or len(f) != len(y) or len(f) < 2:
        raise DataError(f"LogME needs features [N, D] and N labels, N >= 2; got {f.shape} and {y.shape}")
    n, d = f.shape
    left, singular, _ = np.linalg.svd(f, full_matrices=False)
    rank = int(np.sum(singular > 1e-10 * max(singular.max(), 1e-300)))
    left, eigen = left[:, :rank], singular[:rank] ** 2
    evidences = []
    for label in np.unique(y):
        target = (y == label).astype(np.float64)
        projection = left.T @ target
        outside = float(target @ target - projection @ projection)  # the part no linear map of f can fit
        alpha, beta = 1.0, 1.0
        for _ in range(100):
            shrink = beta * eigen / (alpha + beta * eigen)
            gamma = float(shrink.sum())
            weight_norm = float(np.sum(beta**2 * eigen * projection**2 / (alpha + beta * eigen) ** 2))
            residual = float(np.sum((alpha * projection / (alpha + beta * eigen)) ** 2)) + max(outside, 0.0)
            new_alpha, new_beta = gamma / (weight_norm + 1e-12), (n - gamma) / (residual + 1e-12)
            converged = abs(new_alpha / new_beta - alpha / beta) <= 1e-4 * (alpha / beta)
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        log_det = float(np.sum(np.log(alpha + beta * eigen))) + (d - rank) * math.log(alpha)
        evidence = (
            d / 2 * math.log(alpha)
            + n / 2 * math.log(beta)
            - log_det / 2
            - beta / 2 * residual
            - alpha / 2 * weight_norm
            - n / 2 * math.log(2 * math.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def _checked(descriptor: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(descriptor, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or not np.all(np.isfinite(array)):
        raise DataError(f"{name} descriptor must be a finite [k, F] array, got shape {array.shape}")
    return array


def _unit_rows(array: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)
