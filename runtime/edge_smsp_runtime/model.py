"""Model file facts (size, SHA-256, opset) and onnxruntime sessions with seeded inputs."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from .errors import RuntimeToolError, one_line

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)

_NUMPY_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def import_numpy() -> Any:
    """numpy, or an error naming the pip command."""
    try:
        import numpy
    except ImportError:
        raise RuntimeToolError("numpy is not installed: pip install numpy") from None
    return numpy


def import_onnxruntime() -> Any:
    """onnxruntime with its logger limited to errors, or an error naming the pip command."""
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeToolError(
            "onnxruntime is not installed: pip install onnxruntime (onnxruntime-gpu on CUDA devices)"
        ) from None
    # Warnings on stderr would be mistaken by the host for the command's error line.
    onnxruntime.set_default_logger_severity(3)
    return onnxruntime


def check_model_path(path: str) -> None:
    """Fail early and clearly when the model file is missing."""
    if not os.path.isfile(path):
        raise RuntimeToolError(f"model file not found: {path}")


def file_sha256(path: str) -> str:
    """SHA-256 hex digest of a file, read in chunks so the model never sits in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_varint(handle: Any) -> int | None:
    result = 0
    shift = 0
    while True:
        byte = handle.read(1)
        if not byte:
            if shift == 0:
                return None
            raise ValueError("truncated varint")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _parse_opset_entry(payload: bytes) -> tuple[str, int]:
    import io

    stream = io.BytesIO(payload)
    domain = ""
    version = 0
    while True:
        key = _read_varint(stream)
        if key is None:
            return domain, version
        field, wire = key >> 3, key & 7
        if wire == 0:
            value = _read_varint(stream)
            if field == 2 and value is not None:
                version = value
        elif wire == 2:
            length = _read_varint(stream) or 0
            data = stream.read(length)
            if field == 1:
                domain = data.decode("utf-8", "replace")
        elif wire == 1:
            stream.read(8)
        elif wire == 5:
            stream.read(4)
        else:
            raise ValueError("unknown wire type")


def read_opsets(path: str) -> dict[str, Any]:
    """ir_version and opset imports from the ModelProto's top-level fields, without the onnx package.

    Only field headers are read; the graph is skipped by its length, so this costs a few reads even for big models.
    """
    facts: dict[str, Any] = {"ir_version": None, "opset": None, "opset_imports": {}}
    try:
        with open(path, "rb") as handle:
            while True:
                key = _read_varint(handle)
                if key is None:
                    break
                field, wire = key >> 3, key & 7
                if wire == 0:
                    value = _read_varint(handle)
                    if field == 1:
                        facts["ir_version"] = value
                elif wire == 2:
                    length = _read_varint(handle)
                    if length is None:
                        raise ValueError("truncated field")
                    if field == 8:
                        domain, version = _parse_opset_entry(handle.read(length))
                        facts["opset_imports"][domain or "ai.onnx"] = version
                    else:
                        handle.seek(length, os.SEEK_CUR)
                elif wire == 1:
                    handle.seek(8, os.SEEK_CUR)
                elif wire == 5:
                    handle.seek(4, os.SEEK_CUR)
                else:
                    raise ValueError("unknown wire type")
    except (ValueError, OSError):
        # Not a readable ModelProto; onnxruntime will say why when it loads the file.
        return {"ir_version": None, "opset": None, "opset_imports": {}}
    facts["opset"] = facts["opset_imports"].get("ai.onnx")
    return facts


