"""SMSP: the top-K pool entries most similar to the new task (one per pool task), their masks summed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge_smsp.score_sources.base import ScoreInputs, Selection
from edge_smsp.score_sources.pool_masks import PoolMaskSource

if TYPE_CHECKING:
    from edge_smsp.pool import PoolEntry


class Smsp(PoolMaskSource):
    name = "smsp"

    def select(self, inputs: ScoreInputs) -> Selection:
        from edge_smsp.estimators import TaskQuery, shortlist, similarity_estimator

        config = inputs.config
        entries, notes = self.entries(inputs)
        query = TaskQuery(inputs.task, inputs.backbone, samples=config.similarity_samples, seed=config.seed)
        candidates = entries
        if (
            config.shortlist is not None
            and len({entry.task.task_key for entry in entries}) > config.shortlist
        ):
            candidates = shortlist(entries, inputs.pool, query, config.shortlist)
        ranked = similarity_estimator(config.similarity).rank(candidates, inputs.pool, query)
        return Selection(
            ranked=tuple(ranked),
            selected=tuple(best_per_task(ranked)[: config.k]),
            candidates=len(entries),
            notes=notes,
            query=query,
        )

    def weighting(self, inputs: ScoreInputs) -> str:
        return inputs.config.weighting


def best_per_task(ranked: Sequence[tuple[PoolEntry, float]]) -> list[tuple[PoolEntry, float]]:
    """Keep each pool task once (its most similar entry), so one task cannot fill several of the top K."""
    seen: set[str] = set()
    best = []
    for entry, similarity in ranked:
        if entry.task.task_key not in seen:
            seen.add(entry.task.task_key)
            best.append((entry, similarity))
    return best
