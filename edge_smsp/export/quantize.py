"""INT8 (onnxruntime static quantization, QDQ) and FP16 (onnxconverter-common) versions of an fp32 ONNX model.

Also the checks that replace fp32 parity for them: top-1 agreement with the fp32 model, accuracy, and which
precision a graph is in. Only numpy, onnx, onnxruntime and onnxconverter-common are imported, the heavy ones
when first used.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_smsp.core.errors import ExportError, error_text
from edge_smsp.core.precisions import FP16, FP32, INT8, PRECISIONS
from edge_smsp.export import fp16_range

__all__ = ["FP16", "FP32", "INT8", "PRECISIONS", "QuantizationError", "quantize_int8", "convert_fp16"]
# Name -> onnxruntime CalibrationMethod member. The default is chosen by benchmarks/research/int8_choices.py.
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
DEFAULT_METHOD = "percentile"
ENTROPY_BINS = (2048, 128)  # histogram bins, quantized bins: TensorRT's entropy calibration
DEFAULT_CALIBRATION_IMAGES = 32
# Which nodes stay in float: a policy name (or several joined by '+') or explicit node names. Measured
# (benchmarks/results/int8_choices.json): 'depthwise' loses accuracy and speed on onnxruntime 1.32, whose
# WeightBiasQuantization optimizer re-quantizes a float Conv fed by DequantizeLinear per tensor at session load.
EXCLUDE_POLICIES = ("none", "first-conv", "classifier", "depthwise")
QUANT_FORMATS = ("qdq", "qoperator")
# uint8 activations (u8s8 kernels): int8 ones made EfficientNet-Lite0 no faster than fp32 on AVX512-VNNI x86.
ACTIVATION_TYPES = ("uint8", "int8")
_INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
_PRECISION_KEY = "precision"


class QuantizationError(ExportError, ValueError):
    """A quantization or conversion request that cannot be done as asked; the message says what to change."""


def precision_of(onnx_path: str | os.PathLike[str]) -> str:
    """'int8' for quantized graphs (Q/DQ or QLinear/Integer ops), 'fp16' for float16 weights, else 'fp32'."""
    return _precision(_load(onnx_path))


def _precision(model: onnx.ModelProto) -> str:
    graphs = [model.graph, *(f for f in model.functions)]
    ops = {node.op_type for graph in graphs for node in graph.node}
    if ops & _INT8_OPS or any(op.startswith("QLinear") for op in ops):
        return INT8
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return FP16
    for node in model.graph.node:
        if node.op_type == "Cast" and any(
            a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in node.attribute
        ):
            return FP16
    return FP32


def quantize_int8(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration_images: np.ndarray,
    *,
    method: str = DEFAULT_METHOD,
    per_channel: bool = True,
    exclude_nodes: str | Sequence[str] = "none",
    quant_format: str = "qdq",
    activation_type: str = "uint8",
    reduce_range: bool = False,
    preprocess: bool = True,
    extra_options: dict[str, Any] | None = None,
    max_images: int | None = DEFAULT_CALIBRATION_IMAGES,
) -> dict[str, Any]:
    """Static INT8 quantization calibrated on the first max_images of (N, C, H, W) normalised float32 images."""
    _check_choice("calibration method", method, CALIBRATION_METHODS)
    _check_choice("quantization format", quant_format, QUANT_FORMATS)
    _check_choice("activation type", activation_type, ACTIVATION_TYPES)
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    source = _load(fp32_path)
    if _precision(source) != FP32:
        raise QuantizationError(f"{fp32_path} is already {_precision(source)}: quantize the fp32 export")
    input_name, images = _check_images(source, calibration_images)
    if max_images is not None:
        images = images[:max_images]

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edge-smsp-int8-") as scratch:
        model_in = fp32_path
        if preprocess:
            model_in = Path(scratch) / "preprocessed.onnx"
            try:
                quant_pre_process(str(fp32_path), str(model_in), skip_symbolic_shape=True)
            except (
                Exception
            ) as error:  # onnxruntime's optimizer raises its own types; fall back to the graph as is
                model_in = fp32_path
                preprocess_note = f"pre-processing skipped: {error_text(error)}"
            else:
                preprocess_note = "shape inference and onnxruntime's basic optimizations"
        else:
            preprocess_note = "off"
        graph = _load(model_in).graph
        excluded = resolve_exclusions(graph, exclude_nodes)
        options = {"ActivationSymmetric": activation_type == "int8"}
        options.update(extra_options or {})
        quantized = Path(scratch) / "quantized.onnx"
        act = QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8
        calibration = getattr(CalibrationMethod, CALIBRATION_METHODS[method])
        reader, cache = _ImageReader(input_name, images), None
        try:
            if method == "entropy":
                cache = _entropy_ranges(model_in, reader, Path(scratch), calibration)
                reader = None
            quantize_static(
                str(model_in),
                str(quantized),
                reader,
                calibration_cache_path=cache,
                quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=act,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=calibration,
                extra_options=options,
            )
        except QuantizationError:
            raise
        except Exception as error:  # onnxruntime.quantization raises bare Exception/ValueError/RuntimeError
            raise QuantizationError(
                f"onnxruntime could not quantize {fp32_path}: {error_text(error)}"
            ) from None
        model = onnx.load(str(quantized))
        _drop_unused_opsets(model)
        _stamp(model, source, INT8)
        _save_atomically(model, out_path)
    counts = _op_counts(model.graph)
    return {
        "precision": INT8,
        "path": str(out_path),
        "method": method,
        "calibration_images": int(len(images)),
        "per_channel": per_channel,
        "quant_format": quant_format,
        "activation_type": activation_type,
        "reduce_range": reduce_range,
        "preprocess": preprocess_note,
        "excluded_nodes": excluded,
        "quantize_linear_nodes": counts.get("QuantizeLinear", 0),
        "dequantize_linear_nodes": counts.get("DequantizeLinear", 0),
        "fp32_size_bytes": fp32_path.stat().st_size,
        "size_bytes": out_path.stat().st_size,
        "seconds": round(time.perf_counter() - started, 3),
    }


def convert_fp16(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    keep_io_types: bool = True,
    op_block_list: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Float16 weights and activations (onnxconverter-common), fp32 inputs and outputs unless keep_io_types=False."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise QuantizationError("fp16 needs onnxconverter-common: pip install onnxconverter-common") from None
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    source = _load(fp32_path)
    if _precision(source) != FP32:
        raise QuantizationError(f"{fp32_path} is already {_precision(source)}: convert the fp32 export")
    started = time.perf_counter()
    kwargs = {} if op_block_list is None else {"op_block_list": list(op_block_list)}
    try:
        with fp16_range.quiet():  # one warning per clipped tensor: counted below instead
            model = float16.convert_float_to_float16(
                onnx.load(str(fp32_path)), keep_io_types=keep_io_types, min_positive_val=fp16_range.MIN_POSITIVE,
                max_finite_val=fp16_range.MAX_FINITE, **kwargs,
            )  # fmt: skip
    except Exception as error:  # the converter raises bare exceptions on graphs it does not handle
        raise QuantizationError(
            f"onnxconverter-common could not convert {fp32_path}: {error_text(error)}"
        ) from None
    _stamp(model, source, FP16)
    _save_atomically(model, out_path)
    return {
        "precision": FP16,
        "path": str(out_path),
        "keep_io_types": keep_io_types,
        "input_types": [_elem_type(v) for v in model.graph.input],
        "output_types": [_elem_type(v) for v in model.graph.output],
        **fp16_range.truncated(source, model),
        "fp32_size_bytes": fp32_path.stat().st_size,
        "size_bytes": out_path.stat().st_size,
        "seconds": round(time.perf_counter() - started, 3),
    }


def predict_logits(onnx_path: str | os.PathLike[str], images: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """Logits (float64, one row per image) from an onnxruntime CPU session; inputs cast to the graph's type."""
    session = _session(onnx_path, threads)
    arg = session.get_inputs()[0]
    dtype = np.float16 if arg.type == "tensor(float16)" else np.float32
    images = np.asarray(images)
    step = 1 if isinstance(arg.shape[0], int) else 64
    rows = [
        session.run(None, {arg.name: images[i : i + step].astype(dtype)})[0].reshape(
            min(step, len(images) - i), -1
        )
        for i in range(0, len(images), step)
    ]
    return np.concatenate(rows).astype(np.float64)


