"""What one study run is: a method at a ratio and iteration budget on one task, and its cache key."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.settings import (
    PAPER_VARIANT,
)
from edge_smsp.criteria import needs_pool

ALL_ENTRIES = 999  # top_k meaning "every pool entry"


@dataclass(frozen=True)
class RunSpec:
    """One adaptation: a method at a ratio and iteration budget on one task (held-out, or a left-out pool task)."""

    phase: str  # "heldout": a new task against the whole pool; "loo": a pool task against the pool without it
    classes: tuple[int, ...]
    method: str
    ratio: float
    iters: int
    seed: int
    top_k: int = 5
    weighting: str = "uniform"
    mask_source: str = "masks"
    export: bool = False

    @property
    def variant(self) -> str:
        """Method name, with K, weighting and mask source for the pool methods."""
        if not needs_pool(self.method):
            return self.method
        k = "all" if self.top_k >= ALL_ENTRIES else str(self.top_k)
        if self.method == "smsp-random":
            return f"smsp-random[k{k}]"
        return f"smsp[k{k},{self.weighting},{self.mask_source}]"

    @property
    def key(self) -> str:
        """Cache key: everything that changes the result."""
        classes = "-".join(map(str, self.classes))
        return f"{self.phase}|{classes}|{self.variant}|r{self.ratio:g}|it{self.iters}|s{self.seed}"


def variant_spec(
    phase: str,
    classes: Sequence[int],
    variant: Sequence[Any],
    ratio: float,
    iters: int,
    seed: int,
    export: bool = False,
) -> RunSpec:
    """A RunSpec from a (method, top_k, weighting, mask_source) tuple."""
    method, top_k, weighting, mask_source = variant
    if not needs_pool(method):
        return RunSpec(phase, tuple(classes), method, ratio, iters, seed, export=export)
    return RunSpec(
        phase,
        tuple(classes),
        method,
        ratio,
        iters,
        seed,
        int(top_k),
        weighting or "uniform",
        mask_source or "masks",
        export,
    )


def paper_variant_name() -> str:
    """Display name of the paper's default SMSP configuration."""
    return variant_spec("heldout", (0, 1), PAPER_VARIANT, 0.5, 1, 0).variant
