"""Small real ONNX models for runtime and transport tests, built with onnx.helper (no torch import needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

COLOR_LABELS = ["red", "green", "blue"]


def _save(graph: onnx.GraphProto, path: Path, metadata: dict[str, str], opset: int = 17) -> Path:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edge-smsp-tests"
    )
    model.ir_version = 8
    helper.set_model_props(model, metadata)
    if opset <= onnx.defs.onnx_opset_version():
        onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def metadata_props(labels: list[str], input_size: int, mean: list[float], std: list[float]) -> dict[str, str]:
    """The metadata_props keys edge-smsp's export writes (see edge_smsp_runtime.METADATA_KEYS)."""
    return {
        "labels": json.dumps(labels),
        "input_size": json.dumps(input_size),
        "mean": json.dumps(mean),
        "std": json.dumps(std),
        "backbone": "tiny_convnet",
        "ratio": json.dumps(0.5),
        "task": "tests",
        "edge_smsp_version": "0.1.0",
    }


def tiny_convnet(path: Path, image_size: int = 16, classes: int = 4, seed: int = 0, opset: int = 17) -> Path:
    """Conv, ReLU, global average pooling, linear classifier; the batch dimension is symbolic.

    Its ops are the same from opset 13 to the newest, so any opset stamp is a valid model (one newer than the
    onnx package knows is written unchecked).
    """
    rng = np.random.default_rng(seed)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.standard_normal((8, classes)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"]),
        helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_convnet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializers,
    )
    labels = [f"class_{index}" for index in range(classes)]
    return _save(graph, path, metadata_props(labels, image_size, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]), opset)


def color_classifier(path: Path, image_size: int = 16) -> Path:
    """Logits = mean of each normalised colour channel: a solid red image is 'red', and so on."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "color_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
    )
    return _save(graph, path, metadata_props(COLOR_LABELS, image_size, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]))


def endless_loop(path: Path, image_size: int = 8, trips: int = 10**12) -> Path:
    """A classifier whose Loop adds 1 to its logits `trips` times: at 10^12 it never finishes."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["logits_in", "one"], ["logits_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("logits_in", TensorProto.FLOAT, [1, 3]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("logits_out", TensorProto.FLOAT, [1, 3]),
        ],
        [numpy_helper.from_array(np.ones((1, 3), np.float32), "one")],
    )
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["start"]),
        helper.make_node("Loop", ["trips", "keep_going", "start"], ["logits"], body=body),
    ]
    graph = helper.make_graph(
        nodes,
        "endless_loop",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        [
            numpy_helper.from_array(np.array(trips, np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "keep_going"),
        ],
    )
    return _save(graph, path, metadata_props(COLOR_LABELS, image_size, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]))
