"""The worker side of the study: one adaptation or pool entry per call, in a single-thread process."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    quiet_warnings,
)
from benchmarks.settings import (
    BACKBONE,
    DATASET,
    SETTINGS,
)
from benchmarks.specs import RunSpec
from benchmarks.stats import pack_mask
from edge_smsp.criteria import SCRATCH, needs_pool

_STATE: dict[str, Any] = {}


def worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    quiet_warnings()


class single_thread:
    """In-process runs (one worker): one thread for their duration, the caller's setting restored after."""

    def __enter__(self) -> None:
        import torch

        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)
        quiet_warnings()

    def __exit__(self, *exc_info: object) -> None:
        import torch

        torch.set_num_threads(self.threads)


def study_backbone(mode: str):
    """The study's backbone (bundled ImageNet EfficientNet-Lite0 at the study's image size), loaded once."""
    from edge_smsp.models.zoo import load_backbone

    key = ("backbone", mode)
    if key not in _STATE:
        _STATE[key] = load_backbone(BACKBONE, pretrained=True, image_size=SETTINGS[mode].image_size)
    return _STATE[key]


def study_task(mode: str, classes: Sequence[int]):
    """A study task (same images for every method and run), loaded once per process."""
    from edge_smsp.data.tasks import load_task
    from edge_smsp.models.zoo import backbone_spec

    key = ("task", mode, tuple(classes))
    if key not in _STATE:
        s = SETTINGS[mode]
        spec = backbone_spec(study_backbone(mode))
        _STATE[key] = load_task(
            DATASET,
            tuple(classes),
            image_size=s.image_size,
            mean=spec.mean,
            std=spec.std,
            seed=s.seed,
            train_per_class=s.train_per_class,
            val_per_class=s.val_per_class,
        )
    return _STATE[key]


def group_sizes(mode: str) -> dict[str, int]:
    """Unit group sizes of the study backbone, in the order masks are packed."""
    from edge_smsp.models.prune import backbone_group_sizes

    return backbone_group_sizes(study_backbone(mode))


def build_pool_entry(mode: str, pool_path: str, classes: tuple[int, ...], seed: int) -> dict[str, Any]:
    import torch

    from edge_smsp import adaptation
    from edge_smsp.pool import Pool
    from edge_smsp.pool import build as pool_build

    s = SETTINGS[mode]
    torch.manual_seed(seed)  # the new head's initial weights come from the global RNG
    backbone = study_backbone(mode)
    task = study_task(mode, classes)
    config = adaptation.AdaptConfig(
        ratio=s.pool_ratio,
        iters=s.pool_iters,
        method=SCRATCH,
        scratch_rounds=s.scratch_rounds,
        batch_size=s.batch_size,
        seed=seed,
    )
    reports: list[dict[str, Any]] = []
    with Pool(pool_path) as pool:
        pool_build.build_pool(
            backbone, pool, [task], config, on_task=lambda outcome: reports.append(outcome.report or {})
        )
        entry = next(e for e in pool.entries() if e.task.task_key == task.task_id and e.ratio == s.pool_ratio)
        masks = pool.entry_masks(entry.id)
    report = reports[0] if reports else {}
    kept = {key: np.flatnonzero(mask).tolist() for key, mask in masks.items()}
    return {
        "phase": "pool",
        "task_id": task.task_id,
        "classes": list(classes),
        "class_names": list(task.class_names),
        "entry_id": entry.id,
        "val_accuracy": entry.val_accuracy,
        "iters": entry.iters,
        "ratio": entry.ratio,
        "params_after": report.get("params_after"),
        "macs_after": report.get("macs_after"),
        "seconds": report.get("seconds", {"total": float("nan")}),
        "mask": pack_mask(kept, group_sizes(mode)),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def run_spec(mode: str, pool_path: str, spec_fields: dict[str, Any], tmp: str) -> dict[str, Any]:
    import torch

    from edge_smsp import adaptation
    from edge_smsp.pool import Pool

    spec = RunSpec(**{**spec_fields, "classes": tuple(spec_fields["classes"])})
    s = SETTINGS[mode]
    # adapt() draws the new head's initial weights from the global RNG: seed it, so that every method on a
    # task starts from the same head whatever ran before in this worker (a paired comparison, reproducible).
    torch.manual_seed(spec.seed)
    backbone = study_backbone(mode)
    task = study_task(mode, spec.classes)
    config = adaptation.AdaptConfig(
        ratio=spec.ratio,
        iters=spec.iters,
        method=spec.method,
        top_k=spec.top_k,
        weighting=spec.weighting,
        mask_source=spec.mask_source,
        batch_size=s.batch_size,
        seed=spec.seed,
        similarity_samples=s.similarity_samples,
        scratch_rounds=s.scratch_rounds,
        # This study checks the paper's claims with the paper's method (LEEP, summed masks, backbone weights,
        # no recovery), as its cached runs were made; the product's defaults are the held-out study's
        # (benchmarks.heldout).
        similarity="leep",
        shortlist=None,
        init="backbone",
        recipe="plain",
    )
    if needs_pool(spec.method):
        with Pool(pool_path, create=False) as pool:
            result = adaptation.adapt(backbone, pool, task, config)
    else:
        result = adaptation.adapt(backbone, None, task, config)
    digest = hashlib.sha256()
    for key in sorted(result.unit_scores):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(result.unit_scores[key], dtype=np.float64).tobytes())
    record = result.to_dict()
    record.pop("groups", None)
    record.update(
        {
            "key": spec.key,
            "phase": spec.phase,
            "variant": spec.variant,
            "seed": spec.seed,
            "top_k": spec.top_k,
            "weighting": spec.weighting,
            "mask_source": spec.mask_source,
            "class_names": list(task.class_names),
            "mask": pack_mask(result.summary.kept_indices, group_sizes(mode)),
            "score_digest": digest.hexdigest()[:16],
            "threads": torch.get_num_threads(),
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    if spec.export:
        record["export"] = _export(result, Path(tmp) / "onnx", spec.key)
        record["seconds"]["export"] = record["export"]["seconds"]
    return record


def _export(result: Any, out_dir: Path, key: str) -> dict[str, Any]:
    from edge_smsp.export.onnx_export import export_onnx
    from edge_smsp.models.zoo import backbone_spec

    out_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:12]
    spec = backbone_spec(result.model)
    exported = export_onnx(
        result.model,
        out_dir / f"{name}.onnx",
        image_size=result.summary.image_size,
        metadata={
            "labels": list(result.task.class_names),
            "mean": list(result.task.mean),
            "std": list(result.task.std),
            "backbone": spec.name,
            "ratio": result.ratio,
            "task": result.task.task_id,
        },
    )
    return {
        "seconds": round(exported.seconds, 3),
        "size_bytes": exported.size_bytes,
        "max_abs_diff": exported.max_abs_diff,
        "onnx": str(exported.onnx_path),
    }
