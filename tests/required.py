"""Skips that CI must not take: with EDGE_SMSP_FAIL_ON_SKIP=1 (set by .ci/run) they fail instead."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

FAIL_ON_SKIP = "EDGE_SMSP_FAIL_ON_SKIP"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with `reason`, or fail it when this run must not skip (CI)."""
    if os.environ.get(FAIL_ON_SKIP) == "1":
        pytest.fail(f"{reason} ({FAIL_ON_SKIP}=1: this run must not skip it)", pytrace=False)
    pytest.skip(reason)
