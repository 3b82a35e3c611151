"""Recovery steps tried on the pool tasks and not adopted (RESULTS.md "What was tried"): a linear probe after the
imprinted head (the LP of LP-FT, Kumar et al. 2022: full-batch head-only L-BFGS steps on the cached features)
and a shrunk imprint. `StudyRecipe` extends the product's `Recipe` with them; `study_recover` runs the product's
steps, then these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edge_smsp.core.errors import EdgeSmspError
from edge_smsp.data.tasks import Task
from edge_smsp.training.features import classifier, penultimate_features, task_sample
from edge_smsp.training.recipe import Recipe
from edge_smsp.training.recovery import RecoveryReport, imprint_head, recover


@dataclass(frozen=True)
class StudyRecipe(Recipe):
    """A product recipe plus the steps the studies tried."""

    linear_probe_steps: int = 0  # full-batch L-BFGS steps on the head alone (0: no linear probe)
    linear_probe_l2: float = 1e-3  # L2 penalty of the probe on the head's weights
    imprint_shrink: float = 1.0  # multiplies the fitted scale: < 1 starts the head less confident

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.linear_probe_steps < 0 or self.linear_probe_l2 < 0 or not self.imprint_shrink > 0:
            raise EdgeSmspError(f"invalid recipe {self}")

    @property
    def needs_features(self) -> bool:
        return self.imprint or self.linear_probe_steps > 0


def study_recover(
    model: nn.Module, task: Task, recipe: Recipe, seed: int = 0, keep_rows: Sequence[int] = ()
) -> RecoveryReport:
    """The product's recovery (adaptive BN, imprint), then a study recipe's shrunk imprint and linear probe on
    the same seeded sample of training images."""
    if not isinstance(recipe, StudyRecipe) or (
        recipe.imprint_shrink == 1.0 and not recipe.linear_probe_steps
    ):
        return recover(model, task, recipe, seed, keep_rows=keep_rows)
    shrunk = recipe.imprint and recipe.imprint_shrink != 1.0
    base = Recipe(
        recipe.name, recipe.adaptive_bn, recipe.imprint and not shrunk, recipe.samples, recipe.bn_batch_size
    )
    report = recover(model, task, base, seed, keep_rows=keep_rows)
    images, labels = task_sample(task, recipe.samples, seed)
    features = penultimate_features(model, images)
    if shrunk:
        report.head_scale = imprint_head(model, features, labels, recipe.imprint_shrink, keep_rows)
        report.steps.append("imprint")
    if recipe.linear_probe_steps:
        linear_probe(model, features, labels, recipe.linear_probe_steps, recipe.linear_probe_l2)
        report.steps.append("probe")
    return report


def linear_probe(
    model: nn.Module, features: torch.Tensor, labels: torch.Tensor, steps: int, l2: float = 1e-3
) -> tuple[float, float]:
    """Full-batch L-BFGS on the classifier alone (features fixed); returns the loss before and after."""
    head = classifier(model)
    weight = head.weight.detach().clone().to(torch.float64).requires_grad_(True)
    bias = (
        head.bias.detach().clone().to(torch.float64)
        if head.bias is not None
        else torch.zeros(head.out_features, dtype=torch.float64)
    ).requires_grad_(head.bias is not None)
    inputs = features.to(torch.float64)
    targets = labels.to(torch.int64)

    def loss_value() -> torch.Tensor:
        return F.cross_entropy(inputs @ weight.T + bias, targets) + l2 * weight.pow(2).sum()

    params = [weight] + ([bias] if head.bias is not None else [])
    optimizer = torch.optim.LBFGS(params, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_value()
        loss.backward()
        return loss

    with torch.enable_grad():
        before = float(loss_value().detach())
        optimizer.step(closure)
        after = float(loss_value().detach())
    if not math.isfinite(after):
        raise EdgeSmspError("the linear probe diverged")
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_(bias.to(head.bias.dtype))
    return before, after
