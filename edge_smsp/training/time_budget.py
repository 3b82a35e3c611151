"""Fine-tuning for a time budget: how many iterations, at which batch, fit the seconds an adaptation has left on
this host, from a short measured warm-up (images, not iterations, set accuracy here: RESULTS.md shows 25
iterations of 128 images close to 100 of 32)."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from edge_smsp.core.errors import PlanError
from edge_smsp.data.tasks import Task
from edge_smsp.training.finetune import finetune

# Batches tried, largest first: the largest that still leaves MIN_ITERS iterations is taken.
BATCH_SIZES = (128, 64, 32, 16)
MIN_ITERS = 20
# Past 400 iterations of 128 images the held-out study gained nothing (RESULTS.md): a larger budget is not spent.
MAX_ITERS = 400
WARMUP_STEPS = 3  # timed after one untimed step (allocations, first-touch of the weights)
SAFETY = 0.03  # of the budget, kept for what the estimate misses (the report, timer jitter)


@dataclass(frozen=True)
class BudgetPlan:
    """What a time budget bought: the batch and iterations chosen, and the measurements behind them."""

    budget_seconds: float
    spent_seconds: float  # by the adaptation's stages before fine-tuning
    warmup_seconds: float
    step_seconds: float  # one iteration at `batch_size`, measured (scaled from the warm-up's batch)
    evaluation_seconds: float  # predicted for the validation pass after fine-tuning
    batch_size: int
    iters: int
    deadline: float  # time.perf_counter() by which fine-tuning stops, whatever the estimate said

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload.pop("deadline")
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in payload.items()}


def plan_for_budget(
    model: nn.Module,
    task: Task,
    budget_seconds: float,
    started: float,
    *,
    micro_batch: int | None = None,
    optimizer: str = "sgd",
    lr: float | None = None,
) -> BudgetPlan:
    """Measure a few training steps on a copy of `model` and choose the batch and iterations that end the
    adaptation begun at `started` (a time.perf_counter() value) within `budget_seconds`; PlanError when not
    even one iteration fits."""
    warmup_started = time.perf_counter()
    batch = min(BATCH_SIZES[0], len(task.train))
    step_seconds = _step_seconds(model, task, batch, micro_batch, optimizer, lr)
    evaluation_seconds = _evaluation_seconds(model, task)
    now = time.perf_counter()
    warmup_seconds = now - warmup_started
    spent = warmup_started - started
    left = started + budget_seconds * (1.0 - SAFETY) - now - evaluation_seconds
    # A step's cost is close to proportional to its images at these sizes; smaller batches are estimated so.
    sizes = [batch, *(size for size in BATCH_SIZES if size < batch)]
    for size in sizes:
        seconds = step_seconds * size / batch
        iters = min(int(left // seconds), MAX_ITERS) if left > 0 else 0
        if iters >= MIN_ITERS:
            break
    if iters < 1:
        raise PlanError(
            f"time budget {budget_seconds:g} s leaves no time for one fine-tuning iteration: the stages before "
            f"it took {spent + warmup_seconds:.1f} s and one iteration takes {seconds:.2f} s here; raise "
            f"--time-budget to at least {math.ceil(spent + warmup_seconds + evaluation_seconds + MIN_ITERS * seconds)}"
        )
    return BudgetPlan(
        budget_seconds=budget_seconds,
        spent_seconds=spent,
        warmup_seconds=warmup_seconds,
        step_seconds=seconds,
        evaluation_seconds=evaluation_seconds,
        batch_size=size,
        iters=iters,
        deadline=started + budget_seconds * (1.0 - SAFETY) - evaluation_seconds,
    )


def _step_seconds(
    model: nn.Module, task: Task, batch: int, micro_batch: int | None, optimizer: str, lr: float | None
) -> float:
    scratch = copy.deepcopy(model)
    options = {"batch_size": batch, "micro_batch": micro_batch, "optimizer": optimizer, "lr": lr}
    finetune(scratch, task, 1, **options)
    started = time.perf_counter()
    finetune(scratch, task, WARMUP_STEPS, seed=1, **options)
    return (time.perf_counter() - started) / WARMUP_STEPS


def _evaluation_seconds(model: nn.Module, task: Task, sample: int = 64) -> float:
    count = min(sample, len(task.val))
    images, _ = task.val.batch(torch.arange(count))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(images)  # first touch
        started = time.perf_counter()
        model(images)
        seconds = time.perf_counter() - started
    model.train(was_training)
    return seconds * len(task.val) / count
