"""Tasks from real Fashion-MNIST IDX files and real image folders."""

from __future__ import annotations

import gzip
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from edge_smsp.core.errors import DataError
from edge_smsp.data import tasks as data
from edge_smsp.data.fashion_mnist import FASHION_MNIST_DIR

FASHION_DIR = FASHION_MNIST_DIR
pytestmark = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


def _raw_fashion(part: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if part == "train" else "t10k"
    with gzip.open(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(), np.uint8, offset=8)
    return images, labels


def _pixels(dataset: data.ImageTensorDataset, mean, std) -> np.ndarray:
    """Undo the normalisation: uint8 [N, H, W] of the first channel."""
    images, _ = dataset.batch(range(len(dataset)))
    restored = images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    return (restored[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def test_fashion_task_shapes_normalisation_and_names():
    task = data.load_task(
        "fashion-mnist",
        [0, 3, 5],
        image_size=32,
        mean=LITE_MEAN,
        std=LITE_STD,
        train_per_class=40,
        val_per_class=20,
    )
    assert task.task_id == "fashion-mnist:0-3-5"
    assert task.class_names == ("T-shirt/top", "Dress", "Sandal")
    assert (len(task.train), len(task.val)) == (120, 60)
    image, label = task.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label.dtype == torch.int64
    images, labels = task.train.batch(range(len(task.train)))
    assert torch.bincount(labels).tolist() == [40, 40, 40]
    # Grey -> three identical channels; the black background is exactly (0 - mean) / std.
    assert torch.equal(images[:, 0], images[:, 2])
    assert float(images.min()) == pytest.approx(-127 / 128, abs=1e-6)
    assert float(images.max()) <= (1 - 127 / 255) / (128 / 255) + 1e-6
    # Any prefix covers every class (bounded samples for LEEP stay balanced).
    assert set(labels[:12].tolist()) == {0, 1, 2}


def test_labels_follow_the_given_class_order_and_come_from_the_right_split():
    raw_train, raw_train_labels = _raw_fashion("train")
    raw_test, raw_test_labels = _raw_fashion("val")
    task = data.load_task("fashion-mnist", [7, 1], image_size=28, train_per_class=15, val_per_class=10)
    assert task.class_names == ("Sneaker", "Trouser")
    for dataset, raw, raw_labels in (
        (task.train, raw_train, raw_train_labels),
        (task.val, raw_test, raw_test_labels),
    ):
        label_of = {bytes(image): int(label) for image, label in zip(raw, raw_labels, strict=True)}
        pixels = _pixels(dataset, data.IMAGENET_DEFAULT_MEAN, data.IMAGENET_DEFAULT_STD)
        for image, label in zip(pixels, dataset.labels.tolist(), strict=True):
            assert label_of[bytes(image)] == (7, 1)[label]


def test_same_seed_same_task_other_seed_other_images():
    def load(classes, seed):
        return data.load_task(
            "fashion-mnist", classes, image_size=32, seed=seed, train_per_class=20, val_per_class=5
        )

    first, again, other_seed = load([2, 4], 0), load([2, 4], 0), load([2, 4], 1)
    assert torch.equal(first.train.images, again.train.images)
    assert torch.equal(first.train.labels, again.train.labels)
    assert torch.equal(first.val.images, again.val.images)
    assert not torch.equal(first.train.images, other_seed.train.images)
    # A class brings the same images to every task that holds it.
    shared = load([4, 9], 0)
    fours_first = first.train.images[first.train.labels == 1]
    fours_shared = shared.train.images[shared.train.labels == 0]
    assert {bytes(x.numpy()) for x in fours_first} == {bytes(x.numpy()) for x in fours_shared}


def test_generate_tasks_is_seeded_and_valid():
    tasks = data.generate_tasks("fashion-mnist", 6, 3, seed=7)
    assert tasks == data.generate_tasks("fashion-mnist", 6, 3, seed=7)
    assert tasks != data.generate_tasks("fashion-mnist", 6, 3, seed=8)
    assert len(set(tasks)) == 6
    for task in tasks:
        assert len(task) == 3 and list(task) == sorted(set(task)) and all(0 <= c < 10 for c in task)
    assert len(set(data.generate_tasks("cifar100", 20, 5, seed=0))) == 20  # counting needs no files
    assert len(data.generate_tasks("fashion-mnist", 45, 2, seed=0)) == 45  # all of C(10, 2)
    with pytest.raises(DataError, match="only 45 distinct tasks"):
        data.generate_tasks("fashion-mnist", 46, 2, seed=0)
    with pytest.raises(DataError, match="at least 2 classes"):
        data.generate_tasks("fashion-mnist", 2, 1, seed=0)


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    """Real 8x8 digit scans from scikit-learn saved as PNGs, one sub-folder per class."""
    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    counts = {}
    for image, target in zip(digits.images, digits.target, strict=True):
        if target > 2 or counts.get(target, 0) >= 12:
            continue
        counts[target] = counts.get(target, 0) + 1
        folder = root / f"digit{target}"
        folder.mkdir(exist_ok=True)
        pixels = (image * 255 / 16).round().astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{counts[target]:02d}.png")
    return root


def test_imagefolder_task_from_real_pngs(digits_folder):
    task = data.load_task("imagefolder", [2, 0], data_dir=digits_folder, image_size=8, seed=3)
    assert task.class_names == ("digit2", "digit0")
    assert task.task_id == f"imagefolder[{digits_folder.name}]:2-0"
    assert data.num_classes("imagefolder", digits_folder) == 3
    # 12 images per class, 20% held out: disjoint train and val.
    assert (len(task.train), len(task.val)) == (20, 4)
    train = {bytes(x) for x in _pixels(task.train, data.IMAGENET_DEFAULT_MEAN, data.IMAGENET_DEFAULT_STD)}
    val = {bytes(x) for x in _pixels(task.val, data.IMAGENET_DEFAULT_MEAN, data.IMAGENET_DEFAULT_STD)}
    assert not train & val
    on_disk = {bytes(np.asarray(Image.open(p))) for p in (digits_folder / "digit2").glob("*.png")}
    twos = _pixels(task.train, data.IMAGENET_DEFAULT_MEAN, data.IMAGENET_DEFAULT_STD)[task.train.labels == 0]
    assert {bytes(x) for x in twos} <= on_disk
    resized = data.load_task("imagefolder", [0, 1], data_dir=digits_folder, image_size=24)
    assert resized.train[0][0].shape == (3, 24, 24)
    again = data.load_task("imagefolder", [2, 0], data_dir=digits_folder, image_size=8, seed=3)
    assert torch.equal(task.train.images, again.train.images)


def test_imagefolder_with_train_and_val_folders(digits_folder, tmp_path):
    for part in ("train", "val"):
        for class_dir in digits_folder.iterdir():
            target = tmp_path / part / class_dir.name
            target.mkdir(parents=True)
            files = sorted(class_dir.glob("*.png"))
            for path in files[:9] if part == "train" else files[9:]:
                shutil.copy(path, target / path.name)
    task = data.load_task("imagefolder", [0, 1, 2], data_dir=tmp_path, image_size=8)
    assert (len(task.train), len(task.val)) == (27, 9)


def test_bad_input_is_one_line_data_error(tmp_path, digits_folder):
    cases = [
        (dict(dataset="mnist", classes=[0, 1]), "unknown dataset 'mnist'"),
        (dict(dataset="fashion-mnist", classes=[0, 10]), "out of range"),
        (dict(dataset="fashion-mnist", classes=[-1, 2]), "out of range"),
        (dict(dataset="fashion-mnist", classes=[3, 3]), "repeat"),
        (dict(dataset="fashion-mnist", classes=[3]), "at least 2 classes"),
        (dict(dataset="fashion-mnist", classes=[0, 1], data_dir=tmp_path), "not found"),
        (dict(dataset="fashion-mnist", classes=[0, 1], image_size=0), "image size"),
        (dict(dataset="fashion-mnist", classes=[0, 1], train_per_class=0), "train_per_class"),
        (dict(dataset="cifar100", classes=[0, 1], data_dir=tmp_path), "CIFAR-100 files not found"),
        (dict(dataset="imagefolder", classes=[0, 1]), "needs --data-dir"),
        (dict(dataset="imagefolder", classes=[0, 1], data_dir=tmp_path / "none"), "does not exist"),
        (dict(dataset="imagefolder", classes=[0, 3], data_dir=digits_folder), "classes 0..2"),
    ]
    for kwargs, message in cases:
        with pytest.raises(DataError, match=message) as caught:
            data.load_task(**kwargs)
        assert "\n" not in str(caught.value)


def test_corrupt_idx_file_and_empty_class_folder(tmp_path):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        shutil.copy(FASHION_DIR / f"{name}.gz", tmp_path / f"{name}.gz")
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(b"\x00\x00\x08\x01" + b"\x00" * 20)
    with pytest.raises(DataError, match="not a valid IDX file"):
        data.load_task("fashion-mnist", [0, 1], data_dir=tmp_path)
    folder = tmp_path / "images"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    Image.new("RGB", (4, 4)).save(folder / "a" / "x.png")
    with pytest.raises(DataError, match="no images in"):
        data.load_task("imagefolder", [0, 1], data_dir=folder)


def test_labels_out_of_range_and_a_fifo_device_or_folder_for_a_dataset_file_are_named(tmp_path):
    """Labels of 200 read as 'class 0 has no train images', and a FIFO, /dev/zero or a folder in a file's place as
    'files not found': each is now named for what it is."""
    names = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    for name in names[2:]:
        shutil.copy(FASHION_DIR / f"{name}.gz", tmp_path / f"{name}.gz")
    shutil.copy(FASHION_DIR / f"{names[0]}.gz", tmp_path / f"{names[0]}.gz")
    with gzip.open(tmp_path / f"{names[1]}.gz", "wb") as handle:
        handle.write(b"\x00\x00\x08\x01" + (60000).to_bytes(4, "big") + bytes([200]) * 60000)
    with pytest.raises(
        DataError, match=r"train-labels-idx1-ubyte.gz holds label 200, but Fashion-MNIST's classes are 0-9"
    ):
        data.load_task("fashion-mnist", [0, 1], data_dir=tmp_path)
    with gzip.open(tmp_path / f"{names[1]}.gz", "wb") as handle:
        handle.write(b"\x00\x00\x08\x01" + (60000).to_bytes(4, "big") + bytes(60000))
    shutil.copy(tmp_path / f"{names[0]}.gz", tmp_path / "kept.gz")
    with gzip.open(tmp_path / f"{names[0]}.gz", "wb") as handle:  # 60,000 images of 0 x 0 pixels
        handle.write(b"\x00\x00\x08\x03" + (60000).to_bytes(4, "big") + bytes(8))
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte.gz holds images of 0 x 0 pixels: the file is damaged"
    ):
        data.load_task("fashion-mnist", [0, 1], data_dir=tmp_path)
    os.replace(tmp_path / "kept.gz", tmp_path / f"{names[0]}.gz")
    images = tmp_path / f"{names[0]}.gz"
    for kind, make in (
        ("a FIFO", lambda: os.mkfifo(images)),
        ("a character device", lambda: images.symlink_to("/dev/zero")),
        ("a directory", images.mkdir),
    ):
        images.unlink() if images.is_symlink() or images.is_file() or images.is_fifo() else shutil.rmtree(
            images
        )
        make()
        with pytest.raises(DataError, match=rf"{images} is {kind}, not a dataset file"):
            data.load_task("fashion-mnist", [0, 1], data_dir=tmp_path)


@pytest.mark.parametrize(
    "side", [7100, 9500]
)  # past the 50 M-pixel limit, then past Pillow's own warning (89 M)
def test_an_image_folder_with_a_decompression_bomb_is_one_data_error(tmp_path, side):
    folder = tmp_path / "images"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for number in range(2):
            Image.new("RGB", (4, 4)).save(folder / name / f"small{number}.png")
    Image.new("1", (side, side)).save(folder / "a" / "bomb.png")  # a few KiB on disk
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is printed: no warning escapes either
        with pytest.raises(DataError, match=r"bomb\.png has more than 50,000,000 pixels .*remove it"):
            data.load_task("imagefolder", [0, 1], data_dir=folder, image_size=8)


def test_an_image_folder_thousands_of_folders_deep_is_walked_without_recursion(tmp_path):
    folder = tmp_path / "f"
    for name in ("a", "b"):
        for number in range(2):
            (folder / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(folder / name / f"{number}.png")
    levels = [folder / "a" / "d"]
    for _ in range(1200):  # deeper than Python's recursion limit (os.makedirs and shutil.rmtree recurse)
        levels.append(levels[-1] / "d")
    for level in levels:
        level.mkdir()
    try:
        Image.new("RGB", (4, 4), "white").save(levels[-1] / "deep.png")
        task = data.load_task("imagefolder", [0, 1], data_dir=folder, image_size=8, val_per_class=1)
        assert len(task.train) + len(task.val) == 5  # the deep image counts for class a
    finally:  # bottom-up, so that pytest's recursive clean-up of old temporary folders never meets the tree
        (levels[-1] / "deep.png").unlink(missing_ok=True)
        for level in reversed(levels):
            level.rmdir()
