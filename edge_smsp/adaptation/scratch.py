"""Iterative pruning from scratch (how pool entries are made): fine-tune, then rounds of scoring, pruning
towards the ratio and fine-tuning, the iterations split evenly over the warm-up and the rounds."""

from __future__ import annotations

import dataclasses

import numpy as np
from torch import nn

from edge_smsp.adaptation.config import AdaptConfig
from edge_smsp.adaptation.stages import attach_task_head
from edge_smsp.adaptation.state import AdaptRun
from edge_smsp.criteria import score_units
from edge_smsp.data.tasks import Task
from edge_smsp.models.prune import PruneSummary, backbone_group_sizes, keep_count, kept_indices, prune
from edge_smsp.models.unit_scores import unit_ranks
from edge_smsp.models.units import group_layouts


def prune_iteratively(run: AdaptRun) -> None:
    """The scratch method's pruning stage: leaves the model, a summary against the backbone, and scores over
    the backbone's units in which units that survive longer rank higher."""
    config, backbone = run.config, run.backbone
    assert run.model is not None and config.ratio is not None
    rounds = config.scratch_rounds
    sizes = backbone_group_sizes(backbone)
    kinds = {group.key: group.kind for group in group_layouts(backbone)}
    final_counts = {
        key: keep_count(size, config.ratio, kinds[key], config.round_to) for key, size in sizes.items()
    }
    survival = {key: np.full(size, float(rounds), dtype=np.float64) for key, size in sizes.items()}
    chunks = split_evenly(config.iters, rounds + 1)
    run.train(run.model, chunks[0], seed_offset=0)
    first_summary: PruneSummary | None = None
    for round_index in range(rounds):
        model = run.model
        importance = score_units(
            model,
            config.scratch_criterion,
            batches=run.batches(config.taylor_batches, round_index),
            seed=config.seed,
        )
        before = kept_indices(model)
        fraction = (round_index + 1) / rounds
        counts = {
            key: min(
                len(before[key]), max(final_counts[key], round(size - (size - final_counts[key]) * fraction))
            )
            for key, size in sizes.items()
        }
        run.model, run.summary = prune(model, importance, keep_counts=counts, round_to=config.round_to)
        first_summary = first_summary or run.summary
        after = kept_indices(run.model)
        for key, indices in before.items():
            ranks = unit_ranks(importance[key])
            position = {unit: slot for slot, unit in enumerate(indices)}
            for unit in sorted(set(indices) - set(after[key])):
                survival[key][unit] = round_index + ranks[position[unit]]
            if round_index == rounds - 1:
                for unit in after[key]:
                    survival[key][unit] = rounds + ranks[position[unit]]
        run.train(run.model, chunks[round_index + 1], seed_offset=round_index + 1)
    assert run.summary is not None and first_summary is not None
    run.summary = dataclasses.replace(
        run.summary,
        ratio=config.ratio,
        params_before=first_summary.params_before,
        macs_before=first_summary.macs_before,
        groups={key: {**run.summary.groups[key], "size": sizes[key]} for key in run.summary.groups},
        kept_indices=kept_indices(run.model),
    )
    run.scores = survival


def prune_from_scratch(
    backbone: nn.Module, task: Task, config: AdaptConfig, *, progress: bool = False
) -> tuple[nn.Module, PruneSummary, dict[str, np.ndarray], float]:
    """Iterative pruning of `backbone` for `task`: the model, its summary, survival scores and fine-tuning seconds."""
    run = AdaptRun(backbone, None, task, config, progress)
    attach_task_head(run)
    prune_iteratively(run)
    assert run.model is not None and run.summary is not None and run.scores is not None
    return run.model, run.summary, run.scores, run.seconds["finetuning"]


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` split into `parts` integers differing by at most one (the larger ones last)."""
    base, remainder = divmod(total, parts)
    return [base + (1 if index >= parts - remainder else 0) for index in range(parts)]