def agreement(
    fp32_path: str | os.PathLike[str],
    other_path: str | os.PathLike[str],
    images: np.ndarray,
    *,
    threads: int = 1,
) -> dict[str, float]:
    """Top-1 agreement of another precision's model with the fp32 one on held-out images, and the logit gap."""
    if len(images) == 0:
        raise QuantizationError("agreement needs at least one held-out image")
    reference = predict_logits(fp32_path, images, threads=threads)
    other = predict_logits(other_path, images, threads=threads)
    diff = np.abs(reference - other)
    return {
        "top1_agreement": float((reference.argmax(1) == other.argmax(1)).mean()),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "images": int(len(images)),
    }


def accuracy(
    onnx_path: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray, *, threads: int = 1
) -> float:
    """Top-1 accuracy (0..1) of an ONNX classifier on labelled images, measured with onnxruntime."""
    labels = np.asarray(labels)
    if len(images) == 0 or len(images) != len(labels):
        raise QuantizationError(
            f"accuracy needs as many labels as images (got {len(images)} and {len(labels)})"
        )
    return float((predict_logits(onnx_path, images, threads=threads).argmax(1) == labels).mean())


def resolve_exclusions(graph: onnx.GraphProto, exclude: str | Sequence[str]) -> list[str]:
    """Node names to keep in float: a policy ('none', 'first-conv', 'classifier', 'depthwise', or 'a+b'), or names."""
    names = [node.name for node in graph.node]
    if isinstance(exclude, str):
        chosen: list[str] = []
        for policy in exclude.split("+"):
            _check_choice("exclusion policy", policy, EXCLUDE_POLICIES)
            chosen += [name for name in _policy_nodes(graph, policy) if name not in chosen]
        return chosen
    missing = [name for name in exclude if name not in set(names)]
    if missing:
        raise QuantizationError(
            f"node {missing[0]!r} to keep in float is not in the graph (give names of its nodes, or a policy: "
            f"{', '.join(EXCLUDE_POLICIES)})"
        )
    return list(exclude)


