"""The device runtime on the oldest stacks it supports, each a bare venv built from wheels scripts/setup.sh fetched:
Python 3.6 with onnxruntime 1.10 (the Jetson Nano's JetPack 4.6), and the oldest onnxruntime wheel for this
Python. Both load an opset-15 export through the local transport, whose upload scripts run on that Python too; and
`edge-smsp deploy` with the bundled Jetson Nano profile, its connection overridden to reach the 3.6 stack over SSH."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from edge_smsp.cli import main
from edge_smsp.core.errors import DeviceStackError, TransportError
from edge_smsp.devices.profiles import ConnectionSpec, load_profile
from edge_smsp.devices.stack import check_device_stack, device_opset, onnxruntime_max_opset
from edge_smsp.export.onnx_export import export_onnx
from edge_smsp.models import zoo
from edge_smsp.transport import Transport, open_transport
from edge_smsp.transport.base import sha256_file
from tests.required import skip_or_fail
from tests.sshd_fixture import SshdServer
from tests.tiny_onnx import tiny_convnet

PROFILES_DIR = Path(__file__).resolve().parents[1] / "device_profiles"
WHEELS = Path(os.environ.get("EDGE_SMSP_WHEELS", Path.home() / ".cache" / "edge-smsp" / "wheels"))
SIZE = 32
LABELS = ["shirt", "shoe", "bag"]
# The bundled profile each stack is (its python_version and max_opset), and one that promises more.
PROFILES = {
    "jetpack-4.6": ("jetson_nano", "raspberry_pi_5"),
    "oldest-onnxruntime": ("raspberry_pi_5", "localhost"),
}


def _pinned(requirements: list[str], name: str) -> str:
    return next(line.split("==")[1] for line in requirements if line.startswith(f"{name}=="))


class OldStack:
    """A venv of one wheel set: its interpreter, and the versions setup.sh pinned."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        manifest = WHEELS / name / "stack.json"
        if not manifest.is_file():
            skip_or_fail(f"no {name} wheel set in {WHEELS}: run scripts/setup.sh")
        stack = json.loads(manifest.read_text())
        self.onnxruntime = _pinned(stack["requirements"], "onnxruntime")
        self.numpy = _pinned(stack["requirements"], "numpy")
        if not Path(stack["python"]).is_file():
            skip_or_fail(f"{name}: its interpreter {stack['python']} is gone: run scripts/setup.sh")
        subprocess.run([stack["python"], "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
        self.python = str(root / "bin" / "python")
        probe = "import sys, sysconfig; print('%d.%d' % sys.version_info[:2]); print(sysconfig.get_paths()['purelib'])"
        self.version, site = subprocess.run(
            [self.python, "-c", probe], check=True, capture_output=True, text=True, timeout=60
        ).stdout.split()
        # The host's pip installs for the venv's Python (pip itself may no longer run on Python 3.6).
        install = [
            sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--only-binary=:all:",
            "--find-links", str(WHEELS / name), "--python-version", self.version, "--implementation", "cp",
            "--target", site, *stack["requirements"],
        ]  # fmt: skip
        result = subprocess.run(install, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def old_stacks(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], OldStack]:
    """The venv of a wheel set, built once per module."""
    built: dict[str, OldStack] = {}

    def get(name: str) -> OldStack:
        if name not in built:
            built[name] = OldStack(name, tmp_path_factory.mktemp(name))
        return built[name]

    return get


@pytest.fixture(scope="module", params=["jetpack-4.6", "oldest-onnxruntime"])
def stack(request: pytest.FixtureRequest, old_stacks: Callable[[str], OldStack]) -> OldStack:
    return old_stacks(request.param)


@pytest.fixture(scope="module")
def opset15_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("opset15") / "resnet18.onnx"
    model = zoo.load_backbone("resnet18", num_classes=len(LABELS), image_size=SIZE)
    metadata = {"labels": LABELS, "mean": [0.5] * 3, "std": [0.25] * 3, "backbone": "resnet18"}
    return export_onnx(model, out, image_size=SIZE, metadata=metadata, opset=15).onnx_path


@pytest.fixture
def device(stack: OldStack, tmp_path: Path) -> Iterator[Transport]:
    with open_transport(
        ConnectionSpec(transport="local", python=stack.python, workdir=str(tmp_path))
    ) as opened:
        yield opened


def test_runtime_reports_the_old_stack(device: Transport, stack: OldStack) -> None:
    info = device.run_runtime(["info"], timeout=120)
    assert info["python_version"].startswith(stack.version + ".")
    assert info["runtime"] == "onnxruntime" and info["onnxruntime_version"] == stack.onnxruntime
    assert info["engine_version"] == stack.onnxruntime and info["numpy_version"] == stack.numpy
    assert info["max_opset"] == onnxruntime_max_opset(stack.onnxruntime) >= 15
    assert info["available_providers"] == ["CPUExecutionProvider"]


def test_old_stack_benchmarks_and_classifies_an_opset_15_export(
    device: Transport, stack: OldStack, opset15_model: Path, tmp_path: Path
) -> None:
    remote = device.upload(opset15_model, "models/resnet18.onnx")
    bench = device.run_runtime(["bench", "--model", remote, "--runs", "3", "--min-seconds", "0"], timeout=300)
    assert bench["model_sha256"] == sha256_file(opset15_model)
    assert bench["opset"] == 15 and bench["ir_version"] <= 8  # onnxruntime 1.10 reads IR 8 at most
    assert bench["onnxruntime_version"] == stack.onnxruntime and bench["runs"] >= 3
    assert bench["runtime"] == "onnxruntime" and bench["precision"] == "fp32"

    image = tmp_path / "image.npy"  # no Pillow in the bare venv: the runtime's numpy decoders read it
    np.save(image, np.random.default_rng(0).integers(0, 256, size=(40, 40, 3), dtype=np.uint8))
    remote_image = device.upload(image, "images/image.npy")
    infer = device.run_runtime(["infer", "--model", remote, remote_image, "--top-k", "3"], timeout=300)
    top = infer["results"][0]["top_k"]
    assert sorted(entry["label"] for entry in top) == sorted(LABELS)
    assert sum(entry["probability"] for entry in top) == pytest.approx(1.0, abs=1e-4)


def test_model_newer_than_the_old_runtime_is_refused_in_one_line(
    device: Transport, stack: OldStack, tmp_path: Path
) -> None:
    newest = onnxruntime_max_opset(stack.onnxruntime)
    model = tiny_convnet(tmp_path / "too_new.onnx", opset=newest + 1)
    remote = device.upload(model, "models/too_new.onnx")
    expected = rf"opset {newest + 1}, newer than onnxruntime {stack.onnxruntime} runs .*--opset {newest}$"
    with pytest.raises(TransportError, match=expected):
        device.run_runtime(["bench", "--model", remote, "--runs", "1"], timeout=120)


def test_bundled_profile_of_the_stack_passes_the_device_check(device: Transport, stack: OldStack) -> None:
    info = device.run_runtime(["info"], timeout=120)
    matching, promising_more = (load_profile(name) for name in PROFILES[stack.name])
    opset = device_opset(None, matching)
    assert check_device_stack(info, matching, opset).max_opset == opset == matching.max_opset
    with pytest.raises(DeviceStackError, match=f"^{promising_more.name} "):
        check_device_stack(info, promising_more, device_opset(None, promising_more))


def test_jetson_nano_profile_deploys_an_opset_15_model_that_python_36_benches(
    old_stacks: Callable[[str], OldStack],
    sshd: SshdServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The headline: the bundled Jetson Nano profile, reached through a connection override (this machine's sshd,
    the JetPack 4.6 stack's Python 3.6 and onnxruntime 1.10), adapts, exports and benches end to end."""
    jetpack = old_stacks("jetpack-4.6")
    connection = {
        "host": sshd.host,
        "port": sshd.port,
        "user": sshd.user,
        "key_file": str(sshd.client_key),
        "known_hosts": str(sshd.known_hosts),
        "python": jetpack.python,
        "workdir": str(tmp_path / "jetson"),
    }
    fragment = tmp_path / "jetson-connection.yaml"
    fragment.write_text(yaml.safe_dump(connection))
    out = tmp_path / "out"
    argv = [
        "deploy", "--profile", str(PROFILES_DIR / "jetson_nano.yaml"), "--connection", str(fragment),
        "--image-size", str(SIZE), "--iters", "2", "--train-per-class", "16", "--val-per-class", "8",
        "--bench-runs", "5", "--bench-seconds", "0", "--pool", str(tmp_path / "pool.sqlite"), "--out", str(out),
        "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)

    assert report["profile"] == "jetson_nano" and report["device_transport"] == "ssh"
    assert report["opset"] == 15 == load_profile("jetson_nano").max_opset
    model = onnx.load(report["onnx_path"])
    assert {entry.domain: entry.version for entry in model.opset_import}[""] == 15 and model.ir_version <= 8
    stack = report["device_stack"]
    assert stack["python_version"].startswith("3.6.") and stack["engine_version"] == jetpack.onnxruntime
    assert stack["max_opset"] == 15
    measured = report["measured"]
    assert measured["python_version"] == stack["python_version"] and measured["opset"] == 15
    assert measured["model_sha256"] == report["onnx_sha256"] == sha256_file(Path(report["onnx_path"]))
    assert measured["runs"] >= 5 and measured["providers"] == ["CPUExecutionProvider"]
    assert Path(report["remote_model_path"]).is_relative_to(tmp_path / "jetson")
    # No GPU here: the TensorRT and CUDA providers it asks for are missing, so the run calibrates nothing.
    assert report["measurement_id"] is None and "TensorrtExecutionProvider" in report["measurement_note"]
    print(f"\njetson_nano via Python {stack['python_version']}: seconds {report['seconds']}")


def test_a_profile_promising_more_than_the_old_stack_fails_before_adapting(
    old_stacks: Callable[[str], OldStack], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jetpack = old_stacks("jetpack-4.6")
    override = f"{{transport: local, python: {jetpack.python}, workdir: {tmp_path / 'device'}}}"
    out = tmp_path / "out"
    argv = ["deploy", "--profile", "raspberry_pi_5", "--connection", override, "--image-size", str(SIZE)]
    assert main([*argv, "--pool", str(tmp_path / "pool.sqlite"), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert (
        f"raspberry_pi_5 ({platform.machine()}) runs Python 3.6" in captured.err
        and "python_version 3.11" in captured.err
    )
    assert not (out / "model").exists() and not (out / "model.onnx").exists()
