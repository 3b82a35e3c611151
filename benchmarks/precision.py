"""INT8 against fp32 on this CPU, and the joint (ratio, precision) planner at three latency budgets.

    python -m benchmarks.precision --quick|--full [--stage speed|planner]

speed: resnet18, deit_small and efficientnet_lite0 at 224 px (full; quick: efficientnet_lite0 and resnet18),
each pruned at r in {0, 0.3, 0.5, 0.7} (magnitude scores), with its 3-class head recovered on a Fashion-MNIST
task (adaptive BN + imprinted head: agreement is measured on predictions that mean something), exported, and
quantized with edge_smsp.export.precision's defaults (static QDQ, per-channel, percentile, 32 of the task's
training images). Latency is the batch-1 p50 at one onnxruntime thread, fp32 and INT8 in alternation over
rounds (median of rounds; other jobs share the cores). Top-1 agreement and accuracy on the task's val images.

planner: efficientnet_lite0 at 64 px on the localhost profile, the latencies of fp32 and INT8 at every ratio of
a grid measured as above and given to the joint planner as stored measurements; at three latency budgets it
picks (ratio, precision), and the fp32-only planner its ratio; each pick is adapted (magnitude + recipe, the
deploy defaults but fewer iterations) and its accuracy measured with onnxruntime, INT8 through the gate.
Writes results/precision.<mode>.json (resumable per model and stage).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    add_mode_arguments,
    command_line,
    log,
    machine_facts,
    quiet_warnings,
    read_json,
    result_path,
    tmp_dir,
    write_json,
)
from benchmarks.formatting import mode_note, num, pyplot, save_figure, table

NAME = "precision"
CLASSES = (0, 2, 4)
TARGETS = {"resnet18": 10.0, "efficientnet_lite0": 4.0}  # combined speedup at r = 0.5 (issue 22)


@dataclasses.dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    size: int
    ratios: tuple[float, ...]
    rounds: int
    seconds: float  # timed seconds per model per round
    train_per_class: int
    val_per_class: int
    planner_size: int
    planner_ratios: tuple[float, ...]
    planner_iters: int


SETTINGS = {
    "smoke": Settings(("efficientnet_lite0",), 32, (0.0, 0.5), 1, 0.2, 16, 8, 32, (0.0, 0.5), 2),
    "quick": Settings(
        ("efficientnet_lite0", "resnet18"), 224, (0.0, 0.5), 3, 1.0, 40, 20, 64, (0.0, 0.3, 0.5, 0.7), 30
    ),
    "full": Settings(
        ("resnet18", "deit_small_patch16_224", "efficientnet_lite0"),
        224,
        (0.0, 0.3, 0.5, 0.7),
        4,
        1.5,
        60,
        40,
        64,
        (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
        60,
    ),
}


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def paired_p50(paths: Mapping[str, Path], image: np.ndarray, rounds: int, seconds: float) -> dict[str, float]:
    """Batch-1 p50 (ms) of each model at one thread, measured in alternation; the median over rounds."""
    sessions = {key: _session(path) for key, path in paths.items()}
    feeds = {key: {s.get_inputs()[0].name: image[None].astype(np.float32)} for key, s in sessions.items()}
    for key, session in sessions.items():
        for _ in range(5):
            session.run(None, feeds[key])
    per_round: dict[str, list[float]] = {key: [] for key in paths}
    for _ in range(rounds):
        for key, session in sessions.items():
            times, started = [], time.perf_counter()
            while len(times) < 10 or time.perf_counter() - started < seconds:
                begin = time.perf_counter()
                session.run(None, feeds[key])
                times.append(time.perf_counter() - begin)
            per_round[key].append(float(np.median(times)) * 1e3)
    return {key: round(statistics.median(values), 3) for key, values in per_round.items()}


def _task(size: int, settings: Settings, mean: Sequence[float], std: Sequence[float]) -> Any:
    from edge_smsp.data.tasks import load_task

    return load_task(
        "fashion-mnist",
        CLASSES,
        image_size=size,
        mean=mean,
        std=std,
        train_per_class=settings.train_per_class,
        val_per_class=settings.val_per_class,
    )


def speed_model(name: str, settings: Settings, out_dir: Path) -> dict[str, Any]:
    """fp32 and INT8 of `name` at every ratio: p50, sizes, agreement, accuracy."""
    import torch

    from edge_smsp.export.onnx_export import export_onnx
    from edge_smsp.export.precision import export_precision
    from edge_smsp.models.prune import prune, replace_classifier
    from edge_smsp.models.unit_scores import unit_l1_norms
    from edge_smsp.models.zoo import backbone_spec, default_pretrained, load_backbone
    from edge_smsp.training.recipe import recipe_for
    from edge_smsp.training.recovery import recover

    torch.manual_seed(0)
    size = settings.size
    pretrained = default_pretrained(name)
    backbone = replace_classifier(load_backbone(name, pretrained=pretrained, image_size=size), len(CLASSES))
    spec = backbone_spec(backbone)
    task = _task(size, settings, spec.mean, spec.std)
    scores = unit_l1_norms(backbone)
    train = task.train.batch(list(range(len(task.train))))[0].numpy()
    val_x, val_y = (t.numpy() for t in task.val.batch(list(range(len(task.val)))))
    rows = []
    for ratio in settings.ratios:
        log(f"precision: {name}@{size} r={ratio}")
        model, summary = prune(backbone, scores, ratio)
        recover(model, task, recipe_for("recover", "backbone"), seed=0)
        model.eval()
        fp32 = out_dir / f"{name}-{size}px-r{ratio:g}.onnx"
        export_onnx(
            model,
            fp32,
            image_size=size,
            metadata={
                "labels": list(task.class_names),
                "mean": list(spec.mean),
                "std": list(spec.std),
                "backbone": name,
                "ratio": ratio,
            },
        )
        result = export_precision(
            fp32,
            out_dir / f"{name}-{size}px-r{ratio:g}.int8.onnx",
            "int8",
            calibration_images=train,
            val_images=val_x,
            val_labels=val_y,
            max_drop_pt=100.0,  # measured here, not gated
        )
        rows.append(
            {
                "model": name,
                "ratio": ratio,
                "weights": "bundled ImageNet" if pretrained else "random init (timm, seed 0)",
                "params": summary.params_after,
                "macs": summary.macs_after,
                "fp32_path": fp32,
                "int8_path": result.path,
                "fp32_size_bytes": fp32.stat().st_size,
                "int8_size_bytes": Path(result.path).stat().st_size,
                "top1_agreement": result.agreement["top1_agreement"],
                "fp32_accuracy": result.fp32_accuracy,
                "int8_accuracy": result.accuracy,
                "quantize_seconds": result.details.get("seconds"),
            }
        )
    image = val_x[0]
    paths = {}
    for row in rows:
        paths[f"fp32@{row['ratio']}"] = Path(row["fp32_path"])
        paths[f"int8@{row['ratio']}"] = Path(row["int8_path"])
    p50 = paired_p50(paths, image, settings.rounds, settings.seconds)
    base = p50[f"fp32@{settings.ratios[0]}"]
    for row in rows:
        row["fp32_p50_ms"] = p50[f"fp32@{row['ratio']}"]
        row["int8_p50_ms"] = p50[f"int8@{row['ratio']}"]
        row["int8_speedup"] = round(row["fp32_p50_ms"] / row["int8_p50_ms"], 2)
        row["pruning_speedup"] = round(base / row["fp32_p50_ms"], 2)
        row["combined_speedup"] = round(base / row["int8_p50_ms"], 2)
        row["fp32_path"], row["int8_path"] = Path(row["fp32_path"]).name, Path(row["int8_path"]).name
    return {"image_size": size, "train_images": len(train), "val_images": len(val_x), "rows": rows}


def run(
    mode: str, results_dir: Path, workers: int | None = None, stages: Sequence[str] = ()
) -> dict[str, Any]:
    """Measure what precision.<mode>.json lacks (in this process; `workers` is not used)."""
    quiet_warnings()
    settings = SETTINGS[mode]
    path = result_path(results_dir, NAME, mode)
    payload = read_json(path) or {"benchmark": NAME, "mode": mode, "speed": {}, "planner": None}
    payload.update(command=command_line(NAME, mode), threads=1, provider="CPUExecutionProvider")
    out_dir = tmp_dir(results_dir, mode) / "precision"
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = tuple(stages) or ("speed", "planner")
    if "speed" in stages:
        for name in settings.models:
            if name in payload["speed"]:
                continue
            started = time.perf_counter()
            load_before = os.getloadavg()
            group = speed_model(name, settings, out_dir)
            group["load_average"] = [round(v, 2) for v in (*load_before, *os.getloadavg())]
            group["seconds"] = round(time.perf_counter() - started, 1)
            payload["speed"][name] = group
            payload["machine"] = machine_facts()
            write_json(path, payload)
    if "planner" in stages and payload.get("planner") is None:
        from benchmarks.precision_planner import planner_study

        started = time.perf_counter()
        payload["planner"] = planner_study(settings, out_dir, paired_p50)
        payload["planner"]["seconds"] = round(time.perf_counter() - started, 1)
        payload["machine"] = machine_facts()
        write_json(path, payload)
    return payload


def plot(payload: dict[str, Any], out: Path) -> Path | None:
    """Combined speedup (pruning x INT8) and pruning alone, against unpruned fp32, per model and ratio."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 3.8))
    for name, group in payload["speed"].items():
        ratios = [row["ratio"] for row in group["rows"]]
        line = axis.plot(
            ratios, [row["combined_speedup"] for row in group["rows"]], marker="o", label=f"{name} INT8"
        )
        axis.plot(
            ratios,
            [row["pruning_speedup"] for row in group["rows"]],
            marker="x",
            linestyle="--",
            color=line[0].get_color(),
            label=f"{name} fp32",
        )
    axis.set_xlabel("pruning ratio r")
    axis.set_ylabel("p50 speedup vs unpruned fp32 (1 thread)")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return save_figure(figure, out)


