"""The INT8 study behind edge_smsp.export.quantize's defaults: calibration method, calibration images, nodes kept in
float; what holds EfficientNet-Lite0 INT8 back at 224 px; fp32 vs INT8 speed and size of three backbones.

Run benchmarks/research/int8_prepare.py first (the models and real images it caches under runs/int8_research/),
then `python benchmarks/research/int8_choices.py [STAGE ...]` with stages calibration, exclusions, lite0,
backbones (default: all). Results are merged into benchmarks/results/int8_choices.json. One onnxruntime thread,
batch 1, CPU.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.research.int8_timing import (  # noqa: E402
    DISABLED_OPTIMIZERS,
    SCRATCH,
    paired_p50,
    profile_by_kind,
    profile_by_op,
    session_for,
)
from edge_smsp.export.quantize import accuracy, agreement, precision_of, quantize_int8  # noqa: E402

CACHE = ROOT / "runs" / "int8_research"
RESULTS = ROOT / "benchmarks" / "results" / "int8_choices.json"


def _load(name: str) -> np.ndarray:
    return np.load(CACHE / f"{name}.npy")


def _quality(fp32: Path, int8: Path, val: np.ndarray, labels: np.ndarray | None) -> dict:
    report = agreement(fp32, int8, val)
    row = {
        "top1_agreement": round(report["top1_agreement"], 4),
        "max_abs_logit_diff": round(report["max_abs_logit_diff"], 3),
    }
    if labels is not None:
        row["accuracy"] = round(accuracy(int8, val, labels), 4)
    return row


def _calibration_sweep(tag: str, grid: list[tuple[str, int]]) -> dict:
    fp32 = CACHE / f"lite0_fmnist{tag}_64.onnx"
    calib, val, labels = _load(f"calib64{tag}"), _load(f"val64{tag}"), _load(f"val64{tag}_labels")
    reference = accuracy(fp32, val, labels)
    rows = []
    for method, count in grid:
        out = SCRATCH / f"cal{tag}_{method}_{count}.onnx"
        info = quantize_int8(fp32, out, calib[:count], method=method, max_images=None)
        row = {
            "method": method,
            "images": count,
            "seconds": info["seconds"],
            **_quality(fp32, out, val, labels),
        }
        row["accuracy_drop_pt"] = round((reference - row["accuracy"]) * 100, 2)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    classes = tag[1:].replace("-", ",") or "0,2,4"
    return {
        "model": f"efficientnet_lite0 (bundled ImageNet weights) fine-tuned 120 iterations on fashion-mnist {classes}",
        "image_size": 64,
        "val_images": int(len(val)),
        "fp32_accuracy": round(reference, 4),
        "exclude_nodes": "none",
        "rows": rows,
    }


def stage_calibration(results: dict) -> None:
    grid = [(method, count) for method in ("minmax", "entropy", "percentile") for count in (8, 32, 128, 512)]
    results["calibration"] = _calibration_sweep("", grid)


def stage_calibration_second(results: dict) -> None:
    """The same sweep on a second task (entropy, 100+ s a run and clearly behind on the first, at 128 images only)."""
    grid = [(method, count) for method in ("minmax", "percentile") for count in (8, 32, 128, 512)]
    results["calibration_second_task"] = _calibration_sweep("_5-7-9", [*grid, ("entropy", 128)])


def stage_exclusions(results: dict) -> None:
    method, count = (
        results.get("chosen", {}).get("method", "minmax"),
        results.get("chosen", {}).get("images", 128),
    )
    rows = []
    for size in (64, 224):
        fp32 = CACHE / f"lite0_fmnist_{size}.onnx"
        calib, val, labels = _load(f"calib{size}"), _load(f"val{size}"), _load(f"val{size}_labels")
        reference = accuracy(fp32, val, labels)
        paths = {"fp32": fp32}
        infos = {}
        for policy in ("none", "first-conv", "classifier", "depthwise"):
            paths[policy] = SCRATCH / f"ex_{policy}_{size}.onnx"
            infos[policy] = quantize_int8(
                fp32, paths[policy], calib[:count], method=method, exclude_nodes=policy, max_images=None
            )
        p50 = paired_p50(paths, val[0], rounds=2)
        for policy in infos:
            row = {
                "image_size": size,
                "float_nodes": policy,
                "excluded": len(infos[policy]["excluded_nodes"]),
            }
            row.update(_quality(fp32, paths[policy], val, labels))
            row["accuracy_drop_pt"] = round((reference - row["accuracy"]) * 100, 2)
            row.update(
                {
                    "p50_ms": p50[policy],
                    "fp32_p50_ms": p50["fp32"],
                    "speedup": round(p50["fp32"] / p50[policy], 2),
                }
            )
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
        results.setdefault("exclusions_fp32_accuracy", {})[str(size)] = round(reference, 4)
    results["exclusions"] = {"method": method, "images": count, "rows": rows}


LITE0_VARIANTS = {
    "default (QDQ, per-channel, uint8 activations)": {},
    "per-tensor weights": {"per_channel": False},
    "int8 activations (ActivationSymmetric)": {"activation_type": "int8"},
    "reduce_range": {"reduce_range": True},
    "depthwise convs in float": {"exclude_nodes": "depthwise"},
    "QOperator format": {"quant_format": "qoperator"},
    "QDQKeepRemovableActivations": {"extra_options": {"QDQKeepRemovableActivations": True}},
    "ForceQuantizeNoInputCheck": {"extra_options": {"ForceQuantizeNoInputCheck": True}},
    "WeightSymmetric off": {"extra_options": {"WeightSymmetric": False}},
    "no pre-processing": {"preprocess": False},
}


def stage_lite0(results: dict) -> None:
    calib, val = _load("calib224"), _load("val224")[:60]
    count = results.get("chosen", {}).get("images", 128)
    models = {
        "r0_imagenet": (
            "efficientnet_lite0, bundled ImageNet weights, 224 px, r = 0",
            "efficientnet_lite0_224",
        ),
        "width0.5_proxy": (
            "efficientnet_lite0 at channel multiplier 0.5 (random weights): a stand-in for r = 0.5, thin layers",
            "lite0_w05_224",
        ),
    }
    out = {}
    for key, (description, file) in models.items():
        fp32 = CACHE / f"{file}.onnx"
        paths, rows = {"fp32": fp32}, {}
        for name, kwargs in LITE0_VARIANTS.items():
            target = SCRATCH / f"{file}_{len(rows)}.onnx"
            try:
                info = quantize_int8(fp32, target, calib[:count], max_images=None, **kwargs)
            except Exception as error:  # a variant onnxruntime refuses is a result too
                rows[name] = {"error": str(error)[:200]}
                continue
            paths[name] = target
            rows[name] = {"size_bytes": info["size_bytes"], **_quality(fp32, target, val, None)}
        p50 = paired_p50(paths, val[0], rounds=4)
        for name in rows:
            if name in p50:
                rows[name].update({"p50_ms": p50[name], "speedup": round(p50["fp32"] / p50[name], 2)})
            print(key, name, json.dumps(rows[name]), file=sys.stderr)
        default = paths["default (QDQ, per-channel, uint8 activations)"]
        out[key] = {
            "model": description,
            "fp32_p50_ms": p50["fp32"],
            "variants": rows,
            "profile_ms_per_run_by_op": {
                "fp32": profile_by_op(fp32, val[0]),
                "int8": profile_by_op(default, val[0]),
            },
            "profile_ms_per_run_by_conv_kind": {
                "fp32": profile_by_kind(fp32, fp32, val[0]),
                "int8": profile_by_kind(fp32, default, val[0]),
                "int8, depthwise in float": profile_by_kind(fp32, paths["depthwise convs in float"], val[0]),
            },
        }
    results["lite0_224"] = {"calibration_images": count, "agreement_images": int(len(val)), **out}


def stage_backbones(results: dict) -> None:
    calib, val = _load("calib224"), _load("val224")[:60]
    count = results.get("chosen", {}).get("images", 128)
    rows = {}
    for name, file in (
        ("resnet18", "resnet18_224"),
        ("deit_small", "deit_small_224"),
        ("efficientnet_lite0", "efficientnet_lite0_224"),
    ):
        fp32 = CACHE / f"{file}.onnx"
        int8 = SCRATCH / f"{file}_int8.onnx"
        info = quantize_int8(fp32, int8, calib[:count], max_images=None)
        assert precision_of(int8) == "int8"
        p50 = paired_p50({"fp32": fp32, "int8": int8}, val[0])
        rows[name] = {
            "weights": "bundled ImageNet" if name == "efficientnet_lite0" else "random (timm, seed 0)",
            "fp32_p50_ms": p50["fp32"],
            "int8_p50_ms": p50["int8"],
            "speedup": round(p50["fp32"] / p50["int8"], 2),
            "fp32_size_mib": round(fp32.stat().st_size / 2**20, 2),
            "int8_size_mib": round(info["size_bytes"] / 2**20, 2),
            **_quality(fp32, int8, val, None),
        }
        print(name, json.dumps(rows[name]), file=sys.stderr)
    results["backbones_224_r0"] = {
        "calibration_images": count,
        "agreement_images": int(len(val)),
        "rows": rows,
    }


def choose(results: dict) -> None:
    """The calibration the study picks, over the configurations both tasks ran (their mean): the most agreement
    with fp32, then the least accuracy drop, then the smallest max |logit diff| (the worst-case error)."""
    tables = [results[key]["rows"] for key in ("calibration", "calibration_second_task") if key in results]
    configs = set.intersection(*({(r["method"], r["images"]) for r in rows} for rows in tables))
    mean = {}
    for config in configs:
        picked = [next(r for r in rows if (r["method"], r["images"]) == config) for rows in tables]
        mean[config] = {
            key: round(float(np.mean([r[key] for r in picked])), 4)
            for key in ("top1_agreement", "accuracy_drop_pt", "max_abs_logit_diff")
        }
    best = max(
        mean,
        key=lambda c: (
            mean[c]["top1_agreement"],
            -mean[c]["accuracy_drop_pt"],
            -mean[c]["max_abs_logit_diff"],
        ),
    )
    results["chosen"] = {
        "method": best[0],
        "images": best[1],
        "tasks": len(tables),
        "mean_over_tasks": {f"{m}@{n}": v for (m, n), v in sorted(mean.items())},
        "rule": " ".join(choose.__doc__.split(": ", 1)[1].split()),
    }


def _logits(path: Path, images: np.ndarray) -> np.ndarray:
    session = session_for(path)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i : i + 1]})[0] for i in range(len(images))])


def stage_float_depthwise(results: dict) -> None:
    """Depthwise convs kept in float, with and without onnxruntime's WeightBiasQuantization optimizer.

    That optimizer (level basic) quantizes the float weights of a Conv fed by a DequantizeLinear, per tensor, at
    session load: it undoes the exclusion, and per-tensor depthwise weights lose accuracy.
    """
    chosen = results.get("chosen", {})
    rows = []
    for file, calib_name, val_name in (
        ("lite0_fmnist_64", "calib64", "val64"),
        ("efficientnet_lite0_224", "calib224", "val224"),
        ("lite0_w05_224", "calib224", "val224"),
    ):
        fp32 = CACHE / f"{file}.onnx"
        calib, val = _load(calib_name), _load(val_name)[:300]
        paths = {"fp32": fp32}
        for policy in ("none", "depthwise"):
            paths[policy] = SCRATCH / f"fd_{file}_{policy}.onnx"
            quantize_int8(
                fp32,
                paths[policy],
                calib[: chosen.get("images", 128)],
                method=chosen.get("method", "minmax"),
                exclude_nodes=policy,
                max_images=None,
            )
        kept = SCRATCH / f"fd_{file}_depthwise_kept.onnx"
        kept.write_bytes(paths["depthwise"].read_bytes())
        DISABLED_OPTIMIZERS[str(kept)] = ["WeightBiasQuantization"]
        paths["depthwise, WeightBiasQuantization off"] = kept
        reference = _logits(fp32, val).argmax(1)
        p50 = paired_p50(paths, val[0], rounds=3)
        for key in paths:
            if key != "fp32":
                agree = float((_logits(paths[key], val).argmax(1) == reference).mean())
                row = {
                    "model": file,
                    "float_nodes": key,
                    "top1_agreement": round(agree, 4),
                    "p50_ms": p50[key],
                }
                row.update({"fp32_p50_ms": p50["fp32"], "speedup": round(p50["fp32"] / p50[key], 2)})
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    results["float_depthwise"] = {
        "agreement_images": 300,
        "rows": rows,
        "note": stage_float_depthwise.__doc__,
    }


def stage_profiles(results: dict) -> None:
    """Per conv kind, the least of 3 profiles (shared cores: the least is the least disturbed)."""
    calib, image = _load("calib224"), _load("val224")[0]
    out = {}
    for file in ("efficientnet_lite0_224", "lite0_w05_224"):
        fp32, int8 = CACHE / f"{file}.onnx", SCRATCH / f"pr_{file}.onnx"
        chosen = results.get("chosen", {})
        quantize_int8(
            fp32, int8, calib, method=chosen.get("method", "minmax"), max_images=chosen.get("images", 128)
        )
        out[file] = {}
        for label, path in (("fp32", fp32), ("int8", int8)):
            runs = [profile_by_kind(fp32, path, image) for _ in range(3)]
            keys = sorted({key for run in runs for key in run})
            out[file][label] = {key: min(run.get(key, 0.0) for run in runs) for key in keys}
            print(file, label, json.dumps(out[file][label]), file=sys.stderr)
    results["profiles_by_conv_kind_224"] = out


STAGES = {
    "calibration": stage_calibration,
    "calibration_second": stage_calibration_second,
    "exclusions": stage_exclusions,
    "lite0": stage_lite0,
    "backbones": stage_backbones,
    "float_depthwise": stage_float_depthwise,
    "profiles": stage_profiles,
}


def main(argv: list[str]) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "calibration" in results:
        choose(results)
    for stage in argv or list(STAGES):
        started = time.perf_counter()
        STAGES[stage](results)
        if "calibration" in results:
            choose(results)
        results.setdefault("seconds", {})[stage] = round(time.perf_counter() - started, 1)
        results["setup"] = {
            "onnxruntime": ort.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": 1,
            "batch": 1,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "note": "2 cores shared with other work: p50 is the median of alternating rounds",
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        # Merged into the file as it is now: another run of this script may have written other stages meanwhile.
        merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        merged.update(results)
        merged["seconds"] = {**merged.get("seconds", {}), **results["seconds"]}
        RESULTS.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
