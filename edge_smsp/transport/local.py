"""The local transport: the device is this machine; same upload, verify and rename path as over SSH."""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge_smsp.core.errors import DeviceStackError, EdgeSmspError, TransportError
from edge_smsp.core.paths import expand_user, kind
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


class LocalTransport(Transport):
    """Runs commands as subprocesses of this process, in their own process group so a timeout kills them all.

    The runtime runs on this very interpreter unless the profile names another python: the host's own
    interpreter has numpy and onnxruntime, whatever PATH says.
    """

    default_python = sys.executable

    def __init__(self, connection: ConnectionSpec) -> None:
        super().__init__(connection)

    @property
    def python(self) -> str:
        return os.path.expanduser(super().python)

    def _resolve_workdir(self) -> str:
        try:
            workdir = expand_user(self.connection.workdir)  # '~nosuchuser/w' is refused, not made literally
        except EdgeSmspError as error:
            raise TransportError(f"work dir: {error}") from None
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            blocking = next(
                (part for part in (workdir, *workdir.parents) if part.exists() and not part.is_dir()), None
            )
            if blocking is not None:  # "File exists" / "Not a directory" say less than this
                what = "a file" if blocking.is_file() else kind(blocking.stat().st_mode)
                raise TransportError(
                    f"cannot create work dir {workdir}: {blocking} is {what}, not a folder; set connection.workdir"
                    " to a folder"
                ) from None
            raise TransportError(f"cannot create work dir {workdir}: {error.strerror or error}") from None
        try:  # a folder that exists but takes no files (/proc/self): said now, not as a failed copy later
            handle, probe = tempfile.mkstemp(prefix=".edge-smsp-probe.", dir=workdir)
            os.close(handle)
            os.unlink(probe)
        except OSError as error:
            raise TransportError(
                f"cannot write in work dir {workdir}: {error.strerror or error}; set connection.workdir to a folder "
                "this user can write"
            ) from None
        return str(workdir.resolve())

    def _run(self, argv: list[str], timeout: float, cwd: str | None = None) -> RemoteResult:
        if not argv:
            raise TransportError("no command to run")
        start = time.monotonic()
        try:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as error:
            reason = f"cannot run {argv[0]!r}: {error.strerror or error}"
            if argv[0] == self.python:
                raise DeviceStackError(
                    f"{reason}: set connection.python in the profile (or --connection) to this machine's Python "
                    "3.6+ interpreter, such as /usr/bin/python3"
                ) from None
            raise TransportError(reason) from None
        try:
            stdout, stderr = _bounded_output(process, start, timeout, argv[0])
        except (
            BaseException
        ):  # timed out, too much output, interrupted: the work must not outlive the command
            stop_process_group(process)
            raise
        return RemoteResult(
            rc=process.returncode,
            stdout=stdout.decode("utf-8", "replace"),
            stderr=stderr.decode("utf-8", "replace"),
            seconds=timed(start),
        )

    def _put(self, local_path: Path, remote_path: str) -> None:
        try:
            shutil.copyfile(local_path, remote_path)
        except OSError as error:
            raise TransportError(
                f"cannot copy {local_path} to {remote_path}: {error.strerror or error}"
            ) from None

    def _remove(self, remote_path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(remote_path)

    def _list_names(self, remote_dir: str) -> list[str]:
        try:
            return os.listdir(remote_dir)
        except OSError as error:
            raise TransportError(f"cannot list {remote_dir}: {error.strerror or error}") from None

    def close(self) -> None:
        """Nothing to release."""


EXITED_GRACE_SECONDS = 2.0  # output still arriving after a command exits: the pipes' last bytes


def _bounded_output(
    process: subprocess.Popen[bytes], start: float, timeout: float, command: str
) -> tuple[bytes, bytes]:
    """The command's stdout and stderr once it exits: TransportError when it runs past `timeout` or prints more
    than MAX_REPLY_BYTES (communicate() would hold all of it); stderr past MAX_STDERR_BYTES is dropped."""
    assert process.stdout is not None and process.stderr is not None
    deadline = start + timeout
    timed_out = CommandTimedOut(f"command timed out after {timeout:g} s on the device: {command}")
    buffers = {process.stdout: bytearray(), process.stderr: bytearray()}
    exited_at = None
    with selectors.DefaultSelector() as selector:
        for stream in buffers:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise timed_out
            if exited_at is None and process.poll() is not None:
                exited_at = time.monotonic()
            if exited_at is not None and time.monotonic() - exited_at > EXITED_GRACE_SECONDS:
                # The command exited; what still holds its pipes is a child it left behind: stop it, not wait.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                break
            for key, _ in selector.select(min(left, 1.0)):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer = buffers[key.fileobj]
                if key.fileobj is process.stderr:
                    buffer += chunk[: max(0, MAX_STDERR_BYTES - len(buffer))]
                    continue
                buffer += chunk
                if len(buffer) > MAX_REPLY_BYTES:
                    raise reply_too_large(command, "this machine")
    try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise timed_out from None
    return bytes(buffers[process.stdout]), bytes(buffers[process.stderr])


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 2.0) -> None:
    """TERM the command's process group, KILL what is left of it after up to `grace` seconds, reap the command."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # members that ignored TERM, or a leader that did
    process.communicate()  # reaps the command and closes its pipes
