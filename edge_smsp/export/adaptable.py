"""The host side of on-device adaptation: an ONNX export with BatchNorm unfused -> an adaptable bundle.

The bundle (a directory) is what the light runtime (`python -m edge_smsp_runtime adapt`) trains with numpy and
writes back into one self-contained ONNX file without the onnx package. Its format is defined in
`runtime/edge_smsp_runtime/bundle.py`: `model.onnx` (every initializer as float32 raw_data at a known byte
offset), `graph.json` (the node list, parameters, byte offsets, preprocessing, labels, cut tensors) and
`params.npz` (the initializers).

Export the model in eval mode with BatchNorm kept, e.g. (torch 2.14):

    torch.onnx.export(model.eval(), example, path, dynamo=False, opset_version=13,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, ...})

That exporter shares initializers of equal value through Identity nodes (fresh BN statistics): the bundle gives
each its own copy again. Imports only onnx, onnxruntime, numpy and the standard library.
"""

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

BUNDLE_FORMAT = "edge-smsp-adaptable-bundle"
BUNDLE_VERSION = 1
# What the runtime's numpy engine runs (edge_smsp_runtime.ops.OPS).
SUPPORTED_OPS = frozenset(
    {"Conv", "BatchNormalization", "Relu", "Clip", "Sigmoid", "Add", "Mul", "GlobalAveragePool", "Flatten",
     "Reshape", "Identity", "Dropout", "Gemm", "MatMul", "MaxPool"}
)  # fmt: skip
# Inputs (by position) that the device may change: learned parameters and BN running statistics.
WRITABLE_INPUTS = {"Conv": (1, 2), "BatchNormalization": (1, 2, 3, 4), "Gemm": (1, 2), "MatMul": (1,)}
PARAMETER_INPUTS = {"Conv": (1, 2), "BatchNormalization": (1, 2), "Gemm": (1, 2), "MatMul": (1,)}
ACTIVATIONS = frozenset({"Relu", "Clip", "Sigmoid", "Mul"})


class BundleError(ValueError):
    """The ONNX model cannot become an adaptable bundle (unsupported operator, folded BN, no classifier...)."""


