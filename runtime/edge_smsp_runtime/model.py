"""Model file facts (size, SHA-256, opset), opening a model on a backend, and seeded inputs."""

import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Set, Tuple

from .backends import Backend, Session, get_backend
from .device import mem_available_mib
from .errors import RuntimeToolError, one_line
from .paths import require_file
from .precision import model_precision

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


def check_model_path(path: str) -> None:
    """Fail early and clearly when the model file is missing."""
    require_file(path, "model file")


def file_sha256(path: str) -> str:
    """SHA-256 hex digest of a file, read in chunks so the model never sits in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_varint(handle: Any) -> Optional[int]:
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


def _parse_entry(payload: bytes) -> Tuple[str, int]:
    """Field 1 (a string) and field 2 (if a varint) of a small message: an opset import's domain and version,
    or a metadata entry's key."""
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


MAX_PROTOBUF_BYTES = 2**31 - 1  # protobuf's limit on one message: a bigger .onnx file cannot be a ModelProto
MAX_TOP_LEVEL_FIELDS = 100000  # a ModelProto has a few dozen (metadata included); garbage could have millions


def read_opsets(path: str) -> Dict[str, Any]:
    """ir_version and opset imports from the ModelProto's top-level fields, without the onnx package.

    Only field headers are read; the graph is skipped by its length, so this costs a few reads even for big models.
    `problem` says why the file cannot be a ModelProto (field number 0, over 2 GiB, a field past the end, too
    many fields), found in bounded work: garbage is refused at once, never scanned to its end.
    """
    facts = {"ir_version": None, "opset": None, "opset_imports": {}, "problem": None}  # type: Dict[str, Any]
    metadata_keys: Set[str] = set()
    try:
        size = os.path.getsize(path)
        if size == 0:
            facts["problem"] = "an empty file"
            return facts
        if size > MAX_PROTOBUF_BYTES:
            facts["problem"] = f"{size:,} bytes, over protobuf's 2 GiB limit on one message"
            return facts
        with open(path, "rb") as handle:
            for _ in range(MAX_TOP_LEVEL_FIELDS):
                key = _read_varint(handle)
                if key is None:
                    break
                field, wire = key >> 3, key & 7
                if field == 0:
                    raise ValueError("a field number of 0")
                if wire == 0:
                    value = _read_varint(handle)
                    if field == 1:
                        facts["ir_version"] = value
                elif wire == 2:
                    length = _read_varint(handle)
                    if length is None:
                        raise ValueError("truncated field")
                    if length > size - handle.tell():
                        raise ValueError(f"field {field} runs past the end of the file")
                    if field == 8:
                        domain, version = _parse_entry(handle.read(length))
                        facts["opset_imports"][domain or "ai.onnx"] = version
                    elif field == 14:  # metadata_props: onnxruntime keeps one of two equal keys, silently
                        name = _parse_entry(handle.read(length))[0]
                        if name in metadata_keys:
                            facts["duplicate_metadata"] = name
                        metadata_keys.add(name)
                    else:
                        handle.seek(length, os.SEEK_CUR)
                elif wire in (1, 5):
                    handle.seek(8 if wire == 1 else 4, os.SEEK_CUR)
                else:
                    raise ValueError(f"unknown wire type {wire}")
            else:
                raise ValueError(f"over {MAX_TOP_LEVEL_FIELDS:,} top-level fields")
    except (ValueError, OSError) as error:
        # Not a readable ModelProto; `problem` says why.
        return {"ir_version": None, "opset": None, "opset_imports": {}, "problem": one_line(error)}
    facts["opset"] = facts["opset_imports"].get("ai.onnx")
    return facts


def check_onnx_model(path: str) -> Dict[str, Any]:
    """The model's opset facts (read_opsets), or a one-line error when the file cannot be an ONNX model."""
    facts = read_opsets(path)
    if facts["problem"]:
        raise RuntimeToolError(
            f"cannot load model {path}: not an ONNX model ({facts['problem']}); export one with edge-smsp export"
        )
    if facts.get("duplicate_metadata") is not None:
        raise RuntimeToolError(
            f"model {path} gives metadata {facts['duplicate_metadata']!r} twice, and only one would be used: "
            "export it again"
        )
    return facts


