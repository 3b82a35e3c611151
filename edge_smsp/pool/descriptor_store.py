"""Task descriptors in the pool: per task and backbone, the class prototypes of the unpruned backbone and their
sketch (edge_smsp.data.descriptors), and per backbone the running sum of every stored prototype row.

Prototype similarity reads these instead of any entry model; the sketch search reads only the sketches. The
sum is kept in the same transaction as every write, so the pool's centre costs one row to read at any size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_smsp.core.documents import shown
from edge_smsp.core.errors import DataError, PoolError
from edge_smsp.data.descriptors import DESCRIPTOR_DTYPE, SKETCH_WIDTH, checked_descriptor, sketch
from edge_smsp.pool.entries import BackboneRecord, EntryStore, PoolEntry, TaskRecord
from edge_smsp.pool.store import now


@dataclass(frozen=True)
class SketchRows:
    """The sketches of every task described for one backbone: `rows[i]` rows of `sketches` belong to
    `task_keys[i]`, in order."""

    task_keys: tuple[str, ...]
    rows: tuple[int, ...]
    sketches: np.ndarray  # [sum(rows), SKETCH_WIDTH] float16
    version: tuple[int, int]  # changes whenever a descriptor of this backbone is written


class DescriptorStore(EntryStore):
    """Task descriptors, written one per transaction (a resumable `pool index` loses at most the current one)."""

    def put_descriptor(
        self, task: TaskRecord, backbone: BackboneRecord, descriptor: np.ndarray, *, samples: int, seed: int
    ) -> None:
        """Store (or replace) the descriptor of `task` computed with `backbone` on `samples` images."""
        try:
            rows = checked_descriptor(descriptor).astype(DESCRIPTOR_DTYPE)
        except DataError as error:
            raise PoolError(str(error)) from None
        if rows.shape[0] != len(task.classes):
            raise PoolError(
                f"descriptor of task {task.task_key} has {rows.shape[0]} rows for {len(task.classes)} classes"
            )
        created = now()
        with self._write():
            backbone_id = self._backbone_id(backbone, created)
            task_id = self._task_id(task, created)
            total, count = self._sum(backbone_id, rows.shape[1])
            old = self._db.execute(
                "SELECT rows, width, data FROM task_descriptors WHERE task_id = ? AND backbone_id = ?",
                (task_id, backbone_id),
            ).fetchone()
            if old is not None:
                total -= (
                    self._stored(old[2], DESCRIPTOR_DTYPE, "a task descriptor", (old[0], old[1]))
                    .astype(np.float64)
                    .sum(axis=0)
                )
                count -= old[0]
            total += rows.astype(np.float64).sum(axis=0)
            count += rows.shape[0]
            self._db.execute(
                "INSERT OR REPLACE INTO task_descriptors"
                " (task_id, backbone_id, samples, seed, rows, width, data, sketch, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task_id,
                    backbone_id,
                    int(samples),
                    int(seed),
                    rows.shape[0],
                    rows.shape[1],
                    rows.tobytes(),
                    sketch(rows).tobytes(),
                    created,
                ),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO descriptor_sums (backbone_id, rows, total) VALUES (?, ?, ?)",
                (backbone_id, count, total.astype(np.float64).tobytes()),
            )

    def has_descriptor(self, task_key: str, backbone: BackboneRecord) -> bool:
        """Whether the task is described for this backbone (weights and input size)."""
        with self._errors():
            row = self._db.execute(
                "SELECT 1 FROM task_descriptors d JOIN tasks t ON t.id = d.task_id"
                " JOIN backbones b ON b.id = d.backbone_id"
                " WHERE t.task_key = ? AND b.weights_hash = ? AND b.image_size = ? LIMIT 1",
                (task_key, backbone.weights_hash, backbone.image_size),
            ).fetchone()
        return row is not None

    def entry_descriptors(self, entries: Sequence[PoolEntry]) -> dict[int, np.ndarray]:
        """entry id -> its task's descriptor for its backbone; entries whose task is not described are absent."""
        found: dict[int, np.ndarray] = {}
        wanted: dict[tuple[str, str, int], list[int]] = {}
        for entry in entries:
            key = (entry.task.task_key, entry.backbone.weights_hash, entry.backbone.image_size)
            wanted.setdefault(key, []).append(entry.id)
        task_keys = sorted({key[0] for key in wanted})
        with self._errors():
            for start in range(0, len(task_keys), 500):
                chunk = task_keys[start : start + 500]
                rows = self._db.execute(
                    "SELECT t.task_key, b.weights_hash, b.image_size, d.rows, d.width, d.data"
                    " FROM task_descriptors d JOIN tasks t ON t.id = d.task_id"
                    " JOIN backbones b ON b.id = d.backbone_id"
                    f" WHERE t.task_key IN ({', '.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                for task_key, weights, size, count, width, data in rows:
                    for entry_id in wanted.get((task_key, weights, size), ()):
                        found[entry_id] = self._stored(
                            data, DESCRIPTOR_DTYPE, f"the descriptor of task {task_key}", (count, width)
                        )
        return found

    def descriptor_centre(self, backbone: BackboneRecord) -> np.ndarray | None:
        """The mean of every prototype row stored for this backbone, or None when none is."""
        with self._errors():
            row = self._db.execute(
                "SELECT s.rows, s.total, (SELECT COALESCE(SUM(d.rows), 0) FROM task_descriptors d"
                " WHERE d.backbone_id = s.backbone_id)"
                " FROM descriptor_sums s JOIN backbones b ON b.id = s.backbone_id"
                " WHERE b.weights_hash = ? AND b.image_size = ?",
                (backbone.weights_hash, backbone.image_size),
            ).fetchone()
        if row is not None and row[0] != row[2]:  # the running sum and the rows it sums disagree
            raise PoolError(
                f"pool {self.path}: the descriptors' sum counts {shown(row[0])} rows but {row[2]} are stored; "
                f"the database is damaged; {self._fix_hint()}"
            )
        if row is None or row[0] == 0:
            return None
        return self._stored(row[1], np.float64, "the descriptors' sum") / row[0]

    def sketch_rows(self, backbone: BackboneRecord) -> SketchRows:
        """Every described task's sketch for this backbone, for the search stage."""
        with self._errors():
            rows = self._db.execute(
                "SELECT t.task_key, d.rows, d.sketch, d.rowid FROM task_descriptors d"
                " JOIN tasks t ON t.id = d.task_id JOIN backbones b ON b.id = d.backbone_id"
                " WHERE b.weights_hash = ? AND b.image_size = ? ORDER BY d.rowid",
                (backbone.weights_hash, backbone.image_size),
            ).fetchall()
        if not rows:
            return SketchRows((), (), np.zeros((0, SKETCH_WIDTH), dtype=DESCRIPTOR_DTYPE), (0, 0))
        sketches = [
            self._stored(
                row[2], DESCRIPTOR_DTYPE, f"the sketch of task {row[0]}", (int(row[1]), SKETCH_WIDTH)
            )
            for row in rows
        ]
        return SketchRows(
            task_keys=tuple(row[0] for row in rows),
            rows=tuple(int(row[1]) for row in rows),
            sketches=np.concatenate(sketches),
            version=(len(rows), int(rows[-1][3])),
        )

    def descriptor_version(self, backbone: BackboneRecord) -> tuple[int, int]:
        """(count, last row id) of this backbone's descriptors: equal values mean nothing was written since."""
        with self._errors():
            row = self._db.execute(
                "SELECT count(*), coalesce(max(d.rowid), 0) FROM task_descriptors d"
                " JOIN backbones b ON b.id = d.backbone_id WHERE b.weights_hash = ? AND b.image_size = ?",
                (backbone.weights_hash, backbone.image_size),
            ).fetchone()
        return int(row[0]), int(row[1])

    def _stored(
        self, data: object, dtype: type, what: str, shape: tuple[int, ...] | None = None
    ) -> np.ndarray:
        """A stored array column as numbers; PoolError when its bytes are not that (a damaged or hand-edited row)."""
        size = np.dtype(dtype).itemsize
        if not isinstance(data, bytes):
            problem = f"is {type(data).__name__}, not bytes"
        elif len(data) % size:
            problem = f"is {len(data)} bytes, not a whole number of {np.dtype(dtype).name} values"
        elif shape is not None and len(data) // size != int(np.prod(shape)):
            problem = f"holds {len(data) // size} values, not {' x '.join(map(str, shape))}"
        else:
            array = np.frombuffer(data, dtype=dtype)
            if np.isfinite(array).all():
                return array if shape is None else array.reshape(shape)
            problem = "holds NaN or infinite values"
        raise PoolError(f"pool {self.path}: {what} {problem}; the database is damaged; {self._fix_hint()}")

    def _sum(self, backbone_id: int, width: int) -> tuple[np.ndarray, int]:
        row = self._db.execute(
            "SELECT rows, total FROM descriptor_sums WHERE backbone_id = ?", (backbone_id,)
        ).fetchone()
        if row is None:
            return np.zeros(width, dtype=np.float64), 0
        total = self._stored(row[1], np.float64, "the descriptors' sum").copy()
        if len(total) != width:
            raise PoolError(
                f"pool {self.path}: descriptors of width {width} cannot join stored ones of width {len(total)}"
            )
        return total, int(row[0])
