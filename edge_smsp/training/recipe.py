"""Recovery recipes: which steps run between one-shot pruning (and weight initialisation) and fine-tuning.

The steps (edge_smsp.training.recovery): adaptive BatchNorm (re-estimate the statistics on the task's images) and
weight imprinting (the new head from class prototypes of the penultimate features). Steps that were tried and not
adopted (a linear probe, a shrunk imprint, the entry's head rows) live in benchmarks/research/recipes.py.
`RECIPES` names each recipe per initialisation: what the measurements supported (see `RECIPES`). Torch-free,
so the CLI reads the names cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_smsp.core.errors import EdgeSmspError

# The fine-tuning batch of an adaptation (adapt, deploy). 100 iterations at batch 128, with SGD's learning rate
# scaled to 0.04 (edge_smsp.training.finetune.default_lr), beat batch 32 by +0.90 pt on the held-out study's pool tasks
# (2.5x the wall time there) and by +0.99 / +1.84 pt at r = 0.5 / 0.7 on its held-out tasks (3-3.4x the wall
# time), at 32 px (benchmarks/RESULTS.md). `edge-smsp pool build` keeps batch 32.
ADAPT_BATCH_SIZE = 128


@dataclass(frozen=True)
class Recipe:
    """Which recovery steps run after pruning, on how many of the task's training images."""

    name: str
    adaptive_bn: bool = True
    imprint: bool = True
    samples: int = 512  # class-balanced training images for BN statistics and prototypes
    bn_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.samples < 2 or self.bn_batch_size < 2:
            raise EdgeSmspError(f"invalid recipe {self}")

    @property
    def needs_features(self) -> bool:
        return self.imprint


# Where a sub-network's weights come from (AdaptConfig.init): the backbone's, or the top pool entry's.
INITS = ("backbone", "pool")
NOTHING = Recipe("plain", adaptive_bn=False, imprint=False)

# name -> initialisation -> steps.
RECIPES: dict[str, dict[str, Recipe]] = {
    "plain": {"backbone": NOTHING, "pool": NOTHING},
    "recover": {"backbone": Recipe("recover"), "pool": Recipe("recover")},
}


def recipe_for(name: str, init: str) -> Recipe:
    """The steps of recipe `name` after an initialisation `init`."""
    if name not in RECIPES or init not in INITS:
        raise EdgeSmspError(f"unknown recipe {name!r} or initialisation {init!r}")
    return RECIPES[name][init]
