"""Build claims: a `pool build` claims a task in the pool before training it, so concurrent builds do each once.

A claim names its writer (a random id per build), where that writer runs (host, boot and pid namespace; its
pid and the process's start time) and a lease that the writer's heartbeat keeps pushing forward. Another build
takes a claim over when its holder is gone:
- at once when the holder ran on this machine and its process no longer exists (a crash, a SIGKILL): the
  start time tells a reused pid apart;
- else when the lease has run out (a holder in another container or on another host, or a hung one).
The lease only decides how soon work is taken over, never correctness: an entry is committed only while its
key is still free, in the same transaction that deletes the claim, so a claim taken over too early costs a task
trained twice, never a duplicate or a replaced entry.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge_smsp.core.errors import PoolError
from edge_smsp.pool.entries import EntryStore
from edge_smsp.pool.entry_data import NewEntry
from edge_smsp.pool.records import BuildKey
from edge_smsp.pool.store import now

DEFAULT_LEASE_SECONDS = 60.0
# No heartbeat pushes a lease this far ahead: a claim that says so was written by a clock far off or by hand, and
# honouring it would block every build of its key for years.
MAX_LEASE_SECONDS = 86400.0
_KEY_COLUMNS = ("task_key", "weights_hash", "image_size", "ratio", "method", "iters")
_KEY_MATCH = " AND ".join(f"{column} = ?" for column in _KEY_COLUMNS)


@dataclass(frozen=True)
class Writer:
    """A build that claims tasks: a random id, and where its process runs (to tell when it is gone)."""

    id: str
    machine: str
    pid: int
    process_start: str

    @classmethod
    def this_process(cls) -> Writer:
        """A new writer id for a build in this process."""
        return cls(
            id=uuid.uuid4().hex,
            machine=machine_id(),
            pid=os.getpid(),
            process_start=process_start(os.getpid()) or "",
        )


@dataclass(frozen=True)
class Claim:
    """A claim as stored: the key, its holder and when its lease ends (unix seconds)."""

    key: BuildKey
    writer: str
    machine: str
    pid: int
    process_start: str
    expires: float

    def holder(self) -> str:
        """How messages name the holder."""
        return f"pid {self.pid} on {self.machine.split('/')[0]}"

    def is_live(self, at: float) -> bool:
        """Whether the holder may still be working on it: lease running and the process not known to be gone."""
        believable = at < self.expires <= at + MAX_LEASE_SECONDS
        return believable and not holder_is_gone(self.machine, self.pid, self.process_start)


@dataclass(frozen=True)
class ClaimResult:
    """What claiming a key found: "claimed" (train it), "committed" (skip it) or "held" by a live writer."""

    status: Literal["claimed", "committed", "held"]
    holder: str | None = None


class ClaimStore(EntryStore):
    """Claims on build keys, taken and released in transactions beside the entries they lead to."""

    def claim(
        self, key: BuildKey, writer: Writer, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> ClaimResult:
        """Claim a key unless its entry is committed or another live writer holds it (one transaction)."""
        with self._write():
            if self._entry_id(key) is not None:
                return ClaimResult("committed")
            held = self._claim_row(key)
            started = time.time()
            if held is not None and held.writer != writer.id and held.is_live(started):
                return ClaimResult("held", held.holder())
            self._db.execute(
                "INSERT OR REPLACE INTO build_claims (task_key, weights_hash, image_size, ratio, method, iters,"
                " writer, machine, pid, process_start, claimed, expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *_key_values(key),
                    writer.id,
                    writer.machine,
                    writer.pid,
                    writer.process_start,
                    now(),
                    started + lease_seconds,
                ),
            )
        return ClaimResult("claimed")

    def commit_claimed(self, entry: NewEntry, writer: Writer) -> int | None:
        """Commit an entry and release its key's claim in one transaction; returns the entry id, or None when
        the key was filled meanwhile (by a writer that took over an expired claim): this entry is dropped."""
        with self._write():
            existing = self._entry_id(entry.key)
            # Whoever holds the claim now, the key is done after this transaction.
            self._db.execute(f"DELETE FROM build_claims WHERE {_KEY_MATCH}", _key_values(entry.key))
            return None if existing is not None else self._insert_entry(entry)

    def release_claims(self, writer: Writer, keys: list[BuildKey] | None = None) -> None:
        """Give up this writer's claims (all of them, or those on `keys`): a failed or interrupted build."""
        with self._write():
            if keys is None:
                self._db.execute("DELETE FROM build_claims WHERE writer = ?", (writer.id,))
            for key in keys or ():
                self._db.execute(
                    f"DELETE FROM build_claims WHERE writer = ? AND {_KEY_MATCH}",
                    (writer.id, *_key_values(key)),
                )

    def renew_claims(self, writer: Writer, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> int:
        """Push the lease of every claim this writer holds forward; returns how many it holds."""
        with self._write():
            return self._db.execute(
                "UPDATE build_claims SET expires = ? WHERE writer = ?",
                (time.time() + lease_seconds, writer.id),
            ).rowcount

    def claims(self) -> list[Claim]:
        """Every stored claim, live or not."""
        with self._errors():
            rows = self._db.execute(
                f"SELECT {', '.join(_KEY_COLUMNS)}, writer, machine, pid, process_start, expires FROM build_claims"
                " ORDER BY claimed, task_key"
            ).fetchall()
        return [_claim_of(row) for row in rows]

    def _claim_row(self, key: BuildKey) -> Claim | None:
        row = self._db.execute(
            f"SELECT {', '.join(_KEY_COLUMNS)}, writer, machine, pid, process_start, expires FROM build_claims"
            f" WHERE {_KEY_MATCH}",
            _key_values(key),
        ).fetchone()
        return None if row is None else _claim_of(row)


class ClaimHeartbeat:
    """Keeps a writer's leases running from a background thread with its own connection to the pool."""

    def __init__(self, path: Path, writer: Writer, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self.path, self.writer, self.lease_seconds = path, writer, lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="pool-claim-heartbeat", daemon=True)

    def __enter__(self) -> ClaimHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        # Four beats per lease: a writer loses a claim only after missing several in a row.
        while not self._stop.wait(self.lease_seconds / 4):
            # A missed beat (the pool locked for long) is retried at the next one.
            with contextlib.suppress(PoolError), ClaimStore(self.path, create=False, check="none") as store:
                store.renew_claims(self.writer, self.lease_seconds)


@contextlib.contextmanager
def claiming_writer(store: ClaimStore, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Iterator[Writer]:
    """A writer for one build: its leases renewed while it runs, its remaining claims released when it ends."""
    writer = Writer.this_process()
    with ClaimHeartbeat(store.path, writer, lease_seconds):
        try:
            yield writer
        finally:
            # Ending by an error must not be hidden by a failed release; a stale claim expires by itself.
            with contextlib.suppress(PoolError):
                store.release_claims(writer)


def machine_id() -> str:
    """Where this process runs, as far as process ids are comparable: host name, boot and pid namespace."""
    boot = _read("/proc/sys/kernel/random/boot_id").strip()
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{boot}/{namespace}"


def process_start(pid: int) -> str | None:
    """A live process's start time (clock ticks after boot, Linux /proc); None when it has ended or is unknown."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie has ended; only its exit status is left
        return None
    return fields[19]


def holder_is_gone(machine: str, pid: int, started: str) -> bool:
    """Whether a claim's holder has certainly ended: it ran on this machine and its process is no more."""
    if not started or machine != machine_id():
        return False
    return process_start(pid) != started


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _key_values(key: BuildKey) -> tuple[str, str, int, float, str, int]:
    return (key.task_key, key.weights_hash, key.image_size, key.ratio, key.method, key.iters)


def _claim_of(row: tuple) -> Claim:
    return Claim(
        key=BuildKey(*row[:6]),
        writer=row[6],
        machine=row[7],
        pid=row[8],
        process_start=row[9],
        expires=row[10],
    )
