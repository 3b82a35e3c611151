"""Transports against a real OpenSSH server on 127.0.0.1 and this machine: verified uploads, runtime, refusals."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import paramiko
import pytest

from edge_smsp.core.errors import DeviceStackError, TransportError
from edge_smsp.deploy.bench import BenchSettings, startup_allowance
from edge_smsp.device_runtime.deadline import PLAIN_FIRST_RUN_FACTOR
from edge_smsp.devices.profiles import ConnectionSpec, load_profile
from edge_smsp.transport import LocalTransport, Transport, open_transport
from edge_smsp.transport.base import TEMP_PREFIX, runtime_files
from edge_smsp.transport.ssh import SshTransport, record_host_key, remote_command
from tests.sshd_fixture import SshdServer, free_port, write_ed25519_key
from tests.tiny_onnx import tiny_convnet

ROOT = Path(__file__).resolve().parents[1]

# Spaces, both quotes, a command substitution and a glob: any of them breaks an unquoted remote command.
AWKWARD_NAME = "dev ice 'q' \"dq\" $(touch INJECTED) ;*"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_convnet(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(params=["local", "ssh"])
def transport(request: pytest.FixtureRequest, tmp_path: Path, device_python: str) -> Iterator[Transport]:
    """Both transports with a work dir whose name needs quoting, on a python that has no torch."""
    workdir = tmp_path / AWKWARD_NAME / "work"
    if request.param == "local":
        spec = ConnectionSpec(transport="local", python=device_python, workdir=str(workdir))
    else:
        spec = request.getfixturevalue("sshd").connection(workdir=workdir, python=device_python)
    with open_transport(spec) as opened:
        yield opened


def test_upload_lands_verified_under_awkward_names(transport: Transport, model: Path, tmp_path: Path) -> None:
    remote = transport.upload(model, f"models/{AWKWARD_NAME}.onnx")
    landed = Path(remote)  # the device is this machine: check the bytes where they landed
    assert landed.parent.parent.name == "work" and landed.name == f"{AWKWARD_NAME}.onnx"
    assert sha256(landed) == sha256(model)
    assert not list(Path(transport.workdir).glob(f"{TEMP_PREFIX}*"))  # renamed, not copied
    assert not list(tmp_path.rglob("INJECTED"))  # no shell ever expanded the name


def test_run_runtime_bench_uses_the_pushed_runtime(transport: Transport, model: Path) -> None:
    remote = transport.upload(model, "model.onnx")
    runtime_dir = transport.push_runtime()
    shipped = runtime_files()
    # The whole package: subpackages (the backends) too, not only its top-level modules.
    assert {name for _, name in shipped} >= {
        "runtime/edge_smsp_runtime/__main__.py",
        "runtime/edge_smsp_runtime/backends/__init__.py",
        "runtime/edge_smsp_runtime/backends/onnxruntime_backend.py",
    }
    for local_file, remote_name in shipped:
        assert sha256(Path(transport.workdir) / remote_name) == sha256(local_file)
    assert transport.runtime_start_seconds is None
    started = time.monotonic()
    report = transport.run_runtime(
        ["bench", "--model", remote, "--runs", "20", "--min-seconds", "0"], timeout=60
    )
    start_up = transport.runtime_start_seconds
    assert start_up is not None and 0 < start_up <= time.monotonic() - started
    # A measured start-up shortens a later bench's deadline, except on an engine that builds plans at its first run.
    settings = BenchSettings()
    assert settings.timeout_after(start_up, ["CPUExecutionProvider"]) < settings.timeout
    assert (
        settings.timeout_after(start_up, ["TensorrtExecutionProvider", "CPUExecutionProvider"])
        == settings.timeout
    )
    # The runtime's own limit stops a first inference that never ends (at twice --run-timeout) before the
    # host's deadline does, so that the error names the model, not the device's Python.
    cpu = ["CPUExecutionProvider"]
    run_timeout = settings.run_timeout_after(start_up, cpu)
    assert run_timeout is not None and start_up + PLAIN_FIRST_RUN_FACTOR * run_timeout < startup_allowance(
        start_up, cpu
    )
    assert settings.run_timeout_after(start_up, ["TensorrtExecutionProvider"]) is None
    assert settings.run_timeout_after(None, cpu) is None
    args = BenchSettings(runs=3, min_seconds=0).runtime_args(remote, load_profile("localhost"), run_timeout)
    assert args[args.index("--run-timeout") + 1] == repr(round(run_timeout, 1))
    assert transport.run_runtime(args, timeout=60)["runs"] >= 3
    assert report["runtime_path"] == os.path.join(runtime_dir, "edge_smsp_runtime")
    assert report["model_sha256"] == sha256(model)
    assert report["runs"] >= 20 and report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    no_torch = transport.run([transport.python, "-c", "import torch"], timeout=30)
    assert no_torch.rc != 0 and "torch" in no_torch.stderr  # the device needs numpy + onnxruntime only


def test_device_errors_come_back_as_one_line(transport: Transport) -> None:
    with pytest.raises(TransportError, match=r"exit 2\): .*model file not found: /nowhere.onnx$"):
        transport.run_runtime(["bench", "--model", "/nowhere.onnx"], timeout=60)


def test_tampered_upload_is_detected_and_never_lands(
    transport: Transport, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest_put = transport._put
    corrupted = tmp_path / "corrupted.onnx"
    corrupted.write_bytes(model.read_bytes()[:-1] + b"\x00")

    def put_corrupted(local_path: Path, remote_path: str) -> None:
        honest_put(corrupted, remote_path)  # the bytes change on the way, the expected hash does not

    monkeypatch.setattr(transport, "_put", put_corrupted)
    with pytest.raises(TransportError, match="corrupted: SHA-256 on the device"):
        transport.upload(model, "tampered.onnx")
    assert not (Path(transport.workdir) / "tampered.onnx").exists()
    assert not list(Path(transport.workdir).glob(f"{TEMP_PREFIX}*"))


def test_command_timeout_kills_the_remote_process(transport: Transport, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    started = time.monotonic()
    with pytest.raises(TransportError, match="timed out after 1 s"):
        transport.run([transport.python, "-c", script, str(pid_file)], timeout=1)
    assert time.monotonic() - started < 10
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_device_python_that_never_answers_is_waited_for_once(tmp_path: Path) -> None:
    hanging = tmp_path / "python"
    hanging.write_text("#!/bin/sh\nsleep 60\n")
    hanging.chmod(0o755)
    workdir = tmp_path / "work"
    transport = LocalTransport(ConnectionSpec(transport="local", python=str(hanging), workdir=str(workdir)))
    assert transport.workdir == str(workdir.resolve())
    with pytest.raises(TransportError, match="timed out after 1 s .*did not finish: check connection.python"):
        transport.run([transport.python, "-c", "print(1)"], timeout=1)
    started = time.monotonic()
    transport.cleanup()  # its stale sweep would run that Python again and wait out DEFAULT_TIMEOUT (120 s)
    assert time.monotonic() - started < 20


def test_a_command_that_exits_leaving_a_child_on_its_output_is_not_waited_for(tmp_path: Path) -> None:
    transport = LocalTransport(ConnectionSpec(transport="local", workdir=str(tmp_path / "work")))
    script = "import subprocess; subprocess.Popen(['sleep', '60']); print('replied', flush=True)"
    started = time.monotonic()
    result = transport.run([transport.python, "-c", script], timeout=50)
    assert (result.rc, result.stdout.strip()) == (0, "replied")
    assert time.monotonic() - started < 25  # not the child's 60 s, nor the 50 s timeout


def test_a_device_command_flooding_stdout_is_stopped_and_stderr_is_bounded(
    transport: Transport, tmp_path: Path
) -> None:
    # 80 MiB on stdout, more than any runtime reply: the host stops reading and stops the command.
    flood = "import sys\nwhile True: sys.stdout.buffer.write(b'a' * (1 << 20))"
    with pytest.raises(TransportError, match=r"printed over 64 MiB on .*, more than any edge-smsp reply"):
        transport.run([transport.python, "-c", flood], timeout=60)
    # 3 MiB on stderr, then an exit: the result keeps the first MiB, the line a message is taken from.
    noisy = "import sys; sys.stderr.write('first line\\n' + 'e' * (3 << 20)); sys.exit(3)"
    result = transport.run([transport.python, "-c", noisy], timeout=60)
    assert result.rc == 3 and result.stderr.startswith("first line\n") and len(result.stderr) == 1 << 20


def test_cleanup_removes_stale_temporaries_but_not_fresh_ones(transport: Transport) -> None:
    workdir = Path(transport.workdir)
    stale = workdir / f"{TEMP_PREFIX}abandoned-model.onnx"
    fresh = workdir / f"{TEMP_PREFIX}other-session-model.onnx"
    stale.write_bytes(b"left by a killed upload")
    fresh.write_bytes(b"another session is uploading this")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    transport.cleanup()
    assert not stale.exists() and fresh.exists()


def test_unknown_host_is_refused_then_trusted_and_recorded(sshd: SshdServer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "ssh" / "known_hosts"
    spec = sshd.connection(known_hosts=known_hosts, workdir=tmp_path / "work")
    with pytest.raises(TransportError, match="not in .*known_hosts.*--trust-new-host"):
        open_transport(spec)
    assert not known_hosts.exists()
    with open_transport(spec, trust_new_host=True) as transport:
        assert transport.run(["true"], timeout=10).rc == 0
    assert known_hosts.read_text() == sshd.known_hosts_line()
    with open_transport(spec) as transport:  # recorded: no trust flag needed any more
        assert transport.run(["echo", "ok"], timeout=10).stdout == "ok\n"


def test_wrong_host_key_is_refused_even_when_trusting_new_hosts(sshd: SshdServer, tmp_path: Path) -> None:
    impostor = write_ed25519_key(tmp_path / "other_host_key").split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{sshd.host}]:{sshd.port} {impostor[0]} {impostor[1]}\n")
    spec = sshd.connection(known_hosts=known_hosts)
    for trust in (False, True):
        with pytest.raises(TransportError, match="does not match .*man-in-the-middle"):
            open_transport(spec, trust_new_host=trust)
    assert known_hosts.read_text().count("\n") == 1


def test_openssh_marker_lines_are_read_cert_authorities_skipped_revoked_keys_refused(
    sshd: SshdServer, tmp_path: Path
) -> None:
    authority = write_ed25519_key(tmp_path / "ca_key").split()
    line = sshd.known_hosts_line()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"# comment\n@cert-authority *.corp.example {authority[0]} {authority[1]}\n{line}")
    with open_transport(sshd.connection(known_hosts=known_hosts)) as transport:
        assert transport.run(["true"], timeout=10).rc == 0
    host_key = line.split(None, 1)[1]
    for listed in ("", line):  # revoked and unknown (even with --trust-new-host), revoked and listed too
        known_hosts.write_text(f"@revoked * {host_key}{listed}")
        for trust in (False, True):
            with pytest.raises(TransportError, match=r"is marked @revoked in .*known_hosts"):
                open_transport(sshd.connection(known_hosts=known_hosts), trust_new_host=trust)
        assert known_hosts.read_text() == f"@revoked * {host_key}{listed}"  # nothing recorded
    known_hosts.write_text(f"@bogus * {host_key}")
    with pytest.raises(TransportError, match=r"line 1: unknown marker '@bogus'"):
        open_transport(sshd.connection(known_hosts=known_hosts))


def test_unauthorised_key_and_unreachable_port_fail_fast(sshd: SshdServer, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger_key"
    write_ed25519_key(stranger)
    with pytest.raises(TransportError, match="authentication failed"):
        open_transport(sshd.connection(key_file=stranger))
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"cannot connect to .*:\d+: connection refused .*check the"):
        open_transport(sshd.connection(port=free_port()), connect_timeout=3)
    assert time.monotonic() - started < 5
    with pytest.raises(TransportError, match=r"the host name does not resolve .*check its spelling"):
        open_transport(replace(sshd.connection(), host="no-such-host.invalid"), connect_timeout=3)


def _wait_for(path: Path, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_dropped_connection_is_retried_then_given_up(sshd_factory: type[SshdServer], tmp_path: Path) -> None:
    server = sshd_factory(tmp_path / "private-sshd")
    server.start()
    spec = server.connection(workdir=tmp_path / "work", python=sys.executable)
    transport = open_transport(spec)
    transport.backoff = 0.05
    pid_file = tmp_path / "first.pid"
    # The first run records its pid and hangs; the retry after the drop finds the file and answers at once.
    script = (
        "import os, sys, time\n"
        "if os.path.exists(sys.argv[1]): print('retried')\n"
        "else: open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)\n"
    )

    def drop_network_once_started() -> None:
        _wait_for(pid_file)
        time.sleep(0.2)
        transport._client.get_transport().sock.shutdown(socket.SHUT_RDWR)  # the link dies mid-command

    dropper = threading.Thread(target=drop_network_once_started)
    dropper.start()
    try:
        result = transport.run([sys.executable, "-c", script, str(pid_file)], timeout=30)
        dropper.join()
        assert result.stdout == "retried\n"  # reconnected and ran again
        first = Path(f"/proc/{pid_file.read_text()}")
        assert (
            not first.exists() or " Z " in (first / "stat").read_text()
        )  # the orphaned first run was killed
        server.stop()
        started = time.monotonic()
        with pytest.raises(TransportError, match=r"lost the connection .* gave up after 4 attempts"):
            transport.run(["echo", "never"], timeout=10)
        assert time.monotonic() - started < 10
    finally:
        dropper.join()
        transport.close()


def test_local_transport_expands_home_and_reports_missing_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ConnectionSpec(transport="local", python=str(tmp_path / "no-python"), workdir=str(tmp_path / "w"))
    with (
        pytest.raises(DeviceStackError, match="cannot run .*set connection.python"),
        LocalTransport(spec) as transport,
    ):
        transport.upload(Path(__file__), "x.py")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    transport = LocalTransport(replace(spec, python=sys.executable, workdir="~/.cache/edge-smsp"))
    assert transport.workdir == str(tmp_path / "home" / ".cache" / "edge-smsp")
    assert Path(transport.workdir).is_dir()


def test_remote_command_quotes_every_word_and_expands_only_a_leading_tilde(tmp_path: Path) -> None:
    home = tmp_path / "home dir"
    (home / "venv bin").mkdir(parents=True)
    (home / "venv bin" / "python").symlink_to(sys.executable)
    args = ["~/x", "$HOME", 'a\'b "c"', "*", "$(touch INJECTED)"]
    script = "import os, sys; print(os.getcwd()); print(sys.argv[1:])"
    command = remote_command(["~/venv bin/python", "-c", script, *args], cwd="~")
    result = subprocess.run(
        ["sh", "-c", command],  # what the device's login shell does with the command line
        env={"HOME": str(home), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    pid, cwd, argv = result.stdout.splitlines()
    assert pid.isdigit() and cwd == str(home) and argv == str(args)
    assert not list(tmp_path.rglob("INJECTED"))


def test_concurrent_trust_keeps_every_recorded_host(tmp_path: Path) -> None:
    """Deploys trusting new hosts at the same time must not lose each other's known_hosts line."""
    known_hosts = tmp_path / "ssh" / "known_hosts"
    keys = []
    for index in range(4):
        write_ed25519_key(tmp_path / f"host{index}")
        keys.append(paramiko.Ed25519Key.from_private_key_file(str(tmp_path / f"host{index}")))
    hosts = [f"device-{index}.local" for index in range(24)]
    with ThreadPoolExecutor(max_workers=8) as executor:
        list(
            executor.map(
                lambda item: record_host_key(known_hosts, item[1], keys[item[0] % 4]), enumerate(hosts)
            )
        )
    recorded = [line.split()[0] for line in known_hosts.read_text().splitlines()]
    assert sorted(recorded) == sorted(hosts)
    assert known_hosts.stat().st_mode & 0o777 == 0o600