def bundle_from_onnx(
    model: "str | os.PathLike[str] | onnx.ModelProto",
    out_dir: "str | os.PathLike[str]",
    *,
    labels: "list[str] | None" = None,
    mean: "list[float] | None" = None,
    std: "list[float] | None" = None,
    input_size: "int | None" = None,
    cuts: "list[str] | None" = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the bundle for `model` (BatchNorm unfused) into `out_dir`; returns graph.json's summary keys.

    labels/mean/std/input_size override the model's edge-smsp metadata (labels are written into the model's
    metadata too). `cuts` overrides the candidate cut tensors (last first); by default they are the block
    boundaries found in the graph."""
    proto = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else copy.deepcopy(model)
    graph = proto.graph
    _fold_shape_computations(proto)
    _materialise_constants(graph)
    _merge_pads_into_convs(graph)
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    for name, array in initializers.items():
        if array.dtype.kind == "f" and array.dtype != np.float32:
            raise BundleError(f"initializer {name!r} is {array.dtype}: the bundle needs a float32 export")
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(array, name) for name, array in initializers.items())
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise BundleError("the model needs exactly one image input and one output")
    input_name, output_name = inputs[0].name, graph.output[0].name
    input_shape, output_shape = _shape(inputs[0]), _shape(graph.output[0])
    nodes = [_node_json(node) for node in graph.node]
    unsupported = sorted({node["op"] for node in nodes} - SUPPORTED_OPS)
    if unsupported:
        raise BundleError(f"operators the device engine lacks: {', '.join(unsupported)}")
    if not any(node["op"] == "BatchNormalization" for node in nodes):
        raise BundleError("no BatchNormalization node: export with BatchNorm unfused (see this module's doc)")
    classifier = _classifier(nodes, output_name, initializers)

    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    labels = labels if labels is not None else _json_or_none(metadata.get("labels"))
    mean = mean if mean is not None else _json_or_none(metadata.get("mean"))
    std = std if std is not None else _json_or_none(metadata.get("std"))
    size = input_size if input_size is not None else _json_or_none(metadata.get("input_size"))
    channels = input_shape[1]
    if size is None and isinstance(input_shape[2], int) and isinstance(input_shape[3], int):
        size = [input_shape[2], input_shape[3]]
    size = [size, size] if isinstance(size, int) else size
    if not labels or len(labels) != classifier["num_classes"]:
        raise BundleError(
            f"give {classifier['num_classes']} labels (the classifier's outputs), got {labels!r}"
        )
    mean = [float(v) for v in (mean or [0.0])] * (channels if mean is None or len(mean) == 1 else 1)
    std = [float(v) for v in (std or [1.0])] * (channels if std is None or len(std) == 1 else 1)
    if len(mean) != channels or len(std) != channels or size is None:
        raise BundleError("mean/std need one value per input channel, and the input size must be known")
    _set_metadata(proto, "labels", json.dumps([str(label) for label in labels]))

    writable = _writable(nodes, initializers)
    model_bytes, writeback = _locate_initializers(proto, writable, seed)
    cut_list = _cuts(nodes, input_name, output_name, classifier["features"], initializers, cuts)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = {name: f"p{index}" for index, name in enumerate(initializers)}
    spec = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "model_bytes": len(model_bytes),
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "input": {"name": input_name, "shape": input_shape},
        "output": {"name": output_name, "shape": output_shape},
        "labels": [str(label) for label in labels],
        "preprocessing": {
            "input_size": [int(size[0]), int(size[1])],
            "channels": channels,
            "mean": mean,
            "std": std,
        },
        "nodes": nodes,
        "params": {
            name: {"key": keys[name], "shape": list(array.shape), "dtype": str(array.dtype)}
            for name, array in initializers.items()
        },
        "writeback": writeback,
        "classifier": classifier,
        "cuts": cut_list,
        "metadata": {entry.key: entry.value for entry in proto.metadata_props},
    }
    (out / "model.onnx").write_bytes(model_bytes)
    np.savez(out / "params.npz", **{keys[name]: array for name, array in initializers.items()})
    (out / "graph.json").write_text(json.dumps(spec, indent=1))
    import onnxruntime

    onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    return {key: spec[key] for key in ("model_sha256", "model_bytes", "labels", "cuts", "classifier")}


def _fold_shape_computations(proto: onnx.ModelProto) -> None:
    """Nodes computed from tensor shapes and constants alone (TF-style "same" padding: Shape, Gather, Ceil, ...
    -> Pad) become constants when their values are the same for a batch of 1 and of 2 (a static image size)."""
    graph = proto.graph
    constants = {tensor.name for tensor in graph.initializer}
    constants |= {node.output[0] for node in graph.node if node.op_type == "Constant"}
    derived: list[str] = []
    for node in graph.node:
        if node.op_type == "Shape" or (
            node.op_type not in ("Constant", "Identity")
            and any(node.input)
            and all(not name or name in derived or name in constants for name in node.input)
        ):
            derived.extend(node.output)
    if not derived:
        return
    inputs = [value for value in graph.input if value.name not in constants]
    shape = _shape(inputs[0])
    if not all(isinstance(side, int) and side > 0 for side in shape[1:]):
        raise BundleError(
            "the model computes paddings from its input's shape: export it with a static image size"
        )
    import onnxruntime

    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {value.name: value for value in inferred.graph.value_info}
    probe = copy.deepcopy(proto)
    probe.graph.output.extend(types[name] for name in derived if name in types)
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    runs = [
        dict(
            zip(
                names,
                session.run(None, {inputs[0].name: np.zeros([batch, *shape[1:]], np.float32)}),
                strict=True,
            )
        )
        for batch in (1, 2)
    ]
    folded = {
        name: runs[0][name]
        for name in derived
        if name in runs[0] and np.array_equal(runs[0][name], runs[1][name])
    }
    kept = [node for node in graph.node if not (node.output and all(name in folded for name in node.output))]
    while True:  # then the nodes nothing reads any more (the Shape of a batch-dependent input)
        used = {name for node in kept for name in node.input} | {value.name for value in graph.output}
        alive = [node for node in kept if any(name in used for name in node.output)]
        if len(alive) == len(kept):
            break
        kept = alive
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(
        numpy_helper.from_array(np.asarray(value), name) for name, value in folded.items()
    )


def _merge_pads_into_convs(graph: onnx.GraphProto) -> None:
    """A zero constant Pad of the spatial sides that feeds only a Conv becomes the Conv's own pads."""
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    removed = []
    for node in graph.node:
        if node.op_type != "Pad":
            continue
        mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"constant")
        pads = values.get(node.input[1]) if len(node.input) > 1 else None
        fill = values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(())
        users = readers.get(node.output[0], [])
        if (
            mode != b"constant"
            or pads is None
            or fill is None
            or np.any(fill != 0)
            or len(pads) != 8
            or np.any(pads[[0, 1, 4, 5]] != 0)
            or len(users) != 1
            or users[0].op_type != "Conv"
            or users[0].input[0] != node.output[0]
        ):
            continue
        conv = users[0]
        attribute = next((a for a in conv.attribute if a.name == "pads"), None)
        old = list(attribute.ints) if attribute is not None else [0, 0, 0, 0]
        new = [old[0] + int(pads[2]), old[1] + int(pads[3]), old[2] + int(pads[6]), old[3] + int(pads[7])]
        if attribute is not None:
            conv.attribute.remove(attribute)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = node.input[0]
        removed.append(node)
    for node in removed:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    unused = [tensor for tensor in graph.initializer if tensor.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)


