"""An image folder: one sub-folder of images per class, with train/ and val/ (or test/), or one folder that is
split by seed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge_smsp.core.errors import DataError
from edge_smsp.data.base import DatasetSource, Split

IMAGEFOLDER_VAL_FRACTION = 0.2
_NEEDS_DIR = "--dataset imagefolder needs --data-dir DIR (one sub-folder of images per class)"


class ImageFolder(DatasetSource):
    name = "imagefolder"
    aliases = ("image-folder",)

    def default_root(self) -> Path:
        raise DataError(_NEEDS_DIR)

    def class_names(self, root: Path) -> tuple[str, ...]:
        return imagefolder_classes(root)

    def task_prefix(self, source: str) -> str:
        return f"imagefolder[{Path(source).name}]" if source else self.name

    def splits(
        self, root: Path, classes: tuple[int, ...], seed: int, val_per_class: int | None, download: bool
    ) -> tuple[Split, Split, tuple[str, ...]]:
        names = imagefolder_classes(root)
        train_root, val_root = imagefolder_layout(root)
        train_files = _class_files(train_root, names, classes)
        if val_root is not None:
            val_files = _class_files(val_root, names, classes)
        else:
            # One folder: hold out a seeded part of every class as the val split, disjoint from train.
            val_files = {}
            for class_id, paths in list(train_files.items()):
                if len(paths) < 2:
                    raise DataError(
                        f"class folder {names[class_id]} needs at least 2 images to split train/val"
                    )
                order = np.random.default_rng([seed, class_id, 4]).permutation(len(paths))
                held_out = val_per_class or max(1, round(IMAGEFOLDER_VAL_FRACTION * len(paths)))
                held_out = min(held_out, len(paths) - 1)
                val_files[class_id] = [paths[i] for i in sorted(order[:held_out])]
                train_files[class_id] = [paths[i] for i in sorted(order[held_out:])]
        return _files_split(train_files), _files_split(val_files), names


def imagefolder_layout(root: Path) -> tuple[Path, Path | None]:
    """(train folder, val folder or None): DIR/train + DIR/val (or DIR/test), else DIR itself, split by seed."""
    if not root.is_dir():
        what = (
            "is a file, not a folder"
            if root.is_file()
            else "is not a folder"
            if root.exists()
            else "does not exist"
        )
        raise DataError(f"image folder {root} {what}: give the folder that holds the class folders")
    val = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    if (root / "train").is_dir() and val is not None:
        return root / "train", val
    return root, None


def imagefolder_classes(root: Path) -> tuple[str, ...]:
    """An image folder's class names: its (train folder's) sub-folders, sorted."""
    train_root, _ = imagefolder_layout(root)
    names = tuple(sorted(entry.name for entry in os.scandir(train_root) if entry.is_dir()))
    if len(names) < 2:
        raise DataError(f"image folder {train_root} needs at least 2 class sub-folders, found {len(names)}")
    return names


def _class_files(folder: Path, names: tuple[str, ...], classes: tuple[int, ...]) -> dict[int, list[str]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    files = {}
    for class_id in classes:
        class_dir = folder / names[class_id]
        if not class_dir.is_dir():
            raise DataError(f"{folder} has no sub-folder {names[class_id]} (class {class_id})")
        paths = _image_files(class_dir, IMG_EXTENSIONS)
        if not paths:
            raise DataError(f"no images in {class_dir} (expected {', '.join(IMG_EXTENSIONS)})")
        files[class_id] = paths
    return files


def _image_files(class_dir: Path, extensions: tuple[str, ...]) -> list[str]:
    """The images anywhere under a class folder, sorted. A loop with a stack, not Path.rglob or os.walk (both
    recurse in Python 3.11): a tree thousands of folders deep is walked; symlinked folders are not (no cycles)."""
    found: list[str] = []
    pending = [str(class_dir)]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif os.path.splitext(entry.name)[1].lower() in extensions and entry.is_file():
                        found.append(entry.path)
        except OSError as error:
            raise DataError(f"cannot read folder {folder}: {error.strerror or error}") from None
    return sorted(found)


def _files_split(files: dict[int, list[str]]) -> Split:
    paths = [path for class_id in files for path in files[class_id]]
    labels = np.array([class_id for class_id in files for _ in files[class_id]], dtype=np.int64)
    return Split(labels=labels, paths=tuple(paths))
