"""A timeline as a file or bytes: SVG, PNG, PDF, or one self-contained HTML page with hover details."""

from __future__ import annotations

import base64
import datetime as dt
import errno
import html
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from ..errors import StorageFull, ValidationError
from ..history.segments import DEFAULT_TOLERANCE
from ..models import Stream
from .drawing import Drawn, draw_timeline, load_matplotlib
from .reading import collect
from .shapes import DEFAULT_WIDTH, DPI, Timeline
from .zones import local_zone, zone_label

FORMATS = ("svg", "png", "pdf", "html")
# An HTML page of more elements than this shows the picture as a PNG under
# the hover layer (the hover works from the data, not from the elements):
# 1,000 lanes of SVG would be hundreds of MB for the browser to lay out.
HTML_SVG_ELEMENTS = 30_000


def render(
    streams: Iterable[Stream | int | str] | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    format: str | None = None,
    width: int = DEFAULT_WIDTH,
    tolerance: dt.timedelta = DEFAULT_TOLERANCE,
    now: dt.datetime | None = None,
    fit: bool = False,
    title: str | None = None,
    timeline: Timeline | None = None,
) -> Any:
    """Draw the timeline of ``streams`` over [since, until); return the Figure, or write ``out``.

    The format comes from ``format`` or ``out``'s suffix: ``svg`` (each
    lane, hole and marker a group whose ``<title>`` says what it is),
    ``png``, ``pdf``, or ``html`` (the SVG in one self-contained page that
    works offline, with hover details: segment paths, sizes, times, the
    reason of a hole). Pass a ``timeline`` from ``collect()`` to draw it
    again without reading the database. Returns the Path written.
    """
    fmt = format_of(out, format) if out is not None or format is not None else None
    check_out(out)
    load_matplotlib()  # say what to install before reading anything
    if timeline is None:
        timeline = collect(streams, since, until, width=width, tolerance=tolerance, now=now, fit=fit)
    drawn = draw_timeline(timeline, title=title, elements=_wants_elements(fmt, timeline))
    if fmt is None:
        return drawn.figure
    data = _encode(drawn, timeline, fmt)
    if out is None:
        return data
    return write_out(out, data)


def check_out(out: str | os.PathLike[str] | None) -> None:
    """Refuse an ``out`` that cannot be a new file before anything is read or drawn."""
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise ValidationError("out", str(out), "is a directory; give a file name")
    if not path.parent.is_dir():
        raise ValidationError("out", str(out), f"directory {path.parent} does not exist")


def write_out(out: str | os.PathLike[str], data: bytes) -> Path:
    path = Path(out)
    try:
        path.write_bytes(data)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(f"cannot write {out}: {exc.strerror}") from exc
        raise ValidationError("out", str(out), f"cannot be written ({exc.strerror})") from None
    return path


def to_bytes(timeline: Timeline, format: str, *, title: str | None = None) -> bytes:
    """The picture of a collected timeline as the bytes of ``format`` (svg, png, pdf, html)."""
    fmt = format_of(None, format)
    return _encode(
        draw_timeline(timeline, title=title, elements=_wants_elements(fmt, timeline)), timeline, fmt
    )


def _wants_elements(fmt: str | None, timeline: Timeline) -> bool:
    """Whether holes are drawn as artists of their own (SVG groups with titles), not one collection."""
    if fmt in ("png", "pdf"):
        return False
    return not (fmt == "html" and _elements(timeline) > HTML_SVG_ELEMENTS)


def format_of(out: Any, format: str | None) -> str:
    fmt = format
    if fmt is None:
        suffix = Path(out).suffix.lower().lstrip(".")
        fmt = "html" if suffix == "htm" else suffix
    if fmt not in FORMATS:
        field, value = ("format", format) if format is not None else ("out", str(out))
        raise ValidationError(
            field, value, f"expected a file ending in {', '.join('.' + f for f in FORMATS)}"
        )
    return fmt


