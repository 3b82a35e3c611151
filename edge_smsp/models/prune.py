"""Physical pruning: keep the highest-scoring units of every group, slice the weights, save and reload."""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from edge_smsp.core.errors import PlanError, PruneError, error_text
from edge_smsp.core.ratio import checked_ratio
from edge_smsp.models.cost import measure_cost
from edge_smsp.models.unit_scores import unit_l1_norms
from edge_smsp.models.units import (
    UnitGroup,
    classifier_of,
    copy_with_layouts,
    dependency_graph,
    group_layouts,
    has_cached_layouts,
    is_vit,
    model_input_size,
    prune_heads,
    pruning_group,
    shape_signature,
)

# Set on every pruned model: for each group, the indices of the backbone units it still has.
KEPT_ATTRIBUTE = "edge_smsp_kept_indices"
SIZES_ATTRIBUTE = "edge_smsp_backbone_sizes"
_cost_cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[int, int]]] = weakref.WeakKeyDictionary()


@dataclass
class PruneSummary:
    """What one prune() call did: size and cost before/after and the units kept per group."""

    ratio: float | None
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    image_size: int
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {"kind", "size", "kept"}
    kept_indices: dict[str, list[int]] = field(default_factory=dict)  # indices into the input model's units

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return dataclasses.asdict(self)


def prune(
    model: nn.Module,
    scores: Mapping[str, Any] | None = None,
    ratio: float | None = None,
    *,
    keep_counts: Mapping[str, int] | None = None,
    keep_indices: Mapping[str, Any] | None = None,
    round_to: int = 8,
    tie_break: Mapping[str, Any] | Callable[[nn.Module], Mapping[str, Any]] = unit_l1_norms,
    image_size: int | None = None,
) -> tuple[nn.Module, PruneSummary]:
    """Return a physically pruned deep copy of `model` and a summary; the input model is left untouched."""
    layouts = group_layouts(model)
    by_key = {layout.key: layout for layout in layouts}
    ratio = None if ratio is None else checked_ratio(ratio)
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise PruneError(f"round_to must be an integer >= 1, got {round_to!r}")
    keep_counts = dict(keep_counts or {})
    keep_indices = dict(keep_indices or {})
    for name, mapping in (
        ("scores", scores),
        ("keep_counts", keep_counts),
        ("keep_indices", keep_indices),
        ("tie_break", None if callable(tie_break) else tie_break),
    ):
        _check_known_keys(name, mapping, by_key)
    if ratio is None and not keep_counts and not keep_indices:
        raise PruneError("nothing to prune: give a ratio, keep_counts or keep_indices")

    counts: dict[str, int] = {}
    kept: dict[str, list[int]] = {}
    for layout in layouts:
        key, size = layout.key, layout.size
        if key in keep_indices:
            kept[key] = checked_indices(key, keep_indices[key], size)
        elif key in keep_counts:
            counts[key] = _checked_count(key, keep_counts[key], size)
        elif ratio is not None:
            counts[key] = keep_count(size, ratio, layout.kind, round_to)
        else:
            kept[key] = list(range(size))
    score_arrays = {
        key: _checked_scores("scores", key, scores[key], by_key[key].size) for key in (scores or {})
    }
    if scores is not None and (missing := [key for key in counts if key not in score_arrays]):
        raise PruneError(f"scores missing for {len(missing)} group(s), e.g. {missing[0]!r}")
    primaries = {key: score_arrays.get(key, np.zeros(by_key[key].size)) for key in counts}
    if callable(tie_break):
        # Scoring the tie-break costs a pass over the weights: only when a cut falls inside a run of equal scores.
        ties_at_cut = any(_tie_at_cut(primaries[key], count) for key, count in counts.items())
        tie_break = tie_break(model) if ties_at_cut else {}
    tie_arrays = {
        key: _checked_scores("tie_break", key, tie_break[key], by_key[key].size) for key in tie_break
    }
    for key, count in counts.items():
        size = by_key[key].size
        ties = tie_arrays.get(key, np.zeros(size))
        order = np.lexsort((np.arange(size), -ties, -primaries[key]))
        kept[key] = sorted(int(index) for index in order[:count])

    size_px = model_input_size(model, image_size)
    macs_before, params_before = _cached_count(model, size_px)
    pruned = copy_with_layouts(model)
    apply_kept_indices(pruned, kept)
    try:
        macs_after, params_after = _count(pruned, size_px)
    except RuntimeError as error:
        raise PruneError(f"the pruned model does not run: {error_text(error)}") from error
    summary = PruneSummary(
        ratio=ratio,
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
        image_size=size_px,
        groups={
            layout.key: {"kind": layout.kind, "size": layout.size, "kept": len(kept[layout.key])}
            for layout in layouts
        },
        kept_indices=kept,
    )
    return pruned, summary


