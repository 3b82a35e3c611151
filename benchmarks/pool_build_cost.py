"""What building the pool costs besides training: a local Ray cluster against the in-process build (time per
task), and the pool file's bytes per entry (what they hold, and what compression would save).

    python -m benchmarks.pool_build_cost [--tasks N] [--out results/pool_build_cost.json]

Tiny tasks (2 Fashion-MNIST classes at 32 px, 2 iterations, 1 pruning round; bundled EfficientNet-Lite0 at
ratio 0.5), so that the difference is the overhead, not the training. Torch at 1 thread; the Ray cluster gets
1 CPU, so its tasks run one at a time like the in-process build's. Not in benchmarks.registry: needs Ray.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_RESULTS_DIR, log, machine_facts, quiet_warnings, tmp_dir, write_json

NAME = "pool_build_cost"
SIZE = 32


def tiny_tasks(count: int, iters: int = 2):
    """The backbone, `count` 2-class tasks and the build config."""
    from edge_smsp import adaptation
    from edge_smsp.data.tasks import load_task
    from edge_smsp.models.zoo import backbone_spec, load_backbone

    backbone = load_backbone("efficientnet_lite0", pretrained=True, image_size=SIZE)
    spec = backbone_spec(backbone)
    pairs = [(a, b) for a in range(10) for b in range(a + 1, 10)][:count]
    tasks = [
        load_task("fashion-mnist", pair, image_size=SIZE, mean=spec.mean, std=spec.std, train_per_class=24)
        for pair in pairs
    ]
    config = adaptation.AdaptConfig(ratio=0.5, iters=iters, method="scratch", scratch_rounds=1, batch_size=16)
    return backbone, tasks, config


def timed_build(build, pool_path: Path) -> dict[str, Any]:
    """Run `build(pool, on_task, on_cluster)`; seconds to the cluster, to each task's commit, in total."""
    from edge_smsp.pool import Pool

    start = time.perf_counter()
    marks: dict[str, Any] = {"cluster": None, "tasks": []}

    def on_cluster(_facts: dict[str, Any]) -> None:
        marks["cluster"] = time.perf_counter() - start

    def on_task(_outcome: Any) -> None:
        marks["tasks"].append(time.perf_counter() - start)

    with Pool(pool_path) as pool:
        build(pool, on_task, on_cluster)
    marks["total"] = time.perf_counter() - start
    return marks


def entry_bytes(pool_path: Path) -> dict[str, Any]:
    """Bytes per entry in the pool file: the whole file, masks, scores, model files, and the model files with
    zlib (level 6), the most a lossless encoding of the weights (deltas included) could plausibly approach."""
    with sqlite3.connect(pool_path) as raw:
        entries = raw.execute("SELECT count(*) FROM entries").fetchone()[0]
        masks, scores = raw.execute("SELECT sum(length(masks)), sum(length(scores)) FROM entries").fetchone()
        files = raw.execute("SELECT name, data FROM entry_files").fetchall()
        raw.execute("VACUUM")
    by_name: dict[str, list[int]] = {}
    for name, data in files:
        by_name.setdefault(name, []).append(len(data))
    model = sum(len(data) for _, data in files)
    return {
        "entries": entries,
        "file_bytes_per_entry": pool_path.stat().st_size / entries,
        "masks_bytes_per_entry": masks / entries,
        "scores_bytes_per_entry": (scores or 0) / entries,
        "model_files_bytes_per_entry": model / entries,
        "model_file_bytes_by_name": {name: statistics.mean(sizes) for name, sizes in by_name.items()},
        "model_files_zlib_bytes_per_entry": sum(len(zlib.compress(data, 6)) for _, data in files) / entries,
    }


