"""Mechanism check (claim 1): do similar tasks keep more of the same units?

    python -m benchmarks.mechanism --quick|--full

For every pair of pool tasks: IoU of their kept units (overall and per layer) against their similarity, the
LEEP of one task's pruned model on the other task's data (averaged over both directions). Spearman's rho with a
Mantel permutation test (pairs share tasks, so they are not independent), the IoU two random masks would have,
and, on held-out tasks, how close each method's mask comes to the from-scratch mask. Writes
results/mechanism.<mode>.json.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    add_mode_arguments,
    command_line,
    log,
    machine_facts,
    result_path,
    write_json,
)
from benchmarks.formatting import label, mode_note, num, pct, pyplot, save_figure, table
from benchmarks.specs import (
    paper_variant_name,
)
from benchmarks.stats import (
    average_ranks,
    chance_iou,
    iou,
    mean_std,
    spearman,
    unpack_mask,
)
from benchmarks.study import (
    Study,
)
from benchmarks.workers import (
    group_sizes,
    single_thread,
    study_backbone,
    study_task,
)
from edge_smsp.criteria import SCRATCH

PERMUTATIONS = 5000

NAME = "mechanism"


def leep_matrix(study: Study) -> tuple[np.ndarray, list[str]]:
    """L[i, j]: LEEP of pool entry i's pruned model on pool task j's training sample."""
    from edge_smsp.models.pruned_model import load_pruned
    from edge_smsp.pool import Pool
    from edge_smsp.training.finetune import predict_proba
    from edge_smsp.transfer.estimators.base import sample_task
    from edge_smsp.transfer.leep_score import leep

    s = study.settings
    samples = [
        sample_task(study_task(study.mode, classes), s.similarity_samples, s.seed)
        for classes in study.pool_classes
    ]
    task_ids = [study_task(study.mode, classes).task_id for classes in study.pool_classes]
    matrix = np.zeros((len(task_ids), len(task_ids)))
    with (
        Pool(study.pool_path, create=False) as pool,
        tempfile.TemporaryDirectory(prefix="mechanism-") as scratch,
    ):
        entries = {entry.task.task_key: entry for entry in pool.entries()}
        for i, task_id in enumerate(task_ids):
            model, _ = load_pruned(pool.materialise_model_dir(entries[task_id].id, f"{scratch}/{i}"))
            for j, (images, labels) in enumerate(samples):
                matrix[i, j] = leep(predict_proba(model, images), labels)
    return matrix, task_ids


def mantel_spearman(similarity: np.ndarray, overlap: np.ndarray, permutations: int, seed: int = 0) -> float:
    """One-sided p-value of Spearman's rho between the upper triangles, permuting task labels of one matrix."""
    n = len(similarity)
    upper = np.triu_indices(n, k=1)
    observed = spearman(similarity[upper], overlap[upper])
    if observed is None:
        return float("nan")
    overlap_ranks = average_ranks(overlap[upper])
    generator = np.random.default_rng(seed)
    exceed = 0
    for _ in range(permutations):
        order = generator.permutation(n)
        permuted = similarity[np.ix_(order, order)][upper]
        rho = np.corrcoef(average_ranks(permuted), overlap_ranks)[0, 1]
        exceed += rho >= observed - 1e-12
    return (exceed + 1) / (permutations + 1)


def heldout_overlap(study: Study, sizes: dict[str, int]) -> list[dict[str, Any]]:
    """On held-out tasks: IoU of each one-shot method's mask with the from-scratch mask of the same task."""
    study.cache.reload()
    runs = [r for r in study.cache.runs.values() if r.get("phase") == "heldout"]
    scratch = {(r["task_id"], r["ratio"]): r for r in runs if r["method"] == SCRATCH}
    values: dict[tuple[str, float], list[float]] = defaultdict(list)
    for record in runs:
        reference = scratch.get((record["task_id"], record["ratio"]))
        if (
            record["method"] == SCRATCH
            or reference is None
            or record["iters"] != study.settings.oneshot_iters
        ):
            continue
        overall, _ = iou(unpack_mask(record["mask"], sizes), unpack_mask(reference["mask"], sizes))
        values[(record["variant"], record["ratio"])].append(overall)
    return [
        {"variant": variant, "ratio": ratio, "iou_with_scratch": mean_std(ious)}
        for (variant, ratio), ious in sorted(values.items(), key=lambda item: (item[0][1], item[0][0]))
    ]


