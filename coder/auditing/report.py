"""A self-contained HTML audit page: tables and hand-written inline SVG plots, no scripts, no external assets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from coder.version import __version__
from coder.schema import SYSTEMS

_W, _H = 420, 280
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 52, 16, 30, 44
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.25rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
td, th { border: 1px solid #ddd; padding: .2rem .5rem; text-align: right; }
td:first-child, th:first-child, td.text { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
svg { background: #fafafa; border: 1px solid #eee; }
svg text { font-size: 11px; fill: #333; }
.meta { color: #666; font-size: .85rem; }
"""


def _x(value: float, low: float, high: float) -> float:
    return _PAD_L + (value - low) / ((high - low) or 1) * (_W - _PAD_L - _PAD_R)


def _y(value: float) -> float:
    return _H - _PAD_B - value * (_H - _PAD_T - _PAD_B)


def _frame(title: str, x_label: str, y_label: str, x_ticks: Sequence[tuple[float, str]], x_range: tuple[float, float]) -> list[str]:
    """Axes, grid, ticks and labels of a plot whose y axis runs 0..1."""
    low, high = x_range
    parts = [f'<text x="{_W / 2}" y="18" text-anchor="middle" font-weight="bold">{escape(title)}</text>']
    for i in range(6):
        value = i / 5
        y = _y(value)
        parts.append(f'<line x1="{_PAD_L}" y1="{y:.1f}" x2="{_W - _PAD_R}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{value:.1f}</text>')
    for value, label in x_ticks:
        x = _x(value, low, high)
        parts.append(f'<text x="{x:.1f}" y="{_H - _PAD_B + 16}" text-anchor="middle">{escape(label)}</text>')
    parts.append(f'<line x1="{_PAD_L}" y1="{_H - _PAD_B}" x2="{_W - _PAD_R}" y2="{_H - _PAD_B}" stroke="#333"/>')
    parts.append(f'<line x1="{_PAD_L}" y1="{_PAD_T}" x2="{_PAD_L}" y2="{_H - _PAD_B}" stroke="#333"/>')
    parts.append(f'<text x="{_W / 2}" y="{_H - 8}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(
        f'<text x="14" y="{_H / 2}" text-anchor="middle" transform="rotate(-90 14 {_H / 2})">{escape(y_label)}</text>'
    )
    return parts


def _svg(parts: Sequence[str], label: str) -> str:
    body = "\n".join(parts)
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img" aria-label="{escape(label)}">\n{body}\n</svg>'


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float] = (0.0, 1.0),
    x_ticks: Sequence[tuple[float, str]] | None = None,
    diagonal: bool = False,
) -> str:
    """Lines with point markers; y in [0, 1]. ``diagonal`` draws y = x (perfect calibration)."""
    low, high = x_range
    ticks = x_ticks or [(low + i * (high - low) / 5, f"{low + i * (high - low) / 5:.1f}") for i in range(6)]
    parts = _frame(title, x_label, y_label, ticks, x_range)
    if diagonal:
        parts.append(
            f'<line x1="{_x(low, low, high):.1f}" y1="{_y(low):.1f}" x2="{_x(high, low, high):.1f}" y2="{_y(high):.1f}" '
            'stroke="#999" stroke-dasharray="4 3"/>'
        )
    for i, (name, points) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        xy = [(_x(x, low, high), _y(y)) for x, y in points]
        if len(xy) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in xy]
        # style, not the fill attribute: the page's CSS for svg text would override an attribute
        parts.append(f'<text x="{_W - _PAD_R - 4}" y="{_PAD_T + 14 * (i + 1)}" text-anchor="end" style="fill:{colour}">{escape(name)}</text>')
    return _svg(parts, title)


