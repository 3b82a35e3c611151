#!/usr/bin/env bash
# Set up (idempotently) and run the whole test suite, in EDGE_SMSP_TEST_WORKERS processes (pytest-xdist; default
# 2, one per core of the machines CI runs on; 0 runs it in this process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -n "${EDGE_SMSP_TEST_WORKERS:-2}" --dist loadgroup --durations=15 "$@"