def weight_deltas(pool_path: Path, backbone: Any, work_dir: Path) -> dict[str, Any]:
    """Entry weights stored as deltas against the backbone's kept units (the same backbone pruned with the entry's
    mask, before fine-tuning): bytes with zlib, against the weights themselves with zlib; float32, lossless."""
    import numpy as np

    from edge_smsp.models.prune import prune
    from edge_smsp.models.pruned_model import load_pruned
    from edge_smsp.pool import Pool

    plain = delta = unchanged = values = 0
    with Pool(pool_path, create=False) as pool:
        for entry in pool.entries():
            kept = {key: np.flatnonzero(mask) for key, mask in pool.entry_masks(entry.id).items()}
            tuned, _ = load_pruned(pool.materialise_model_dir(entry.id, work_dir / f"entry{entry.id}"))
            start = prune(backbone, keep_indices=kept, image_size=SIZE)[0].state_dict()
            for name, tensor in tuned.state_dict().items():
                ours = tensor.numpy().astype(np.float32)
                base = start.get(name)
                same_shape = base is not None and tuple(base.shape) == ours.shape
                diff = ours - base.numpy().astype(np.float32) if same_shape else ours  # a new head: whole
                plain += len(zlib.compress(ours.tobytes(), 6))
                delta += len(zlib.compress(diff.tobytes(), 6))
                unchanged += int(np.count_nonzero(diff == 0)) if same_shape else 0
                values += ours.size
    return {
        "weights_zlib_bytes": plain,
        "deltas_zlib_bytes": delta,
        "deltas_over_weights": delta / plain,
        "unchanged_value_fraction": unchanged / values,
    }


def run(tasks: int, out_dir: Path, iters: int = 2) -> dict[str, Any]:
    from edge_smsp.pool import build as pool_build
    from edge_smsp.pool.build.ray_build import ray_build_pool

    quiet_warnings()
    backbone, task_list, config = tiny_tasks(tasks, iters)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.sqlite*"):
        old.unlink()
    log(f"{NAME}: {tasks} tasks in process")
    here = timed_build(
        lambda pool, on_task, _: pool_build.build_pool(backbone, pool, task_list, config, on_task=on_task),
        out_dir / "in_process.sqlite",
    )
    log(f"{NAME}: {tasks} tasks on a new local Ray cluster (1 CPU)")
    on_ray = timed_build(
        lambda pool, on_task, on_cluster: ray_build_pool(
            backbone, pool, task_list, config, num_cpus=1, on_task=on_task, on_cluster=on_cluster
        ),
        out_dir / "ray.sqlite",
    )
    # Steady state: from the first task's commit to the last, per task (worker started, backbone rebuilt).
    steady = {
        name: (marks["tasks"][-1] - marks["tasks"][0]) / (tasks - 1)
        for name, marks in (("here", here), ("ray", on_ray))
    }
    return {
        "benchmark": NAME,
        "command": f".venv/bin/python -m benchmarks.{NAME} --tasks {tasks} --iters {iters}",
        "machine": machine_facts(),
        "tasks": tasks,
        "in_process": here,
        "ray": on_ray,
        "seconds_per_task_in_process": here["total"] / tasks,
        "seconds_per_task_ray_after_start": (on_ray["total"] - on_ray["cluster"]) / tasks,
        "ray_start_seconds": on_ray["cluster"],
        "ray_first_task_seconds": on_ray["tasks"][0] - on_ray["cluster"],
        "steady_seconds_per_task": steady,
        "overhead_seconds_per_task_steady": steady["ray"] - steady["here"],
        "iters": iters,
        "pool_in_process": entry_bytes(out_dir / "in_process.sqlite"),
        "weights_as_deltas": weight_deltas(out_dir / "in_process.sqlite", backbone, out_dir),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--iters", type=int, default=2, help="per task (the pool's default is 1000)")
    parser.add_argument(
        "--out", type=Path, default=None, help="default: results/pool_build_cost.i<ITERS>.json"
    )
    args = parser.parse_args(argv)
    out = args.out or DEFAULT_RESULTS_DIR / f"{NAME}.i{args.iters}.json"
    payload = run(args.tasks, tmp_dir(out.parent, "quick") / NAME, args.iters)
    write_json(out, payload)
    for key, value in payload.items():
        if key not in ("machine", "in_process", "ray"):
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
