"""Every benchmark of one mode in order (pool, tuning on pool tasks, held-out study, ...), then the report.

    python -m benchmarks.all --quick|--full

Resumable: rerun the same command after an interruption and finished runs are skipped. A failing benchmark is
logged and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Sequence

from benchmarks import (
    accuracy,
    adapt_time,
    budgets,
    mechanism,
    planner_check,
    report,
    similarity_cost,
    speed,
    tuning,
)
from benchmarks.common import add_mode_arguments, log

# Tuning first: the held-out study runs the variant chosen on pool tasks next to the paper's default.
STEPS = (
    "tuning",
    "accuracy",
    "budgets",
    "mechanism",
    "adapt_time",
    "similarity_cost",
    "speed",
    "planner_check",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every step, then write RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.all", description=__doc__.splitlines()[0])
    add_mode_arguments(parser)
    parser.add_argument("--skip", default="", help="comma-separated steps to skip")
    args = parser.parse_args(argv)
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    modules = {
        "tuning": tuning,
        "accuracy": accuracy,
        "budgets": budgets,
        "mechanism": mechanism,
        "adapt_time": adapt_time,
        "similarity_cost": similarity_cost,
    }
    failed = []
    started = time.perf_counter()
    for step in STEPS:
        if step in skip:
            continue
        step_started = time.perf_counter()
        log(f"=== {step} ({args.mode})")
        try:
            if step == "speed":
                speed.run(args.mode, args.results_dir)
            elif step == "planner_check":
                planner_check.run(args.mode, args.results_dir)
            else:
                modules[step].run(args.mode, args.results_dir, args.workers)
        except Exception:  # one broken benchmark must not cost the others' results
            failed.append(step)
            log(f"{step} FAILED:\n{traceback.format_exc()}")
        log(f"=== {step} done in {(time.perf_counter() - step_started) / 60:.1f} min")
    if args.results_dir == report.DEFAULT_RESULTS_DIR:
        report.main([])
    else:
        report.main(["--results-dir", str(args.results_dir), "--out", str(args.results_dir / "RESULTS.md")])
    log(
        f"all ({args.mode}) finished in {(time.perf_counter() - started) / 60:.1f} min; failed: {failed or 'none'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
