"""The architecture of a saved pruned model, built without pruning again: a copy of a cached, unpruned template
whose tensors are resized to the saved shapes (then `load_state_dict` fills them).

Re-applying the pruning means tracing a dependency graph (~130 ms for EfficientNet-Lite0 at 32 px); resizing
a copy of the template takes a few milliseconds. It applies when every resized module is one whose shape lives
in its tensors and a few attributes (convolutions, BatchNorm, Linear); anything else (a ViT's attention, whose
head count is an attribute the forward pass reads) returns None and the caller prunes the backbone instead.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

_TEMPLATES: dict[tuple[str, int], nn.Module] = {}
_META: dict[int, nn.Module] = {}
_TEMPLATE_LIMIT = 8


def resized_copy(template: nn.Module, shapes: Mapping[str, tuple[int, ...]]) -> nn.Module | None:
    """An uninitialised copy of `template` with exactly these tensor shapes (state-dict names as keys; the
    classifier included), or None when a module that must change cannot be resized here."""
    model = copy.deepcopy(_on_meta(template))
    modules = dict(model.named_modules())
    current = model.state_dict()
    if set(shapes) != set(current):
        return None
    resized: dict[nn.Module, dict[str, tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        if tuple(current[name].shape) != tuple(shape):
            owner, _, attribute = name.rpartition(".")
            resized.setdefault(modules[owner], {})[attribute] = tuple(shape)
    for module, changed in resized.items():
        if not _resize(module, changed):
            return None
    return model.to_empty(device="cpu")


def _resize(module: nn.Module, changed: dict[str, tuple[int, ...]]) -> bool:
    """Resize the module's tensors to `changed` and update its shape attributes; False if it is not a kind
    whose shape this knows."""
    if not isinstance(module, nn.Conv2d | nn.Linear | nn.modules.batchnorm._BatchNorm):
        return False
    for attribute, shape in changed.items():
        old = getattr(module, attribute)
        fresh = torch.empty(shape, dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            setattr(module, attribute, nn.Parameter(fresh, requires_grad=old.requires_grad))
        else:
            setattr(module, attribute, fresh)
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        if module.groups > 1 and not depthwise:
            return False
        out_channels, per_group = module.weight.shape[:2]
        module.out_channels = int(out_channels)
        module.groups = int(out_channels) if depthwise else 1
        module.in_channels = int(per_group) * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = (int(size) for size in module.weight.shape)
    else:
        module.num_features = (
            int(module.running_mean.shape[0])
            if module.running_mean is not None
            else int(module.weight.shape[0])
        )
    return True


def _on_meta(template: nn.Module) -> nn.Module:
    """The template without storage (copies of it cost Python objects only)."""
    key = id(template)
    if key not in _META:
        _META[key] = copy.deepcopy(template).to("meta")
    return _META[key]


def template(backbone: str, image_size: int) -> nn.Module:
    """The unpruned architecture of a backbone at an input size (random weights), built once per process;
    copy it, never change it."""
    from edge_smsp import zoo

    key = (backbone, image_size)
    if key not in _TEMPLATES:
        if len(_TEMPLATES) >= _TEMPLATE_LIMIT:
            _TEMPLATES.clear()
            _META.clear()
        _TEMPLATES[key] = zoo.load_backbone(backbone, pretrained=False, image_size=image_size)
    return _TEMPLATES[key]
