"""Numeric precisions: which one a model is in (read from its graph), which ones each execution provider runs
natively, and the TensorRT/CUDA provider options that turn them on (a pure function, testable anywhere)."""

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

FP32 = "fp32"
INT8 = "int8"
FP16 = "fp16"
PRECISIONS = (FP32, INT8, FP16)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

# Provider -> the precisions its kernels run natively. Any provider *loads* every precision: onnxruntime casts
# fp16 nodes to fp32 for the CPU, and runs QDQ models as float on CUDA, which is slow and not what was asked.
PROVIDER_PRECISIONS = {
    CPU: (FP32, INT8),
    CUDA: (FP32, FP16),
    TENSORRT: (FP32, FP16, INT8),
    "DnnlExecutionProvider": (FP32, INT8),
    "OpenVINOExecutionProvider": (FP32, FP16, INT8),
    "CoreMLExecutionProvider": (FP32, FP16),
}
ENGINE_CACHE_DIR = "trt_engines"  # under the runtime's workdir (the host runs the runtime there)

_INT8_OPS = (
    b"QuantizeLinear",
    b"DequantizeLinear",
    b"ConvInteger",
    b"MatMulInteger",
    b"DynamicQuantizeLinear",
)
_FLOAT16 = 10  # onnx TensorProto.FLOAT16


def provider_precisions(providers: Sequence[str]) -> Dict[str, List[str]]:
    """The precisions each provider runs natively (fp32 alone for providers not in the table)."""
    return {name: device_precisions([name]) for name in providers}


def device_precisions(providers: Sequence[str]) -> List[str]:
    """The precisions at least one of the providers runs natively, in PRECISIONS order."""
    runs = set(p for name in providers for p in PROVIDER_PRECISIONS.get(name, (FP32,)))
    return [p for p in PRECISIONS if p in runs]


def provider_options(
    providers: Sequence[str], precision: str, workdir: Optional[str] = None
) -> List[Union[str, Tuple[str, Dict[str, str]]]]:
    """onnxruntime's providers argument: TensorRT gets the fp16/int8 flags and an engine cache under the workdir,
    CUDA its device; other providers are passed by name. Values are strings, as onnxruntime 1.10 expects."""
    result = []  # type: List[Union[str, Tuple[str, Dict[str, str]]]]
    for name in providers:
        if name == TENSORRT:
            cache = os.path.join(workdir or os.getcwd(), ENGINE_CACHE_DIR)
            result.append(
                (
                    name,
                    {
                        # int8 layers TensorRT cannot run in int8 fall back to fp16 rather than fp32.
                        "trt_fp16_enable": str(precision in (FP16, INT8)),
                        "trt_int8_enable": str(precision == INT8),
                        "trt_engine_cache_enable": "True",
                        "trt_engine_cache_path": cache,
                    },
                )
            )
        elif name == CUDA:
            result.append((name, {"device_id": "0"}))
        else:
            result.append(name)
    return result


def fallback(requested: Sequence[str], used: Sequence[str]) -> Optional[Dict[str, Any]]:
    """What the session fell back from: the requested accelerators it does not run on; None when there are none."""
    missing = [name for name in requested if name != CPU and name not in used]
    if not missing:
        return None
    return {"from": missing, "to": used[0] if used else CPU}


def model_precision(path: str) -> str:
    """'int8' for a graph with Q/DQ or integer ops, 'fp16' for one with float16 initializers, else 'fp32'.

    Read from the protobuf without the onnx package: the graph's nodes' op types and initializers' data types.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        graph = _field(memoryview(data), 7)  # ModelProto.graph
        if graph is None:
            return FP32
        fp16 = False
        for number, payload in _fields(graph):
            if number == 1:  # NodeProto
                for field, value in _fields(payload):
                    if field == 4 and (bytes(value) in _INT8_OPS or bytes(value).startswith(b"QLinear")):
                        return INT8
            elif number == 5 and not fp16:  # TensorProto initializer
                fp16 = _varint_field(payload, 2) == _FLOAT16
        return FP16 if fp16 else FP32
    except (OSError, ValueError, IndexError):
        return FP32  # not a readable ModelProto: the engine says why when it loads the file


def _varint(data: Any, position: int) -> Tuple[int, int]:
    result = 0
    shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: Any) -> Any:
    """(field number, payload) of the length-delimited fields of a message; other wire types are skipped."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        wire = key & 7
        if wire == 0:
            _, position = _varint(data, position)
        elif wire == 2:
            length, position = _varint(data, position)
            yield key >> 3, data[position : position + length]
            position += length
        elif wire == 1:
            position += 8
        elif wire == 5:
            position += 4
        else:
            raise ValueError("unknown wire type")


def _field(data: Any, number: int) -> Any:
    for field, payload in _fields(data):
        if field == number:
            return payload
    return None


def _varint_field(data: Any, number: int) -> Optional[int]:
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        wire = key & 7
        if wire == 0:
            value, position = _varint(data, position)
            if key >> 3 == number:
                return value
        elif wire == 2:
            length, position = _varint(data, position)
            position += length
        elif wire == 1:
            position += 8
        elif wire == 5:
            position += 4
        else:
            raise ValueError("unknown wire type")
    return None
