"""CIFAR-100: 60,000 32x32 colour images of 100 classes, torchvision's `cifar-100-python` folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_smsp.core.errors import DataError
from edge_smsp.data.base import DatasetSource, Split, download_with_torchvision

CIFAR100_CLASSES = 100


class Cifar100(DatasetSource):
    name = "cifar100"
    aliases = ("cifar-100",)
    class_count = CIFAR100_CLASSES

    def check_files(self, root: Path) -> None:
        cifar100_folder(root)

    def class_names(self, root: Path) -> tuple[str, ...]:
        # The names live in the files; a request is checked against the count alone, before reading them.
        return tuple(str(class_id) for class_id in range(CIFAR100_CLASSES))

    def splits(
        self, root: Path, classes: tuple[int, ...], seed: int, val_per_class: int | None, download: bool
    ) -> tuple[Split, Split, tuple[str, ...]]:
        import torchvision.datasets

        if download:
            download_with_torchvision("CIFAR100", root)
        cifar100_folder(root)
        splits = []
        names: tuple[str, ...] = ()
        for train in (True, False):
            try:
                data = torchvision.datasets.CIFAR100(str(root), train=train, download=False)
            except (RuntimeError, OSError, ValueError) as error:
                raise DataError(f"cannot read CIFAR-100 under {root}: {error}; re-download it") from error
            splits.append(
                Split(labels=np.asarray(data.targets, dtype=np.int64), pixels=np.asarray(data.data))
            )
            names = tuple(data.classes)
        return splits[0], splits[1], names


def cifar100_folder(root: Path) -> Path:
    """The cifar-100-python folder under root."""
    folder = root / "cifar-100-python"
    if not folder.is_dir():
        raise DataError(
            f"CIFAR-100 files not found in {root} (need {folder}): pass --data-dir DIR holding "
            "cifar-100-python/, or download it online with torchvision.datasets.CIFAR100(DIR, download=True)"
        )
    return folder
