"""The checks of a task request: dataset names, where the files are, class ids, image sizes, generated tasks.

Torch-free, so that the command line refuses a bad task (an unknown dataset, missing files, a class id out of
range) in a second, before any model or image is loaded. edge_smsp.data.tasks loads the images.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import numpy as np

from edge_smsp.core.errors import DataError
from edge_smsp.data import DATASETS, dataset_source

# Input resolutions every part accepts (task images, backbones, profiles, the command line).
MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 4096
_QUOTED_IDS = 8  # an error lists at most this many class ids


def image_size_problem(image_size: object) -> str | None:
    """Why `image_size` is not an input resolution edge-smsp accepts, or None when it is one."""
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer):
        return f"must be an integer number of pixels, got {_short(image_size)!r}"
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        return f"must be {MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE} pixels, got {image_size}"
    return None


def dataset_name(dataset: str) -> str:
    """The canonical name of a dataset ("FashionMNIST" -> "fashion-mnist"); DataError for unknown ones."""
    name = str(dataset).strip().lower().replace("_", "-")
    if name in DATASETS:
        return name
    for canonical in DATASETS:
        if name in dataset_source(canonical).aliases:
            return canonical
    raise DataError(f"unknown dataset {_short(dataset)!r}; choose one of {', '.join(DATASETS)}")


def dataset_root(dataset: str, data_dir: str | os.PathLike | None) -> Path:
    """Where a dataset's files are: --data-dir, else its default place (an image folder has none)."""
    name = dataset_name(dataset)
    if data_dir is not None:
        return Path(data_dir)
    return dataset_source(name).default_root()


def num_classes(dataset: str, data_dir: str | os.PathLike | None = None) -> int:
    """Number of classes of a dataset (an image folder's sub-folders are counted)."""
    name = dataset_name(dataset)
    return len(dataset_source(name).class_names(dataset_root(name, data_dir)))


def known_class_count(dataset: str) -> int | None:
    """A dataset's number of classes when it is known without its files (a catalog dataset), else None."""
    try:
        return dataset_source(dataset_name(dataset)).class_count
    except DataError:
        return None  # an image folder's task ("imagefolder[name]") or a dataset this version does not know


def check_task_request(
    dataset: str,
    classes: Sequence[int],
    *,
    data_dir: str | os.PathLike | None = None,
    train_per_class: int | None = None,
    val_per_class: int | None = None,
) -> tuple[int, ...]:
    """The task's class ids, checked against the dataset and its files without reading an image."""
    name = dataset_name(dataset)
    check_count("train_per_class", train_per_class)
    check_count("val_per_class", val_per_class)
    root = dataset_root(name, data_dir)
    dataset_source(name).check_files(root)
    return check_classes(classes, num_classes(name, root), name)


def check_count(label: str, value: int | None) -> None:
    """A per-class image count: None (the default) or a positive integer."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DataError(f"{label} must be a positive integer, got {value}")


def check_classes(classes: Sequence[int], total: int, dataset: str) -> tuple[int, ...]:
    """At least two distinct integer class ids in 0..total-1."""
    try:
        values = tuple(classes)
    except TypeError:
        raise DataError(f"classes must be a list of class ids, got {_short(classes)}") from None
    if not all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in values):
        raise DataError(f"class ids must be integers, got {_ids(values)}")
    values = tuple(int(c) for c in values)
    if len(values) < 2:
        named = f"only class {values[0]}" if values else "no class"
        raise DataError(
            f"a task needs at least 2 classes, but {named} was named: name two or more, such as 0,3,5"
        )
    duplicated = sorted(value for value, count in Counter(values).items() if count > 1)
    if duplicated:
        raise DataError(f"class ids repeat: {_ids(duplicated)}")
    outside = [c for c in values if not 0 <= c < total]
    if outside:
        raise DataError(f"class ids {_ids(outside)} out of range: {dataset} has classes 0..{total - 1}")
    return values


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
        raise DataError(
            f"a task needs at least 2 classes: classes per task must be 2 or more, got {classes_per_task}"
        )
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


def _ids(values: Sequence[int]) -> str:
    """Class ids for a message, the first few of a long list."""
    shown = ", ".join(str(value) for value in list(values)[:_QUOTED_IDS])
    more = len(values) - _QUOTED_IDS
    return f"{shown} and {more} more" if more > 0 else shown or "none"


def _short(value: object, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
