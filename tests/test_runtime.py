"""Device runtime: bench and infer reports on real ONNX models, one-line errors, numpy-only image decoding."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from edge_smsp_runtime import METADATA_KEYS
from edge_smsp_runtime.backends import BACKENDS, backend_names, get_backend
from edge_smsp_runtime.errors import RuntimeToolError
from edge_smsp_runtime.images import load_image, preprocess, resize_and_crop, resize_antialiased
from edge_smsp_runtime.opsets import (
    NEWEST_KNOWN_OPSET,
    ONNXRUNTIME_OPSETS,
    major_minor,
    onnxruntime_max_opset,
)

from edge_smsp.transport import base as transport_module
from edge_smsp.transport import ssh as ssh_module
from tests.tiny_onnx import COLOR_LABELS, color_classifier, tiny_convnet

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DIR = ROOT / "runtime"
RUNTIME_SOURCES = sorted((RUNTIME_DIR / "edge_smsp_runtime").rglob("*.py"))

BENCH_KEYS = {
    "command",
    "runtime_version",
    "runtime_path",
    "runtime",
    "precision",
    "engine_version",
    "model_path",
    "model_size_bytes",
    "model_sha256",
    "opset",
    "ir_version",
    "inputs",
    "outputs",
    "input_shape",
    "metadata",
    "batch_size",
    "warmup_runs",
    "min_runs",
    "min_seconds",
    "runs",
    "seed",
    "threads",
    "providers_requested",
    "providers_unavailable",
    "providers",
    "session_creation_ms",
    "first_inference_ms",
    "latency_ms",
    "measured_seconds",
    "throughput_ips",
    "baseline_rss_mib",
    "peak_rss_mib",
    "onnxruntime_version",
    "numpy_version",
    "python_version",
    "device",
}


def run_runtime(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(RUNTIME_DIR))
    return subprocess.run(
        [python, "-m", "edge_smsp_runtime", *args], capture_output=True, text=True, env=env, timeout=60
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def convnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_convnet(tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture(scope="module")
def colors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return color_classifier(tmp_path_factory.mktemp("models") / "colors.onnx")


def test_bench_report_has_every_key_with_sane_values(convnet: Path) -> None:
    result = run_runtime(
        "bench", "--model", str(convnet), "--runs", "40", "--min-seconds", "0", "--seed", "3"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report.keys() >= BENCH_KEYS
    latency = report["latency_ms"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert latency["min"] <= latency["mean"] <= latency["max"] and latency["std"] >= 0
    assert report["runs"] >= 40 and report["warmup_runs"] >= 10 and report["batch_size"] == 1
    assert report["throughput_ips"] == pytest.approx(report["runs"] / report["measured_seconds"], rel=0.01)
    assert report["session_creation_ms"] > 0 and report["first_inference_ms"] > 0
    assert report["model_sha256"] == hashlib.sha256(convnet.read_bytes()).hexdigest()
    assert report["model_size_bytes"] == convnet.stat().st_size
    assert report["opset"] == 17 and report["ir_version"] == 8
    assert report["input_shape"] == [1, 3, 16, 16]  # symbolic batch dimension benchmarked at batch 1
    assert report["providers"] == ["CPUExecutionProvider"]
    assert set(METADATA_KEYS) <= report["metadata"].keys()
    assert json.loads(report["metadata"]["labels"]) == ["class_0", "class_1", "class_2", "class_3"]
    assert report["peak_rss_mib"] >= report["baseline_rss_mib"] > 0
    device = report["device"]
    assert device["cores"] >= 1 and device["total_ram_mib"] > 0 and device["cpu_model"]
    assert report["python_version"] == ".".join(map(str, sys.version_info[:3]))


def test_bench_runs_until_both_count_and_seconds_are_reached(convnet: Path) -> None:
    result = run_runtime("bench", "--model", str(convnet), "--runs", "1", "--min-seconds", "0.3")
    report = json.loads(result.stdout)
    assert report["measured_seconds"] >= 0.3
    assert report["runs"] > 1


def test_bench_feeds_whole_batches_to_a_dynamic_batch_model(convnet: Path, colors: Path) -> None:
    result = run_runtime(
        "bench", "--model", str(convnet), "--runs", "20", "--min-seconds", "0", "--batch-size", "4"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["batch_size"] == 4 and report["input_shape"] == [4, 3, 16, 16]
    # Throughput counts images, four per timed run.
    assert report["throughput_ips"] == pytest.approx(
        4 * report["runs"] / report["measured_seconds"], rel=0.01
    )
    static = run_runtime("bench", "--model", str(colors), "--batch-size", "2")
    assert_one_line_error(static, "fixed batch of 1", "--dynamic-batch")
    # Without --batch-size a fixed-batch model runs at its own batch.
    default = run_runtime("bench", "--model", str(colors), "--runs", "5", "--min-seconds", "0")
    assert default.returncode == 0, default.stderr
    assert json.loads(default.stdout)["input_shape"] == [1, 3, 16, 16]
    assert_one_line_error(run_runtime("bench", "--model", str(convnet), "--batch-size", "0"), "--batch-size")


def test_bench_skips_unavailable_providers_and_reports_them(convnet: Path) -> None:
    result = run_runtime(
        "bench", "--model", str(convnet), "--runs", "5", "--min-seconds", "0",
        "--providers", "TensorrtExecutionProvider,CPUExecutionProvider",
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert report["providers_requested"] == ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert report["providers_unavailable"] == ["TensorrtExecutionProvider"]
    assert report["providers"] == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--warmup", "3"], "at least 10"),
        (["--providers", "NoSuchExecutionProvider"], "unknown execution provider"),
    ],
)
def test_bench_rejects_bad_options_in_one_line(convnet: Path, args: list[str], fragment: str) -> None:
    assert_one_line_error(run_runtime("bench", "--model", str(convnet), *args), fragment)


def test_corrupt_or_missing_model_is_one_line_exit_2(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf model" * 10)
    assert_one_line_error(run_runtime("bench", "--model", str(corrupt)), "cannot load model", "corrupt.onnx")
    assert_one_line_error(run_runtime("infer", "--model", str(corrupt), str(corrupt)), "cannot load model")
    assert_one_line_error(run_runtime("bench", "--model", str(tmp_path / "absent.onnx")), "not found")
    assert_one_line_error(run_runtime("bench"), "--model")  # usage errors are one line too


def test_a_model_onnxruntime_refuses_is_said_as_its_reason_and_what_to_do(tmp_path: Path) -> None:
    """onnxruntime's heading ('[ONNXRuntimeError] : 1 : FAIL : Load model from PATH failed:Fatal error:') and
    C++ source locations are dropped: the reason, the onnxruntime version, and what to do remain."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Evil", ["input"], ["logits"], domain="com.evil")],
        "custom",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)]
    )
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    result = run_runtime("bench", "--model", str(path))
    assert_one_line_error(
        result,
        f"cannot load model {path}: onnxruntime {onnxruntime.__version__} refuses it (com.evil:Evil(-1) is not a "
        "registered function/op); export it again with edge-smsp export at an opset this onnxruntime runs",
    )
    assert "ONNXRuntimeError" not in result.stderr and "Load model from" not in result.stderr


