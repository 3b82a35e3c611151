"""Adaptation: similar pool entries -> score mask -> physical pruning -> fine-tuning -> evaluation.

SMSP ranks pool entries by similarity to the new task and sums the top-K masks into a score mask; baselines
take the same stages and differ only in where the unit scores come from (edge_smsp.score_sources).

    config.py      AdaptConfig, AdaptResult
    state.py       AdaptRun: what the stages share
    stages.py      the one-shot stages
    scratch.py     iterative pruning from scratch (pool building)
    pipeline.py    the stage sequences and `adapt`
    pool_build.py  saving results, pool entries, the per-task build step, `build_pool`
    build_loop.py  a build's claim -> run -> commit loop, shared by the in-process and the Ray build
    ray_build.py   `ray_build_pool`: the build's tasks on a Ray cluster (optional extra `ray`)
"""

from edge_smsp.score_sources import SimilarTask
from edge_smsp.score_sources.pool_masks import pool_entries_for, score_mask
from edge_smsp.smsp.build_loop import TaskOutcome
from edge_smsp.smsp.config import AdaptConfig, AdaptResult
from edge_smsp.smsp.pipeline import ADAPT_STAGES, SCRATCH_STAGES, Stage, adapt, run_stages
from edge_smsp.smsp.pool_build import (
    BuiltTask,
    add_to_pool,
    backbone_record,
    build_entry,
    build_keys,
    build_pool,
    describe_task,
    finished_entry,
    index_pool,
    save_adapted,
    task_image_size,
    task_record,
)
from edge_smsp.smsp.scratch import prune_from_scratch
from edge_smsp.smsp.stages import with_task_head
from edge_smsp.smsp.state import AdaptRun

__all__ = [
    "ADAPT_STAGES",
    "SCRATCH_STAGES",
    "AdaptConfig",
    "AdaptResult",
    "AdaptRun",
    "BuiltTask",
    "SimilarTask",
    "Stage",
    "TaskOutcome",
    "adapt",
    "add_to_pool",
    "backbone_record",
    "build_entry",
    "build_keys",
    "build_pool",
    "describe_task",
    "finished_entry",
    "index_pool",
    "pool_entries_for",
    "prune_from_scratch",
    "run_stages",
    "save_adapted",
    "score_mask",
    "task_image_size",
    "task_record",
    "with_task_head",
]
