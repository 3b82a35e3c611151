"""The SSH link failing under a command: a half-open link is noticed, a silent peer is named as such."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from edge_smsp.core.errors import TransportError
from edge_smsp.transport.ssh import SshTransport
from tests.link_proxy import LinkProxy
from tests.sshd_fixture import SshdServer


def test_half_open_link_during_a_command_fails_instead_of_hanging(sshd: SshdServer, tmp_path: Path) -> None:
    with LinkProxy(sshd.port) as proxy:
        spec = sshd.connection(port=proxy.port, known_hosts=tmp_path / "known_hosts", workdir=tmp_path / "w")
        transport = SshTransport(spec, trust_new_host=True, connect_timeout=3, retries=0)
        try:
            threading.Timer(1.0, proxy.freeze).start()
            started = time.monotonic()
            with pytest.raises(TransportError, match="stopped answering"):
                transport.run(["sleep", "120"], timeout=600)
            elapsed = time.monotonic() - started
        finally:
            transport.close()
    assert elapsed < 60  # the command's own deadline (600 s) is not what ended it


def test_peer_that_never_answers_is_named_as_such(sshd: SshdServer, tmp_path: Path) -> None:
    with LinkProxy(sshd.port, mode="silent") as proxy:
        spec = sshd.connection(port=proxy.port, known_hosts=tmp_path / "known_hosts")
        with pytest.raises(TransportError, match="sent no SSH banner within 2 s"):
            SshTransport(spec, trust_new_host=True, connect_timeout=2, retries=0)


def test_link_dropped_during_authentication_is_not_an_authentication_failure(
    sshd: SshdServer, tmp_path: Path
) -> None:
    with LinkProxy(sshd.port, mode="cut-at-auth") as proxy:
        spec = sshd.connection(port=proxy.port, known_hosts=tmp_path / "known_hosts")
        with pytest.raises(TransportError) as caught:
            SshTransport(spec, trust_new_host=True, connect_timeout=3, retries=0)
    assert "authentication failed" not in str(caught.value) and "dropped" in str(caught.value)
