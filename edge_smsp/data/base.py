"""What a dataset is to edge-smsp (one `DatasetSource` per dataset, registered in edge_smsp.data): where its
files are, its classes, and its train/val splits before a task's classes are chosen.

Torch-free when imported, so that the command line checks a task request in a second; `splits` may import
heavier readers inside.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from edge_smsp.core.errors import DataError

DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-smsp" / "datasets"


@dataclass(frozen=True)
class Split:
    """One split of a dataset before class selection: either decoded pixels or image files."""

    labels: np.ndarray
    pixels: np.ndarray | None = None  # uint8 [N, H, W] or [N, H, W, 3]
    paths: tuple[str, ...] | None = None


class DatasetSource:
    """Base of every dataset: its files, its class names, its splits."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()  # other spellings --dataset accepts (lower case, "-" for "_")
    class_count: ClassVar[int | None] = None  # known without its files (None: counted in them, as a folder's)

    def default_root(self) -> Path:
        """Where the files are without --data-dir; DataError when the dataset has no default place."""
        return DEFAULT_CACHE_DIR

    def check_files(self, root: Path) -> None:
        """DataError naming what is missing under `root` and what to do; reads no image."""

    def class_names(self, root: Path) -> tuple[str, ...]:
        """Every class of the dataset, in class-id order."""
        raise NotImplementedError

    def splits(
        self, root: Path, classes: tuple[int, ...], seed: int, val_per_class: int | None, download: bool
    ) -> tuple[Split, Split, tuple[str, ...]]:
        """The train and val splits holding at least `classes`, and every class's name as the files give it;
        `download` may fetch missing files (online)."""
        raise NotImplementedError

    def task_prefix(self, source: str) -> str:
        """How the dataset is named in a task id (image folders add their folder's name)."""
        return self.name


def download_with_torchvision(class_name: str, root: Path) -> None:
    """Fetch a torchvision dataset's files into `root` (online users only)."""
    import torchvision.datasets

    try:
        for train in (True, False):
            getattr(torchvision.datasets, class_name)(str(root), train=train, download=True)
    except Exception as error:  # network errors come in many types; all mean the same to the user
        raise DataError(f"downloading {class_name} into {root} failed (offline?): {error}") from error