def bar_chart(bars: Sequence[tuple[str, float, str]], *, title: str, x_label: str) -> str:
    """Horizontal bars in [0, 1]: (label, value, note shown after the bar)."""
    row = 18
    height = _PAD_T + row * max(len(bars), 1) + 30
    width = _W + 80
    left, right = 110, 90
    scale = width - left - right
    parts = [f'<text x="{width / 2}" y="18" text-anchor="middle" font-weight="bold">{escape(title)}</text>']
    for i, (label, value, note) in enumerate(bars):
        y = _PAD_T + i * row
        parts.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 2}" width="{value * scale:.1f}" height="{row - 5}" fill="{_COLOURS[0]}"/>')
        parts.append(f'<text x="{left + value * scale + 4:.1f}" y="{y + 12}">{value:.2f} {escape(note)}</text>')
    parts.append(f'<text x="{left + scale / 2}" y="{height - 8}" text-anchor="middle">{escape(x_label)}</text>')
    body = "\n".join(parts)
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{escape(title)}">\n{body}\n</svg>'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"<td>{value:.3f}</td>"
        if isinstance(value, int):
            return f"<td>{value}</td>"
        return f'<td class="text">{escape("" if value is None else str(value))}</td>'

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _ks(result: Mapping[str, Any]) -> list[int]:
    return sorted(int(key[2:]) for key in result if key.startswith("p@"))


def _system_section(system: str, result: Mapping[str, Any]) -> str:
    ks = _ks(result)
    summary = _table(
        ["notes", "MAP", "gold notes", "MAP over all gold notes", *(f"P@{k}" for k in ks), *(f"R@{k}" for k in ks),
         "micro P", "micro R", "micro F1", "macro F1"],
        [[result["notes"], result["map"], result["gold_notes"], result["map_all_notes"], *(result[f"p@{k}"] for k in ks),
          *(result[f"r@{k}"] for k in ks),
          result["micro_precision"], result["micro_recall"], result["micro_f1"], result["macro_f1"]]],
    )
    k_high = max(ks, default=1)
    at_k = line_chart(
        {"precision@k": [(k, result[f"p@{k}"]) for k in ks], "recall@k": [(k, result[f"r@{k}"]) for k in ks]},
        title="Precision and recall at k",
        x_label="k (codes kept per note)",
        y_label="score",
        x_range=(0, k_high),
        x_ticks=[(k, str(k)) for k in ks],
    )
    pr = line_chart(
        {"precision/recall": [(p["recall"], p["precision"]) for p in result["pr_curve"]]},
        title="Precision against recall over the score threshold",
        x_label="recall",
        y_label="precision",
    )
    calibration = line_chart(
        {"observed": [(b["mean_score"], b["fraction_gold"]) for b in result["calibration"]]},
        title="Calibration (reliability diagram)",
        x_label="mean predicted score in bin",
        y_label="fraction that are gold codes",
        diagonal=True,
    )
    chapters = bar_chart(
        [(c["chapter"] or "unknown", c["f1"], f"({c['gold']} gold)") for c in result["chapters"]],
        title=f"F1 of above-threshold codes per {'chapter' if system.endswith('CM') else 'section'}",
        x_label="F1",
    )
    errors = [
        _table(["wrongly predicted", "times", "description"], [[c["code"], c["count"], c["description"]] for c in result["top_false_positives"]]),
        _table(["missed", "times", "description"], [[c["code"], c["count"], c["description"]] for c in result["top_missed"]]),
    ]
    gold = _table(["gold rows", "duplicate rows (scored once)", "codes that are not valid codes (scored as missed)"],
                  [[result["gold_rows"], result["duplicate_gold_rows"], result["invalid_gold_rows"]]])
    if result["invalid_gold_codes"]:
        gold += _table(["gold code that is not a valid code", "times"], [[c["code"], c["count"]] for c in result["invalid_gold_codes"]])
    return (
        f"<section><h2>{escape(system)}</h2>{summary}{gold}"
        f'<div class="plots">{at_k}{pr}{calibration}{chapters}</div>'
        f'<div class="plots">{"".join(errors)}</div></section>'
    )


def render_report(audit: Mapping[str, Any], *, title: str = "coder audit") -> str:
    """The audit (``coder audit --json`` shape) as one HTML page; an ``llm`` section is shown if present."""
    sections = [_system_section(system, result) for system, result in audit.items() if system in SYSTEMS]
    if "llm" in audit:
        sections.append(_table(["LLM stage", "value"], [[k, v] for k, v in audit["llm"].items()]))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>{escape(title)}</h1><p class="meta">coder {__version__}, {stamp}</p>'
        + "".join(sections)
        + "</body></html>\n"
    )
