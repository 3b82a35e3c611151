"""Reaching devices: transports that run commands, upload verified files and run the device runtime."""

from __future__ import annotations

from edge_smsp.deploy.local import LocalTransport
from edge_smsp.deploy.transport import RemoteResult, Transport
from edge_smsp.errors import TransportError
from edge_smsp.profiles import ConnectionSpec

__all__ = ["LocalTransport", "RemoteResult", "Transport", "open_transport"]


def open_transport(
    connection: ConnectionSpec, trust_new_host: bool = False, connect_timeout: float = 10.0
) -> Transport:
    """A connected transport for a profile's connection (`ssh` connects now and verifies the host key)."""
    if connection.transport == "local":
        return LocalTransport(connection)
    if connection.transport == "ssh":
        # paramiko is imported only when a device is reached over SSH.
        from edge_smsp.deploy.ssh import SshTransport

        return SshTransport(connection, trust_new_host=trust_new_host, connect_timeout=connect_timeout)
    raise TransportError(
        f"connection.transport: unknown transport {connection.transport!r} (use ssh or local)"
    )
