"""An entry's contents before they are stored: checked masks and scores, their encoding, the model's files,
and the checked, encoded entry (NewEntry) that a build hands the pool's writer."""

from __future__ import annotations

import dataclasses
import io
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_smsp.core.documents import DocumentError, load_json
from edge_smsp.core.errors import PoolError
from edge_smsp.pool.records import (
    BackboneRecord,
    BuildKey,
    TaskRecord,
    check_backbone,
    check_task,
    entry_ratio,
)
from edge_smsp.pool.store import dumps

WIRE_FORMAT = "edge-smsp-entry/1"


def checked_masks(masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Non-empty 0/1 vectors, one per unit group, as bool arrays."""
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


def checked_scores(
    scores: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Finite float vectors over exactly the masks' groups and shapes."""
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


def encode_arrays(arrays: dict[str, np.ndarray], what: str) -> bytes:
    """Compressed .npz bytes for a BLOB column."""
    buffer = io.BytesIO()
    try:
        np.savez_compressed(buffer, **arrays)
    except (ValueError, OSError) as error:
        raise PoolError(f"cannot encode {what}: {error}") from None
    return buffer.getvalue()


MAX_ARRAY_BYTES = 256 << 20  # one decoded mask or score array (a large ViT's are a few hundred KB)


def decode_arrays(blob: bytes, what: str, path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz BLOB (no pickle); PoolError naming the damage otherwise. Every array's header is
    checked against its stored size before anything is allocated: a 1 KB row claiming a 1e12-element shape is
    damage, not an allocation."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        # A row edited by hand (text or a number where .npz bytes belong) is damage too, not a TypeError.
        raise PoolError(
            f"pool {path}: {what} are stored as {type(blob).__name__}, not .npz bytes; the database is damaged"
            " (corrupt): rebuild that entry or the pool"
        )
    try:
        check_npz_shapes(blob)
        with np.load(io.BytesIO(bytes(blob)), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    # Found by fuzzing (tests/test_fuzz_inputs.py): an encrypted-member flag (RuntimeError), an unknown compression
    # method (NotImplementedError), a truncated header (struct.error, IndexError).
    except (
        ValueError,
        OSError,
        EOFError,
        KeyError,
        RuntimeError,
        NotImplementedError,
        IndexError,
        struct.error,
        zipfile.BadZipFile,
        zlib.error,
    ) as error:
        detail = " ".join(str(error).split())[:200]
        raise PoolError(
            f"pool {path}: {what} cannot be decoded ({detail}); the database is damaged (corrupt):"
            " rebuild that entry or the pool"
        ) from None


def check_npz_shapes(blob: bytes) -> None:
    """ValueError when an .npz member's header claims more data than the member holds (or than MAX_ARRAY_BYTES),
    or an object dtype; read from the headers only."""
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        for info in archive.infolist():
            if info.file_size > MAX_ARRAY_BYTES:
                raise ValueError(f"{info.filename} claims {info.file_size:,} bytes")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            if dtype.hasobject:
                raise ValueError(f"{info.filename} holds Python objects")
            count = 1
            for dimension in shape:
                count *= int(dimension)
            if count * dtype.itemsize > info.file_size:
                raise ValueError(
                    f"{info.filename}'s header claims shape {shape}, more than its {info.file_size:,} bytes"
                )


def collect_model_files(
    model_dir: str | Path | None, model_files: Mapping[str, bytes] | None
) -> dict[str, bytes]:
    """name -> bytes of a saved model's files (a directory's plain files and/or given bytes)."""
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
        check_plain_name(name)
    return files


def check_plain_name(name: str) -> None:
    """A stored file name must not leave its directory (a shared pool file is untrusted input)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise PoolError(f"model file name {name!r} must be a plain file name")


@dataclass(frozen=True)
class NewEntry:
    """An entry checked and encoded, ready to commit in one transaction (what a build worker hands the writer)."""

    task: TaskRecord
    backbone: BackboneRecord
    ratio: float
    method: str
    iters: int
    val_accuracy: float | None
    masks: bytes  # .npz of bool arrays
    scores: bytes | None  # .npz of float64 arrays
    files: dict[str, bytes] = field(repr=False)
    extra: str = "{}"  # JSON object

    @property
    def key(self) -> BuildKey:
        """The build key this entry fills."""
        return BuildKey(
            task_key=self.task.task_key,
            weights_hash=self.backbone.weights_hash,
            image_size=self.backbone.image_size,
            ratio=self.ratio,
            method=self.method,
            iters=self.iters,
        )

    def to_wire(self) -> dict[str, Any]:
        """Plain values only (str, numbers, bytes, lists, dicts): what travels from a worker, without pickle."""
        return {
            "format": WIRE_FORMAT,
            "task": dataclasses.asdict(self.task),
            "backbone": dataclasses.asdict(self.backbone),
            "ratio": self.ratio,
            "method": self.method,
            "iters": self.iters,
            "val_accuracy": self.val_accuracy,
            "masks": self.masks,
            "scores": self.scores,
            "files": dict(self.files),
            "extra": self.extra,
        }

    @classmethod
    def from_wire(cls, wire: Any) -> NewEntry:
        """The entry a worker sent, checked again as if it were added here (a worker is another program)."""
        if not isinstance(wire, dict) or wire.get("format") != WIRE_FORMAT:
            raise PoolError(f"a build worker sent something that is not a {WIRE_FORMAT} entry")
        try:
            task_fields, backbone_fields = dict(wire["task"]), dict(wire["backbone"])
            task = TaskRecord(
                **{
                    **task_fields,
                    "classes": tuple(task_fields["classes"]),
                    "class_names": tuple(task_fields["class_names"]),
                }
            )
            masks = decode_arrays(wire["masks"], "masks from a build worker", Path("<worker>"))
            scores = wire["scores"]
            return new_entry(
                task=task,
                backbone=BackboneRecord(**backbone_fields),
                ratio=wire["ratio"],
                method=wire["method"],
                iters=wire["iters"],
                val_accuracy=wire["val_accuracy"],
                masks=masks,
                scores=None
                if scores is None
                else decode_arrays(scores, "scores from a build worker", Path("<worker>")),
                model_files=wire["files"],
                extra=load_json(wire["extra"]),
            )
        except (KeyError, TypeError, ValueError, DocumentError) as error:
            raise PoolError(f"a build worker sent a malformed entry: {error}") from None


def new_entry(
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
) -> NewEntry:
    """Check and encode one pruned model (metadata, masks, scores, model files) for the pool."""
    if not method:
        raise PoolError("pool entry needs a pruning method name")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise PoolError(f"pool entry iterations must be an integer >= 0, got {iters}")
    if val_accuracy is not None and not 0.0 <= val_accuracy <= 1.0:
        raise PoolError(f"pool entry val_accuracy must be in [0, 1], got {val_accuracy}")
    check_backbone(backbone)
    check_task(task)
    return NewEntry(
        task=task,
        backbone=backbone,
        ratio=entry_ratio(ratio),
        method=method,
        iters=iters,
        val_accuracy=val_accuracy,
        masks=encode_arrays(checked_masks(masks), "masks"),
        scores=None if scores is None else encode_arrays(checked_scores(scores, masks), "scores"),
        files=collect_model_files(model_dir, model_files),
        extra=dumps(dict(extra or {}), "extra"),
    )
