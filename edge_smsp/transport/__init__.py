"""Reaching devices: transports that run commands, upload verified files and run the device runtime.

base.py      Transport: run, upload (verified by SHA-256, atomic), run the runtime
local.py     this machine
ssh.py       OpenSSH devices through paramiko (host keys verified)
ssh_link.py  the SSH connection itself
temps.py     temporary names on the device
"""

from __future__ import annotations

from edge_smsp.core.errors import TransportError
from edge_smsp.devices.profiles import ConnectionSpec
from edge_smsp.transport.base import RemoteResult, Transport
from edge_smsp.transport.local import LocalTransport

__all__ = ["LocalTransport", "RemoteResult", "Transport", "open_transport"]


def open_transport(
    connection: ConnectionSpec, trust_new_host: bool = False, connect_timeout: float = 10.0
) -> Transport:
    """A connected transport for a profile's connection (`ssh` connects now and verifies the host key)."""
    if connection.transport == "local":
        return LocalTransport(connection)
    if connection.transport == "ssh":
        # paramiko is imported only when a device is reached over SSH.
        from edge_smsp.transport.ssh import SshTransport

        return SshTransport(connection, trust_new_host=trust_new_host, connect_timeout=connect_timeout)
    raise TransportError(
        f"connection.transport: unknown transport {connection.transport!r} (use ssh or local)"
    )