def test_device_without_sftp_gets_its_own_one_line_error(
    sshd_factory: type[SshdServer], model: Path, tmp_path: Path
) -> None:
    server = sshd_factory(tmp_path / "sshd-without-sftp", sftp=False)
    server.start()
    with open_transport(server.connection(workdir=tmp_path / "work", python=sys.executable)) as transport:
        assert transport.run(["echo", "ok"], timeout=10).stdout == "ok\n"  # SSH itself works
        with pytest.raises(TransportError) as refused:
            transport.upload(model, "model.onnx")
    message = str(refused.value)
    assert message.startswith(f"SFTP is not available on {server.user}@127.0.0.1:{server.port}")
    assert "Subsystem sftp" in message and "restart sshd" in message and "\n" not in message
    assert "lost the connection" not in message
    assert not (tmp_path / "work" / "model.onnx").exists()


def test_local_transport_runs_the_hosts_own_python_unless_the_profile_names_one(
    device_python: str, sshd: SshdServer, tmp_path: Path
) -> None:
    host = LocalTransport(ConnectionSpec(transport="local", workdir=str(tmp_path / "host")))
    assert host.python == sys.executable
    assert host.run_runtime(["info"], timeout=60)["python_version"] == ".".join(
        map(str, sys.version_info[:3])
    )
    named = LocalTransport(
        ConnectionSpec(transport="local", python=device_python, workdir=str(tmp_path / "d"))
    )
    assert named.python == device_python
    assert named.run([named.python, "-c", "import torch"], timeout=30).rc != 0  # really the other interpreter
    with SshTransport(replace(sshd.connection(workdir=tmp_path / "ssh"), python=None)) as remote:
        assert remote.python == "python3"  # over SSH: the device's own python3


def test_cli_deploy_on_the_localhost_profile_needs_no_venv_on_path(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",  # no venv: `python3` here, if any, lacks onnxruntime
        "HOME": str(tmp_path / "home"),
        "OMP_NUM_THREADS": "1",
        "LANG": "C.UTF-8",
    }
    system_python = subprocess.run(
        ["sh", "-c", "python3 -c 'import onnxruntime'"], env=env, capture_output=True, timeout=60
    )
    assert system_python.returncode != 0  # else this test could not tell the interpreters apart
    argv = [
        str(venv_bin / "edge-smsp"), "deploy", "--profile", str(ROOT / "device_profiles" / "localhost.yaml"),
        "--iters", "2", "--train-per-class", "16", "--val-per-class", "8", "--bench-runs", "3",
        "--bench-seconds", "0", "--pool", str(tmp_path / "pool.sqlite"), "--out", str(tmp_path / "run"), "--json",
    ]  # fmt: skip
    result = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "deploy_report.json").read_text())
    assert report["device_transport"] == "local"
    assert Path(report["remote_model_path"]).is_relative_to(
        tmp_path / "home" / ".cache" / "edge-smsp-runtime"
    )