def parse_providers(text: str | None) -> list[str]:
    """Comma-separated execution providers, in order of preference."""
    if not text:
        return list(DEFAULT_PROVIDERS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise RuntimeToolError("--providers: give at least one execution provider")
    return names


def create_session(path: str, providers: list[str], threads: int) -> tuple[Any, list[str]]:
    """An InferenceSession on the requested providers that exist here; returns it and the skipped ones."""
    ort = import_onnxruntime()
    check_model_path(path)
    known = set(ort.get_all_providers())
    unknown = [name for name in providers if name not in known]
    if unknown:
        raise RuntimeToolError(
            f"unknown execution provider {unknown[0]!r} (onnxruntime knows: {', '.join(sorted(known))})"
        )
    available = set(ort.get_available_providers())
    usable = [name for name in providers if name in available]
    skipped = [name for name in providers if name not in available]
    if not usable:
        raise RuntimeToolError(
            f"none of the requested providers is available in this onnxruntime build "
            f"(requested: {', '.join(providers)}; available: {', '.join(ort.get_available_providers())})"
        )
    options = ort.SessionOptions()
    if threads < 0:
        raise RuntimeToolError("--threads must be >= 0 (0 = onnxruntime's default)")
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(path, sess_options=options, providers=usable)
    except Exception as error:  # onnxruntime raises its own exception types for every load failure
        raise RuntimeToolError(f"cannot load model {path}: {one_line(error)}") from None
    return session, skipped


def model_metadata(session: Any) -> dict[str, str]:
    """The model's metadata_props as a plain dict."""
    return dict(session.get_modelmeta().custom_metadata_map)


def metadata_json(metadata: dict[str, str], key: str) -> Any:
    """A metadata value decoded as JSON; None when absent; an error naming the key when malformed."""
    if key not in metadata:
        return None
    try:
        return json.loads(metadata[key])
    except ValueError:
        raise RuntimeToolError(f"model metadata {key!r} is not valid JSON: {metadata[key][:60]!r}") from None


def metadata_input_size(metadata: dict[str, str]) -> tuple[int, int] | None:
    """(height, width) from the metadata's input_size: an int or [height, width]."""
    value = metadata_json(metadata, "input_size")
    if value is None:
        return None
    if isinstance(value, int) and value > 0:
        return value, value
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(side, int) and side > 0 for side in value)
    ):
        return value[0], value[1]
    raise RuntimeToolError(f"model metadata 'input_size' must be a positive int or [h, w], got {value!r}")


def describe_io(args: Any) -> list[dict[str, Any]]:
    """Name, shape (symbolic dims as names) and element type of graph inputs or outputs."""
    return [{"name": arg.name, "shape": list(arg.shape), "dtype": arg.type} for arg in args]


def resolve_shape(
    shape: list[Any], name: str, input_size: tuple[int, int] | None, batch_size: int | None = None
) -> list[int]:
    """A concrete shape: a symbolic first dim gets batch_size (default 1); image sides come from metadata.

    A fixed batch is used as it is, unless batch_size asks for another one on an image (NCHW) input.
    """
    resolved = []
    for index, dim in enumerate(shape):
        fixed = isinstance(dim, int) and dim > 0
        if index == 0 and fixed and batch_size is not None and dim != batch_size and len(shape) == 4:
            raise RuntimeToolError(
                f"input {name!r} has a fixed batch of {dim}, not {batch_size}; "
                "export the model with a dynamic batch (edge-smsp export --dynamic-batch)"
            )
        if fixed:
            resolved.append(dim)
        elif index == 0:
            resolved.append(1 if batch_size is None else batch_size)
        elif len(shape) == 4 and index == 1:
            resolved.append(3)
        elif len(shape) == 4 and index in (2, 3) and input_size is not None:
            resolved.append(input_size[index - 2])
        else:
            raise RuntimeToolError(
                f"input {name!r} has a symbolic dimension {dim!r} at position {index}; "
                "export the model with a static input size or set its 'input_size' metadata"
            )
    return resolved


def seeded_feeds(
    session: Any, seed: int, input_size: tuple[int, int] | None, batch_size: int | None = None
) -> dict[str, Any]:
    """Fixed pseudo-random inputs for every graph input (see resolve_shape), the same for a given seed."""
    np = import_numpy()
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in session.get_inputs():
        dtype = _NUMPY_DTYPES.get(arg.type)
        if dtype is None:
            raise RuntimeToolError(f"input {arg.name!r} has unsupported type {arg.type}")
        shape = resolve_shape(list(arg.shape), arg.name, input_size, batch_size)
        if dtype.startswith("float"):
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool":
            feeds[arg.name] = rng.random(shape) < 0.5
        else:
            feeds[arg.name] = rng.integers(0, 10, size=shape).astype(dtype)
    return feeds
