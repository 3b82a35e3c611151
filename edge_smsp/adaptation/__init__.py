"""Adaptation: similar pool entries -> score mask -> physical pruning -> fine-tuning -> evaluation.

SMSP ranks pool entries by similarity to the new task and sums the top-K masks into a score mask; baselines
take the same stages and differ only in where the unit scores come from (edge_smsp.criteria).

    config.py      AdaptConfig, AdaptResult
    state.py       AdaptRun: what the stages share
    stages.py      the one-shot stages
    scratch.py     iterative pruning from scratch (pool building)
    pipeline.py    the stage sequences and `adapt`

Building a pool (many adaptations from scratch, committed to the pool) is edge_smsp.pool.build, above this.
"""

from edge_smsp.adaptation.config import AdaptConfig, AdaptResult
from edge_smsp.adaptation.pipeline import (
    ADAPT_STAGES,
    BEFORE_RECOVERY,
    SCRATCH_STAGES,
    Stage,
    adapt,
    prepare_elsewhere,
    run_stages,
)
from edge_smsp.adaptation.scoring_cache import ScoringCache
from edge_smsp.adaptation.scratch import prune_from_scratch
from edge_smsp.adaptation.stages import with_task_head
from edge_smsp.adaptation.state import AdaptRun
from edge_smsp.criteria import SimilarTask
from edge_smsp.criteria.pool_masks import pool_entries_for, score_mask

__all__ = [
    "ADAPT_STAGES",
    "BEFORE_RECOVERY",
    "SCRATCH_STAGES",
    "ScoringCache",
    "AdaptConfig",
    "AdaptResult",
    "AdaptRun",
    "SimilarTask",
    "Stage",
    "adapt",
    "pool_entries_for",
    "prepare_elsewhere",
    "prune_from_scratch",
    "run_stages",
    "score_mask",
    "with_task_head",
]