def section(found: Mapping[str, dict[str, Any]], plots: Path) -> str | None:
    """RESULTS.md: INT8 vs fp32 per model and ratio, and the joint planner's picks."""
    payload = found.get(NAME)
    if not payload or not payload.get("speed"):
        return None
    rows = []
    for name, group in payload["speed"].items():
        for row in group["rows"]:
            rows.append(
                [
                    name,
                    f"{row['ratio']:g}",
                    num(row["fp32_p50_ms"], 2),
                    num(row["int8_p50_ms"], 2),
                    f"{row['int8_speedup']:.2f}×",
                    f"{row['pruning_speedup']:.2f}×",
                    f"**{row['combined_speedup']:.2f}×**",
                    f"{row['fp32_size_bytes'] / 2**20:.1f} → {row['int8_size_bytes'] / 2**20:.1f}",
                    f"{100 * row['top1_agreement']:.1f}",
                    f"{100 * row['fp32_accuracy']:.1f} → {100 * row['int8_accuracy']:.1f}",
                ]
            )
    loads = ", ".join(f"{name} {group.get('load_average')}" for name, group in payload["speed"].items())
    targets = []
    for name, target in TARGETS.items():
        group = payload["speed"].get(name)
        hit = [row for row in (group or {}).get("rows", []) if row["ratio"] == 0.5]
        if hit:
            reached = hit[0]["combined_speedup"]
            targets.append(
                f"{name} r = 0.5: {reached:.2f}× (target ≥ {target:g}×: {'met' if reached >= target else 'MISSED'})"
            )
    first = next(iter(payload["speed"].values()))
    parts = [
        "## Precision: INT8 against fp32, and the joint (ratio, precision) planner (issue 22)",
        mode_note(payload)
        + f" `edge_smsp.export.precision` defaults (static QDQ, per-channel int8 weights, uint8 activations, "
        f"percentile calibration on 32 of the task's training images). {first['image_size']} px, batch 1, one "
        "onnxruntime thread (`OMP_NUM_THREADS=1 nice -n 5`), fp32 and INT8 timed in alternation (median of rounds). "
        "Each model's 3-class head is recovered on Fashion-MNIST 0,2,4 (adaptive BN + imprinted head) so that "
        f"agreement and accuracy ({first['val_images']} val images) mean something; resnet18 and deit_small_patch16_224 have "
        "random backbone weights (no bundled checkpoint), efficientnet_lite0 the bundled ImageNet ones. "
        f"Load averages (1/5/15 min, before and after each model): {loads}.",
        table(
            [
                "model",
                "r",
                "fp32 p50 ms",
                "INT8 p50 ms",
                "INT8 speedup",
                "pruning",
                "combined",
                "MiB fp32 → INT8",
                "agreement %",
                "accuracy % fp32 → INT8",
            ],
            rows,
        ),  # fmt: skip
    ]
    if targets:
        parts.append("Combined against unpruned fp32: " + "; ".join(targets) + ".")
    if why := _lite0_bottleneck():
        parts.append(why)
    if drops := _heldout_drops():
        parts.append(drops)
    image = plot(payload, plots / "precision_speedup.png")
    parts.append(f"![INT8 and pruning speedups]({image.parent.name}/{image.name})")
    planner = payload.get("planner")
    if planner:
        from benchmarks.precision_planner import planner_section

        parts.append(planner_section(planner))
    return "\n\n".join(parts)


