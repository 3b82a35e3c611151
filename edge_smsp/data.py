"""Tasks: a subset of a dataset's classes, relabelled 0..k-1, with seeded train/val splits held in memory."""

from __future__ import annotations

import functools
import gzip
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from edge_smsp.datasets import (
    DATASETS,
    DEFAULT_CACHE_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    check_classes,
    check_count,
    cifar100_folder,
    dataset_name,
    dataset_root,
    fashion_mnist_files,
    generate_tasks,
    image_size_problem,
    imagefolder_classes,
    imagefolder_layout,
    num_classes,
)
from edge_smsp.errors import DataError

__all__ = [
    "DATASETS",
    "DEFAULT_CACHE_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "ImageTensorDataset",
    "Task",
    "generate_tasks",
    "load_task",
    "num_classes",
]

# Defaults sized for few-iteration fine-tuning (100 iterations x 32 images) and a val accuracy resolution
# well under one percent, while keeping the in-memory uint8 subset small.
DEFAULT_TRAIN_PER_CLASS = 500
DEFAULT_VAL_PER_CLASS = 200
IMAGEFOLDER_VAL_FRACTION = 0.2
_RESIZE_CHUNK = 2048


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
        dataset = self.dataset
        if self.dataset == "imagefolder" and self.source:
            dataset = f"imagefolder[{Path(self.source).name}]"
        return f"{dataset}:{'-'.join(str(c) for c in self.classes)}"

    @property
    def num_classes(self) -> int:
        """Number of classes k of the task."""
        return len(self.classes)


@dataclass(frozen=True)
class _Split:
    """One split of a dataset before class selection: either decoded pixels or image files."""

    labels: np.ndarray
    pixels: np.ndarray | None = None  # uint8 [N, H, W] or [N, H, W, 3]
    paths: tuple[str, ...] | None = None


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

    if name == "fashion-mnist":
        all_names = FASHION_MNIST_CLASSES
        classes = check_classes(classes, len(all_names), name)
        train_split, val_split = _fashion_mnist_splits(root, download)
    elif name == "cifar100":
        train_split, val_split, all_names = _cifar100_splits(root, download)
        classes = check_classes(classes, len(all_names), name)
    else:
        all_names = imagefolder_classes(root)
        classes = check_classes(classes, len(all_names), name)
        train_split, val_split = _imagefolder_splits(root, all_names, classes, seed, val_per_class)

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
    split: _Split,
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
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"cannot read image {path}: {error}") from error
        images.append(_resize_crop(torch.from_numpy(pixels.copy()).permute(2, 0, 1).unsqueeze(0), size))
    return torch.cat(images)


# Fashion-MNIST -----------------------------------------------------------------------------------------------


def _fashion_mnist_splits(root: Path, download: bool) -> tuple[_Split, _Split]:
    found = fashion_mnist_files(root, missing_ok=download)
    if found is None:
        _download_with_torchvision("FashionMNIST", root)
        found = fashion_mnist_files(root)
    splits = []
    for part in ("train", "val"):
        images_path, labels_path = found[part]
        pixels = _read_idx(images_path, 2051, 3)
        labels = _read_idx(labels_path, 2049, 1)
        if len(pixels) != len(labels):
            raise DataError(
                f"{images_path} has {len(pixels)} images but {labels_path} has {len(labels)} labels"
            )
        splits.append(_Split(labels=labels.astype(np.int64), pixels=pixels))
    return splits[0], splits[1]


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    stat = path.stat()
    return _read_idx_cached(str(path), stat.st_mtime_ns, stat.st_size, magic, dims)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, _mtime_ns: int, _size: int, magic: int, dims: int) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
        header_size = 4 + 4 * dims
        found_magic, *shape = struct.unpack(f">{1 + dims}I", raw[:header_size])
    except (OSError, EOFError, struct.error) as error:
        raise DataError(f"cannot read IDX file {path}: {error}") from error
    expected = int(np.prod(shape))
    if found_magic != magic or len(raw) - header_size != expected:
        raise DataError(
            f"{path} is not a valid IDX file (magic {found_magic}, expected {magic}); re-download it"
        )
    array = np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)
    array.setflags(write=False)
    return array


def _download_with_torchvision(class_name: str, root: Path) -> None:
    import torchvision.datasets

    try:
        for train in (True, False):
            getattr(torchvision.datasets, class_name)(str(root), train=train, download=True)
    except Exception as error:  # network errors come in many types; all mean the same to the user
        raise DataError(f"downloading {class_name} into {root} failed (offline?): {error}") from error


# CIFAR-100 ---------------------------------------------------------------------------------------------------


def _cifar100_splits(root: Path, download: bool) -> tuple[_Split, _Split, tuple[str, ...]]:
    import torchvision.datasets

    if download:
        _download_with_torchvision("CIFAR100", root)
    cifar100_folder(root)
    splits = []
    names: tuple[str, ...] = ()
    for train in (True, False):
        try:
            data = torchvision.datasets.CIFAR100(str(root), train=train, download=False)
        except (RuntimeError, OSError, ValueError) as error:
            raise DataError(f"cannot read CIFAR-100 under {root}: {error}; re-download it") from error
        splits.append(_Split(labels=np.asarray(data.targets, dtype=np.int64), pixels=np.asarray(data.data)))
        names = tuple(data.classes)
    return splits[0], splits[1], names


# ImageFolder -------------------------------------------------------------------------------------------------


def _imagefolder_files(
    folder: Path, names: tuple[str, ...], classes: tuple[int, ...]
) -> dict[int, list[str]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    files = {}
    for class_id in classes:
        class_dir = folder / names[class_id]
        if not class_dir.is_dir():
            raise DataError(f"{folder} has no sub-folder {names[class_id]} (class {class_id})")
        paths = sorted(
            str(path)
            for path in class_dir.rglob("*")
            if path.is_file() and path.suffix.lower() in IMG_EXTENSIONS
        )
        if not paths:
            raise DataError(f"no images in {class_dir} (expected {', '.join(IMG_EXTENSIONS)})")
        files[class_id] = paths
    return files


def _imagefolder_splits(
    root: Path, names: tuple[str, ...], classes: tuple[int, ...], seed: int, val_per_class: int | None
) -> tuple[_Split, _Split]:
    train_root, val_root = imagefolder_layout(root)
    train_files = _imagefolder_files(train_root, names, classes)
    if val_root is not None:
        val_files = _imagefolder_files(val_root, names, classes)
    else:
        # One folder: hold out a seeded part of every class as the val split, disjoint from train.
        val_files = {}
        for class_id, paths in list(train_files.items()):
            if len(paths) < 2:
                raise DataError(f"class folder {names[class_id]} needs at least 2 images to split train/val")
            order = np.random.default_rng([seed, class_id, 4]).permutation(len(paths))
            held_out = val_per_class or max(1, round(IMAGEFOLDER_VAL_FRACTION * len(paths)))
            held_out = min(held_out, len(paths) - 1)
            val_files[class_id] = [paths[i] for i in sorted(order[:held_out])]
            train_files[class_id] = [paths[i] for i in sorted(order[held_out:])]
    return _files_split(train_files), _files_split(val_files)


def _files_split(files: dict[int, list[str]]) -> _Split:
    paths = [path for class_id in files for path in files[class_id]]
    labels = np.array([class_id for class_id in files for _ in files[class_id]], dtype=np.int64)
    return _Split(labels=labels, paths=tuple(paths))