def keep_count(size: int, ratio: float, kind: str, round_to: int = 8) -> int:
    """Units kept of a group of `size` at `ratio`: ceil((1-ratio)*size) >= 1, rounded to round_to (not heads)."""
    # round() first so that e.g. (1 - 0.3) * 10 = 7.000000000000001 keeps 7, not 8.
    count = max(1, math.ceil(round((1.0 - ratio) * size, 6)))
    if kind != "heads" and round_to > 1 and size >= round_to:
        count = int(math.floor(count / round_to + 0.5)) * round_to
        count = max(round_to, min(count, size))
    return count


def apply_kept_indices(model: nn.Module, kept: Mapping[str, list[int]]) -> None:
    """Prune `model` in place so that group `key` keeps exactly the units kept[key] (sorted, in range)."""
    # A CNN needs its graph for the layouts (unless cached) and for the surgery: build it once.
    graph = None if is_vit(model) or has_cached_layouts(model) else dependency_graph(model)
    layouts = group_layouts(model, graph)
    removals = {
        layout.key: sorted(set(range(layout.size)) - set(kept[layout.key]))
        for layout in layouts
        if layout.key in kept
    }
    previous_kept = kept_indices(model)
    backbone_sizes = backbone_group_sizes(model)
    if {key: len(indices) for key, indices in previous_kept.items()} != {g.key: g.size for g in layouts}:
        raise PruneError(
            "this model's unit groups no longer match its backbone's; prune the backbone instead"
        )
    channel_layouts = [layout for layout in layouts if layout.kind != "heads" and removals.get(layout.key)]
    if channel_layouts and graph is None:
        graph = dependency_graph(model)
    for layout in channel_layouts:
        _prune_group(graph, model, layout, removals[layout.key])
    for layout in layouts:
        if layout.kind == "heads" and removals.get(layout.key):
            prune_heads(model.get_submodule(layout.module_name), removals[layout.key])
    _sync_cached_dims(model)
    cumulative = {
        key: [previous_kept[key][index] for index in kept[key]] if key in kept else previous_kept[key]
        for key in previous_kept
    }
    setattr(model, KEPT_ATTRIBUTE, cumulative)
    setattr(model, SIZES_ATTRIBUTE, backbone_sizes)


def kept_indices(model: nn.Module) -> dict[str, list[int]]:
    """For every group, the indices of the backbone's units this model still has (all of them if unpruned)."""
    stored = getattr(model, KEPT_ATTRIBUTE, None)
    if stored is not None:
        return {key: list(indices) for key, indices in stored.items()}
    return {layout.key: list(range(layout.size)) for layout in group_layouts(model)}


def backbone_group_sizes(model: nn.Module) -> dict[str, int]:
    """Unit count of every group in the unpruned backbone this model came from."""
    stored = getattr(model, SIZES_ATTRIBUTE, None)
    if stored is not None:
        return dict(stored)
    return {layout.key: layout.size for layout in group_layouts(model)}


def kept_mask(model: nn.Module) -> dict[str, np.ndarray]:
    """Binary mask over the backbone's units: 1 where this model kept the unit."""
    sizes = backbone_group_sizes(model)
    masks = {}
    for key, indices in kept_indices(model).items():
        mask = np.zeros(sizes[key], dtype=np.uint8)
        mask[indices] = 1
        masks[key] = mask
    return masks


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Put a fresh Linear classifier with the current in_features and `num_classes` outputs (in place)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise PruneError(f"num_classes must be a positive integer, got {num_classes!r}")
    found = classifier_of(model)
    if found is None or not isinstance(found[1], nn.Linear):
        raise PruneError(f"model {type(model).__name__} has no Linear classifier to replace")
    name, old = found
    weight = old.weight
    new = nn.Linear(
        old.in_features, num_classes, bias=old.bias is not None, dtype=weight.dtype, device=weight.device
    )
    new.train(old.training)
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, new)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    spec = getattr(model, "backbone_spec", None)
    if dataclasses.is_dataclass(spec) and hasattr(spec, "num_classes"):
        model.backbone_spec = dataclasses.replace(spec, num_classes=num_classes)
    return model


