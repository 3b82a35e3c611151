"""Task descriptors from the shared backbone: class prototypes (the similarity itself is numpy code in
edge_smsp.data.descriptors)."""

from __future__ import annotations

import numpy as np
from torch import nn

from edge_smsp.data.descriptors import DESCRIPTOR_DTYPE
from edge_smsp.data.tasks import Task
from edge_smsp.training.features import class_means, penultimate_features, task_sample


def task_descriptor(backbone: nn.Module, task: Task, samples: int = 512, seed: int = 0) -> np.ndarray:
    """Class prototypes of a task: mean penultimate feature of the unpruned backbone per class, [k, F]."""
    images, labels = task_sample(task, samples, seed)
    features = penultimate_features(backbone, images)
    return class_means(features, labels, len(task.classes)).astype(DESCRIPTOR_DTYPE)
