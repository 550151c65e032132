"""The recording timeline: one lane per stream, an operator's picture of the past.

A face (nothing in the package imports it but the CLI), in one module per concern:

* ``shapes``: what a timeline shows (``Timeline``, ``Lane``, ``Span``,
  ``Hole``, ``HealthPiece``, ``Tick``, ``Marker``) and the pure decisions
  about it: ``merge_spans()`` (which segments share a pixel),
  ``merge_ticks()`` and ``explain_hole()`` (why a hole is there);
* ``reading``: ``collect()`` reads it through the history queries
  (``read_runs`` once a lane, and ``coverage_of_states`` decides the holes
  from those rows by coverage's own rules), so it follows them when they
  learn more (media time, say); a lane's events and health changes are
  plain rows of the event table;
* ``drawing``: ``draw()`` makes the matplotlib figure (the optional extra
  ``[plot]``); ``output``: ``render()`` writes ``.svg``, ``.png``, ``.pdf``
  or a self-contained ``.html`` with hover details;
* ``zones``: local time for people; ``usage``: ``usage_chart()``, storage
  per day.

    from stream_state import open_database
    from stream_state.timeline import render

    open_database("sqlite:///state.db")
    figure = render(since=now - timedelta(hours=24), until=now)      # a matplotlib Figure
    render(["lobby", "garage"], since, until, out="night.html")        # or a file

What each lane shows, top to bottom: event ticks (coloured by severity), the
recorded spans coloured by segment state, holes drawn over them with their
reason (down, unhealthy, clock problem, file missing, unknown), and a thin
health band. A recorder start after a crash or a clean stop (events without a
stream) is a dashed line across every lane. Time runs in the local zone,
named under the axis.

Spans narrower than a pixel merge: segments of one state closer than a pixel
to each other become one span, so a week of 10-second segments is a few
hundred rectangles per lane, not 60,000. Holes are never merged away: a hole
at least ``tolerance`` long is drawn at least a pixel wide, because holes are
what the operator is looking for.

Speed (bench/timeline.py): 1,000 streams over 7 days (10 million segments, a
million events) are read in about the time of ``history.coverage`` alone
(less with the memory map the CLI's reports use), and their PNG takes half
of that again (one painted image, not an artist per span).
"""

from .drawing import (
    HEALTH_COLOURS,
    HOLE_COLOURS,
    INSTALL_HINT,
    SEVERITY_COLOURS,
    SPAN_COLOURS,
    PlotUnavailable,
    draw,
    require_plot,
)
from .output import FORMATS, render, to_bytes
from .reading import collect
from .shapes import (
    DEFAULT_WIDTH,
    HOLE_REASONS,
    HealthPiece,
    Hole,
    Lane,
    Marker,
    Segment,
    Span,
    StatusChange,
    SystemEvent,
    Tick,
    Timeline,
    explain_hole,
    merge_spans,
    merge_states,
    merge_ticks,
)
from .usage import usage_chart
from .zones import local_zone, zone_label

__all__ = [
    "DEFAULT_WIDTH",
    "FORMATS",
    "HEALTH_COLOURS",
    "HOLE_COLOURS",
    "HOLE_REASONS",
    "INSTALL_HINT",
    "SEVERITY_COLOURS",
    "SPAN_COLOURS",
    "HealthPiece",
    "Hole",
    "Lane",
    "Marker",
    "PlotUnavailable",
    "Segment",
    "Span",
    "StatusChange",
    "SystemEvent",
    "Tick",
    "Timeline",
    "collect",
    "draw",
    "explain_hole",
    "local_zone",
    "merge_spans",
    "merge_states",
    "merge_ticks",
    "render",
    "require_plot",
    "to_bytes",
    "usage_chart",
    "zone_label",
]
