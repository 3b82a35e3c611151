"""The metadata an exported ONNX file carries (metadata_props: labels, input size, normalisation, backbone,
ratio, task, version): built and checked from user values, decoded back, derived from a saved pruned model."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from edge_smsp.core.documents import DocumentError, load_json
from edge_smsp.core.errors import ExportError
from edge_smsp.core.ratio import checked_ratio
from edge_smsp.core.version import __version__
from edge_smsp.data.catalog import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

METADATA_KEYS = ("labels", "input_size", "mean", "std", "backbone", "ratio", "task", "edge_smsp_version")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_metadata(
    metadata: Mapping[str, Any], *, image_size: int, num_classes: int | None = None
) -> dict[str, str]:
    """The ONNX metadata_props (exactly METADATA_KEYS, string values) from user metadata."""
    unknown = sorted(set(metadata) - set(METADATA_KEYS))
    if unknown:
        raise ExportError(
            f"metadata: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(METADATA_KEYS)})"
        )
    for key in ("labels", "mean", "std", "backbone"):
        if metadata.get(key) is None:
            raise ExportError(f"metadata.{key}: required")
    labels = metadata["labels"]
    if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
        raise ExportError("metadata.labels: must be a non-empty list of class names")
    labels = [str(label) for label in labels]
    if num_classes is not None and len(labels) != num_classes:
        raise ExportError(f"metadata.labels: {len(labels)} names for a model with {num_classes} outputs")
    repeated = next((label for label, count in Counter(labels).items() if count > 1), None)
    if repeated is not None:  # the device's runtime refuses such a model: refused here, before it ships
        raise ExportError(
            f"metadata.labels: {repeated[:60]!r} names more than one class; give each its own name"
        )
    given_size = metadata.get("input_size")
    if given_size is not None and int(given_size) != image_size:
        raise ExportError(f"metadata.input_size: {given_size} differs from image_size {image_size}")
    ratio = metadata.get("ratio")
    ratio = 0.0 if ratio is None else checked_ratio(ratio, error=ExportError, what="metadata.ratio:")
    task = metadata.get("task")
    task = "" if task is None else task if isinstance(task, str) else json.dumps(task, sort_keys=True)
    return {
        "labels": json.dumps(labels),
        "input_size": str(image_size),
        "mean": json.dumps(_three_numbers(metadata["mean"], "mean")),
        "std": json.dumps(_three_numbers(metadata["std"], "std", positive=True)),
        "backbone": str(metadata["backbone"]),
        "ratio": repr(ratio),
        "task": task,
        "edge_smsp_version": __version__,
    }


def decode_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """metadata_props strings back to values: labels/mean/std lists, input_size int, ratio float."""
    decoded: dict[str, Any] = dict(metadata)
    try:
        for key in ("labels", "mean", "std"):
            if key in decoded:
                decoded[key] = load_json(decoded[key], max_bytes=1 << 20)  # bounded, no NaN, no duplicates
        if "input_size" in decoded:
            decoded["input_size"] = int(decoded["input_size"])
            if not MIN_IMAGE_SIZE <= decoded["input_size"] <= MAX_IMAGE_SIZE:
                raise ValueError(f"input_size {decoded['input_size']} is out of range")
        if "ratio" in decoded:
            decoded["ratio"] = float(decoded["ratio"])
            if not 0.0 <= decoded["ratio"] < 1.0:  # also NaN
                raise ValueError(f"ratio {decoded['ratio']} is not in [0, 1)")
    except (ValueError, TypeError, DocumentError) as error:
        raise ExportError(f"malformed edge-smsp metadata: {error}") from None
    return decoded


def metadata_from_pruned(model: nn.Module, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Export metadata from a saved pruned model's description (edge_smsp.models.pruned_model.load_pruned)."""
    spec = getattr(model, "backbone_spec", None)
    spec_fields = meta.get("backbone_spec") if isinstance(meta.get("backbone_spec"), Mapping) else {}
    config = getattr(model, "pretrained_cfg", None) or {}
    num_classes = meta.get("num_classes")
    labels = meta.get("class_names") or meta.get("labels")
    if not labels and num_classes:
        labels = [str(index) for index in range(int(num_classes))]
    mean = meta.get("mean") or spec_fields.get("mean") or getattr(spec, "mean", None) or config.get("mean")
    std = meta.get("std") or spec_fields.get("std") or getattr(spec, "std", None) or config.get("std")
    task = meta.get("task") or meta.get("task_id") or ""
    return {
        "labels": labels,
        "mean": mean or IMAGENET_MEAN,
        "std": std or IMAGENET_STD,
        "backbone": meta.get("backbone") or getattr(spec, "name", None) or type(model).__name__,
        "ratio": meta.get("ratio") or 0.0,
        "task": task,
    }


def _three_numbers(value: Any, key: str, *, positive: bool = False) -> list[float]:
    try:
        numbers = [float(number) for number in value]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 3 or not all(math.isfinite(number) for number in numbers):
        raise ExportError(f"metadata.{key}: must be 3 numbers (one per RGB channel), got {value!r}")
    if positive and min(numbers) <= 0:
        raise ExportError(f"metadata.{key}: must be positive, got {value!r}")
    return numbers