def _solid(color: int, size: int = 20) -> np.ndarray:
    image = np.zeros((size, size + 4, 3), dtype=np.uint8)
    image[:, :, color] = 230
    return image


def test_infer_reads_labels_and_normalisation_from_metadata(colors: Path, tmp_path: Path) -> None:
    PIL = pytest.importorskip("PIL.Image")
    from sklearn.datasets import load_sample_image

    red_png = tmp_path / "red.png"
    PIL.fromarray(_solid(0)).save(red_png)
    green_npy = tmp_path / "green.npy"
    np.save(green_npy, _solid(1))
    blue_ppm = tmp_path / "blue.ppm"
    PIL.fromarray(_solid(2)).save(blue_ppm)
    photo = tmp_path / "flower photo.jpg"  # a real photograph: a red flower amid green leaves
    pixels = load_sample_image("flower.jpg")
    PIL.fromarray(pixels).save(photo, quality=95)
    # Like the host, the runtime keeps the centre square (the flower), not the whole frame (mostly leaves).
    height, width = pixels.shape[:2]
    centre = pixels[:, (width - height) // 2 :][:, :height].reshape(-1, 3).mean(axis=0)
    assert COLOR_LABELS[int(np.argmax(pixels.reshape(-1, 3).mean(axis=0)))] == "green"
    photo_label = COLOR_LABELS[int(np.argmax(centre))]

    images = [red_png, green_npy, blue_ppm, photo]
    result = run_runtime("infer", "--model", str(colors), *map(str, images), "--top-k", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["notes"] == [] and report["input_size"] == [16, 16]
    tops = [entry["top_k"] for entry in report["results"]]
    assert [top[0]["label"] for top in tops] == ["red", "green", "blue", photo_label]
    assert photo_label == "red"
    assert all(len(top) == 2 and top[0]["probability"] >= top[1]["probability"] for top in tops)
    assert all(top[0]["label"] in COLOR_LABELS for top in tops)
    # Solid colour: (230/255 - 0.5) / 0.5 on its channel against (0 - 0.5) / 0.5 = -1 on the other two.
    logits = np.array([2 * 230 / 255 - 1, -1.0, -1.0])
    softmax = np.exp(logits) / np.exp(logits).sum()
    assert tops[0][0]["probability"] == pytest.approx(softmax[0], abs=1e-4)


def test_numpy_decoders_read_pgm_ppm_and_npy_without_pillow(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    ppm = tmp_path / "image.ppm"
    ppm.write_bytes(b"P6\n# written by a test\n7 5\n255\n" + rgb.tobytes())
    np.testing.assert_allclose(load_image(str(ppm), use_pillow=False), rgb / 255.0, atol=1e-6)

    grey16 = rng.integers(0, 1000, size=(4, 6), dtype=np.uint16)
    pgm = tmp_path / "image.pgm"
    pgm.write_bytes(b"P5 6 4 999\n" + grey16.astype(">u2").tobytes())
    np.testing.assert_allclose(load_image(str(pgm), use_pillow=False)[:, :, 0], grey16 / 999.0, atol=1e-6)

    chw = tmp_path / "chw.npy"
    np.save(chw, rgb.transpose(2, 0, 1))
    np.testing.assert_allclose(load_image(str(chw), use_pillow=False), rgb / 255.0, atol=1e-6)

    jpeg = tmp_path / "photo.jpg"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0 not decoded without pillow")
    with pytest.raises(RuntimeToolError, match="pip install pillow"):
        load_image(str(jpeg), use_pillow=False)
    truncated = tmp_path / "short.ppm"
    truncated.write_bytes(b"P6\n7 5\n255\n" + rgb.tobytes()[:20])
    with pytest.raises(RuntimeToolError, match="truncated"):
        load_image(str(truncated), use_pillow=False)


def test_resize_and_crop_match_the_hosts_torch_preprocessing() -> None:
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    image = np.random.default_rng(1).integers(0, 256, size=(37, 23, 3)).astype(np.float32)
    for height, width in [(16, 16), (5, 7), (37, 23), (64, 40)]:  # down, mixed, same, up
        expected = functional.interpolate(
            torch.from_numpy(image.transpose(2, 0, 1))[None],
            size=(height, width),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0].numpy()
        np.testing.assert_allclose(
            resize_antialiased(image, height, width).transpose(2, 0, 1), expected, atol=1e-3
        )
    # The host (edge_smsp.data.tasks): shorter side to 16 (37x23 -> 26x16), centre crop, rounded uint8 pixels.
    resized = functional.interpolate(
        torch.from_numpy(image.transpose(2, 0, 1))[None],
        size=(26, 16),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    host = resized[0, :, 5:21, :].round().clamp(0, 255).numpy().transpose(1, 2, 0) / 255.0
    np.testing.assert_allclose(resize_and_crop(image / 255.0, 16, 16), host, atol=1.5 / 255)
    batch = preprocess(image[:, :, :1] / 255.0, (8, 8), 3, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    assert batch.shape == (1, 3, 8, 8) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0, 0], batch[0, 2])  # grey input replicated to three channels


def test_device_python_without_torch_runs_bench_and_refuses_the_torch_tier(
    device_python: str, convnet: Path, tmp_path: Path
) -> None:
    report = json.loads(
        run_runtime("bench", "--model", str(convnet), "--runs", "5", python=device_python).stdout
    )
    assert report["runs"] >= 5
    no_torch = subprocess.run([device_python, "-c", "import torch"], capture_output=True, timeout=60)
    assert no_torch.returncode != 0
    info = json.loads(run_runtime("info", python=device_python).stdout)
    assert info["torch_version"] is None
    result = run_runtime(
        "adapt", "--tier", "torch", "--model", str(tmp_path), "--data", str(tmp_path), "--iters", "1",
        "--out", str(tmp_path / "adapted.onnx"), python=device_python,
    )  # fmt: skip
    assert_one_line_error(result, "pip install torch")
    assert not (tmp_path / "adapted.onnx").exists()


def test_runtime_sources_parse_with_the_python_3_6_grammar() -> None:
    assert {path.name for path in RUNTIME_SOURCES} >= {"__main__.py", "onnxruntime_backend.py", "opsets.py"}
    for source in RUNTIME_SOURCES:
        tree = ast.parse(source.read_text(), filename=str(source), feature_version=(3, 6))
        # The 3.6 grammar accepts the import; the 3.6 compiler rejects the feature (PEP 563 is 3.7).
        future = [alias.name for node in tree.body if isinstance(node, ast.ImportFrom) and node.module == "__future__"
                  for alias in node.names]  # fmt: skip
        assert "annotations" not in future, f"{source.name}: `from __future__ import annotations` needs 3.7"


def _vermin(*paths: Path) -> subprocess.CompletedProcess[str]:
    """vermin (its own table of syntax, stdlib modules, functions and arguments per Python version) with the
    annotations evaluated, as Python 3.6 evaluates them."""
    command = ["-t=3.6-", "--violations", "--eval-annotations", "--no-tips", *map(str, paths)]
    return subprocess.run(
        [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", *command],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_vermin_finds_nothing_that_python_3_6_lacks(tmp_path: Path) -> None:
    # The scripts the transports run with the device's python belong to the runtime's contract too.
    snippets = {
        "verify_and_rename.py": transport_module._VERIFY_AND_RENAME,
        "remove_stale.py": transport_module._REMOVE_STALE,
        "run_runtime.py": transport_module._RUN_RUNTIME,
        "resolve_workdir.py": ssh_module._RESOLVE_WORKDIR,
    }
    for name, source in snippets.items():
        (tmp_path / name).write_text(source)
        ast.parse(source, feature_version=(3, 6))
    result = _vermin(RUNTIME_DIR / "edge_smsp_runtime", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # It does flag what 3.6 lacks: a 3.7 keyword argument and a 3.9 annotation evaluated at definition.
    newer = tmp_path / "newer.py"
    newer.write_text(
        "import subprocess\ndef run() -> list[str]:\n    return [subprocess.run(['true'], capture_output=True)]\n"
    )
    flagged = _vermin(newer)
    assert flagged.returncode != 0 and "capture_output" in flagged.stdout and "list[..]" in flagged.stdout


def test_runtime_package_declares_python_3_6() -> None:
    import tomllib

    project = tomllib.loads((RUNTIME_DIR / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.6"
    assert sorted(project["dependencies"]) == ["numpy", "onnxruntime"]


def test_backend_registry_names_match_and_default_first() -> None:
    assert backend_names()[0] == "onnxruntime"
    for name in BACKENDS:
        backend = get_backend(name)
        assert backend.name == name and backend.precisions[0] == "fp32"
    with pytest.raises(RuntimeToolError, match="unknown runtime 'tensorrt' \\(available: onnxruntime"):
        get_backend("tensorrt")
    assert_one_line_error(run_runtime("info", "--runtime", "tensorrt"), "--runtime", "onnxruntime")


def test_onnxruntime_opset_table() -> None:
    firsts = [first for first, _ in ONNXRUNTIME_OPSETS]
    opsets = [opset for _, opset in ONNXRUNTIME_OPSETS]
    assert firsts == sorted(set(firsts)) and opsets == sorted(set(opsets))  # one row per change, both rising
    assert onnxruntime_max_opset("1.10.0") == 15 and onnxruntime_max_opset("1.11.1") == 16
    assert onnxruntime_max_opset("1.16.3+cu118") == onnxruntime_max_opset("1.16.0")
    assert onnxruntime_max_opset("1.32.0") == NEWEST_KNOWN_OPSET
    assert onnxruntime_max_opset("2.0.0") == NEWEST_KNOWN_OPSET  # newer than the table: at least its last row
    assert onnxruntime_max_opset("0.5.0") is None and onnxruntime_max_opset("unknown") is None
    assert major_minor("3.6.9") == (3, 6) and major_minor("3.11.2+") == (3, 11) and major_minor("3") is None


def test_info_reports_python_runtime_and_its_highest_opset() -> None:
    result = run_runtime("info")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert info["runtime"] == "onnxruntime" and info["runtimes"] == backend_names()
    assert info["onnxruntime_version"] == info["engine_version"] == onnxruntime.__version__
    assert info["max_opset"] == onnxruntime_max_opset(onnxruntime.__version__)
    assert info["precisions"] == ["fp32", "int8"] and "CPUExecutionProvider" in info["available_providers"]
    assert info["imported_rss_mib"] > 0 and info["device"]["machine"]


def test_model_newer_than_the_runtime_is_refused_with_the_opset_to_ask_for(tmp_path: Path) -> None:
    newest = onnxruntime_max_opset(onnxruntime.__version__)
    model = tiny_convnet(tmp_path / "future.onnx", opset=newest + 1)
    for command in (["bench", "--model", str(model)], ["infer", "--model", str(model), str(model)]):
        assert_one_line_error(
            run_runtime(*command), f"opset {newest + 1}, newer than onnxruntime", f"--opset {newest}"
        )


def test_bench_and_infer_report_runtime_and_precision(convnet: Path, colors: Path, tmp_path: Path) -> None:
    bench = json.loads(
        run_runtime("bench", "--model", str(convnet), "--runs", "3", "--min-seconds", "0").stdout
    )
    assert bench["runtime"] == "onnxruntime" and bench["precision"] == "fp32"
    image = tmp_path / "red.npy"
    np.save(image, _solid(0))
    infer = json.loads(run_runtime("infer", "--model", str(colors), str(image)).stdout)
    assert infer["runtime"] == "onnxruntime" and infer["precision"] == "fp32"
    assert_one_line_error(
        run_runtime("bench", "--model", str(convnet), "--precision", "int8"), "fp32", "not 'int8'"
    )


def test_cache_home_that_is_no_folder_leaves_stderr_empty(convnet: Path, tmp_path: Path) -> None:
    """onnxruntime warns on stderr, whatever its log level, when XDG_CACHE_HOME cannot hold its device id; the
    host would take that line for the command's error. The runtime drops such a setting for its own process."""
    (tmp_path / "cache-is-a-file").write_text("")
    env = dict(os.environ, PYTHONPATH=str(RUNTIME_DIR), XDG_CACHE_HOME=str(tmp_path / "cache-is-a-file"))
    result = subprocess.run(
        [sys.executable, "-m", "edge_smsp_runtime", "bench", "--model", str(convnet), "--runs", "3",
         "--min-seconds", "0"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert json.loads(result.stdout)["runs"] >= 3
