"""Weight inheritance: start a pruned sub-network from pool entries' fine-tuned weights, not the backbone's.

Every tensor element of a pruned model is one element of the backbone's tensor of the same name, at the backbone
indices its kept units map to. `coordinates` finds that map for any architecture pruning can cut, without
knowing how it cuts: fill a float64 copy of the backbone with each element's own (dim 0, dim 1) index, prune it
the same way, read back which indices survived. `inherit` then overwrites each element of the new sub-network
with the weighted mean of the sources (pool entries' pruned models) that hold the same backbone element, and
leaves the backbone's value where none does. The classifier is not inherited (the new task has its own classes).
The result is the same physically pruned dense model, with other values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from edge_smsp.core.errors import PoolError, PruneError
from edge_smsp.models.prune import KEPT_ATTRIBUTE, apply_kept_indices, kept_indices
from edge_smsp.models.units import classifier_of, copy_with_layouts

# (dim 0 index) * _STRIDE + (dim 1 index) is exact in float64 for any dimension below 2**26.
_STRIDE = float(2**26)
Coordinates = dict[str, tuple[np.ndarray | None, ...]]
_coordinate_cache: dict[tuple[int, str], Coordinates] = {}
_CACHE_LIMIT = 64


@dataclass
class InheritReport:
    """How many of the sub-network's inherited elements came from 0, 1, 2, ... sources."""

    elements: int = 0
    covered_by: dict[int, int] = field(default_factory=dict)

    @property
    def covered_fraction(self) -> float:
        """Fraction of the elements at least one source held."""
        missing = self.covered_by.get(0, 0)
        return 1.0 - missing / self.elements if self.elements else 0.0


def coordinates(backbone: nn.Module, kept: Mapping[str, Sequence[int]]) -> Coordinates:
    """For each tensor of `backbone` pruned to `kept`: per dimension, the backbone index of every position
    (None where that dimension is not pruned: the identity)."""
    digest = hashlib.sha256(json.dumps({k: list(map(int, v)) for k, v in sorted(kept.items())}).encode())
    cache_key = (id(backbone), digest.hexdigest())
    if cache_key in _coordinate_cache:
        return _coordinate_cache[cache_key]
    if getattr(backbone, KEPT_ATTRIBUTE, None) is not None:
        raise PruneError("coordinates are measured on the unpruned backbone, not on a pruned model")
    probe = copy_with_layouts(backbone).to("cpu", torch.float64)
    original_shapes = {}
    with torch.no_grad():
        for name, tensor in _tensors(probe).items():
            original_shapes[name] = tuple(tensor.shape)
            tensor.copy_(_encoded_indices(tensor.shape))
    apply_kept_indices(probe, {key: sorted(int(i) for i in indices) for key, indices in kept.items()})
    result: Coordinates = {}
    for name, tensor in _tensors(probe).items():
        shape, before = tuple(tensor.shape), original_shapes[name]
        if len(shape) != len(before) or shape[2:] != before[2:]:
            raise PruneError(
                f"pruning changed dimensions beyond the first two of {name}: {before} -> {shape}"
            )
        values = tensor.detach().reshape(shape[0], -1)[:, 0] if len(shape) > 1 else tensor.detach()
        first = np.rint(values.numpy() / _STRIDE).astype(np.int64) if shape[0] != before[0] else None
        second = None
        if len(shape) > 1 and shape[1] != before[1]:
            row = tensor.detach()[0].reshape(shape[1], -1)[:, 0].numpy()
            second = np.rint(np.mod(row, _STRIDE)).astype(np.int64)
        result[name] = (first, second)
    if len(_coordinate_cache) >= _CACHE_LIMIT:
        _coordinate_cache.clear()
    _coordinate_cache[cache_key] = result
    return result


def inherit(
    target: nn.Module, backbone: nn.Module, sources: Sequence[tuple[nn.Module, float]]
) -> InheritReport:
    """Overwrite `target`'s weights and buffers (classifier excluded), element by element, with the
    weight-averaged values of the `sources` that hold the same backbone element; in place."""
    if not sources:
        raise PoolError("weight inheritance needs at least one source model")
    if any(not weight > 0 for _, weight in sources):
        raise PoolError("source weights must be positive")
    target_map = coordinates(backbone, kept_indices(target))
    source_maps = [(coordinates(backbone, kept_indices(model)), _tensors(model), w) for model, w in sources]
    report = InheritReport()
    skipped = _classifier_tensors(target)
    with torch.no_grad():
        for name, tensor in _tensors(target).items():
            if name in skipped:
                continue
            total = torch.zeros(tensor.shape, dtype=torch.float64)
            weights = torch.zeros(tensor.shape, dtype=torch.float64)
            holders = torch.zeros(tensor.shape, dtype=torch.int64)
            for source_map, source_tensors, weight in source_maps:
                values, held = _aligned(
                    target_map[name], source_map[name], tensor.shape, source_tensors[name]
                )
                total += weight * values * held
                weights += weight * held
                holders += held.to(torch.int64)
            mean = total / weights.clamp(min=1e-300)
            tensor.copy_(
                torch.where(weights > 0, mean, tensor.detach().to("cpu", torch.float64)).to(tensor.dtype)
            )
            counts = torch.bincount(holders.flatten(), minlength=len(sources) + 1)
            for count, number in enumerate(counts.tolist()):
                if number:
                    report.covered_by[count] = report.covered_by.get(count, 0) + number
            report.elements += tensor.numel()
    return report


