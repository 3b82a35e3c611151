"""Helpers of tests/test_light_adapt.py: a tiny MobileNet/EfficientNet-Lite-shaped CNN exported with BatchNorm
unfused, and a small ImageFolder of real Fashion-MNIST images."""

from __future__ import annotations

import gzip
import io
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def _conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: nn.Module | None = None
):
    layers = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    return nn.Sequential(*layers, *([act] if act is not None else []))


class SameConv(nn.Conv2d):
    """A TF-style "same" convolution (as EfficientNet-Lite ports use): its padding computed from the input's
    shape, which the exporter writes as Shape, Gather, Ceil, ... and a Pad."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for side, kernel, stride in zip(x.shape[-2:], self.kernel_size, self.stride, strict=True):
            side = torch.as_tensor(side)
            total = torch.clamp((torch.ceil(side / stride) - 1) * stride + kernel - side, min=0).long()
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return super().forward(F.pad(x, [left, right, top, bottom]))


class Block(nn.Module):
    """An inverted residual (expand 1x1, depthwise, project 1x1 with a linear end), residual when shapes allow."""

    def __init__(
        self, cin: int, cout: int, stride: int, expand: int, act: type[nn.Module] = nn.ReLU6
    ) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = _conv_bn(cin, hidden, 1, act=act()) if expand > 1 else nn.Identity()
        self.depthwise = _conv_bn(hidden, hidden, 3, stride, groups=hidden, act=act())
        self.project = _conv_bn(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class TinyNet(nn.Module):
    """Stem (3x3 s2 "same", ReLU6, max-pool), five blocks (one with swish), 1x1 head conv, pooling, linear."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        same = SameConv(3, 8, 3, 2, 0, bias=False)
        self.stem = nn.Sequential(nn.Sequential(same, nn.BatchNorm2d(8), nn.ReLU6()), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.Sequential(
            Block(8, 8, 1, 1),
            Block(8, 12, 2, 4),
            Block(12, 12, 1, 4, act=nn.SiLU),
            Block(12, 16, 1, 4),
            Block(16, 16, 1, 4),
        )
        self.head = _conv_bn(16, 32, 1, act=nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.head(self.blocks(self.stem(x)))), 1))


def tiny_model(num_classes: int = 3, seed: int = 0) -> TinyNet:
    """The tiny net with seeded weights and non-trivial BN statistics (as a pre-trained net has)."""
    torch.manual_seed(seed)
    model = TinyNet(num_classes)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def export_unfused(model: nn.Module, path: Path, size: int = 32, opset: int = 13) -> Path:
    """The eval-mode model as ONNX with BatchNormalization kept (not folded into the convolutions)."""
    example = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            example,
            str(path),
            dynamo=False,
            opset_version=opset,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def fashion_images(classes: list[int], per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` seeded training images (uint8 28x28) of each class, and their labels (0..k-1)."""
    with gzip.open(FASHION_MNIST / "train-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(), dtype=np.uint8, offset=8)
    with gzip.open(FASHION_MNIST / "train-images-idx3-ubyte.gz") as handle:
        data = handle.read()
    count, rows, columns = struct.unpack(">III", data[4:16])
    images = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, columns)
    rng = np.random.default_rng(seed)
    picked, targets = [], []
    for index, label in enumerate(classes):
        members = np.flatnonzero(labels == label)
        chosen = rng.choice(members, per_class, replace=False)
        picked.append(images[chosen])
        targets += [index] * per_class
    return np.concatenate(picked), np.asarray(targets)


def write_pgm(path: Path, image: np.ndarray) -> None:
    path.write_bytes(
        b"P5\n%d %d\n255\n" % (image.shape[1], image.shape[0]) + image.astype(np.uint8).tobytes()
    )


def write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8), mode="L").save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def image_folder(
    root: Path, classes: list[int], per_class: int, fmt: str = "png", split: bool = False, seed: int = 0
) -> Path:
    """An ImageFolder of Fashion-MNIST images (class folders, or train/ and val/ of class folders)."""
    images, labels = fashion_images(classes, per_class, seed)
    writer = write_png if fmt == "png" else write_pgm
    for number, (image, label) in enumerate(zip(images, labels, strict=True)):
        part = ("val" if number % 5 == 0 else "train") if split else ""
        folder = root / part / CLASS_NAMES[classes[label]]
        folder.mkdir(parents=True, exist_ok=True)
        writer(folder / f"{number:04d}.{fmt}", image)
    return root
