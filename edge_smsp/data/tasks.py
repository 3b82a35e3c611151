"""Tasks: a subset of a dataset's classes, relabelled 0..k-1, with seeded train/val splits held in memory."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from edge_smsp.core.errors import DataError, error_text
from edge_smsp.data import dataset_source
from edge_smsp.data.base import Split
from edge_smsp.data.catalog import (
    check_classes,
    check_count,
    dataset_name,
    dataset_root,
    generate_tasks,
    image_size_problem,
    num_classes,
)

__all__ = ["ImageTensorDataset", "Task", "generate_tasks", "load_task", "num_classes"]

# Defaults sized for few-iteration fine-tuning (100 iterations x 32 images) and a val accuracy resolution
# well under one percent, while keeping the in-memory uint8 subset small.
DEFAULT_TRAIN_PER_CLASS = 500
DEFAULT_VAL_PER_CLASS = 200
_RESIZE_CHUNK = 2048
MAX_IMAGE_PIXELS = 50_000_000  # an image folder's image, decoded: as the device runtime's images.MAX_PIXELS


class ImageTensorDataset(Dataset):
    """Pre-resized uint8 images kept in memory; items come out as normalised float [3, H, W] tensors."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"images must be uint8 [N, 1|3, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.to(torch.int64)
        std_tensor = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # (pixel / 255 - mean) / std as one multiply-add per pixel.
        self._scale = 1.0 / (255.0 * std_tensor)
        self._shift = -torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) / std_tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.batch(torch.tensor([int(index)]))
        return images[0], labels[0]

    def batch(self, indices: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images [B, 3, H, W] and labels [B] for the given indices, without per-item work."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        pixels = self.images[indices].to(torch.float32).expand(-1, 3, -1, -1)
        return pixels * self._scale + self._shift, self.labels[indices]


@dataclass
class Task:
    """A dataset's class subset with labels 0..k-1 in the order of `classes`, and its train/val splits."""

    dataset: str
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    seed: int
    image_size: int
    train: ImageTensorDataset
    val: ImageTensorDataset
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    source: str = field(default="")  # where the images came from (directory)

    @property
    def task_id(self) -> str:
        """Stable id such as "fashion-mnist:0-3-5" (image folders add their folder name)."""
        dataset = dataset_source(self.dataset).task_prefix(self.source)
        return f"{dataset}:{'-'.join(str(c) for c in self.classes)}"

    @property
    def num_classes(self) -> int:
        """Number of classes k of the task."""
        return len(self.classes)


def load_task(
    dataset: str,
    classes: Sequence[int],
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int = 64,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    seed: int = 0,
    train_per_class: int | None = None,
    val_per_class: int | None = None,
    download: bool = False,
) -> Task:
    """Load a task: the given classes of a dataset, resized and normalised, subsampled per class by seed."""
    name = dataset_name(dataset)
    mean, std = _check_normalisation(mean, std)
    problem = image_size_problem(image_size)
    if problem:
        raise DataError(f"image size {problem}")
    check_count("train_per_class", train_per_class)
    check_count("val_per_class", val_per_class)
    train_count = train_per_class or DEFAULT_TRAIN_PER_CLASS
    val_count = val_per_class or DEFAULT_VAL_PER_CLASS
    root = dataset_root(name, data_dir)

    source = dataset_source(name)
    classes = check_classes(classes, len(source.class_names(root)), name)
    train_split, val_split, all_names = source.splits(root, classes, seed, val_per_class, download)

    train = _build_split(train_split, classes, train_count, image_size, mean, std, seed, "train")
    val = _build_split(val_split, classes, val_count, image_size, mean, std, seed, "val")
    return Task(
        dataset=name,
        classes=classes,
        class_names=tuple(all_names[c] for c in classes),
        seed=seed,
        image_size=image_size,
        train=train,
        val=val,
        mean=mean,
        std=std,
        source=str(root.resolve()),
    )


def _check_normalisation(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        mean_values = tuple(float(v) for v in mean)
        std_values = tuple(float(v) for v in std)
    except (TypeError, ValueError) as error:
        raise DataError(f"mean and std must be three numbers each: {error}") from error
    if len(mean_values) != 3 or len(std_values) != 3 or min(std_values) <= 0:
        raise DataError(
            f"mean and std must be three numbers each, std > 0; got {mean_values} and {std_values}"
        )
    return mean_values, std_values


def _build_split(
    split: Split,
    classes: tuple[int, ...],
    per_class: int,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    seed: int,
    part: str,
) -> ImageTensorDataset:
    chosen: list[np.ndarray] = []
    new_labels: list[np.ndarray] = []
    for new_label, class_id in enumerate(classes):
        members = np.flatnonzero(split.labels == class_id)
        if len(members) == 0:
            raise DataError(f"class {class_id} has no {part} images")
        # Seeded per class (not per task), so a class contributes the same images to every task holding it.
        rng = np.random.default_rng([seed, class_id, 0 if part == "train" else 1])
        picked = np.sort(rng.permutation(members)[:per_class])
        chosen.append(picked)
        new_labels.append(np.full(len(picked), new_label, dtype=np.int64))
    indices = np.concatenate(chosen)
    labels = np.concatenate(new_labels)
    # Interleave the classes, so that any prefix of the split (a bounded sample) covers all of them.
    order = np.random.default_rng([seed, 2 if part == "train" else 3]).permutation(len(indices))
    indices, labels = indices[order], labels[order]
    if split.pixels is not None:
        images = _resize_pixels(split.pixels[indices], image_size)
    else:
        images = _read_image_files([split.paths[i] for i in indices], image_size)
    return ImageTensorDataset(images, torch.from_numpy(labels), mean, std)


def _resize_pixels(pixels: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [N, H, W(, 3)] -> uint8 [N, C, size, size]: shorter side to size, centre crop (antialiased)."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels))
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    return torch.cat([_resize_crop(chunk, size) for chunk in tensor.split(_RESIZE_CHUNK)])


def _resize_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images.contiguous()
    scale = size / min(height, width)
    new_height, new_width = max(size, round(height * scale)), max(size, round(width * scale))
    resized = F.interpolate(
        images.to(torch.float32),
        size=(new_height, new_width),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    top, left = (new_height - size) // 2, (new_width - size) // 2
    cropped = resized[..., top : top + size, left : left + size]
    return cropped.round().clamp(0, 255).to(torch.uint8).contiguous()


def _read_image_files(paths: Sequence[str], size: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        try:
            with warnings.catch_warnings():
                # PIL warns from 89 M pixels and refuses from 179 M; the limit here is the device runtime's.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    width, height = image.size
                    if width * height > MAX_IMAGE_PIXELS:
                        raise Image.DecompressionBombError(f"{width} x {height} pixels")
                    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise DataError(
                f"image {path} has more than {MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?); "
                "resize it or remove it from the folder"
            ) from None
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"cannot read image {path}: {error_text(error)}") from error
        images.append(_resize_crop(torch.from_numpy(pixels.copy()).permute(2, 0, 1).unsqueeze(0), size))
    return torch.cat(images)
