"""What every report section shares: number formats, Markdown tables, method labels and plot files."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_smsp.criteria import SCORE_SOURCES, method_names, needs_pool

# The one-shot baselines: the score sources that need no pool.
BASELINES = tuple(name for name in SCORE_SOURCES if not needs_pool(name))


def pct(stats: dict[str, Any] | None, std: bool = True) -> str:
    """'91.2 ± 3.4' (percent) from a mean_std dict."""
    if not stats or stats.get("mean") is None:
        return "–"
    text = f"{100 * stats['mean']:.1f}"
    return f"{text} ± {100 * stats['std']:.1f}" if std else text


def num(value: float | None, digits: int = 2) -> str:
    """A number or a dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def variant_order(variant: str) -> tuple[int, str]:
    """Methods in the paper's order, variants of a method together."""
    order = method_names()
    base = variant.split("[")[0]
    return (order.index(base) if base in order else len(order), variant)


def label(variant: str, paper: str) -> str:
    """Display name: SMSP variants spelled out, the paper's configuration first."""
    if not variant.startswith("smsp["):
        return variant
    k, weighting, source = variant[len("smsp[") : -1].split(",")
    source = "binary masks" if source == "masks" else "score ranks"
    weighting = "LEEP-weighted" if weighting == "leep" else "uniform"
    name = f"smsp (K={k[1:]}, {weighting}, {source})"
    return name if variant == paper else f"{name}, chosen on pool tasks"


def mode_note(payload: dict[str, Any]) -> str:
    """Where a section's numbers come from."""
    machine = payload.get("machine", {})
    return (
        f"*Mode `{payload['mode']}`, {machine.get('date', '?')}; command: `{payload.get('command', '?')}`.*"
    )


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, out: Path) -> Path:
    """Lay out, write and close a figure; returns its path."""
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    pyplot().close(figure)
    return out


def log_log(axis: Any, xlabel: str, ylabel: str, legend_size: int = 8) -> None:
    """Log-scaled axes, their labels, a small legend and a light grid."""
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.legend(fontsize=legend_size)
    axis.grid(alpha=0.3, which="both")
