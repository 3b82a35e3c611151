"""A second runtime: pruned exports of the first-class backbones load in OpenVINO and match onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from edge_smsp.criteria import score_units
from edge_smsp.export.onnx_export import export_onnx
from edge_smsp.models import zoo
from edge_smsp.models.prune import prune

openvino = pytest.importorskip("openvino", reason="pip install openvino (in the dev extras)")

SIZE = 32
RATIO = 0.5
LABELS = ["a", "b", "c", "d", "e"]
# Both runtimes compute in fp32 with their own kernels (Winograd, fused attention...): 1e-4 absolute on logits.
TOLERANCE = 1e-4


def _images(count: int = 3) -> np.ndarray:
    # Smooth, normalised, real-looking images rather than noise.
    grid = np.linspace(0, 1, SIZE, dtype=np.float32)
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    images = [
        np.stack([np.sin(3 * rows * (index + 1)), np.cos(2 * cols), rows * cols]) for index in range(count)
    ]
    return ((np.stack(images) - 0.45) / 0.25).astype(np.float32)


@pytest.mark.parametrize("name", ["resnet18", "deit_small_patch16_224", "efficientnet_lite0"])
def test_pruned_export_runs_in_openvino_like_onnxruntime(name: str, tmp_path: Path) -> None:
    backbone = zoo.load_backbone(
        name, pretrained=zoo.default_pretrained(name), num_classes=len(LABELS), image_size=SIZE
    )
    pruned, summary = prune(backbone, score_units(backbone, "magnitude"), RATIO)
    assert summary.params_after < summary.params_before
    images = _images()
    result = export_onnx(
        pruned,
        tmp_path / "model.onnx",
        image_size=SIZE,
        metadata={"labels": LABELS, "mean": [0.5] * 3, "std": [0.25] * 3, "backbone": name, "ratio": RATIO},
        parity_inputs=torch.from_numpy(images),
    )
    assert result.max_abs_diff <= TOLERANCE  # torch vs onnxruntime

    session = onnxruntime.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    core = openvino.Core()
    # CPUs with bf16/AMX units would otherwise run OpenVINO in bf16 by default.
    compiled = core.compile_model(str(result.onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    worst = 0.0
    for image in images:
        batch = image[None]
        expected = session.run(None, {"input": batch})[0]
        actual = compiled(batch)[compiled.output(0)]
        assert actual.shape == expected.shape == (1, len(LABELS))
        assert np.argmax(actual) == np.argmax(expected)
        worst = max(worst, float(np.abs(actual - expected).max()))
    print(f"\n{name} pruned at {RATIO}: max |openvino - onnxruntime| = {worst:.2e}")
    assert worst <= TOLERANCE
