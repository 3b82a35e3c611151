#!/usr/bin/env bash
# Set up (idempotently) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Parallel workers (pytest-xdist), each taking whole modules: a module's tests share their fixtures and order.
# Every test's torch runs on one thread (tests/conftest.py), so one worker a core; at most 4, for memory.
workers="${EDGE_SMSP_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}"
exec .venv/bin/python -m pytest -q -n "$workers" --dist loadscope "$@"
