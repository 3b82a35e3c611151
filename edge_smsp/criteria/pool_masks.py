"""What the pool sources share: the entries of this backbone, and S = the sum of the selected entries' masks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edge_smsp.core.errors import NoPoolEntriesError, PoolError
from edge_smsp.core.ratio import canonical_ratio
from edge_smsp.criteria.base import Needs, ScoreInputs, ScoreSource, UnitScores, needed

if TYPE_CHECKING:
    from torch import nn

    from edge_smsp.pool import Pool, PoolEntry

# "uniform" sums the masks; "similarity" weights each by its normalised similarity (whichever estimator ranked
# the entries). "leep" is its old name, accepted for one release.
WEIGHTINGS = ("uniform", "similarity")
WEIGHTING_ALIASES = {"leep": "similarity"}
# "masks": the entries' binary masks (as in the paper); "scores": their real-valued unit scores, as ranks.
MASK_SOURCES = ("masks", "scores")


class PoolMaskSource(ScoreSource):
    """S = sum of the masks of the entries `select` chose; subclasses choose the entries and the weighting."""

    needs = Needs(pool=True)

    def weighting(self, inputs: ScoreInputs) -> str:
        return "uniform"

    def __call__(self, inputs: ScoreInputs) -> UnitScores:
        from edge_smsp.models.prune import backbone_group_sizes
        from edge_smsp.models.zoo import backbone_spec

        selection = needed(inputs.selection, self, "the pool entries it selected")
        pool = needed(inputs.pool, self, "a pool")
        scores = score_mask(
            pool, selection.selected, weighting=self.weighting(inputs), source=inputs.config.mask_source
        )
        if set(scores) != set(backbone_group_sizes(inputs.backbone)):
            raise PoolError(
                f"pool masks do not match the unit groups of {backbone_spec(inputs.backbone).name}; "
                "the pool was built with another model layout: rebuild it"
            )
        return scores

    def entries(self, inputs: ScoreInputs) -> tuple[list[PoolEntry], tuple[str, ...]]:
        """This backbone's entries at the task's input size, those built at the requested ratio when there are
        any (their masks and weights fit it best), and a note when there are none."""
        pool = needed(inputs.pool, self, "a pool (--pool) built for this backbone")
        entries = pool_entries_for(pool, inputs.backbone, inputs.task.image_size)
        ratio = inputs.config.ratio
        at_ratio = [entry for entry in entries if ratio is not None and entry.ratio == canonical_ratio(ratio)]
        if at_ratio or ratio is None:
            return at_ratio or entries, ()
        built = ", ".join(f"{value:g}" for value in sorted({entry.ratio for entry in entries}))
        return entries, (f"no pool entries built at ratio {ratio:g} (the pool has {built}): using them all",)


def score_mask(
    pool: Pool,
    selected: Sequence[tuple[PoolEntry, float]],
    *,
    weighting: str = "uniform",
    source: str = "masks",
) -> UnitScores:
    """S = sum of the selected entries' masks (or real-valued scores), optionally weighted by similarity."""
    from edge_smsp.models.unit_scores import unit_ranks

    if WEIGHTING_ALIASES.get(weighting, weighting) == "similarity":
        similarities = np.array([similarity for _, similarity in selected], dtype=np.float64)
        # A similarity is read as a mean log-likelihood (LEEP's): exp() turns it into a likelihood, normalised.
        weights = np.exp(similarities - similarities.max())
        weights /= weights.sum()
    else:
        weights = np.ones(len(selected))
    total: UnitScores = {}
    for (entry, _), weight in zip(selected, weights, strict=True):
        scores = pool.entry_scores(entry.id) if source == "scores" else None
        if scores is not None:
            arrays = {key: unit_ranks(values) for key, values in scores.items()}
        else:
            arrays = {
                key: np.asarray(mask, dtype=np.float64) for key, mask in pool.entry_masks(entry.id).items()
            }
        for key, values in arrays.items():
            total[key] = total.get(key, 0.0) + weight * values
    return total


def pool_entries_for(pool: Pool, backbone: nn.Module, image_size: int) -> list[PoolEntry]:
    """Pool entries pruned from exactly this backbone at this input size; a clear error when there are none."""
    from edge_smsp.models.zoo import backbone_spec, weights_hash

    entries = pool.entries(backbone_hash=weights_hash(backbone), image_size=image_size)
    if entries:
        return entries
    sizes = sorted(
        {entry.backbone.image_size for entry in pool.entries(backbone_hash=weights_hash(backbone))}
    )
    if sizes:
        raise NoPoolEntriesError(
            f"pool {pool.path} holds entries for these weights at {', '.join(f'{size} px' for size in sizes)}, "
            f"not {image_size} px; use --image-size {sizes[0]} or build a pool at {image_size} px"
        )
    name = backbone_spec(backbone).name
    others = sorted({entry.backbone.name for entry in pool.entries()})
    if others:
        raise NoPoolEntriesError(
            f"pool {pool.path} holds entries for {', '.join(others)} but none for these {name} weights; "
            f"build one with `edge-smsp pool build --backbone {name}` or choose a baseline (--method magnitude)"
        )
    raise NoPoolEntriesError(
        f"pool {pool.path} is empty; build one with `edge-smsp pool build --backbone {name} ...` "
        "or choose a baseline method (--method random, magnitude or taylor)"
    )
