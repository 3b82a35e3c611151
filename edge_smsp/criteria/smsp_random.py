"""SMSP's control: K random pool entries instead of the K most similar (does similarity matter?)."""

from __future__ import annotations

import math

import numpy as np

from edge_smsp.criteria.base import ScoreInputs, Selection
from edge_smsp.criteria.pool_masks import PoolMaskSource


class SmspRandom(PoolMaskSource):
    name = "smsp-random"

    def select(self, inputs: ScoreInputs) -> Selection:
        entries, notes = self.entries(inputs)
        generator = np.random.default_rng(inputs.config.seed)
        picks = generator.choice(len(entries), size=min(inputs.config.k, len(entries)), replace=False)
        chosen = tuple((entries[int(index)], math.nan) for index in picks)
        return Selection(ranked=chosen, selected=chosen, candidates=len(entries), notes=notes)
