"""An entry's contents before they are stored: checked masks and scores, their encoding, the model's files."""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edge_smsp.errors import PoolError


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


def decode_arrays(blob: bytes, what: str, path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz BLOB (no pickle); PoolError naming the damage otherwise."""
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise PoolError(f"pool {path}: {what} cannot be decoded ({error}); the database is damaged") from None


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
