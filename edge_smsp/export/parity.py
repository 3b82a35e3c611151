"""Parity of an exported graph with the torch model it came from: the inputs it is checked on and onnxruntime's
largest difference from torch's scores."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edge_smsp.core.errors import ExportError, error_text

PARITY_SAMPLES = 4
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def onnxruntime_max_diff(
    payload: bytes, inputs: np.ndarray, reference: np.ndarray, dynamic_batch: bool
) -> float:
    """The largest |difference| between onnxruntime's scores of the exported `payload` and torch's `reference`."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
        if dynamic_batch:
            outputs = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0]
        else:
            outputs = np.concatenate(
                [
                    session.run([OUTPUT_NAME], {INPUT_NAME: inputs[index : index + 1]})[0]
                    for index in range(len(inputs))
                ]
            )
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ExportError(f"onnxruntime cannot run the exported model: {error_text(error)}") from None
    if outputs.shape != reference.shape:
        raise ExportError(f"onnxruntime output shape {outputs.shape} differs from torch {reference.shape}")
    if not np.isfinite(outputs).all():
        raise ExportError(
            "onnxruntime computes NaN or infinite scores where torch computes finite ones; export with another --opset"
        )
    return float(np.abs(outputs.astype(np.float64) - reference.astype(np.float64)).max())


def parity_batch(
    model: nn.Module, parity_inputs: torch.Tensor | None, image_size: int
) -> tuple[torch.Tensor, str]:
    """The inputs parity is checked on (given, or PARITY_SAMPLES seeded random images) and which they are."""
    try:
        parameter = next(model.parameters())
        device = parameter.device
    except StopIteration:
        device = torch.device("cpu")
    if parity_inputs is None:
        generator = torch.Generator().manual_seed(0)
        batch = torch.randn(PARITY_SAMPLES, 3, image_size, image_size, generator=generator)
        return batch.to(device), "random"
    if not isinstance(parity_inputs, torch.Tensor):
        raise ExportError("parity_inputs must be a float tensor [N, 3, H, W]")
    batch = parity_inputs.unsqueeze(0) if parity_inputs.dim() == 3 else parity_inputs
    if batch.dim() != 4 or tuple(batch.shape[1:]) != (3, image_size, image_size) or len(batch) == 0:
        raise ExportError(
            f"parity_inputs must have shape [N, 3, {image_size}, {image_size}], got {list(parity_inputs.shape)}"
        )
    return batch.detach().to(device=device, dtype=torch.float32), "given"


def scores_as_numpy(output: Any) -> np.ndarray:
    """A model's output (a tensor, or a tuple or list led by one) as a float32 array."""
    if isinstance(output, tuple | list):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise ExportError(f"the model must return a tensor, got {type(output).__name__}")
    return output.detach().float().cpu().numpy()
