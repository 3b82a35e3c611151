"""`adapt`: a sequence of named stages over one run. One-shot methods differ only in where scores come from.

    head -> select (similar pool entries) -> probe (whose weights) -> scores -> prune -> init (weights)
         -> recipe -> finetune -> evaluate

The head goes on first: the sizes before and after both count the model that is shipped, Taylor's warm-up
trains through it, and the pruned head keeps its slice of the seeded initial weights.

A new stage is a function of the run (edge_smsp.adaptation.state.AdaptRun) and one line in ADAPT_STAGES; it reads
what earlier stages left on the run (the selected pool entries and their similarity, the pruned model...).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from edge_smsp.adaptation.config import AdaptConfig, AdaptResult
from edge_smsp.adaptation.scoring_cache import ScoringCache
from edge_smsp.adaptation.scratch import prune_iteratively
from edge_smsp.adaptation.stages import (
    attach_task_head,
    evaluate_on_val,
    finetune_rest,
    initialise_weights,
    probe_pool_entries,
    prune_to_ratio,
    recover_after_pruning,
    score_with_source,
    select_pool_entries,
)
from edge_smsp.adaptation.state import AdaptRun
from edge_smsp.core.errors import PruneError
from edge_smsp.criteria import SCRATCH
from edge_smsp.data.tasks import Task
from edge_smsp.pool import Pool


@dataclass(frozen=True)
class Stage:
    """A named step; its wall time, less any fine-tuning inside it, goes to the report's `seconds` bucket."""

    name: str
    run: Callable[[AdaptRun], None]
    seconds: str | None = None


ADAPT_STAGES: tuple[Stage, ...] = (
    Stage("head", attach_task_head),
    Stage("select", select_pool_entries, "similarity"),
    Stage("probe", probe_pool_entries, "similarity"),
    Stage("scores", score_with_source, "pruning"),
    Stage("prune", prune_to_ratio, "pruning"),
    Stage("init", initialise_weights, "init"),
    Stage("recipe", recover_after_pruning, "init"),
    Stage("finetune", finetune_rest),
    Stage("evaluate", evaluate_on_val),
)
SCRATCH_STAGES: tuple[Stage, ...] = (
    Stage("head", attach_task_head),
    Stage("prune", prune_iteratively, "pruning"),
    Stage("evaluate", evaluate_on_val),
)


def adapt(
    backbone: nn.Module,
    pool: Pool | None,
    task: Task,
    config: AdaptConfig,
    *,
    progress: bool = False,
    cache: ScoringCache | None = None,
) -> AdaptResult:
    """Prune `backbone` for `task` with the configured method, attach a fresh head, fine-tune, evaluate; with a
    `cache`, the similarity step and the score mask of earlier adaptations of this task on the same pool entries
    (at other ratios) are reused."""
    if config.ratio is None:
        raise PruneError("adapting needs a pruning ratio (AdaptConfig.ratio)")
    started = time.perf_counter()
    run = AdaptRun(backbone, pool, task, config, progress, cache=cache)
    run_stages(run, SCRATCH_STAGES if config.method == SCRATCH else ADAPT_STAGES)
    return run.result(time.perf_counter() - started)


# Of ADAPT_STAGES, those that need none of the task's images when the similarity query and the probe come from
# where the images are: the model they leave is pruned, initialised and headed, ready to recover elsewhere.
BEFORE_RECOVERY: tuple[Stage, ...] = ADAPT_STAGES[: [stage.name for stage in ADAPT_STAGES].index("recipe")]


def prepare_elsewhere(
    backbone: nn.Module,
    pool: Pool | None,
    task: Task,
    config: AdaptConfig,
    *,
    query: Any,
    prober: Callable[[Sequence[tuple[Any, float]]], list[Any]] | None,
    progress: bool = False,
) -> AdaptRun:
    """The stages before recovery for a task whose images stay on its device (`task` has no images): pool
    entries ranked by `query` (a TaskQuery.described), the probe by `prober`; returns the run, whose `model` is
    the pruned sub-network with the chosen entry's weights and the task's head, for the device to recover and
    fine-tune."""
    if config.ratio is None:
        raise PruneError("adapting needs a pruning ratio (AdaptConfig.ratio)")
    run = AdaptRun(backbone, pool, task, config, progress, query=query, prober=prober)
    if config.method == SCRATCH or run.source.needs.batches or run.source.needs.warmup:
        raise PruneError(
            f"method {config.method} scores units on the task's images, which stay on the device: use smsp, "
            "smsp-random, random or magnitude"
        )
    run_stages(run, BEFORE_RECOVERY)
    return run


def run_stages(run: AdaptRun, stages: Sequence[Stage]) -> None:
    """Run `stages` in order, adding each one's time to its bucket."""
    for stage in stages:
        trained_before = run.seconds["finetuning"]
        started = time.perf_counter()
        stage.run(run)
        if stage.seconds is not None:
            trained = run.seconds["finetuning"] - trained_before
            run.seconds[stage.seconds] += time.perf_counter() - started - trained
