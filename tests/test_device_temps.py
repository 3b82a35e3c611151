"""Device work dirs: temporaries a killed upload left are removed on the next connection; odd work dir names."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_smsp.transport import open_transport
from edge_smsp.transport.temps import TEMP_PREFIX, owner_token
from tests.sshd_fixture import SshdServer
from tests.tiny_onnx import tiny_convnet


def _dead_pid() -> int:
    pid = 4_000_000  # above the default pid_max: never a live process
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return pid


@pytest.mark.parametrize("workdir_name", ["work", "work \n"], ids=["plain", "trailing-whitespace-newline"])
def test_next_upload_removes_temporaries_of_dead_processes_of_this_host(
    sshd: SshdServer, tmp_path: Path, device_python: str, workdir_name: str
) -> None:
    workdir = tmp_path / workdir_name
    workdir.mkdir()
    abandoned = workdir / f"{TEMP_PREFIX}{owner_token(_dead_pid())}-abc-model.onnx"
    abandoned.write_bytes(b"")  # a cut during the first upload leaves 0 bytes
    live = workdir / f"{TEMP_PREFIX}{owner_token()}-def-model.onnx"  # this process: still uploading
    live.write_bytes(b"partial")
    model = tiny_convnet(tmp_path / "tiny.onnx")
    with open_transport(sshd.connection(workdir=workdir, python=device_python)) as transport:
        assert transport.workdir == str(workdir)  # resolved as it is, whitespace and newline included
        landed = Path(transport.upload(model, "model.onnx"))
    assert landed.parent == workdir and landed.read_bytes() == model.read_bytes()
    assert not abandoned.exists() and live.exists()
