"""Few-iteration fine-tuning, top-1 evaluation and softmax outputs of a (pruned) model on a task."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from edge_smsp.core.errors import DataError, EdgeSmspError, ModelError
from edge_smsp.data.tasks import Task

OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
# Full fine-tuning of a pre-trained backbone with a fresh head for ~100 iterations. Measured on 4-class
# Fashion-MNIST tasks with the bundled EfficientNet-Lite0 (32 and 64 px, batch 32): SGD 0.01 was best or tied
# (0.003 and 0.03 within noise, 0.1 collapsed to 35%); AdamW 1e-3 and 3e-3 tied, 3e-4 was worse.
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-3}
# Between batch 32 and 128, SGD's default grows linearly with the batch (Goyal et al.): on the held-out study's
# pool tasks, 100 iterations at batch 64 gained +0.58 pt with 0.02 and +0.12 with 0.01; at batch 128, +0.90 with
# 0.04 and +0.17 with 0.02 (benchmarks/RESULTS.md). Smaller batches keep 0.01 (what they were measured with),
# larger ones 0.04 (nothing above 128 was measured; 0.1 collapsed at batch 32); AdamW's is not scaled.
LR_REFERENCE_BATCH = 32
LR_SCALED_UP_TO_BATCH = 128
# A training step's activations grow with images x pixels: EfficientNet-Lite0 took 844 MiB for 128 images at
# 64 px and 75 MiB per image at 224 px (one forward + backward, one thread). An adaptation cuts its batch into
# chunks of this many pixels, but never below 32 images (what every batch held before batch 128): 32 at 224 px.
MICRO_BATCH_PIXELS = 128 * 64 * 64
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-5, "adamw": 0.01}
SGD_MOMENTUM = 0.9

# loss_fn(logits, labels, images) -> the batch's mean loss; parameter_groups(model, weight_decay, lr) -> groups
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
GroupsFn = Callable[[nn.Module, float, float], list[dict[str, object]]]


@dataclass
class TrainResult:
    """What a fine-tuning run did: iterations, the loss of the last one, every loss, wall time, learning rate,
    the batch it trained on and the largest chunk a step went through (None: the whole batch at once)."""

    iters: int
    final_loss: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    lr: float | None = None
    batch_size: int | None = None
    micro_batch: int | None = None


def finetune(
    model: nn.Module,
    task: Task,
    iters: int,
    *,
    batch_size: int = 32,
    lr: float | None = None,
    optimizer: str = "sgd",
    weight_decay: float | None = None,
    seed: int = 0,
    progress: bool = False,
    train_mode_bn: bool = True,
    loss_fn: LossFn | None = None,
    parameter_groups: GroupsFn | None = None,
    micro_batch: int | None = None,
    deadline: float | None = None,
) -> TrainResult:
    """Fine-tune every parameter for exactly `iters` iterations (cosine schedule); leaves the model in eval mode.
    With a `deadline` (a time.perf_counter() value) it stops early rather than start a step that would end
    after it.

    `lr=None` takes `default_lr(optimizer, batch)`. With `micro_batch`, each batch goes through the model in
    equal chunks of at most that many images (and at least 2) whose gradients add up to the batch's: the same
    update in less memory, except that BatchNorm normalises each chunk on its own statistics.
    `loss_fn(logits, labels, images)` replaces the cross-entropy (a study's label smoothing or distillation) and
    `parameter_groups(model, weight_decay, lr)` the optimizer groups of `weight_decay_groups`."""
    optimizer = checked_optimizer(optimizer)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise EdgeSmspError(f"iterations must be a non-negative integer, got {iters}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EdgeSmspError(f"batch size must be a positive integer, got {batch_size}")
    if micro_batch is not None and (
        isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1
    ):
        raise EdgeSmspError(f"micro-batch must be a positive integer, got {micro_batch}")
    weight_decay = DEFAULT_WEIGHT_DECAY[optimizer] if weight_decay is None else float(weight_decay)
    if lr is not None and (not float(lr) > 0 or not math.isfinite(float(lr))):
        raise EdgeSmspError(f"learning rate must be positive, got {lr}")
    if weight_decay < 0:
        raise EdgeSmspError(f"weight decay must be >= 0, got {weight_decay}")
    dataset = task.train
    if len(dataset) < 2:
        raise DataError(
            f"task {task.task_id} has {len(dataset)} training images; fine-tuning needs at least 2"
        )
    # Train-mode BatchNorm cannot normalise a batch of one.
    batch_size = min(batch_size, len(dataset))
    lr = default_lr(optimizer, batch_size) if lr is None else float(lr)
    chunks = chunk_count(batch_size, micro_batch)
    used = {
        "lr": lr,
        "batch_size": batch_size,
        "micro_batch": math.ceil(batch_size / chunks) if chunks > 1 else None,
    }
    if iters == 0:
        model.eval()
        return TrainResult(iters=0, final_loss=float("nan"), losses=[], seconds=0.0, **used)

    started = time.perf_counter()
    losses: list[float] = []
    device = _device_of(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout / drop-path draws
        generator = torch.Generator().manual_seed(seed)
        groups = (parameter_groups or weight_decay_groups)(model, weight_decay, lr)
        if optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=SGD_MOMENTUM)
        else:
            opt = torch.optim.AdamW(groups, lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / iters))
        )
        # A batch of one gives train-mode BatchNorm one value per channel on a 1x1 map (32 px): it keeps its
        # running statistics then, as at inference, instead of failing.
        _set_train_mode(model, train_mode_bn and batch_size > 1)
        bar = _progress_bar(iters, progress)
        try:
            with fast_memory_format(model) as memory_format:
                for step, indices in enumerate(_index_stream(len(dataset), batch_size, generator)):
                    if step >= iters:
                        break
                    now = time.perf_counter()
                    if deadline is not None and step and now + (now - started) / step > deadline:
                        break
                    images, labels = _fetch(dataset, indices)
                    opt.zero_grad(set_to_none=True)
                    loss_sum = 0.0
                    parts = zip(images.tensor_split(chunks), labels.tensor_split(chunks), strict=True)
                    for part_images, part_labels in parts:
                        part_images = part_images.to(device, memory_format=memory_format)
                        logits = model(part_images)
                        if step == 0:
                            _check_outputs(logits, task)
                        loss = (loss_fn or cross_entropy_loss)(logits, part_labels.to(device), part_images)
                        if not torch.isfinite(loss):
                            raise EdgeSmspError(
                                f"fine-tuning diverged at iteration {step + 1} (loss {loss.item()}); lower the learning rate"
                            )
                        # each chunk's mean loss, weighted by its share of the batch: the batch's mean gradient
                        (loss * (len(part_labels) / len(labels))).backward()
                        loss_sum += float(loss.detach()) * len(part_labels)
                    opt.step()
                    schedule.step()
                    losses.append(loss_sum / len(labels))
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        finally:
            bar.close()
            model.eval()
    final_loss = losses[-1] if losses else float("nan")
    return TrainResult(
        iters=len(losses),
        final_loss=final_loss,
        losses=losses,
        seconds=time.perf_counter() - started,
        **used,
    )


def chunk_count(batch_size: int, micro_batch: int | None) -> int:
    """How many equal chunks a batch goes through the model in: as close to `micro_batch` images each as
    chunks of at least 2 allow (train-mode BatchNorm cannot normalise one image)."""
    if micro_batch is None:
        return 1
    return max(1, min(math.ceil(batch_size / micro_batch), batch_size // 2))


def auto_micro_batch(batch_size: int, image_size: int) -> int | None:
    """The chunk size that keeps a step's images under MICRO_BATCH_PIXELS, but never below LR_REFERENCE_BATCH
    images (so above ~90 px a chunk may exceed it: 32 images of 224 px are 3x); None when the whole batch fits."""
    fits = max(LR_REFERENCE_BATCH, MICRO_BATCH_PIXELS // (image_size * image_size))
    return None if batch_size <= fits else fits


def checked_optimizer(optimizer: str) -> str:
    """The optimizer's name in lower case; an unknown one is refused."""
    name = str(optimizer).lower()
    if name not in OPTIMIZERS:
        raise EdgeSmspError(f"unknown optimizer '{name}'; choose one of {', '.join(OPTIMIZERS)}")
    return name


def default_lr(optimizer: str, batch_size: int) -> float:
    """The learning rate `finetune` uses when none is given: SGD's scaled linearly with batches from 32 to 128."""
    optimizer = checked_optimizer(optimizer)
    if optimizer == "sgd":
        scaled = min(max(batch_size, LR_REFERENCE_BATCH), LR_SCALED_UP_TO_BATCH)
        return DEFAULT_LR["sgd"] * scaled / LR_REFERENCE_BATCH
    return DEFAULT_LR[optimizer]


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 64) -> float:
    """Top-1 accuracy of the model on a dataset of (image, label) pairs, in [0, 1]."""
    if len(dataset) == 0:
        raise DataError("cannot evaluate on an empty dataset")
    correct = 0
    device = _device_of(model)
    with eval_mode(model), fast_memory_format(model) as memory_format:
        for images, labels in _batches(dataset, batch_size, len(dataset)):
            predictions = model(images.to(device, memory_format=memory_format)).argmax(dim=1).cpu()
            correct += int((predictions == labels).sum())
    return correct / len(dataset)


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    dataset_or_tensor: Dataset | torch.Tensor,
    batch_size: int = 64,
    max_samples: int | None = None,
) -> np.ndarray:
    """Softmax outputs (float64, [N, classes]) for the first max_samples images of a dataset or image tensor."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EdgeSmspError(f"batch size must be a positive integer, got {batch_size}")
    total = len(dataset_or_tensor)
    count = total if max_samples is None else min(total, int(max_samples))
    if count == 0:
        raise DataError("no images to predict")
    device = _device_of(model)
    outputs = []
    with eval_mode(model), fast_memory_format(model) as memory_format:
        if isinstance(dataset_or_tensor, torch.Tensor):
            if dataset_or_tensor.ndim != 4:
                raise DataError(
                    f"images must be a [N, 3, H, W] tensor, got shape {tuple(dataset_or_tensor.shape)}"
                )
            batches = ((chunk, None) for chunk in dataset_or_tensor[:count].split(batch_size))
        else:
            batches = _batches(dataset_or_tensor, batch_size, count)
        for images, _ in batches:
            logits = model(images.to(device=device, dtype=torch.float32, memory_format=memory_format))
            outputs.append(torch.softmax(logits.to(torch.float64), dim=1).cpu())
    return torch.cat(outputs).numpy()


def memory_format_for(model: nn.Module) -> torch.memory_format:
    """channels_last for CNNs with depthwise/grouped convolutions, else the contiguous (NCHW) layout.

    Measured on one CPU thread, batch 32 (benchmarks/RESULTS.md, "Training speed"): EfficientNet-Lite0 trains
    1.7-2.5x faster in channels_last at 32 and 64 px, pruned or not; ResNet-18 moves by +-10 % either way and
    a ViT not at all, so they keep the default layout.
    """
    grouped = any(isinstance(module, nn.Conv2d) and module.groups > 1 for module in model.modules())
    return torch.channels_last if grouped else torch.contiguous_format


@contextlib.contextmanager
def fast_memory_format(model: nn.Module) -> Iterator[torch.memory_format]:
    """The model in `memory_format_for(model)` inside (feed inputs in the yielded format), NCHW again after."""
    memory_format = memory_format_for(model)
    if memory_format == torch.contiguous_format:
        yield memory_format
        return
    model.to(memory_format=memory_format)
    try:
        yield memory_format
    finally:
        # Saving, pruning and export expect plain contiguous weights, as every other code path leaves them.
        model.to(memory_format=torch.contiguous_format)


def _index_stream(size: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Batches of indices from back-to-back shuffled epochs; a batch may span an epoch boundary."""
    pending = torch.empty(0, dtype=torch.int64)
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(size, generator=generator)])
        yield pending[:batch_size]
        pending = pending[batch_size:]