def _encode(drawn: Drawn, timeline: Timeline, fmt: str) -> bytes:
    if fmt == "png":
        buffer = io.BytesIO()
        drawn.figure.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()
    if fmt == "pdf":
        buffer = io.BytesIO()
        drawn.figure.savefig(buffer, format="pdf")
        return buffer.getvalue()
    if fmt == "html" and _elements(timeline) > HTML_SVG_ELEMENTS:
        buffer = io.BytesIO()
        drawn.figure.savefig(buffer, format="png", dpi=DPI)
        picture = (
            f'<img alt="recording timeline" width="{round(drawn.figure.get_figwidth() * DPI)}" '
            f'src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
        )
        return _html(drawn, timeline, picture).encode("utf-8")
    svg = svg_of(drawn)
    if fmt == "svg":
        return svg.encode("utf-8")
    return _html(drawn, timeline, svg).encode("utf-8")


def _elements(timeline: Timeline) -> int:
    return sum(
        len(lane.spans) + len(lane.holes) + len(lane.ticks) + len(lane.health) for lane in timeline.lanes
    )


_SVG = "http://www.w3.org/2000/svg"


def svg_of(drawn: Drawn) -> str:
    """The figure as SVG with a ``<title>`` in each group matplotlib named after an artist's gid."""
    buffer = io.StringIO()
    drawn.figure.savefig(buffer, format="svg", metadata={"Date": None})
    ElementTree.register_namespace("", _SVG)
    ElementTree.register_namespace("xlink", "http://www.w3.org/1999/xlink")
    root = ElementTree.fromstring(buffer.getvalue().split("?>", 1)[-1])
    for metadata in root.findall(f"{{{_SVG}}}metadata"):  # RDF that names outside addresses
        root.remove(metadata)
    for group in root.iter(f"{{{_SVG}}}g"):
        text = drawn.titles.get(group.get("id", ""))
        if text is not None:
            element = ElementTree.Element(f"{{{_SVG}}}title")
            element.text = text
            group.insert(0, element)
    return ElementTree.tostring(root, encoding="unicode")


def _html(drawn: Drawn, timeline: Timeline, picture: str) -> str:
    zone = local_zone()
    width_px = drawn.figure.get_figwidth() * DPI
    height_px = drawn.figure.get_figheight() * DPI
    data = {
        "since": timeline.since,
        "until": timeline.until,
        "zone": getattr(zone, "key", None),
        "zoneLabel": zone_label(zone, timeline.until),
        "width": width_px,
        "height": height_px,
        "plotX": list(drawn.plot_x),
        "pixelMs": timeline.pixel_ms,
        "lanes": [
            {
                "name": lane.name,
                "rows": list(drawn.lane_rows[i]),
                "spans": [
                    [s.start, s.end, s.state, s.segments, s.size_bytes, s.first_path, s.last_path]
                    for s in lane.spans
                ],
                "holes": [[h.start, h.end, h.reason, h.detail] for h in lane.holes],
                "health": [[p.start, p.end, p.health, p.reason] for p in lane.health],
                "ticks": [[t.at, t.type, t.severity, t.message, t.count] for t in lane.ticks],
            }
            for i, lane in enumerate(timeline.lanes)
        ],
        "markers": [[m.at, m.kind, m.message] for m in timeline.markers],
    }
    # </script> inside the JSON must not end the script element.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    heading = html.escape(f"Recording timeline ({len(timeline.lanes)} streams)")
    return _HTML.replace("__TITLE__", heading).replace("__SVG__", picture).replace("__DATA__", payload)


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{margin:0;font:13px system-ui,sans-serif;background:#fff}
#figure{position:relative;display:inline-block}
#figure svg,#figure img{display:block;width:100%;height:auto}
#tip{position:fixed;display:none;max-width:520px;padding:6px 8px;background:#222;color:#fff;
 border-radius:4px;font-size:12px;line-height:1.4;pointer-events:none;white-space:pre-wrap;z-index:10}
