"""Pruned entries: a task's pruned model (metadata, masks, scores, model files) for one backbone."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_smsp.core.errors import PoolError
from edge_smsp.core.fileio import write_atomically
from edge_smsp.data.catalog import dataset_name, known_class_count
from edge_smsp.pool.entry_data import NewEntry, check_plain_name, decode_arrays, new_entry
from edge_smsp.pool.records import BackboneRecord, BuildKey, TaskRecord, entry_ratio
from edge_smsp.pool.store import PoolStore, now

IMAGE_FOLDER_TASK = re.compile(r"imagefolder(\[.+\])?")  # edge_smsp.data.imagefolder's dataset names


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


class EntryStore(PoolStore):
    """The pool's entries: written whole in one transaction, read by backbone, task or id."""

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
        entry = new_entry(
            task=task,
            backbone=backbone,
            ratio=ratio,
            method=method,
            iters=iters,
            val_accuracy=val_accuracy,
            masks=masks,
            scores=scores,
            model_dir=model_dir,
            model_files=model_files,
            extra=extra,
        )
        return self.commit_entry(entry, replace=replace)

    def commit_entry(self, entry: NewEntry, replace: bool = False) -> int:
        """Store a checked, encoded entry in a single transaction; returns its id."""
        with self._write():
            existing = self._entry_id(entry.key)
            if existing is not None:
                if not replace:
                    raise PoolError(
                        f"pool {self.path} already has entry {existing} for task {entry.task.task_key} "
                        f"({entry.backbone.name}, ratio {entry.ratio}, {entry.method}, {entry.iters} iters); "
                        "pass replace=True to overwrite"
                    )
                self._db.execute("DELETE FROM entries WHERE id = ?", (existing,))
            return self._insert_entry(entry)

    def commit_replacing(self, entry: NewEntry, replacing: int | None) -> int:
        """Store an entry in place of `replacing`, the id its key held when the run making it began (None: none),
        in one transaction; returns its id. PoolError, storing nothing, when another run stored the key meanwhile:
        that entry is kept, so of two concurrent runs neither reports an id the other deleted."""
        with self._write():
            existing = self._entry_id(entry.key)
            if existing is not None and existing != replacing:
                raise PoolError(
                    f"pool {self.path}: another run stored entry {existing} for task {entry.task.task_key} "
                    f"({entry.backbone.name}, ratio {entry.ratio}, {entry.method}, {entry.iters} iters) while "
                    "this one ran; that entry is kept and this one was not stored (a new run replaces it)"
                )
            if existing is not None:
                self._db.execute("DELETE FROM entries WHERE id = ?", (existing,))
            return self._insert_entry(entry)

    def entry_id(self, key: BuildKey) -> int | None:
        """The id of the entry that fills a build key, if any."""
        return self._entry_id(key)

    def _insert_entry(self, entry: NewEntry) -> int:
        """Insert an entry and its files; the caller holds the write transaction and checked the key is free."""
        created = now()
        backbone_id = self._backbone_id(entry.backbone, created)
        task_id = self._task_id(entry.task, created)
        entry_id = self._db.execute(
            "INSERT INTO entries (task_id, backbone_id, ratio, method, iters, val_accuracy, masks, scores,"
            " created, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                task_id,
                backbone_id,
                entry.ratio,
                entry.method,
                entry.iters,
                entry.val_accuracy,
                entry.masks,
                entry.scores,
                created,
                entry.extra,
            ),
        ).lastrowid
        for name, data in entry.files.items():
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
        """Whether a finished entry exists (resumable builds skip it); any input size unless image_size is given."""
        sql = (
            "SELECT 1 FROM entries e JOIN tasks t ON t.id = e.task_id JOIN backbones b ON b.id = e.backbone_id"
            " WHERE t.task_key = ? AND b.weights_hash = ? AND e.ratio = ? AND e.method = ? AND e.iters = ?"
        )
        params: list[Any] = [task_key, backbone_hash, entry_ratio(ratio), method, iters]
        if image_size is not None:
            sql += " AND b.image_size = ?"
            params.append(image_size)
        with self._errors():
            return self._db.execute(sql + " LIMIT 1", params).fetchone() is not None

    def _entry_id(self, key: BuildKey) -> int | None:
        """The id of the entry that fills a build key, if any (inside or outside a transaction)."""
        with self._errors():
            row = self._db.execute(
                "SELECT e.id FROM entries e JOIN tasks t ON t.id = e.task_id JOIN backbones b ON b.id = e.backbone_id"
                " WHERE t.task_key = ? AND b.weights_hash = ? AND b.image_size = ? AND e.ratio = ?"
                " AND e.method = ? AND e.iters = ?",
                (key.task_key, key.weights_hash, key.image_size, key.ratio, key.method, key.iters),
            ).fetchone()
        return None if row is None else int(row[0])

    def entry_masks(self, entry_id: int) -> dict[str, np.ndarray]:
        """Binary masks (bool arrays, one per unit group key) of an entry."""
        blob = self._entry_blob(entry_id, "masks")
        return decode_arrays(blob, f"masks of entry {entry_id}", self.path)

    def entry_scores(self, entry_id: int) -> dict[str, np.ndarray] | None:
        """Real-valued unit scores of an entry, or None when none were stored."""
        blob = self._entry_blob(entry_id, "scores")
        return None if blob is None else decode_arrays(blob, f"scores of entry {entry_id}", self.path)

    def materialise_model_dir(self, entry_id: int, dest_dir: str | Path) -> Path:
        """Write an entry's stored model files into dest_dir (checksums verified); returns dest_dir."""
        files = self.entry_files(entry_id)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            write_atomically(dest / name, data)
        return dest

    def entry_files(self, entry_id: int) -> dict[str, bytes]:
        """An entry's stored model files, name -> contents (checksums verified)."""
        self.entry(entry_id)
        with self._errors():
            rows = self._db.execute(
                "SELECT name, sha256, data FROM entry_files WHERE entry_id = ? ORDER BY name", (entry_id,)
            ).fetchall()
        if not rows:
            raise PoolError(f"pool entry {entry_id} has no stored model files")
        files = {}
        for name, sha256, data in rows:
            check_plain_name(name)
            if hashlib.sha256(data).hexdigest() != sha256:
                raise PoolError(
                    f"pool {self.path}: file {name} of entry {entry_id} fails its checksum; the database is damaged"
                )
            files[name] = bytes(data)
        return files

    def _backbone_id(self, backbone: BackboneRecord, created: str) -> int:
        self._db.execute(
            "INSERT OR IGNORE INTO backbones (name, weights_hash, image_size, checkpoint, created) VALUES (?, ?, ?, ?, ?)",
            (backbone.name, backbone.weights_hash, backbone.image_size, backbone.checkpoint, created),
        )
        return int(
            self._db.execute(
                "SELECT id FROM backbones WHERE name = ? AND weights_hash = ? AND image_size = ?",
                (backbone.name, backbone.weights_hash, backbone.image_size),
            ).fetchone()[0]
        )

    def _task_id(self, task: TaskRecord, created: str) -> int:
        row = self._db.execute(
            "SELECT id, dataset, classes, seed FROM tasks WHERE task_key = ?", (task.task_key,)
        ).fetchone()
        if row is not None:
            # The key names the class set; a different sampling seed is the same task.
            stored = self._loads(row[2], f"the classes of task {task.task_key}", list)
            if (row[1], tuple(stored)) != (task.dataset, tuple(task.classes)):
                raise PoolError(
                    f"pool {self.path} already stores task {task.task_key} as {row[1]} classes "
                    f"{stored}, not {task.dataset} classes {list(task.classes)}"
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
                created,
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
            orphans = self._db.execute(
                "SELECT e.id FROM entries e LEFT JOIN tasks t ON t.id = e.task_id"
                " LEFT JOIN backbones b ON b.id = e.backbone_id WHERE t.id IS NULL OR b.id IS NULL ORDER BY e.id"
            ).fetchall()
        if orphans:  # a join would hide them: the pool would look smaller, or empty, instead of damaged
            raise PoolError(
                f"pool {self.path}: {len(orphans)} entries (ids {', '.join(str(row[0]) for row in orphans[:5])}) "
                f"point at no task or backbone row; the database is damaged; {self._fix_hint()}"
            )
        return [
            PoolEntry(
                id=row[0],
                ratio=row[1],
                method=row[2],
                iters=row[3],
                val_accuracy=row[4],
                created=row[5],
                extra=self._loads(row[6], f"entry {row[0]}'s extra", dict),
                task=TaskRecord(
                    task_key=row[7],
                    dataset=row[8],
                    classes=self._stored_classes(row[9], task_key=row[7], dataset=row[8]),
                    class_names=tuple(self._loads(row[10], f"the class names of task {row[7]}", list)),
                    seed=row[11],
                    n_train=row[12],
                    n_val=row[13],
                ),
                backbone=BackboneRecord(
                    name=row[14], weights_hash=row[15], image_size=row[16], checkpoint=row[17]
                ),
                file_names=tuple(self._loads(row[18], f"entry {row[0]}'s file names", list)),
            )
            for row in rows
        ]

    def _stored_classes(self, text: str, task_key: str, dataset: str) -> tuple[int, ...]:
        """A task row's class ids: distinct ids within its dataset, else PoolError (a damaged or hand-edited row)."""
        classes = self._loads(text, f"the classes of task {task_key}", list)
        total = known_class_count(dataset)
        if total is None and not IMAGE_FOLDER_TASK.fullmatch(str(dataset)):
            raise PoolError(
                f"pool {self.path}: task {task_key} names dataset {str(dataset)[:40]!r}, neither a dataset edge-smsp "
                f"knows nor an image folder's; the database is damaged; {self._fix_hint()}"
            )
        named = task_key.split(":", 1)[0]
        if (
            total is not None
            and known_class_count(named) is not None
            and dataset_name(named) != dataset_name(dataset)
        ):
            raise PoolError(
                f"pool {self.path}: task {task_key} names dataset {str(dataset)[:40]!r}, not the {named} of its key; "
                f"the database is damaged; {self._fix_hint()}"
            )
        if (
            not classes
            or not all(
                isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in classes
            )
            or len(set(classes)) != len(classes)
            or (total is not None and max(classes) >= total)
        ):
            shown = json.dumps(classes)[:80]
            within = f" from 0 to {total - 1}" if total is not None else ""
            raise PoolError(
                f"pool {self.path}: task {task_key} lists classes {shown}, not distinct {dataset} class ids{within}; "
                f"the database is damaged; {self._fix_hint()}"
            )
        return tuple(classes)

    def _entry_blob(self, entry_id: int, column: str) -> bytes | None:
        with self._errors():
            row = self._db.execute(f"SELECT {column} FROM entries WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise PoolError(f"pool {self.path} has no entry {entry_id}")
        return row[0]
