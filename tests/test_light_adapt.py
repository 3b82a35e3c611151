"""The light tier of on-device adaptation: the numpy engine against onnxruntime and torch autograd, the bundle's
byte-exact write-back, `python -m edge_smsp_runtime adapt` and `describe` end to end on real Fashion-MNIST
images, their one-line errors, and an `adapt` run on the Python 3.6 + onnxruntime 1.10 stack."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from edge_smsp.export.adaptable import bundle_from_onnx
from tests.light_adapt_helpers import export_unfused, image_folder, tiny_model, write_png

RUNTIME_DIR = Path(__file__).resolve().parents[1] / "runtime"
sys.path.insert(0, str(RUNTIME_DIR))

from edge_smsp_runtime.bundle import load_bundle  # noqa: E402
from edge_smsp_runtime.graph import Graph, cross_entropy  # noqa: E402

CLASSES = [0, 2, 4]  # T-shirt/top, pullover, coat: the demo's task
SIZE = 32
WHEELS = Path(os.environ.get("EDGE_SMSP_WHEELS", Path.home() / ".cache" / "edge-smsp" / "wheels"))


def run_runtime(
    *args: str, python: str = sys.executable, timeout: int = 120, preexec_fn: Any = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(RUNTIME_DIR), OMP_NUM_THREADS="1")
    env.pop("EDGE_SMSP_RUNTIME_DEBUG", None)
    return subprocess.run(
        [python, "-m", "edge_smsp_runtime", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        preexec_fn=preexec_fn,
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
    return image_folder(tmp_path_factory.mktemp("images"), CLASSES, 40)


def _inputs(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, SIZE, SIZE)).astype(np.float32)


def test_export_keeps_batchnorm_and_the_bundle_writes_back_byte_exactly(bundle_dir: Path) -> None:
    raw = onnx.load(str(bundle_dir.parent / "raw.onnx"))
    assert sum(node.op_type == "BatchNormalization" for node in raw.graph.node) == 16  # not folded
    assert {"Shape", "Pad"} <= {node.op_type for node in raw.graph.node}  # the "same" stem's padding
    spec = json.loads((bundle_dir / "graph.json").read_text())
    assert {"format", "version", "model_sha256", "input", "output", "labels", "preprocessing", "nodes", "params",
            "writeback", "classifier", "cuts"} <= set(spec)  # fmt: skip
    assert (
        spec["cuts"][0]["tensor"] == spec["classifier"]["features"] and spec["cuts"][-1]["tensor"] == "input"
    )
    counts = [cut["parameters"] for cut in spec["cuts"]]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    bundle = load_bundle(str(bundle_dir / "model.onnx"))  # checks every offset against params.npz
    model = onnx.load(str(bundle_dir / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert {entry.key: entry.value for entry in model.metadata_props}["labels"] == '["a", "b", "c"]'
    # Shared fresh-BN initializers (Identity nodes of the exporter) got one copy each; the padding computed
    # from the input's shape became the stem convolution's own (asymmetric) pads.
    assert not [node for node in model.graph.node if node.op_type in ("Identity", "Constant", "Shape", "Pad")]
    assert spec["nodes"][0]["op"] == "Conv" and spec["nodes"][0]["attrs"]["pads"] == [0, 0, 1, 1]
    assert len(spec["writeback"]) == 16 * 4 + 16 + 2  # BN: 4 each; 16 conv kernels; the Gemm
    # Any new values at the offsets give the model those values.
    from edge_smsp_runtime.bundle import adapted_bytes

    for name in spec["writeback"]:
        bundle.params[name] += 0.5
    patched = onnx.load_from_string(adapted_bytes(bundle, ["x", "y", "z"]))
    for tensor in patched.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), bundle.params[tensor.name])
    assert {tensor.name for tensor in patched.graph.initializer} >= set(spec["writeback"])
    assert {entry.key: entry.value for entry in patched.metadata_props}["labels"] == '["x", "y", "z"]'


def test_numpy_forward_matches_onnxruntime(bundle_dir: Path) -> None:
    bundle = load_bundle(str(bundle_dir / "model.onnx"))
    graph = bundle.graph
    x = _inputs(8)
    ours, _ = graph.forward({graph.input_name: x}, range(len(graph.nodes)), graph.output_name)
    session = onnxruntime.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"input": x})[0]
    assert np.abs(ours - theirs).max() <= 1e-4


def test_numpy_backward_matches_torch_autograd_in_train_mode(bundle_dir: Path) -> None:
    bundle = load_bundle(str(bundle_dir / "model.onnx"))
    graph = bundle.graph
    x, labels = _inputs(16, seed=1), np.arange(16) % len(CLASSES)
    _, tail = graph.split(graph.input_name)
    names = graph.trainable(tail)
    logits, caches = graph.forward({graph.input_name: x}, tail, graph.output_name, training=True, keep=True)
    loss, grad = cross_entropy(logits, labels)
    stats = {
        index: cache for index, cache in caches.items() if graph.nodes[index]["op"] == "BatchNormalization"
    }
    grads = graph.backward(tail, caches, graph.output_name, grad, [*names, graph.input_name])
    graph.update_running(stats)

    model = tiny_model(len(CLASSES)).train()
    inputs = torch.from_numpy(x).requires_grad_(True)
    reference = F.cross_entropy(model(inputs), torch.from_numpy(labels))
    reference.backward()
    assert abs(loss - float(reference.detach())) <= 1e-5
    parameters = dict(model.named_parameters())
    assert sorted(names) == sorted(parameters)  # every parameter of the model, by its state_dict name
    largest = max(float(parameters[name].grad.norm()) for name in names)
    errors = {}
    for name in [*names, graph.input_name]:
        expected = (inputs.grad if name == graph.input_name else parameters[name].grad).numpy()
        # A BN shift right before another BN has a zero gradient (float noise): relative to the largest norm.
        floor = 1e-4 * largest
        errors[name] = float(np.linalg.norm(grads[name] - expected) / max(np.linalg.norm(expected), floor))
    assert max(errors.values()) <= 1e-3, sorted(errors.items(), key=lambda item: -item[1])[:3]
    for name, buffer in model.named_buffers():
        if "running" in name:
            np.testing.assert_allclose(bundle.params[name], buffer.numpy(), rtol=1e-5, atol=1e-6)


def test_adapt_improves_on_the_imprinted_start_and_writes_a_model_that_agrees(
    bundle_dir: Path, images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapted.onnx"
    result = run_runtime(
        "adapt",
        "--model",
        str(bundle_dir / "model.onnx"),
        "--data",
        str(images),
        "--iters",
        "30",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["classes"] == ["coat", "pullover", "tshirt"] and report["val_images"] == 24
    assert report["accuracy"] > report["accuracy_imprinted"]
    assert report["accuracy_onnxruntime"] == report["accuracy"] and report["agreement"] == 1.0
    assert report["max_abs_logit_diff"] <= 1e-3
    assert set(report["seconds"]) == {"load", "adaptive_bn", "imprint", "front_cache", "train", "evaluate", "write",
                                      "verify"}  # fmt: skip
    assert report["cache_bytes"] > 0 and report["peak_rss_mib"] > 0 and report["parameters_trained"] > 0
    assert sorted(os.listdir(tmp_path)) == ["adapted.onnx"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert (
        out.stat().st_mode & 0o777 == 0o666 & ~umask
    )  # an ordinary file, as the host writes: not mkstemp's 0600

    # The written file alone: its initializers in the numpy engine, and a fresh onnxruntime session.
    model = onnx.load(str(out))
    spec = json.loads((bundle_dir / "graph.json").read_text())
    params = {tensor.name: numpy_helper.to_array(tensor).copy() for tensor in model.graph.initializer}
    graph = Graph(spec["nodes"], params, "input", "logits")
    x = _inputs(12, seed=2)
    ours, _ = graph.forward({"input": x}, range(len(graph.nodes)), "logits")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"input": x})[0]
    assert (ours.argmax(1) == theirs.argmax(1)).all() and np.abs(ours - theirs).max() <= 1e-3
    assert json.loads(session.get_modelmeta().custom_metadata_map["labels"]) == report["classes"]
    original = load_bundle(str(bundle_dir / "model.onnx")).params
    assert any(not np.array_equal(original[name], params[name]) for name in spec["writeback"])


def test_adapt_writes_through_an_out_symlink_and_never_onto_the_bundles_model(
    bundle_dir: Path, images: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared" / "current.onnx"
    shared.parent.mkdir()
    shared.write_bytes(b"the previous model")
    link = tmp_path / "app" / "model.onnx"
    link.parent.mkdir()
    link.symlink_to(shared)
    args = ("adapt", "--model", str(bundle_dir), "--data", str(images), "--iters", "1", "--out")
    result = run_runtime(*args, str(link))
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(
        shared
    )  # the link stays, its target is the new model
    assert onnx.load(str(link)).graph.output[0].name == "logits"
    assert sorted(os.listdir(shared.parent)) == ["current.onnx"]  # no temporary left beside it
    # A link to the bundle's own model.onnx would overwrite the model the bundle is checked against.
    (tmp_path / "sneaky.onnx").symlink_to(bundle_dir / "model.onnx")
    before = (bundle_dir / "model.onnx").read_bytes()
    _one_line_error(
        run_runtime(*args, str(tmp_path / "sneaky.onnx")), "must not be the bundle's own model.onnx"
    )
    assert (bundle_dir / "model.onnx").read_bytes() == before


def _one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _bad_folder(kind: str, root: Path, images: Path) -> tuple[Path, str]:
    """A broken copy of the task's images and what the error must name."""

    def copy_classes(target: Path, names: list[str], count: int = 3) -> None:
        for name in names:
            (target / name).mkdir(parents=True)
            for source in sorted((images / name).iterdir())[:count]:
                (target / name / source.name).write_bytes(source.read_bytes())

    data = root / "data"
    if kind == "missing":
        return root / "nowhere", "not found"
    if kind == "one class":
        copy_classes(data, ["coat"])
        return data, "at least two class folders"
    if kind == "one image":
        copy_classes(data, ["coat", "pullover"])
        copy_classes(data, ["tshirt"], count=1)
        return data, "'tshirt'"
    if kind == "not an image":
        copy_classes(data, ["coat", "pullover", "tshirt"])
        (data / "coat" / "notes.txt").write_text("not a picture")
        return data, "notes.txt"
    if kind == "corrupt image":
        copy_classes(data, ["coat", "pullover", "tshirt"])
        (data / "pullover" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
        return data, "broken.png"
    if kind == "split classes differ":
        copy_classes(data / "train", ["coat", "pullover", "tshirt"])
        copy_classes(data / "val", ["coat", "pullover", "tshirt"])
        (data / "val" / "tshirt").rename(data / "val" / "dress")
        return data, "different classes"
    if kind == "four classes":
        copy_classes(data, ["coat", "pullover", "tshirt"])
        (data / "bag").mkdir()
        for number in range(2):
            write_png(data / "bag" / f"{number}.png", np.full((28, 28), 40 * number, dtype=np.uint8))
        return data, "3 outputs"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "one class",
        "one image",
        "not an image",
        "corrupt image",
        "split classes differ",
        "four classes",
    ],
)
def test_bad_data_is_one_line_and_writes_nothing(
    kind: str, bundle_dir: Path, images: Path, tmp_path: Path
) -> None:
    data, fragment = _bad_folder(kind, tmp_path, images)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run_runtime(
        "adapt", "--model", str(bundle_dir / "model.onnx"), "--data", str(data), "--iters", "2",
        "--out", str(out_dir / "m.onnx"),
    )  # fmt: skip
    _one_line_error(result, fragment)
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize(
    "kind", ["unwritable", "no such directory", "a directory", "not an .onnx name", "too many blocks", "full"]
)
def test_bad_output_or_option_is_one_line_and_writes_nothing(
    kind: str, bundle_dir: Path, images: Path, tmp_path: Path
) -> None:
    extra: list[str] = []
    if kind == "unwritable":
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        # root writes anywhere it may: /proc refuses new files to everyone
        out, fragment = ((Path("/proc") if os.geteuid() == 0 else locked) / "m.onnx"), "cannot write"
    elif kind == "no such directory":
        out, fragment = tmp_path / "nowhere" / "m.onnx", "does not exist"
    elif kind == "a directory":
        out, fragment = tmp_path / "d.onnx", "is a directory"
        out.mkdir()
    elif (
        kind == "full"
    ):  # the file-size limit fails the write as a full disk does, inside the runtime's writer
        out, fragment = tmp_path / "m.onnx", "m.onnx: File too large; free space there or name another --out"
    elif kind == "not an .onnx name":  # refused before the bundle is even read
        out, fragment = tmp_path / "m.txt", "argument --out: must name an .onnx file, got"
    else:
        out, fragment, extra = (
            tmp_path / "m.onnx",
            "--trainable-blocks must be from 0 to 7",
            ["--trainable-blocks", "8"],
        )
    before = sorted(os.listdir(tmp_path))
    result = run_runtime(
        "adapt", "--model", str(bundle_dir / "model.onnx"), "--data", str(images), "--iters", "2", "--out", str(out),
        *extra, preexec_fn=_small_files if kind == "full" else None,
    )  # fmt: skip
    _one_line_error(result, fragment)
    assert sorted(os.listdir(tmp_path)) == before


