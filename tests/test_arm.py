"""The device side on ARM64: the uploaded runtime over SSH on an emulated Raspberry Pi 5 (scripts/arm_device.sh:
Debian bookworm arm64 under qemu-user, numpy and onnxruntime from PyPI's aarch64 wheels, OpenSSH on 127.0.0.1).

Emulation is ~1000x slower than the real board: a few short benches at 32 px and one image, never speed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_smsp.cli import main
from edge_smsp.deploy.steps import CALIBRATION_RATIOS
from edge_smsp.devices.profiles import DeviceProfile, load_profile
from edge_smsp.devices.stack import check_device_stack, device_opset
from edge_smsp.export.onnx_export import export_onnx
from edge_smsp.models import zoo
from edge_smsp.transport import open_transport
from tests.required import skip_or_fail
from tests.test_precision_deploy import _deploy_argv

pytestmark = pytest.mark.arm  # everything here is about the emulated device

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "arm_device.sh"
LABELS = ["sandal", "sneaker", "boot"]
SIZE = 32
# What arm_device.sh says when this machine cannot emulate aarch64 at all (not root, no binfmt_misc).
CANNOT_EMULATE = ("needs root", "cannot be emulated here")


@pytest.fixture(scope="session")
def arm_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceProfile]:
    """The emulated device (built once into the script's cache, minutes the first time) and its profile."""
    env = dict(os.environ, EDGE_SMSP_ARM_INSTANCE=f"pytest-{os.getpid()}")
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=1800
    )
    reason = started.stderr.strip().splitlines()[-1] if started.stderr.strip() else ""
    if started.returncode == 2 and any(phrase in reason for phrase in CANNOT_EMULATE):
        skip_or_fail(f"no emulated ARM64 device here: {reason}")
    assert started.returncode == 0, started.stderr[-3000:]
    path = tmp_path_factory.mktemp("arm") / "raspberry_pi_5_emulated.yaml"
    path.write_text(started.stdout)
    try:
        yield load_profile(path)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def test_uploaded_runtime_runs_on_the_emulated_arm64_device(
    arm_device: DeviceProfile, tmp_path: Path
) -> None:
    pi5 = load_profile("raspberry_pi_5")
    assert arm_device.name == "raspberry_pi_5_emulated" and arm_device.connection.host == "127.0.0.1"
    assert (arm_device.python_version, arm_device.max_opset) == (pi5.python_version, pi5.max_opset)
    opset = device_opset(None, arm_device)
    model = zoo.load_backbone("efficientnet_lite0", num_classes=len(LABELS), image_size=SIZE)
    metadata = {"labels": LABELS, "mean": [0.5] * 3, "std": [0.25] * 3, "backbone": "efficientnet_lite0"}
    exported = export_onnx(model, tmp_path / "model.onnx", image_size=SIZE, metadata=metadata, opset=opset)

    with open_transport(arm_device.connection) as device:
        python = device.python
        info = device.run_runtime(["info"], timeout=600)
        assert info["device"]["machine"] == "aarch64"
        # The versions info reports, against what the device's interpreter and package metadata say.
        version = device.run([python, "--version"], timeout=120).stdout.split()[1]
        installed = device.run(
            [python, "-c", "import importlib.metadata as m; print(m.version('onnxruntime'))"], timeout=120
        ).stdout.strip()
        assert info["python_version"] == version and version.startswith(arm_device.python_version + ".")
        assert info["onnxruntime_version"] == info["engine_version"] == installed
        assert check_device_stack(info, arm_device, opset).machine == "aarch64"

        remote = device.upload(exported.onnx_path, "models/model.onnx")
        landed = device.run(["sha256sum", remote], timeout=120).stdout.split()[0]
        assert landed == hashlib.sha256(exported.onnx_path.read_bytes()).hexdigest() == exported.sha256

        bench = device.run_runtime(
            ["bench", "--model", remote, "--runs", "3", "--min-seconds", "0", "--threads", "1"], timeout=900
        )
        assert bench["device"]["machine"] == "aarch64" and bench["model_sha256"] == exported.sha256
        assert bench["opset"] == opset and bench["runs"] >= 3
        assert bench["peak_rss_mib"] >= bench["baseline_rss_mib"] > 0

        image = tmp_path / "image.npy"
        np.save(image, np.random.default_rng(0).integers(0, 256, size=(40, 40, 3), dtype=np.uint8))
        infer = device.run_runtime(
            ["infer", "--model", remote, device.upload(image, "image.npy")], timeout=600
        )
        assert {entry["label"] for entry in infer["results"][0]["top_k"]} == set(LABELS)


