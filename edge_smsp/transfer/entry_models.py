"""Pool entries' pruned models, loaded fast and cached in-process for repeated adaptations.

Entries pruned at one ratio share their tensor shapes (every group keeps the same number of units), so one
skeleton per shape signature serves them all: an entry's model is that skeleton with the entry's weights
loaded (`load_state_dict`, milliseconds), not the backbone rebuilt and pruned again. The skeleton is shared:
a model from `borrowed_entry_model` is valid until the next borrowed load of the same shapes; take
`entry_model` for one of your own.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from edge_smsp.models.prune import KEPT_ATTRIBUTE
from edge_smsp.models.pruned_model import pruned_from_files
from edge_smsp.pool import Pool, PoolEntry

_STATE_LIMIT = 32  # decoded entries kept (about 4 MB each for EfficientNet-Lite0 at r = 0.5)
_SKELETON_LIMIT = 8
_states: OrderedDict[tuple[str, int, str], tuple[dict[str, Any], dict[str, torch.Tensor]]] = OrderedDict()
_skeletons: OrderedDict[tuple, nn.Module] = OrderedDict()


def entry_weights(pool: Pool, entry: PoolEntry) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(pruned.json contents, state dict) of an entry's stored model, read and checked once per process."""
    key = (str(pool.path.resolve()), entry.id, entry.created)
    if key in _states:
        _states.move_to_end(key)
        return _states[key]
    model, meta = pruned_from_files(pool.entry_files(entry.id), f"pool {pool.path} entry {entry.id}")
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    _remember(_skeletons, _signature(state), model, _SKELETON_LIMIT)
    _remember(_states, key, (meta, state), _STATE_LIMIT)
    return meta, state


def borrowed_entry_model(pool: Pool, entry: PoolEntry) -> nn.Module:
    """The entry's model in eval mode, on the shared skeleton of its shapes: read it before the next borrowed
    load of the same shapes, and do not change it."""
    meta, state = entry_weights(pool, entry)
    signature = _signature(state)
    skeleton = _skeletons.get(signature)
    if skeleton is None:
        skeleton, _ = pruned_from_files(pool.entry_files(entry.id), f"pool {pool.path} entry {entry.id}")
        _remember(_skeletons, signature, skeleton, _SKELETON_LIMIT)
    else:
        _skeletons.move_to_end(signature)
    skeleton.load_state_dict(state, strict=True)
    setattr(skeleton, KEPT_ATTRIBUTE, {key: list(values) for key, values in meta["kept_indices"].items()})
    return skeleton.eval()


def entry_model(pool: Pool, entry: PoolEntry) -> nn.Module:
    """A model of the entry's own (a copy of the borrowed one)."""
    return copy.deepcopy(borrowed_entry_model(pool, entry))


def clear_cache() -> None:
    """Forget every decoded entry and skeleton (e.g. to time a cold start)."""
    _states.clear()
    _skeletons.clear()


def _signature(state: Mapping[str, torch.Tensor]) -> tuple:
    return tuple((name, tuple(tensor.shape)) for name, tensor in state.items())


def _remember(cache: OrderedDict, key: Any, value: Any, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)
