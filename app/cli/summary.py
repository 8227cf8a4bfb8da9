"""The before/after table printed after a compression: parameters, FLOPs, top-1, agreement and
latency of the original and compressed (and, after recovery, the recovered) model, from core's report
or a job's result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SIDES = (("original", "original"), ("compressed", "compressed"), ("recovered", "recovered"))


def summary_table(report: dict[str, Any]) -> str:
    """The table for ``report`` (core's report, or a job's ``result``)."""
    sides = [(title, report[key]) for key, title in SIDES if isinstance(report.get(key), dict)]
    if not sides:
        return "(no metrics in the report)"
    first, last = sides[0][1], sides[-1][1]
    rows = [
        _row("params", "params", sides, _count, _relative),
        _row("FLOPs", "flops", sides, _count, _relative),
        _row("top-1", "top1", sides, _percent, _points),
        _row("agreement", "agreement", sides, _percent, _points),
        ["latency (batch 1)", *[_milliseconds(_latency(side)) for _, side in sides], _speedup(first, last)],
    ]
    header = ["", *[title for title, _ in sides], "change"]
    return _render([header, *rows])


def _row(
    label: str,
    key: str,
    sides: list[tuple[str, dict[str, Any]]],
    show: Callable[[Any], str],
    change: Callable[[Any, Any], str],
) -> list[str]:
    values = [side.get(key) for _, side in sides]
    return [label, *[show(value) for value in values], change(values[0], values[-1])]


def _count(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= threshold:
            return f"{value / threshold:.2f} {suffix}"
    return f"{value:.0f}"


def _percent(value: Any) -> str:
    return f"{value * 100:.1f}%" if isinstance(value, int | float) else "-"


def _milliseconds(value: float | None) -> str:
    return f"{value:.2f} ms" if value is not None else "-"


def _relative(before: Any, after: Any) -> str:
    if not isinstance(before, int | float) or not isinstance(after, int | float) or not before:
        return ""
    return f"{(after - before) / before * 100:+.1f}%"


def _points(before: Any, after: Any) -> str:
    if not isinstance(before, int | float) or not isinstance(after, int | float):
        return ""
    return f"{(after - before) * 100:+.1f} pt"


def _latency(side: dict[str, Any]) -> float | None:
    """Single-sample latency: core reports ``{"batch_1": ms, ...}``, a job's result a number."""
    value = side.get("latency_ms")
    if isinstance(value, dict):
        value = value.get("batch_1")
    return float(value) if isinstance(value, int | float) else None


def _speedup(first: dict[str, Any], last: dict[str, Any]) -> str:
    before, after = _latency(first), _latency(last)
    if not before or not after:
        return ""
    return f"{before / after:.2f}x faster" if after <= before else f"{after / before:.2f}x slower"


def _render(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
