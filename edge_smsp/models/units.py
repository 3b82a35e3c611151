"""The prunable units of a model: coupled conv channel groups, attention heads and FFN nodes, with stable keys."""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch_pruning as tp
from timm.layers import Attention, Mlp
from torch import nn

from edge_smsp.core.errors import PruneError, error_text

KINDS = ("channels", "heads", "ffn")
DEFAULT_IMAGE_SIZE = 224
# Channel coupling does not depend on the spatial size, so CNNs are traced small to keep the graph build cheap.
CNN_TRACE_SIZE = 64


HEADS_SUFFIX = ".heads"


@dataclass(frozen=True)
class UnitGroup:
    """Units that are pruned together: `size` units, indexed 0..size-1, under a stable key."""

    key: str
    kind: str  # "channels" | "heads" | "ffn"
    size: int

    @property
    def module_name(self) -> str:
        """The group's root module: the out-channel conv/linear, the Attention module, or the Mlp's fc1."""
        return self.key.removesuffix(HEADS_SUFFIX) if self.kind == "heads" else self.key


_layout_cache: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, tuple[UnitGroup, ...]]] = (
    weakref.WeakKeyDictionary()
)


def unit_groups(model: nn.Module) -> list[UnitGroup]:
    """Prunable groups of a model in a stable order (named_modules order of each group's root)."""
    return list(group_layouts(model))


def model_input_size(model: nn.Module, image_size: int | None = None) -> int:
    """Square input size of a model: explicit, else its backbone spec, ViT patch grid, timm config, or 224."""
    if image_size is not None:
        return int(image_size)
    spec = getattr(model, "backbone_spec", None)
    if spec is not None and getattr(spec, "input_size", None):
        return int(spec.input_size)
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size:
        return int(img_size[0] if isinstance(img_size, tuple | list) else img_size)
    config = getattr(model, "pretrained_cfg", None) or {}
    if config.get("input_size"):
        return int(config["input_size"][-1])
    return DEFAULT_IMAGE_SIZE


def example_input(model: nn.Module, image_size: int) -> torch.Tensor:
    """A zero batch of one image with the model's channel count, dtype and device."""
    parameter = next(model.parameters())
    config = getattr(model, "pretrained_cfg", None) or {}
    channels = int(config["input_size"][0]) if config.get("input_size") else 3
    return torch.zeros(1, channels, image_size, image_size, dtype=parameter.dtype, device=parameter.device)


def is_vit(model: nn.Module) -> bool:
    """True for timm vision transformers (models built from timm's Attention blocks)."""
    return any(isinstance(module, Attention) for module in model.modules())


def classifier_of(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of the final classifier: timm's get_classifier(), else the last Linear."""
    names = {module: name for name, module in model.named_modules()}
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Module) and head in names and not isinstance(head, nn.Identity):
            return names[head], head
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval flag afterwards (graph tracing switches the model to eval)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def dependency_graph(model: nn.Module, image_size: int | None = None) -> tp.DependencyGraph:
    """Torch-Pruning dependency graph of the model (CNNs traced at a small size, falling back to full size)."""
    full_size = model_input_size(model, image_size)
    sizes = [full_size] if is_vit(model) else list(dict.fromkeys([min(full_size, CNN_TRACE_SIZE), full_size]))
    last_error: Exception | None = None
    for size in sizes:
        try:
            with preserved_modes(model), torch.enable_grad():
                return tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_input(model, size), verbose=False
                )
        except (RuntimeError, ValueError, AssertionError) as error:
            last_error = error
    raise PruneError(f"cannot trace the model to find its prunable units: {error_text(last_error)}")


def group_layouts(model: nn.Module, graph: tp.DependencyGraph | None = None) -> tuple[UnitGroup, ...]:
    """Cached unit groups; recomputed when the model's parameter shapes change. `graph`: one already built."""
    signature = shape_signature(model)
    cached = _layout_cache.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    if is_vit(model):
        layouts = _vit_layouts(model)
    else:
        layouts = _cnn_layouts(model, graph if graph is not None else dependency_graph(model))
    if not layouts:
        raise PruneError(f"model {type(model).__name__} has no prunable units")
    _layout_cache[model] = (signature, layouts)
    return layouts


