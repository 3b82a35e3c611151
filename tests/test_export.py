"""ONNX export: real exports of CNNs and a ViT, checker, parity in onnxruntime, metadata, card, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from edge_smsp.cli import main
from edge_smsp.core.errors import ExportError
from edge_smsp.core.version import __version__
from edge_smsp.devices.stack import DEFAULT_OPSET, OLDEST_EXPORT_OPSET
from edge_smsp.export.metadata import METADATA_KEYS, decode_metadata
from edge_smsp.export.onnx_export import export_onnx, load_onnx_checked, newest_export_opset, onnx_metadata
from edge_smsp.models import zoo

SIZE = 32
LABELS = ["tshirt", "trouser", "pullover", "dress", "coat"]


def _metadata(backbone: str, **changes) -> dict:
    return {
        "labels": LABELS,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "backbone": backbone,
        "task": "fashion-mnist:0,1,2,3,4",
        **changes,
    }


def _model(name: str) -> nn.Module:
    return zoo.load_backbone(name, num_classes=len(LABELS), image_size=SIZE)


def _images(count: int = 3) -> torch.Tensor:
    # Smooth "real-looking" images: low-frequency patterns, normalised like the data pipeline does.
    grid = torch.linspace(0, 1, SIZE)
    rows, cols = torch.meshgrid(grid, grid, indexing="ij")
    images = [
        torch.stack([torch.sin(3 * rows * (index + 1)), torch.cos(2 * cols), rows * cols])
        for index in range(count)
    ]
    return (torch.stack(images) - 0.45) / 0.25


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return _model("resnet18")


@pytest.fixture(scope="module")
def resnet18_export(resnet18: nn.Module, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("resnet18") / "model.onnx"
    return export_onnx(
        resnet18, out, image_size=SIZE, metadata=_metadata("resnet18"), parity_inputs=_images()
    )


@pytest.mark.parametrize("name", ["efficientnet_lite0", "deit_small_patch16_224"])
def test_export_passes_checker_and_parity(name: str, tmp_path: Path) -> None:
    model = _model(name)
    images = _images()
    result = export_onnx(
        model, tmp_path / "model.onnx", image_size=SIZE, metadata=_metadata(name), parity_inputs=images
    )
    assert result.max_abs_diff <= 1e-4
    assert result.parity_inputs == "given" and result.parity_samples == 3
    assert result.opset >= 18 and result.simplified and result.exporter == "dynamo"
    _assert_runs_like_torch(result.onnx_path, model, images)
    assert onnx_metadata(result.onnx_path)["backbone"] == name


# Each exporter path: TorchScript below 18, dynamo at 18, the version converter above it (DeiT's attention is
# where asking dynamo for a newer opset directly broke), and the newest opset this host's onnx/onnxruntime allow.
OPSET_CASES = [
    ("efficientnet_lite0", OLDEST_EXPORT_OPSET),
    ("efficientnet_lite0", 19),
    ("efficientnet_lite0", "newest"),
    ("resnet18", 17),
    ("resnet18", DEFAULT_OPSET),
    ("deit_small_patch16_224", OLDEST_EXPORT_OPSET),
    ("deit_small_patch16_224", 23),
    ("deit_small_patch16_224", "newest"),
]


@pytest.mark.parametrize(("name", "opset"), OPSET_CASES)
def test_export_at_a_device_opset_matches_torch(name: str, opset: int | str, tmp_path: Path) -> None:
    opset = newest_export_opset() if opset == "newest" else opset
    model = _model(name)
    images = _images()
    result = export_onnx(
        model,
        tmp_path / "model.onnx",
        image_size=SIZE,
        metadata=_metadata(name),
        parity_inputs=images,
        opset=opset,
    )
    proto = load_onnx_checked(result.onnx_path)
    assert [(entry.domain, entry.version) for entry in proto.opset_import] == [("", opset)]
    assert result.opset == opset and json.loads(result.card_path.read_text())["opset"] == opset
    # The IR version of the ONNX release that brought the opset: a runtime that runs the opset reads the file.
    assert proto.ir_version <= onnx.helper.find_min_ir_version_for(list(proto.opset_import))
    assert result.exporter == ("torchscript" if opset < 18 else "dynamo")
    assert result.max_abs_diff <= 1e-4
    _assert_runs_like_torch(result.onnx_path, model, images)


@pytest.mark.parametrize("opset", [0, OLDEST_EXPORT_OPSET - 1, 999, 18.0, "18", True])
def test_opset_outside_the_supported_range_writes_nothing(
    resnet18: nn.Module, opset: object, tmp_path: Path
) -> None:
    out = tmp_path / "model.onnx"
    with pytest.raises(
        ExportError, match=rf"^opset: must be .*{OLDEST_EXPORT_OPSET}-{newest_export_opset()}"
    ):
        export_onnx(resnet18, out, image_size=SIZE, metadata=_metadata("resnet18"), opset=opset)
    assert list(tmp_path.iterdir()) == []


def test_resnet18_export_file_card_and_metadata(resnet18: nn.Module, resnet18_export) -> None:
    result = resnet18_export
    path = result.onnx_path
    payload = path.read_bytes()
    assert result.size_bytes == len(payload) and result.max_abs_diff <= 1e-4
    assert result.opset == DEFAULT_OPSET  # no opset asked for
    import hashlib

    assert result.sha256 == hashlib.sha256(payload).hexdigest()
    proto = load_onnx_checked(path)
    assert [entry.key for entry in proto.metadata_props] == list(METADATA_KEYS)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [dim.dim_value for dim in dims] == [1, 3, SIZE, SIZE]
    decoded = decode_metadata(onnx_metadata(path))
    assert decoded["labels"] == LABELS
    assert decoded["input_size"] == SIZE
    assert decoded["mean"] == [0.485, 0.456, 0.406] and decoded["std"] == [0.229, 0.224, 0.225]
    assert decoded["ratio"] == 0.0 and decoded["task"] == "fashion-mnist:0,1,2,3,4"
    assert decoded["edge_smsp_version"] == __version__
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["labels"]) == LABELS
    card = json.loads(result.card_path.read_text())
    assert result.card_path == path.with_suffix(".json")
    assert card["sha256"] == result.sha256 and card["size_bytes"] == result.size_bytes
    assert card["metadata"]["labels"] == LABELS and card["parity"]["max_abs_diff"] == result.max_abs_diff
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary files left behind"
    _assert_runs_like_torch(path, resnet18, _images())


def test_dynamic_batch(resnet18: nn.Module, tmp_path: Path) -> None:
    result = export_onnx(
        resnet18, tmp_path / "dyn.onnx", image_size=SIZE, metadata=_metadata("resnet18"), dynamic_batch=True
    )
    assert result.dynamic_batch and result.parity_inputs == "random"
    dims = load_onnx_checked(result.onnx_path).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value
    session = onnxruntime.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": _images(5).numpy()})[0].shape == (5, len(LABELS))


def test_pruned_model_exports_smaller(resnet18: nn.Module, resnet18_export, tmp_path: Path) -> None:
    from edge_smsp.models.prune import prune

    pruned, _ = prune(resnet18, ratio=0.5, image_size=SIZE)
    images = _images()
    result = export_onnx(
        pruned,
        tmp_path / "pruned.onnx",
        image_size=SIZE,
        metadata=_metadata("resnet18", ratio=0.5),
        parity_inputs=images,
    )
    assert result.max_abs_diff <= 1e-4
    assert result.size_bytes < 0.5 * resnet18_export.size_bytes
    assert decode_metadata(result.metadata)["ratio"] == 0.5
    _assert_runs_like_torch(result.onnx_path, pruned, images)


def test_parity_failure_writes_nothing(resnet18: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(
        ExportError, match=r"parity check failed: max \|onnxruntime - torch\| = .* > \d\.\de-1[12]"
    ):
        export_onnx(
            resnet18, tmp_path / "m.onnx", image_size=SIZE, metadata=_metadata("resnet18"), tolerance=1e-12
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": ["a", "b"]}, "metadata.labels: 2 names for a model with 5 outputs"),
        (
            {"labels": ["a", "b", "c", "b", "e"]},
            "metadata.labels: 'b' names more than one class; give each its own",
        ),
        ({"mean": [0.5, 0.5]}, "metadata.mean: must be 3 numbers"),
        ({"std": [0.5, 0.0, 0.5]}, "metadata.std: must be positive"),
        ({"colour": "red"}, "metadata: unknown key"),
        ({"backbone": None}, "metadata.backbone: required"),
        ({"ratio": 1.5}, r"metadata.ratio: must be in \[0, 1\)"),
    ],
)
def test_bad_metadata(resnet18: nn.Module, tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ExportError, match=message):
        export_onnx(
            resnet18, tmp_path / "m.onnx", image_size=SIZE, metadata={**_metadata("resnet18"), **changes}
        )


def test_bad_parity_inputs_and_paths(resnet18: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"parity_inputs must have shape \[N, 3, 32, 32\]"):
        export_onnx(
            resnet18,
            tmp_path / "m.onnx",
            image_size=SIZE,
            metadata=_metadata("resnet18"),
            parity_inputs=torch.zeros(2, 3, 16, 16),
        )
    with pytest.raises(ExportError, match="must end in .onnx"):
        export_onnx(resnet18, tmp_path / "m.bin", image_size=SIZE, metadata=_metadata("resnet18"))
    with pytest.raises(ExportError, match="needs opset >= 18"):
        export_onnx(
            resnet18,
            tmp_path / "m.onnx",
            image_size=SIZE,
            metadata=_metadata("resnet18"),
            opset=15,
            exporter="dynamo",
        )


def test_corrupt_onnx_is_an_export_error(resnet18_export, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not really a protobuf \xff\xfe" * 10)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(resnet18_export.onnx_path.read_bytes()[:5000])
    for path in (garbage, truncated):
        with pytest.raises(ExportError, match=str(path)):
            load_onnx_checked(path)
    with pytest.raises(ExportError, match="no such ONNX file"):
        load_onnx_checked(tmp_path / "missing.onnx")


def test_cli_export_bad_dir_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["export", "--model-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx"), "--json"]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "nope" in captured.err and "no such directory" in captured.err
    (tmp_path / "empty").mkdir()
    code = main(["export", "--model-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "m.onnx")])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_pruned_dir(
    resnet18: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_smsp.models.prune import prune
    from edge_smsp.models.pruned_model import save_pruned

    pruned, _ = prune(resnet18, ratio=0.25, image_size=SIZE)
    save_pruned(pruned, tmp_path / "pruned", {"backbone": "resnet18", "class_names": LABELS, "ratio": 0.25})
    out = tmp_path / "deploy" / "model.onnx"
    code = main(["export", "--model-dir", str(tmp_path / "pruned"), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    payload = json.loads(captured.out)
    assert payload["onnx_path"] == str(out) and payload["size_bytes"] == out.stat().st_size
    assert payload["max_abs_diff"] <= 1e-4
    decoded = decode_metadata(onnx_metadata(out))
    assert decoded["labels"] == LABELS and decoded["ratio"] == 0.25 and decoded["backbone"] == "resnet18"
    assert decoded["input_size"] == SIZE


def _assert_runs_like_torch(path: Path, model: nn.Module, images: torch.Tensor) -> None:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(images).numpy()
    got = np.concatenate([session.run(None, {"input": image[None].numpy()})[0] for image in images])
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    assert onnx.load(str(path)).graph.output[0].name == "logits"


def test_weights_that_overflow_and_negative_batchnorm_variances_are_named(
    resnet18: nn.Module, tmp_path: Path
) -> None:
    """Weights x 1e30 gave 'onnxruntime produced non-finite outputs' after the export's seconds; a negative
    running variance loaded silently. The first is now said of the model before the export, the second at load."""
    import copy

    from safetensors.torch import load_file, save_file

    from edge_smsp.core.errors import PruneError
    from edge_smsp.models.pruned_model import WEIGHTS_FILE, load_pruned, save_pruned

    huge = copy.deepcopy(resnet18)
    with torch.no_grad():
        for parameter in huge.parameters():
            parameter.mul_(1e30)
    with pytest.raises(
        ExportError, match=r"computes NaN or infinite scores on random inputs \(in torch, before"
    ):
        export_onnx(huge, tmp_path / "m.onnx", image_size=SIZE, metadata=_metadata("resnet18"))
    assert list(tmp_path.iterdir()) == []
    save_pruned(resnet18, tmp_path / "saved", {"backbone": "resnet18", "class_names": LABELS, "ratio": 0.0})
    weights = tmp_path / "saved" / WEIGHTS_FILE
    state = load_file(weights)
    state["bn1.running_var"][3] = -1.0
    save_file(state, weights)
    with pytest.raises(
        PruneError, match=r"negative BatchNorm variances in bn1.running_var: the file is damaged"
    ):
        load_pruned(tmp_path / "saved")