def inherit_head(
    target: nn.Module,
    backbone: nn.Module,
    source: nn.Module,
    source_classes: Sequence[object],
    target_classes: Sequence[object],
) -> list[int]:
    """Copy the source classifier's rows of the classes both tasks have (compared as given, e.g. (dataset,
    class id)) into `target`'s classifier, feature by backbone feature (0 where the source lacks one); in
    place. Returns the target rows set."""
    target_head, source_head = _linear_head(target), _linear_head(source)
    name = classifier_of(target)[0] + ".weight"  # type: ignore[index]
    target_columns = coordinates(backbone, kept_indices(target)).get(name, (None, None))[1]
    source_columns = coordinates(backbone, kept_indices(source)).get(name, (None, None))[1]
    wanted = _backbone_indices(target_columns, target_head.in_features)
    available = _backbone_indices(source_columns, source_head.in_features)
    lookup = np.full(int(max(wanted.max(), available.max())) + 1, -1, dtype=np.int64)
    lookup[available] = np.arange(len(available))
    positions = torch.from_numpy(lookup[wanted])
    held = positions >= 0
    rows = []
    with torch.no_grad():
        for row, label in enumerate(target_classes):
            if label not in source_classes:
                continue
            source_row = list(source_classes).index(label)
            weights = source_head.weight[source_row].index_select(0, positions.clamp(min=0))
            target_head.weight[row].copy_(torch.where(held, weights, torch.zeros_like(weights)))
            if target_head.bias is not None:
                bias = source_head.bias[source_row] if source_head.bias is not None else 0.0
                target_head.bias[row] = bias
            rows.append(row)
    return rows


def _aligned(
    target_axes: tuple[np.ndarray | None, ...],
    source_axes: tuple[np.ndarray | None, ...],
    target_shape: torch.Size,
    source: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The source's values at the target's positions (any value where it lacks them), and a 0/1 mask of where
    the source holds them."""
    values = source.detach().to("cpu", torch.float64)
    held = torch.ones(target_shape, dtype=torch.float64)
    for dim in range(min(2, len(target_shape))):
        wanted = _backbone_indices(target_axes[dim], target_shape[dim])
        available = _backbone_indices(source_axes[dim], values.shape[dim])
        lookup = np.full(int(max(wanted.max(), available.max())) + 1, -1, dtype=np.int64)
        lookup[available] = np.arange(len(available))
        positions = torch.from_numpy(lookup[wanted])
        values = values.index_select(dim, positions.clamp(min=0))
        shape = [1] * len(target_shape)
        shape[dim] = len(positions)
        held = held * (positions >= 0).to(torch.float64).reshape(shape)
    return values, held


def _backbone_indices(axis: np.ndarray | None, size: int) -> np.ndarray:
    return np.arange(size) if axis is None else axis


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Floating-point parameters and buffers with at least one dimension, by state-dict name."""
    return {
        name: tensor
        for name, tensor in model.state_dict(keep_vars=True).items()
        if tensor.is_floating_point() and tensor.ndim > 0
    }


def _linear_head(model: nn.Module) -> nn.Linear:
    found = classifier_of(model)
    if found is None or not isinstance(found[1], nn.Linear):
        raise PruneError(f"model {type(model).__name__} has no Linear classifier")
    return found[1]


def _classifier_tensors(model: nn.Module) -> set[str]:
    found = classifier_of(model)
    if found is None:
        return set()
    name = found[0]
    return {f"{name}.{suffix}" for suffix, _ in found[1].named_parameters()} | {
        f"{name}.{suffix}" for suffix, _ in found[1].named_buffers()
    }


def _encoded_indices(shape: torch.Size) -> torch.Tensor:
    """Each element's value: its dim-0 index * _STRIDE + its dim-1 index (float64)."""
    first = torch.arange(shape[0], dtype=torch.float64) * _STRIDE
    if len(shape) == 1:
        return first
    second = torch.arange(shape[1], dtype=torch.float64)
    grid = first.reshape(-1, 1) + second.reshape(1, -1)
    return grid.reshape(shape[0], shape[1], *([1] * (len(shape) - 2))).expand(shape).clone()
