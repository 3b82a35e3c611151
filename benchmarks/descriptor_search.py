"""Real task descriptors and the sketch search measured on them (benchmarks.similarity_scale): every
Fashion-MNIST class subset described with the product's `task_descriptor`, the shortlist's recall of the
exhaustive top-5, and the search stage's time on synthetic sketches."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import log


def real_tasks(max_classes: int) -> list[tuple[int, ...]]:
    return [c for k in range(2, max_classes + 1) for c in itertools.combinations(range(10), k)]


def task_key(classes: Sequence[int]) -> str:
    return f"fashion-mnist:{'-'.join(map(str, classes))}"


def load(classes: Sequence[int], backbone: Any, size: int, train_per_class: int, val_per_class: int = 1):
    from edge_smsp.data.tasks import load_task
    from edge_smsp.models.zoo import backbone_spec

    spec = backbone_spec(backbone)
    return load_task(
        "fashion-mnist",
        classes,
        image_size=size,
        mean=spec.mean,
        std=spec.std,
        seed=0,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
    )


def real_descriptors(
    tasks: Sequence[tuple[int, ...]], backbone: Any, size: int, cache: Path
) -> list[np.ndarray]:
    """The [k, F] descriptor of each task, computed as `pool build` does; cached in `cache`."""
    from edge_smsp.transfer.estimators.base import DESCRIPTOR_SAMPLES, DESCRIPTOR_SEED
    from edge_smsp.transfer.task_descriptor import task_descriptor

    found = dict(np.load(cache, allow_pickle=False)) if cache.exists() else {}
    for index, classes in enumerate(tasks):
        if task_key(classes) not in found:
            task = load(classes, backbone, size, DESCRIPTOR_SAMPLES // len(classes) + 1)
            found[task_key(classes)] = task_descriptor(
                backbone, task, samples=DESCRIPTOR_SAMPLES, seed=DESCRIPTOR_SEED
            )
            if index % 100 == 99:
                log(f"similarity_scale: described {index + 1}/{len(tasks)} tasks")
                np.savez(cache, **found)
    np.savez(cache, **found)
    return [found[task_key(classes)] for classes in tasks]


def recall(descriptors: Sequence[np.ndarray], widths: Sequence[int], shortlists: Sequence[int]) -> list[dict]:
    """Each task against all others: share of the exhaustive top-5 (and top-1) inside the sketch top-M."""
    from edge_smsp.data.descriptors import (
        DEFAULT_POWER,
        SketchIndex,
        descriptor_centre,
        project,
        unit_rows,
    )

    counts = [len(d) for d in descriptors]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    stacked = np.concatenate([np.asarray(d, dtype=np.float64) for d in descriptors])
    centre = descriptor_centre(descriptors)
    exact_rows = unit_rows(stacked - centre)
    owners = [str(i) for i in range(len(descriptors))]
    rows = []
    for width in widths:
        index = SketchIndex(
            owners, counts, project(stacked, width).astype(np.float16), project(centre, width)
        )
        top5_hits = {m: 0 for m in shortlists}
        top1_hits = {m: 0 for m in shortlists}
        for query, descriptor in enumerate(descriptors):
            others = np.ones(len(descriptors), dtype=bool)
            others[query] = False
            block = exact_rows[starts[query] : starts[query] + counts[query]]
            best = np.maximum.reduceat(np.clip(block @ exact_rows.T, 0, None), starts, axis=1)
            exact = np.where(others, (best**DEFAULT_POWER).sum(axis=0), -np.inf)
            top5 = set(np.argsort(-exact, kind="stable")[:5].tolist())
            top1 = int(np.argmax(exact))
            sketched = index.scores(project(np.asarray(descriptor, dtype=np.float64), width))
            order = np.argsort(-np.where(others, sketched, -np.inf), kind="stable")
            for m in shortlists:
                chosen = set(order[:m].tolist())
                top5_hits[m] += len(top5 & chosen)
                top1_hits[m] += top1 in chosen
        for m in shortlists:
            rows.append(
                {
                    "width": width,
                    "shortlist": m,
                    "queries": len(descriptors),
                    "recall_top5": top5_hits[m] / (5 * len(descriptors)),
                    "recall_top1": top1_hits[m] / len(descriptors),
                }
            )
        log(f"similarity_scale: recall at width {width}: {rows[-len(shortlists) :]}")
    return rows


def search_only(sizes: Sequence[int], width: int, repeats: int = 20) -> list[dict]:
    """Index build and search over `size` tasks of synthetic random sketches (2-8 rows each)."""
    from edge_smsp.data.descriptors import SketchIndex

    generator = np.random.default_rng(0)
    rows = []
    for size in sizes:
        counts = generator.integers(2, 9, size)
        sketches = generator.standard_normal((int(counts.sum()), width)).astype(np.float16)
        started = time.perf_counter()
        index = SketchIndex([str(i) for i in range(size)], counts, sketches, sketches.mean(axis=0))
        built = time.perf_counter() - started
        timings = []
        for _ in range(repeats):
            query = generator.standard_normal((3, width))
            started = time.perf_counter()
            index.search(query, 32)
            timings.append(time.perf_counter() - started)
        rows.append(
            {
                "tasks": size,
                "rows": int(counts.sum()),
                "build_s": built,
                "search_s": statistics.median(timings),
            }
        )
        log(f"similarity_scale: search over {size} synthetic tasks: {rows[-1]}")
    return rows
