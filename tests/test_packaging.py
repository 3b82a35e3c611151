"""A built wheel carries the bundled device profiles and the device runtime, and finds them when installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run from the installed copy only: drop the editable finders that point back into this checkout.
PROBE = """
import json, sys
sys.meta_path[:] = [finder for finder in sys.meta_path if "__editable__" not in getattr(finder, "__module__", "")]
sys.path.insert(0, sys.argv[1])
from edge_smsp.devices.profiles import load_profile
from edge_smsp.transport.base import runtime_files
import edge_smsp.devices.stack, edge_smsp.device_runtime.opsets as opsets
print(json.dumps({"profile": load_profile("localhost").name, "runtime": [str(path) for path, _ in runtime_files()],
                  "opsets_from": opsets.__file__}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # setuptools builds in the source tree (build/, *.egg-info): build from a copy that keeps the links.
    source = out / "source"
    skipped = shutil.ignore_patterns(
        ".*", "build", "dist", "out", "runs", "results", "plots", "*.egg-info", "__pycache__"
    )
    shutil.copytree(ROOT, source, symlinks=True, ignore=skipped)
    pip_wheel = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
    ]
    result = subprocess.run([*pip_wheel, str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (built,) = out.glob("edge_smsp-*.whl")
    return built


def test_wheel_contains_every_profile_and_runtime_module(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for profile in sorted((ROOT / "device_profiles").glob("*.yaml")):
            packaged = f"edge_smsp/device_profiles/{profile.name}"
            assert archive.read(packaged) == profile.read_bytes()
        runtime = ROOT / "runtime" / "edge_smsp_runtime"
        modules = sorted(runtime.rglob("*.py"))
        assert runtime / "backends" / "onnxruntime_backend.py" in modules  # subpackages too
        for module in modules:
            packaged = f"edge_smsp/device_runtime/{module.relative_to(runtime).as_posix()}"
            assert archive.read(packaged) == module.read_bytes()
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)


def test_installed_wheel_finds_profiles_and_the_runtime_it_uploads(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    result = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found["profile"] == "localhost"
    runtime = [Path(path) for path in found["runtime"]]
    installed = target / "edge_smsp" / "device_runtime"
    assert runtime and all(path.is_relative_to(installed) for path in runtime)
    assert {path.relative_to(installed).as_posix() for path in runtime} >= {
        "__init__.py",
        "__main__.py",
        "bench.py",
        "opsets.py",
        "backends/__init__.py",
        "backends/onnxruntime_backend.py",
    }
    # The host reads the opset table from the same copy it uploads.
    assert found["opsets_from"] == str(installed / "opsets.py")
