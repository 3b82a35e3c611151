"""A device's software stack against its profile: the opset to export for it, and the checks deploy runs on the
device runtime's `info` report before adapting."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnxruntime
import pytest

from edge_smsp.cli import main
from edge_smsp.core.errors import DeviceStackError
from edge_smsp.devices.profiles import load_profile, profile_from_dict
from edge_smsp.devices.stack import (
    DEFAULT_OPSET,
    OLDEST_EXPORT_OPSET,
    check_device_stack,
    device_opset,
    onnxruntime_max_opset,
)

RUNTIME_DIR = Path(__file__).resolve().parents[1] / "runtime"


@pytest.fixture(scope="module")
def host_info() -> dict[str, Any]:
    """This machine's real `info` report from the device runtime."""
    result = subprocess.run(
        [sys.executable, "-m", "edge_smsp_runtime", "info"],
        env=dict(os.environ, PYTHONPATH=str(RUNTIME_DIR)),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout)


def _as_if(info: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The report another device would give: the same keys, some values changed."""
    report = copy.deepcopy(info)
    report.update(changes)
    return report


def _profile_without_opset(name: str = "raspberry_pi_5"):
    document = load_profile(name).to_dict()
    return profile_from_dict(
        {
            key: document[key]
            for key in (
                "name",
                "latency_target_ms",
                "latency_percentile",
                "input_size",
                "threads",
                "providers",
            )
        }
        | {
            "memory_budget": document["memory_budget_bytes"] // 1024**2,
            "throughput_gmacs": document["throughput_gmacs"],
            "connection": {"transport": "local"},
        }
    )


def test_export_opset_follows_the_profile() -> None:
    nano, localhost = load_profile("jetson_nano"), load_profile("localhost")
    assert device_opset(None, nano) == 15  # the default, capped by JetPack 4.6's onnxruntime
    assert device_opset(None, localhost) == DEFAULT_OPSET == 18
    assert device_opset(None, _profile_without_opset()) == DEFAULT_OPSET
    assert device_opset(OLDEST_EXPORT_OPSET, nano) == OLDEST_EXPORT_OPSET
    with pytest.raises(
        DeviceStackError, match=r"^opset 16 is newer than jetson_nano runs .*max_opset is 15\)"
    ):
        device_opset(16, nano)
    for bad in (0, 14, 999, 18.0):
        with pytest.raises(DeviceStackError, match=r"^opset: must be "):
            device_opset(bad, localhost)


def test_this_host_passes_as_the_localhost_device(host_info: dict[str, Any]) -> None:
    stack = check_device_stack(host_info, load_profile("localhost"), DEFAULT_OPSET)
    assert stack.runtime == "onnxruntime" and stack.engine_version == onnxruntime.__version__
    assert stack.max_opset == onnxruntime_max_opset(onnxruntime.__version__)
    assert stack.python_version == ".".join(map(str, sys.version_info[:3]))
    assert stack.to_dict()["machine"] == host_info["device"]["machine"]


@pytest.mark.parametrize(
    ("changes", "profile", "opset", "message"),
    [
        # onnxruntime 1.10 (as on a Jetson Nano) against a profile that promises more than it runs.
        (
            {"engine_version": "1.10.0", "max_opset": 15},
            "raspberry_pi_5",
            15,
            r"runs onnxruntime 1\.10\.0, which runs ONNX opset 15 at most, but its profile promises max_opset 18: "
            r"set max_opset: 15 in the profile or upgrade onnxruntime on the device$",
        ),
        (
            {"python_version": "3.6.9", "engine_version": "1.10.0", "max_opset": 15},
            "raspberry_pi_5",
            15,
            r"runs Python 3\.6\.9, older than its profile's python_version 3\.11: correct python_version",
        ),
        (
            {"engine_version": "1.10.0", "max_opset": 15},
            "no max_opset",
            18,
            r"runs onnxruntime 1\.10\.0, which runs ONNX opset 15 at most; the model would be opset 18: export at "
            r"opset 15$",
        ),
        (
            {"python_version": "3.5.2"},
            "localhost",
            18,
            r"runs Python 3\.5\.2; the device runtime needs Python 3\.6",
        ),
    ],
)
def test_device_that_cannot_run_the_model_fails_in_one_line(
    host_info: dict[str, Any], changes: dict[str, Any], profile: str, opset: int, message: str
) -> None:
    device = _profile_without_opset() if profile == "no max_opset" else load_profile(profile)
    with pytest.raises(DeviceStackError, match=message) as caught:
        check_device_stack(_as_if(host_info, **changes), device, opset)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(device.name)


def test_a_device_with_none_of_the_profiles_providers_is_refused(host_info: dict[str, Any]) -> None:
    document = _profile_without_opset().to_dict()
    cuda_only = profile_from_dict(
        {
            key: value
            for key, value in document.items()
            if key in ("name", "latency_target_ms", "latency_percentile", "input_size", "threads")
        }
        | {
            "memory_budget": document["memory_budget_bytes"] // 1024**2,
            "throughput_gmacs": document["throughput_gmacs"],
            "providers": ["CUDAExecutionProvider"],
            "connection": {"transport": "local"},
        }
    )
    with pytest.raises(DeviceStackError) as caught:
        check_device_stack(_as_if(host_info, available_providers=["CPUExecutionProvider"]), cuda_only, 18)
    assert str(caught.value).startswith(cuda_only.name) and "\n" not in str(caught.value)
    assert "none of its profile's providers (CUDAExecutionProvider); it has CPUExecutionProvider" in str(
        caught.value
    )
    # One available provider in the list is enough, wherever it stands (the Jetson Nano's CPU after TensorRT/CUDA).
    check_device_stack(
        _as_if(host_info, available_providers=["CPUExecutionProvider"]), load_profile("jetson_nano"), 15
    )


def test_report_of_an_older_runtime_is_named(host_info: dict[str, Any]) -> None:
    old = {key: value for key, value in host_info.items() if key not in ("max_opset", "engine_version")}
    with pytest.raises(
        DeviceStackError, match="info lacks engine_version, max_opset: an older edge-smsp runtime"
    ):
        check_device_stack(old, load_profile("localhost"), 18)


@pytest.mark.parametrize(
    ("opset", "message"),
    [
        ("16", "opset 16 is newer than jetson_nano runs (its profile's max_opset is 15): ask for opset 15"),
        ("14", "opset: must be 15-"),
    ],
)
def test_deploy_refuses_an_opset_the_profile_cannot_run_before_reaching_the_device(
    opset: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, pool = tmp_path / "out", tmp_path / "pool.sqlite"
    argv = ["deploy", "--profile", "jetson_nano", "--opset", opset, "--pool", str(pool), "--out", str(out)]
    assert main(argv) == 2  # jetson-nano.local is never contacted: the profile already says no
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err
    assert not out.exists() and not pool.exists()


def test_an_info_whose_opset_is_not_its_engines_is_refused(host_info: dict[str, Any]) -> None:
    """The device reads the same opset table as the host: a max_opset its own onnxruntime does not run (a device
    that lies, or an altered runtime) must not steer the export."""
    with pytest.raises(DeviceStackError, match=r"max_opset 15 is not the \d+ that onnxruntime \S+ runs"):
        check_device_stack(_as_if(host_info, max_opset=15), load_profile("localhost"), 15)
