"""The SSH transport (paramiko): verified host keys, key or agent auth, SFTP uploads, bounded retries."""

from __future__ import annotations

import errno
import getpass
import json
import logging
import select
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import paramiko

from edge_smsp.core.errors import TransportError, error_text
from edge_smsp.devices.profiles import ConnectionSpec
from edge_smsp.transport.base import (
    MAX_REPLY_BYTES,
    MAX_STDERR_BYTES,
    CommandTimedOut,
    RemoteResult,
    Transport,
    reply_too_large,
    timed,
)
from edge_smsp.transport.host_keys import (
    _HostKeyPolicy,
    _UnknownHostKey,
    check_key_file,
    check_known_hosts_file,
    fingerprint,
    load_known_hosts,
)
from edge_smsp.transport.host_keys import record_host_key as record_host_key
from edge_smsp.transport.ssh_link import Liveness, connect_failure

T = TypeVar("T")

# paramiko logs socket errors at ERROR; with no handler Python would print them beside our one-line error.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# JSON, so that a work dir ending in whitespace or holding a newline comes back as it is.
# A '~user' that stays unexpanded (no such user there) is refused, never made as a literal folder.
_RESOLVE_WORKDIR = (
    "import json, os, sys; path = os.path.expanduser(sys.argv[1]); "
    "path.startswith('~') and sys.exit('no such user to expand ' + path.split('/')[0]); "
    "path = os.path.realpath(path); os.path.lexists(path) and not os.path.isdir(path) and "
    "sys.exit(path + ' is not a folder; set connection.workdir to a folder'); "
    "os.makedirs(path, exist_ok=True); print(json.dumps(path))"
)
# `sh` prints its pid, then becomes the command. sshd starts every session's command as a process group leader
# (setsid), so that pid is also the group a timeout or an interruption stops. `timeout(1)` is not assumed.
_WRAPPER = 'echo "$$"; exec "$@"'
_WRAPPER_CWD = 'echo "$$"; cd "$1" || exit 126; shift; exec "$@"'
# TERM the group (or the process, where it leads none), KILL what is left after 2 s; done when all are gone.
_KILL = (
    'kill -s TERM -- "-$1" 2>/dev/null || kill -s TERM "$1" 2>/dev/null || exit 0; '
    "for i in 1 2 3 4 5 6 7 8 9 10; do "
    'kill -s 0 -- "-$1" 2>/dev/null || kill -s 0 "$1" 2>/dev/null || exit 0; sleep 0.2; done; '
    'kill -s KILL -- "-$1" 2>/dev/null; kill -s KILL "$1" 2>/dev/null; exit 0'
)
_POLL_SECONDS = 0.05
_PID_WAIT_SECONDS = 2.0  # after an interruption: how long to wait for a just-started command's pid


class _ConnectionLost(Exception):
    """The SSH connection dropped (or could not be re-established) in the middle of an operation."""