def run(mode: str, results_dir: Path, workers: int | None = None) -> dict[str, Any]:
    """Compute the LEEP matrix and mask overlaps of the pool, write mechanism.<mode>.json."""
    from edge_smsp.models.prune import keep_count
    from edge_smsp.models.unit_scores import unit_l1_norms

    study = Study(mode, results_dir, workers)
    pool_records = study.ensure_pool()
    sizes = group_sizes(mode)
    with single_thread():
        log("mechanism: LEEP of every pool model on every pool task")
        matrix, task_ids = leep_matrix(study)
        backbone = study_backbone(mode)
        magnitude = unit_l1_norms(backbone)
    masks = [unpack_mask(record["mask"], sizes) for record in pool_records]
    classes = [set(record["classes"]) for record in pool_records]
    n = len(masks)
    symmetric = (matrix + matrix.T) / 2
    overlap = np.eye(n)
    pairs = []
    for i, j in itertools.combinations(range(n), 2):
        overall, per_group = iou(masks[i], masks[j])
        overlap[i, j] = overlap[j, i] = overall
        pairs.append(
            {
                "a": task_ids[i],
                "b": task_ids[j],
                "leep_a_on_b": matrix[i, j],
                "leep_b_on_a": matrix[j, i],
                "leep": symmetric[i, j],
                "shared_classes": len(classes[i] & classes[j]),
                "iou": overall,
                "iou_per_group": per_group,
            }
        )
    # Two random masks of the same per-group sizes, and the backbone's own L1 ranking at the pool ratio.
    counts = {key: int(masks[0][key].sum()) for key in sizes}
    layouts = {key: kind for key, kind in _kinds(backbone).items()}
    magnitude_mask = {}
    for key, size in sizes.items():
        keep = keep_count(size, study.settings.pool_ratio, layouts[key])
        chosen = np.argsort(-magnitude[key], kind="stable")[:keep]
        magnitude_mask[key] = np.zeros(size, dtype=bool)
        magnitude_mask[key][chosen] = True
    with_magnitude = [iou(mask, magnitude_mask)[0] for mask in masks]
    leeps = [pair["leep"] for pair in pairs]
    ious = [pair["iou"] for pair in pairs]
    per_group_rho = {
        key: spearman(leeps, [pair["iou_per_group"][key] for pair in pairs])
        for key in sizes
        if sizes[key] > 1
    }
    by_shared: dict[int, list[float]] = defaultdict(list)
    for pair in pairs:
        by_shared[pair["shared_classes"]].append(pair["iou"])
    log(f"mechanism: Mantel permutation test ({PERMUTATIONS} permutations)")
    payload = {
        "benchmark": "mechanism",
        "mode": mode,
        "command": command_line(NAME, mode),
        "machine": machine_facts(),
        "pool_ratio": study.settings.pool_ratio,
        "tasks": task_ids,
        "leep_matrix": matrix.round(6).tolist(),
        "pairs": len(pairs),
        "spearman_iou_vs_leep": spearman(leeps, ious),
        "mantel_p_one_sided": mantel_spearman(symmetric, overlap, PERMUTATIONS) if n >= 4 else None,
        "spearman_iou_vs_shared_classes": spearman([p["shared_classes"] for p in pairs], ious),
        "iou": mean_std(ious),
        "iou_chance": chance_iou(counts, sizes),
        "iou_by_shared_classes": {str(k): mean_std(v) for k, v in sorted(by_shared.items())},
        "iou_with_backbone_magnitude_mask": mean_std(with_magnitude),
        "spearman_per_group": per_group_rho,
        "iou_per_group_mean": {
            key: float(np.mean([p["iou_per_group"][key] for p in pairs])) for key in sizes
        },
        "group_sizes": sizes,
        "heldout_iou_with_scratch": heldout_overlap(study, sizes),
        "pair_rows": [{k: v for k, v in pair.items() if k != "iou_per_group"} for pair in pairs],
    }
    path = write_json(result_path(results_dir, NAME, mode), payload)
    log(f"mechanism: wrote {path}")
    return payload


def _kinds(model: Any) -> dict[str, str]:
    from edge_smsp.models.units import unit_groups

    return {group.key: group.kind for group in unit_groups(model)}


