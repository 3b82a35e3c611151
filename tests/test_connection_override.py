"""--connection: reach a profile's device another way (a YAML file of connection keys or an inline mapping),
validated like a profile's own connection; host keys are verified as before."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from edge_smsp.cli import main
from edge_smsp.core.errors import ProfileError
from edge_smsp.devices.profiles import load_connection_override, load_profile, with_connection
from tests.sshd_fixture import SshdServer
from tests.tiny_onnx import tiny_convnet


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_override_replaces_only_the_keys_it_names(tmp_path: Path) -> None:
    jetson = load_profile("jetson_nano")
    fragment = tmp_path / "conn" / "lab.yaml"
    fragment.parent.mkdir()
    fragment.write_text("host: 10.0.0.7\nport: 2222\nkey_file: keys/lab_ed25519\n")
    overrides, base_dir = load_connection_override(str(fragment))
    moved = with_connection(jetson, overrides, base_dir)
    assert (moved.connection.host, moved.connection.port) == ("10.0.0.7", 2222)
    assert moved.connection.key_file == tmp_path / "conn" / "keys" / "lab_ed25519"  # relative to the fragment
    assert moved.connection.user == jetson.connection.user == "jetson"
    assert moved.connection.known_hosts == jetson.connection.known_hosts  # host keys checked as before
    assert moved.connection.transport == "ssh"
    assert dict(moved.to_dict(), connection=None) == dict(jetson.to_dict(), connection=None)

    inline, cwd = load_connection_override("{transport: local, python: /opt/py36/bin/python}")
    local = with_connection(jetson, inline, cwd)
    assert (local.connection.transport, local.connection.python) == ("local", "/opt/py36/bin/python")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{port: 70000}", "connection override: connection.port: must be 1-65535"),
        ("{hostname: x}", "connection override: connection.hostname: unknown field"),
        ("{password: hunter2}", "connection override: connection.password: passwords are not allowed"),
        ("{transport: telnet}", "connection override: connection.transport: must be one of ssh, local"),
        (
            "{host: a..b}",
            "connection override: connection.host: 'a..b' is neither an IP address nor a host name",
        ),
        (f"{{host: {'x' * 64}.lan}}", "labels of 1 to 63 characters"),
        ("{host: -bad.lan}", "is neither an IP address nor a host name"),
        ("no-such-file.yaml", "no such file, and not an inline YAML mapping"),
    ],
)
def test_bad_overrides_are_one_line_before_anything_runs(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ProfileError, match=message):
        with_connection(load_profile("raspberry_pi_5"), *load_connection_override(text))
    argv = [
        "deploy",
        "--profile",
        "raspberry_pi_5",
        "--connection",
        text,
        "--pool",
        str(tmp_path / "pool.sqlite"),
    ]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists() and not (tmp_path / "pool.sqlite").exists()


def test_bench_reaches_a_bundled_profile_through_the_override(
    sshd: SshdServer, device_python: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_convnet(tmp_path / "tiny.onnx")
    connection = {
        "host": sshd.host,
        "port": sshd.port,
        "user": sshd.user,
        "key_file": str(sshd.client_key),
        "known_hosts": str(tmp_path / "known_hosts"),  # this device was never seen before
        "python": device_python,
        "workdir": str(tmp_path / "device-work"),
    }
    fragment = tmp_path / "pi.yaml"
    fragment.write_text(yaml.safe_dump(connection))
    argv = ["bench", "--profile", "raspberry_pi_5", "--model", str(model), "--connection", str(fragment)]
    quick = ["--bench-runs", "5", "--bench-seconds", "0", "--json"]

    assert main([*argv, *quick]) == 2
    assert "--trust-new-host" in one_line_error(capsys)
    assert not (tmp_path / "known_hosts").exists()

    assert main([*argv, *quick, "--trust-new-host"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (
        report["profile"] == "raspberry_pi_5" and report["threads"] == load_profile("raspberry_pi_5").threads
    )
    assert report["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert report["remote_model_path"].startswith(str(tmp_path / "device-work"))
    assert (tmp_path / "known_hosts").read_text() == sshd.known_hosts_line()
