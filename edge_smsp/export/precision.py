"""A model at the precision asked for, checked against its fp32 export: INT8 gated on accuracy, FP16 on agreement.

    export_precision(fp32.onnx, out.onnx, "int8", calibration_images=..., val_images=..., val_labels=...)

fp32 parity with torch is export_onnx's check; for the other precisions it is replaced by a comparison with the
fp32 ONNX model, both run with onnxruntime on the same held-out images:

* INT8 (edge_smsp.export.quantize.quantize_int8: static QDQ, per-channel, calibrated on the task's training
  images): top-1 agreement with fp32 and the validation accuracy of each are reported, and the *gate* passes
  when the accuracy drops by at most `max_drop_pt` points (default DEFAULT_MAX_INT8_DROP_PT).
* FP16 (convert_fp16, fp32 inputs and outputs): the gate passes when top-1 agreement is at least
  FP16_MIN_AGREEMENT (99 %), the mean logit difference is within FP16_MEAN_LOGIT_TOLERANCE (1 %) of the logits'
  scale and the largest within FP16_LOGIT_TOLERANCE (25 %) (absolute up to |logit| 1, relative beyond, as fp32
  parity is).

A model that fails its gate ships as fp32: the fp32 file is copied to `out` and the result says why. The
shipped file's card (`out` with .json) records the precision, the gate and the fp32 reference.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_smsp.core.precisions import DEFAULT_MAX_INT8_DROP_PT, FP16, FP32, INT8, PRECISIONS
from edge_smsp.export.quantize import (
    DEFAULT_CALIBRATION_IMAGES,
    QuantizationError,
    convert_fp16,
    precision_of,
    predict_logits,
    quantize_int8,
)

FP16_MIN_AGREEMENT = 0.99
# x max(1, max |fp32 logit|). Float16 error accumulates with depth: a pruned efficientnet_lite0 at 32 px differed
# by up to 0.34 on logits of ~9 (3.8 %, 600 Fashion-MNIST val images, 99.7 % top-1 agreement); a 4-layer convnet
# by 0.4 %.
FP16_LOGIT_TOLERANCE = 0.25
# x the same scale: the mean |logit difference|. One image's logits may move more than the rest (a barely trained
# Lite0 on another Xeon: max 0.40 = 8.7 % of its largest logit, mean 0.013 = 0.3 %, 99.8 % top-1 agreement), so the
# max bounds gross errors (clipped weights, overflow) and the mean the systematic drift.
FP16_MEAN_LOGIT_TOLERANCE = 1e-2
# Held-out images for FP16's agreement when the model names no task (random inputs then: said in the result).
FP16_RANDOM_IMAGES = 8


@dataclass(frozen=True)
class PrecisionGate:
    """Whether the requested precision ships, and the numbers behind the verdict (accuracies 0..1)."""

    requested: str
    shipped: str
    fp32_accuracy: float | None
    accuracy: float | None  # of the requested precision's model
    drop_pt: float | None  # fp32 accuracy - its accuracy, in points
    max_drop_pt: float | None  # INT8's threshold; None for fp16 (agreement-gated)
    top1_agreement: float
    max_abs_logit_diff: float
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PrecisionResult:
    """The shipped file (`path`), its precision, the fp32 reference it was checked against, and the gate."""

    requested: str
    precision: str  # shipped
    path: str
    fp32_path: str
    gate: PrecisionGate
    agreement: dict[
        str, Any
    ]  # top1_agreement, max/mean |logit diff|, images, inputs ("validation" | "random")
    fp32_accuracy: float | None
    accuracy: float | None  # of the requested precision's model (not the shipped one when the gate failed)
    details: dict[str, Any] = field(default_factory=dict)  # quantize_int8's / convert_fp16's report

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["gate"] = self.gate.to_dict()
        return payload


def check_max_drop(value: float) -> float:
    """The INT8 gate's threshold in accuracy points: a finite number, 0 or more."""
    value = float(value)
    if not 0.0 <= value <= 100.0:  # also NaN
        raise QuantizationError(f"max INT8 accuracy drop must be 0-100 points, got {value:g}")
    return value


