"""Tasks: a subset of a dataset's classes, relabelled 0..k-1, with seeded train/val splits held in memory."""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from edge_smsp.errors import DataError

DATASETS: tuple[str, ...] = ("fashion-mnist", "imagefolder", "cifar100")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-smsp" / "datasets"
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
    name = _dataset_name(dataset)
    mean, std = _check_normalisation(mean, std)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise DataError(f"image size must be an integer of at least 8 pixels, got {image_size}")
    train_count = _check_count("train_per_class", train_per_class, DEFAULT_TRAIN_PER_CLASS)
    val_count = _check_count("val_per_class", val_per_class, DEFAULT_VAL_PER_CLASS)

    if name == "fashion-mnist":
        root = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
        all_names = FASHION_MNIST_CLASSES
        classes = _check_classes(classes, len(all_names), name)
        train_split, val_split = _fashion_mnist_splits(root, download)
    elif name == "cifar100":
        root = Path(data_dir) if data_dir is not None else DEFAULT_CACHE_DIR
        train_split, val_split, all_names = _cifar100_splits(root, download)
        classes = _check_classes(classes, len(all_names), name)
    else:
        if data_dir is None:
            raise DataError("--dataset imagefolder needs --data-dir DIR (one sub-folder of images per class)")
        root = Path(data_dir)
        all_names = _imagefolder_classes(root)
        classes = _check_classes(classes, len(all_names), name)
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


def generate_tasks(
    dataset: str,
    n_tasks: int,
    classes_per_task: int,
    seed: int,
    data_dir: str | os.PathLike | None = None,
) -> list[tuple[int, ...]]:
    """n_tasks distinct class subsets (sorted tuples) of classes_per_task classes each, seeded."""
    total = num_classes(dataset, data_dir)
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
        raise DataError(f"number of tasks must be a positive integer, got {n_tasks}")
    if isinstance(classes_per_task, bool) or not isinstance(classes_per_task, int) or classes_per_task < 2:
        raise DataError(f"a task needs at least 2 classes, got {classes_per_task}")
    if classes_per_task > total:
        raise DataError(f"{dataset} has {total} classes; cannot make tasks of {classes_per_task}")
    possible = math.comb(total, classes_per_task)
    if n_tasks > possible:
        raise DataError(
            f"{dataset} has only {possible} distinct tasks of {classes_per_task} classes; asked for {n_tasks}"
        )
    rng = np.random.default_rng(seed)
    if possible <= 50_000:
        every = list(combinations(range(total), classes_per_task))
        picked = rng.choice(len(every), size=n_tasks, replace=False)
        return [every[int(i)] for i in picked]
    tasks: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    while len(tasks) < n_tasks:
        candidate = tuple(sorted(int(c) for c in rng.choice(total, size=classes_per_task, replace=False)))
        if candidate not in seen:
            seen.add(candidate)
            tasks.append(candidate)
    return tasks


def num_classes(dataset: str, data_dir: str | os.PathLike | None = None) -> int:
    """Number of classes of a dataset (an image folder's sub-folders are counted)."""
    name = _dataset_name(dataset)
    if name == "fashion-mnist":
        return len(FASHION_MNIST_CLASSES)
    if name == "cifar100":
        return 100
    if data_dir is None:
        raise DataError("--dataset imagefolder needs --data-dir DIR (one sub-folder of images per class)")
    return len(_imagefolder_classes(Path(data_dir)))


def _dataset_name(dataset: str) -> str:
    name = str(dataset).strip().lower().replace("_", "-")
    name = {"fashionmnist": "fashion-mnist", "cifar-100": "cifar100", "image-folder": "imagefolder"}.get(
        name, name
    )
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}")
    return name


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


def _check_count(label: str, value: int | None, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{label} must be a positive integer, got {value}")
    return value


def _check_classes(classes: Sequence[int], total: int, dataset: str) -> tuple[int, ...]:
    try:
        values = tuple(classes)
    except TypeError as error:
        raise DataError(f"classes must be a list of class ids, got {classes!r}") from error
    if not all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in values):
        raise DataError(f"class ids must be integers, got {list(values)}")
    values = tuple(int(c) for c in values)
    if len(values) < 2:
        raise DataError(f"a task needs at least 2 classes, got {list(values)}")
    duplicated = sorted({c for c in values if values.count(c) > 1})
    if duplicated:
        raise DataError(f"class ids repeat: {', '.join(map(str, duplicated))}")
    outside = [c for c in values if not 0 <= c < total]
    if outside:
        raise DataError(
            f"class ids {', '.join(map(str, outside))} out of range: {dataset} has classes 0..{total - 1}"
        )
    return values


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

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _fashion_mnist_splits(root: Path, download: bool) -> tuple[_Split, _Split]:
    found = _find_fashion_files(root)
    if found is None and download:
        _download_with_torchvision("FashionMNIST", root)
        found = _find_fashion_files(root)
    if found is None:
        wanted = ", ".join(f"{name}.gz" for pair in _FASHION_FILES.values() for name in pair)
        raise DataError(
            f"Fashion-MNIST files not found in {root} (need {wanted}): install Debian's dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist), pass --data-dir DIR, or download them with torchvision"
        )
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


def _find_fashion_files(root: Path) -> dict[str, tuple[Path, Path]] | None:
    for directory in (root, root / "FashionMNIST" / "raw"):
        found = {}
        for part, names in _FASHION_FILES.items():
            paths = []
            for name in names:
                candidates = [directory / f"{name}.gz", directory / name]
                existing = next((path for path in candidates if path.is_file()), None)
                if existing is None:
                    break
                paths.append(existing)
            if len(paths) == 2:
                found[part] = (paths[0], paths[1])
        if len(found) == 2:
            return found
    return None


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
    if not (root / "cifar-100-python").is_dir():
        raise DataError(
            f"CIFAR-100 files not found in {root} (need {root / 'cifar-100-python'}): pass --data-dir DIR holding "
            "cifar-100-python/, or download it online with torchvision.datasets.CIFAR100(DIR, download=True)"
        )
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


def _imagefolder_layout(root: Path) -> tuple[Path, Path | None]:
    """(train folder, val folder or None): DIR/train + DIR/val (or DIR/test), else DIR itself, split by seed."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    val = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    if (root / "train").is_dir() and val is not None:
        return root / "train", val
    return root, None


def _imagefolder_classes(root: Path) -> tuple[str, ...]:
    train_root, _ = _imagefolder_layout(root)
    names = tuple(sorted(entry.name for entry in os.scandir(train_root) if entry.is_dir()))
    if len(names) < 2:
        raise DataError(f"image folder {train_root} needs at least 2 class sub-folders, found {len(names)}")
    return names


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
    train_root, val_root = _imagefolder_layout(root)
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
