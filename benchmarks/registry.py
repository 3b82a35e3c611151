"""The benchmarks, in the order their sections appear in RESULTS.md. `all` and `report` read this list.

Each module exports NAME, run(mode, results_dir, workers), main(argv), section(found, plots) (its part of
RESULTS.md, or None before it has run) and, where it draws one, plot(...). AFTER names the benchmarks whose
results it reads while it runs.
"""

from __future__ import annotations

from types import ModuleType

from benchmarks import (
    accuracy,
    adapt_time,
    budgets,
    fleet,
    mechanism,
    planner_check,
    precision,
    similarity_cost,
    similarity_scale,
    speed,
    tuning,
)

BENCHMARKS: tuple[ModuleType, ...] = (
    accuracy,
    mechanism,
    budgets,
    tuning,
    speed,
    adapt_time,
    similarity_cost,
    planner_check,
    precision,
    similarity_scale,
    fleet,
)


def run_order() -> list[ModuleType]:
    """Every benchmark, each after the ones it reads (AFTER)."""
    by_name = {module.NAME: module for module in BENCHMARKS}
    ordered: list[ModuleType] = []

    def visit(module: ModuleType) -> None:
        for name in getattr(module, "AFTER", ()):
            visit(by_name[name])
        if module not in ordered:
            ordered.append(module)

    for module in BENCHMARKS:
        visit(module)
    return ordered
