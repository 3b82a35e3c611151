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
import math
import os
import tempfile
import zipfile
import zlib
from typing import Any, Dict, List, Optional, Tuple

from .errors import RuntimeToolError, one_line
from .graph import Graph, node_label
from .model import MAX_INPUT_SIZE, import_numpy

BUNDLE_FORMAT = "edge-smsp-adaptable-bundle"
BUNDLE_VERSION = 1
PARAMS_SLACK_BYTES = 1 << 20  # params.npz's arrays are model.onnx's initializers: never more bytes than it
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
            spec = json.load(handle)
    except (OSError, ValueError) as error:
        raise RuntimeToolError(f"cannot read {paths['graph.json']}: {one_line(error)}") from None
    if (
        not isinstance(spec, dict)
        or spec.get("format") != BUNDLE_FORMAT
        or spec.get("version") != BUNDLE_VERSION
    ):
        raise RuntimeToolError(f"{paths['graph.json']}: not a version {BUNDLE_VERSION} {BUNDLE_FORMAT} spec")
    problem = _spec_problem(spec)
    if problem:
        raise RuntimeToolError(f"{paths['graph.json']}: {problem}; export the bundle again on the host")
    with open(paths["model.onnx"], "rb") as handle:
        model_bytes = handle.read()
    if hashlib.sha256(model_bytes).hexdigest() != spec.get("model_sha256"):
        raise RuntimeToolError(f"{paths['model.onnx']} does not match its graph.json (SHA-256 differs)")
    try:
        problem = _declared_params_problem(spec, len(model_bytes)) or _archive_headers_problem(
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
    problem = _params_problem(spec, params)
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
                f"{paths['graph.json']}: writeback {name!r} is {_shown(entry.get('shape'))}, {entry['nbytes']} "
                f"bytes of float32, but params.npz holds {_shape_text(array.shape)} {array.dtype} "
                f"({array.nbytes} bytes); export the bundle again on the host"
            )
        start = entry["offset"]
        if model_bytes[start : start + entry["nbytes"]] != array.astype("<f4").tobytes():
            raise RuntimeToolError(f"{paths['model.onnx']}: {name!r} is not at its writeback offset")
    try:
        bundle = Bundle(directory, spec, params, model_bytes)
        problem = _run_problem(bundle)
    except RuntimeToolError as error:
        problem = one_line(error)
    if problem:
        raise RuntimeToolError(f"{paths['graph.json']}: {problem}; export the bundle again on the host")
    return bundle


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _numbers(value: Any, channels: int) -> bool:
    """A list of 1 or `channels` finite numbers (preprocessing's mean and std)."""
    return (
        isinstance(value, list)
        and len(value) in (1, channels)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _spec_problem(spec: Dict[str, Any]) -> Optional[str]:
    """What makes a graph.json unusable before any image is read (None: nothing found); every field the
    runtime reads is checked here, the nodes by the numpy engine's Graph."""
    cuts = spec.get("cuts")
    if not isinstance(cuts, list) or not cuts:
        return "no cuts (block boundaries to train after)"
    preprocessing = spec.get("preprocessing")
    preprocessing = preprocessing if isinstance(preprocessing, dict) else {}
    size = preprocessing.get("input_size")
    if not isinstance(size, list) or len(size) != 2 or not all(_is_int(side, 1) for side in size):
        return f"preprocessing.input_size must be two positive integers [h, w], got {size!r}"
    if any(side > MAX_INPUT_SIZE for side in size):
        return f"preprocessing.input_size must be two positive integers up to {MAX_INPUT_SIZE}, got {size!r}"
    channels = preprocessing.get("channels")
    if not _is_int(channels, 1) or channels not in (1, 3):
        return f"preprocessing.channels must be 1 or 3, got {_shown(channels)}"
    for key in ("mean", "std"):
        if not _numbers(preprocessing.get(key), channels):
            count = "1 finite number" if channels == 1 else f"1 or {channels} finite numbers"
            return f"preprocessing.{key} must be {count}, got {_shown(preprocessing.get(key))}"
    if 0 in preprocessing["std"]:
        return f"preprocessing.std must not be 0, got {preprocessing['std']!r}"
    for key in ("input", "output"):
        entry = spec.get(key)
        if not isinstance(entry, dict) or not _is_name(entry.get("name")):
            return f"{key}.name must name a tensor, got {_shown(entry)}"
    labels = spec.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
        return f"labels must be a list of class names, got {_shown(labels)}"
    params = spec.get("params")
    if not isinstance(params, dict):
        return f"params must be an object of parameters, got {_shown(params)}"
    for name, entry in params.items():
        if not isinstance(entry, dict) or not _is_name(entry.get("key")):
            return f"parameter {name!r}: field 'key' must name an array of params.npz, got {_shown(entry)}"
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(_is_int(side) for side in shape):
            return f"parameter {name!r}: field 'shape' must be a list of sizes, got {_shown(shape)}"
        if not _is_name(entry.get("dtype")):
            return (
                f"parameter {name!r}: field 'dtype' must name a numpy dtype, got {_shown(entry.get('dtype'))}"
            )
    writeback = spec.get("writeback")
    if not isinstance(writeback, dict):
        return f"writeback must be an object of parameters, got {_shown(writeback)}"
    for name, entry in writeback.items():
        if name not in params:
            return f"writeback names {name!r}, which is not in params"
        if not isinstance(entry, dict) or not all(_is_int(entry.get(key)) for key in ("offset", "nbytes")):
            return (
                f"writeback {name!r}: fields 'offset' and 'nbytes' must be byte counts, got {_shown(entry)}"
            )
        if not isinstance(entry.get("shape"), list):
            return (
                f"writeback {name!r}: field 'shape' must be a list of sizes, got {_shown(entry.get('shape'))}"
            )
    for index, cut in enumerate(cuts):
        if not isinstance(cut, dict) or not _is_name(cut.get("tensor")):
            return f"cuts[{index}]: field 'tensor' must name a tensor, got {_shown(cut)}"
    return _classifier_problem(spec)


def _classifier_problem(spec: Dict[str, Any]) -> Optional[str]:
    """The classifier entry against the node it names: the final Gemm that adapt imprints and trains."""
    head = spec.get("classifier")
    if not isinstance(head, dict):
        return f"classifier must be an object, got {_shown(head)}"
    nodes = spec.get("nodes")
    index = head.get("node")
    if not isinstance(nodes, list) or not _is_int(index) or index >= len(nodes):
        count = len(nodes) if isinstance(nodes, list) else 0
        return f"classifier.node must be the index of a node (0 to {count - 1}), got {_shown(index)}"
    node = nodes[index]
    if not isinstance(node, dict) or node.get("op") != "Gemm":
        return f"classifier.node {index} must be the final Gemm, got {node_label(index, node)}"
    inputs = node.get("inputs")
    inputs = inputs if isinstance(inputs, list) else []
    bias = inputs[2] if len(inputs) > 2 and inputs[2] else None
    attrs = node.get("attrs") if isinstance(node.get("attrs"), dict) else {}
    expected = {
        "features": inputs[0] if inputs else None,
        "weight": inputs[1] if len(inputs) > 1 else None,
        "bias": bias,
        "trans_b": attrs.get("transB", 0),
    }
    for key, value in expected.items():
        if key not in head:
            return f"classifier.{key} is missing (the Gemm's is {value!r})"
        got = (head[key] or None) if key == "bias" else head[key]
        if got != value:
            return f"classifier.{key} is {_shown(head[key])} but its Gemm (node {index}) has {value!r}"
    if expected["trans_b"] not in (0, 1):
        return f"classifier.trans_b must be 0 or 1, got {_shown(expected['trans_b'])}"
    outputs = node.get("outputs")
    if not isinstance(outputs, list) or spec["output"]["name"] not in outputs:
        return f"classifier.node {index} does not compute the output {spec['output']['name']!r}"
    for key in ("weight", "bias"):
        name = expected[key]
        if name is not None and (name not in spec["params"] or name not in spec["writeback"]):
            return f"classifier.{key} {name!r} is not a parameter with a writeback entry"
    classes = head.get("num_classes")
    if not _is_int(classes, 1) or classes != len(spec["labels"]):
        return f"classifier.num_classes must be the number of labels ({len(spec['labels'])}), got {_shown(classes)}"
    return None


def _declared_params_problem(spec: Dict[str, Any], model_bytes: int) -> Optional[str]:
    """Parameters that graph.json declares larger than model.onnx, whose initializers they are: a bundle that would
    make the runtime allocate gigabytes from a few compressed megabytes."""
    np = import_numpy()
    declared = 0
    for entry in spec["params"].values():
        try:
            declared += int(np.prod(entry["shape"], dtype=np.float64)) * np.dtype(entry["dtype"]).itemsize
        except TypeError:
            return "graph.json names a dtype numpy does not know"
    if declared > model_bytes + PARAMS_SLACK_BYTES:
        return f"graph.json declares {declared:,} bytes of parameters, more than model.onnx holds ({model_bytes:,})"
    return None


def _archive_headers_problem(path: str, spec: Dict[str, Any]) -> Optional[str]:
    """Each array's shape and dtype read from its .npy header inside the archive, before any array is inflated:
    numpy allocates what the header says, so a 16 MB archive may claim 40000 x 40000 floats."""
    np = import_numpy()
    with zipfile.ZipFile(path) as archive:
        for name, entry in spec["params"].items():
            try:
                handle = archive.open(entry["key"] + ".npy")
            except KeyError:
                return f"holds no array {entry['key']!r} (parameter {name!r})"
            with handle:
                version = np.lib.format.read_magic(handle)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(handle)
            if list(shape) != entry["shape"] or str(dtype) != entry["dtype"]:
                return (
                    f"parameter {name!r} is {_shape_text(shape)} {dtype} in params.npz, but graph.json says "
                    f"{_shape_text(entry['shape'])} {entry['dtype']}"
                )
    return None


def _params_problem(spec: Dict[str, Any], params: Dict[str, Any]) -> Optional[str]:
    """graph.json's parameter shapes and dtypes against the arrays params.npz holds, and the classifier's."""
    for name, entry in spec["params"].items():
        array = params[name]
        if list(array.shape) != entry["shape"]:
            return (
                f"parameter {name!r} has shape {_shape_text(entry['shape'])} but params.npz holds "
                f"{_shape_text(array.shape)}"
            )
        if str(array.dtype) != entry["dtype"]:
            return f"parameter {name!r} has dtype {entry['dtype']} but params.npz holds {array.dtype}"
    head = spec["classifier"]
    weight, classes = params[head["weight"]], head["num_classes"]
    if weight.ndim != 2 or weight.shape[0 if head["trans_b"] else 1] != classes:
        axis = "rows" if head["trans_b"] else "columns"
        return (
            f"classifier.weight {head['weight']!r} has shape {_shape_text(weight.shape)}: it needs "
            f"{classes} {axis}, one per class (classifier.num_classes)"
        )
    if head["bias"] and list(params[head["bias"]].shape) != [classes]:
        shape = _shape_text(params[head["bias"]].shape)
        return f"classifier.bias {head['bias']!r} has shape {shape}, not [{classes}] (classifier.num_classes)"
    return None


def _run_problem(bundle: "Bundle") -> Optional[str]:
    """The graph tried once on a blank image of preprocessing.input_size: any node that cannot run (a shape or
    an attribute graph.json got wrong), or logits not [batch, num_classes]."""
    np = import_numpy()
    spec = bundle.spec
    first = (spec["input"].get("shape") or [None])[0]
    batch = first if _is_int(first, 1) else 1
    preprocessing = spec["preprocessing"]
    blank = np.zeros([batch, preprocessing["channels"]] + preprocessing["input_size"], dtype=np.float32)
    for index, cut in enumerate(bundle.cuts):  # each a block boundary: an error now, not after the images
        try:
            bundle.graph.split(cut)
        except RuntimeToolError as error:
            return f"cuts[{index}]: {one_line(error)}"
    problem, logits = bundle.graph.first_failure(blank)
    if problem:
        return problem
    classes = spec["classifier"]["num_classes"]
    if list(np.shape(logits)) != [batch, classes]:
        return (
            f"the output {spec['output']['name']!r} has shape {_shape_text(np.shape(logits))} for an input "
            f"of shape {_shape_text(blank.shape)}, not [{batch}, {classes}] (classifier.num_classes)"
        )
    return None


def _shape_text(shape: Any) -> str:
    return "[" + ", ".join(str(side) for side in shape) + "]"


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
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary


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
