"""The graphs a device runs when the task's images stay there (edge-smsp deploy --device-data):

- a *feature graph*: images -> penultimate features (what the classifier receives), BatchNorm folded, for the
  device's `describe` (the unpruned backbone: the task descriptor) and `probe` (pool entries' models);
- an *adaptable bundle* of the pruned model: BatchNorm unfused, the task's classifier, for the device's light
  `adapt` (edge_smsp.export.adaptable), with the per-image sizes the memory plan reads.

Both carry the preprocessing (`mean`, `std`, `input_size`) in their metadata, as the device runtime reads it,
and are written at the device's opset with the TorchScript exporter (opsets 13+; the bundle's numpy engine
reads its node list, not the opset).
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edge_smsp.core.errors import ExportError
from edge_smsp.devices.adapt_memory import BundleSizes
from edge_smsp.export.adaptable import BundleError, bundle_from_onnx
from edge_smsp.models.units import classifier_of

OLDEST_DEVICE_GRAPH_OPSET = 13  # the bundle's BatchNormalization and Clip forms
EXAMPLE_BATCH = 2  # a batch of 2: the exporter keeps BN in training form's shape and a symbolic batch


@dataclass(frozen=True)
class AdaptableBundle:
    """A bundle directory and the sizes the device's memory plan reads of it."""

    directory: Path
    model_sha256: str
    sizes: BundleSizes

    @property
    def files(self) -> list[Path]:
        """What goes to the device: model.onnx, graph.json and params.npz."""
        return [self.directory / name for name in ("model.onnx", "graph.json", "params.npz")]

    @property
    def bundle_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


def feature_model(model: nn.Module) -> nn.Module:
    """A copy of `model` whose classifier is an identity: its output is the classifier's input."""
    found = classifier_of(model)
    if found is None:
        raise ExportError(f"model {type(model).__name__} has no classifier to cut off")
    features = copy.deepcopy(model).eval()
    name, _ = found
    parent_name, _, attribute = name.rpartition(".")
    parent = features.get_submodule(parent_name) if parent_name else features
    setattr(parent, attribute, nn.Identity())
    return features


def export_feature_graph(
    model: nn.Module,
    path: Path,
    *,
    image_size: int,
    opset: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Path:
    """`model`'s features (classifier cut off) as ONNX at `opset`, with the preprocessing in its metadata.
    The same model, size and opset give the same bytes (the device caches it by its SHA-256)."""
    _export(feature_model(model), path, image_size, opset, training=False)
    proto = onnx.load(str(path))
    _set_metadata(proto, {"mean": list(mean), "std": list(std), "input_size": int(image_size)})
    onnx.save(proto, str(path))
    return path


def export_adaptable_bundle(
    model: nn.Module,
    out_dir: Path,
    *,
    image_size: int,
    opset: int,
    labels: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
) -> AdaptableBundle:
    """The pruned model (with the task's classifier) as an adaptable bundle in `out_dir`: BatchNorm unfused,
    fp32, the device's opset."""
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir.parent / f"{out_dir.name}.unfused.onnx"
    _export(model, raw, image_size, opset, training=True)
    try:
        summary = bundle_from_onnx(
            raw, out_dir, labels=list(labels), mean=list(mean), std=list(std), input_size=int(image_size)
        )
    except BundleError as error:
        raise ExportError(f"the pruned model cannot become an adaptable bundle: {error}") from None
    finally:
        raw.unlink(missing_ok=True)
    del summary
    return measure_bundle(out_dir)


def measure_bundle(directory: Path) -> AdaptableBundle:
    """The per-image tensor sizes of a bundle's graph (ONNX shape inference at batch 1)."""
    spec = json.loads((directory / "graph.json").read_text(encoding="utf-8"))
    proto = onnx.load(str(directory / "model.onnx"))
    sizes = _tensor_elements(proto)
    params = {name: int(np.prod(entry["shape"], dtype=np.int64)) for name, entry in spec["params"].items()}
    nodes = spec["nodes"]
    input_name = spec["input"]["name"]
    producer = {name: index for index, node in enumerate(nodes) for name in node["outputs"]}
    cut_elements, front_live, tail_sum, trainable = [], [], [], []
    for cut in spec["cuts"]:
        tensor = cut["tensor"]
        position = -1 if tensor == input_name else producer[tensor]
        cut_elements.append(sizes[tensor])
        front_live.append(
            _peak_live(nodes[: position + 1], sizes, params, input_name) if position >= 0 else 0
        )
        tail = nodes[position + 1 :]
        tail_sum.append(sum(sizes.get(name, 0) for node in tail for name in node["outputs"]))
        trainable.append(int(cut["parameters"]))
    return AdaptableBundle(
        directory=directory,
        model_sha256=spec["model_sha256"],
        sizes=BundleSizes(
            param_bytes=4 * sum(params.values()),
            input_elements=sizes[input_name],
            cut_elements=tuple(cut_elements),
            front_live_elements=tuple(front_live),
            tail_elements=tuple(tail_sum),
            trainable_params=tuple(trainable),
            full_live_elements=_peak_live(nodes, sizes, params, input_name),
        ),
    )


def _peak_live(
    nodes: Sequence[dict[str, Any]], sizes: dict[str, int], params: dict[str, int], input_name: str
) -> int:
    """The largest sum of activations alive at once when the nodes run in order, freeing each after its last
    reader (as the device's numpy engine does)."""
    last_use: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node["inputs"]:
            last_use[name] = index
    live = {input_name: sizes.get(input_name, 0)}
    peak = sum(live.values())
    for index, node in enumerate(nodes):
        for name in node["outputs"]:
            live[name] = sizes.get(name, 0)
        peak = max(peak, sum(live.values()))
        for name in node["inputs"]:
            if name not in params and last_use.get(name) == index:
                live.pop(name, None)
    return peak


def _tensor_elements(proto: onnx.ModelProto) -> dict[str, int]:
    """Elements per image of every tensor of the graph (batch dimension set to 1)."""
    model = copy.deepcopy(proto)
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model)
    sizes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(dim.HasField("dim_value") for dim in dims):
            sizes[value.name] = int(np.prod([dim.dim_value for dim in dims], dtype=np.int64))
    return sizes


def _export(model: nn.Module, path: Path, image_size: int, opset: int, *, training: bool) -> None:
    """TorchScript export at `opset` (batch symbolic); `training`: BatchNorm kept, no constant folding."""
    if opset < OLDEST_DEVICE_GRAPH_OPSET:
        raise ExportError(
            f"graphs for on-device adaptation need opset >= {OLDEST_DEVICE_GRAPH_OPSET}, got {opset}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    parameter = next(model.parameters())
    example = torch.zeros(EXAMPLE_BATCH, 3, image_size, image_size, dtype=parameter.dtype)
    mode = torch.onnx.TrainingMode.PRESERVE if training else torch.onnx.TrainingMode.EVAL
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=False,
                opset_version=opset,
                training=mode,
                do_constant_folding=not training,
                input_names=["input"],
                output_names=["logits" if training else "features"],
                dynamic_axes={"input": {0: "batch"}, ("logits" if training else "features"): {0: "batch"}},
            )
    except Exception as error:  # the exporter's own errors: one line for the user
        raise ExportError(f"exporting the device graph failed: {type(error).__name__}: {error}") from None
    finally:
        model.train(was_training)


def _set_metadata(proto: onnx.ModelProto, values: dict[str, Any]) -> None:
    for key, value in values.items():
        text = json.dumps(value)
        for entry in proto.metadata_props:
            if entry.key == key:
                entry.value = text
                break
        else:
            proto.metadata_props.add(key=key, value=text)
