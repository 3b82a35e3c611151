"""The torch tier of on-device adaptation (`adapt --tier torch`): the bundle's graph interpreted as torch ops
against the numpy engine (forward, and backward on a trainable tail), the whole recipe end to end on real
Fashion-MNIST images with the written ONNX checked in onnxruntime, and a run in a device venv that has torch but
neither edge_smsp nor timm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper

from edge_smsp.devices.adapt_memory import predict_adapt_memory
from edge_smsp.export.adaptable import bundle_from_onnx
from edge_smsp.export.feature_graph import measure_bundle
from tests.light_adapt_helpers import export_unfused, image_folder, tiny_model

RUNTIME_DIR = Path(__file__).resolve().parents[1] / "runtime"
sys.path.insert(0, str(RUNTIME_DIR))

from edge_smsp_runtime.bundle import load_bundle  # noqa: E402
from edge_smsp_runtime.graph import Graph, cross_entropy  # noqa: E402
from edge_smsp_runtime.torch_tier import TorchGraph  # noqa: E402

CLASSES = [0, 2, 4]
SIZE = 32
# What torch imports (its own dependencies), linked into a bare device venv; timm and edge_smsp are not.
TORCH_DEPENDENCIES = ("torch", "torchgen", "typing_extensions.py", "sympy", "mpmath", "networkx", "filelock",
                      "jinja2", "markupsafe", "fsspec", "numpy", "numpy.libs", "onnxruntime", "nvidia", "cuda",
                      "triton", "setuptools")  # fmt: skip


def run_runtime(
    *args: str, python: str = sys.executable, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(RUNTIME_DIR), OMP_NUM_THREADS="1")
    env.pop("EDGE_SMSP_RUNTIME_DEBUG", None)
    return subprocess.run(
        [python, "-m", "edge_smsp_runtime", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    raw = export_unfused(tiny_model(len(CLASSES)), root / "raw.onnx", SIZE)
    bundle_from_onnx(
        raw, root / "bundle", labels=["a", "b", "c"], mean=[0.5] * 3, std=[0.25] * 3, input_size=SIZE
    )
    return root / "bundle"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder(tmp_path_factory.mktemp("images"), CLASSES, 40, fmt="pgm")


def _inputs(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, SIZE, SIZE)).astype(np.float32)


@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_forward_matches_the_numpy_engine(bundle_dir: Path, channels_last: bool) -> None:
    graph = load_bundle(str(bundle_dir / "model.onnx")).graph
    x = _inputs(8)
    net = TorchGraph(torch, graph, channels_last=channels_last)
    everything = range(len(graph.nodes))
    for training in (False, True):
        ours, _ = graph.forward({graph.input_name: x}, everything, graph.output_name, training=training)
        with torch.no_grad():
            theirs = net.forward({graph.input_name: net.input(x)}, everything, graph.output_name, training)
        assert np.abs(theirs.numpy() - ours).max() <= 1e-4


def test_torch_gradients_match_the_numpy_engines_backward_on_a_tail(bundle_dir: Path) -> None:
    bundle = load_bundle(str(bundle_dir / "model.onnx"))
    graph = bundle.graph
    cut = bundle.cuts[2]
    front, tail = graph.split(cut)
    x, labels = _inputs(16, seed=1), np.arange(16) % len(CLASSES)
    cached, _ = graph.forward({graph.input_name: x}, front, cut)
    names = graph.trainable(tail)
    net = TorchGraph(
        torch, graph
    )  # its own copy of the parameters, before the numpy engine updates statistics
    logits, caches = graph.forward({cut: cached}, tail, graph.output_name, training=True, keep=True)
    loss, grad = cross_entropy(logits, labels)
    grads = graph.backward(tail, caches, graph.output_name, grad, names)

    torch_logits = net.forward({cut: torch.from_numpy(cached)}, tail, graph.output_name, training=True)
    reference = torch.nn.functional.cross_entropy(torch_logits, torch.from_numpy(labels))
    reference.backward()
    assert abs(loss - float(reference.detach())) <= 1e-5
    assert all(net.tensors[name].grad is not None for name in names)  # the tail's parameters, all of them
    assert all(net.tensors[name].grad is None for name in set(net.learnable) - set(names))
    largest = max(float(net.tensors[name].grad.norm()) for name in names)
    errors = {}
    for name in names:
        expected = net.tensors[name].grad.numpy()
        errors[name] = float(
            np.linalg.norm(grads[name] - expected) / max(np.linalg.norm(expected), 1e-4 * largest)
        )
    assert max(errors.values()) <= 1e-3, sorted(errors.items(), key=lambda item: -item[1])[:3]


def _check_written(out: Path, bundle_dir: Path, report: dict) -> None:
    """The written file alone: its initializers in the torch interpreter agree with a fresh onnxruntime session."""
    spec = json.loads((bundle_dir / "graph.json").read_text())
    params = {t.name: numpy_helper.to_array(t).copy() for t in onnx.load(str(out)).graph.initializer}
    graph = Graph(spec["nodes"], params, "input", "logits")
    net = TorchGraph(torch, graph)
    x = _inputs(12, seed=2)
    with torch.no_grad():
        ours = net.forward({"input": net.input(x)}, range(len(graph.nodes)), "logits").numpy()
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"input": x})[0]
    assert (ours.argmax(1) == theirs.argmax(1)).all() and np.abs(ours - theirs).max() <= 1e-3
    assert json.loads(session.get_modelmeta().custom_metadata_map["labels"]) == report["classes"]
    original = load_bundle(str(bundle_dir / "model.onnx")).params
    changed = [name for name in spec["writeback"] if not np.array_equal(original[name], params[name])]
    unchanged = sorted(set(spec["writeback"]) - set(changed))
    # Every weight and statistic was trained or re-estimated. A BatchNorm shift that feeds a convolution followed by
    # batch-statistics BatchNorm has a gradient of zero in exact arithmetic (the next BN removes any constant
    # shift): whether float rounding moves it depends on the machine, so such biases alone may stay as they were.
    assert all(name.endswith(".bias") for name in unchanged), unchanged
    assert len(unchanged) <= len(spec["writeback"]) // 20, unchanged


def test_torch_tier_improves_on_the_imprinted_start_and_writes_a_model_that_agrees(
    bundle_dir: Path, images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapted.onnx"
    result = run_runtime("adapt", "--tier", "torch", "--model", str(bundle_dir / "model.onnx"), "--data", str(images),
                         "--iters", "30", "--out", str(out), "--threads", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tier"] == "torch" and report["torch_version"] == torch.__version__
    assert report["classes"] == ["coat", "pullover", "tshirt"] and report["val_images"] == 24
    assert report["trainable_blocks"] == report["cuts_available"] - 1 and report["cut"] == "input"
    assert report["accuracy"] > report["accuracy_imprinted"] and report["final_loss"] < report["first_loss"]
    assert report["accuracy_onnxruntime"] == report["accuracy"] and report["agreement"] == 1.0
    assert report["max_abs_logit_diff"] <= 1e-3
    assert sorted(os.listdir(tmp_path)) == ["adapted.onnx"]
    _check_written(out, bundle_dir, report)


def _torch_venv(root: Path) -> str:
    """A bare venv whose site-packages links torch and what torch imports from this venv's, and nothing else."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = str(root / "bin" / "python")
    source = Path(torch.__file__).resolve().parents[1]
    linked = root / "torch-only"
    linked.mkdir()
    for name in TORCH_DEPENDENCIES:
        if (source / name).exists():
            (linked / name).symlink_to(source / name)
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "torch_only.pth").write_text(str(linked) + "\n")
    return python