def _materialise_constants(graph: onnx.GraphProto) -> None:
    """Constant nodes and Identity nodes of an initializer become initializers of their own."""
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type == "Constant":
            attribute = node.attribute[0]
            if attribute.name != "value":
                raise BundleError(
                    f"Constant node {node.name!r} has attribute {attribute.name!r}, not 'value'"
                )
            values[node.output[0]] = numpy_helper.to_array(attribute.t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = np.array(values[node.input[0]], copy=True)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input} | {value.name for value in graph.output}
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in values.items() if name in used)
    graph_inputs = [value for value in graph.input if value.name not in values or value.name in used]
    del graph.input[:]
    graph.input.extend(graph_inputs)


def _node_json(node: onnx.NodeProto) -> dict[str, Any]:
    attrs = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, list):
            value = [item.decode("utf-8") if isinstance(item, bytes) else item for item in value]
        elif not isinstance(value, (int, float, str)):
            raise BundleError(
                f"node {node.name!r} ({node.op_type}): attribute {attribute.name!r} is not a number"
            )
        attrs[attribute.name] = value
    return {"op": node.op_type, "name": node.name, "inputs": list(node.input), "outputs": list(node.output),
            "attrs": attrs}  # fmt: skip


def _shape(value: onnx.ValueInfoProto) -> list[Any]:
    return [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]


def _classifier(
    nodes: list[dict[str, Any]], output: str, initializers: dict[str, np.ndarray]
) -> dict[str, Any]:
    node_index = next(i for i, node in enumerate(nodes) if output in node["outputs"])
    node = nodes[node_index]
    if node["op"] != "Gemm" or node["inputs"][1] not in initializers:
        raise BundleError(
            f"the output must come from a Gemm classifier with constant weights, not {node['op']}"
        )
    if node["attrs"].get("transA", 0) or node["attrs"].get("alpha", 1.0) != 1.0:
        raise BundleError("the classifier Gemm must have transA = 0 and alpha = 1")
    trans_b = int(node["attrs"].get("transB", 0))
    weight = initializers[node["inputs"][1]]
    bias = node["inputs"][2] if len(node["inputs"]) > 2 and node["inputs"][2] else None
    if bias is not None and (bias not in initializers or node["attrs"].get("beta", 1.0) != 1.0):
        raise BundleError("the classifier's bias must be a constant with beta = 1")
    return {"node": node_index, "weight": node["inputs"][1], "bias": bias, "trans_b": trans_b,
            "features": node["inputs"][0], "num_classes": int(weight.shape[0] if trans_b else weight.shape[1])}  # fmt: skip


def _writable(nodes: list[dict[str, Any]], initializers: dict[str, np.ndarray]) -> list[str]:
    names: list[str] = []
    for node in nodes:
        for position in WRITABLE_INPUTS.get(node["op"], ()):
            if position < len(node["inputs"]):
                name = node["inputs"][position]
                if name in initializers and initializers[name].dtype == np.float32 and name not in names:
                    names.append(name)
    return names


def _set_metadata(proto: onnx.ModelProto, key: str, value: str) -> None:
    for entry in proto.metadata_props:
        if entry.key == key:
            entry.value = value
            return
    proto.metadata_props.add(key=key, value=value)


