"""An adaptable bundle: the model the device trains with numpy and writes back as one ONNX file, without onnx.

A bundle is a directory made on the host (`edge_smsp.export.adaptable.bundle_from_onnx`):

- `model.onnx`: the whole model, BatchNormalization nodes not folded, fp32, every initializer stored as
  raw_data; onnxruntime loads it as it is.
- `params.npz`: every initializer, keyed `p0`, `p1`, ... (graph.json's `params[name]["key"]`).
- `graph.json`, an object with the keys
  - `format` ("edge-smsp-adaptable-bundle"), `version` (1), `model_sha256`, `model_bytes`: model.onnx's;
  - `opset`; `input` / `output`: {`name`, `shape`} (None for a symbolic dimension);
  - `labels`: the classifier's class names (the host exports the classifier with the task's class count);
  - `preprocessing`: {`input_size`: [h, w], `channels`, `mean`, `std`}, as edge-smsp's metadata says;
  - `nodes`: [{`op`, `name`, `inputs`, `outputs`, `attrs`}] in topological order (ONNX op types and
    attributes; Constant nodes and Identity nodes of initializers are already turned into initializers);
  - `params`: {name: {`key`, `shape`, `dtype`}} for every initializer;
  - `writeback`: {name: {`offset`, `nbytes`, `shape`}}: where each float32 initializer that the device may
    change (weights, biases, BN scales, shifts and running statistics) lies in model.onnx's bytes;
  - `classifier`: {`node`, `weight`, `bias`, `trans_b`, `features`, `num_classes`}: the final Gemm;
  - `cuts`: [{`tensor`, `parameters`, `nodes`}], last first: cut tensors at block boundaries; training after
    `cuts[k]` trains every parameterised node after it (k = 0: the classifier alone; the last: everything);
  - `metadata`: model.onnx's metadata_props.

The adapted model is model.onnx's bytes with each changed initializer's byte range overwritten by its new
float32 little-endian values (same shape, so the same length), and the top-level `labels` metadata entry
replaced when the device's classes are named otherwise (top-level fields of a protobuf message may come in any
order; the graph's bytes, and so the offsets, stay as they are).
"""

import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from typing import Any, Dict, List, Optional, Tuple

from .bundle_checks import (
    archive_headers_problem,
    declared_params_problem,
    params_problem,
    run_problem,
    shape_text,
    shown,
    spec_problem,
)
from .errors import RuntimeToolError, one_line
from .graph import Graph
from .model import import_numpy

BUNDLE_FORMAT = "edge-smsp-adaptable-bundle"
BUNDLE_VERSION = 1
_METADATA_FIELD = 14  # ModelProto.metadata_props (StringStringEntryProto: key = 1, value = 2)


class Bundle:
    """graph.json's spec, the parameters (float32 arrays, changed in place) and model.onnx's bytes."""

    def __init__(self, directory: str, spec: Dict[str, Any], params: Dict[str, Any], model_bytes: bytes):
        self.directory = directory
        self.spec = spec
        self.params = params
        self.model_bytes = model_bytes
        self.graph = Graph(spec["nodes"], params, spec["input"]["name"], spec["output"]["name"])

    @property
    def labels(self) -> List[str]:
        return list(self.spec["labels"])

    @property
    def cuts(self) -> List[str]:
        return [entry["tensor"] for entry in self.spec["cuts"]]


def bundle_dir(model_path: str) -> str:
    """The bundle directory of `--model`: the directory itself, or the one holding model.onnx."""
    return model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))


def _short_int(text: str) -> int:
    """A JSON integer of a spec: shapes and counts, never hundreds of digits (Python's own refusal at 4300 digits
    advises raising a limit)."""
    if len(text.lstrip("-")) > 30:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits, larger than any shape or count")
    return int(text)


