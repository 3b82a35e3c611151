"""Every benchmark of one mode (benchmarks.registry; each after the results it reads), then the report.

    python -m benchmarks.all --quick|--full

Resumable: rerun the same command after an interruption and finished runs are skipped. A failing benchmark is
logged and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Sequence

from benchmarks import report
from benchmarks.common import add_mode_arguments, log
from benchmarks.registry import run_order


def main(argv: Sequence[str] | None = None) -> int:
    """Run every benchmark, then write RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.all", description=__doc__.splitlines()[0])
    add_mode_arguments(parser)
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to skip")
    args = parser.parse_args(argv)
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    failed = []
    started = time.perf_counter()
    for module in run_order():
        if module.NAME in skip:
            continue
        step_started = time.perf_counter()
        log(f"=== {module.NAME} ({args.mode})")
        try:
            module.run(args.mode, args.results_dir, args.workers)
        except Exception:  # one broken benchmark must not cost the others' results
            failed.append(module.NAME)
            log(f"{module.NAME} FAILED:\n{traceback.format_exc()}")
        log(f"=== {module.NAME} done in {(time.perf_counter() - step_started) / 60:.1f} min")
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
