"""What converting an fp32 graph to float16 truncates, counted once instead of warned per tensor.

onnxconverter-common clips every float32 weight outside [MIN_POSITIVE, MAX_FINITE] in magnitude (zero kept) to
that range, and says so with one `warnings.warn` per tensor and bound, which would reach the user's terminal.
The conversion runs with those warnings caught (`quiet`), and the result reports how many values were truncated.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

# onnxconverter-common's defaults, passed to it explicitly so that the count below uses the same bounds.
MIN_POSITIVE = 1e-7
MAX_FINITE = 1e4


@contextlib.contextmanager
def quiet() -> Iterator[list[warnings.WarningMessage]]:
    """Warnings raised inside are recorded in the yielded list, never shown."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def truncated(source: onnx.ModelProto, converted: onnx.ModelProto) -> dict[str, int]:
    """{'truncated_values', 'truncated_tensors'}: the float32 values of `source` that became float16 in
    `converted` (initializers and Constant nodes, matched by name) and lay outside the converter's range."""
    before = _float_tensors(source, onnx.TensorProto.FLOAT)
    after = _float_tensors(converted, onnx.TensorProto.FLOAT16)
    values = tensors = 0
    for name in before.keys() & after.keys():
        magnitude = np.abs(numpy_helper.to_array(before[name]).astype(np.float64))
        count = int(
            np.count_nonzero((magnitude > MAX_FINITE) | ((magnitude > 0) & (magnitude < MIN_POSITIVE)))
        )
        values += count
        tensors += count > 0
    return {"truncated_values": values, "truncated_tensors": tensors}


def _float_tensors(model: onnx.ModelProto, data_type: int) -> dict[str, onnx.TensorProto]:
    found = {tensor.name: tensor for tensor in model.graph.initializer if tensor.data_type == data_type}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.t.data_type == data_type:
                    found[node.output[0]] = attribute.t
    return found
