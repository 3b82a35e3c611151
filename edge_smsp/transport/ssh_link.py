"""The SSH link itself: why a connection attempt failed, and noticing a peer that went silent.

A connection attempt can fail in four ways that call for four different fixes, and paramiko reports two of them
misleadingly ("No existing session" for a peer that never answered, "Authentication failed" for a link that
dropped during authentication). `connect_failure` tells them apart from the transport's state.

paramiko's own keepalive asks for no reply, so on a half-open link its packets vanish into the socket buffer
and nothing notices. `Liveness` sends a request the server must answer (OpenSSH answers an unknown global
request with SSH_MSG_REQUEST_FAILURE) and closes the transport when an answer is late: every operation blocked
on the link (a channel read, an SFTP write, an exit status) then fails at once instead of hanging.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import paramiko

from edge_smsp.core.errors import error_text

PING_REQUEST = "keepalive@openssh.com"
PING_INTERVAL = 5.0  # seconds between pings
REPLY_TIMEOUT = 20.0  # a silent link is noticed PING_INTERVAL + REPLY_TIMEOUT seconds after it went silent


class Liveness:
    """Pings a connected transport with a reply expected; closes it when a reply is REPLY_TIMEOUT late."""

    def __init__(
        self,
        transport: paramiko.Transport,
        interval: float = PING_INTERVAL,
        reply_timeout: float = REPLY_TIMEOUT,
    ) -> None:
        self.transport = transport
        self.interval = interval
        self.reply_timeout = reply_timeout
        self.silent_since: float | None = None  # time.monotonic() of the unanswered ping, once the link died
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="edge-smsp-liveness", daemon=True)
        self._thread.start()

    @property
    def dead(self) -> bool:
        """True once the peer failed to answer in time (the transport is closed then)."""
        return self.silent_since is not None

    def reason(self) -> str:
        """What happened to the link, for an error message."""
        return f"the device stopped answering (no reply to a keepalive within {self.reply_timeout:g} s)"

    def stop(self) -> None:
        """Stop pinging (the connection is being closed on purpose)."""
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.transport.is_active():
                return
            answered = threading.Event()
            sent = time.monotonic()
            threading.Thread(target=self._ping, args=(answered,), daemon=True).start()
            if not answered.wait(self.reply_timeout) and not self._stop.is_set():
                self.silent_since = sent
                self.transport.close()  # unblocks every waiter on the link
                return

    def _ping(self, answered: threading.Event) -> None:
        # wait=True asks for a reply; it returns on the reply or once the transport is closed.
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.transport.global_request(PING_REQUEST, wait=True)
        answered.set()


def connect_failure(
    error: BaseException, client: paramiko.SSHClient, address: str, timeout: float
) -> str | None:
    """What a failed client.connect() means, when paramiko's own message would mislead; None otherwise."""
    transport = client.get_transport()
    if transport is None:
        return _no_connection(error, address, timeout)
    if not transport.remote_version:
        text = str(error).lower()
        if not _timed_out(error) and ("banner" in text or "protocol" in text):
            return (
                f"{address} answered, but not as an SSH server (what it sent is no SSH banner); "
                "is that the device's SSH port?"
            )
        return (
            f"{address} accepted the TCP connection but sent no SSH banner within {timeout:g} s, nothing or "
            "something else (is sshd running there, is that its SSH port, and is nothing in between swallowing "
            "the traffic?)"
        )
    if not transport.initial_kex_done:
        return f"the link to {address} dropped during the SSH key exchange ({error_text(error)})"
    if isinstance(error, paramiko.AuthenticationException):
        if not transport.is_active():
            return f"the link to {address} dropped during authentication ({error_text(error)}); try again"
        if "timeout" in str(error).lower():
            return (
                f"{address} stopped answering during authentication (no reply within {timeout:g} s); "
                "check the link and try again"
            )
    return None


def _no_connection(error: BaseException, address: str, timeout: float) -> str:
    """Why no TCP connection was made, and what to check: paramiko's 'Unable to connect to port N' names neither."""
    errors = getattr(error, "errors", None)  # NoValidConnectionsError: one OSError per address tried
    causes = list(errors.values()) if isinstance(errors, dict) and errors else [error]
    if all(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return (
            f"cannot connect to {address}: connection refused (nothing listens on that port); check the "
            "connection's host and port, and that sshd runs on the device"
        )
    if isinstance(error, socket.gaierror):
        return f"cannot connect to {address}: the host name does not resolve ({error_text(error)}); check its spelling"
    if any(_timed_out(cause) for cause in causes):
        return (
            f"cannot connect to {address}: no answer within {timeout:g} s; check that the device is on and "
            "reachable from here (network, VPN, firewall)"
        )
    return f"cannot connect to {address}: {error_text(error)}; check the connection's host and port"


def _timed_out(error: BaseException) -> bool:
    """Whether a timeout is behind the error; paramiko wraps its socket.timeout, whose text may be empty."""
    seen: BaseException | None = error
    for _ in range(8):  # a bounded walk: exception chains can loop
        if seen is None:
            return False
        if (
            isinstance(seen, TimeoutError)
            or "timed out" in str(seen).lower()
            or "timeout" in str(seen).lower()
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