def parse_providers(text: Optional[str]) -> List[str]:
    """Comma-separated execution providers, in order of preference."""
    if not text:
        return list(DEFAULT_PROVIDERS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise RuntimeToolError("--providers: give at least one execution provider")
    return names


def open_model(
    path: str, runtime: Optional[str], providers: List[str], threads: int, precision: Optional[str] = None
) -> Tuple[Backend, Session, List[str]]:
    """The backend, a session of the model on it, and the requested providers it skipped.

    A model stamped with a newer opset than the engine runs fails here with the export to ask for, instead of
    with the engine's own message.
    """
    backend = get_backend(runtime)
    check_model_path(path)
    opset, max_opset = check_onnx_model(path)["opset"], backend.max_opset()
    if opset is not None and max_opset is not None and opset > max_opset:
        raise RuntimeToolError(
            f"{path} is opset {opset}, newer than {backend.name} {backend.version()} runs (opset {max_opset} at "
            f"most): export it with --opset {max_opset}"
        )
    if precision is not None and precision not in backend.precisions:
        raise RuntimeToolError(
            f"unknown precision {precision!r} ({backend.name} runs {', '.join(backend.precisions)} models)"
        )
    # The model's own precision (Q/DQ nodes, float16 weights): --precision states what is expected, it converts
    # nothing; the host exports the precision it plans.
    actual = model_precision(path)
    if precision is not None and precision != actual:
        raise RuntimeToolError(
            f"{path} is an {actual} model, not {precision!r}: export it with --precision {precision}"
        )
    session, skipped = backend.create_session(path, providers, threads, actual, os.getcwd())
    return backend, session, skipped


def metadata_json(metadata: Dict[str, str], key: str) -> Any:
    """A metadata value decoded as JSON; None when absent; an error naming the key when malformed."""
    if key not in metadata:
        return None
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError):  # RecursionError: nested thousands deep
        raise RuntimeToolError(f"model metadata {key!r} is not valid JSON: {metadata[key][:60]!r}") from None


def metadata_input_size(metadata: Dict[str, str]) -> Optional[Tuple[int, int]]:
    """(height, width) from the metadata's input_size: an int or [height, width]."""
    value = metadata_json(metadata, "input_size")
    if value is None:
        return None
    if _side(value):
        return value, value
    if isinstance(value, list) and len(value) == 2 and all(_side(side) for side in value):
        return value[0], value[1]
    raise RuntimeToolError(
        f"model metadata 'input_size' must be an int from 1 to {MAX_INPUT_SIZE} or [h, w] of them, "
        f"got {repr(value)[:60]}"
    )


MAX_INPUT_SIZE = 4096  # pixels a side: the host's MAX_IMAGE_SIZE


def image_size(metadata: Dict[str, str], shape: List[Any]) -> Tuple[Tuple[int, int], Optional[str]]:
    """(height, width) to resize images to for an NCHW input of `shape`: the metadata's input_size, which must
    match the graph's fixed sides, else those sides; and a note when the metadata had none."""
    size = metadata_input_size(metadata)
    fixed = all(isinstance(side, int) and side > 0 for side in shape[2:])
    if size is None:
        if not fixed:
            raise RuntimeToolError("the model has no 'input_size' metadata and a symbolic input size")
        return (shape[2], shape[3]), "no 'input_size' metadata: used the graph's input shape"
    if fixed and tuple(size) != (shape[2], shape[3]):
        raise RuntimeToolError(
            f"model metadata 'input_size' {list(size)} differs from the graph's input {shape[2]}x{shape[3]}: "
            "correct the metadata or export the model again"
        )
    return size, None


def _side(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_INPUT_SIZE


def resolve_shape(
    shape: List[Any], name: str, input_size: Optional[Tuple[int, int]], batch_size: Optional[int] = None
) -> List[int]:
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


def _check_input_fits(name: str, shape: List[int]) -> None:
    """Refuse an input that cannot be made here before numpy tries: it is drawn as float64 (8 bytes a value)."""
    values = 1
    for side in shape:
        values *= int(side)
    available = mem_available_mib()
    needed_mib = values * 8 / 2**20
    if available is not None and needed_mib > available:
        dims = " x ".join(str(side) for side in shape)
        raise RuntimeToolError(
            f"input {name!r} of {dims} values needs {needed_mib:,.0f} MiB to make, more than the "
            f"{available:,.0f} MiB this device has available; bench a model with a smaller input"
        )


def seeded_feeds(
    session: Session, seed: int, input_size: Optional[Tuple[int, int]], batch_size: Optional[int] = None
) -> Dict[str, Any]:
    """Fixed pseudo-random inputs for every graph input (see resolve_shape), the same for a given seed."""
    np = import_numpy()
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in session.inputs():
        name = arg["name"]
        dtype = _NUMPY_DTYPES.get(arg["dtype"])
        if dtype is None:
            raise RuntimeToolError(f"input {name!r} has unsupported type {arg['dtype']}")
        shape = resolve_shape(arg["shape"], name, input_size, batch_size)
        _check_input_fits(name, shape)
        if dtype.startswith("float"):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool":
            feeds[name] = rng.random(shape) < 0.5
        else:
            feeds[name] = rng.integers(0, 10, size=shape).astype(dtype)
    return feeds
