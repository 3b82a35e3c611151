"""This machine's memory for a pruning or adaptation job, estimated before the job starts: a job that cannot fit
(`--image-size 4096`) is refused in one line instead of being killed by the kernel after minutes.

Activations grow with the pixels, so one image's peak live activations (edge_smsp.models.cost) are measured at
PROBE_SIZE px and scaled by (size / PROBE_SIZE)^2 (exact for convolutions; a ViT's attention grows faster, so
the estimate is a floor there). The factors are measured upper bounds on efficientnet_lite0 (x86-64, torch 2.14):
- prune: peak RSS 1.20 / 1.23 / 1.37 GB at 128 / 256 / 512 px, i.e. ~4x the peak activations above a fixed
  ~1.2 GB (torch, the backbone): PRUNE_COPIES 5;
- training: ~75 MiB per image at 224 px (README), 8.1x the peak activations: TRAIN_COPIES 9 per image of a
  chunk, plus every loaded task image as uint8.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from edge_smsp.core.address_space import GIB, JOB_ADDRESS_SPACE, address_space_limit
from edge_smsp.core.errors import PlanError
from edge_smsp.models.cost import measure_cost
from edge_smsp.training.finetune import auto_micro_batch, chunk_count

PROBE_SIZE = 64
BASE_BYTES = 1 * GIB  # torch, the backbone and the process itself
PRUNE_COPIES = 5
TRAIN_COPIES = 9
MEMINFO = "/proc/meminfo"


def activation_bytes(model: nn.Module, image_size: int) -> int | None:
    """Peak live activation bytes of one image at `image_size`, scaled from a PROBE_SIZE px pass; None when the
    model runs at its own size only."""
    probe = min(int(image_size), PROBE_SIZE)
    try:
        cost = measure_cost(model, probe)
    except PlanError:
        return None
    return int(cost.peak_activation_bytes * (image_size / probe) ** 2)


def prune_bytes(model: nn.Module, image_size: int) -> int | None:
    """What pruning `model` at `image_size` takes at its peak (bytes), or None when it cannot be estimated."""
    activations = activation_bytes(model, image_size)
    return None if activations is None else BASE_BYTES + PRUNE_COPIES * activations


def adapt_bytes(
    model: nn.Module, image_size: int, images: int, batch_size: int, micro_batch: int | None
) -> int | None:
    """What an adaptation takes at its peak (bytes): its task's `images` as uint8 and a training chunk of the
    batch (micro_batch, else the automatic one) with its activations kept for the backward pass."""
    activations = activation_bytes(model, image_size)
    if activations is None:
        return None
    micro = micro_batch if micro_batch is not None else auto_micro_batch(batch_size, image_size)
    chunk = -(-batch_size // chunk_count(batch_size, micro))
    return BASE_BYTES + images * 3 * image_size**2 + TRAIN_COPIES * chunk * activations


def available_bytes(meminfo: str = MEMINFO) -> int | None:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping), or None where there is none."""
    try:
        text = Path(meminfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            fields = value.split()
            if fields and fields[0].isdigit():
                return int(fields[0]) * 1024
    return None


def check_fits(needed: int | None, what: str, image_size: int) -> None:
    """PlanError (one line) when a job of `needed` bytes cannot fit in this machine's available memory, or in
    the address space `ulimit -v` leaves it (what the job maps at its smallest, plus its resident growth)."""
    if needed is None:
        return
    advice = "lower --image-size" + (" or --micro-batch" if what == "adapt" else "")
    limit = address_space_limit()
    mapped = JOB_ADDRESS_SPACE[what] + max(needed - BASE_BYTES, 0)
    if limit is not None and mapped > limit:
        raise PlanError(
            f"{what} at {image_size} px maps about {mapped / GIB:.1f} GiB of address space, "
            f"more than the {limit / GIB:.1f} GiB the limit (ulimit -v) allows; {advice}, or raise the limit"
        )
    available = available_bytes()
    if available is None or needed <= available:
        return
    raise PlanError(
        f"{what} at {image_size} px needs about {needed / GIB:.1f} GiB of memory, more than the "
        f"{available / GIB:.1f} GiB this machine has available; {advice}"
    )
