"""The stages of a one-shot adaptation, each a small function of the run (see edge_smsp.adaptation.pipeline)."""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from edge_smsp.adaptation.state import AdaptRun
from edge_smsp.core.errors import PoolError
from edge_smsp.criteria.base import best_per_task
from edge_smsp.data.tasks import Task
from edge_smsp.models.prune import prune, replace_classifier
from edge_smsp.models.unit_scores import unit_l1_norms
from edge_smsp.training.finetune import evaluate
from edge_smsp.training.recipe import recipe_for
from edge_smsp.training.recovery import recover
from edge_smsp.training.time_budget import plan_for_budget
from edge_smsp.transfer.entry_models import borrowed_entry_model
from edge_smsp.transfer.entry_probe import best_probed, probe_entries
from edge_smsp.transfer.inherit import inherit


def attach_task_head(run: AdaptRun) -> None:
    """A copy of the backbone with a fresh head for the task: sizes before/after both count the shipped model."""
    run.model = with_task_head(run.backbone, run.task, run.config.seed)


def select_pool_entries(run: AdaptRun) -> None:
    """The pool entries the source draws on (pool sources), with their similarity to the task."""
    if not run.source.needs.pool:
        return
    if run.pool is None:
        raise PoolError(f"method {run.config.method} needs a pool (--pool) built for this backbone")
    if run.cache is not None:  # a selection of the same entries at another ratio serves this one
        run.scoring_key = run.cache.key(run)
        shared = run.cache.lookup(run.scoring_key)
        if shared is not None:
            _, notes = run.source.entries(run.score_inputs())  # what this ratio's report says
            run.selection = dataclasses.replace(shared.selection, notes=notes)
            run.probed, run.scores, run.reused = list(shared.probed), dict(shared.scores), True
            return
        run.cache.counted("similarity_passes")
    run.selection = run.source.select(run.score_inputs())


def probe_pool_entries(run: AdaptRun) -> None:
    """Pool initialisation: of the `probe` most similar pool tasks, the entry whose own features separate the
    task's classes best is put first, so its mask and weights are the ones used (edge_smsp.transfer.entry_probe)."""
    selection, config = run.selection, run.config
    if selection is None or run.reused or config.init_mode != "pool" or config.probe < 2:
        return
    assert run.pool is not None
    per_task = best_per_task(selection.ranked)
    with_models = [(entry, value) for entry, value in per_task if entry.file_names]
    if len(with_models) < 2:
        return
    candidates = with_models[: config.probe]
    if run.prober is not None:  # the task's images are on its device: the probe runs there
        probed = run.prober(candidates)
    else:
        probed = probe_entries(run.pool, candidates, run.task, seed=config.seed)
    best = best_probed(probed).entry
    ordered = [pair for pair in per_task if pair[0].id == best.id]
    ordered += [pair for pair in per_task if pair[0].id != best.id]
    run.selection = dataclasses.replace(selection, selected=tuple(ordered[: config.k]))
    run.probed = [
        {
            "entry_id": candidate.entry.id,
            "task_id": candidate.entry.task.task_key,
            "nearest_mean_accuracy": round(candidate.accuracy, 6),
            "chosen": candidate.entry.id == best.id,
        }
        for candidate in probed
    ]


def score_with_source(run: AdaptRun) -> None:
    """One score per backbone unit from the configured source (or the cache's, for the same entries)."""
    if run.reused:
        return
    run.scores = run.source(run.score_inputs())
    if run.cache is not None:
        run.cache.counted("scoring_passes")
        run.cache.store(run.scoring_key, run)


def prune_to_ratio(run: AdaptRun) -> None:
    """Keep the top-scoring units of every group at the ratio (ties broken by the backbone's L1 norms)."""
    assert run.model is not None and run.scores is not None and run.config.ratio is not None
    run.model, run.summary = prune(
        run.model,
        run.scores,
        run.config.ratio,
        round_to=run.config.round_to,
        tie_break=unit_l1_norms(run.backbone),
    )


def initialise_weights(run: AdaptRun) -> None:
    """Pool initialisation: the sub-network's weights from the top selected entry's fine-tuned model (units it
    lacks keep the backbone's); the classifier stays the new task's."""
    assert run.model is not None
    run.init = "backbone"
    if run.config.init_mode != "pool":
        return
    if run.selection is None or not run.selection.selected:
        raise PoolError(f"method {run.config.method} selected no pool entry to take weights from")
    top = run.selection.selected[0][0]
    if not top.file_names:
        run.notes.append(f"pool entry {top.id} stores no model: weights from the backbone")
        return
    assert run.pool is not None
    source = borrowed_entry_model(run.pool, top)
    inherit(run.model, run.backbone, [(source, 1.0)])
    run.init = "pool"


def recover_after_pruning(run: AdaptRun) -> None:
    """The recipe's recovery steps for the initialisation used (edge_smsp.training.recipe)."""
    assert run.model is not None
    steps = recipe_for(run.config.recipe, run.init)
    report = recover(run.model, run.task, steps, run.config.seed)
    run.recovery = report.steps


def finetune_rest(run: AdaptRun) -> None:
    """Fine-tune the sub-network for what is left of the iteration budget, or of the time budget."""
    assert run.model is not None
    if run.config.time_budget is None:
        run.train(run.model, run.config.iters - run.iters_done)
        return
    plan = plan_for_budget(
        run.model,
        run.task,
        run.config.time_budget,
        run.started,
        micro_batch=run.micro_batch,
        optimizer=run.config.optimizer,
        lr=run.config.lr,
    )
    run.train(run.model, plan.iters, batch_size=plan.batch_size, deadline=plan.deadline)
    run.training["time_budget"] = {**plan.to_dict(), "iters_done": run.iters_done}


def evaluate_on_val(run: AdaptRun) -> None:
    """Top-1 accuracy on the task's validation split."""
    assert run.model is not None
    run.val_accuracy = evaluate(run.model.eval(), run.task.val, batch_size=max(64, run.config.batch_size))


def with_task_head(backbone: nn.Module, task: Task, seed: int) -> nn.Module:
    """A copy of the backbone with a fresh classifier for the task, initialised from `seed` (not global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return replace_classifier(copy.deepcopy(backbone), len(task.classes))
