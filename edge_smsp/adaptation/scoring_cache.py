"""One task's similarity step, entry probe and score mask, shared by its adaptations at several ratios (a fleet
of devices planned to different ratios): what a pool source selects and scores depends on the pool entries it
draws on, not on the ratio, so adaptations that draw on the same entries reuse the selection, the probe's choice
and the summed masks. The cache counts the passes that really ran."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_smsp.criteria.pool_masks import PoolMaskSource

if TYPE_CHECKING:
    from edge_smsp.criteria import Selection

# The run is an edge_smsp.adaptation.state.AdaptRun (which holds this cache: not imported, no cycle).
AdaptRun = Any


@dataclass(frozen=True)
class Scoring:
    """What the select, probe and score stages left for one key."""

    selection: Selection
    probed: list[dict[str, Any]]
    scores: dict[str, np.ndarray]


@dataclass
class ScoringCache:
    """Selections and score masks by key (the entries drawn on and the scoring settings but the ratio); pass it
    to every adaptation of one task (`adapt(..., cache=...)`)."""

    similarity_passes: int = 0  # pool sources' `select` that ran (the similarity step)
    scoring_passes: int = 0  # score sources that ran
    hits: int = 0  # adaptations that reused a selection and its scores
    _stored: dict[Hashable, Scoring] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def key(self, run: AdaptRun) -> Hashable | None:
        """The key of a run whose source draws on pool entries only (None: not shared, e.g. Taylor trains)."""
        source = run.source
        if not isinstance(source, PoolMaskSource) or source.needs.batches or source.needs.warmup:
            return None
        entries, _ = source.entries(run.score_inputs())
        config = run.config
        settings = dataclasses.replace(config.scoring(), ratio=None)
        return (
            frozenset(entry.id for entry in entries),
            settings,
            config.probe,
            config.init_mode,
            id(run.task),
        )

    def lookup(self, key: Hashable | None) -> Scoring | None:
        with self._lock:
            found = None if key is None else self._stored.get(key)
            if found is not None:
                self.hits += 1
            return found

    def store(self, key: Hashable | None, run: AdaptRun) -> None:
        if key is None or run.selection is None or run.scores is None:
            return
        with self._lock:
            self._stored[key] = Scoring(run.selection, list(run.probed), dict(run.scores))

    def counted(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def to_dict(self) -> dict[str, int]:
        return {
            "similarity_passes": self.similarity_passes,
            "scoring_passes": self.scoring_passes,
            "scoring_reused": self.hits,
        }
