"""Device profiles: schema, loading and validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ConnectionSpec:
    """How to reach a device: `local` runs on this machine, `ssh` through paramiko."""

    transport: str  # "ssh" | "local"
    host: str = "127.0.0.1"
    port: int = 22
    user: str | None = None
    key_file: Path | None = None
    known_hosts: Path | None = None
    python: str = "python3"
    workdir: str = "~/.cache/edge-smsp-runtime"
