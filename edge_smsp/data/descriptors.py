"""Task descriptors and what is computed on them, numpy only: prototype similarity and the sketch search.

A task descriptor is the class prototypes of a task: the mean penultimate feature of the *unpruned* backbone
per class, a [k, F] array stored as float16 (7.5 KiB for 3 classes of EfficientNet-Lite0; computed by
`edge_smsp.transfer.task_descriptor.task_descriptor`). Two tasks are compared by how well each new class finds a matching
pool class (`prototype_similarity`). A pool task that shares a class with the new task has a near-identical
prototype for it (same images' distribution, same network), so shared classes dominate the score whatever the
machine or thread count.

The search stage ranks a whole pool cheaply on sketches: each prototype projected onto SKETCH_WIDTH fixed
random directions (a linear map, so the pool's centre projects to the sketches' centre), the same score
computed on the sketches. The exact similarity then re-ranks only the shortlist it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

from edge_smsp.core.errors import DataError

DESCRIPTOR_DTYPE = np.float16
# Chosen leave-one-out on the 12 Fashion-MNIST pool tasks (benchmarks/research/rank.py): the class-sharing
# entry ranked first for 12/12 tasks with p in 4..32 (11/12 with p = 1 or 2, where several merely *similar*
# classes, e.g. coat/pullover/shirt, outweigh one identical class); 8 had the widest margin.
DEFAULT_POWER = 8.0
# Sketch width: on real descriptors of all 1,002 Fashion-MNIST tasks of 2-8 classes, each querying the rest,
# the shortlist of 32 holds the exact top 5 every time at widths 32-256; at 128 a shortlist of 8 already holds
# 99.9 % of them (benchmarks/similarity_scale.py, RESULTS.md "Similarity at scale").
SKETCH_WIDTH = 128
_SKETCH_SEED = 20230710


def descriptor_centre(descriptors: Sequence[np.ndarray]) -> np.ndarray:
    """The mean class prototype over a set of task descriptors (one shared origin for cosine similarity)."""
    if not descriptors:
        raise DataError("need at least one descriptor to centre on")
    return np.concatenate([np.asarray(d, dtype=np.float64) for d in descriptors]).mean(axis=0)


def prototype_similarity(
    query: np.ndarray, entry: np.ndarray, centre: np.ndarray | None = None, power: float = DEFAULT_POWER
) -> float:
    """Soft count of shared classes: sum over the query's classes of (best cosine to an entry class)^power.

    Centred on `centre` (e.g. the mean prototype of the pool), the cosine of two prototypes of one class is
    0.96-1.0 and of two different classes at most ~0.9 (sneaker vs sandal); the power turns that gap into
    ~1 per shared class and a small remainder per merely similar one. Negative cosines count as 0.
    """
    query, entry = checked_descriptor(query, "query"), checked_descriptor(entry, "entry")
    if query.shape[1] != entry.shape[1]:
        raise DataError(f"descriptors of different widths: {query.shape[1]} vs {entry.shape[1]}")
    if not power > 0:
        raise DataError(f"power must be positive, got {power}")
    if centre is not None:
        query, entry = query - centre, entry - centre
    cosine = unit_rows(query) @ unit_rows(entry).T
    return float(np.sum(np.clip(cosine.max(axis=1), 0.0, None) ** power))


def project(rows: np.ndarray, width: int = SKETCH_WIDTH) -> np.ndarray:
    """Rows ([..., F]) projected onto `width` fixed random directions (float64); linear, so the projection of
    a mean is the mean of the projections."""
    rows = np.asarray(rows, dtype=np.float64)
    return rows @ _projection(rows.shape[-1], width)


def sketch(descriptor: np.ndarray, width: int = SKETCH_WIDTH) -> np.ndarray:
    """A descriptor's sketch as stored: its rows projected (`project`), float16 [k, width]."""
    return project(descriptor, width).astype(DESCRIPTOR_DTYPE)


class SketchIndex:
    """Every pool task's sketch rows in one matrix, centred and unit-normalised: `search` scores them all.

    `owners[i]` is the task of row i; a task's rows are contiguous."""

    def __init__(
        self, owners: Sequence[str], rows_per_owner: Sequence[int], sketches: np.ndarray, centre: np.ndarray
    ):
        self.owners = list(owners)
        counts = np.asarray(rows_per_owner, dtype=np.int64)
        if len(counts) != len(self.owners) or int(counts.sum()) != len(sketches) or np.any(counts < 1):
            raise DataError("sketch index: every task needs at least one row, and the rows must add up")
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.centre = np.asarray(centre, dtype=np.float32)
        self.rows = unit_rows(np.asarray(sketches, dtype=np.float32) - self.centre).astype(np.float32)

    def __len__(self) -> int:
        return len(self.owners)

    def scores(self, query_sketch: np.ndarray, power: float = DEFAULT_POWER) -> np.ndarray:
        """The prototype similarity of every task to the query, computed on sketches ([len(self)])."""
        query = unit_rows(np.asarray(query_sketch, dtype=np.float32) - self.centre)
        if not len(self.owners):
            return np.zeros(0)
        cosine = np.clip(query @ self.rows.T, 0.0, None)
        best = np.maximum.reduceat(cosine, self.starts, axis=1)  # [query classes, tasks]
        return (best.astype(np.float64) ** power).sum(axis=0)

    def search(
        self,
        query_sketch: np.ndarray,
        count: int,
        allowed: np.ndarray | None = None,
        power: float = DEFAULT_POWER,
    ) -> list[str]:
        """The `count` tasks with the highest sketch similarity, best first (only `allowed` ones if given)."""
        scores = self.scores(query_sketch, power)
        if allowed is not None:
            scores = np.where(allowed, scores, -np.inf)
            count = min(count, int(np.count_nonzero(allowed)))
        count = min(count, len(scores))
        if count <= 0:
            return []
        top = np.argpartition(-scores, count - 1)[:count]
        return [self.owners[int(i)] for i in top[np.argsort(-scores[top], kind="stable")]]


def checked_descriptor(descriptor: np.ndarray, name: str = "descriptor") -> np.ndarray:
    """A finite, non-empty [k, F] array as float64; DataError otherwise."""
    array = np.asarray(descriptor, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0 or not np.all(np.isfinite(array)):
        raise DataError(f"{name} descriptor must be a finite [k, F] array, got shape {array.shape}")
    return array


def unit_rows(array: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero)."""
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


@cache
def _projection(features: int, width: int) -> np.ndarray:
    generator = np.random.default_rng(_SKETCH_SEED)
    return generator.standard_normal((features, width)) / np.sqrt(width)
