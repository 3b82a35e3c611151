"""The pruned-model pool: one SQLite file holding backbones, tasks, pruned entries and device measurements.

Every entry (metadata, masks, scores and the pruned model's files) is written in a single transaction, so a
crash mid-build leaves every finished entry intact and no half entry. WAL mode lets readers run beside a build.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sqlite3
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_smsp.errors import PoolError
from edge_smsp.fileio import write_atomically

SCHEMA_VERSION = 1
POOL_ENV_VAR = "EDGE_SMSP_POOL"
BUSY_TIMEOUT_MS = 30_000
_SQLITE_HEADER = b"SQLite format 3\x00"
# Ratios are stored rounded so that 0.5 and 0.5000000001 name the same entry.
_RATIO_DECIMALS = 6

_SCHEMA = """
CREATE TABLE schema_version (
    version INTEGER NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE backbones (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    weights_hash TEXT NOT NULL,
    image_size INTEGER NOT NULL CHECK (image_size > 0),
    checkpoint TEXT,
    created TEXT NOT NULL,
    UNIQUE (name, weights_hash, image_size)
);
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    task_key TEXT NOT NULL UNIQUE,
    dataset TEXT NOT NULL,
    classes TEXT NOT NULL,
    class_names TEXT NOT NULL,
    seed INTEGER NOT NULL,
    n_train INTEGER NOT NULL CHECK (n_train >= 0),
    n_val INTEGER NOT NULL CHECK (n_val >= 0),
    created TEXT NOT NULL
);
CREATE TABLE entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id INTEGER NOT NULL REFERENCES tasks (id),
    backbone_id INTEGER NOT NULL REFERENCES backbones (id),
    ratio REAL NOT NULL CHECK (ratio >= 0 AND ratio < 1),
    method TEXT NOT NULL,
    iters INTEGER NOT NULL CHECK (iters >= 0),
    val_accuracy REAL CHECK (val_accuracy IS NULL OR (val_accuracy >= 0 AND val_accuracy <= 1)),
    masks BLOB NOT NULL,
    scores BLOB,
    created TEXT NOT NULL,
    extra TEXT NOT NULL,
    UNIQUE (task_id, backbone_id, ratio, method, iters)
);
CREATE INDEX entries_by_backbone ON entries (backbone_id);
CREATE TABLE entry_files (
    entry_id INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (entry_id, name)
);
CREATE TABLE device_measurements (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    backbone TEXT NOT NULL,
    image_size INTEGER NOT NULL CHECK (image_size > 0),
    ratio REAL NOT NULL CHECK (ratio >= 0 AND ratio < 1),
    params INTEGER NOT NULL,
    macs INTEGER NOT NULL,
    latency_p50_ms REAL NOT NULL,
    latency_p90_ms REAL NOT NULL,
    latency_p99_ms REAL NOT NULL,
    peak_rss_mib REAL,
    report TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX measurements_by_device ON device_measurements (device, backbone, image_size);
"""


@dataclass(frozen=True)
class BackboneRecord:
    """The pre-trained model an entry was pruned from; entries are comparable only within one weights hash."""

    name: str
    weights_hash: str
    image_size: int
    checkpoint: str | None = None


@dataclass(frozen=True)
class TaskRecord:
    """A pool task: a dataset, a subset of its classes and the seeded splits; task_key identifies it."""

    task_key: str
    dataset: str
    classes: tuple[int, ...]
    seed: int
    n_train: int
    n_val: int
    class_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class PoolEntry:
    """A pruned model stored in the pool (masks, scores and files are read on request)."""

    id: int
    task: TaskRecord
    backbone: BackboneRecord
    ratio: float
    method: str
    iters: int
    val_accuracy: float | None
    created: str
    file_names: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, as `pool list --json` prints it."""
        return {
            "id": self.id,
            "task_id": self.task.task_key,
            "dataset": self.task.dataset,
            "classes": list(self.task.classes),
            "class_names": list(self.task.class_names),
            "seed": self.task.seed,
            "backbone": self.backbone.name,
            "backbone_hash": self.backbone.weights_hash,
            "image_size": self.backbone.image_size,
            "ratio": self.ratio,
            "method": self.method,
            "iters": self.iters,
            "val_accuracy": self.val_accuracy,
            "created": self.created,
        }


@dataclass(frozen=True)
class DeviceMeasurement:
    """One benchmark of a pruned model on a device, used to calibrate the planner's latency model."""

    device: str
    backbone: str
    image_size: int
    ratio: float
    params: int
    macs: int  # of one timed run: MACs per image x the batch size
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    peak_rss_mib: float | None = None
    report: dict[str, Any] = field(default_factory=dict, compare=False)
    id: int | None = None
    created: str | None = None


def default_pool_path() -> Path:
    """$EDGE_SMSP_POOL if set, else ~/.cache/edge-smsp/pool.sqlite."""
    override = os.environ.get(POOL_ENV_VAR)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "edge-smsp" / "pool.sqlite"


class Pool:
    """An open pool database; use as a context manager or call close()."""

    def __init__(
        self,
        path: str | Path | None = None,
        create: bool = True,
        check: Literal["quick", "full", "none"] = "quick",
    ) -> None:
        """Open (or with create=True, create) the pool; check is "quick", "full" or "none" integrity checking."""
        if check not in ("quick", "full", "none"):
            raise ValueError(f"check must be 'quick', 'full' or 'none', got {check!r}")
        self.path = Path(path).expanduser() if path is not None else default_pool_path()
        self._connection: sqlite3.Connection | None = None
        self._check_file(create)
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise PoolError(
                    f"cannot create the pool's folder {self.path.parent}: {error.strerror}"
                ) from None
        self._connection = self._connect(create)
        try:
            self._validate(check)
            self._ensure_schema(create)
            self._pragma("journal_mode=WAL")
        except BaseException:
            self.close()
            raise

    # --- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def journal_mode(self) -> str:
        """The SQLite journal mode in use ("wal" once opened)."""
        with self._errors():
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        with self._errors():
            return int(self._db.execute("SELECT version FROM schema_version").fetchone()[0])

    def integrity_check(self) -> list[str]:
        """Full SQLite integrity check plus foreign keys; an empty list means the file is sound."""
        with self._errors():
            problems = [row[0] for row in self._db.execute("PRAGMA integrity_check") if row[0] != "ok"]
            problems += [
                f"dangling reference in {row[0]} row {row[1]}"
                for row in self._db.execute("PRAGMA foreign_key_check")
            ]
        return problems

    # --- writing ---------------------------------------------------------------------------------------------

    def add_entry(
        self,
        *,
        task: TaskRecord,
        backbone: BackboneRecord,
        ratio: float,
        method: str,
        iters: int,
        val_accuracy: float | None,
        masks: Mapping[str, np.ndarray],
        scores: Mapping[str, np.ndarray] | None = None,
        model_dir: str | Path | None = None,
        model_files: Mapping[str, bytes] | None = None,
        extra: Mapping[str, Any] | None = None,
        replace: bool = False,
    ) -> int:
        """Store one pruned model (metadata, masks, scores, model files) in a single transaction; returns its id."""
        ratio = _checked_ratio(ratio)
        if not method:
            raise PoolError("pool entry needs a pruning method name")
        if iters < 0:
            raise PoolError(f"pool entry iterations must be >= 0, got {iters}")
        if val_accuracy is not None and not 0.0 <= val_accuracy <= 1.0:
            raise PoolError(f"pool entry val_accuracy must be in [0, 1], got {val_accuracy}")
        _check_backbone(backbone)
        _check_task(task)
        mask_blob = _encode_arrays(_checked_masks(masks), "masks")
        score_blob = None if scores is None else _encode_arrays(_checked_scores(scores, masks), "scores")
        files = _collect_model_files(model_dir, model_files)
        extra_json = _dumps(dict(extra or {}), "extra")
        now = _now()
        with self._write():
            backbone_id = self._backbone_id(backbone, now)
            task_id = self._task_id(task, now)
            existing = self._db.execute(
                "SELECT id FROM entries WHERE task_id = ? AND backbone_id = ? AND ratio = ? AND method = ? AND iters = ?",
                (task_id, backbone_id, ratio, method, iters),
            ).fetchone()
            if existing is not None:
                if not replace:
                    raise PoolError(
                        f"pool {self.path} already has entry {existing[0]} for task {task.task_key} "
                        f"({backbone.name}, ratio {ratio}, {method}, {iters} iters); pass replace=True to overwrite"
                    )
                self._db.execute("DELETE FROM entries WHERE id = ?", (existing[0],))
            entry_id = self._db.execute(
                "INSERT INTO entries (task_id, backbone_id, ratio, method, iters, val_accuracy, masks, scores,"
                " created, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task_id,
                    backbone_id,
                    ratio,
                    method,
                    iters,
                    val_accuracy,
                    mask_blob,
                    score_blob,
                    now,
                    extra_json,
                ),
            ).lastrowid
            for name, data in files.items():
                self._db.execute(
                    "INSERT INTO entry_files (entry_id, name, sha256, data) VALUES (?, ?, ?, ?)",
                    (entry_id, name, hashlib.sha256(data).hexdigest(), data),
                )
        return int(entry_id)

    def delete_entry(self, entry_id: int) -> None:
        """Remove one entry and its files."""
        with self._write():
            if self._db.execute("DELETE FROM entries WHERE id = ?", (entry_id,)).rowcount == 0:
                raise PoolError(f"pool {self.path} has no entry {entry_id}")

    def add_measurement(self, measurement: DeviceMeasurement) -> int:
        """Store one device benchmark; returns its id."""
        m = measurement
        ratio = _checked_ratio(m.ratio)
        if not m.device or not m.backbone:
            raise PoolError("device measurement needs a device name and a backbone name")
        if m.image_size <= 0:
            raise PoolError(f"device measurement image_size must be > 0, got {m.image_size}")
        report_json = _dumps(dict(m.report), "report")
        with self._write():
            cursor = self._db.execute(
                "INSERT INTO device_measurements (device, backbone, image_size, ratio, params, macs, latency_p50_ms,"
                " latency_p90_ms, latency_p99_ms, peak_rss_mib, report, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    m.device,
                    m.backbone,
                    int(m.image_size),
                    ratio,
                    int(m.params),
                    int(m.macs),
                    float(m.latency_p50_ms),
                    float(m.latency_p90_ms),
                    float(m.latency_p99_ms),
                    None if m.peak_rss_mib is None else float(m.peak_rss_mib),
                    report_json,
                    m.created or _now(),
                ),
            )
        return int(cursor.lastrowid)

    # --- reading ---------------------------------------------------------------------------------------------

    def entries(
        self,
        backbone_hash: str | None = None,
        backbone_name: str | None = None,
        image_size: int | None = None,
    ) -> list[PoolEntry]:
        """Entries in insertion order, optionally only those of one backbone (by weights hash and/or name)."""
        return self._select_entries(
            [
                ("b.weights_hash = ?", backbone_hash),
                ("b.name = ?", backbone_name),
                ("b.image_size = ?", image_size),
            ]
        )

    def entry(self, entry_id: int) -> PoolEntry:
        """One entry by id."""
        found = self._select_entries([("e.id = ?", entry_id)])
        if not found:
            raise PoolError(f"pool {self.path} has no entry {entry_id}")
        return found[0]

    def entry_dicts(
        self, backbone_hash: str | None = None, backbone_name: str | None = None
    ) -> list[dict[str, Any]]:
        """Entries as plain dicts (task_id, dataset, classes, backbone, ratio, iters, val_accuracy, method, created, ...)."""
        return [
            entry.to_dict()
            for entry in self.entries(backbone_hash=backbone_hash, backbone_name=backbone_name)
        ]

    def has_entry(
        self,
        task_key: str,
        backbone_hash: str,
        ratio: float,
        method: str,
        iters: int,
        image_size: int | None = None,
    ) -> bool:
        """Whether a finished entry exists (resumable builds skip it)."""
        sql = (
            "SELECT 1 FROM entries e JOIN tasks t ON t.id = e.task_id JOIN backbones b ON b.id = e.backbone_id"
            " WHERE t.task_key = ? AND b.weights_hash = ? AND e.ratio = ? AND e.method = ? AND e.iters = ?"
        )
        params: list[Any] = [task_key, backbone_hash, _checked_ratio(ratio), method, iters]
        if image_size is not None:
            sql += " AND b.image_size = ?"
            params.append(image_size)
        with self._errors():
            return self._db.execute(sql + " LIMIT 1", params).fetchone() is not None

    def entry_masks(self, entry_id: int) -> dict[str, np.ndarray]:
        """Binary masks (bool arrays, one per unit group key) of an entry."""
        blob = self._entry_blob(entry_id, "masks")
        return _decode_arrays(blob, f"masks of entry {entry_id}", self.path)

    def entry_scores(self, entry_id: int) -> dict[str, np.ndarray] | None:
        """Real-valued unit scores of an entry, or None when none were stored."""
        blob = self._entry_blob(entry_id, "scores")
        return None if blob is None else _decode_arrays(blob, f"scores of entry {entry_id}", self.path)

    def materialise_model_dir(self, entry_id: int, dest_dir: str | Path) -> Path:
        """Write an entry's stored model files into dest_dir (checksums verified); returns dest_dir."""
        self.entry(entry_id)
        with self._errors():
            rows = self._db.execute(
                "SELECT name, sha256, data FROM entry_files WHERE entry_id = ? ORDER BY name", (entry_id,)
            ).fetchall()
        if not rows:
            raise PoolError(f"pool entry {entry_id} has no stored model files")
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for name, sha256, data in rows:
            _check_plain_name(name)
            if hashlib.sha256(data).hexdigest() != sha256:
                raise PoolError(
                    f"pool {self.path}: file {name} of entry {entry_id} fails its checksum; the database is damaged"
                )
            write_atomically(dest / name, bytes(data))
        return dest

    def measurements(
        self, device: str | None = None, backbone: str | None = None, image_size: int | None = None
    ) -> list[DeviceMeasurement]:
        """Stored device benchmarks in insertion order, optionally filtered."""
        clauses = [
            (column, value)
            for column, value in (("device", device), ("backbone", backbone), ("image_size", image_size))
            if value is not None
        ]
        where = (" WHERE " + " AND ".join(f"{column} = ?" for column, _ in clauses)) if clauses else ""
        with self._errors():
            rows = self._db.execute(
                "SELECT id, device, backbone, image_size, ratio, params, macs, latency_p50_ms, latency_p90_ms,"
                f" latency_p99_ms, peak_rss_mib, report, created FROM device_measurements{where} ORDER BY id",
                [value for _, value in clauses],
            ).fetchall()
        return [
            DeviceMeasurement(
                id=row[0],
                device=row[1],
                backbone=row[2],
                image_size=row[3],
                ratio=row[4],
                params=row[5],
                macs=row[6],
                latency_p50_ms=row[7],
                latency_p90_ms=row[8],
                latency_p99_ms=row[9],
                peak_rss_mib=row[10],
                report=json.loads(row[11]),
                created=row[12],
            )
            for row in rows
        ]

    # --- internals -------------------------------------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise PoolError(f"pool {self.path} is closed")
        return self._connection

    def _fix_hint(self) -> str:
        return f"move {self.path} aside and rebuild the pool, or pass --pool PATH to use another file"

    def _check_file(self, create: bool) -> None:
        if self.path.is_dir():
            raise PoolError(f"pool path {self.path} is a directory; pass --pool PATH naming a file")
        if not self.path.exists():
            if not create:
                raise PoolError(
                    f"no pool at {self.path}; build one with `edge-smsp pool build` or pass --pool PATH"
                )
            return
        try:
            with self.path.open("rb") as handle:
                header = handle.read(len(_SQLITE_HEADER))
        except OSError as error:
            raise PoolError(f"cannot read pool {self.path}: {error.strerror}") from None
        # An empty file is an empty database to SQLite; anything else must carry the SQLite header.
        if header and header != _SQLITE_HEADER:
            raise PoolError(f"{self.path} is not an SQLite pool database; {self._fix_hint()}")

    def _connect(self, create: bool) -> sqlite3.Connection:
        mode = "rwc" if create else "rw"
        uri = f"file:{_quote_uri_path(self.path.absolute())}?mode={mode}"
        try:
            connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as error:
            raise PoolError(f"cannot open pool {self.path}: {error}") from None
        try:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA foreign_keys = ON")
            # FULL: a commit is on disk before add_entry returns, so a finished entry survives power loss too.
            connection.execute("PRAGMA synchronous = FULL")
            # Entries carry whole models; without a limit the WAL file keeps the size of the largest one.
            connection.execute(f"PRAGMA journal_size_limit = {64 * 1024 * 1024}")
        except sqlite3.Error as error:
            connection.close()
            raise PoolError(f"cannot open pool {self.path}: {error}; {self._fix_hint()}") from None
        return connection

    def _pragma(self, statement: str) -> None:
        with self._errors():
            self._db.execute(f"PRAGMA {statement}")

    def _validate(self, check: str) -> None:
        if check == "none":
            return
        pragma = "quick_check" if check == "quick" else "integrity_check"
        with self._errors():
            problems = [row[0] for row in self._db.execute(f"PRAGMA {pragma}") if row[0] != "ok"]
        if problems:
            raise PoolError(f"pool {self.path} is corrupt ({problems[0]}); {self._fix_hint()}")

    def _ensure_schema(self, create: bool) -> None:
        versions = self._schema_versions()
        if versions is None:
            if not create:
                raise PoolError(
                    f"{self.path} is an empty file, not a pool; build one with `edge-smsp pool build` or pass --pool PATH"
                )
            with self._write():
                # Re-read under the write lock: another process may have created the schema meanwhile.
                if self._schema_versions() is None:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(
                        "INSERT INTO schema_version (version, created) VALUES (?, ?)",
                        (SCHEMA_VERSION, _now()),
                    )
            versions = self._schema_versions()
        if versions is None or len(versions) != 1 or not isinstance(versions[0], int):
            raise PoolError(
                f"pool {self.path} has an unreadable schema version {versions!r}; {self._fix_hint()}"
            )
        if versions[0] > SCHEMA_VERSION:
            raise PoolError(
                f"pool {self.path} has schema version {versions[0]}, newer than this edge-smsp understands "
                f"({SCHEMA_VERSION}); upgrade edge-smsp or pass --pool PATH"
            )
        if versions[0] != SCHEMA_VERSION:
            raise PoolError(
                f"pool {self.path} has unknown schema version {versions[0]} (expected {SCHEMA_VERSION}); "
                f"{self._fix_hint()}"
            )

    def _schema_versions(self) -> list[Any] | None:
        """Versions recorded in schema_version; None for a database with no tables at all."""
        with self._errors():
            tables = {
                row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if "schema_version" in tables:
                return [row[0] for row in self._db.execute("SELECT version FROM schema_version")]
        if tables:
            raise PoolError(
                f"{self.path} is an SQLite database but not an edge-smsp pool; pass --pool PATH to use another file"
            )
        return None

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise PoolError(
                    f"pool {self.path} stayed locked by another process for {BUSY_TIMEOUT_MS // 1000} s; try again"
                ) from None
            raise PoolError(f"pool {self.path}: {error}") from None
        except sqlite3.IntegrityError as error:
            raise PoolError(f"pool {self.path} refused the write: {error}") from None
        except sqlite3.DatabaseError as error:
            raise PoolError(f"pool {self.path} is unreadable ({error}); {self._fix_hint()}") from None

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One IMMEDIATE transaction: takes the write lock up front so concurrent writers wait, not fail."""
        with self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                # SQLite may already have rolled back by itself (disk full, I/O error).
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _backbone_id(self, backbone: BackboneRecord, now: str) -> int:
        self._db.execute(
            "INSERT OR IGNORE INTO backbones (name, weights_hash, image_size, checkpoint, created) VALUES (?, ?, ?, ?, ?)",
            (backbone.name, backbone.weights_hash, backbone.image_size, backbone.checkpoint, now),
        )
        return int(
            self._db.execute(
                "SELECT id FROM backbones WHERE name = ? AND weights_hash = ? AND image_size = ?",
                (backbone.name, backbone.weights_hash, backbone.image_size),
            ).fetchone()[0]
        )

    def _task_id(self, task: TaskRecord, now: str) -> int:
        row = self._db.execute(
            "SELECT id, dataset, classes, seed FROM tasks WHERE task_key = ?", (task.task_key,)
        ).fetchone()
        if row is not None:
            # The key names the class set; a different sampling seed is the same task.
            if (row[1], tuple(json.loads(row[2]))) != (task.dataset, tuple(task.classes)):
                raise PoolError(
                    f"pool {self.path} already stores task {task.task_key} as {row[1]} classes "
                    f"{json.loads(row[2])}, not {task.dataset} classes {list(task.classes)}"
                )
            return int(row[0])
        cursor = self._db.execute(
            "INSERT INTO tasks (task_key, dataset, classes, class_names, seed, n_train, n_val, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                task.task_key,
                task.dataset,
                json.dumps([int(c) for c in task.classes]),
                json.dumps([str(c) for c in task.class_names]),
                int(task.seed),
                int(task.n_train),
                int(task.n_val),
                now,
            ),
        )
        return int(cursor.lastrowid)

    def _select_entries(self, filters: list[tuple[str, Any]]) -> list[PoolEntry]:
        active = [(clause, value) for clause, value in filters if value is not None]
        where = (" WHERE " + " AND ".join(clause for clause, _ in active)) if active else ""
        with self._errors():
            rows = self._db.execute(
                "SELECT e.id, e.ratio, e.method, e.iters, e.val_accuracy, e.created, e.extra,"
                " t.task_key, t.dataset, t.classes, t.class_names, t.seed, t.n_train, t.n_val,"
                " b.name, b.weights_hash, b.image_size, b.checkpoint,"
                " (SELECT json_group_array(name) FROM (SELECT name FROM entry_files f WHERE f.entry_id = e.id ORDER BY name))"
                " FROM entries e JOIN tasks t ON t.id = e.task_id JOIN backbones b ON b.id = e.backbone_id"
                f"{where} ORDER BY e.id",
                [value for _, value in active],
            ).fetchall()
        return [
            PoolEntry(
                id=row[0],
                ratio=row[1],
                method=row[2],
                iters=row[3],
                val_accuracy=row[4],
                created=row[5],
                extra=json.loads(row[6]),
                task=TaskRecord(
                    task_key=row[7],
                    dataset=row[8],
                    classes=tuple(json.loads(row[9])),
                    class_names=tuple(json.loads(row[10])),
                    seed=row[11],
                    n_train=row[12],
                    n_val=row[13],
                ),
                backbone=BackboneRecord(
                    name=row[14], weights_hash=row[15], image_size=row[16], checkpoint=row[17]
                ),
                file_names=tuple(json.loads(row[18])),
            )
            for row in rows
        ]

    def _entry_blob(self, entry_id: int, column: str) -> bytes | None:
        with self._errors():
            row = self._db.execute(f"SELECT {column} FROM entries WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise PoolError(f"pool {self.path} has no entry {entry_id}")
        return row[0]


# --- helpers -------------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _quote_uri_path(path: Path) -> str:
    return str(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _checked_ratio(ratio: float) -> float:
    value = float(ratio)
    if not 0.0 <= value < 1.0:
        raise PoolError(f"pruning ratio must be in [0, 1), got {ratio}")
    return round(value, _RATIO_DECIMALS)


def _check_backbone(backbone: BackboneRecord) -> None:
    if not backbone.name or not backbone.weights_hash:
        raise PoolError("pool backbone needs a name and a weights hash")
    if backbone.image_size <= 0:
        raise PoolError(f"pool backbone image_size must be > 0, got {backbone.image_size}")


def _check_task(task: TaskRecord) -> None:
    if not task.task_key or not task.dataset:
        raise PoolError("pool task needs a task key and a dataset name")
    if not task.classes:
        raise PoolError(f"pool task {task.task_key} has no classes")
    if task.class_names and len(task.class_names) != len(task.classes):
        raise PoolError(
            f"pool task {task.task_key} has {len(task.classes)} classes but {len(task.class_names)} class names"
        )


def _checked_masks(masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not masks:
        raise PoolError("pool entry needs at least one unit-group mask")
    checked = {}
    for key, mask in masks.items():
        array = np.asarray(mask)
        if array.ndim != 1 or array.size == 0:
            raise PoolError(
                f"mask of unit group {key!r} must be a non-empty 1-D array, got shape {array.shape}"
            )
        if not np.all((array == 0) | (array == 1)):
            raise PoolError(f"mask of unit group {key!r} must hold only 0 and 1")
        checked[str(key)] = array.astype(bool)
    return checked


def _checked_scores(
    scores: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    if set(scores) != set(masks):
        raise PoolError(
            f"scores and masks must cover the same unit groups; differing: {sorted(set(scores) ^ set(masks))[:5]}"
        )
    checked = {}
    for key, score in scores.items():
        array = np.asarray(score, dtype=np.float64)
        if array.shape != np.shape(masks[key]):
            raise PoolError(
                f"scores of unit group {key!r} have shape {array.shape}, its mask {np.shape(masks[key])}"
            )
        if not np.all(np.isfinite(array)):
            raise PoolError(f"scores of unit group {key!r} must be finite")
        checked[str(key)] = array
    return checked


def _encode_arrays(arrays: dict[str, np.ndarray], what: str) -> bytes:
    buffer = io.BytesIO()
    try:
        np.savez_compressed(buffer, **arrays)
    except (ValueError, OSError) as error:
        raise PoolError(f"cannot encode {what}: {error}") from None
    return buffer.getvalue()


def _decode_arrays(blob: bytes, what: str, path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise PoolError(f"pool {path}: {what} cannot be decoded ({error}); the database is damaged") from None


def _collect_model_files(
    model_dir: str | Path | None, model_files: Mapping[str, bytes] | None
) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    if model_dir is not None:
        directory = Path(model_dir)
        if not directory.is_dir():
            raise PoolError(f"pruned model directory {directory} does not exist")
        for child in sorted(directory.iterdir()):
            # Hidden names are temporaries of atomic writes, never part of the saved model.
            if child.is_file() and not child.name.startswith("."):
                files[child.name] = child.read_bytes()
        if not files:
            raise PoolError(f"pruned model directory {directory} holds no files")
    for name, data in (model_files or {}).items():
        files[name] = bytes(data)
    for name in files:
        _check_plain_name(name)
    return files


def _check_plain_name(name: str) -> None:
    """A stored file name must not leave its directory (a shared pool file is untrusted input)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise PoolError(f"model file name {name!r} must be a plain file name")


def _dumps(payload: dict[str, Any], what: str) -> str:
    try:
        return json.dumps(payload, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise PoolError(f"{what} must be JSON-serialisable: {error}") from None
