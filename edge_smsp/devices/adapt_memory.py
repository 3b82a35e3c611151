"""The memory of an on-device adaptation (the runtime's light `adapt`), predicted before anything is uploaded,
and the image cap that makes it fit the profile's budget.

The device holds, at its peak (runtime/edge_smsp_runtime/adapt.py, phase by phase):
- always: the imported runtime (numpy + onnxruntime, as `info` measured it), the parameters several times over
  (params.npz, model.onnx's bytes, the written copy, the verifying session) and the SGD momentum;
- adaptive BN: every training and validation image as float32, and a batch of 64 through the whole graph in
  train mode (its live tensors, a few temporaries each);
- the front cache: the images and the cached activations at the cut for every image, and a batch of 128
  through the frozen front;
- training: the validation images, the cache, and a batch through the tail with every tensor kept for the
  backward pass (and its gradients).
Sizes per image come from the bundle's graph (ONNX shape inference); the factors are measured upper bounds
(benchmarks: the report's predicted against measured peak).

The torch tier (`adapt --tier torch`, runtime/edge_smsp_runtime/torch_tier.py) holds instead: torch itself (its
import, measured on the device), the parameters a few more times (torch's copy, gradients, SGD momentum), every
image, and a training batch through the WHOLE graph with autograd's saved tensors and their gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_smsp.core.errors import PlanError
from edge_smsp.devices.profiles import MIB

FLOAT_BYTES = 4
BN_BATCH = 64  # edge_smsp_runtime.adapt.BN_BATCH_SIZE
FORWARD_BATCH = 128  # edge_smsp_runtime.adapt.FORWARD_BATCH
PARAM_COPIES = 5  # params.npz's arrays, model.onnx's bytes, the patched copy and its bytes, the session's
EVAL_FACTOR = 3.0  # live tensors of an eval forward, with each op's temporaries
TRAIN_FACTOR = 5.0  # kept tensors of a train forward, their gradients and the batch statistics' temporaries
SESSION_BYTES = 24 * MIB  # onnxruntime's session arena while the written model is verified
MARGIN = 1.15
# numpy's BLAS buffers and the allocator's arenas, which no tensor count sees: the emulated aarch64 board peaked
# 11 MiB above the plan without it (tests/test_device_adapt_arm.py).
WORKSPACE_BYTES = 24 * MIB
MIN_IMAGES_PER_CLASS = 2  # edge_smsp_runtime.imagefolder.MIN_TRAIN_IMAGES
TIERS = ("light", "torch")
TORCH_PARAM_COPIES = 3  # torch's tensors, their gradients, SGD's momentum (beside PARAM_COPIES)
TORCH_TRAIN_FACTOR = 3.0  # autograd's saved tensors of a train step over every node output, and the gradients


@dataclass(frozen=True)
class BundleSizes:
    """What the prediction reads of an adaptable bundle: bytes of parameters, elements per image."""

    param_bytes: int
    input_elements: int
    cut_elements: tuple[int, ...]  # per cut, last first
    front_live_elements: tuple[int, ...]
    tail_elements: tuple[int, ...]
    trainable_params: tuple[int, ...]
    full_live_elements: int

    @property
    def num_cuts(self) -> int:
        return len(self.cut_elements)


@dataclass(frozen=True)
class AdaptMemory:
    """The predicted peak of one on-device adaptation, its parts, and the cap that gave it."""

    peak_bytes: int
    runtime_bytes: int
    params_bytes: int
    images_bytes: int
    cache_bytes: int
    working_bytes: int  # the largest batch working set of the phases
    train_images: int
    val_images: int
    max_per_class: int | None  # None: every image

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


def predict_adapt_memory(
    sizes: BundleSizes,
    *,
    trainable_blocks: int,
    train_counts: list[int],
    val_counts: list[int],
    batch_size: int,
    imported_rss_mib: float | None,
    max_per_class: int | None = None,
    tier: str = "light",
    torch_rss_mib: float | None = None,
) -> AdaptMemory:
    """The adaptation's predicted peak RSS on the device with at most `max_per_class` images of each class per
    split (None: all); `tier` "torch" trains the whole graph in torch, whose import took `torch_rss_mib`."""
    if not 0 <= trainable_blocks < sizes.num_cuts:
        raise PlanError(
            f"--trainable-blocks must be from 0 to {sizes.num_cuts - 1} for this model, got {trainable_blocks}"
        )
    cap = (lambda count: count) if max_per_class is None else (lambda count: min(count, max_per_class))
    train = sum(cap(count) for count in train_counts)
    val = sum(cap(count) for count in val_counts)
    image = sizes.input_elements * FLOAT_BYTES
    k = trainable_blocks
    front = k < sizes.num_cuts - 1 or sizes.cut_elements[k] != sizes.input_elements
    cache = (train + val) * sizes.cut_elements[k] * FLOAT_BYTES if front else 0
    batch = min(batch_size, train)
    bn_work = min(BN_BATCH, train) * sizes.full_live_elements * FLOAT_BYTES * EVAL_FACTOR
    cache_work = min(FORWARD_BATCH, train) * sizes.front_live_elements[k] * FLOAT_BYTES * EVAL_FACTOR
    train_work = batch * sizes.tail_elements[k] * FLOAT_BYTES * TRAIN_FACTOR
    momentum = sizes.trainable_params[k] * FLOAT_BYTES
    phases = (
        ((train + val) * image + bn_work, bn_work),
        ((train + val) * image + cache + cache_work, cache_work),
        (val * image + cache + train_work + momentum, train_work),
        (val * image + cache + SESSION_BYTES, SESSION_BYTES),
    )
    runtime = int((imported_rss_mib or 0.0) * MIB)
    params = PARAM_COPIES * sizes.param_bytes
    if tier == "torch":
        cache = 0
        whole = batch * sizes.tail_elements[-1] * FLOAT_BYTES * TORCH_TRAIN_FACTOR
        phases = (
            ((train + val) * image + bn_work, bn_work),
            ((train + val) * image + whole, whole),
            (val * image + SESSION_BYTES, SESSION_BYTES),
        )
        runtime += int((torch_rss_mib or 0.0) * MIB)
        params += TORCH_PARAM_COPIES * sizes.param_bytes
    peak_phase, working = max(phases)
    peak = int(MARGIN * (runtime + params + peak_phase)) + WORKSPACE_BYTES
    return AdaptMemory(
        peak_bytes=peak,
        runtime_bytes=runtime,
        params_bytes=params,
        images_bytes=(train + val) * image,
        cache_bytes=cache,
        working_bytes=int(working),
        train_images=train,
        val_images=val,
        max_per_class=max_per_class,
    )


def fit_adapt_memory(
    sizes: BundleSizes,
    budget_bytes: int,
    *,
    trainable_blocks: int,
    train_counts: list[int],
    val_counts: list[int],
    batch_size: int,
    imported_rss_mib: float | None,
    tier: str = "light",
    torch_rss_mib: float | None = None,
) -> AdaptMemory:
    """The prediction with the most images per class that fits `budget_bytes` (every image when all fit);
    PlanError, one line, when even MIN_IMAGES_PER_CLASS do not."""

    def at(cap: int | None) -> AdaptMemory:
        return predict_adapt_memory(
            sizes,
            trainable_blocks=trainable_blocks,
            train_counts=train_counts,
            val_counts=val_counts,
            batch_size=batch_size,
            imported_rss_mib=imported_rss_mib,
            max_per_class=cap,
            tier=tier,
            torch_rss_mib=torch_rss_mib,
        )

    full = at(None)
    if full.peak_bytes <= budget_bytes:
        return full
    smallest = at(MIN_IMAGES_PER_CLASS)
    if smallest.peak_bytes > budget_bytes and tier == "torch":
        raise PlanError(
            f"the torch tier needs {smallest.peak_bytes / MIB:.1f} MiB even with {MIN_IMAGES_PER_CLASS} images per "
            f"class (runtime with torch {smallest.runtime_bytes / MIB:.1f} MiB, model {smallest.params_bytes / MIB:.1f} "
            f"MiB, a training batch {smallest.working_bytes / MIB:.1f} MiB), over the profile's budget of "
            f"{budget_bytes / MIB:.1f} MiB: use --device-train light, a smaller --batch-size, prune more (--ratio), "
            "or raise the profile's adapt_memory_budget"
        )
    if smallest.peak_bytes > budget_bytes:
        raise PlanError(
            f"on-device adaptation needs {smallest.peak_bytes / MIB:.1f} MiB even with "
            f"{MIN_IMAGES_PER_CLASS} images per class (runtime {smallest.runtime_bytes / MIB:.1f} MiB, model "
            f"{smallest.params_bytes / MIB:.1f} MiB, working set {smallest.working_bytes / MIB:.1f} MiB at "
            f"--trainable-blocks {trainable_blocks}), over the profile's budget of {budget_bytes / MIB:.1f} MiB: "
            "train fewer blocks, prune more (--ratio), raise the profile's adapt_memory_budget (what adaptation "
            "may use, default memory_budget), or adapt on the host"
        )
    low, high = MIN_IMAGES_PER_CLASS, max([*train_counts, *val_counts])
    while low < high:  # the largest cap that fits
        middle = (low + high + 1) // 2
        if at(middle).peak_bytes <= budget_bytes:
            low = middle
        else:
            high = middle - 1
    return at(low)