def _home_word(path: str) -> str:
    """A shell word for a path, with a leading '~' expanded by the remote shell through "$HOME" only."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def remote_command(argv: list[str], cwd: str | None = None) -> str:
    """The command line for the remote login shell: every argument quoted, run through `sh` as shown above."""
    words = [_home_word(argv[0])] + [shlex.quote(arg) for arg in argv[1:]]
    if cwd is None:
        return f"exec sh -c {shlex.quote(_WRAPPER)} edge-smsp " + " ".join(words)
    return f"exec sh -c {shlex.quote(_WRAPPER_CWD)} edge-smsp {_home_word(cwd)} " + " ".join(words)


def _pid_of(stdout: bytearray) -> int | None:
    """The pid the wrapper printed on the first line of stdout, once that line is complete."""
    line, newline, _ = bytes(stdout).partition(b"\n")
    return int(line) if newline and line.strip().isdigit() else None


class SshTransport(Transport):
    """A device over SSH. Connection drops are retried `retries` times with exponential backoff."""

    def __init__(
        self,
        connection: ConnectionSpec,
        *,
        trust_new_host: bool = False,
        connect_timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        super().__init__(connection)
        self.trust_new_host = trust_new_host
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff = backoff
        self.known_hosts = (
            Path(connection.known_hosts).expanduser()
            if connection.known_hosts
            else Path.home() / ".ssh" / "known_hosts"
        )
        self.user = connection.user or getpass.getuser()
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._liveness: Liveness | None = None
        self._lost: str | None = None  # why the link was lost, once it was
        self._retry_depth = 0
        self._orphans: list[int] = []  # pids of commands whose connection dropped; killed after reconnecting
        self._connect(initial=True)

    @property
    def address(self) -> str:
        return f"{self.user}@{self.connection.host}:{self.connection.port}"

    # Connection management.

    def _connect(self, initial: bool) -> None:
        client = paramiko.SSHClient()
        revoked: list[paramiko.PKey] = []
        check_known_hosts_file(self.known_hosts)
        if self.known_hosts.is_file():
            try:
                entries, revoked = load_known_hosts(self.known_hosts)
                for entry in entries:
                    for hostname in entry.hostnames:
                        client.get_host_keys().add(hostname, entry.key.get_name(), entry.key)
            except UnicodeDecodeError as error:
                raise TransportError(
                    f"known_hosts file {self.known_hosts} is not UTF-8 text (byte 0x{error.object[error.start]:02x}"
                    f" at offset {error.start}): save it as UTF-8"
                ) from None
            except (OSError, paramiko.SSHException, paramiko.hostkeys.InvalidHostKey, ValueError) as error:
                raise TransportError(
                    f"cannot read known_hosts file {self.known_hosts}: {error_text(error)}"
                ) from None
        client.set_missing_host_key_policy(_HostKeyPolicy(self.known_hosts, self.trust_new_host, revoked))
        key_file = self.connection.key_file
        if key_file is not None:
            check_key_file(key_file)
        try:
            client.connect(
                hostname=self.connection.host,
                port=int(self.connection.port),
                username=self.user,
                key_filename=str(Path(key_file).expanduser()) if key_file else None,
                allow_agent=key_file is None,
                look_for_keys=key_file is None,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                channel_timeout=self.connect_timeout,
            )
        except TransportError:  # the host key could not be recorded
            client.close()
            raise
        except _UnknownHostKey as error:
            client.close()
            raise TransportError(
                f"host key of {error.hostname} ({fingerprint(error.key)}) is not in {self.known_hosts}; "
                "check it and pass --trust-new-host to accept and record it"
            ) from None
        except paramiko.BadHostKeyException as error:
            client.close()
            raise TransportError(
                f"host key of {self.connection.host}:{self.connection.port} does not match {self.known_hosts} "
                f"(got {fingerprint(error.key)}): possible man-in-the-middle; if the device was reinstalled, "
                f"remove the old entry with ssh-keygen -R and connect again"
            ) from None
        except (UnicodeDecodeError, ValueError, IndexError) as error:  # paramiko reading a garbage key file
            client.close()
            raise TransportError(
                f"SSH key file {key_file} is not a private key paramiko can read ({type(error).__name__}); "
                "name an OpenSSH or PEM private key"
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as error:
            # The link failing (no answer, a drop during the key exchange or authentication) is not a refusal.
            link_failure = connect_failure(error, client, self.address, self.connect_timeout)
            client.close()
            if isinstance(error, paramiko.AuthenticationException) and link_failure is None:
                how = f"key {key_file}" if key_file else "ssh-agent or ~/.ssh keys"
                raise TransportError(
                    f"SSH authentication failed for {self.address} with {how}: {error}"
                ) from None
            reason = link_failure or f"cannot connect to {self.address}: {error_text(error)}"
            if not initial:
                raise _ConnectionLost(reason) from None
            raise TransportError(reason) from None
        transport = client.get_transport()
        server_key = transport.get_remote_server_key() if transport is not None else None
        if server_key is not None and any(server_key == key for key in revoked):
            client.close()
            raise TransportError(
                f"host key of {self.address} ({fingerprint(server_key)}) is marked @revoked in {self.known_hosts}: "
                "refused; if the device got a new key, remove the revoked line's host entry and check the new key"
            )
        self._liveness = Liveness(transport) if transport is not None else None
        self._client = client
        self._sftp = None

    def _connected(self) -> bool:
        if self._client is None:
            return False
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def _drop(self) -> None:
        client, self._client, self._sftp = self._client, None, None
        if self._liveness is not None:
            self._liveness.stop()
            self._liveness = None
        if client is not None:
            client.close()

    def _lost_reason(self, default: str) -> str:
        """Why the link is gone: the liveness check's finding when it closed the link, else `default`."""
        if self._liveness is not None and self._liveness.dead:
            return self._liveness.reason()
        return default

    def _retrying(self, action: str, operation: Callable[[], T]) -> T:
        """Run operation(); on a dropped connection reconnect and try again, a bounded number of times."""
        if self._retry_depth:
            return operation()  # the outermost retry loop owns reconnection
        attempts = self.retries + 1
        causes: list[str] = []  # what went wrong at each attempt, the first (what happened) foremost
        self._retry_depth += 1
        try:
            for attempt in range(1, attempts + 1):
                try:
                    if not self._connected():
                        self._connect(initial=False)
                        self._kill_orphans()
                    return operation()
                except (
                    TimeoutError,
                    _ConnectionLost,
                    EOFError,
                    paramiko.SSHException,
                    ConnectionError,
                ) as error:
                    causes.append(self._lost_reason(error_text(error)))
                except OSError as error:
                    if self._connected():  # the link is fine: the file operation itself failed
                        said = error.strerror or error_text(
                            error
                        )  # "No such file", not "[Errno 2] No such file"
                        if said.strip() == "Failure":  # SFTP's generic code: a full disk is the usual cause
                            said += f" (no reason given; check free space and quotas in {self.workdir})"
                        else:
                            said += f" in work dir {self.workdir}; set connection.workdir to a folder that user can write"
                        raise TransportError(f"{action} failed on {self.address}: {said}") from None
                    causes.append(self._lost_reason(error_text(error)))
                self._drop()
                if attempt < attempts:
                    time.sleep(self.backoff * 2 ** (attempt - 1))
        finally:
            self._retry_depth -= 1
        detail = causes[0] if len(set(causes)) == 1 else f"{causes[0]}; last attempt: {causes[-1]}"
        raise TransportError(
            f"lost the connection to {self.address} during {action}; gave up after {attempts} attempts "
            f"({detail})"
        )

    # Primitives.

    def _resolve_workdir(self) -> str:
        result = self.run(
            [self.python, "-c", _RESOLVE_WORKDIR, self.connection.workdir], self.connect_timeout * 3
        )
        try:
            path = json.loads(result.stdout) if result.rc == 0 else None
        except ValueError:
            path = None
        if not isinstance(path, str):
            self._check_python_runs(result)  # /usr/bin/false: the same hint as the local transport's
            detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.rc}"
            if result.rc == 127:
                detail += f" (is {self.python!r} the device's python?)"
            raise TransportError(
                f"cannot create work dir {self.connection.workdir!r} on {self.address} "
                f"with python {self.python!r}: {detail}"
            )
        return path

    def _run(self, argv: list[str], timeout: float, cwd: str | None = None) -> RemoteResult:
        if not argv:
            raise TransportError("no command to run")
        return self._retrying(f"running {argv[0]}", lambda: self._run_once(argv, timeout, cwd))

    def _run_once(self, argv: list[str], timeout: float, cwd: str | None) -> RemoteResult:
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            raise _ConnectionLost("SSH session not active")
        start = time.monotonic()
        deadline = start + timeout
        channel = transport.open_session(timeout=self.connect_timeout)
        stdout = bytearray()
        stderr = bytearray()
        finished = False
        try:
            channel.settimeout(timeout)
            channel.exec_command(remote_command(argv, cwd))
            channel.shutdown_write()
            while True:
                while channel.recv_ready():
                    stdout += channel.recv(1 << 16)
                    if len(stdout) > MAX_REPLY_BYTES:
                        raise reply_too_large(argv[0], self.address)  # `finally` stops the command
                while channel.recv_stderr_ready():
                    stderr += channel.recv_stderr(1 << 16)[: max(0, MAX_STDERR_BYTES - len(stderr))]
                if (
                    channel.exit_status_ready()
                    and not channel.recv_ready()
                    and not channel.recv_stderr_ready()
                ):
                    break
                if not transport.is_active():
                    raise _ConnectionLost(self._lost_reason("connection dropped while the command ran"))
                if time.monotonic() > deadline:
                    finished = True
                    self._kill(_pid_of(stdout), transport)
                    raise CommandTimedOut(
                        f"command timed out after {timeout:g} s on {self.address}: {argv[0]}"
                    )
                select.select([channel], [], [], _POLL_SECONDS)
            rc = channel.recv_exit_status()
            if rc == -1 and not transport.is_active():
                raise _ConnectionLost(
                    self._lost_reason("connection dropped before the command's exit status arrived")
                )
            finished = True
        finally:
            if not finished:
                # Without a terminal sshd does not signal the command: stop it now (interrupted) or, when the
                # link is gone, after reconnecting and before any retry runs it again.
                pid = _pid_of(stdout) or self._await_pid(channel, stdout, transport)
                if pid is not None and transport.is_active():
                    self._kill(pid, transport)
                elif pid is not None:
                    self._orphans.append(pid)
            channel.close()
        output = bytes(stdout).partition(b"\n")[2] if _pid_of(stdout) is not None else bytes(stdout)
        return RemoteResult(
            rc=rc,
            stdout=output.decode("utf-8", "replace"),
            stderr=bytes(stderr).decode("utf-8", "replace"),
            seconds=timed(start),
        )

    def _await_pid(
        self, channel: paramiko.Channel, stdout: bytearray, transport: paramiko.Transport
    ) -> int | None:
        """The pid of a command interrupted before its wrapper's first line arrived (it may be starting)."""
        deadline = time.monotonic() + _PID_WAIT_SECONDS
        try:
            while transport.is_active() and time.monotonic() < deadline and not channel.closed:
                while channel.recv_ready():
                    stdout += channel.recv(1 << 16)
                if _pid_of(stdout) is not None or channel.exit_status_ready():
                    break
                select.select([channel], [], [], _POLL_SECONDS)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        return _pid_of(stdout)

    def _kill(self, pid: int | None, transport: paramiko.Transport) -> None:
        """Stop a remote command and its process group (TERM, then KILL after 2 s); best effort, bounded."""
        if pid is None:
            return
        try:
            channel = transport.open_session(timeout=self.connect_timeout)
            try:
                channel.exec_command(f"exec sh -c {shlex.quote(_KILL)} edge-smsp {pid}")
                deadline = time.monotonic() + self.connect_timeout
                while not channel.exit_status_ready() and time.monotonic() < deadline:
                    if not transport.is_active():
                        break
                    time.sleep(_POLL_SECONDS)
            finally:
                channel.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the caller's own error (timeout, lost connection, interruption) is what matters

    def _kill_orphans(self) -> None:
        transport = self._client.get_transport() if self._client else None
        while self._orphans and transport is not None:
            self._kill(self._orphans.pop(), transport)

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            if self._client is None:
                raise _ConnectionLost("SSH session not active")
            try:
                self._sftp = self._client.open_sftp()
            except (paramiko.SSHException, EOFError):
                if not self._connected():
                    raise  # the connection dropped: the retry loop reconnects
                # The link is up but the server closed the sftp channel: it runs no SFTP subsystem.
                raise TransportError(
                    f"SFTP is not available on {self.address}: its sshd has no SFTP subsystem; add "
                    "`Subsystem sftp /usr/lib/openssh/sftp-server` (or `Subsystem sftp internal-sftp`) to the "
                    "device's /etc/ssh/sshd_config and restart sshd"
                ) from None
            self._sftp.get_channel().settimeout(max(60.0, self.connect_timeout))
        return self._sftp

    def _put(self, local_path: Path, remote_path: str) -> None:
        self._sftp_client().put(str(local_path), remote_path, confirm=True)

    def _remove(self, remote_path: str) -> None:
        def remove() -> None:
            try:
                self._sftp_client().remove(remote_path)
            except FileNotFoundError:
                pass
            except OSError as error:
                if error.errno != errno.ENOENT:
                    raise

        self._retrying("removing a temporary file", remove)

    def _list_names(self, remote_dir: str) -> list[str]:
        return self._retrying("listing the work dir", lambda: self._sftp_client().listdir(remote_dir))

    def close(self) -> None:
        """Close SFTP and the SSH connection."""
        self._drop()