def _heldout_drops() -> str | None:
    """INT8's accuracy drop per held-out task after the defaults (research/int8_heldout), at each image size."""
    from benchmarks.common import DEFAULT_RESULTS_DIR

    study = read_json(DEFAULT_RESULTS_DIR / "int8_heldout.json") or {}
    if not study.get("sizes"):
        return None
    rows, verdicts = [], []
    for size, group in study["sizes"].items():
        for row in group["rows"]:
            rows.append(
                [f"{size} px", row["task"], f"{100 * row['fp32_val']:.2f} → {100 * row['int8_val']:.2f}",
                 f"{100 * (row['fp32_test'] - row['int8_test']):+.2f}", row["shipped"],
                 f"{row['fp32_bytes'] / 1024:.0f} → {row['int8_bytes'] / 1024:.0f}"]
            )  # fmt: skip
        worst = group["shipped_max_test_drop_pt"]
        verdicts.append(
            f"{size} px: mean drop {group['mean_test_drop_pt']:+.2f} pt on the test images (largest "
            f"{group['max_test_drop_pt']:+.2f}); INT8 shipped on {group['int8_shipped']} of {group['tasks']} tasks"
            + ("" if worst is None else f", largest drop where shipped {worst:+.2f} pt (target ≤ 1.0: "
               f"{'met' if worst <= 1.0 else 'MISSED'})")
        )  # fmt: skip
    return "\n\n".join(
        [
            f"**INT8 on the held-out tasks** (`benchmarks/research/int8_heldout.py`; r = {study['ratio']:g}, "
            f"`adapt`'s defaults from a pool of {study['pool']}, then `export_precision` as `deploy --precision "
            "int8` runs it: calibrated on 32 training images, gated at 1.0 pt on the 600 val images). Drop: fp32 "
            "minus INT8 on all 3,000 test images of the task's classes (Fashion-MNIST's test split, of which the "
            "val images are 600); positive is a loss. " + "; ".join(verdicts) + ".",
            table(["size", "task", "val % fp32 → INT8 (the gate's)", "test drop pt", "shipped", "KiB"], rows),
        ]
    )


