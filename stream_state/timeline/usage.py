"""``stream-state usage --by day --out FILE``: storage per day, stacked by volume, stream or state."""

from __future__ import annotations

import datetime as dt
import io
import os
from typing import Any

from ..cli_output import format_size
from ..errors import ValidationError
from ..history.storage import UsageRow, storage_usage
from .drawing import SPAN_COLOURS, Drawn, load_matplotlib
from .output import check_out, format_of, svg_of, write_out
from .shapes import DPI

_STACKS = {"volume": "storage", "stream": "stream", "state": "state"}
MAX_STACKED = 12  # more groups than this: the largest, and "others"


def usage_chart(
    *,
    stack: str = "volume",
    since: dt.date | None = None,
    until: dt.date | None = None,
    out: str | os.PathLike[str] | None = None,
    format: str | None = None,
    width: int = 1200,
) -> Any:
    """Storage per UTC day as stacked bars (by volume, stream or state), from ``history.storage_usage``.

    Returns the Figure, or writes ``out`` (svg, png, pdf, html) and returns its Path.
    """
    if stack not in _STACKS:
        raise ValidationError("stack", stack, f"expected one of {', '.join(_STACKS)}")
    fmt = format_of(out, format) if out is not None or format is not None else None
    check_out(out)
    mpl = load_matplotlib()
    from matplotlib.figure import Figure

    key = _STACKS[stack]
    rows = storage_usage(("day", key), since=since, until=until)

    def label(row: UsageRow) -> str:
        if key == "storage":
            return row.storage or "(no volume)"
        if key == "stream":
            return row.stream or "?"
        return str(row.state)

    totals: dict[str, int] = {}
    for row in rows:
        totals[label(row)] = totals.get(label(row), 0) + row.size_bytes
    groups = sorted(totals, key=lambda g: -totals[g])
    shown = groups[:MAX_STACKED] if len(groups) <= MAX_STACKED else groups[: MAX_STACKED - 1]
    days = sorted({row.day for row in rows if row.day is not None})
    per: dict[str, dict[dt.date, int]] = {}
    for row in rows:
        if row.day is None:
            continue
        group = label(row) if label(row) in shown else "others"
        per.setdefault(group, {}).setdefault(row.day, 0)
        per[group][row.day] += row.size_bytes
    order = [g for g in shown if g in per] + (["others"] if "others" in per else [])
    peak = max((sum(per[g].get(d, 0) for g in order) for d in days), default=0)
    unit, scale = "B", 1
    for name, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if peak >= factor:
            unit, scale = name, factor
            break
    figure = Figure(figsize=(width / DPI, 5.5), dpi=DPI)
    ax = figure.add_axes((0.08, 0.2, 0.7, 0.7))
    xs = list(range(len(days)))  # one slot per day that has segments, labelled with its date
    base = [0.0] * len(days)
    titles: dict[str, str] = {}
    palette = mpl.colormaps["tab20"].colors
    for n, group in enumerate(order):
        heights = [per[group].get(d, 0) / scale for d in days]
        colour = SPAN_COLOURS.get(group) if key == "state" else palette[n % len(palette)]
        bars = ax.bar(xs, heights, bottom=base, width=0.8, color=colour, label=group)
        for k, (bar, day) in enumerate(zip(bars, days, strict=True)):
            if per[group].get(day):
                bar.set_gid(f"usage-{n}-{k}")
                titles[f"usage-{n}-{k}"] = f"{day.isoformat()} {group}: {format_size(per[group][day])}"
        base = [b + h for b, h in zip(base, heights, strict=True)]
    every = max(1, len(days) // 15)
    ax.set_xticks(xs[::every], [d.isoformat() for d in days][::every], rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, max(len(days), 1) - 0.4)
    ax.set_ylabel(f"size ({unit})")
    ax.set_xlabel("UTC day the segments started")
    ax.set_title(f"Storage per day, by {stack}", loc="left")
    if not days:
        ax.text(0.5, 0.5, "no recordings", transform=ax.transAxes, ha="center")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, title=stack)
    ax.grid(axis="y", color="#d9d9d9", linewidth=0.5)
    ax.set_axisbelow(True)
    if out is None and fmt is None:
        return figure
    drawn = Drawn(figure, titles, [], (0.0, 0.0))
    if fmt == "svg":
        data = svg_of(drawn).encode("utf-8")
    elif fmt == "html":
        # The bars' <title>s are the browser's own hover text.
        data = (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Storage per day</title>'
            f"</head><body>{svg_of(drawn)}</body></html>"
        ).encode()
    else:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=DPI)
        data = buffer.getvalue()
    if out is None:
        return data
    return write_out(out, data)
