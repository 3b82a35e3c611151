"""What makes an adaptable bundle unusable, found before any image is read: graph.json field by field, its
parameters against params.npz (headers read before any array is inflated), and one run of the graph on a blank
image. Each check returns a problem to name, or None."""

import math
import zipfile
from typing import TYPE_CHECKING, Any, Dict, Optional

from .errors import RuntimeToolError, one_line
from .graph import node_label
from .model import MAX_INPUT_SIZE, import_numpy
from .normalisation import normalisation_problem

if TYPE_CHECKING:
    from .bundle import Bundle

PARAMS_SLACK_BYTES = 1 << 20  # params.npz's arrays are model.onnx's initializers: never more bytes than it


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


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def spec_problem(spec: Dict[str, Any]) -> Optional[str]:
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
        return f"preprocessing.channels must be 1 or 3, got {shown(channels)}"
    for key in ("mean", "std"):
        if not _numbers(preprocessing.get(key), channels):
            count = "1 finite number" if channels == 1 else f"1 or {channels} finite numbers"
            return f"preprocessing.{key} must be {count}, got {shown(preprocessing.get(key))}"
    mean, std = preprocessing["mean"], preprocessing["std"]
    names = ("preprocessing.mean", "preprocessing.std")
    problem = normalisation_problem(mean * (channels // len(mean)), std * (channels // len(std)), names)
    if problem:
        return problem
    for key in ("input", "output"):
        entry = spec.get(key)
        if not isinstance(entry, dict) or not _is_name(entry.get("name")):
            return f"{key}.name must name a tensor, got {shown(entry)}"
    labels = spec.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
        return f"labels must be a list of class names, got {shown(labels)}"
    params = spec.get("params")
    if not isinstance(params, dict):
        return f"params must be an object of parameters, got {shown(params)}"
    for name, entry in params.items():
        if not isinstance(entry, dict) or not _is_name(entry.get("key")):
            return f"parameter {name!r}: field 'key' must name an array of params.npz, got {shown(entry)}"
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(_is_int(side) for side in shape):
            return f"parameter {name!r}: field 'shape' must be a list of sizes, got {shown(shape)}"
        if not _is_name(entry.get("dtype")):
            return (
                f"parameter {name!r}: field 'dtype' must name a numpy dtype, got {shown(entry.get('dtype'))}"
            )
    writeback = spec.get("writeback")
    if not isinstance(writeback, dict):
        return f"writeback must be an object of parameters, got {shown(writeback)}"
    for name, entry in writeback.items():
        if name not in params:
            return f"writeback names {name!r}, which is not in params"
        if not isinstance(entry, dict) or not all(_is_int(entry.get(key)) for key in ("offset", "nbytes")):
            return f"writeback {name!r}: fields 'offset' and 'nbytes' must be byte counts, got {shown(entry)}"
        if not isinstance(entry.get("shape"), list):
            return (
                f"writeback {name!r}: field 'shape' must be a list of sizes, got {shown(entry.get('shape'))}"
            )
    for index, cut in enumerate(cuts):
        if not isinstance(cut, dict) or not _is_name(cut.get("tensor")):
            return f"cuts[{index}]: field 'tensor' must name a tensor, got {shown(cut)}"
    return _classifier_problem(spec)


def _classifier_problem(spec: Dict[str, Any]) -> Optional[str]:
    """The classifier entry against the node it names: the final Gemm that adapt imprints and trains."""
    head = spec.get("classifier")
    if not isinstance(head, dict):
        return f"classifier must be an object, got {shown(head)}"
    nodes = spec.get("nodes")
    index = head.get("node")
    if not isinstance(nodes, list) or not _is_int(index) or index >= len(nodes):
        count = len(nodes) if isinstance(nodes, list) else 0
        return f"classifier.node must be the index of a node (0 to {count - 1}), got {shown(index)}"
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
            return f"classifier.{key} is {shown(head[key])} but its Gemm (node {index}) has {value!r}"
    if expected["trans_b"] not in (0, 1):
        return f"classifier.trans_b must be 0 or 1, got {shown(expected['trans_b'])}"
    outputs = node.get("outputs")
    if not isinstance(outputs, list) or spec["output"]["name"] not in outputs:
        return f"classifier.node {index} does not compute the output {spec['output']['name']!r}"
    for key in ("weight", "bias"):
        name = expected[key]
        if name is not None and (name not in spec["params"] or name not in spec["writeback"]):
            return f"classifier.{key} {name!r} is not a parameter with a writeback entry"
    classes = head.get("num_classes")
    if not _is_int(classes, 1) or classes != len(spec["labels"]):
        return f"classifier.num_classes must be the number of labels ({len(spec['labels'])}), got {shown(classes)}"
    return None


def declared_params_problem(spec: Dict[str, Any], model_bytes: int) -> Optional[str]:
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


def archive_headers_problem(path: str, spec: Dict[str, Any]) -> Optional[str]:
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
                    f"parameter {name!r} is {shape_text(shape)} {dtype} in params.npz, but graph.json says "
                    f"{shape_text(entry['shape'])} {entry['dtype']}"
                )
    return None


def params_problem(spec: Dict[str, Any], params: Dict[str, Any]) -> Optional[str]:
    """graph.json's parameter shapes and dtypes against the arrays params.npz holds, and the classifier's."""
    for name, entry in spec["params"].items():
        array = params[name]
        if list(array.shape) != entry["shape"]:
            return (
                f"parameter {name!r} has shape {shape_text(entry['shape'])} but params.npz holds "
                f"{shape_text(array.shape)}"
            )
        if str(array.dtype) != entry["dtype"]:
            return f"parameter {name!r} has dtype {entry['dtype']} but params.npz holds {array.dtype}"
    head = spec["classifier"]
    weight, classes = params[head["weight"]], head["num_classes"]
    if weight.ndim != 2 or weight.shape[0 if head["trans_b"] else 1] != classes:
        axis = "rows" if head["trans_b"] else "columns"
        return (
            f"classifier.weight {head['weight']!r} has shape {shape_text(weight.shape)}: it needs "
            f"{classes} {axis}, one per class (classifier.num_classes)"
        )
    if head["bias"] and list(params[head["bias"]].shape) != [classes]:
        shape = shape_text(params[head["bias"]].shape)
        return f"classifier.bias {head['bias']!r} has shape {shape}, not [{classes}] (classifier.num_classes)"
    return None


def run_problem(bundle: "Bundle") -> Optional[str]:
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
            f"the output {spec['output']['name']!r} has shape {shape_text(np.shape(logits))} for an input "
            f"of shape {shape_text(blank.shape)}, not [{batch}, {classes}] (classifier.num_classes)"
        )
    return None


def shape_text(shape: Any) -> str:
    return "[" + ", ".join(str(side) for side in shape) + "]"
