"""On-device adaptation on the held-out study's tasks (issue 21): the product's `deploy --device-data` with the
light tier (numpy + onnxruntime) or the torch tier (`--tier`) against host adaptation (`smsp (default)` in benchmarks.research.heldout, the
same tasks, seeds and pools).

Each held-out task's images (already resized, uint8) are written as an ImageFolder of PGM files, the folder a
device would hold; `edge-smsp deploy --device-data` then runs through the local transport with a profile of this
machine whose memory budget leaves the plan free, at the given ratio. Results: results/light_tier.jsonl in the
research folder, resumable. Usage:
  .venv/bin/python -m benchmarks.research.light_tier --ratio 0.5 --seeds 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.research import common

PROFILE = {
    "name": "research-light-tier",
    "memory_budget": "4GiB",
    "latency_target_ms": 1000,
    "latency_percentile": "p90",
    "input_size": 32,
    "threads": 1,
    "providers": ["CPUExecutionProvider"],
    "throughput_gmacs": 20,
    "connection": {"transport": "local"},
}


def write_image_folder(task: Any, root: Path) -> Path:
    """The task's train and val images as DIR/{train,val}/<class>/<n>.pgm (8-bit grey, as a camera would)."""
    for part, dataset in (("train", task.train), ("val", task.val)):
        images, labels = dataset.images.numpy(), dataset.labels.numpy()
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / part / f"{int(label)}-{task.class_names[int(label)].replace('/', '-')}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.ascontiguousarray(image[0], dtype=np.uint8)
            header = f"P5\n{pixels.shape[1]} {pixels.shape[0]}\n255\n".encode()
            (folder / f"{index}.pgm").write_bytes(header + pixels.tobytes())
    return root


def run(
    classes: tuple[int, ...],
    size: int,
    ratio: float,
    seed: int,
    blocks: int | None,
    tier: str,
    pool_iters: int = 1000,
) -> dict[str, Any]:
    from edge_smsp.cli import main

    task = common.task(classes, size) if len(classes) == 3 else ten_class_task(size)
    with tempfile.TemporaryDirectory(prefix="light-tier-") as scratch:
        root = Path(scratch)
        data = write_image_folder(task, root / "data")
        profile = root / "profile.yaml"
        profile.write_text(yaml.safe_dump({**PROFILE, "input_size": size}))
        out = root / "out"
        argv = [
            "deploy", "--profile", str(profile), "--pool", str(common.pool_path(size, ratio, pool_iters)),
            "--device-data", str(data), "--ratio", str(ratio), "--seed", str(seed), "--image-size", str(size),
            "--bench-runs", "5", "--bench-seconds", "0", "--out", str(out), "--device-train", tier, "--json",
        ]  # fmt: skip
        if blocks is not None:
            argv += ["--trainable-blocks", str(blocks)]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(argv)
        if code != 0:
            raise SystemExit(f"deploy --device-data failed ({code}) for {classes} seed {seed}")
        report = json.loads(printed.getvalue())
    adapt = report.get("device_adapt") or {}
    return {
        "val_accuracy": report["accuracy_onnxruntime"],
        "accuracy_numpy": report["accuracy_numpy"],
        "agreement": report.get("agreement"),
        "trainable_blocks": report.get("trainable_blocks"),
        "chosen": [s["task_id"] for s in report["similar_tasks"] if s["selected"]],
        "bytes_from_device": report["bytes_from_device"],
        "bytes_to_device": report["bytes_to_device"],
        "device_seconds": report["device_seconds"],
        "device_bytes_from": report.get("device_bytes_from"),
        "adapt_peak_rss_mib": report["adapt_peak_rss_mib"],
        "adapt_predicted_peak_mib": (report.get("adapt_memory") or {}).get("peak_mib"),
        "accuracy_imprinted": adapt.get("accuracy_imprinted"),
        "device_train": report.get("device_train"),
    }


def ten_class_task(size: int) -> Any:
    """Every Fashion-MNIST class (a 10-class task: the issue's bound on the similarity step's bytes)."""
    from edge_smsp.data.tasks import load_task
    from edge_smsp.models.zoo import backbone_spec

    spec = backbone_spec(common.backbone(size))
    return load_task(
        common.DATASET, tuple(range(10)), image_size=size, mean=spec.mean, std=spec.std, seed=0,
        train_per_class=common.TRAIN_PER_CLASS, val_per_class=common.VAL_PER_CLASS,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--ratio", type=float, action="append")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--blocks", type=int, default=None, help="--trainable-blocks (default: the product's)"
    )
    parser.add_argument("--tier", choices=("light", "torch"), default="light", help="--device-train")
    parser.add_argument(
        "--ten-class", action="store_true", help="one run on all 10 classes instead of the held-out tasks"
    )
    parser.add_argument("--pool-iters", type=int, default=1000, help="the research pools' budget (@1000)")
    args = parser.parse_args()
    common.single_thread()
    common.open_heldout()
    results = common.Results("light_tier" if args.pool_iters == 1000 else f"light_tier_pool{args.pool_iters}")
    for ratio in args.ratio or [0.5]:
        for seed in range(args.seeds):
            for classes in [tuple(range(10))] if args.ten_class else common.heldout_tasks():
                name = f"{args.tier} tier" + (f", K{args.blocks}" if args.blocks is not None else "")
                pool = "" if args.pool_iters == 1000 else f"|pool{args.pool_iters}"
                key = f"px{args.size}|{name}|r{ratio:g}{pool}|{'-'.join(map(str, classes))}|s{seed}"
                if key in results.load():
                    continue
                started = time.perf_counter()
                record = run(classes, args.size, ratio, seed, args.blocks, args.tier, args.pool_iters)
                record.update(
                    {
                        "key": key,
                        "variant": name,
                        "task": "-".join(map(str, classes)),
                        "size": args.size,
                        "ratio": ratio,
                        "seed": seed,
                        "pool_iters": args.pool_iters,
                        "wall_s": round(time.perf_counter() - started, 1),
                    }
                )
                results.put(record)
                common.log(f"{key}: {record['val_accuracy']:.4f} ({record['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