def export_precision(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    precision: str,
    *,
    calibration_images: np.ndarray | None = None,
    val_images: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    max_drop_pt: float = DEFAULT_MAX_INT8_DROP_PT,
    threads: int = 1,
    quantize_options: dict[str, Any] | None = None,
    accuracy_penalty_pt: float = 0.0,
) -> PrecisionResult:
    """Write `out_path` at `precision` from the fp32 export (see the module), or the fp32 model when its gate
    fails. INT8 needs calibration images (the task's training images) and labelled val images; FP16 checks on
    the val images, or on random ones when none are given.

    accuracy_penalty_pt: a test hook, subtracted from the measured INT8 accuracy before the gate (forces a
    failure on a model that quantizes well); 0 in use."""
    if precision not in PRECISIONS:
        raise QuantizationError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    max_drop_pt = check_max_drop(max_drop_pt)
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if fp32_path.resolve() == out_path.resolve():
        raise QuantizationError(f"{out_path}: write the {precision} model beside the fp32 one, not over it")
    if precision_of(fp32_path) != FP32:
        raise QuantizationError(f"{fp32_path} is {precision_of(fp32_path)}: give the fp32 export")
    if precision == FP32:
        _copy(fp32_path, out_path)
        gate = PrecisionGate(FP32, FP32, None, None, None, None, 1.0, 0.0, True, "fp32 requested")
        return PrecisionResult(FP32, FP32, str(out_path), str(fp32_path), gate, {}, None, None)
    if precision == INT8:
        if calibration_images is None or len(calibration_images) == 0:
            raise QuantizationError(
                "int8 needs calibration images: the task's training images (give the task, or --data-dir)"
            )
        if val_images is None or val_labels is None or len(val_images) == 0:
            raise QuantizationError("int8's accuracy gate needs labelled validation images")

    with tempfile.TemporaryDirectory(prefix="edge-smsp-precision-", dir=out_path.parent) as scratch:
        candidate = Path(scratch) / out_path.name
        if precision == INT8:
            with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime's calibrators print progress
                details = quantize_int8(fp32_path, candidate, calibration_images, **(quantize_options or {}))
        else:
            details = convert_fp16(fp32_path, candidate)
        images, inputs = _held_out(fp32_path, val_images)
        reference = predict_logits(fp32_path, images, threads=threads)
        other = predict_logits(candidate, images, threads=threads)
        diff = np.abs(reference - other)
        agreement = {
            "top1_agreement": float((reference.argmax(1) == other.argmax(1)).mean()),
            "max_abs_logit_diff": float(diff.max()),
            "mean_abs_logit_diff": float(diff.mean()),
            "images": len(images),
            "inputs": inputs,
        }
        fp32_accuracy = accuracy = None
        if val_labels is not None and inputs == "validation":
            labels = np.asarray(val_labels)
            if len(labels) != len(images):
                raise QuantizationError(f"{len(images)} validation images but {len(labels)} labels")
            fp32_accuracy = float((reference.argmax(1) == labels).mean())
            accuracy = float((other.argmax(1) == labels).mean())
        if precision == INT8:
            accuracy = max(0.0, float(accuracy) - accuracy_penalty_pt / 100.0)
            gate = int8_gate(fp32_accuracy, accuracy, max_drop_pt, agreement)
        else:
            scale = max(1.0, float(np.abs(reference).max()))
            agreement["allowed_max_abs_logit_diff"] = FP16_LOGIT_TOLERANCE * scale
            agreement["allowed_mean_abs_logit_diff"] = FP16_MEAN_LOGIT_TOLERANCE * scale
            gate = fp16_gate(fp32_accuracy, accuracy, agreement, scale)
        if gate.passed:
            _readable(candidate)
            os.replace(candidate, out_path)
        else:
            _copy(fp32_path, out_path)
    return PrecisionResult(
        requested=precision,
        precision=gate.shipped,
        path=str(out_path),
        fp32_path=str(fp32_path),
        gate=gate,
        agreement=agreement,
        fp32_accuracy=fp32_accuracy,
        accuracy=accuracy,
        details=details,
    )


def int8_gate(
    fp32_accuracy: float | None, accuracy: float | None, max_drop_pt: float, agreement: dict[str, Any]
) -> PrecisionGate:
    """INT8 ships when its validation accuracy is at most max_drop_pt points below fp32's."""
    assert fp32_accuracy is not None and accuracy is not None
    drop = round(100.0 * (fp32_accuracy - accuracy), 4)
    passed = drop <= max_drop_pt
    reason = (
        f"int8 accuracy {100 * accuracy:.2f}% against fp32's {100 * fp32_accuracy:.2f}% on the val split, "
        f"a drop of {drop:.2f} pt (allowed {max_drop_pt:g} pt)"
    )
    return PrecisionGate(
        requested=INT8,
        shipped=INT8 if passed else FP32,
        fp32_accuracy=fp32_accuracy,
        accuracy=accuracy,
        drop_pt=drop,
        max_drop_pt=max_drop_pt,
        top1_agreement=agreement["top1_agreement"],
        max_abs_logit_diff=agreement["max_abs_logit_diff"],
        passed=passed,
        reason=("passed: " if passed else "failed, shipped fp32: ") + reason,
    )


