"""Shared helpers of the pruning tests: small random-weight backbones and units made inert before pruning."""

from __future__ import annotations

import copy
import functools
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_smsp.models import zoo
from edge_smsp.models.units import UnitGroup, dependency_graph, full_channel_group, group_layouts
from edge_smsp.pool import BackboneRecord, Pool, TaskRecord

FIRST_CLASS = ("resnet18", "resnet50", "deit_small_patch16_224", "efficientnet_lite0")
IMAGE_SIZE = 32


@functools.cache
def _cached_backbone(name: str, image_size: int) -> nn.Module:
    return zoo.load_backbone(name, pretrained=False, image_size=image_size)


def backbone(name: str, image_size: int = IMAGE_SIZE, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A fresh copy of a random-weight backbone in eval mode."""
    return copy.deepcopy(_cached_backbone(name, image_size)).to(dtype).eval()


def randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Give every norm layer non-trivial statistics (timm zero-inits the last BN gain of residual blocks)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d | nn.LayerNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.2)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


def make_inert(model: nn.Module, removed: dict[str, list[int]]) -> None:
    """Zero the outgoing effect of the given units so that removing them cannot change the output."""
    layouts = {layout.key: layout for layout in group_layouts(model)}
    graph = None
    with torch.no_grad():
        for key, units in removed.items():
            layout: UnitGroup = layouts[key]
            if not units:
                continue
            if layout.kind == "heads":
                attention = model.get_submodule(layout.module_name)
                for head in units:
                    attention.proj.weight[:, head * attention.head_dim : (head + 1) * attention.head_dim] = 0
            elif layout.kind == "ffn":
                mlp = model.get_submodule(layout.module_name.rpartition(".")[0])
                mlp.fc2.weight[:, units] = 0
            else:
                if graph is None:
                    graph = dependency_graph(model)
                norms = [
                    dep.target.module
                    for dep, _ in full_channel_group(graph, model, layout)
                    if isinstance(dep.target.module, nn.BatchNorm2d)
                ]
                assert norms, f"group {key} has no BatchNorm to silence"
                for norm in norms:
                    norm.weight[units] = 0
                    norm.bias[units] = 0


def outputs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Eval-mode logits without gradients."""
    model.eval()
    with torch.no_grad():
        return model(images)


def images(count: int = 2, image_size: int = IMAGE_SIZE, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A seeded batch of random images."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, image_size, image_size, generator=generator).to(dtype)


def add_tiny_entry(pool: Pool, **fields: Any) -> Any:
    """One pool entry of a 3-class Fashion-MNIST task on a stand-in resnet18 record (a 4-unit mask): rows for
    tests that read or damage the pool's storage, not its models. `fields` add to or replace add_entry's."""
    task = TaskRecord(
        task_key="fashion-mnist:0,1,2",
        dataset="fashion-mnist",
        classes=(0, 1, 2),
        class_names=("a", "b", "c"),
        seed=0,
        n_train=8,
        n_val=4,
    )
    values = {
        "task": task,
        "backbone": BackboneRecord(name="resnet18", weights_hash="a" * 64, image_size=32),
        "ratio": 0.5,
        "method": "taylor",
        "iters": 2,
        "val_accuracy": 0.5,
        "masks": {"layer1": np.array([1, 0, 1, 1], dtype=bool)},
    }
    return pool.add_entry(**{**values, **fields})


def sql(path: Path, statement: str) -> None:
    """One hand edit of a pool file, as a user with the sqlite3 shell would make it."""
    connection = sqlite3.connect(path)
    try:
        connection.execute(statement)
        connection.commit()
    finally:
        connection.close()