def _policy_nodes(graph: onnx.GraphProto, policy: str) -> list[str]:
    convs = [node for node in graph.node if node.op_type == "Conv"]
    if policy == "first-conv":
        return [convs[0].name] if convs else []
    if policy == "classifier":
        heads = [node for node in graph.node if node.op_type in ("Gemm", "MatMul")]
        return [heads[-1].name] if heads else []
    if policy == "depthwise":
        shapes = {t.name: list(t.dims) for t in graph.initializer}
        depthwise = []
        for node in convs:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
            if group > 1 and weight is not None and len(weight) > 1 and weight[1] == 1:
                depthwise.append(node.name)
        return depthwise
    return []


def _entropy_ranges(model: Path, reader: _ImageReader, scratch: Path, method: Any) -> str:
    """Entropy (KL) ranges with TensorRT's 2048 histogram bins, written to a calibration cache for quantize_static.

    quantize_static builds its entropy calibrator with 128 bins for 128 quantized levels: one candidate threshold,
    the full range, so its 'entropy' is MinMax in disguise (measured: identical models).
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    num_bins, num_quantized_bins = ENTROPY_BINS
    calibrator = create_calibrator(
        model,
        sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        augmented_model_path=str(scratch / "augmented.onnx"),
        calibrate_method=method,
        extra_options={"num_bins": num_bins, "num_quantized_bins": num_quantized_bins},
    )
    calibrator.collect_data(reader)
    cache = scratch / "entropy_ranges.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return str(cache)


class _ImageReader:
    """onnxruntime CalibrationDataReader over an image array, one image per run (exports have batch 1)."""

    def __init__(self, input_name: str, images: np.ndarray) -> None:
        self._name, self._images, self._next = input_name, images, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._images):
            return None
        self._next += 1
        return {self._name: self._images[self._next - 1 : self._next]}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self._images)


def _check_images(model: onnx.ModelProto, images: Any) -> tuple[str, np.ndarray]:
    inputs = [v for v in model.graph.input if v.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise QuantizationError(
            f"INT8 calibration supports one-input image models; this one has {len(inputs)}"
        )
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if images is None or len(images) == 0:
        raise QuantizationError(
            "INT8 needs calibration images: give at least one of the task's training images (none were given)"
        )
    images = np.asarray(images)
    if (
        images.ndim != 4
        or images.dtype.kind != "f"
        or any(
            want is not None and want != got for want, got in zip(dims[1:], images.shape[1:], strict=False)
        )
    ):
        raise QuantizationError(
            f"calibration images must be a float (N, C, H, W) array matching the model input {dims[1:]}, "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    if not np.isfinite(images).all():
        raise QuantizationError("calibration images contain NaN or infinity")
    return inputs[0].name, np.ascontiguousarray(images, dtype=np.float32)


def _check_choice(what: str, value: Any, choices: Any) -> None:
    if value not in choices:
        raise QuantizationError(f"unknown {what} {value!r} (choose from {', '.join(choices)})")


def _load(path: str | os.PathLike[str]) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise QuantizationError(f"model file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError and friends
        raise QuantizationError(f"{path} is not a readable ONNX model: {error_text(error)}") from None


def _drop_unused_opsets(model: onnx.ModelProto) -> None:
    """Keep the opset imports the nodes use: onnxruntime's pre-processing adds every domain it knows, at versions
    an older onnxruntime refuses to load (measured: 1.10 refuses ai.onnx.ml 5)."""
    used = {""} | {node.domain for node in model.graph.node}
    kept = [entry for entry in model.opset_import if entry.domain in used or entry.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _stamp(model: onnx.ModelProto, source: onnx.ModelProto, precision: str) -> None:
    """The fp32 model's metadata_props, with 'precision' set."""
    props = {p.key: p.value for p in source.metadata_props}
    props[_PRECISION_KEY] = precision
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)


def _save_atomically(model: onnx.ModelProto, out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(handle)
    try:
        onnx.save(model, temp)
        os.replace(temp, out_path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _session(path: str | os.PathLike[str], threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own load failures
        raise QuantizationError(f"onnxruntime cannot load {path}: {error_text(error)}") from None


def _op_counts(graph: onnx.GraphProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _elem_type(value: onnx.ValueInfoProto) -> str:
    return onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type).lower()