def load_bundle(model_path: str) -> Bundle:
    """The bundle of `--model BUNDLE/model.onnx` (or the directory); one-line errors for what is wrong."""
    np = import_numpy()
    directory = bundle_dir(model_path)
    paths = {name: os.path.join(directory, name) for name in ("model.onnx", "graph.json", "params.npz")}
    if not os.path.exists(model_path):
        raise RuntimeToolError(f"model not found: {model_path}")
    missing = [name for name, path in paths.items() if not os.path.isfile(path)]
    if missing:
        raise RuntimeToolError(
            f"{directory} is not an adaptable bundle (missing {', '.join(missing)}); make one on the host with "
            "edge_smsp.export.adaptable.bundle_from_onnx"
        )
    try:
        with open(paths["graph.json"]) as handle:
            spec = json.load(handle, parse_int=_short_int)
    except RecursionError:
        raise RuntimeToolError(
            f"cannot read {paths['graph.json']}: nested too deeply to be a bundle's spec; export the bundle again "
            "on the host"
        ) from None
    except (OSError, ValueError) as error:
        raise RuntimeToolError(f"cannot read {paths['graph.json']}: {one_line(error)}") from None
    if (
        not isinstance(spec, dict)
        or spec.get("format") != BUNDLE_FORMAT
        or spec.get("version") != BUNDLE_VERSION
    ):
        raise RuntimeToolError(f"{paths['graph.json']}: not a version {BUNDLE_VERSION} {BUNDLE_FORMAT} spec")
    problem = spec_problem(spec)
    if problem:
        raise RuntimeToolError(f"{paths['graph.json']}: {problem}; export the bundle again on the host")
    with open(paths["model.onnx"], "rb") as handle:
        model_bytes = handle.read()
    if hashlib.sha256(model_bytes).hexdigest() != spec.get("model_sha256"):
        raise RuntimeToolError(f"{paths['model.onnx']} does not match its graph.json (SHA-256 differs)")
    try:
        problem = declared_params_problem(spec, len(model_bytes)) or archive_headers_problem(
            paths["params.npz"], spec
        )
        if problem:
            raise RuntimeToolError(f"{paths['params.npz']}: {problem}; export the bundle again on the host")
        with np.load(paths["params.npz"], allow_pickle=False) as archive:
            params = {name: np.array(archive[entry["key"]]) for name, entry in spec["params"].items()}
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:  # cut short in a copy, or damaged
        raise RuntimeToolError(
            f"{paths['params.npz']} is truncated or corrupt ({one_line(error)}): upload the bundle again (a "
            "deploy --device-data does) or export it again on the host"
        ) from None
    except (OSError, ValueError, KeyError) as error:
        raise RuntimeToolError(f"cannot read {paths['params.npz']}: {one_line(error)}") from None
    # The host's weights are finite: a NaN here would spread to every logit.
    for name, array in params.items():
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise RuntimeToolError(
                f"{paths['params.npz']}: parameter {name!r} holds {bad} NaN or infinite value(s) of "
                f"{array.size}; export the bundle again on the host from a model with finite weights"
            )
    problem = params_problem(spec, params)
    if problem:
        raise RuntimeToolError(f"{paths['graph.json']}: {problem}; export the bundle again on the host")
    for name, entry in spec["writeback"].items():
        array = params[name]
        if (
            array.dtype != np.float32
            or array.nbytes != entry["nbytes"]
            or list(array.shape) != entry["shape"]
        ):
            raise RuntimeToolError(
                f"{paths['graph.json']}: writeback {name!r} is {shown(entry.get('shape'))}, {entry['nbytes']} "
                f"bytes of float32, but params.npz holds {shape_text(array.shape)} {array.dtype} "
                f"({array.nbytes} bytes); export the bundle again on the host"
            )
        start = entry["offset"]
        if model_bytes[start : start + entry["nbytes"]] != array.astype("<f4").tobytes():
            raise RuntimeToolError(f"{paths['model.onnx']}: {name!r} is not at its writeback offset")
    try:
        bundle = Bundle(directory, spec, params, model_bytes)
        problem = run_problem(bundle)
    except RuntimeToolError as error:
        problem = one_line(error)
    if problem:
        raise RuntimeToolError(f"{paths['graph.json']}: {problem}; export the bundle again on the host")
    return bundle


def adapted_bytes(bundle: Bundle, labels: Optional[List[str]] = None) -> bytes:
    """model.onnx's bytes with every writable initializer's current values, and `labels` in the metadata."""
    np = import_numpy()
    data = bytearray(bundle.model_bytes)
    for name, entry in bundle.spec["writeback"].items():
        array = bundle.params[name]
        raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
        if len(raw) != entry["nbytes"] or list(array.shape) != entry["shape"]:
            raise RuntimeToolError(f"parameter {name!r} changed shape: it cannot be written back")
        data[entry["offset"] : entry["offset"] + entry["nbytes"]] = raw
    if labels is not None and list(labels) != bundle.labels:
        data = _replace_metadata(bytes(data), "labels", json.dumps([str(label) for label in labels]))
    return bytes(data)


def write_atomically(path: str, data: bytes) -> str:
    """Write `data` to a temporary file beside `path`; returns the temporary path (rename it to commit)."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".adapt-", suffix=".onnx.tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp makes it 0600: an adapted model is an ordinary file that an app running as another user loads
        os.chmod(temporary, 0o666 & ~_umask())
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


# -- protobuf, top level only -------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, position: int) -> Tuple[int, int]:
    result, shift = 0, 0
    while True:
        if position >= len(data) or shift > 63:
            raise RuntimeToolError("malformed model.onnx: a truncated field")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _top_level_fields(data: bytes) -> List[Any]:
    """(field number, wire type, raw bytes of the whole field, payload if length-delimited) of a message."""
    fields = []
    position = 0
    while position < len(data):
        start = position
        key, position = _read_varint(data, position)
        field, wire = key >> 3, key & 7
        payload = None
        if wire == 0:
            _, position = _read_varint(data, position)
        elif wire == 1:
            position += 8
        elif wire == 5:
            position += 4
        elif wire == 2:
            length, position = _read_varint(data, position)
            payload = data[position : position + length]
            position += length
        else:
            raise RuntimeToolError("malformed model.onnx: an unknown wire type")
        if position > len(data):
            raise RuntimeToolError("malformed model.onnx: a field runs past the end")
        fields.append((field, wire, data[start:position], payload))
    return fields


def _string_field(number: int, text: str) -> bytes:
    raw = text.encode("utf-8")
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw


def _replace_metadata(data: bytes, key: str, value: str) -> bytes:
    """The model with metadata entry `key` set to `value` (others kept, graph untouched)."""
    out = []
    for field, wire, raw, payload in _top_level_fields(data):
        if field == _METADATA_FIELD and wire == 2:
            entry = {sub: sub_payload for sub, _, _, sub_payload in _top_level_fields(payload)}
            if entry.get(1, b"").decode("utf-8", "replace") == key:
                continue
        out.append(raw)
    entry = _string_field(1, key) + _string_field(2, value)
    out.append(_varint(_METADATA_FIELD << 3 | 2) + _varint(len(entry)) + entry)
    return b"".join(out)
