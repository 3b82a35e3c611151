"""A real OpenSSH server on 127.0.0.1 for transport and deploy tests, and a device-like Python environment.

Fixtures:
  sshd           session-scoped running SshdServer; `sshd.connection(...)` builds a ConnectionSpec for it.
  device_python  session-scoped interpreter of a fresh venv that holds only numpy and onnxruntime (no torch).
  sshd_factory   function-scoped: start extra servers a test may stop (connection-loss tests).
Nothing of the machine's own ssh setup is used or changed: keys, known_hosts and config live in temp dirs.
"""

from __future__ import annotations

import contextlib
import getpass
import importlib.metadata
import os
import re
import signal
import socket
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_smsp.devices.profiles import ConnectionSpec

SSHD = Path("/usr/sbin/sshd")
SFTP_SERVERS = (Path("/usr/lib/openssh/sftp-server"), Path("/usr/libexec/openssh/sftp-server"))
DEVICE_PACKAGES = ("numpy", "onnxruntime")


def write_ed25519_key(private_path: Path) -> str:
    """Write a new unencrypted ed25519 private key (OpenSSH format, mode 0600); return its public line."""
    key = Ed25519PrivateKey.generate()
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    private_path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode("ascii")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _descendants(root_pid: int) -> list[int]:
    """Pids of every process below root_pid (the per-connection sshd children and their sessions)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, pending = [], [root_pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


class SshdServer:
    """One sshd process on 127.0.0.1 with its own host key, client key, authorized_keys and known_hosts.

    sftp=False leaves out the `Subsystem sftp` line, like a device whose sshd offers no SFTP.
    """

    def __init__(self, root: Path, sftp: bool = True) -> None:
        self.root = root
        self.sftp = sftp
        root.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = 0
        self.user = getpass.getuser()
        self.host_key = root / "ssh_host_ed25519_key"
        self.host_public = write_ed25519_key(self.host_key)
        self.client_key = root / "client_ed25519"
        (root / "authorized_keys").write_text(write_ed25519_key(self.client_key) + "\n")
        self.known_hosts = root / "known_hosts"
        self.log = root / "sshd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def known_hosts_line(self) -> str:
        """The known_hosts entry for this server (non-default ports are written [host]:port)."""
        key_type, key_data = self.host_public.split()[:2]
        return f"[{self.host}]:{self.port} {key_type} {key_data}\n"

    def _write_config(self) -> Path:
        sftp = next((str(path) for path in SFTP_SERVERS if path.exists()), "internal-sftp")
        config = self.root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.host}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",
                    "UsePAM no",
                    f"Subsystem sftp {sftp}" if self.sftp else "# no SFTP subsystem",
                    "AllowTcpForwarding no",
                    "X11Forwarding no",
                    "PrintMotd no",
                    "MaxStartups 64",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        return config

    def start(self) -> None:
        """Start sshd on a free port and wait until it answers with an SSH banner."""
        if os.geteuid() == 0 and not Path("/run/sshd").exists():
            Path("/run/sshd").mkdir(mode=0o755)  # privilege separation directory sshd insists on as root
        for _ in range(3):  # another process may grab the free port before sshd binds it
            self.port = free_port()
            config = self._write_config()
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(
                    [str(SSHD), "-D", "-e", "-f", str(config)],
                    stdout=log,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                )
            if self._wait_ready():
                self.known_hosts.write_text(self.known_hosts_line())
                return
            self.stop()
        raise RuntimeError(f"sshd did not start: {self.log.read_text()[-2000:]}")

    def _wait_ready(self, seconds: float = 10.0) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as probe:
                    if probe.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Kill sshd and every session it started (existing connections drop)."""
        if self.process is None:
            return
        for pid in _descendants(self.process.pid):
            with contextlib.suppress(ProcessLookupError):  # already gone with its parent
                os.kill(pid, signal.SIGKILL)
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def connection(
        self,
        *,
        workdir: str | Path | None = None,
        python: str | None = None,
        known_hosts: Path | None = None,
        key_file: Path | None = None,
        port: int | None = None,
        user: str | None = None,
    ) -> ConnectionSpec:
        """A ConnectionSpec for this server; defaults: this user, the client key, the server's known_hosts."""
        return ConnectionSpec(
            transport="ssh",
            host=self.host,
            port=port if port is not None else self.port,
            user=user or self.user,
            key_file=key_file or self.client_key,
            known_hosts=known_hosts or self.known_hosts,
            python=python or sys.executable,
            workdir=str(workdir) if workdir is not None else str(self.root / "device-workdir"),
        )


def _skip_without_sshd() -> None:
    if not SSHD.exists():
        pytest.skip("/usr/sbin/sshd is absent: apt-get install openssh-server to run the SSH transport tests")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    """A running OpenSSH server on 127.0.0.1 for the whole test session."""
    _skip_without_sshd()
    server = SshdServer(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sshd_factory(tmp_path: Path) -> Iterator[type[SshdServer]]:
    """Start private servers (SshdServer(root).start()) that the test may stop; all are stopped afterwards."""
    _skip_without_sshd()
    started: list[SshdServer] = []

    class _Tracked(SshdServer):
        def start(self) -> None:
            started.append(self)
            super().start()

    try:
        yield _Tracked
    finally:
        for server in started:
            server.stop()


def _distribution_closure(names: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    """The installed distributions `names` need at run time (their non-extra requirements, recursively)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    pending = list(names)
    while pending:
        name = pending.pop().lower().replace("_", "-")
        if name in seen:
            continue
        dist = importlib.metadata.distribution(name)
        seen[name] = dist
        for requirement in dist.requires or []:
            if "extra ==" in requirement:
                continue
            match = re.match(r"[A-Za-z0-9_.\-]+", requirement)
            if match:
                pending.append(match.group(0))
    return list(seen.values())


@pytest.fixture(scope="session")
def device_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A venv interpreter that sees only numpy, onnxruntime and their requirements, like a bare device."""
    root = tmp_path_factory.mktemp("device-venv")
    venv.create(root, with_pip=False, symlinks=True)
    python = root / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # Link the installed packages instead of installing them: no network, and the same builds as the host's.
    for dist in _distribution_closure(DEVICE_PACKAGES):
        tops = {Path(str(file)).parts[0] for file in dist.files or [] if not str(file).startswith("..")}
        for top in tops:
            source = Path(str(dist.locate_file(top)))
            target = site / top
            if source.exists() and not target.exists():
                target.symlink_to(source)
    return str(python)
