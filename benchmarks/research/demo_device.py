"""The demo's task adapted on the device at 64 px (issue 21): `scripts/demo.sh`'s pool and task (Fashion-MNIST
0,2,4, 200 training and 100 validation images per class, 64 px), deployed with the bundled `localhost` profile
twice: adapted on the host (the demo) and with `--device-data` (the light tier, then the torch tier), the images
written as the ImageFolder a device would hold. Results: benchmarks/results/demo_device.json. Usage:
  bash scripts/demo.sh   # once: builds runs/demo/pool.sqlite
  OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.research.demo_device
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import REPO_ROOT, machine_facts
from benchmarks.research.light_tier import write_image_folder

CLASSES = (0, 2, 4)
SIZE = 64
POOL = REPO_ROOT / "runs" / "demo" / "pool.sqlite"
SUMMARY = REPO_ROOT / "benchmarks" / "results" / "demo_device.json"
COMMON = ["deploy", "--pool", str(POOL), "--bench-runs", "20", "--json"]
# torch alone needs ~2.2 GiB: the bundled profile's 1 GiB adaptation budget refuses the torch tier, as it should
# on a small board; the torch row runs on a copy of that profile with room for it.
TORCH_ADAPT_BUDGET = "4GiB"


def deploy(argv: list[str], profile: str = "localhost") -> dict[str, Any]:
    from edge_smsp.cli import main

    printed, errors = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        code = main([*COMMON, "--profile", profile, *argv])
    if code != 0:
        raise SystemExit(
            errors.getvalue().strip().splitlines()[-1] if errors.getvalue().strip() else f"exit {code}"
        )
    return {**json.loads(printed.getvalue()), "wall_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    from edge_smsp.data.tasks import load_task
    from edge_smsp.devices.profiles import resolve_profile_path
    from edge_smsp.models.zoo import backbone_spec, load_backbone

    if not POOL.exists():
        raise SystemExit(f"{POOL} is missing: run scripts/demo.sh once")
    spec = backbone_spec(load_backbone("efficientnet_lite0", pretrained=True, image_size=SIZE))
    task = load_task(
        "fashion-mnist", CLASSES, image_size=SIZE, mean=spec.mean, std=spec.std, train_per_class=200,
        val_per_class=100,
    )  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="demo-device-") as scratch:
        root = Path(scratch)
        data = write_image_folder(task, root / "data")
        host = deploy(["--classes", "0,2,4", "--iters", "100", "--train-per-class", "200",
                       "--val-per-class", "100", "--out", str(root / "host")])  # fmt: skip
        rows.append({"where": "host", "accuracy": host["val_accuracy"], "ratio": host["ratio"],
                     "wall_s": host["wall_s"], "seconds": host["seconds"]})  # fmt: skip
        roomy = root / "localhost-torch.yaml"
        bundled = yaml.safe_load(resolve_profile_path("localhost").read_text())
        roomy.write_text(yaml.safe_dump({**bundled, "adapt_memory_budget": TORCH_ADAPT_BUDGET}))
        for tier in ("light", "torch"):
            try:
                device = deploy(["--device-data", str(data), "--device-train", tier, "--ratio",
                                 str(host["ratio"]), "--out", str(root / tier)],
                                profile="localhost" if tier == "light" else str(roomy))  # fmt: skip
            except SystemExit as error:
                rows.append({"where": f"device, {tier} tier", "error": str(error)})
                continue
            rows.append(
                {
                    "where": f"device, {device.get('device_train')} tier",
                    "accuracy": device["accuracy_onnxruntime"],
                    "accuracy_imprinted": (device.get("device_adapt") or {}).get("accuracy_imprinted"),
                    "ratio": device["ratio"],
                    "wall_s": device["wall_s"],
                    "device_seconds": device["device_seconds"],
                    "bytes_from_device": device["bytes_from_device"],
                    "bytes_to_device": device["bytes_to_device"],
                    "adapt_peak_rss_mib": device["adapt_peak_rss_mib"],
                    "adapt_predicted_peak_mib": (device.get("adapt_memory") or {}).get("peak_mib"),
                    "note": device.get("device_train_note")
                    or ("" if tier == "light" else f"adapt_memory_budget {TORCH_ADAPT_BUDGET}"),
                }
            )
    payload = {
        "benchmark": "demo_device",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.research.demo_device",
        "machine": machine_facts(),
        "task": "fashion-mnist 0,2,4",
        "image_size": SIZE,
        "rows": rows,
    }
    temporary = SUMMARY.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(temporary, SUMMARY)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
