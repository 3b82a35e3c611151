"""`scan` and `probe`: the device's side of the host's pool search when the task's images stay on the device.

- `scan --data DIR`: the task's class names and per-split image counts, every image decoded once to prove it
  readable (one-line errors name the file); nothing image-sized is returned.
- `probe --models A.onnx B.onnx ... --data DIR`: for each candidate pool entry's feature graph (images ->
  penultimate features), the two-fold accuracy of a cosine nearest-class-mean classifier over a seeded,
  class-balanced sample of the training split: the host's `edge_smsp.transfer.entry_probe`, computed here.
  Only one number per candidate goes back.
"""

import os
import time
from typing import Any, Dict, List, Optional

from . import __version__
from .describe import BATCH, feature_preprocessing
from .device import peak_rss_mib
from .errors import RuntimeToolError, one_line
from .imagefolder import balanced_sample, load_images, read_task
from .images import load_image
from .model import file_sha256, import_numpy, open_model
from .paths import require_file

PROBE_SAMPLES = 512  # edge_smsp.transfer.entry_probe.probe_entries' samples
MAX_PROBE_MODELS = 256  # each candidate costs a model load and a forward pass over the sample: bound the work


def run_scan(data_dir: str, *, seed: int = 0, val_fraction: float = 0.2) -> Dict[str, Any]:
    """Class names and per-class image counts of both splits; every image is decoded once."""
    started = time.perf_counter()
    names, train, val = read_task(data_dir, val_fraction, seed)
    for path, _ in train + val:
        try:
            load_image(path)
        except RuntimeToolError:
            raise
        except Exception as error:  # a decoder's own error on a corrupt file: name the file
            raise RuntimeToolError(f"cannot read image {path}: {type(error).__name__}: {error}") from None
    return {
        "command": "scan",
        "runtime_version": __version__,
        "data": os.path.abspath(data_dir),
        "classes": names,
        "train_counts": [sum(1 for _, label in train if label == index) for index in range(len(names))],
        "val_counts": [sum(1 for _, label in val if label == index) for index in range(len(names))],
        "seconds": round(time.perf_counter() - started, 3),
    }


def features(session: Any, images: Any) -> Any:
    """The feature graph's outputs for every image, [N, F] float64."""
    np = import_numpy()
    model_input = session.inputs()[0]
    fixed = model_input["shape"][0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else BATCH
    parts = []
    for start in range(0, len(images), step):
        chunk = images[start : start + step]
        try:
            output = session.run({model_input["name"]: chunk})[0]
        except Exception as error:
            raise RuntimeToolError(f"the feature graph failed: {one_line(error)}") from None
        parts.append(np.asarray(output, dtype=np.float64).reshape(len(chunk), -1))
    return np.concatenate(parts)


def nearest_mean_accuracy(values: Any, labels: Any, num_classes: int) -> float:
    """Two-fold accuracy of a cosine nearest-class-mean classifier: each class's samples alternate between the
    folds; means from one fold classify the other (edge_smsp.transfer.entry_probe.nearest_mean_accuracy)."""
    np = import_numpy()
    counts = np.bincount(labels, minlength=num_classes)
    if (counts < 2).any():
        raise RuntimeToolError(
            f"the probe needs two training images of every class, got {counts.tolist()}: add images to the "
            "folder, or probe no candidates (--probe 1 on the host)"
        )
    unit = values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
    fold = np.zeros(len(labels), dtype=bool)
    for label in range(num_classes):
        fold[np.flatnonzero(labels == label)[1::2]] = True
    correct = 0
    for held_out in (fold, ~fold):
        means = np.zeros((num_classes, unit.shape[1]))
        np.add.at(means, labels[~held_out], unit[~held_out])
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        correct += int(((unit[held_out] @ means.T).argmax(axis=1) == labels[held_out]).sum())
    return correct / float(len(labels))


def run_probe(
    model_paths: List[str],
    data_dir: str,
    *,
    sample: int = PROBE_SAMPLES,
    seed: int = 0,
    val_fraction: float = 0.2,
    threads: int = 0,
    providers: Optional[List[str]] = None,
) -> Dict[str, Any]:
    """Each feature graph's nearest-mean accuracy on the task's training sample, in the order given."""
    np = import_numpy()
    started = time.perf_counter()
    if len(model_paths) > MAX_PROBE_MODELS:
        raise RuntimeToolError(
            f"probe was given {len(model_paths)} models; it takes at most {MAX_PROBE_MODELS}: probe them in turns"
        )
    repeated = sorted({path for path in model_paths if model_paths.count(path) > 1})
    if repeated:
        raise RuntimeToolError(f"probe was given {repeated[0]} more than once: name each model once")
    for path in model_paths:
        require_file(path, "model")
    names, train, _ = read_task(data_dir, val_fraction, seed)
    labels = np.asarray([label for _, label in train], dtype=np.int64)
    picked = balanced_sample(labels, sample, seed)
    images, preprocessing, scores = None, None, []
    for path in model_paths:
        _, session, _ = open_model(path, "onnxruntime", list(providers or ["CPUExecutionProvider"]), threads)
        if not session.inputs():
            raise RuntimeToolError(f"{path} has no inputs: probe needs feature graphs that take images")
        wanted = feature_preprocessing(session, "probe")
        if images is None:
            images, labels = load_images([train[i] for i in picked], wanted)
            preprocessing = wanted
        elif wanted != preprocessing:
            raise RuntimeToolError(f"{path}: its preprocessing differs from the first candidate's")
        accuracy = nearest_mean_accuracy(features(session, images), labels, len(names))
        scores.append({"model_sha256": file_sha256(path), "nearest_mean_accuracy": round(accuracy, 6)})
        del session
    return {
        "command": "probe",
        "runtime_version": __version__,
        "classes": names,
        "sample": int(len(picked)),
        "scores": scores,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 3),
        "peak_rss_mib": peak_rss_mib(),
    }