def _fetch(dataset: Dataset, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(dataset, "batch"):
        return dataset.batch(indices)
    pairs = [dataset[int(index)] for index in indices]
    return torch.stack([image for image, _ in pairs]), torch.as_tensor([int(label) for _, label in pairs])


def _batches(dataset: Dataset, batch_size: int, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, count, batch_size):
        yield _fetch(dataset, torch.arange(start, min(start + batch_size, count)))


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The fine-tuning loss (a `LossFn`): the mean cross-entropy; the images are for losses that need them."""
    return F.cross_entropy(logits, labels)


def weight_decay_groups(model: nn.Module, weight_decay: float, lr: float) -> list[dict[str, object]]:
    """Optimizer groups (a `GroupsFn`): decay for matrices and kernels only (decaying norm gains and biases only
    hurts)."""
    groups: dict[bool, list[nn.Parameter]] = {}
    for parameter in model.parameters():
        if parameter.requires_grad:
            groups.setdefault(parameter.ndim > 1, []).append(parameter)
    return [
        {"params": parameters, "weight_decay": weight_decay if decays else 0.0, "lr": lr}
        for decays, parameters in groups.items()
    ]


def _set_train_mode(model: nn.Module, train_mode_bn: bool) -> None:
    model.train()
    if not train_mode_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _check_outputs(logits: torch.Tensor, task: Task) -> None:
    if logits.ndim != 2 or logits.shape[1] != len(task.classes):
        raise ModelError(
            f"the model has {logits.shape[-1]} outputs but task {task.task_id} has {len(task.classes)} classes; "
            "give it a new classifier first (load_backbone(num_classes=k) or prune.replace_classifier)"
        )


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class eval_mode:
    """Context manager: eval mode inside, the model's previous mode restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc_info: object) -> None:
        for module, training in self.modes:
            module.training = training


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="fine-tune", unit="it", disable=not enabled, leave=False)