</style></head>
<body><div id="figure">__SVG__</div><div id="tip" role="tooltip"></div>
<script id="timeline-data" type="application/json">__DATA__</script>
<script>
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("timeline-data").textContent);
  const svg = document.querySelector("#figure svg, #figure img");
  const tip = document.getElementById("tip");
  let fmt;
  try {
    fmt = new Intl.DateTimeFormat("en-CA", {timeZone: data.zone || undefined, year: "numeric",
      month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
      fractionalSecondDigits: 3, hour12: false});
  } catch (e) {
    fmt = new Intl.DateTimeFormat("en-CA", {hour12: false, year: "numeric", month: "2-digit",
      day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit"});
  }
  const time = (ms) => fmt.format(new Date(ms)).replace(",", "");
  const size = (b) => {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
    return (i ? b.toFixed(1) : b.toFixed(0)) + " " + units[i];
  };
  const length = (ms) => {
    const s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.round((s % 86400) / 3600) + " h";
  };
  function describe(lane, ms, slack) {
    const lines = [];
    for (const h of lane.holes) {
      if (ms >= h[0] - slack && ms <= h[1] + slack) {
        lines.push("HOLE " + time(h[0]) + " \\u2013 " + time(h[1]) + " (" + length(h[1] - h[0]) + ")");
        lines.push("why: " + h[3]);
      }
    }
    for (const s of lane.spans) {
      if (lines.length < 8 && ms >= s[0] - slack && ms <= s[1] + slack) {
        lines.push((s[3] > 1 ? s[3] + " segments " : "segment ") + s[2] + ", " + size(s[4]));
        lines.push(time(s[0]) + " \\u2013 " + time(s[1]) + " (" + length(s[1] - s[0]) + ")");
        lines.push(s[3] > 1 ? s[5] + " \\u2026 " + s[6] : s[5]);
      }
    }
    for (const t of lane.ticks) {
      if (Math.abs(ms - t[0]) <= Math.max(slack, 2 * data.pixelMs) && lines.length < 14) {
        lines.push("event " + time(t[0]) + " " + t[2] + " " + t[1] + ": " + t[3] +
          (t[4] > 1 ? " (+" + (t[4] - 1) + " more)" : ""));
      }
    }
    for (const p of lane.health) {
      if (ms >= p[0] && ms < p[1]) { lines.push("health " + p[2] + (p[3] ? " (" + p[3] + ")" : "")); break; }
    }
    return lines;
  }
  function show(event) {
    const box = svg.getBoundingClientRect();
    const fx = (event.clientX - box.left) * data.width / box.width;
    const fy = (event.clientY - box.top) * data.height / box.height;
    const [x0, x1] = data.plotX;
    if (fx < x0 - 2 || fx > x1 + 2) { tip.style.display = "none"; return; }
    const ms = data.since + (fx - x0) / (x1 - x0) * (data.until - data.since);
    const slack = 2 * data.pixelMs * data.width / box.width;
    let lane = null;
    for (const l of data.lanes) { if (fy >= l.rows[0] && fy < l.rows[1]) { lane = l; break; } }
    if (!lane) { tip.style.display = "none"; return; }
    const lines = describe(lane, ms, slack);
    for (const m of data.markers) {
      if (Math.abs(m[0] - ms) <= slack) lines.push(m[2]);
    }
    tip.textContent = lane.name + "  " + time(ms) + " " + data.zoneLabel + "\\n" +
      (lines.length ? lines.join("\\n") : "not in the window of this stream");
    tip.style.display = "block";
    const left = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 4);
    const top = Math.min(event.clientY + 14, window.innerHeight - tip.offsetHeight - 4);
    tip.style.left = Math.max(0, left) + "px";
    tip.style.top = Math.max(0, top) + "px";
  }
  svg.addEventListener("mousemove", show);
  svg.addEventListener("mouseleave", () => { tip.style.display = "none"; });
})();
</script></body></html>
"""
