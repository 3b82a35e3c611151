"""A task's images on the device: an ImageFolder (`train/` and `val/` of class folders, or one folder of class
folders split here, seeded and stratified), checked up front with one-line errors that name the culprit."""

import os
from typing import Any, Dict, List, Tuple

from .errors import RuntimeToolError, one_line
from .images import load_image, preprocess
from .model import import_numpy
from .paths import require_folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".npy")
MIN_TRAIN_IMAGES = 2  # per class: train-mode BatchNorm and a stratified split need two

Samples = List[Tuple[str, int]]


def _image_files(folder: str) -> List[str]:
    """The image files of a class folder and of its sub-folders at any depth (as the host's ImageFolder and
    torchvision's read them), not yet sorted; hidden entries are ignored, anything else must be an image."""
    files = []  # type: List[str]
    pending = [(folder, ())]  # type: List[Tuple[str, Tuple[Tuple[int, int], ...]]]
    while pending:  # no recursion: a folder nested thousands deep is read like any other
        directory, ancestors = pending.pop()
        try:
            info = os.stat(directory)
            items = sorted(os.listdir(directory))
        except OSError as error:
            raise RuntimeToolError(f"cannot read folder {directory}: {one_line(error)}") from None
        # Folders are told apart by device and inode: realpath() of each of a deep tree's folders is quadratic.
        identity = (info.st_dev, info.st_ino)
        if identity in ancestors:  # a symlink back to a folder above: walking it would never end
            raise RuntimeToolError(
                f"{directory} links back to {os.path.realpath(directory)}, a folder above it (a symlink cycle); "
                "remove the link"
            )
        for item in items:
            path = os.path.join(directory, item)
            if item.startswith("."):
                continue
            if os.path.isdir(path):
                pending.append((path, ancestors + (identity,)))
            elif not item.lower().endswith(IMAGE_SUFFIXES):
                raise RuntimeToolError(f"not an image file: {path} (expected {', '.join(IMAGE_SUFFIXES)})")
            else:
                files.append(path)
    return files


def _class_folders(root: str, what: str) -> Dict[str, List[str]]:
    """Class name -> its image files of one ImageFolder level, those in sub-folders of a class folder included,
    sorted by path (as the host's ImageFolder); hidden entries are ignored."""
    require_folder(root, what)
    classes = {}
    for name in sorted(os.listdir(root)):
        directory = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(directory):
            continue
        classes[name] = sorted(_image_files(directory))
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        raise RuntimeToolError(f"{root}: need at least two class folders (ImageFolder layout), found {found}")
    return classes


def _check_counts(classes: Dict[str, List[str]], root: str, minimum: int) -> None:
    for name, files in classes.items():
        if len(files) < minimum:
            raise RuntimeToolError(
                f"class {name!r} in {root} has {len(files)} image(s); each class needs at least {minimum}"
            )


def read_task(root: str, val_fraction: float, seed: int) -> Tuple[List[str], Samples, Samples]:
    """Class names, training and validation (path, class) pairs of an ImageFolder task.

    With `train/` and `val/` sub-folders they are the splits (the same class names in both); otherwise each
    class's images are shuffled with `seed` and round(n * val_fraction) of them (at least 1, at most n - 1)
    go to validation."""
    np = import_numpy()
    require_folder(root, "image folder")
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    if os.path.isdir(train_dir) and os.path.isdir(val_dir):
        train, val = _class_folders(train_dir, "train folder"), _class_folders(val_dir, "val folder")
        if sorted(train) != sorted(val):
            only_train = sorted(set(train) - set(val))
            only_val = sorted(set(val) - set(train))
            raise RuntimeToolError(
                f"{root}: train/ and val/ have different classes (only in train/: {', '.join(only_train) or '-'}; "
                f"only in val/: {', '.join(only_val) or '-'})"
            )
        _check_counts(train, train_dir, MIN_TRAIN_IMAGES)
        _check_counts(val, val_dir, 1)
        names = sorted(train)
        return (
            names,
            [(path, label) for label, name in enumerate(names) for path in train[name]],
            [(path, label) for label, name in enumerate(names) for path in val[name]],
        )
    if os.path.isdir(train_dir) or os.path.isdir(val_dir):  # one split alone: never read as a class folder
        present, absent = ("train", "val") if os.path.isdir(train_dir) else ("val", "train")
        raise RuntimeToolError(
            f"{root} has {present}/ but no {absent}/: give both train/ and val/ of class folders, "
            "or class folders alone (the runtime splits them)"
        )
    if not 0.0 < val_fraction < 1.0:
        raise RuntimeToolError(f"--val-fraction must be in (0, 1) to split {root}, got {val_fraction}")
    classes = _class_folders(root, "image folder")
    _check_counts(classes, root, MIN_TRAIN_IMAGES)
    rng = np.random.RandomState(seed)
    names = sorted(classes)
    train_samples, val_samples = [], []  # type: Samples, Samples
    for label, name in enumerate(names):
        files = classes[name]
        order = rng.permutation(len(files))
        count = min(max(int(round(len(files) * val_fraction)), 1), len(files) - 1)
        val_samples.extend((files[i], label) for i in sorted(order[:count]))
        train_samples.extend((files[i], label) for i in sorted(order[count:]))
    return names, train_samples, val_samples


def load_images(samples: Samples, preprocessing: Dict[str, Any]) -> Tuple[Any, Any]:
    """The images as one float32 NCHW array, preprocessed as the model expects, and their labels."""
    np = import_numpy()
    size = tuple(preprocessing["input_size"])
    channels, mean, std = preprocessing["channels"], preprocessing["mean"], preprocessing["std"]
    batch = np.empty((len(samples), channels) + size, dtype=np.float32)
    for index, (path, _) in enumerate(samples):
        try:
            batch[index] = preprocess(load_image(path), size, channels, mean, std)[0]
        except RuntimeToolError:
            raise
        except Exception as error:  # a decoder's own error on a corrupt file: name the file
            raise RuntimeToolError(f"cannot read image {path}: {type(error).__name__}: {error}") from None
    return batch, np.asarray([label for _, label in samples], dtype=np.int64)


def balanced_sample(labels: Any, count: int, seed: int) -> Any:
    """Indices of a seeded, class-balanced sample: at most count // classes of each class (as the host's
    edge_smsp.features.task_sample)."""
    np = import_numpy()
    classes = int(labels.max()) + 1
    if count < classes:
        raise RuntimeToolError(f"--sample must be at least one image per class ({classes}), got {count}")
    rng = np.random.RandomState(seed)
    per_class = count // classes
    picked = [rng.permutation(np.flatnonzero(labels == label))[:per_class] for label in range(classes)]
    return np.concatenate(picked)


def cap_per_class(samples: Samples, count: int, seed: int) -> Samples:
    """At most `count` samples of each class, a seeded choice, in their original order."""
    np = import_numpy()
    rng = np.random.RandomState(seed)
    by_class = {}  # type: Dict[int, List[int]]
    for index, (_, label) in enumerate(samples):
        by_class.setdefault(label, []).append(index)
    kept = set()  # type: set
    for label in sorted(by_class):
        members = by_class[label]
        kept.update(members[i] for i in rng.permutation(len(members))[:count])
    return [sample for index, sample in enumerate(samples) if index in kept]
