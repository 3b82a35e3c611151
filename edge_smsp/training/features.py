"""Penultimate features (what the classifier receives) of any model with a Linear classifier, and task samples."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edge_smsp.core.errors import DataError, ModelError
from edge_smsp.data.tasks import Task
from edge_smsp.models.units import classifier_of
from edge_smsp.training.finetune import eval_mode, fast_memory_format


def classifier(model: nn.Module) -> nn.Linear:
    """The model's final Linear classifier (ModelError when it has none)."""
    found = classifier_of(model)
    if found is None or not isinstance(found[1], nn.Linear):
        raise ModelError(f"model {type(model).__name__} has no Linear classifier")
    return found[1]


@torch.no_grad()
def penultimate_features(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The classifier's input for every image ([N, F] float32), computed in eval mode."""
    if images.ndim != 4 or len(images) == 0:
        raise DataError(f"images must be a non-empty [N, 3, H, W] tensor, got shape {tuple(images.shape)}")
    head = classifier(model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, args: captured.append(args[0].detach().float()))
    parameter = next(model.parameters())
    try:
        with eval_mode(model), fast_memory_format(model) as memory_format:
            for chunk in images.split(batch_size):
                model(chunk.to(device=parameter.device, dtype=parameter.dtype, memory_format=memory_format))
    finally:
        hook.remove()
    return torch.cat(captured).flatten(1).cpu()


def task_sample(task: Task, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded, class-balanced sample of at most `samples` training images and their labels."""
    if samples < len(task.classes):
        raise DataError(f"need at least one sample per class ({len(task.classes)}), got {samples}")
    labels = task.train.labels
    generator = torch.Generator().manual_seed(seed)
    per_class = samples // len(task.classes)
    picked = []
    for label in range(len(task.classes)):
        members = torch.nonzero(labels == label).flatten()
        if len(members) == 0:
            raise DataError(f"task {task.task_id} has no training images of class {task.class_names[label]}")
        picked.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    indices = torch.cat(picked)
    return task.train.batch(indices)


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """Mean feature of every class ([k, F] float64); a class without samples is an error."""
    counts = torch.bincount(labels, minlength=num_classes)
    if bool((counts == 0).any()):
        raise DataError(f"every class needs at least one sample, got counts {counts.tolist()}")
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    sums.index_add_(0, labels, features.to(torch.float64))
    return (sums / counts[:, None]).numpy()
