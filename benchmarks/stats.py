"""Statistics over runs (means, paired differences, ranks, permutation tests) and packed unit masks."""

from __future__ import annotations

import base64
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def mean_std(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation, min, max and count."""
    array = np.asarray([value for value in values if value is not None and math.isfinite(value)], dtype=float)
    if array.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {
        "mean": float(array.mean()),
        "std": std,
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(array.size),
    }


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties get the average of their positions (as Spearman's rho needs)."""
    array = np.asarray(values, dtype=float)
    order = np.argsort(array, kind="stable")
    ranks = np.empty(len(array), dtype=float)
    sorted_values = array[order]
    start = 0
    while start < len(array):
        end = start
        while end + 1 < len(array) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson on average ranks); None when either side is constant."""
    if len(x) != len(y) or len(x) < 3:
        return None
    rank_x, rank_y = average_ranks(x), average_ranks(y)
    if rank_x.std() == 0 or rank_y.std() == 0:
        return None
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


# --- masks ------------------------------------------------------------------------------------------------------


def pack_mask(kept: Mapping[str, Sequence[int]], sizes: Mapping[str, int]) -> str:
    """Kept unit indices of every group (in `sizes` order) as one base64 bit string."""
    bits = []
    for key, size in sizes.items():
        row = np.zeros(size, dtype=bool)
        row[list(kept.get(key, ()))] = True
        bits.append(row)
    return base64.b64encode(np.packbits(np.concatenate(bits)).tobytes()).decode("ascii")


def unpack_mask(packed: str, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Inverse of pack_mask."""
    total = sum(sizes.values())
    bits = np.unpackbits(np.frombuffer(base64.b64decode(packed), dtype=np.uint8))[:total].astype(bool)
    masks, start = {}, 0
    for key, size in sizes.items():
        masks[key] = bits[start : start + size]
        start += size
    return masks


def iou(first: Mapping[str, np.ndarray], second: Mapping[str, np.ndarray]) -> tuple[float, dict[str, float]]:
    """Overall IoU of kept units (all groups pooled) and the IoU of each group."""
    per_group, inter_total, union_total = {}, 0, 0
    for key, mask in first.items():
        a, b = np.asarray(mask, dtype=bool), np.asarray(second[key], dtype=bool)
        inter, union = int(np.sum(a & b)), int(np.sum(a | b))
        per_group[key] = inter / union if union else 1.0
        inter_total, union_total = inter_total + inter, union_total + union
    return (inter_total / union_total if union_total else 1.0), per_group


def chance_iou(counts: Mapping[str, int], sizes: Mapping[str, int]) -> float:
    """Expected overall IoU of two independent random masks keeping `counts` of `sizes` units per group."""
    inter = sum(counts[key] ** 2 / sizes[key] for key in sizes)
    kept = sum(counts[key] for key in sizes)
    return inter / (2 * kept - inter)


# --- runs ------------------------------------------------------------------------------------------------------


def summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std of val accuracy and wall time per (variant, ratio, iters), over tasks."""
    groups: dict[tuple[str, float, int], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["variant"], record["ratio"], record["iters"])].append(record)
    rows = []
    for (variant, ratio, iters), members in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        rows.append(
            {
                "variant": variant,
                "method": members[0]["method"],
                "ratio": ratio,
                "iters": iters,
                "accuracy": mean_std([m["val_accuracy"] for m in members]),
                "seconds_total": mean_std([m["seconds"]["total"] for m in members]),
                "seconds": {
                    part: mean_std([m["seconds"].get(part, 0.0) for m in members])["mean"]
                    for part in ("similarity", "pruning", "finetuning", "total")
                },
                "params_after": mean_std([m["params_after"] for m in members])["mean"],
                "params_before": members[0]["params_before"],
                "macs_after": mean_std([m["macs_after"] for m in members])["mean"],
                "macs_before": members[0]["macs_before"],
                "per_task": {m["task_id"]: m["val_accuracy"] for m in members},
            }
        )
    return rows


def paired(records: Sequence[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Per-task differences reference - other, at the same ratio (every method sees the same task and seed)."""
    by_key = {(r["variant"], r["ratio"], r["iters"], r["task_id"]): r["val_accuracy"] for r in records}
    ref_items = {
        (ratio, task): acc for (variant, ratio, _iters, task), acc in by_key.items() if variant == reference
    }
    comparisons: dict[tuple[str, float, int], list[float]] = defaultdict(list)
    for (variant, ratio, iters, task), accuracy in by_key.items():
        if variant == reference or (ratio, task) not in ref_items:
            continue
        comparisons[(variant, ratio, iters)].append(ref_items[(ratio, task)] - accuracy)
    rows = []
    for (variant, ratio, iters), differences in sorted(
        comparisons.items(), key=lambda item: (item[0][1], item[0][0])
    ):
        rows.append(
            {
                "reference": reference,
                "other": variant,
                "ratio": ratio,
                "other_iters": iters,
                "difference": mean_std(differences),
                "wins": sum(d > 0 for d in differences),
                "ties": sum(d == 0 for d in differences),
                "losses": sum(d < 0 for d in differences),
            }
        )
    return rows


def sign_flip_p(differences: Sequence[float]) -> float | None:
    """Exact two-sided paired sign-flip (permutation) test of mean difference 0; None for fewer than 3 pairs."""
    values = [d for d in differences if d == d]
    n = len(values)
    if n < 3 or n > 20:
        return None
    observed = abs(sum(values))
    extreme = 0
    for pattern in range(2**n):
        total = sum(v if (pattern >> i) & 1 else -v for i, v in enumerate(values))
        extreme += abs(total) >= observed - 1e-12
    return extreme / 2**n