def _locate_initializers(
    proto: onnx.ModelProto, names: list[str], seed: int
) -> tuple[bytes, dict[str, dict[str, Any]]]:
    """The model's bytes and, for each named initializer, where its raw_data lies in them.

    Each gets unique random bytes of its own length; the serialisation holds every pattern exactly once (else
    another seed is tried); the real bytes then go at those offsets, which must give the real serialisation."""
    real = proto.SerializeToString()
    tensors = {tensor.name: tensor for tensor in proto.graph.initializer}
    originals = {name: tensors[name].raw_data for name in names}
    rng = np.random.default_rng(seed)
    try:
        for _ in range(8):
            patterns = {name: rng.bytes(len(originals[name])) for name in names}
            for name in names:
                tensors[name].raw_data = patterns[name]
            probe = proto.SerializeToString()
            offsets = {}
            for name, pattern in patterns.items():
                first = probe.find(pattern)
                if first < 0 or probe.find(pattern, first + 1) >= 0:
                    break
                offsets[name] = first
            else:
                break
        else:
            raise BundleError("could not locate every initializer's bytes uniquely in the model")
    finally:
        for name in names:
            tensors[name].raw_data = originals[name]
    patched = bytearray(probe)
    for name, offset in offsets.items():
        patched[offset : offset + len(originals[name])] = originals[name]
    if bytes(patched) != real:
        raise BundleError("the initializers' byte offsets do not reproduce the model's serialisation")
    writeback = {
        name: {"offset": offsets[name], "nbytes": len(originals[name]), "shape": list(tensors[name].dims)}
        for name in names
    }
    return real, writeback


def _cuts(
    nodes: list[dict[str, Any]],
    input_name: str,
    output_name: str,
    features: str,
    initializers: dict[str, np.ndarray],
    given: "list[str] | None",
) -> list[dict[str, Any]]:
    """Candidate cut tensors, last first: the classifier's input, block outputs, the graph input.

    A cut is a tensor that alone is live between two nodes. A block output is a cut made by an Add or a
    BatchNormalization whose readers are not all activations (a linear bottleneck's end), an activation of an
    Add (a ResNet block's end), or a MaxPool. Cuts that would train the same parameters as a later one are
    dropped."""
    last_use: dict[str, int] = {}
    producer: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node["inputs"]:
            last_use[name] = index
        for name in node["outputs"]:
            producer[name] = index
    last_use[output_name] = len(nodes)
    separators = {input_name: -1}
    live = {input_name}
    for index, node in enumerate(nodes):
        live.update(name for name in node["outputs"] if last_use.get(name, -1) > index)
        live.difference_update(name for name in node["inputs"] if last_use.get(name) == index)
        if len(live) == 1:
            separators[next(iter(live))] = index
    readers: dict[str, list[str]] = {}
    for node in nodes:
        for name in node["inputs"]:
            readers.setdefault(name, []).append(node["op"])

    def is_block_output(name: str) -> bool:
        if name in (input_name, features):
            return True
        op = nodes[separators[name]]["op"]
        if op in ("Add", "BatchNormalization"):
            return not all(reader in ACTIVATIONS for reader in readers.get(name, []))
        if op in ("Relu", "Clip"):
            source = nodes[separators[name]]["inputs"][0]
            return source in producer and nodes[producer[source]]["op"] == "Add"
        return op == "MaxPool"

    if given is not None:
        missing = [name for name in given if name not in separators]
        if missing:
            raise BundleError(f"not cut tensors (something else is live beside them): {', '.join(missing)}")
        chosen = list(given)
    else:
        chosen = sorted((n for n in separators if is_block_output(n)), key=lambda n: -separators[n])
    result: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    for name in chosen:
        trained = tuple(
            node["inputs"][p]
            for node in nodes[separators[name] + 1 :]
            for p in PARAMETER_INPUTS.get(node["op"], ())
            if p < len(node["inputs"]) and node["inputs"][p] in initializers
        )
        if trained in seen or not trained:
            continue
        seen.add(trained)
        count = sum(int(initializers[p].size) for p in set(trained))
        result.append({"tensor": name, "parameters": count, "nodes": len(nodes) - separators[name] - 1})
    return result


def _json_or_none(text: "str | None") -> Any:
    return None if text is None else json.loads(text)
