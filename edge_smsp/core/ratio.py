"""The pruning ratio: its range and its rounding, decided here once (torch-free, so the CLI can check it)."""

from __future__ import annotations

from typing import Any

from edge_smsp.core.errors import EdgeSmspError, PruneError

# Ratios are compared rounded, so that 0.5 and 0.5000000001 name the same model, pool entry and plan.
RATIO_DECIMALS = 6


def checked_ratio(ratio: Any, *, error: type[EdgeSmspError] = PruneError, what: str = "ratio") -> float:
    """The ratio as a float in [0, 1); `error` (a typed error naming `what`) otherwise."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise error(f"{what} must be a number in [0, 1), got {ratio!r}") from None
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise error(f"{what} must be in [0, 1), got {ratio!r}")
    return value


def canonical_ratio(ratio: Any, *, error: type[EdgeSmspError] = PruneError, what: str = "ratio") -> float:
    """The checked ratio rounded to RATIO_DECIMALS: how plans, pool entries and deploys name it."""
    return round(checked_ratio(ratio, error=error, what=what), RATIO_DECIMALS)
