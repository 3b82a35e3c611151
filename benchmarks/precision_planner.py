"""The joint (ratio, precision) planner at three latency budgets, against the fp32-only planner (benchmarks.precision).

efficientnet_lite0 at the planner size (64 px), this CPU at one thread: fp32 and INT8 latencies at every ratio of a
grid are measured (benchmarks.precision.speed_model) and given to edge_smsp.devices.precision_plan.plan_joint as
the device's measurements, on the localhost profile with the latency target set to each budget (p50; memory not
binding). Each pick is adapted to Fashion-MNIST 0,2,4 (magnitude + the recovery recipe + fine-tuning), exported,
and INT8 picks go through the accuracy gate; accuracy is measured with onnxruntime on the val split.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import log
from benchmarks.formatting import table

BUDGET_FRACTIONS = (0.3, 0.45, 0.7)  # of the unpruned fp32 model's measured p50


def planner_study(settings: Any, out_dir: Path, paired_p50: Callable[..., Any]) -> dict[str, Any]:
    """Measure the grid, plan at three budgets, adapt and score every pick."""
    from benchmarks.precision import speed_model
    from edge_smsp.devices.planner import Measurement, cost_at_ratio, plan, run_macs
    from edge_smsp.devices.precision_plan import plan_joint, precision_models
    from edge_smsp.devices.profiles import MIB, load_profile
    from edge_smsp.models.prune import replace_classifier
    from edge_smsp.models.zoo import load_backbone

    name, size = "efficientnet_lite0", settings.planner_size
    grid = dataclasses.replace(settings, models=(name,), size=size, ratios=settings.planner_ratios)
    measured = speed_model(name, grid, out_dir / "planner")
    shape = replace_classifier(load_backbone(name, pretrained=False, image_size=size), 3)
    profile = load_profile("localhost")
    profile = dataclasses.replace(
        profile, threads=1, latency_percentile="p50", memory_budget_bytes=4096 * MIB
    )
    rows: dict[str, list[Measurement]] = {"fp32": [], "int8": []}
    for row in measured["rows"]:
        macs = run_macs(cost_at_ratio(shape, size, row["ratio"]).macs, profile)
        for precision in rows:
            ms = row[f"{precision}_p50_ms"]
            rows[precision].append(Measurement(row["ratio"], {"p50": ms, "p90": ms, "p99": ms}, macs))
    base = next(row["fp32_p50_ms"] for row in measured["rows"] if row["ratio"] == 0.0)
    picks, scored = [], {}
    for fraction in BUDGET_FRACTIONS:
        budget = round(base * fraction, 3)
        target = dataclasses.replace(profile, latency_target_ms=budget)
        kwargs = {"input_size": size, "backbone_name": name, "ratios": settings.planner_ratios}
        joint = plan_joint(target, shape, rows, ["fp32", "int8"], **kwargs)
        fp32_models = precision_models(target, shape, size, rows, precisions=["fp32"])["fp32"]
        fp32 = plan(
            target,
            shape,
            (),
            settings.planner_ratios,
            input_size=size,
            backbone_name=name,
            memory_model=fp32_models.memory_model,
            latency_model=fp32_models.latency_model,
        )
        pick = {
            "budget_ms": budget,
            "budget_fraction": fraction,
            "joint": {
                "ratio": joint.ratio,
                "precision": joint.precision,
                "predicted_ms": round(joint.chosen.predicted_latency_ms, 3),
            },
            "fp32_only": {
                "ratio": fp32.ratio,
                "precision": "fp32",
                "predicted_ms": round(fp32.predicted_latency_ms, 3),
            },
            "candidates": [dataclasses.asdict(c) for c in joint.candidates],
        }
        for key in ("joint", "fp32_only"):
            choice = pick[key]
            ident = (choice["ratio"], choice["precision"])
            if ident not in scored:
                scored[ident] = _score(settings, size, *ident)
            choice.update(scored[ident])
            choice["measured_ms"] = next(
                row[f"{choice['shipped']}_p50_ms"]
                for row in measured["rows"]
                if row["ratio"] == choice["ratio"]
            )
        picks.append(pick)
    return {
        "model": name,
        "image_size": size,
        "grid": measured,
        "picks": picks,
        "iters": settings.planner_iters,
    }


def _score(settings: Any, size: int, ratio: float, precision: str) -> dict[str, Any]:
    """Adapt at `ratio`, export, ship at `precision` through the gate; accuracies measured with onnxruntime."""
    from edge_smsp import adaptation
    from edge_smsp.data.tasks import load_task
    from edge_smsp.export.metadata import metadata_from_pruned
    from edge_smsp.export.onnx_export import export_onnx
    from edge_smsp.export.precision import export_precision, task_images
    from edge_smsp.export.quantize import accuracy as onnx_accuracy
    from edge_smsp.models.zoo import backbone_spec, load_backbone

    log(f"precision planner: adapting at r={ratio} for {precision}")
    backbone = load_backbone("efficientnet_lite0", pretrained=True, image_size=size)
    spec = backbone_spec(backbone)
    task = load_task("fashion-mnist", (0, 2, 4), image_size=size, mean=spec.mean, std=spec.std)
    config = adaptation.AdaptConfig(ratio=ratio, iters=settings.planner_iters, method="magnitude")
    result = adaptation.adapt(backbone, None, task, config)
    images = task_images(task)
    metadata = metadata_from_pruned(result.model, {"class_names": list(task.class_names), "ratio": ratio})
    with tempfile.TemporaryDirectory(prefix="precision-planner-") as scratch:
        fp32 = export_onnx(
            result.model, Path(scratch) / "model.fp32.onnx", image_size=size, metadata=metadata
        )
        fp32_accuracy = onnx_accuracy(fp32.onnx_path, images["val_images"], images["val_labels"])
        if precision == "fp32":
            return {"shipped": "fp32", "accuracy": fp32_accuracy, "fp32_accuracy": fp32_accuracy, "gate": None,
                    "torch_val_accuracy": result.val_accuracy}  # fmt: skip
        checked = export_precision(fp32.onnx_path, Path(scratch) / "model.onnx", precision, **images)
    return {
        "shipped": checked.precision,
        "accuracy": checked.accuracy if checked.precision == precision else checked.fp32_accuracy,
        "fp32_accuracy": checked.fp32_accuracy,
        "requested_accuracy": checked.accuracy,
        "gate": checked.gate.reason,
        "torch_val_accuracy": result.val_accuracy,
    }


def planner_section(planner: dict[str, Any]) -> str:
    """RESULTS.md: the picks at each budget."""
    rows = []
    for pick in planner["picks"]:
        joint, fp32 = pick["joint"], pick["fp32_only"]
        rows.append(
            [
                f"{pick['budget_ms']:.2f} ({100 * pick['budget_fraction']:.0f} %)",
                f"r = {joint['ratio']:.2f} {joint['shipped']}",
                f"{joint['measured_ms']:.2f}",
                f"{100 * joint['accuracy']:.2f}",
                f"r = {fp32['ratio']:.2f} fp32",
                f"{fp32['measured_ms']:.2f}",
                f"{100 * fp32['accuracy']:.2f}",
                f"{100 * (joint['accuracy'] - fp32['accuracy']):+.2f}",
            ]
        )
    grid = planner["grid"]["rows"]
    curve = ", ".join(
        f"r={row['ratio']:g}: {row['fp32_p50_ms']:.2f}/{row['int8_p50_ms']:.2f}" for row in grid
    )
    return "\n\n".join(
        [
            f"**The joint planner** ({planner['model']} at {planner['image_size']} px, this CPU at one thread, "
            "p50; the measured fp32/INT8 ms per ratio given to the planner as the device's measurements: "
            f"{curve}). Each pick adapted to Fashion-MNIST 0,2,4 (magnitude + recipe, {planner['iters']} "
            "iterations at batch 128), accuracy with onnxruntime on the 600 val images; INT8 through the 1-pt gate.",
            table(
                [
                    "p50 budget ms (of unpruned fp32)",
                    "joint pick",
                    "its ms",
                    "accuracy %",
                    "fp32-only pick",
                    "its ms",
                    "accuracy %",
                    "joint − fp32-only pt",
                ],
                rows,
            ),  # fmt: skip
        ]
    )
