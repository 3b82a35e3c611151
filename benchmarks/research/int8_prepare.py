"""Artifacts for the INT8 study: fp32 ONNX models and real images, cached under runs/int8_research/.

Research code (the lead rewrites its imports after the package move): EfficientNet-Lite0 with its bundled
ImageNet weights fine-tuned briefly on Fashion-MNIST 0,2,4 at 64 px, exported at 64 and 224 px; the ImageNet
Lite0 itself, resnet18 and deit_small (random weights) at 224 px, all r = 0.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "runs" / "int8_research"
CLASSES = (0, 2, 4)
# Another task (`int8_prepare.py 5,7,9`): only its 64 px model and images, the file names suffixed "_5-7-9".
SECOND = tuple(int(c) for c in sys.argv[1].split(",")) if len(sys.argv) > 1 else None
TAG = "_" + "-".join(map(str, SECOND)) if SECOND else ""


def _export(model: torch.nn.Module, path: Path, size: int, name: str, mean, std, classes: int) -> None:
    from edge_smsp.export.onnx_export import export_onnx

    if not path.exists():
        labels = [str(index) for index in range(classes)]
        metadata = {
            "labels": labels,
            "mean": list(mean),
            "std": list(std),
            "backbone": name,
            "task": "int8-study",
        }
        export_onnx(model.eval(), path, image_size=size, metadata=metadata)


def _images(task_split, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    n = len(task_split) if count is None else min(count, len(task_split))
    images, labels = task_split.batch(torch.arange(n))
    return images.numpy().astype(np.float32), labels.numpy()


def main() -> None:
    torch.set_num_threads(1)
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from edge_smsp.data.tasks import load_task
    from edge_smsp.models.zoo import TF_LITE_MEAN, TF_LITE_STD, load_backbone

    CACHE.mkdir(parents=True, exist_ok=True)
    facts = {}
    task = load_task(
        "fashion-mnist",
        SECOND or CLASSES,
        image_size=64,
        mean=TF_LITE_MEAN,
        std=TF_LITE_STD,
        seed=0,
        train_per_class=300,
        val_per_class=200,
    )
    train_x, train_y = _images(task.train)
    val_x, val_y = _images(task.val)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train_x))
    train_x, train_y = train_x[order], train_y[order]
    np.save(CACHE / f"calib64{TAG}.npy", train_x[:512])
    np.save(CACHE / f"val64{TAG}.npy", val_x)
    np.save(CACHE / f"val64{TAG}_labels.npy", val_y)

    tuned = CACHE / f"lite0_fmnist{TAG}_64.onnx"
    lite = ("efficientnet_lite0", TF_LITE_MEAN, TF_LITE_STD)
    state = CACHE / f"lite0_fmnist{TAG}.pt"
    model = load_backbone("efficientnet_lite0", pretrained=True, num_classes=3, image_size=64)
    if state.exists():
        model.load_state_dict(torch.load(state))
    elif not tuned.exists():
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
        xs, ys = torch.from_numpy(train_x), torch.from_numpy(train_y)
        started = time.time()
        for _ in range(120):
            idx = torch.from_numpy(rng.integers(0, len(xs), 32))
            loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        facts["finetune_seconds"] = round(time.time() - started, 1)
        model.eval()
        with torch.no_grad():
            acc = float((model(torch.from_numpy(val_x)).argmax(1).numpy() == val_y).mean())
        facts["torch_val_accuracy_64"] = acc
        torch.save(model.state_dict(), state)
    _export(model, tuned, 64, *lite, 3)
    if SECOND:
        return
    _export(model, CACHE / "lite0_fmnist_224.onnx", 224, *lite, 3)

    task224 = load_task(
        "fashion-mnist",
        CLASSES,
        image_size=224,
        mean=TF_LITE_MEAN,
        std=TF_LITE_STD,
        seed=0,
        train_per_class=50,
        val_per_class=40,
    )
    x224, _ = _images(task224.train)
    np.save(CACHE / "calib224.npy", x224[rng.permutation(len(x224))][:128])
    v224, v224_y = _images(task224.val)
    np.save(CACHE / "val224.npy", v224)
    np.save(CACHE / "val224_labels.npy", v224_y)

    import timm

    imagenet = (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 1000)
    _export(
        load_backbone("efficientnet_lite0", pretrained=True),
        CACHE / "efficientnet_lite0_224.onnx",
        224,
        *lite,
        1000,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _export(timm.create_model("resnet18"), CACHE / "resnet18_224.onnx", 224, "resnet18", *imagenet)
        _export(
            timm.create_model("deit_small_patch16_224"),
            CACHE / "deit_small_224.onnx",
            224,
            "deit_small_patch16_224",
            *imagenet,
        )
    (CACHE / "prepare.json").write_text(json.dumps(facts, indent=2))
    print(json.dumps(facts), file=sys.stderr)


if __name__ == "__main__":
    main()