def fp16_gate(
    fp32_accuracy: float | None, accuracy: float | None, agreement: dict[str, Any], scale: float
) -> PrecisionGate:
    """FP16 ships when it agrees with fp32 (FP16_MIN_AGREEMENT), its logits within FP16_LOGIT_TOLERANCE of the
    scale at most and FP16_MEAN_LOGIT_TOLERANCE on average."""
    allowed, allowed_mean = FP16_LOGIT_TOLERANCE * scale, FP16_MEAN_LOGIT_TOLERANCE * scale
    agree, diff = agreement["top1_agreement"], agreement["max_abs_logit_diff"]
    mean = agreement["mean_abs_logit_diff"]
    passed = agree >= FP16_MIN_AGREEMENT and diff <= allowed and mean <= allowed_mean
    reason = (
        f"fp16 agrees with fp32 on {100 * agree:.1f}% of {agreement['images']} {agreement['inputs']} images "
        f"(at least {100 * FP16_MIN_AGREEMENT:g}%), |logit diff| max {diff:.2e} (allowed {allowed:.1e}), mean "
        f"{mean:.2e} (allowed {allowed_mean:.1e})"
    )
    drop = None if fp32_accuracy is None or accuracy is None else round(100 * (fp32_accuracy - accuracy), 4)
    return PrecisionGate(
        requested=FP16,
        shipped=FP16 if passed else FP32,
        fp32_accuracy=fp32_accuracy,
        accuracy=accuracy,
        drop_pt=drop,
        max_drop_pt=None,
        top1_agreement=agree,
        max_abs_logit_diff=diff,
        passed=passed,
        reason=("passed: " if passed else "failed, shipped fp32: ") + reason,
    )


def write_precision_card(fp32_card: str | os.PathLike[str], result: PrecisionResult) -> tuple[Path, str, int]:
    """The shipped file's model card (out.json): the fp32 card with the precision, the gate, the agreement and
    the fp32 reference; returns (card path, the shipped file's SHA-256, its size)."""
    import hashlib

    out = Path(result.path)
    payload = out.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    card = json.loads(Path(fp32_card).read_text(encoding="utf-8"))
    fp32_reference = {
        "onnx": Path(result.fp32_path).name,
        "sha256": card.get("sha256"),
        "size_bytes": card.get("size_bytes"),
    }
    card.update(
        onnx=out.name,
        sha256=digest,
        size_bytes=len(payload),
        precision=result.precision,
        precision_requested=result.requested,
        precision_gate=result.gate.to_dict(),
        agreement=result.agreement,
        fp32_reference=fp32_reference,
    )
    if result.details:
        card["quantization" if result.requested == INT8 else "conversion"] = {
            key: value for key, value in result.details.items() if key != "path"
        }
    if isinstance(card.get("metadata"), dict):
        card["metadata"]["precision"] = result.precision
    card_path = out.with_suffix(".json")
    _write_text(card_path, json.dumps(card, indent=2) + "\n")
    return card_path, digest, len(payload)


def shipped_export(fp32_export: Any, result: PrecisionResult) -> Any:
    """The ExportResult of the shipped file (card written), from the fp32 export's: deploy uploads and checks it."""
    card_path, digest, size = write_precision_card(fp32_export.card_path, result)
    metadata = dict(fp32_export.metadata, precision=result.precision)
    return replace(
        fp32_export,
        onnx_path=Path(result.path),
        card_path=card_path,
        sha256=digest,
        size_bytes=size,
        metadata=metadata,
    )


def reference_path(out_path: str | os.PathLike[str]) -> Path:
    """Where the fp32 reference of `out` goes: model.onnx -> model.fp32.onnx (its card model.fp32.json)."""
    out = Path(out_path)
    return out.with_name(f"{out.stem}.{FP32}{out.suffix}")


def task_images(
    task: Any, calibration: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0
) -> dict[str, np.ndarray]:
    """A task's images for export_precision: a seeded, class-balanced sample of its training images to calibrate
    on, and its whole validation split (images and labels) to check on; float32 arrays, normalised as trained."""
    from edge_smsp.training.features import task_sample

    calibration_images, _ = task_sample(task, max(calibration, len(task.classes)), seed)
    val_images, val_labels = task.val.batch(list(range(len(task.val))))
    return {
        "calibration_images": calibration_images.numpy().astype(np.float32),
        "val_images": val_images.numpy().astype(np.float32),
        "val_labels": val_labels.numpy(),
    }


def _held_out(fp32_path: Path, val_images: np.ndarray | None) -> tuple[np.ndarray, str]:
    if val_images is not None and len(val_images) > 0:
        return np.ascontiguousarray(val_images, dtype=np.float32), "validation"
    import onnx

    graph = onnx.load(str(fp32_path)).graph
    dims = [d.dim_value or 1 for d in graph.input[0].type.tensor_type.shape.dim][1:]
    images = np.random.default_rng(0).standard_normal((FP16_RANDOM_IMAGES, *dims)).astype(np.float32)
    return images, "random"


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        shutil.copyfile(source, temp)
        _readable(Path(temp))
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _write_text(path: Path, text: str) -> None:
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        Path(temp).write_text(text, encoding="utf-8")
        _readable(Path(temp))
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _readable(path: Path) -> None:
    """Temporary files are created 0600: give the shipped file the permissions a plain write would (umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
