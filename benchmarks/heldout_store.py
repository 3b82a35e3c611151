"""The held-out study's stored runs (results/heldout.full.json): which fields are kept, and adding new runs to
them once the research folder that gave the rest is gone."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from benchmarks.common import machine_facts

STORED_FIELDS = (
    "variant",
    "task",
    "seed",
    "ratio",
    "iters",
    "val_accuracy",
    "similar_tasks",
    "chosen",
    "wall_s",
)


def stored_run(run: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a research run that results/heldout.full.json keeps."""
    return {key: run[key] for key in STORED_FIELDS if key in run}


def merged(payload: dict[str, Any], runs: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], int]:
    """The stored payload with the runs it lacks added (same variant, task, seed, ratio and iterations: kept as
    stored), for runs made after the research folder that gave the rest was gone; and how many were added."""

    def identity(run: Mapping[str, Any]) -> tuple[Any, ...]:
        return (run["variant"], run["task"], run["seed"], run["ratio"], run.get("iters", 100))

    stored = {identity(run) for run in payload["runs"]}
    added = [stored_run(run) for run in runs if run.get("size", 32) == 32 and identity(run) not in stored]
    every = payload["runs"] + added
    return {
        **payload,
        "machine": machine_facts(),
        "seeds": len({run["seed"] for run in every}),
        "runs": every,
    }, len(added)
