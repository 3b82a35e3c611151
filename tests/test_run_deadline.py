"""The runtime's limit on one inference: a real onnxruntime session of a Loop that never ends is stopped through
its terminate flag, an engine that cannot stop ends the process in one line, and normal runs are untouched."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_onnx import endless_loop

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
sys.path.insert(0, str(RUNTIME))
from edge_smsp_runtime.deadline import RunDeadline, first_run_factor  # noqa: E402
from edge_smsp_runtime.errors import RuntimeToolError  # noqa: E402
from edge_smsp_runtime.model import open_model  # noqa: E402


def _session(path: Path):
    return open_model(str(path), None, ["CPUExecutionProvider"], 1)[1]


def test_a_loop_that_never_ends_is_stopped_and_the_session_reports_it(tmp_path: Path) -> None:
    session = _session(endless_loop(tmp_path / "loop.onnx"))
    image = np.zeros((1, 3, 8, 8), np.float32)
    stopped = pytest.raises(
        RuntimeToolError, match=r"loop\.onnx: one inference ran over 0\.3 s and was stopped"
    )
    with RunDeadline(session, 0.3, "bench", "loop.onnx") as deadline, stopped:
        deadline.run({"image": image})


def test_the_first_run_gets_twice_the_limit_and_engines_that_build_plans_five_times(tmp_path: Path) -> None:
    session = _session(endless_loop(tmp_path / "loop.onnx"))
    image = np.zeros((1, 3, 8, 8), np.float32)
    stopped = pytest.raises(
        RuntimeToolError,
        match=r"the first inference ran over 0\.6 s and was stopped \(--run-timeout 0\.3; the first run gets 2 "
        r"times it on CPUExecutionProvider\)",
    )
    with RunDeadline(session, 0.3, "bench", "loop.onnx") as deadline, stopped:
        deadline.run({"image": image}, first=True)
    assert first_run_factor(["TensorrtExecutionProvider", "CUDAExecutionProvider"]) == 5
    assert first_run_factor(["CUDAExecutionProvider", "CPUExecutionProvider"]) == 2


def test_runs_within_the_limit_return_the_engines_outputs(tmp_path: Path) -> None:
    session = _session(endless_loop(tmp_path / "loop3.onnx", trips=3))
    image = np.full((1, 3, 8, 8), 0.25, np.float32)
    with RunDeadline(session, 30.0, "bench", "loop3.onnx") as deadline:
        first = deadline.run({"image": image}, first=True)[0]
        again = deadline.run({"image": image})[0]
    np.testing.assert_array_equal(first, np.full((1, 3), 3.25, np.float32))  # 3 trips of +1 on the mean
    np.testing.assert_array_equal(again, first)


def test_an_engine_that_cannot_stop_ends_the_process_in_one_line(tmp_path: Path) -> None:
    # An engine without a terminate flag: its run is native code the watcher cannot interrupt.
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(RUNTIME)!r})
        from edge_smsp_runtime import deadline
        from edge_smsp_runtime.backends.base import Session
        deadline.STOP_GRACE_SECONDS = 0.1
        class Stuck(Session):
            def run(self, feeds):
                time.sleep(60)
            def providers(self):
                return ["CPUExecutionProvider"]
        deadline.RunDeadline(Stuck(), 0.3, "infer", "stuck.onnx").run({{}})
        print("returned")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "edge-smsp-runtime infer: error: stuck.onnx: one inference ran over 0.3 s and was stopped "
        "(--run-timeout 0.3; the first run gets 2 times it on CPUExecutionProvider); the model may loop without end: raise "
        "--run-timeout if it is only slow"
    ]
