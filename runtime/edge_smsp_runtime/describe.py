"""`describe`: a task's descriptor computed where its images are, for the host's similarity step.

The descriptor is what the host's `edge_smsp.similarity.task_descriptor` computes: the class prototypes, i.e.
the mean (float64, then float16) of the raw penultimate features of the unpruned backbone per class, over a
seeded class-balanced sample of `--sample` training images (sample // classes per class). No normalisation
is applied here: the host centres the prototypes on its pool's mean prototype and compares unit rows (cosine)
when it ranks. The prototypes travel as float16 little-endian bytes in base64, the dtype the host stores
descriptors in: 10 classes x 1280 features are 25,600 bytes, 34 KiB of base64.
"""

import base64
import os
import time
from typing import Any, Dict, List, Optional

from . import __version__
from .device import peak_rss_mib
from .errors import RuntimeToolError, one_line
from .imagefolder import balanced_sample, load_images, read_task
from .infer import _channel_list
from .model import image_size, import_numpy, metadata_json, open_model
from .normalisation import normalisation_problem

DESCRIPTOR_SAMPLES = 512  # edge_smsp.similarity.task_descriptor's samples
BATCH = 64


def feature_preprocessing(session: Any, command: str) -> Dict[str, Any]:
    """Input size, channels and normalisation of a feature graph; `command` names the caller in errors."""
    model_input = session.inputs()[0]
    shape = model_input["shape"]
    if len(shape) != 4:
        raise RuntimeToolError(
            f"input {model_input['name']!r} has shape {shape}; {command} expects NCHW images"
        )
    channels = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else 3
    metadata = session.metadata()
    if "labels" in metadata:  # a classifier's outputs are class scores: prototypes of them describe nothing
        raise RuntimeToolError(
            f"the model has 'labels' metadata, so it is a classifier: {command} needs a feature graph (the "
            "backbone without its head, which deploy --device-data uploads)"
        )
    size, _ = image_size(metadata, shape)
    mean = _channel_list(metadata_json(metadata, "mean"), "mean", channels) or [0.0] * channels
    std = _channel_list(metadata_json(metadata, "std"), "std", channels) or [1.0] * channels
    problem = normalisation_problem(mean, std)
    if problem:
        raise RuntimeToolError(problem + ": correct it in the model's metadata")
    return {"input_size": list(size), "channels": channels, "mean": mean, "std": std}


def run_describe(
    model_path: str,
    data_dir: str,
    *,
    sample: int = DESCRIPTOR_SAMPLES,
    seed: int = 0,
    val_fraction: float = 0.2,
    threads: int = 0,
    providers: Optional[List[str]] = None,
) -> Dict[str, Any]:
    """Class names, per-class counts and the per-class mean features of a feature graph over the task."""
    np = import_numpy()
    started = time.perf_counter()
    _, session, _ = open_model(
        model_path, "onnxruntime", list(providers or ["CPUExecutionProvider"]), threads
    )
    # A model describe cannot use is refused before the folder is read.
    preprocessing = feature_preprocessing(session, "describe")
    names, train, _ = read_task(data_dir, val_fraction, seed)  # the training split, as adapt's
    labels = np.asarray([label for _, label in train], dtype=np.int64)
    picked = balanced_sample(labels, sample, seed)
    images, labels = load_images([train[i] for i in picked], preprocessing)
    model_input = session.inputs()[0]
    fixed = model_input["shape"][0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else BATCH
    parts = []
    for start in range(0, len(images), step):
        try:
            output = session.run({model_input["name"]: images[start : start + step]})[0]
        except Exception as error:
            raise RuntimeToolError(f"the feature graph failed: {one_line(error)}") from None
        parts.append(np.asarray(output, dtype=np.float32).reshape(len(images[start : start + step]), -1))
    features = np.concatenate(parts).astype(np.float64)
    means = np.stack([features[labels == label].mean(axis=0) for label in range(len(names))])
    prototypes = means.astype("<f2")
    return {
        "command": "describe",
        "runtime_version": __version__,
        "model_path": os.path.abspath(model_path),
        "classes": names,
        "counts": [int(np.count_nonzero(labels == label)) for label in range(len(names))],
        "feature_dim": int(features.shape[1]),
        "prototypes": {
            "dtype": "float16",
            "shape": list(prototypes.shape),
            "base64": base64.b64encode(prototypes.tobytes()).decode("ascii"),
        },
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 3),
        "peak_rss_mib": peak_rss_mib(),
    }