def test_deploy_over_ssh_to_the_emulated_device_fits_its_measured_memory(
    arm_device: DeviceProfile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`edge-smsp deploy --calibrate` to the emulated Pi 5: three calibration runs fit its memory model, and the
    model adapted at a ratio between them (held out) uses no more than that model predicts."""
    out, ratio = tmp_path / "out", 0.5
    argv = [
        "deploy", "--profile", str(arm_device.source), "--calibrate", "--ratio", str(ratio), "--method",
        "magnitude", "--recipe", "plain", "--image-size", str(SIZE), "--iters", "2", "--train-per-class", "16",
        "--val-per-class", "8",
        "--bench-runs", "3", "--bench-seconds", "0", "--pool", str(tmp_path / "pool.sqlite"), "--out", str(out),
        "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)

    assert report["device_stack"]["machine"] == report["measured"]["device"]["machine"] == "aarch64"
    assert report["opset"] == arm_device.max_opset == report["measured"]["opset"]
    with open_transport(arm_device.connection) as device:
        landed = device.run(["sha256sum", report["remote_model_path"]], timeout=120).stdout.split()[0]
    assert (
        landed == report["onnx_sha256"] == hashlib.sha256(Path(report["onnx_path"]).read_bytes()).hexdigest()
    )

    memory = report["memory_model"]
    assert memory["source"] == "fit" and memory["n_measurements"] == len(CALIBRATION_RATIOS)
    assert report["ratio"] == ratio and ratio not in CALIBRATION_RATIOS
    assert report["measured_peak_rss_bytes"] <= report["predicted_memory_bytes"]
    for row in report["calibration"]:
        assert row["measurement_id"] is not None and row["imported_rss_mib"] > 0
    mib = 1024**2
    before = [
        f"r={row['ratio']:g}: hint {row['predicted_memory_hint_bytes'] / mib:.1f} vs {row['peak_rss_mib']:.1f}"
        for row in report["calibration"]
    ]
    print(
        f"\nemulated {arm_device.name}: hint before fitting ({'; '.join(before)} MiB); fitted at r={ratio:g}: "
        f"predicted {report['predicted_memory_bytes'] / mib:.1f} MiB, measured "
        f"{report['measured_peak_rss_bytes'] / mib:.1f} MiB; model {memory}; seconds {report['seconds']}"
    )


def test_the_emulated_board_and_localhost_deploy_in_one_fleet(
    arm_device: DeviceProfile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One adaptation for both; one export per opset (the board's runtime runs an older one than this host's)."""
    argv = [
        "deploy", "--profile", str(arm_device.source), "--profile", "localhost", "--ratio", "0.5", "--method",
        "magnitude", "--recipe", "plain", "--image-size", str(SIZE), "--iters", "2", "--train-per-class", "16",
        "--val-per-class", "8", "--bench-runs", "3", "--bench-seconds", "0",
        "--pool", str(tmp_path / "pool.sqlite"), "--out", str(tmp_path / "out"), "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    fleet = json.loads(capsys.readouterr().out)
    board, host = fleet["devices"]
    # emulation is ~1000x slower than the board: over its latency target, and deployed all the same
    assert board["status"].startswith("deployed") and host["status"].startswith("deployed")
    assert board["measured"]["device"]["machine"] == "aarch64" and host["device_transport"] == "local"
    assert (
        board["opset"] == arm_device.max_opset and board["measured"]["model_sha256"] == board["onnx_sha256"]
    )
    assert fleet["shared"]["adaptations"] == 1
    assert fleet["shared"]["exports"] == (1 if board["opset"] == host["opset"] else 2)
    print(f"\nfleet of the emulated board and localhost: seconds {fleet['seconds']}")


def test_without_root_the_script_refuses_in_one_line_that_the_fixture_recognises(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # drop to nobody: the script must say why it cannot emulate, not half-build
        command = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "bash",
            str(SCRIPT),
            "start",
        ]
    else:
        command = ["bash", str(SCRIPT), "start"]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "EDGE_SMSP_ARM_CACHE": str(tmp_path / "cache")}
    tmp_path.chmod(0o777)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and CANNOT_EMULATE[0] in result.stderr
    assert not (tmp_path / "cache").exists()


def test_an_int8_model_deploys_to_the_emulated_arm64_board(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    # Here, not in test_precision_deploy.py: the board's tests run together, last (parallel workers take whole
    # modules; CI builds the board's root beside the rest).
    env = dict(os.environ, EDGE_SMSP_ARM_INSTANCE=f"pytest-int8-{os.getpid()}")
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=1800
    )
    if started.returncode != 0:
        skip_or_fail(f"no emulated ARM64 device here: {started.stderr.strip()[-300:]}")
    try:
        profile = tmp_path / "pi5.yaml"
        profile.write_text(started.stdout)
        connection = tmp_path / "connection.yaml"
        connection.write_text(yaml.safe_dump(yaml.safe_load(started.stdout)["connection"]))
        assert main(_deploy_argv(str(profile), connection, tmp_path / "out", tmp_path / "p.sqlite")) == 0
        report = json.loads(capsys.readouterr().out)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
    assert report["device_stack"]["machine"] == "aarch64"
    assert report["precision"] == report["measured"]["precision"] == "int8"
    assert report["measured"]["model_sha256"] == report["onnx_sha256"]