def claim(mechanism: dict[str, Any] | None) -> tuple[str, str]:
    """Similar tasks share more kept units."""
    if not mechanism or mechanism.get("spearman_iou_vs_leep") is None:
        return "not measured", "the mechanism benchmark has not run"
    rho, p = mechanism["spearman_iou_vs_leep"], mechanism.get("mantel_p_one_sided")
    if rho > 0 and p is not None and p < 0.05:
        verdict = "holds"
    elif rho > 0:
        verdict = "mixed (positive but not significant)"
    else:
        verdict = "does not hold here"
    iou, chance = mechanism["iou"], mechanism["iou_chance"]
    text = (
        f"Spearman ρ(IoU, LEEP) = {rho:.2f} over {mechanism['pairs']} pool-task pairs (Mantel one-sided p = "
        f"{num(p, 3)}); IoU of kept units {iou['min']:.2f}-{iou['max']:.2f} (mean {iou['mean']:.2f}) vs "
        f"{chance:.2f} for random masks of the same size"
    )
    if iou["min"] > chance and verdict != "holds":
        text += (
            ". Every pair overlaps far above chance, but the overlap barely depends on how similar the tasks "
            "are: the kept units are mostly a task-independent core"
        )
    return verdict, text


def plot(mechanism: dict[str, Any], out: Path) -> Path:
    """IoU of kept units vs LEEP for every pool-task pair, coloured by shared classes."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.6, 4.2))
    rows = mechanism["pair_rows"]
    scatter = axis.scatter(
        [r["leep"] for r in rows],
        [r["iou"] for r in rows],
        c=[r["shared_classes"] for r in rows],
        cmap="viridis",
    )
    figure.colorbar(scatter, ax=axis, label="shared classes")
    axis.axhline(mechanism["iou_chance"], color="grey", linestyle="--", label="random masks")
    axis.set_xlabel("task similarity: LEEP (mean of both directions)")
    axis.set_ylabel("IoU of kept units")
    axis.set_title(f"Spearman ρ = {num(mechanism['spearman_iou_vs_leep'])}")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return save_figure(figure, out)


def section(found: Mapping[str, dict[str, Any]], plots: Path) -> str | None:
    """IoU vs LEEP."""
    mechanism = found.get(NAME)
    if not mechanism:
        return None
    image = plot(mechanism, plots / "mechanism_iou_vs_leep.png")
    shared = mechanism["iou_by_shared_classes"]
    groups = sorted(mechanism["spearman_per_group"].items(), key=lambda item: -(item[1] or -9))
    positive = sum(1 for _, rho in groups if rho is not None and rho > 0)
    heldout = mechanism.get("heldout_iou_with_scratch") or []
    lines = [
        "## 2. Mechanism: do similar tasks keep the same units? (claim 1)",
        mode_note(mechanism),
        table(
            ["quantity", "value"],
            [
                ["pool-task pairs", mechanism["pairs"]],
                ["Spearman ρ(IoU, LEEP)", num(mechanism["spearman_iou_vs_leep"])],
                ["Mantel permutation p (one-sided)", num(mechanism["mantel_p_one_sided"], 4)],
                ["Spearman ρ(IoU, shared classes)", num(mechanism["spearman_iou_vs_shared_classes"])],
                ["mean IoU of kept units", pct(mechanism["iou"]).replace(" ±", " % ±") + " %"],
                ["IoU of two random masks (same sizes)", f"{100 * mechanism['iou_chance']:.1f} %"],
                [
                    "IoU with the backbone's L1-magnitude mask",
                    pct(mechanism["iou_with_backbone_magnitude_mask"]) + " %",
                ],
                ["layers with ρ > 0", f"{positive} / {len(groups)}"],
            ],
        ),
        "Mean IoU by number of shared classes: "
        + ", ".join(f"{k}: {100 * v['mean']:.1f} % (n={v['n']})" for k, v in shared.items()),
        f"![IoU vs LEEP](plots/{image.name})",
    ]
    if heldout:
        lines.append(
            "On held-out tasks, overlap (IoU) of each method's kept units with the from-scratch mask of the same task:"
        )
        lines.append(
            table(
                ["method", "ratio", "IoU with scratch mask %"],
                [
                    [label(r["variant"], paper_variant_name()), f"{r['ratio']:g}", pct(r["iou_with_scratch"])]
                    for r in heldout
                ],
            )
        )
    return "\n\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.mechanism", description=__doc__.splitlines()[0]
    )
    add_mode_arguments(parser)
    args = parser.parse_args(argv)
    payload = run(args.mode, args.results_dir, args.workers)
    rho, p = payload["spearman_iou_vs_leep"], payload["mantel_p_one_sided"]
    print(
        f"{payload['pairs']} pairs: IoU {payload['iou']['mean']:.3f} (chance {payload['iou_chance']:.3f}); "
        f"Spearman IoU vs LEEP {rho if rho is None else round(rho, 3)} (Mantel p {p})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
