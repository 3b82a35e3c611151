"""The deploy report as one self-contained HTML page (`deploy_report.html` beside the JSON): a table of every
device, per device the plan's candidates against the budgets with the measured point, the bench's latency
distribution, and the pool tasks that were chosen and why. Inline SVG and CSS only: it opens from disk with no
server and no network, and it is readable at a glance."""

from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_smsp.core.fileio import write_atomically

HTML_NAME = "deploy_report.html"
MIB = 1024 * 1024
_WIDTH, _HEIGHT = 420, 240
_MARGIN = {"left": 56, "right": 16, "top": 24, "bottom": 40}
_COLOURS = {
    "line": "#1f5fa8",
    "budget": "#c0392b",
    "measured": "#e67e22",
    "chosen": "#1f5fa8",
    "bar": "#5b8fd0",
}

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1d232a;max-width:1200px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px} .muted{color:#667}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px} th,td{padding:4px 8px;border-bottom:1px solid
#e3e6ea;text-align:right} td{white-space:nowrap} th{background:#f4f6f8;vertical-align:bottom;max-width:11em} td:first-child,th:first-child{text-align:left}
.ok{color:#1e7d32;font-weight:600} .bad{color:#b3261e;font-weight:600;white-space:normal;text-align:left} .plots{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0} figcaption{font-size:12px;color:#556;text-align:center} svg text{font:11px sans-serif;fill:#333}
"""


def render_html(devices: Sequence[Mapping[str, Any]], *, title: str = "edge-smsp deploy") -> str:
    """The page for one or more devices' deploy reports (each a DeployReport.to_dict(), or for a device that
    failed, a mapping with at least "profile", "status" and "error")."""
    first = next((device for device in devices if "task_id" in device), {})
    subtitle = ""
    if first:
        subtitle = (
            f"{_text(first.get('backbone'))} for {_text(first.get('task_id'))} "
            f"[{_text(', '.join(first.get('class_names') or []))}] at {_text(first.get('image_size'))} px"
        )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_text(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_text(title)}</h1><div class='muted'>{subtitle} · written {time.strftime('%Y-%m-%d %H:%M')}</div>",
        "<h2>Devices</h2>",
        _summary_table(devices),
    ]
    for device in devices:
        parts.append(_device_section(device))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html_report(
    path: Path, devices: Sequence[Mapping[str, Any]], *, title: str = "edge-smsp deploy"
) -> Path:
    """Render and write the page atomically; returns its path."""
    write_atomically(path, render_html(devices, title=title).encode("utf-8"))
    return path


def summary_rows(devices: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One row per device as the page's table shows it (the terminal prints the same table)."""
    rows = []
    for device in devices:
        status = _status(device)
        if "task_id" not in device:
            rows.append({"device": str(device.get("profile", "?")), "status": status})
            continue
        latency = (device.get("measured") or {}).get("latency_ms") or {}
        percentile = device.get("latency_percentile", "p90")
        stack = device.get("device_stack") or {}
        rows.append(
            {
                "device": str(device.get("profile")),
                "stack": f"{stack.get('machine', '?')}, Python {stack.get('python_version', '?')}, "
                f"{stack.get('runtime', 'onnxruntime')} {stack.get('engine_version', '?')}",
                "ratio": f"{device.get('ratio', float('nan')):.2f}",
                "precision": str(
                    device.get("precision") or (device.get("extra") or {}).get("precision") or "fp32"
                ),
                "p50 ms": _number(latency.get("p50")),
                f"{percentile} ms (predicted / measured)": f"{_number(device.get('predicted_latency_ms'))} / "
                f"{_number(device.get('measured_latency_ms'))}",
                "memory MiB (predicted / measured / budget)": f"{_mib(device.get('predicted_memory_bytes'))} / "
                f"{_mib(device.get('measured_peak_rss_bytes'))} / {_mib(device.get('memory_budget_bytes'))}",
                "accuracy": f"{100 * device['val_accuracy']:.2f} %"
                if device.get("val_accuracy") is not None
                else "-",
                "status": status,
            }
        )
    return rows


def _status(device: Mapping[str, Any]) -> str:
    if device.get("status"):
        return str(device["status"])
    if "task_id" not in device:
        return "failed"
    met = device.get("meets_latency_target") is not False and device.get("meets_memory_budget") is not False
    return "deployed" if met else "deployed (over budget)"


def _summary_table(devices: Sequence[Mapping[str, Any]]) -> str:
    rows = summary_rows(devices)
    columns: list[str] = []
    for row in rows:
        columns.extend(column for column in row if column not in columns)
    head = "".join(f"<th>{_text(column)}</th>" for column in columns)
    body = []
    for row, device in zip(rows, devices, strict=True):
        cells = []
        for column in columns:
            value = row.get(column, "")
            css = ""
            if column == "status":
                css = " class='ok'" if value == "deployed" else " class='bad'"
                if device.get("error"):
                    value = f"{value}: {device['error']}"
            cells.append(f"<td{css}>{_text(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table id='devices'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _device_section(device: Mapping[str, Any]) -> str:
    name = _text(device.get("profile", "?"))
    if "task_id" not in device:
        return f"<h2>{name}</h2><p class='bad'>{_text(_status(device))}: {_text(device.get('error', ''))}</p>"
    parts = [f"<h2 id='device-{name}'>{name}</h2>", "<div class='plots'>"]
    plan = device.get("plan") or {}
    candidates = sorted(plan.get("candidates") or [], key=lambda candidate: candidate["ratio"])
    ratio = device.get("ratio")
    if candidates:
        parts.append(
            _figure(
                "plan-latency",
                f"predicted {device.get('latency_percentile', 'p90')} latency per candidate ratio; target and "
                "measured point",
                _line_plot(
                    [(c["ratio"], c["predicted_latency_ms"]) for c in candidates],
                    budget=device.get("latency_target_ms"),
                    measured=(ratio, device.get("measured_latency_ms")),
                    x_label="pruning ratio",
                    y_label="latency (ms)",
                ),
            )
        )
        parts.append(
            _figure(
                "plan-memory",
                "predicted peak memory per candidate ratio; budget and measured peak RSS",
                _line_plot(
                    [(c["ratio"], c["memory_bytes"] / MIB) for c in candidates],
                    budget=(device.get("memory_budget_bytes") or 0) / MIB or None,
                    measured=(ratio, (device.get("measured_peak_rss_bytes") or 0) / MIB or None),
                    x_label="pruning ratio",
                    y_label="memory (MiB)",
                ),
            )
        )
    else:
        parts.append(f"<p class='muted'>ratio {ratio} was given, not planned: no candidates to plot.</p>")
    latency = (device.get("measured") or {}).get("latency_ms") or {}
    parts.append(
        _figure(
            "latency-distribution",
            f"bench latency over {(device.get('measured') or {}).get('runs', '?')} runs",
            _latency_plot(latency, (device.get("measured") or {}).get("latency_histogram_ms")),
        )
    )
    parts.append("</div>")
    parts.append(_chosen_tasks(device))
    return "\n".join(parts)


def _chosen_tasks(device: Mapping[str, Any]) -> str:
    similar = device.get("similar_tasks") or []
    probed = (device.get("extra") or {}).get("probed") or {}
    probe_scores = {}
    if isinstance(probed, Mapping):
        for candidate in probed.get("candidates") or []:
            if isinstance(candidate, Mapping) and "entry_id" in candidate:
                probe_scores[candidate["entry_id"]] = candidate.get("score", candidate.get("accuracy"))
    if not similar:
        return f"<h3>Pool tasks</h3><p class='muted'>method {_text(device.get('method'))}: no pool entries used.</p>"
    rows = []
    for task in similar:
        score = probe_scores.get(task.get("entry_id"))
        rows.append(
            "<tr>"
            f"<td>{_text(task.get('task_id'))}</td><td>{_text(task.get('entry_id'))}</td>"
            f"<td>{_number(task.get('similarity'), 4)}</td><td>{_number(score, 4)}</td>"
            f"<td>{'chosen' if task.get('selected') else ''}</td></tr>"
        )
    return (
        "<h3>Pool tasks, most similar first</h3><table class='tasks'><thead><tr><th>pool task</th><th>entry</th>"
        "<th>similarity</th><th>probe score</th><th></th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _figure(kind: str, caption: str, svg: str) -> str:
    return f"<figure class='plot {kind}'>{svg}<figcaption>{_text(caption)}</figcaption></figure>"


def _line_plot(
    points: Sequence[tuple[float, float]],
    *,
    budget: float | None,
    measured: tuple[float | None, float | None],
    x_label: str,
    y_label: str,
) -> str:
    xs = [x for x, _ in points]
    ys = [y for _, y in points] + [value for value in (budget, measured[1]) if _finite(value)]
    x_scale = _Scale(min(xs), max(xs), _MARGIN["left"], _WIDTH - _MARGIN["right"])
    y_scale = _Scale(0.0, max(ys) * 1.1 if ys else 1.0, _HEIGHT - _MARGIN["bottom"], _MARGIN["top"])
    body = [_axes(x_scale, y_scale, x_label, y_label)]
    path = " ".join(
        f"{'M' if i == 0 else 'L'}{x_scale(x):.1f},{y_scale(y):.1f}" for i, (x, y) in enumerate(points)
    )
    body.append(f"<path d='{path}' fill='none' stroke='{_COLOURS['line']}' stroke-width='2'/>")
    body.extend(
        f"<circle class='candidate' cx='{x_scale(x):.1f}' cy='{y_scale(y):.1f}' r='3' fill='{_COLOURS['line']}'/>"
        for x, y in points
    )
    if _finite(budget):
        y = y_scale(budget)
        body.append(
            f"<line class='budget' x1='{_MARGIN['left']}' x2='{_WIDTH - _MARGIN['right']}' y1='{y:.1f}' y2='{y:.1f}' "
            f"stroke='{_COLOURS['budget']}' stroke-dasharray='6 4'/>"
            f"<text x='{_WIDTH - _MARGIN['right'] - 4}' y='{y - 4:.1f}' text-anchor='end'>budget {budget:.4g}</text>"
        )
    if measured[0] is not None and _finite(measured[1]):
        body.append(
            f"<circle class='measured' cx='{x_scale(measured[0]):.1f}' cy='{y_scale(measured[1]):.1f}' r='6' "
            f"fill='{_COLOURS['measured']}' stroke='#fff'><title>measured {measured[1]:.4g}</title></circle>"
        )
    return _svg(body)


def _latency_plot(summary: Mapping[str, Any], histogram: Mapping[str, Any] | None) -> str:
    """A histogram when the runtime sent one, else the percentiles as bars."""
    if histogram and histogram.get("counts"):
        edges, counts = list(histogram["edges"]), list(histogram["counts"])
        x_scale = _Scale(edges[0], edges[-1], _MARGIN["left"], _WIDTH - _MARGIN["right"])
        y_scale = _Scale(0.0, max(counts) * 1.1, _HEIGHT - _MARGIN["bottom"], _MARGIN["top"])
        body = [_axes(x_scale, y_scale, "latency (ms)", "runs")]
        for low, high, count in zip(edges, edges[1:], counts, strict=False):
            top = y_scale(count)
            body.append(
                f"<rect class='bar' x='{x_scale(low):.1f}' y='{top:.1f}' width='{max(x_scale(high) - x_scale(low) - 1, 1):.1f}' "
                f"height='{y_scale(0) - top:.1f}' fill='{_COLOURS['bar']}'/>"
            )
        return _svg(body)
    names = [name for name in ("min", "p50", "p90", "p99", "max") if _finite(summary.get(name))]
    if not names:
        return _svg(["<text x='20' y='40'>no latency measured</text>"])
    values = [float(summary[name]) for name in names]
    y_scale = _Scale(0.0, max(values) * 1.1, _HEIGHT - _MARGIN["bottom"], _MARGIN["top"])
    step = (_WIDTH - _MARGIN["left"] - _MARGIN["right"]) / len(names)
    body = [_axes(None, y_scale, "", "latency (ms)")]
    for index, (name, value) in enumerate(zip(names, values, strict=True)):
        left = _MARGIN["left"] + index * step + step * 0.15
        top = y_scale(value)
        body.append(
            f"<rect class='bar' x='{left:.1f}' y='{top:.1f}' width='{step * 0.7:.1f}' height='{y_scale(0) - top:.1f}' "
            f"fill='{_COLOURS['bar']}'/><text x='{left + step * 0.35:.1f}' y='{_HEIGHT - _MARGIN['bottom'] + 14}' "
            f"text-anchor='middle'>{name}</text><text x='{left + step * 0.35:.1f}' y='{top - 3:.1f}' "
            f"text-anchor='middle'>{value:.3g}</text>"
        )
    return _svg(body)


class _Scale:
    def __init__(self, low: float, high: float, start: float, end: float) -> None:
        if not high > low:
            low, high = low - 0.5, high + 0.5
        self.low, self.high, self.start, self.end = low, high, start, end

    def __call__(self, value: float) -> float:
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)

    def ticks(self, count: int = 5) -> list[float]:
        """Round values (1, 2 or 5 times a power of ten apart) inside the range."""
        rough = (self.high - self.low) / max(count - 1, 1)
        power = 10 ** math.floor(math.log10(rough))
        step = next(factor * power for factor in (1, 2, 5, 10) if factor * power >= rough)
        first = math.ceil(self.low / step - 1e-9) * step
        return [first + i * step for i in range(int((self.high - first) / step + 1e-9) + 1)]


def _axes(x_scale: _Scale | None, y_scale: _Scale, x_label: str, y_label: str) -> str:
    bottom, left = _HEIGHT - _MARGIN["bottom"], _MARGIN["left"]
    parts = [
        f"<line x1='{left}' x2='{_WIDTH - _MARGIN['right']}' y1='{bottom}' y2='{bottom}' stroke='#888'/>",
        f"<line x1='{left}' x2='{left}' y1='{_MARGIN['top']}' y2='{bottom}' stroke='#888'/>",
    ]
    for tick in y_scale.ticks():
        y = y_scale(tick)
        parts.append(f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end'>{tick:.3g}</text>")
        parts.append(
            f"<line x1='{left}' x2='{_WIDTH - _MARGIN['right']}' y1='{y:.1f}' y2='{y:.1f}' stroke='#eee'/>"
        )
    if x_scale is not None:
        for tick in x_scale.ticks(6):
            parts.append(
                f"<text x='{x_scale(tick):.1f}' y='{bottom + 14}' text-anchor='middle'>{tick:.2g}</text>"
            )
    parts.append(
        f"<text x='{(_WIDTH + left) / 2:.0f}' y='{_HEIGHT - 6}' text-anchor='middle'>{_text(x_label)}</text>"
    )
    parts.append(
        f"<text transform='translate(14,{(_HEIGHT - _MARGIN['bottom'] + _MARGIN['top']) / 2:.0f}) rotate(-90)' "
        f"text-anchor='middle'>{_text(y_label)}</text>"
    )
    return "".join(parts)


def _svg(body: Sequence[str]) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{_WIDTH}' height='{_HEIGHT}' "
        f"viewBox='0 0 {_WIDTH} {_HEIGHT}' role='img'>{''.join(body)}</svg>"
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if _finite(value) else "-"


def _mib(value: Any) -> str:
    return f"{value / MIB:.1f}" if _finite(value) else "-"


def _text(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)
