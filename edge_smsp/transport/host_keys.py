"""SSH host keys (verified against known_hosts, recorded there only when the user trusts a new host) and the
checks of the key and known_hosts files a profile names."""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import paramiko

from edge_smsp.core.errors import EdgeSmspError, PathError, TransportError, error_text
from edge_smsp.core.fileio import replaceable_target, write_atomically
from edge_smsp.core.paths import kind, status


def load_known_hosts(path: Path) -> tuple[list[paramiko.hostkeys.HostKeyEntry], list[paramiko.PKey]]:
    """A known_hosts file's entries, and the keys its @revoked lines name. paramiko reads neither OpenSSH marker:
    @cert-authority lines are skipped (host certificates are not used here), @revoked keys are refused."""
    entries: list[paramiko.hostkeys.HostKeyEntry] = []
    revoked: list[paramiko.PKey] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        marker, rest = text.split(None, 1) if text.startswith("@") and " " in text else ("", text)
        if marker == "@cert-authority":
            continue
        if marker not in ("", "@revoked"):
            raise ValueError(
                f"line {number}: unknown marker {marker[:40]!r} (OpenSSH knows @cert-authority and @revoked)"
            )
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(rest, number)
        except (paramiko.SSHException, paramiko.hostkeys.InvalidHostKey, ValueError) as error:
            raise ValueError(f"line {number}: {error_text(error)}") from None
        if entry is None or entry.key is None:
            continue  # a key type paramiko does not know: it can match no server key either
        for hostname in entry.hostnames:
            if hostname.startswith("|1|") and not _hashed_name(hostname):  # paramiko fails on it mid-connect
                raise ValueError(
                    f"line {number}: hashed host name {hostname[:40]!r} is not |1|SALT|HASH in base64"
                )
        if marker:
            revoked.append(entry.key)
        else:
            entries.append(entry)
    return entries, revoked


def _hashed_name(hostname: str) -> bool:
    """Whether a hashed known_hosts name is |1|salt|hash with a 20-byte base64 salt and HMAC-SHA1."""
    parts = hostname.split("|")
    try:
        decoded = [base64.b64decode(part, validate=True) for part in parts[2:]]
    except binascii.Error:
        return False
    return len(parts) == 4 and all(len(value) == 20 for value in decoded)


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint of a host key."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode("ascii").rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


NULL_DEVICE = os.devnull  # known_hosts: /dev/null, the usual "keep no host keys" idiom


def record_host_key(known_hosts: Path, hostname: str, key: paramiko.PKey) -> None:
    """Append one host key line to a known_hosts file, written atomically and kept private. Through a symlink
    the linked file is updated (the link stays). /dev/null records nothing, as OpenSSH's
    UserKnownHostsFile=/dev/null: the key is trusted for this connection only, and nothing (no lock file either)
    is made in /dev. Any other device, FIFO or socket is refused in one line, never replaced by a file."""
    if os.path.realpath(known_hosts) == os.path.realpath(NULL_DEVICE):
        return
    try:
        target = replaceable_target(known_hosts)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        # Read-modify-replace under a lock: concurrent deploys trusting new hosts must not drop each other's line.
        lock_path = target.with_name(f".{target.name}.lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            existing = target.read_text(errors="replace") if target.exists() else ""
            if existing and not existing.endswith("\n"):
                existing += "\n"
            write_atomically(target, (existing + line).encode("utf-8"), mode=0o600)
    except (OSError, EdgeSmspError) as error:
        detail = error if isinstance(error, EdgeSmspError) else (error.strerror or error)
        blocking = next((part for part in Path(known_hosts).parents if part.is_file()), None)
        if blocking is not None:  # "File exists" / "Not a directory" say less than this
            detail = f"{blocking} is a file, not a folder; set connection.known_hosts to a file in a folder"
        raise TransportError(f"cannot record the host key of {hostname} in {known_hosts}: {detail}") from None


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse hosts missing from known_hosts, or, when trusting new hosts, accept and record them."""

    def __init__(
        self, known_hosts: Path, trust_new_host: bool, revoked: Sequence[paramiko.PKey] = ()
    ) -> None:
        self.known_hosts = known_hosts
        self.trust_new_host = trust_new_host
        self.revoked = list(revoked)

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if any(key == bad for bad in self.revoked):  # never recorded, --trust-new-host or not
            raise TransportError(
                f"host key of {hostname} ({fingerprint(key)}) is marked @revoked in {self.known_hosts}: refused"
            )
        if not self.trust_new_host:
            raise _UnknownHostKey(hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)
        record_host_key(self.known_hosts, hostname, key)


def check_key_file(key_file: str) -> None:
    """TransportError unless `key_file` is a regular file: a folder or a FIFO is named for what it is."""
    try:
        found = status(Path(key_file).expanduser())
    except PathError as error:
        raise TransportError(f"SSH key file {error}; name the private key file itself") from None
    if found is None:
        raise TransportError(f"SSH key file not found: {key_file}")
    if not stat.S_ISREG(found.st_mode):
        raise TransportError(
            f"SSH key file {key_file} is {kind(found.st_mode)}, not a regular file: name the private key file itself"
        )
    try:
        with open(Path(key_file).expanduser(), "rb") as handle:
            start = handle.read(64).lstrip()
    except OSError as error:
        raise TransportError(f"cannot read SSH key file {key_file}: {error.strerror or error}") from None
    if start.startswith((b"ssh-", b"ecdsa-sha2-", b"sk-")):  # an authorized_keys line: the .pub half
        raise TransportError(
            f"SSH key file {key_file} is a public key: set connection.key_file to its private half (the file "
            "without .pub)"
        )
    if not start.startswith(b"-----BEGIN "):
        raise TransportError(
            f"SSH key file {key_file} is not a private key (no '-----BEGIN' line): set connection.key_file to an "
            "OpenSSH or PEM private key"
        )
    try:  # its body parsed now: a damaged key must not read as a connection that failed
        paramiko.PKey.from_path(Path(key_file).expanduser())
    except (paramiko.SSHException, ValueError, IndexError, TypeError, UnicodeDecodeError) as error:
        # An encrypted PEM key is a TypeError of the cryptography package, an OpenSSH one PasswordRequiredException.
        if isinstance(error, paramiko.PasswordRequiredException) or "password" in str(error).lower():
            raise TransportError(
                f"SSH key {key_file} is encrypted: load it into ssh-agent and leave key_file empty"
            ) from None
        raise TransportError(
            f"SSH key file {key_file} is not a private key paramiko can read "
            f"({error_text(error).split('. See ')[0]}); name an OpenSSH or PEM private key"
        ) from None


def check_known_hosts_file(known_hosts: Path) -> None:
    """TransportError when known_hosts exists but is no regular file (a folder would read as "key not found")."""
    try:
        found = status(known_hosts)
    except PathError as error:
        raise TransportError(f"known_hosts {error}; set connection.known_hosts to a file") from None
    null = os.path.realpath(known_hosts) == os.path.realpath(NULL_DEVICE)  # the one device it may be
    if found is not None and not stat.S_ISREG(found.st_mode) and not null:
        raise TransportError(
            f"known_hosts {known_hosts} is {kind(found.st_mode)}, not a file: set connection.known_hosts to a file "
            "(or /dev/null to keep no host keys)"
        )
