"""Top-k classification of image files, with labels and preprocessing read from the model's metadata."""

import math
import os
from typing import Any, Dict, List, Optional, Set

from . import __version__
from .deadline import DEFAULT_RUN_TIMEOUT, RunDeadline
from .device import now_ns
from .errors import RuntimeToolError, engine_reason, one_line
from .images import load_image, preprocess
from .model import image_size, import_numpy, metadata_json, open_model
from .normalisation import normalisation_problem


def _channel_list(value: Any, key: str, channels: int) -> Optional[List[float]]:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(_finite(item) for item in value):
        raise RuntimeToolError(
            f"model metadata {key!r} must be a JSON list of finite numbers, got {one_line(repr(value))[:80]}"
        )
    if len(value) == 1:
        value = value * channels
    if len(value) != channels:
        raise RuntimeToolError(
            f"model metadata {key!r} has {len(value)} values for a {channels}-channel input"
        )
    return [float(item) for item in value]


def _finite(item: Any) -> bool:
    return isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item)


def _softmax(logits: Any) -> Any:
    np = import_numpy()
    shifted = logits - logits.max()
    exp = np.exp(shifted)
    return exp / exp.sum()


def _check_scores_output(outputs: List[Dict[str, Any]], labels: Optional[List[str]]) -> None:
    """Refuse, before any image is read, a model whose first output is not (batch, classes) class scores."""
    if not outputs:
        raise RuntimeToolError("the model has no outputs: infer needs (batch, classes) class scores")
    output = outputs[0]
    shape = output["shape"]
    if len(shape) != 2:
        raise RuntimeToolError(
            f"output {output['name']!r} has shape {shape}; infer needs (batch, classes) class scores: "
            "give a classifier"
        )
    dtype = str(output.get("dtype") or "")
    if (
        "int" in dtype or "bool" in dtype
    ):  # an ArgMax's class index: a softmax over it would be a made-up answer
        raise RuntimeToolError(
            f"output {output['name']!r} is {dtype}, not class scores: infer needs a classifier whose first output "
            "is its (batch, classes) float scores, before any ArgMax"
        )
    if labels is None and output["name"] == "features":
        # edge-smsp's feature graphs (describe and probe read them) end at the pooled features: a softmax over
        # those would invent labels.
        raise RuntimeToolError(
            "the model's output is 'features' (a feature graph, without labels), not class scores: infer needs a "
            "classifier such as a deploy's model.onnx"
        )
    classes = shape[1]
    if labels is not None and isinstance(classes, int) and classes > 0 and classes != len(labels):
        raise RuntimeToolError(
            f"output {output['name']!r} has {classes} classes but the model's metadata lists {len(labels)} labels"
        )


def run_infer(
    model_path: str,
    images: List[str],
    *,
    top_k: int = 5,
    threads: int = 0,
    providers: Optional[List[str]] = None,
    use_pillow: bool = True,
    runtime: Optional[str] = None,
    precision: Optional[str] = None,
    run_timeout: float = DEFAULT_RUN_TIMEOUT,
) -> Dict[str, Any]:
    """Classify each image (batch 1) and return its top-k labels with softmax probabilities."""
    np = import_numpy()
    if top_k < 1:
        raise RuntimeToolError("--top-k must be at least 1")
    if not images:
        raise RuntimeToolError("give at least one image")
    backend, session, _ = open_model(
        model_path, runtime, list(providers or ["CPUExecutionProvider"]), threads, precision
    )
    metadata = session.metadata()
    notes = []
    if not session.inputs():
        raise RuntimeToolError(f"{model_path} has no inputs: infer needs a model with an NCHW image input")
    model_input = session.inputs()[0]
    shape = model_input["shape"]
    if len(shape) != 4:
        raise RuntimeToolError(
            f"input {model_input['name']!r} has shape {shape}; infer expects an NCHW image input"
        )
    channels = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else 3
    size, note = image_size(metadata, shape)
    notes.extend([note] if note else [])
    mean = _channel_list(metadata_json(metadata, "mean"), "mean", channels)
    std = _channel_list(metadata_json(metadata, "std"), "std", channels)
    if mean is None or std is None:
        mean = mean or [0.0] * channels
        std = std or [1.0] * channels
        notes.append("no 'mean'/'std' metadata: pixels fed in [0, 1] without normalisation")
    problem = normalisation_problem(mean, std)
    if problem:
        raise RuntimeToolError(problem + ": correct it in the model's metadata")
    labels = metadata_json(metadata, "labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise RuntimeToolError("model metadata 'labels' must be a JSON list of strings")
    seen: Set[str] = set()
    for label in labels or []:
        if label in seen:
            raise RuntimeToolError(
                f"model metadata 'labels' names {one_line(repr(label))[:60]} more than once: each class needs its "
                "own label"
            )
        seen.add(label)
    if labels is None:
        notes.append("no 'labels' metadata: labels are class indices")
    _check_scores_output(session.outputs(), labels)

    results = []
    deadline = RunDeadline(session, run_timeout, "infer", model_path)
    try:
        for path in images:
            batch = preprocess(load_image(path, use_pillow=use_pillow), size, channels, mean, std)
            if model_input["dtype"] == "tensor(float16)":  # an fp16 export without fp32 inputs
                batch = batch.astype(np.float16)
            try:
                started = now_ns()
                outputs = deadline.run({model_input["name"]: batch}, first=not results)
                latency_ms = (now_ns() - started) / 1e6
            except RuntimeToolError:
                raise
            except Exception as error:  # the engine's own exception types
                raise RuntimeToolError(
                    f"inference failed on {path}: {engine_reason(error)}; check that the model takes this image"
                ) from None
            scores = np.asarray(outputs[0], dtype=np.float64)
            if scores.ndim != 2 or scores.shape[0] != 1:
                raise RuntimeToolError(
                    f"the model's output has shape {list(scores.shape)} on {path}; infer needs (batch, classes) "
                    "class scores: give a classifier"
                )
            logits = scores.reshape(-1)
            if not np.all(np.isfinite(logits)):  # NaN probabilities would be invalid JSON and a silent exit 0
                raise RuntimeToolError(f"the model gave NaN or infinite outputs on {path}")
            if labels is not None and len(labels) != logits.size:
                raise RuntimeToolError(
                    f"model has {logits.size} outputs but its metadata lists {len(labels)} labels"
                )
            probabilities = _softmax(logits)
            order = np.argsort(-probabilities, kind="stable")[:top_k]
            results.append(
                {
                    "image": path,
                    "top_k": [
                        {
                            "index": int(index),
                            "label": labels[index] if labels is not None else str(int(index)),
                            "probability": round(float(probabilities[index]), 6),
                        }
                        for index in order
                    ],
                    "latency_ms": round(latency_ms, 4),
                }
            )
    finally:
        deadline.close()
    return {
        "command": "infer",
        "runtime_version": __version__,
        "runtime": backend.name,
        "precision": session.precision,
        "model_path": os.path.abspath(model_path),
        "providers": session.providers(),
        "input_size": list(size),
        "mean": mean,
        "std": std,
        "notes": notes,
        "results": results,
    }
