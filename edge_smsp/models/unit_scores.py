"""The criteria's arithmetic (one score per unit of every group): random, magnitude (L1), first-order Taylor.

Which criterion a name means is the score-source registry's decision (edge_smsp.criteria)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional

from edge_smsp.core.errors import PruneError
from edge_smsp.models.units import (
    UnitGroup,
    dependency_graph,
    full_channel_group,
    group_layouts,
    head_rows,
    is_vit,
)


def random_scores(model: nn.Module, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded uniform random scores."""
    generator = np.random.default_rng(seed)
    return {group.key: generator.random(group.size) for group in group_layouts(model)}


def unit_l1_norms(model: nn.Module) -> dict[str, np.ndarray]:
    """L1 norm of each unit's weights over its whole group (Torch-Pruning's group magnitude, p=1)."""
    magnitude = tp.importance.GroupMagnitudeImportance(p=1, group_reduction="sum", normalizer=None)
    with torch.no_grad():
        return _group_scores(model, magnitude, lambda weight, grad: weight.abs())


def taylor_scores(model: nn.Module, batches: Iterable[tuple[Any, Any]] | None) -> dict[str, np.ndarray]:
    """|weight x gradient| summed over each unit's group, gradients of the cross-entropy over the batches."""
    if batches is None:
        raise PruneError("taylor importance needs batches of (images, labels)")
    # A private copy keeps the caller's gradients, BN statistics and train/eval flags untouched.
    scratch = copy.deepcopy(model).eval()
    for parameter in scratch.parameters():
        parameter.requires_grad_(True)
        parameter.grad = None
    parameter = next(scratch.parameters())
    seen = 0
    with torch.enable_grad():
        for images, labels in batches:
            images = torch.as_tensor(images).to(device=parameter.device, dtype=parameter.dtype)
            labels = torch.as_tensor(labels).to(device=parameter.device, dtype=torch.long)
            logits = scratch(images)
            if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[-1]):
                raise PruneError(f"labels must lie in [0, {logits.shape[-1]}) for this model's classifier")
            functional.cross_entropy(logits, labels).backward()
            seen += 1
    if seen == 0:
        raise PruneError("taylor importance needs at least one batch")
    taylor = tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None)
    with torch.no_grad():
        return _group_scores(scratch, taylor, lambda weight, grad: (weight * grad).abs())


def _group_scores(
    model: nn.Module, channel_importance: tp.importance.Importance, unit_term
) -> dict[str, Any]:
    graph = None if is_vit(model) else dependency_graph(model)
    layouts = group_layouts(model, graph)
    scores: dict[str, np.ndarray] = {}
    for layout in layouts:
        if layout.kind == "heads":
            scores[layout.key] = _head_scores(model, layout, unit_term)
            continue
        if graph is None:
            graph = dependency_graph(model)
        values = channel_importance(full_channel_group(graph, model, layout))
        if values is None:
            values = torch.zeros(layout.size)
        scores[layout.key] = values.detach().to(torch.float64).cpu().numpy()
    return scores


def _head_scores(model: nn.Module, layout: UnitGroup, unit_term) -> np.ndarray:
    attention = model.get_submodule(layout.module_name)
    qkv, proj = attention.qkv.weight, attention.proj.weight
    scores = np.zeros(layout.size)
    for head in range(layout.size):
        rows, columns = head_rows(attention, [head])
        total = unit_term(qkv[rows], _grad(qkv, rows, rows_first=True)).sum()
        total = total + unit_term(proj[:, columns], _grad(proj, columns, rows_first=False)).sum()
        scores[head] = float(total)
    return scores


def _grad(weight: torch.Tensor, indices: list[int], *, rows_first: bool) -> torch.Tensor | None:
    if weight.grad is None:
        return None
    return weight.grad[indices] if rows_first else weight.grad[:, indices]


def unit_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1): comparable across groups and entries whatever the scores' scale."""
    values = np.asarray(values, dtype=np.float64)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks / max(len(values), 1)
