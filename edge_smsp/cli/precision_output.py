"""The precision parts of export and deploy on the command line: --max-int8-drop, the task's images for INT8,
and the summaries' precision lines."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_smsp.cli.converters import number_in_range
from edge_smsp.core.errors import DataError, ExportError
from edge_smsp.core.precisions import DEFAULT_MAX_INT8_DROP_PT, FP16, FP32


def add_max_int8_drop_argument(parser: argparse.ArgumentParser) -> None:
    """--max-int8-drop: the INT8 accuracy gate, on export and deploy."""
    parser.add_argument(
        "--max-int8-drop",
        type=number_in_range(0.0, 100.0),
        default=None,
        metavar="PT",
        help="ship INT8 only if its val accuracy (onnxruntime) is at most PT points below fp32's, else fp32 "
        f"(default {DEFAULT_MAX_INT8_DROP_PT:g})",
    )


def max_int8_drop(args: argparse.Namespace) -> float:
    """--max-int8-drop's points (the default when not given); ExportError when given with a precision that
    ships no INT8 model, where it would be ignored."""
    if args.max_int8_drop is None:
        return DEFAULT_MAX_INT8_DROP_PT
    if args.precision in (FP32, FP16):
        raise ExportError(f"--max-int8-drop gates INT8 models, not --precision {args.precision}: drop it")
    return args.max_int8_drop


def export_task_images(
    model_dir: Path, meta: dict[str, Any], data_dir: str | None, *, required: bool
) -> dict[str, Any] | None:
    """The saved model's task images (pruned.json names dataset, classes, mean, std): calibration and val."""
    from edge_smsp.data.catalog import check_classes, known_class_count
    from edge_smsp.data.tasks import load_task
    from edge_smsp.export.precision import task_images

    dataset, classes = meta.get("dataset"), meta.get("classes")
    if not dataset or not classes:
        if not required:
            return None
        raise ExportError(
            f"int8 needs calibration images: {model_dir / 'pruned.json'} names no dataset and classes (a model "
            "saved by adapt or deploy does); export --precision fp32 or fp16"
        )
    try:  # the dataset and ids come from the user's file, not from --dataset or --classes: named as its problem
        count = known_class_count(str(dataset))
        if count is not None:
            check_classes(classes, count, str(dataset))
    except DataError as error:
        raise ExportError(f"{model_dir / 'pruned.json'} names its task wrongly: {error}") from None
    task = load_task(
        str(dataset),
        [int(c) for c in classes],
        data_dir=data_dir,
        image_size=int(meta["image_size"]),
        mean=meta.get("mean") or (meta.get("backbone_spec") or {}).get("mean"),
        std=meta.get("std") or (meta.get("backbone_spec") or {}).get("std"),
    )
    return task_images(task)


def export_payload(result: Any, checked: Any, fp32: Any) -> dict[str, Any]:
    """`export --json`'s object: the shipped file, and for int8 or fp16 the check and the fp32 reference."""
    payload = result.to_dict()
    payload["precision"] = FP32 if checked is None else checked.precision
    if checked is not None:
        payload.update(
            precision_requested=checked.requested,
            precision_gate=checked.gate.to_dict(),
            fp32_accuracy=checked.fp32_accuracy,
            accuracy=checked.accuracy,
            agreement=checked.agreement,
            fp32_onnx_path=str(fp32.onnx_path),
            **truncation(checked.details),
        )
    return payload


def describe_precision_export(result: Any, checked: Any, fp32: Any) -> str:
    """Two lines: the shipped file and the gate's verdict."""
    gate, agreement = checked.gate, checked.agreement
    accuracy = (
        f", val accuracy fp32 {100 * checked.fp32_accuracy:.2f}% -> {100 * checked.accuracy:.2f}%"
        if checked.accuracy is not None and checked.fp32_accuracy is not None
        else ""
    )
    clipped = truncation(checked.details)
    note = (
        f"\n  {clipped['truncated_values']:,} weights in {clipped['truncated_tensors']} tensors were outside "
        "float16's range and truncated to it"
        if clipped.get("truncated_values")
        else ""
    )
    return (
        f"exported {result.onnx_path} in {checked.precision} ({result.size_bytes / 1024**2:.2f} MiB; fp32 "
        f"{fp32.size_bytes / 1024**2:.2f} MiB at {fp32.onnx_path}) and card {result.card_path}\n"
        f"  {checked.requested} check: top-1 agreement {100 * agreement['top1_agreement']:.1f}% on "
        f"{agreement['images']} {agreement['inputs']} images{accuracy}; gate {gate.reason}{note}"
    )


def truncation(details: dict[str, Any]) -> dict[str, int]:
    """The fp16 conversion's count of weights truncated to float16's range (none for other precisions)."""
    return {key: details[key] for key in ("truncated_values", "truncated_tensors") if key in details}


def describe_precision(report: dict[str, Any]) -> str:
    """The shipped precision, how it was chosen, and the accuracy gate's verdict."""
    text = report.get("precision", FP32)
    requested = report.get("precision_requested", FP32)
    if requested == "auto":
        text += f" (planned with the ratio from {len((report.get('precision_plan') or {}).get('candidates', []))} candidates)"
    elif requested != text:
        text += f" ({requested} requested)"
    gate = report.get("precision_gate")
    if gate:
        text += f"; {gate['reason']}"
    return text