def _small_files() -> None:
    """Files of at most 4 KiB, and a write past that an error (EFBIG) instead of the signal that would kill."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_images_in_sub_folders_of_a_class_folder_are_read_by_scan_and_adapt_alike(
    bundle_dir: Path, images: Path, tmp_path: Path
) -> None:
    """An image one (or two) folders below its class folder belongs to that class, as in the host's
    ImageFolder and torchvision's: scan counts it, adapt trains and validates on it, in path order."""
    data = tmp_path / "data"
    for split in ("train", "val"):
        for name in ("coat", "pullover", "tshirt"):
            (data / split / name).mkdir(parents=True)
    for name in ("coat", "pullover", "tshirt"):
        sources = sorted((images / name).iterdir())
        for number, source in enumerate(sources[:6]):  # 2 at the top, 2 one deeper, 2 two deeper
            depth = ("", "sub", "sub/deeper")[number // 2]
            folder = data / "train" / name / depth
            folder.mkdir(parents=True, exist_ok=True)
            (folder / source.name).write_bytes(source.read_bytes())
        (data / "val" / name / "nested").mkdir()
        for source in sources[6:8]:
            (data / "val" / name / "nested" / source.name).write_bytes(source.read_bytes())
    scan = run_runtime("scan", "--data", str(data))
    assert scan.returncode == 0, scan.stderr
    report = json.loads(scan.stdout)
    assert (report["train_counts"], report["val_counts"]) == ([6, 6, 6], [2, 2, 2]), report

    from edge_smsp_runtime.imagefolder import read_task

    names, train, val = read_task(str(data), 0.2, 0)
    assert (len(train), len(val)) == (18, 6)
    coat = [path for path, label in train if label == names.index("coat")]
    assert coat == sorted(coat) and sum("/sub/" in path for path in coat) == 4
    out = tmp_path / "adapted.onnx"
    adapt = run_runtime(
        "adapt", "--model", str(bundle_dir / "model.onnx"), "--data", str(data), "--iters", "1",
        "--trainable-blocks", "0", "--out", str(out),
    )  # fmt: skip
    assert adapt.returncode == 0, adapt.stderr
    assert (json.loads(adapt.stdout)["train_images"], json.loads(adapt.stdout)["val_images"]) == (18, 6)


class Features(nn.Module):
    """A feature graph: images -> 1280 pooled features (an EfficientNet-Lite0's width)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 1280, 4, 4), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_describe_returns_class_prototypes_small_enough(tmp_path: Path) -> None:
    path = export_unfused(Features().eval(), tmp_path / "features.onnx", SIZE)
    model = onnx.load(str(path))
    for key, value in {
        "mean": "[0.5, 0.5, 0.5]",
        "std": "[0.25, 0.25, 0.25]",
        "input_size": str(SIZE),
    }.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    data = image_folder(tmp_path / "ten", list(range(10)), 6)
    result = run_runtime("describe", "--model", str(path), "--data", str(data), "--sample", "40")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.encode()) <= 64 * 1024, len(result.stdout.encode())
    report = json.loads(result.stdout)
    assert len(report["classes"]) == 10 and report["counts"] == [4] * 10 and report["feature_dim"] == 1280
    prototypes = np.frombuffer(base64.b64decode(report["prototypes"]["base64"]), dtype="<f2").reshape(
        10, 1280
    )
    assert np.isfinite(prototypes).all() and np.abs(prototypes).max() > 0
    # The host's descriptor of the same sample: the mean raw feature per class, float16.
    from edge_smsp_runtime.imagefolder import balanced_sample, load_images, read_task

    _, train, _ = read_task(str(data), 0.2, 0)
    picked = balanced_sample(np.array([label for _, label in train]), 40, 0)
    preprocessing = {"input_size": [SIZE, SIZE], "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
    batch, labels = load_images([train[index] for index in picked], preprocessing)
    with torch.no_grad():
        features = Features().eval()(torch.from_numpy(batch)).double().numpy()
    means = np.stack([features[labels == label].mean(axis=0) for label in range(10)]).astype(np.float16)
    np.testing.assert_allclose(prototypes.astype(np.float32), means.astype(np.float32), rtol=2e-3, atol=1e-4)


def test_runtime_modules_parse_as_python_3_6() -> None:
    import ast

    for name in ("ops", "graph", "bundle", "imagefolder", "adapt", "describe", "probe"):
        ast.parse((RUNTIME_DIR / "edge_smsp_runtime" / f"{name}.py").read_text(), feature_version=(3, 6))


@pytest.mark.skipif(not (WHEELS / "jetpack-4.6" / "stack.json").is_file(), reason="no JetPack 4.6 wheel set")
def test_adapt_on_the_python_3_6_stack(bundle_dir: Path, tmp_path: Path) -> None:
    stack = json.loads((WHEELS / "jetpack-4.6" / "stack.json").read_text())
    if not Path(stack["python"]).is_file():
        pytest.skip(f"{stack['python']} is gone: run scripts/setup.sh")
    venv = tmp_path / "py36"
    subprocess.run([stack["python"], "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--only-binary=:all:",
         "--find-links", str(WHEELS / "jetpack-4.6"), "--python-version", "3.6", "--implementation", "cp",
         "--target", site, *stack["requirements"]],
        check=True, timeout=300,
    )  # fmt: skip
    data = image_folder(tmp_path / "pgm", CLASSES, 20, fmt="pgm", split=True)  # no Pillow there
    out = tmp_path / "adapted.onnx"
    result = run_runtime(
        "adapt", "--model", str(bundle_dir / "model.onnx"), "--data", str(data), "--iters", "5", "--out", str(out),
        python=python,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["agreement"] == 1.0 and report["max_abs_logit_diff"] <= 1e-3 and out.is_file()
    assert report["val_images"] == 12