def _lite0_bottleneck() -> str | None:
    """What holds EfficientNet-Lite0 INT8 back, from the INT8 study's per-node profiles (research/int8_choices)."""
    from benchmarks.common import DEFAULT_RESULTS_DIR

    study = read_json(DEFAULT_RESULTS_DIR / "int8_choices.json") or {}
    kinds = (study.get("profiles_by_conv_kind_224") or {}).get("lite0_w05_224")
    if not kinds:
        return None
    fp32, int8 = kinds["fp32"], kinds["int8"]

    def pair(key: str) -> str:
        return f"{fp32.get(key, 0):.1f} → {int8.get(key, 0):.1f} ms"

    return (
        "What holds EfficientNet-Lite0 back (onnxruntime's profiler, Lite0 at half width as a stand-in for r = 0.5, "
        "224 px, `benchmarks/research/int8_choices.py`, fp32 → INT8 per run): pointwise convs "
        f"{pair('pointwise conv')}, but depthwise convs {pair('depthwise conv')} and the stem conv "
        f"{pair('full conv')}. onnxruntime's u8s8 QLinearConv is slower than its fp32 NCHWc kernels for depthwise "
        "and thin convs, and pruning leaves Lite0 thin, so its INT8 gain shrinks with the ratio; keeping the "
        "depthwise convs in float does not help on onnxruntime 1.32 (its WeightBiasQuantization re-quantizes "
        "them per tensor at load: slower and less accurate, same study)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.precision", description=__doc__.splitlines()[0]
    )
    add_mode_arguments(parser)
    parser.add_argument("--stage", action="append", choices=("speed", "planner"), default=[])
    args = parser.parse_args(argv)
    run(args.mode, args.results_dir, args.workers, args.stage)
    log(f"wrote {result_path(args.results_dir, NAME, args.mode)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