def test_torch_tier_runs_in_a_venv_without_edge_smsp_or_timm(
    bundle_dir: Path, images: Path, tmp_path: Path
) -> None:
    python = _torch_venv(tmp_path / "device")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    for module in ("timm", "edge_smsp", "PIL"):
        check = subprocess.run(
            [python, "-c", f"import {module}"], capture_output=True, text=True, env=env, cwd=tmp_path
        )
        assert check.returncode != 0 and "ModuleNotFoundError" in check.stderr, module
    info = run_runtime("info", python=python)
    assert info.returncode == 0, info.stderr
    facts = json.loads(info.stdout)
    assert facts["torch_version"] == torch.__version__ and facts["mem_available_mib"] > 0
    assert "torch" not in facts.get("modules", [])  # info reads torch/version.py, it imports nothing
    torch_rss = subprocess.run(
        [python, "-c", "import resource, numpy, torch; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
        check=True, capture_output=True, text=True, env=env,
    ).stdout.split()[-1]  # fmt: skip
    out = tmp_path / "adapted.onnx"
    result = run_runtime("adapt", "--tier", "torch", "--model", str(bundle_dir / "model.onnx"), "--data", str(images),
                         "--iters", "5", "--batch-size", "32", "--out", str(out), "--threads", "1", python=python)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tier"] == "torch" and report["agreement"] == 1.0 and out.is_file()
    # The plan's prediction for this run holds its measured peak (the torch tier's memory model).
    predicted = predict_adapt_memory(
        measure_bundle(bundle_dir).sizes, trainable_blocks=0, train_counts=[32] * 3, val_counts=[8] * 3,
        batch_size=32, imported_rss_mib=facts["imported_rss_mib"], tier="torch",
        torch_rss_mib=int(torch_rss) / 1024.0,
    )  # fmt: skip
    assert predicted.peak_bytes >= report["peak_rss_mib"] * 2**20, (
        predicted.peak_bytes / 2**20,
        report["peak_rss_mib"],
    )
