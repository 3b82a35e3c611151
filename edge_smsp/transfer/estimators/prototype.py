"""Prototype similarity: the new task's class prototypes against each pool task's, as stored in the pool.

It reads task descriptors, never an entry's model (edge_smsp.data.descriptors). Ranking quality on the 12
Fashion-MNIST pool tasks, leave-one-out: the class-sharing entry first for 12/12 tasks, at 1 and 2 threads,
against 9/12 for LEEP on the same pool (benchmarks/research/rank.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge_smsp.core.errors import PoolError
from edge_smsp.transfer.estimators.base import SimilarityEstimator, TaskQuery

if TYPE_CHECKING:
    from edge_smsp.pool import Pool, PoolEntry


class Prototype(SimilarityEstimator):
    name = "prototype"

    def rank(
        self, entries: Sequence[PoolEntry], pool: Pool, query: TaskQuery
    ) -> list[tuple[PoolEntry, float]]:
        from edge_smsp.data.descriptors import prototype_similarity

        if not entries:
            return []
        stored = described(entries, pool)
        centre = pool.descriptor_centre(entries[0].backbone)
        ranked = [
            (entry, prototype_similarity(query.descriptor, stored[entry.id], centre)) for entry in entries
        ]
        ranked.sort(key=lambda pair: pair[1], reverse=True)
        return ranked


def described(entries: Sequence[PoolEntry], pool: Pool) -> dict:
    """entry id -> stored task descriptor; PoolError naming the fix when some entries' tasks have none."""
    stored = pool.entry_descriptors(entries)
    check_described(pool, [entry.task.task_key for entry in entries if entry.id not in stored])
    return stored


def check_described(pool: Pool, missing: Sequence[str]) -> None:
    """PoolError naming the fix (`pool index`) when some tasks have no stored descriptor."""
    missing = sorted(set(missing))
    if missing:
        raise PoolError(
            f"pool {pool.path} has no task descriptor for {len(missing)} task(s) ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); run `edge-smsp pool index --pool {pool.path}`"
        )
