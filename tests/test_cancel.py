"""Ctrl-C, SIGTERM or a closed terminal (SIGHUP) during `bench` stops the device's benchmark too (local and SSH transports)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.boards import small_board_profile
from tests.sshd_fixture import SshdServer
from tests.tiny_onnx import tiny_convnet

ROOT = Path(__file__).resolve().parents[1]


def _processes_mentioning(text: str, *, whole_argument: bool = False) -> list[int]:
    """Live processes whose command line contains `text` (with whole_argument, as one of its arguments)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode("utf-8", "replace").split("\0")
                state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            except OSError:
                continue
            mentioned = text in argv if whole_argument else text in " ".join(argv)
            if mentioned and state != "Z":
                found.append(int(entry.name))
    return found


def _benchmarks_running(workdir: Path) -> list[int]:
    """The device runtime's processes: they take the pushed runtime dir as an argument. The upload check that
    runs just before names files under that dir, so a substring match would catch it and race with its exit."""
    return _processes_mentioning(f"{workdir}/runtime", whole_argument=True)


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _as_from_a_terminal() -> None:
    """SIGINT and SIGTERM at their defaults, as for a command typed in a terminal: a runner started in the
    background of a non-interactive shell (`cmd &`) ignores SIGINT, its children inherit that, and Python then
    leaves Ctrl-C ignored too."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(
        signal.SIGHUP, signal.SIG_DFL
    )  # a closed terminal: the runner's own setting is not inherited


@pytest.mark.parametrize("transport", ["local", "ssh"])
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_interrupted_bench_leaves_no_runtime_process(
    transport: str, signum: int, request: pytest.FixtureRequest, tmp_path: Path, device_python: str
) -> None:
    workdir = tmp_path / "device-work"
    # If the test fails, a benchmark left running would hold a core for an hour and slow the rest of the suite.
    request.addfinalizer(lambda: _kill_all(_processes_mentioning(f"{workdir}/runtime")))
    connection: dict = {"transport": "local", "python": device_python, "workdir": str(workdir)}
    if transport == "ssh":
        sshd: SshdServer = request.getfixturevalue("sshd")
        connection = {
            "transport": "ssh",
            "host": "127.0.0.1",
            "port": sshd.port,
            "user": sshd.user,
            "key_file": str(sshd.client_key),
            "known_hosts": str(sshd.known_hosts),
            "python": device_python,
            "workdir": str(workdir),
        }
    profile = small_board_profile(tmp_path / "board.yaml", "cancel-board", connection)
    model = tiny_convnet(tmp_path / "tiny.onnx")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'runtime'}"}
    cli = subprocess.Popen(
        [sys.executable, "-m", "edge_smsp", "bench", "--profile", str(profile), "--model", str(model)]
        + ["--bench-runs", "100000", "--bench-seconds", "3600"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_from_a_terminal,
    )
    try:
        deadline = time.monotonic() + 120
        while not _benchmarks_running(workdir) and time.monotonic() < deadline:
            assert cli.poll() is None, cli.stderr.read() if cli.stderr else ""
            time.sleep(0.1)
        assert _benchmarks_running(workdir), "the device benchmark never started"
        interrupted = time.monotonic()
        cli.send_signal(signum)
        cli.wait(timeout=30)
        stopped_in = time.monotonic() - interrupted
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 128 + signum
    assert cli.stderr is not None and cli.stderr.read().strip().count("\n") == 0
    deadline = time.monotonic() + 5
    while _processes_mentioning(f"{workdir}/runtime") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_mentioning(f"{workdir}/runtime"), f"runtime still running {stopped_in:.1f} s after"
    print(f"{transport} {signal.Signals(signum).name}: CLI exited {stopped_in:.2f} s after the signal")


def test_an_interruption_a_dependency_swallowed_still_ends_the_run_as_interrupted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    """Ctrl-C that lands where a library catches KeyboardInterrupt (an import, an exporter) used to let the command
    run on and exit 0 as if nothing had happened: the signal was received, so the run ends as interrupted."""
    from edge_smsp import cli
    from edge_smsp.cli import model_commands

    swallowed = []

    def swallowing_handler(args: object) -> int:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode; the sleep is cut short by it
        except KeyboardInterrupt:
            swallowed.append(True)  # what a dependency's `except BaseException` does
        return 0

    monkeypatch.setattr(model_commands, "models_command", swallowing_handler)
    # As a terminal's Ctrl-C finds it, whatever the test runner set (pytest-xdist's workers ignore SIGINT).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    assert cli.main(["models"]) == 128 + signal.SIGINT
    assert swallowed == [True] and capsys.readouterr().err == "edge-smsp: interrupted\n"
