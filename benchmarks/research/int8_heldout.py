"""INT8 against fp32 on the held-out study's 8 tasks, per task, after the product's defaults (issue 22).

Each held-out task is adapted with `adapt`'s defaults (r = 0.5, prototype similarity + probe over a pool of the
12 pool tasks pruned from scratch @100, recipe recover, 100 iterations at batch 128), exported to fp32 ONNX,
then through `export_precision(..., "int8")` as `deploy --precision int8` does: calibrated on 32 of the task's
training images, gated on its 600 validation images at 1.0 pt. The drop is measured twice: on those validation
images (what the gate sees) and on every test image of the task's classes (3,000; not chosen on).
Results: results/int8_heldout.jsonl (resumable), summarised into benchmarks/results/int8_heldout.json.
Usage:
  OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.research.build_pools --size 32 --pool 0.5:100
  OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.research.int8_heldout --size 32 [--size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import machine_facts
from benchmarks.research import common

POOL_ITERS = 100
RATIO = 0.5
SUMMARY = Path(__file__).resolve().parents[1] / "results" / "int8_heldout.json"


def run(classes: tuple[int, ...], size: int) -> dict[str, Any]:
    from edge_smsp.adaptation import AdaptConfig, adapt
    from edge_smsp.data.tasks import load_task
    from edge_smsp.export.onnx_export import export_onnx
    from edge_smsp.export.precision import export_precision, task_images
    from edge_smsp.export.quantize import predict_logits
    from edge_smsp.models.zoo import backbone_spec
    from edge_smsp.pool import Pool
    from edge_smsp.training.recipe import ADAPT_BATCH_SIZE

    task = common.task(classes, size)
    torch.manual_seed(0)
    with Pool(common.pool_path(size, RATIO, POOL_ITERS), create=False) as pool:
        result = adapt(
            common.backbone(size), pool, task, AdaptConfig(ratio=RATIO, seed=0, batch_size=ADAPT_BATCH_SIZE)
        )
    spec = backbone_spec(common.backbone(size))
    # every test image of the classes: 1,000 per class in Fashion-MNIST's test split
    test = load_task(
        common.DATASET,
        classes,
        image_size=size,
        mean=spec.mean,
        std=spec.std,
        seed=0,
        train_per_class=2,
        val_per_class=1000,
    )
    test_x, test_y = (t.numpy() for t in test.val.batch(list(range(len(test.val)))))
    with tempfile.TemporaryDirectory(prefix="int8-heldout-") as folder:
        fp32 = Path(folder) / "model.onnx"
        metadata = {
            "labels": list(task.class_names),
            "mean": list(spec.mean),
            "std": list(spec.std),
            "backbone": common.BACKBONE,
            "ratio": RATIO,
        }
        export_onnx(result.model, fp32, image_size=size, metadata=metadata)
        started = time.perf_counter()
        shipped = export_precision(fp32, Path(folder) / "model.int8.onnx", "int8", **task_images(task))
        seconds = time.perf_counter() - started
        int8 = Path(folder) / "int8-candidate.onnx"
        # the gate may ship fp32: quantize once more, ungated, to measure INT8 on the test images either way
        export_precision(fp32, int8, "int8", **task_images(task), max_drop_pt=100.0)
        fp32_test = float((predict_logits(fp32, test_x).argmax(1) == test_y).mean())
        int8_test = float((predict_logits(int8, test_x).argmax(1) == test_y).mean())
        sizes = {"fp32_bytes": fp32.stat().st_size, "int8_bytes": int8.stat().st_size}
    return {
        "adapt_val_accuracy": result.val_accuracy,
        "fp32_val": shipped.fp32_accuracy,
        "int8_val": shipped.accuracy,
        "shipped": shipped.precision,
        "gate_reason": shipped.gate.reason,
        "fp32_test": fp32_test,
        "int8_test": int8_test,
        "test_images": len(test_y),
        "precision_seconds": round(seconds, 1),
        **sizes,
    }


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per size: the per-task rows and the mean drops, in points."""
    by_size: dict[str, Any] = {}
    for size in sorted({record["size"] for record in records}):
        rows = sorted((r for r in records if r["size"] == size), key=lambda r: r["task"])
        val_drops = [100 * (r["fp32_val"] - r["int8_val"]) for r in rows]
        test_drops = [100 * (r["fp32_test"] - r["int8_test"]) for r in rows]
        by_size[str(size)] = {
            "tasks": len(rows),
            "rows": rows,
            "mean_val_drop_pt": float(np.mean(val_drops)),
            "max_val_drop_pt": float(np.max(val_drops)),
            "mean_test_drop_pt": float(np.mean(test_drops)),
            "max_test_drop_pt": float(np.max(test_drops)),
            "int8_shipped": sum(r["shipped"] == "int8" for r in rows),
            "shipped_max_test_drop_pt": max(
                (d for d, r in zip(test_drops, rows, strict=True) if r["shipped"] == "int8"), default=None
            ),
        }
    return {
        "benchmark": "int8_heldout",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.research.int8_heldout --size 32 --size 64",
        "machine": machine_facts(),
        "ratio": RATIO,
        "pool": f"12 pool tasks pruned from scratch @{POOL_ITERS}",
        "sizes": by_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, action="append")
    args = parser.parse_args()
    common.single_thread()
    common.open_heldout()
    results = common.Results("int8_heldout")
    for size in args.size or [32]:
        for classes in common.heldout_tasks():
            key = f"px{size}|r{RATIO:g}|{'-'.join(map(str, classes))}"
            if key in results.load():
                continue
            started = time.perf_counter()
            record = run(classes, size)
            record.update({"key": key, "task": "-".join(map(str, classes)), "size": size})
            record["wall_s"] = round(time.perf_counter() - started, 1)
            results.put(record)
            common.log(
                f"{key}: fp32 {record['fp32_test']:.4f} int8 {record['int8_test']:.4f} (test), "
                f"shipped {record['shipped']} ({record['wall_s']:.0f} s)"
            )
    payload = summarise(list(results.load().values()))
    temporary = SUMMARY.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(temporary, SUMMARY)
    common.log(f"wrote {SUMMARY}")


if __name__ == "__main__":
    main()
