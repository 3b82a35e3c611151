"""Fashion-MNIST: 70,000 28x28 grey images of 10 clothing classes, IDX files (Debian's dataset-fashion-mnist)."""

from __future__ import annotations

import functools
import gzip
import stat
import struct
import zlib
from pathlib import Path

import numpy as np

from edge_smsp.core.errors import DataError, PathError
from edge_smsp.core.paths import kind, status
from edge_smsp.data.base import DatasetSource, Split, download_with_torchvision

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
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class FashionMnist(DatasetSource):
    name = "fashion-mnist"
    aliases = ("fashionmnist",)
    class_count = len(FASHION_MNIST_CLASSES)

    def default_root(self) -> Path:
        return FASHION_MNIST_DIR

    def check_files(self, root: Path) -> None:
        fashion_mnist_files(root)

    def class_names(self, root: Path) -> tuple[str, ...]:
        return FASHION_MNIST_CLASSES

    def splits(
        self, root: Path, classes: tuple[int, ...], seed: int, val_per_class: int | None, download: bool
    ) -> tuple[Split, Split, tuple[str, ...]]:
        found = fashion_mnist_files(root, missing_ok=download)
        if found is None:
            download_with_torchvision("FashionMNIST", root)
            found = fashion_mnist_files(root)
        splits = []
        for part in ("train", "val"):
            images_path, labels_path = found[part]
            pixels = _read_idx(images_path, 2051, 3)
            labels = _read_idx(labels_path, 2049, 1)
            if 0 in pixels.shape[1:]:
                raise DataError(
                    f"{images_path} holds images of {pixels.shape[1]} x {pixels.shape[2]} pixels: the file is damaged; "
                    "re-download it"
                )
            if len(pixels) != len(labels):
                raise DataError(
                    f"{images_path} has {len(pixels)} images but {labels_path} has {len(labels)} labels"
                )
            if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
                raise DataError(
                    f"{labels_path} holds label {int(labels.max())}, but Fashion-MNIST's classes are 0-"
                    f"{len(FASHION_MNIST_CLASSES) - 1}: the file is damaged or of another dataset; re-download it"
                )
            splits.append(Split(labels=labels.astype(np.int64), pixels=pixels))
        return splits[0], splits[1], FASHION_MNIST_CLASSES


def fashion_mnist_files(root: Path, *, missing_ok: bool = False) -> dict[str, tuple[Path, Path]] | None:
    """The IDX files (images, labels) of each split under root (or root/FashionMNIST/raw)."""
    for directory in (root, root / "FashionMNIST" / "raw"):
        found = {}
        for part, names in FASHION_FILES.items():
            paths = []
            for name in names:
                candidates = [directory / f"{name}.gz", directory / name]
                existing = next((path for path in candidates if _regular_file(path)), None)
                if existing is None:
                    break
                paths.append(existing)
            if len(paths) == 2:
                found[part] = (paths[0], paths[1])
        if len(found) == 2:
            return found
    if missing_ok:
        return None
    wanted = ", ".join(f"{name}.gz" for pair in FASHION_FILES.values() for name in pair)
    raise DataError(
        f"Fashion-MNIST files not found in {root} (need {wanted}): install Debian's dataset-fashion-mnist "
        "(apt-get install dataset-fashion-mnist), pass --data-dir DIR, or download them with torchvision"
    )


def _regular_file(path: Path) -> bool:
    """Whether `path` is a regular file (through links); DataError when a FIFO, a device or a folder stands where a
    dataset file belongs, which would read as missing or block a read forever."""
    try:
        info = status(path)
    except PathError as error:
        raise DataError(f"cannot read {error}") from None
    if info is None:
        return False
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path} is {kind(info.st_mode)}, not a dataset file: put the downloaded file there")
    return True


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    stat = path.stat()
    return _read_idx_cached(str(path), stat.st_mtime_ns, stat.st_size, magic, dims)


MAX_IDX_BYTES = 512 << 20  # an IDX file's pixels (Fashion-MNIST's training images: 47 MB)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, _mtime_ns: int, size: int, magic: int, dims: int) -> np.ndarray:
    """The header first, its shape checked (against the file's size when not compressed, against a cap when it
    is), then exactly that many bytes: a 3 MB .gz that inflates to 3 GiB is refused, never inflated."""
    compressed = path.endswith(".gz")
    opener = gzip.open if compressed else open
    header_size = 4 + 4 * dims
    try:
        with opener(path, "rb") as handle:
            found_magic, *shape = struct.unpack(f">{1 + dims}I", handle.read(header_size))
            expected = int(np.prod(shape, dtype=np.int64)) if found_magic == magic else -1
            if found_magic != magic:
                raise DataError(
                    f"{path} is not a valid IDX file (magic {found_magic}, expected {magic}); re-download it"
                )
            if expected > MAX_IDX_BYTES or (not compressed and expected != size - header_size):
                raise DataError(
                    f"{path} is not a valid IDX file: its header claims {expected:,} values of shape {tuple(shape)}, "
                    f"{'more than a dataset file may hold' if compressed else 'not what the file holds'}; "
                    "re-download it"
                )
            raw = handle.read(expected + 1)
    except (OSError, EOFError, struct.error, zlib.error) as error:
        raise DataError(f"cannot read IDX file {path}: {error}; re-download it") from None
    if len(raw) != expected:
        raise DataError(
            f"{path} is not a valid IDX file: it holds {len(raw):,}{'+' if len(raw) > expected else ''} values "
            "where its header says "
            f"{expected:,}; re-download it"
        )
    array = np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    array.setflags(write=False)
    return array