def shape_signature(model: nn.Module) -> tuple:
    """Names and shapes of all parameters: what group layouts and costs depend on."""
    return tuple((name, tuple(parameter.shape)) for name, parameter in model.named_parameters())


def has_cached_layouts(model: nn.Module) -> bool:
    """True when group_layouts(model) needs no new dependency graph."""
    cached = _layout_cache.get(model)
    return cached is not None and cached[0] == shape_signature(model)


def copy_with_layouts(model: nn.Module) -> nn.Module:
    """Deep copy of the model that inherits its cached group layouts (same parameter shapes)."""
    duplicate = copy.deepcopy(model)
    cached = _layout_cache.get(model)
    if cached is not None:
        _layout_cache[duplicate] = cached
    return duplicate


def _vit_layouts(model: nn.Module) -> tuple[UnitGroup, ...]:
    layouts = []
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            if module.num_heads * module.head_dim != module.attn_dim:
                raise PruneError(f"attention module {name} has a layout head pruning does not support")
            layouts.append(UnitGroup(f"{name}{HEADS_SUFFIX}", "heads", int(module.num_heads)))
        elif type(module) is Mlp and isinstance(module.fc1, nn.Linear) and isinstance(module.fc2, nn.Linear):
            layouts.append(UnitGroup(f"{name}.fc1", "ffn", int(module.fc1.out_features)))
    return tuple(layouts)


def _cnn_layouts(model: nn.Module, graph: tp.DependencyGraph) -> tuple[UnitGroup, ...]:
    order = {module: index for index, (_, module) in enumerate(model.named_modules())}
    names = {module: name for name, module in model.named_modules()}
    classifier = classifier_of(model)
    ignored = [classifier[1]] if classifier else []
    layouts = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
        out_modules = [
            dep.target.module
            for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler)
            and isinstance(dep.target.module, nn.Conv2d | nn.Linear)
            and dep.target.module in order
        ]
        if not out_modules:
            continue
        root = min(out_modules, key=order.__getitem__)
        size = len(group[0].idxs)
        layouts.append((order[root], UnitGroup(names[root], "channels", size)))
    layouts.sort(key=lambda item: item[0])
    return tuple(layout for _, layout in layouts)


def full_channel_group(graph: tp.DependencyGraph, model: nn.Module, layout: UnitGroup) -> tp.Group:
    """The dependency group of a channel or FFN layout with every unit index (for importance)."""
    return pruning_group(graph, model, layout, list(range(layout.size)))


def pruning_group(
    graph: tp.DependencyGraph, model: nn.Module, layout: UnitGroup, indices: list[int]
) -> tp.Group:
    """The dependency group that removes `indices` (root out-channel indices) from a channel or FFN layout."""
    root = model.get_submodule(layout.module_name)
    pruner = graph.get_pruner_of_module(root)
    return graph.get_pruning_group(root, pruner.prune_out_channels, indices)


def head_rows(attention: nn.Module, heads: list[int]) -> tuple[list[int], list[int]]:
    """(qkv output rows, proj input columns) that belong to the given heads of a timm Attention."""
    head_dim, attn_dim = int(attention.head_dim), int(attention.attn_dim)
    columns = [head * head_dim + offset for head in heads for offset in range(head_dim)]
    rows = [part * attn_dim + column for part in range(3) for column in columns]
    return rows, columns


def prune_heads(attention: nn.Module, heads: list[int]) -> None:
    """Remove the given heads from a timm Attention in place and update its cached dims."""
    if not heads:
        return
    rows, columns = head_rows(attention, heads)
    tp.prune_linear_out_channels(attention.qkv, rows)
    tp.prune_linear_in_channels(attention.proj, columns)
    if not isinstance(attention.norm, nn.Identity):
        tp.prune_layernorm_out_channels(attention.norm, columns)
    if getattr(attention, "gate", None) is not None:
        tp.prune_linear_out_channels(attention.gate, columns)
    # q_norm/k_norm normalise over head_dim, which head removal leaves unchanged.
    attention.num_heads = int(attention.num_heads) - len(heads)
    attention.attn_dim = attention.num_heads * int(attention.head_dim)
