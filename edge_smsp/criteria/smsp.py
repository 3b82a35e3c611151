"""SMSP: the top-K pool entries most similar to the new task (one per pool task), their masks summed."""

from __future__ import annotations

from edge_smsp.criteria.base import ScoreInputs, Selection, best_per_task
from edge_smsp.criteria.pool_masks import PoolMaskSource


class Smsp(PoolMaskSource):
    name = "smsp"

    def select(self, inputs: ScoreInputs) -> Selection:
        from edge_smsp.transfer.estimators import TaskQuery, shortlist, similarity_estimator

        config = inputs.config
        entries, notes = self.entries(inputs)
        query = inputs.query or TaskQuery(
            inputs.task, inputs.backbone, samples=config.similarity_samples, seed=config.seed
        )
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
