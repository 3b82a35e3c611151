"""The recovery steps between one-shot pruning and fine-tuning: adaptive BatchNorm and an imprinted head.

- Adaptive BN (EagleEye, Li et al. 2020): after units are removed, and on a new domain, the stored BatchNorm
  statistics no longer describe the activations; re-estimate them on the task's own images (no gradient).
- Weight imprinting (Qi et al. 2018): the new classifier starts from the class prototypes of the penultimate
  features instead of random rows, so the first fine-tuning steps train features, not a head.

Each step works on any model with BatchNorm layers and a Linear classifier; edge_smsp.training.recipe names the
combinations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_smsp.core.errors import EdgeSmspError
from edge_smsp.data.tasks import Task
from edge_smsp.training.features import class_means, classifier, penultimate_features, task_sample
from edge_smsp.training.finetune import eval_mode, fast_memory_format
from edge_smsp.training.recipe import Recipe

# A fitted scale must not drive the head to certainty on separable features: keep 10 % of the mass off the label.
_SCALE_LABEL_SMOOTHING = 0.1
_SCALE_RANGE = (1e-3, 1e3)


@dataclass
class RecoveryReport:
    """What `recover` did: the steps that ran, seconds per step, the head's fitted scale."""

    recipe: str
    steps: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    bn_layers: int = 0
    head_scale: float | None = None


def recover(
    model: nn.Module, task: Task, recipe: Recipe, seed: int = 0, keep_rows: Sequence[int] = ()
) -> RecoveryReport:
    """Run the recipe's steps on `model` (in place) with a seeded sample of the task's training images;
    imprinting leaves the classifier rows `keep_rows` (inherited ones) as they are."""
    report = RecoveryReport(recipe=recipe.name)
    if not (recipe.adaptive_bn or recipe.needs_features):
        return report
    started = time.perf_counter()
    images, labels = task_sample(task, recipe.samples, seed)
    report.seconds["sample"] = time.perf_counter() - started
    if recipe.adaptive_bn:
        started = time.perf_counter()
        report.bn_layers = adaptive_bn(model, images, recipe.bn_batch_size)
        report.steps.append("adaptive_bn")
        report.seconds["adaptive_bn"] = time.perf_counter() - started
    if recipe.needs_features:
        started = time.perf_counter()
        features = penultimate_features(model, images)
        report.seconds["features"] = time.perf_counter() - started
        started = time.perf_counter()
        if not _separates_classes(features, labels, len(task.classes)):
            # Seen without adaptive BN after pruning: stale statistics drive the last ReLU6 to 0 for every image.
            report.steps.append("head skipped: the features do not separate the classes")
        else:
            if recipe.imprint:
                report.head_scale = imprint_head(model, features, labels, keep_rows=keep_rows)
                report.steps.append("imprint")
        report.seconds["head"] = time.perf_counter() - started
    report.seconds = {name: round(value, 3) for name, value in report.seconds.items()}
    return report


@torch.no_grad()
def adaptive_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> int:
    """Replace every BatchNorm layer's running statistics by their average over `images`; returns the count."""
    layers = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    parameter = next(model.parameters())
    try:
        with eval_mode(model), fast_memory_format(model) as memory_format:
            for layer in layers:
                layer.reset_running_stats()
                layer.momentum = None  # a cumulative average over the batches, not an exponential one
                layer.train()
            for chunk in images.split(batch_size):
                if len(chunk) < 2:  # train-mode BatchNorm cannot normalise a batch of one
                    continue
                model(chunk.to(device=parameter.device, dtype=parameter.dtype, memory_format=memory_format))
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)


@torch.no_grad()
def imprint_head(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    shrink: float = 1.0,
    keep_rows: Sequence[int] = (),
) -> float | None:
    """Set the classifier to scaled, centred class-prototype directions; returns the fitted scale.

    With c the mean of the class means and u_k the unit direction of (mean_k - c), logit_k = s * u_k . (x - c):
    every class mean is classified as its own class (u_k . (mean_k - c) = |mean_k - c| is the largest
    projection of mean_k), and s is the maximum-likelihood scale (label-smoothed, so it stays finite).
    """
    head = classifier(model)
    num_classes = head.out_features
    means = torch.from_numpy(class_means(features, labels, num_classes))
    centre = means.mean(dim=0)
    offsets = means - centre
    norms = offsets.norm(dim=1, keepdim=True)
    if bool((norms <= 0).any()):
        raise EdgeSmspError("two classes have identical prototypes: cannot imprint a head")
    directions = offsets / norms
    inputs = features.to(torch.float64)
    projections = (inputs - centre) @ directions.T
    kept = torch.zeros(num_classes, dtype=torch.bool)
    kept[list(keep_rows)] = True
    if bool(kept.all()):
        return None
    # Rows kept as they are (inherited from a pool entry) enter the fit with their own logits.
    fixed = inputs @ head.weight.detach().to(torch.float64).T
    if head.bias is not None:
        fixed = fixed + head.bias.detach().to(torch.float64)
    scale = shrink * _fitted_scale(projections, labels, fixed, kept)
    fresh = ~kept
    head.weight[fresh] = (scale * directions[fresh]).to(head.weight.dtype)
    if head.bias is not None:
        head.bias[fresh] = (-scale * directions[fresh] @ centre).to(head.bias.dtype)
    return scale


def _separates_classes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> bool:
    means = torch.from_numpy(class_means(features, labels, num_classes))
    return bool(((means - means.mean(dim=0)).norm(dim=1) > 0).all())


def _fitted_scale(
    projections: torch.Tensor, labels: torch.Tensor, fixed: torch.Tensor, kept: torch.Tensor
) -> float:
    """The scale s minimising label-smoothed cross-entropy of the logits s * projections (the `kept` columns:
    their `fixed` logits): golden-section on log s."""

    def loss(log_scale: float) -> float:
        logits = torch.where(kept, fixed, math.exp(log_scale) * projections)
        return float(F.cross_entropy(logits, labels, label_smoothing=_SCALE_LABEL_SMOOTHING))

    low, high = (math.log(bound) for bound in _SCALE_RANGE)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    loss_left, loss_right = loss(left), loss(right)
    for _ in range(60):
        if loss_left < loss_right:
            high, right, loss_right = right, left, loss_left
            left = high - ratio * (high - low)
            loss_left = loss(left)
        else:
            low, left, loss_left = left, right, loss_right
            right = low + ratio * (high - low)
            loss_right = loss(right)
    return float(np.exp((low + high) / 2.0))
