"""On-device fine-tuning of a pruned model saved by edge-smsp, then ONNX export and benchmark (needs torch)."""

import os
import time
from typing import Any, Dict, List, Optional, Tuple

from .bench import run_bench
from .errors import RuntimeToolError
from .images import load_image, preprocess
from .model import import_numpy

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".npy")


def _import_training_stack() -> Tuple[Any, Any, Any, Any]:
    """torch, edge_smsp.prune, edge_smsp.pruned_model and edge_smsp.export, or an error naming what to install."""
    try:
        import torch
    except ImportError:
        raise RuntimeToolError("finetune needs PyTorch on the device: pip install torch") from None
    try:
        from edge_smsp.export import onnx_export as export
        from edge_smsp.models import prune, pruned_model
    except ImportError:
        raise RuntimeToolError(
            "finetune needs the edge-smsp package on the device: pip install edge-smsp "
            "(or the wheel built from the host's checkout)"
        ) from None
    return torch, prune, pruned_model, export


def read_image_folder(root: str, max_per_class: int) -> Tuple[List[str], List[Tuple[str, int]]]:
    """ImageFolder layout: one sub-directory per class, sorted by name; returns class names and (path, class)."""
    if not os.path.isdir(root):
        raise RuntimeToolError(f"image folder not found: {root}")
    classes = []
    samples = []
    for name in sorted(os.listdir(root)):
        directory = os.path.join(root, name)
        if not os.path.isdir(directory):
            continue
        files = sorted(
            os.path.join(directory, item)
            for item in os.listdir(directory)
            if item.lower().endswith(IMAGE_SUFFIXES)
        )[:max_per_class]
        if files:
            samples.extend((path, len(classes)) for path in files)
            classes.append(name)
    if len(classes) < 2:
        raise RuntimeToolError(
            f"{root}: need at least two class sub-directories with images (ImageFolder layout)"
        )
    return classes, samples


def run_finetune(
    model_dir: str,
    data_dir: str,
    *,
    iters: int,
    out_dir: Optional[str] = None,
    batch_size: int = 16,
    lr: float = 0.01,
    val_fraction: float = 0.2,
    max_per_class: int = 500,
    seed: int = 0,
    threads: int = 0,
    bench_runs: int = 50,
    providers: Optional[List[str]] = None,
    runtime: Optional[str] = None,
) -> Dict[str, Any]:
    """Fine-tune the pruned model for `iters` SGD steps on the folder's classes, export it and benchmark it."""
    if iters < 1:
        raise RuntimeToolError("--iters must be at least 1")
    if not 0.0 <= val_fraction < 1.0:
        raise RuntimeToolError("--val-fraction must be in [0, 1)")
    # Every option is checked before the training: nothing is written and then refused.
    if batch_size < 1:
        raise RuntimeToolError("--batch-size must be at least 1")
    if bench_runs < 1:
        raise RuntimeToolError("--bench-runs must be at least 1")
    out = out_dir or os.path.join(model_dir, "finetuned")
    if os.path.realpath(out) == os.path.realpath(model_dir):
        raise RuntimeToolError(
            f"--out {out} is the input model's directory: it would overwrite the input; name another directory"
        )
    torch, prune, pruned_model, export = _import_training_stack()
    from edge_smsp.export.metadata import metadata_from_pruned

    np = import_numpy()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model, meta = pruned_model.load_pruned(model_dir)
    # The same normalisation the export writes into the model's metadata, so infer preprocesses alike.
    size = int(meta["image_size"])
    reference = metadata_from_pruned(model, meta)
    mean, std = [float(v) for v in reference["mean"]], [float(v) for v in reference["std"]]
    classes, samples = read_image_folder(data_dir, max_per_class)

    arrays = [preprocess(load_image(path), (size, size), 3, mean, std)[0] for path, _ in samples]
    images = torch.from_numpy(np.stack(arrays))
    targets = torch.tensor([label for _, label in samples], dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(samples), generator=generator)
    val_count = int(len(samples) * val_fraction)
    val_index, train_index = order[:val_count], order[val_count:]
    if len(train_index) == 0:
        raise RuntimeToolError("no training images left after the validation split")

    if list(meta.get("class_names") or []) != classes:
        model = prune.replace_classifier(model, len(classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    started = time.perf_counter()
    loss_value = float("nan")
    for _ in range(iters):
        pick = train_index[
            torch.randint(len(train_index), (min(batch_size, len(train_index)),), generator=generator)
        ]
        optimizer.zero_grad()
        loss = loss_fn(model(images[pick]), targets[pick])
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
    train_seconds = time.perf_counter() - started
    model.eval()
    val_accuracy = None
    if len(val_index):
        with torch.no_grad():
            predictions = model(images[val_index]).argmax(dim=1)
        val_accuracy = float((predictions == targets[val_index]).float().mean())

    updated = dict(meta, class_names=classes, num_classes=len(classes))
    pruned_model.save_pruned(model, out, updated)
    onnx_path = os.path.join(out, "model.onnx")
    metadata = dict(
        metadata_from_pruned(model, updated),
        task=f"finetune on {os.path.basename(os.path.normpath(data_dir))}",
    )
    exported = export.export_onnx(model, onnx_path, image_size=size, metadata=metadata)
    return {
        "command": "finetune",
        "model_dir": os.path.abspath(model_dir),
        "out_dir": os.path.abspath(out),
        "onnx_path": os.path.abspath(onnx_path),
        "classes": classes,
        "train_images": int(len(train_index)),
        "val_images": int(len(val_index)),
        "iters": iters,
        "final_loss": loss_value,
        "val_accuracy": val_accuracy,
        "train_seconds": round(train_seconds, 3),
        "export_max_abs_diff": exported.max_abs_diff,
        "bench": run_bench(
            onnx_path, runs=bench_runs, min_seconds=0.0, threads=threads, providers=providers, runtime=runtime
        ),
    }
