"""Toy shapes (the registry's proof: one file, one line): 28x28 grey squares, discs and bars, drawn by seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_smsp.data.base import DatasetSource, Split

CLASSES = ("square", "disc", "bar")


class ToyShapes(DatasetSource):
    name = "toy-shapes"

    def default_root(self) -> Path:
        return Path(".")  # drawn, no files

    def class_names(self, root: Path) -> tuple[str, ...]:
        return CLASSES

    def splits(
        self, root: Path, classes: tuple[int, ...], seed: int, val_per_class: int | None, download: bool
    ) -> tuple[Split, Split, tuple[str, ...]]:
        return _drawn(200, 0), _drawn(60, 1), CLASSES


def _drawn(per_class: int, part: int) -> Split:
    rng = np.random.default_rng([7, part])
    grid = np.mgrid[0:28, 0:28]
    pixels, labels = [], []
    for label in range(len(CLASSES)):
        for _ in range(per_class):
            y, x, r = rng.integers(8, 20), rng.integers(8, 20), rng.integers(3, 7)
            if label == 0:
                mask = (abs(grid[0] - y) <= r) & (abs(grid[1] - x) <= r)
            elif label == 1:
                mask = (grid[0] - y) ** 2 + (grid[1] - x) ** 2 <= r * r
            else:
                mask = (abs(grid[0] - y) <= 1) & (abs(grid[1] - x) <= 2 * r)
            pixels.append((mask * 255).astype(np.uint8))
            labels.append(label)
    return Split(labels=np.array(labels, dtype=np.int64), pixels=np.stack(pixels))
