"""Static cost of a model at an input size: parameters, fp32 weight bytes, MACs and peak activation bytes.

One counter serves pruning summaries, the planner and deploy reports, so their numbers agree.
MACs: torch's FlopCounter (convolutions and matrix products) plus scaled-dot-product attention, which it
misses on CPU. Peak activations: the largest sum of live tensors over one eager forward pass at batch 1 (every
aten op's outputs live from the op that makes them to their last use; parameters excluded, the input included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from edge_smsp.core.errors import PlanError, error_text

FP32_BYTES = 4


@dataclass(frozen=True)
class ModelCost:
    """Static cost of one (pruned) model at one input size, batch 1."""

    ratio: float
    input_size: int
    params: int
    weight_bytes: int  # fp32 parameters (batch-norm statistics fold into the convolutions on export)
    macs: int
    peak_activation_bytes: int


def measure_cost(model: nn.Module, input_size: int, ratio: float = 0.0) -> ModelCost:
    """Parameters, fp32 weight bytes, MACs and peak activation bytes of `model` as it is (batch 1)."""
    params = sum(parameter.numel() for parameter in model.parameters())
    try:
        parameter = next(model.parameters())
        dtype, device = parameter.dtype, parameter.device
    except StopIteration:
        dtype, device = torch.float32, torch.device("cpu")
    image = torch.zeros(1, 3, input_size, input_size, dtype=dtype, device=device)
    was_training = model.training
    model.eval()
    tracer = _LivenessTracer(model)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as flops, tracer:
            tracer.track_input(image)
            output = model(image)
            tracer.track_output(output)
    except (RuntimeError, AssertionError) as error:  # timm's fixed-size models assert their input size
        raise PlanError(f"the model does not run at input size {input_size}: {error_text(error)}") from None
    finally:
        model.train(was_training)
    return ModelCost(
        ratio=float(ratio),
        input_size=int(input_size),
        params=int(params),
        weight_bytes=int(params * FP32_BYTES),
        macs=int(flops.get_total_flops() // 2 + tracer.extra_macs),
        peak_activation_bytes=tracer.peak_bytes(),
    )


def _storage_key(tensor: torch.Tensor) -> tuple[int, int] | None:
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    if storage.nbytes() == 0:
        return None
    return storage.data_ptr(), storage.nbytes()


class _LivenessTracer(TorchDispatchMode):
    """Records, for every tensor storage an aten op makes, when it is born and last used; counts SDPA MACs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.weights = {
            key
            for tensor in (*model.parameters(), *model.buffers())
            if (key := _storage_key(tensor)) is not None
        }
        self.step = 0
        self.born: dict[tuple[int, int], int] = {}
        self.last_use: dict[tuple[int, int], int] = {}
        # Holding every output keeps its memory from being reused, so a storage key names one tensor.
        self.keep_alive: list[torch.Tensor] = []
        self.extra_macs = 0

    def track_input(self, tensor: torch.Tensor) -> None:
        key = _storage_key(tensor)
        if key is not None:
            self.born.setdefault(key, -1)
            self.last_use[key] = -1

    def track_output(self, output: Any) -> None:
        for tensor in tree_flatten(output)[0]:
            if isinstance(tensor, torch.Tensor) and (key := _storage_key(tensor)) in self.born:
                self.last_use[key] = self.step + 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.step += 1
        for tensor in tree_flatten((args, kwargs))[0]:
            if isinstance(tensor, torch.Tensor) and (key := _storage_key(tensor)) in self.born:
                self.last_use[key] = self.step
        if func.overloadpacket not in flop_registry and "scaled_dot_product" in func.__name__:
            query, key_tensor, value = args[0], args[1], args[2]
            # q @ k^T and attention @ v: B * H * L * S * (E + Ev) multiply-accumulates.
            batch_heads = math.prod(query.shape[:-2])
            self.extra_macs += (
                batch_heads * query.shape[-2] * key_tensor.shape[-2] * (query.shape[-1] + value.shape[-1])
            )
        result = func(*args, **kwargs)
        for tensor in tree_flatten(result)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            key = _storage_key(tensor)
            if key is None or key in self.weights:
                continue
            if key not in self.born:
                self.born[key] = self.step
                self.keep_alive.append(tensor)
            self.last_use[key] = max(self.last_use.get(key, self.step), self.step)
        return result

    def peak_bytes(self) -> int:
        """Largest total size of the storages alive at any one op."""
        if not self.born:
            return 0
        delta = np.zeros(self.step + 4, dtype=np.int64)
        for key, born in self.born.items():
            delta[born + 1] += key[1]
            delta[self.last_use[key] + 2] -= key[1]
        return int(np.cumsum(delta).max())
