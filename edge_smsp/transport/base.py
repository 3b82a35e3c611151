"""The transport interface: run commands on a device, upload verified files, run the device runtime."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import posixpath
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from edge_smsp.core.documents import DocumentError, load_json
from edge_smsp.core.errors import DeviceStackError, TransportError
from edge_smsp.core.paths import safe_text
from edge_smsp.core.plausible import reply_problem
from edge_smsp.device_runtime import __version__ as RUNTIME_VERSION
from edge_smsp.devices.profiles import ConnectionSpec
from edge_smsp.transport.temps import HOST_ID, STALE_TEMP_SECONDS, TEMP_PREFIX, abandoned_here, temp_name

__all__ = ["STALE_TEMP_SECONDS", "TEMP_PREFIX", "ByteCount", "RemoteResult", "Transport"]

RUNTIME_PACKAGE = "edge_smsp_runtime"
DEFAULT_TIMEOUT = 120.0
# `info` imports numpy and the engine and reads a few files: ~40 s on the emulated ARM board, under a second on a
# Jetson. It never gets a bench's long timeout: a device that hangs there is reported in this time.
INFO_TIMEOUT = DEFAULT_TIMEOUT
VERIFY_BYTES_PER_SECOND = 20 * 1024**2  # hashing on a slow board's storage
# A runtime's reply is a JSON report (an infer of thousands of images: a few MiB); a device command printing more
# is not one, and is stopped before it fills the host's memory. Of stderr only the first lines are ever shown.
MAX_REPLY_BYTES = 64 * 1024**2
MAX_STDERR_BYTES = 1024**2


def reply_too_large(command: str, where: str) -> TransportError:
    return TransportError(
        f"the device's {command} printed over {MAX_REPLY_BYTES // 1024**2} MiB on {where}, more than any edge-smsp "
        "reply; it was stopped: check connection.python and the device's runtime"
    )


# Scripts run by the device's python. They travel base64-encoded inside `-c` so that no login shell (sh, bash,
# csh) ever has to parse their quotes or newlines. They must run on Python 3.6, like the device runtime.
_VERIFY_AND_RENAME = """
import hashlib, json, os, sys
args = sys.argv[1:]
mismatches = []
for i in range(0, len(args), 3):
    temp, final, expected = args[i:i + 3]
    digest = hashlib.sha256()
    with open(temp, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
        os.fsync(handle.fileno())
    actual = digest.hexdigest()
    if actual != expected:
        os.remove(temp)
        mismatches.append({"path": final, "expected": expected, "actual": actual})
        continue
    parent = os.path.dirname(final)
    if parent:
        os.makedirs(parent, exist_ok=True)
    os.replace(temp, final)
print(json.dumps({"mismatches": mismatches}))
sys.exit(3 if mismatches else 0)
"""

# Temporaries of other hosts (or of older edge-smsp versions) are judged by their age in the device's own clock.
_REMOVE_STALE = """
import json, os, sys, time
workdir, stale_seconds, prefix, own_prefix = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
removed = []
now = time.time()
for name in os.listdir(workdir):
    path = os.path.join(workdir, name)
    if not name.startswith(prefix) or name.startswith(own_prefix):
        continue
    try:  # another session may remove it at the same time
        if os.path.isfile(path) and now - os.path.getmtime(path) > stale_seconds:
            os.remove(path)
            removed.append(path)
    except OSError:
        pass
print(json.dumps({"removed": removed}))
"""

# Which of the given (path, SHA-256) pairs are already on the device with that content (a cache hit).
_PRESENT = """
import hashlib, json, os, sys
args = sys.argv[1:]
present = []
for i in range(0, len(args), 2):
    path, expected = args[i:i + 2]
    if not os.path.isfile(path):
        continue
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() == expected:
        present.append(path)
print(json.dumps({"present": present}))
"""

_PYTHON_MARK = "edge-smsp: python runs"
_RUN_RUNTIME = (
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
    "runpy.run_module('edge_smsp_runtime', run_name='__main__', alter_sys=True)"
)


def python_snippet(source: str) -> str:
    """`python -c` code that runs `source`, shell-safe whatever the remote login shell is."""
    encoded = base64.b64encode(source.encode("utf-8")).decode("ascii")
    return f"import base64; exec(base64.b64decode('{encoded}'))"


class CommandTimedOut(TransportError):
    """A device command ran past its timeout (and was stopped)."""


@dataclass(frozen=True)
class RemoteResult:
    """Exit status, captured output and wall time of one command on the device."""

    rc: int
    stdout: str
    stderr: str
    seconds: float


# A payload hook hears every byte string a transport moves: ("to_device" | "from_device", what, payload).
PayloadHook = Callable[[str, str, bytes], None]
TO_DEVICE, FROM_DEVICE = "to_device", "from_device"


@dataclass
class ByteCount:
    """Bytes a transport moved: every upload's file and command line to the device, every command's stdout and
    stderr and every listing from it. `hook`, when set, hears each payload (tests record them)."""

    to_device: int = 0
    from_device: int = 0
    hook: PayloadHook | None = None

    def add(self, direction: str, what: str, payload: bytes | None = None, size: int | None = None) -> None:
        """Count `payload` (or `size` bytes of a file not read into memory unless a hook listens)."""
        count = len(payload) if payload is not None else int(size or 0)
        if direction == TO_DEVICE:
            self.to_device += count
        else:
            self.from_device += count
        if self.hook is not None and payload is not None:
            self.hook(direction, what, payload)


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a local file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def runtime_source_dir() -> Path:
    """Directory of the edge_smsp_runtime package on this machine: installed, else the copy edge_smsp ships."""
    spec = importlib.util.find_spec(RUNTIME_PACKAGE)
    if spec is not None and spec.origin and spec.origin.endswith("__init__.py"):
        return Path(spec.origin).parent
    bundled = Path(__file__).resolve().parents[1] / "device_runtime"  # a link to runtime/edge_smsp_runtime
    if (bundled / "__init__.py").is_file():
        return bundled
    raise TransportError(
        "the edge-smsp-runtime package is missing here: reinstall edge-smsp or pip install -e runtime"
    )


def runtime_files() -> list[tuple[Path, str]]:
    """(local file, path relative to the remote work dir) of every module of the runtime, subpackages included."""
    source = runtime_source_dir()
    modules = sorted(path for path in source.rglob("*.py") if "__pycache__" not in path.parts)
    return [(path, f"runtime/{RUNTIME_PACKAGE}/{path.relative_to(source).as_posix()}") for path in modules]


def check_remote_name(remote_name: str) -> str:
    """A relative POSIX path inside the work dir: no absolute paths, no '..', no empty parts."""
    parts = remote_name.split("/")
    if not remote_name or remote_name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise TransportError(f"remote name must be a relative path inside the work dir, got {remote_name!r}")
    return remote_name


def last_line(text: str) -> str:
    """The last non-empty line of a command's output, which is where the runtime puts its one-line error."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Transport(ABC):
    """A device reached locally or over SSH. Subclasses provide running, file transfer and the work dir."""

    default_python = "python3"  # the device's interpreter when the profile names none

    def __init__(self, connection: ConnectionSpec) -> None:
        self.connection = connection
        self._temp_paths: set[str] = set()
        self._swept = False  # abandoned temporaries of this host removed (at the first upload)
        self._runtime_pushed = False
        self._workdir: str | None = None
        self._python_hung = False  # the device's Python ran past a timeout once: cleanup does not wait again
        self.runtime_start_seconds: float | None = None  # the quickest runtime command yet: start-up at most
        self.bytes = ByteCount()

    # Primitives of each transport.

    @abstractmethod
    def _run(self, argv: list[str], timeout: float, cwd: str | None = None) -> RemoteResult:
        """Run argv[0] with arguments on the device; never through a shell that could split or expand them."""

    @abstractmethod
    def _put(self, local_path: Path, remote_path: str) -> None:
        """Copy a local file to an absolute path on the device."""

    @abstractmethod
    def _remove(self, remote_path: str) -> None:
        """Remove a file on the device if it exists (no device python needed)."""

    @abstractmethod
    def _list_names(self, remote_dir: str) -> list[str]:
        """The names in a device directory (no device python needed)."""

    @abstractmethod
    def _resolve_workdir(self) -> str:
        """Create the work dir on the device and return its absolute path."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; safe to call twice."""

    def _retrying(self, action: str, operation: Any) -> Any:
        """Run operation(); transports that can lose their connection retry it."""
        return operation()

    # Shared behaviour.

    def run(self, argv: list[str], timeout: float, cwd: str | None = None) -> RemoteResult:
        """Run argv[0] with arguments on the device (see `_run`), counting the command line's bytes to the
        device and its output's bytes back."""
        self.bytes.add(TO_DEVICE, "argv", "\0".join(argv).encode("utf-8"))
        try:
            result = self._run(argv, timeout, cwd)
        except CommandTimedOut as error:
            if argv[0] != self.python:
                raise
            self._python_hung = True
            raise CommandTimedOut(
                f"{error}; the device's Python did not finish: check connection.python and the device's load"
            ) from None
        self.bytes.add(FROM_DEVICE, "stdout", result.stdout.encode("utf-8"))
        self.bytes.add(FROM_DEVICE, "stderr", result.stderr.encode("utf-8"))
        return result

    def list_names(self, remote_dir: str) -> list[str]:  # counted as bytes from the device
        names = self._list_names(remote_dir)
        self.bytes.add(FROM_DEVICE, "listing", "\0".join(names).encode("utf-8"))
        return names

    @property
    def workdir(self) -> str:
        """Absolute path of the work dir on the device (created on first use)."""
        if self._workdir is None:
            self._workdir = self._resolve_workdir()
        return self._workdir

    @property
    def python(self) -> str:
        """The device's python interpreter: the profile's, else the transport's default."""
        return self.connection.python or self.default_python

    def remote_path(self, remote_name: str) -> str:
        """Absolute device path of a name relative to the work dir."""
        return posixpath.join(self.workdir, check_remote_name(remote_name))

    def upload(self, local_path: str | Path, remote_name: str) -> str:
        """Upload to a temporary name, verify the SHA-256 on the device, rename into place; returns the path."""
        return self.upload_many([(Path(local_path), remote_name)])[0]

    def upload_many(self, files: list[tuple[Path, str]]) -> list[str]:
        """Upload several files, verified on the device by one python call; returns their device paths."""
        plan = []
        for local_path, remote_name in files:
            local_path = Path(local_path)
            if not local_path.is_file():
                raise TransportError(f"file to upload not found: {local_path}")
            plan.append((local_path, self.remote_path(remote_name), sha256_file(local_path)))
        if not self._swept:
            self._retrying("cleaning the work dir", self._remove_abandoned_here)
            self._swept = True
        return self._retrying("upload", lambda: self._upload_once(plan))

    def upload_cached(self, files: list[tuple[Path, str]]) -> list[str]:
        """Upload only the files the device lacks (same SHA-256 there: a hit); returns every file's device path."""
        paths = [(Path(local), self.remote_path(name), sha256_file(Path(local))) for local, name in files]
        args = [word for _, remote, digest in paths for word in (remote, digest)]
        result = self.run([self.python, "-c", python_snippet(_PRESENT), *args], DEFAULT_TIMEOUT)
        report = self._json_or_none(result.stdout) if result.rc == 0 else None
        present = set(report.get("present", [])) if isinstance(report, dict) else set()
        missing = [(Path(local), name) for (local, name), (_, remote, _) in zip(files, paths, strict=True)
                   if remote not in present]  # fmt: skip
        if missing:
            self.upload_many(missing)
        return [remote for _, remote, _ in paths]

    def _upload_once(self, plan: list[tuple[Path, str, str]]) -> list[str]:
        verify_args: list[str] = []
        for local_path, final_path, expected in plan:
            temp_path = posixpath.join(self.workdir, temp_name(posixpath.basename(final_path)))
            self._temp_paths.add(temp_path)
            self._put(local_path, temp_path)
            payload = local_path.read_bytes() if self.bytes.hook is not None else None
            self.bytes.add(TO_DEVICE, f"file {final_path}", payload, size=local_path.stat().st_size)
            verify_args += [temp_path, final_path, expected]
        total_bytes = sum(local_path.stat().st_size for local_path, _, _ in plan)
        result = self.run(
            [self.python, "-c", python_snippet(_VERIFY_AND_RENAME), *verify_args],
            DEFAULT_TIMEOUT + total_bytes / VERIFY_BYTES_PER_SECOND,
        )
        report = self._json_or_none(result.stdout)
        if result.rc == 3 and report and report.get("mismatches"):
            self._temp_paths.difference_update(verify_args[0::3])  # renamed, or removed by the script
            first = report["mismatches"][0]
            raise TransportError(
                f"upload of {first['path']} corrupted: SHA-256 on the device is {first['actual'][:16]}…, "
                f"expected {first['expected'][:16]}… (temporary file removed; retry the upload)"
            )
        if result.rc != 0 or report is None:  # the temporaries stay listed: cleanup removes them
            self._check_python_runs(result)
            raise TransportError(
                f"verifying the upload on the device failed (exit {result.rc}): "
                f"{self._failure_reason(result)}"
            )
        self._temp_paths.difference_update(verify_args[0::3])
        return [final_path for _, final_path, _ in plan]

    def push_runtime(self) -> str:
        """Upload the edge_smsp_runtime package (each file verified); returns the device dir put on sys.path."""
        self.upload_many(runtime_files())
        self._runtime_pushed = True
        return posixpath.join(self.workdir, "runtime")

    def run_runtime(self, args: list[str], timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Run `python -m edge_smsp_runtime ARGS` from the pushed copy (pushed first if needed); its JSON report."""
        runtime_dir = (
            self.push_runtime() if not self._runtime_pushed else posixpath.join(self.workdir, "runtime")
        )
        started = time.monotonic()
        result = self.run([self.python, "-c", _RUN_RUNTIME, runtime_dir, *args], timeout, cwd=self.workdir)
        took = time.monotonic() - started
        self.runtime_start_seconds = min(took, self.runtime_start_seconds or took)
        report = self._json_or_none(result.stdout) if result.rc == 0 else None
        if not isinstance(report, dict):
            self._check_python_runs(result)
        if result.rc != 0:
            raise TransportError(f"device runtime failed (exit {result.rc}): {self._failure_reason(result)}")
        if not isinstance(report, dict):
            raise TransportError(
                f"device runtime printed no valid JSON report (NaN, Infinity and duplicate keys are refused): "
                f"{safe_text(result.stdout.strip()[:120])!r}"
            )
        problem = reply_problem(args[0], report, RUNTIME_VERSION)
        if problem:
            raise TransportError(
                f"the device's reply is not the uploaded runtime's: {problem}; check the device's Python "
                "(connection.python), then run again"
            )
        return report

    def _check_python_runs(self, failed: RemoteResult) -> None:
        """After a Python script on the device failed: DeviceStackError naming the interpreter when it cannot run
        even `print` (/bin/false, a shell, a missing file, one that fails whatever it runs), so that the message
        says what to fix rather than how the first script failed."""
        probe = self.run([self.python, "-c", f"print({_PYTHON_MARK!r})"], DEFAULT_TIMEOUT)
        if probe.rc == 0 and probe.stdout.strip() == _PYTHON_MARK:
            return
        said = last_line(failed.stderr) or last_line(failed.stdout)
        raise DeviceStackError(
            f"the device's Python {self.python!r} could not run (exit {failed.rc}"
            + (f": {said}" if said else ", no output")
            + "): set connection.python in the profile (or --connection) to the device's Python 3.6+ "
            "interpreter, such as /usr/bin/python3"
        )

    def _failure_reason(self, result: RemoteResult) -> str:
        reason = last_line(result.stderr) or last_line(result.stdout) or "no output"
        if result.rc == 127:
            reason = f"{reason} (is {self.python!r} the device's python?)"
        return reason

    def cleanup(self) -> None:
        """Remove this session's temporaries, those of this host's processes that are gone, and other hosts'
        stale ones (an hour without a write) from the work dir. The first two need no python on the device."""
        if self._workdir is None:
            return
        for path in sorted(self._temp_paths):
            self._remove(path)
            self._temp_paths.discard(path)
        if self._swept:  # listing needs SFTP: only where this session uploaded anything
            self._remove_abandoned_here()
        if self._python_hung:  # the stale sweep would wait out another timeout; the next session sweeps
            return
        argv = [self.python, "-c", python_snippet(_REMOVE_STALE), self._workdir, str(STALE_TEMP_SECONDS)]
        result = self.run([*argv, TEMP_PREFIX, f"{TEMP_PREFIX}{HOST_ID}."], DEFAULT_TIMEOUT)
        if result.rc != 0:
            raise TransportError(f"cleaning the device work dir failed: {self._failure_reason(result)}")

    def _remove_abandoned_here(self) -> None:
        """Remove the temporaries of this host's processes that are gone (killed or cut off mid-upload)."""
        for name in self.list_names(self.workdir):
            if abandoned_here(name):
                self._remove(posixpath.join(self.workdir, name))

    @staticmethod
    def _json_or_none(text: str) -> Any:
        """The device's JSON reply, or None: a reply with NaN or Infinity (no JSON), duplicate keys or absurd
        nesting is no reply; numbers from the device feed the memory and latency models."""
        try:
            return load_json(text)
        except DocumentError:
            return None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.cleanup()
        except TransportError:
            if exc_info[0] is None:
                raise
        finally:
            self.close()


def timed(start: float) -> float:
    """Seconds since a time.monotonic() start, rounded for reports."""
    return round(time.monotonic() - start, 4)