def _prune_group(graph: tp.DependencyGraph, model: nn.Module, layout: UnitGroup, removed: list[int]) -> None:
    pruning_group(graph, model, layout, removed).prune(record_history=False)


def _sync_cached_dims(model: nn.Module) -> None:
    """timm CNNs cache their feature width; keep it equal to what the classifier now receives."""
    if is_vit(model):
        return
    found = classifier_of(model)
    if found is None or not isinstance(found[1], nn.Linear):
        return
    width = int(found[1].in_features)
    pool = getattr(model, "global_pool", None)
    multiplier = int(pool.feat_mult()) if hasattr(pool, "feat_mult") else 1
    if hasattr(model, "num_features"):
        model.num_features = width // multiplier
    if hasattr(model, "head_hidden_size"):
        model.head_hidden_size = width


def _cached_count(model: nn.Module, image_size: int) -> tuple[int, int]:
    """MACs and params depend only on shapes: reuse them across prune() calls on the same model."""
    key = (shape_signature(model), image_size)
    per_model = _cost_cache.setdefault(model, {})
    if key not in per_model:
        per_model.clear()
        per_model[key] = _count(model, image_size)
    return per_model[key]


def _count(model: nn.Module, image_size: int) -> tuple[int, int]:
    try:
        cost = measure_cost(model, image_size)
    except PlanError as error:
        raise PruneError(str(error)) from error
    return cost.macs, cost.params


def _tie_at_cut(scores: np.ndarray, count: int) -> bool:
    """True when the last kept and first dropped units score the same, so the tie-break decides."""
    if count >= scores.shape[0]:
        return False
    ranked = np.sort(scores)[::-1]
    return bool(ranked[count - 1] == ranked[count])


def _check_known_keys(name: str, mapping: Mapping[str, Any] | None, by_key: Mapping[str, UnitGroup]) -> None:
    if mapping is None:
        return
    if not isinstance(mapping, Mapping):
        raise PruneError(f"{name} must map group keys to values, got {type(mapping).__name__}")
    unknown = [key for key in mapping if key not in by_key]
    if unknown:
        raise PruneError(f"{name}: unknown group key {unknown[0]!r} ({len(unknown)} unknown in all)")


def _checked_scores(name: str, key: str, values: Any, size: int) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise PruneError(f"{name}[{key!r}] is not numeric") from None
    if array.ndim != 1 or array.shape[0] != size:
        raise PruneError(f"{name}[{key!r}] has shape {array.shape}, expected ({size},)")
    if np.isnan(array).any():
        raise PruneError(f"{name}[{key!r}] contains NaN")
    return array


def _checked_count(key: str, count: Any, size: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or not 1 <= int(count) <= size:
        raise PruneError(f"keep_counts[{key!r}] must be an integer in [1, {size}], got {count!r}")
    return int(count)


def checked_indices(key: str, indices: Any, size: int) -> list[int]:
    if isinstance(indices, torch.Tensor | np.ndarray):
        indices = indices.tolist()
    if isinstance(indices, str | bytes) or not hasattr(indices, "__iter__"):
        raise PruneError(f"keep_indices[{key!r}] must be a list of integers")
    values = list(indices)
    if not all(isinstance(index, int | np.integer) and not isinstance(index, bool) for index in values):
        raise PruneError(f"keep_indices[{key!r}] must be a list of integers")
    if not values:
        raise PruneError(f"keep_indices[{key!r}] is empty: every group keeps at least one unit")
    values = [int(index) for index in values]
    if len(set(values)) != len(values) or min(values) < 0 or max(values) >= size:
        raise PruneError(f"keep_indices[{key!r}] must be distinct indices in [0, {size})")
    return sorted(values)
