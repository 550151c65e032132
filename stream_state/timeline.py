"""The recording timeline: one lane per stream, an operator's picture of the past.

A face (nothing in the package imports it but the CLI). ``collect()`` reads
the segments and the gaps through the history queries (``read_runs`` once
a lane, and ``coverage_of_states`` decides the holes from those rows by
coverage's own rules), so it follows them when they learn more (media time,
say); a lane's events and health changes are plain rows of the event table.
``explain_hole()`` and ``merge_spans()`` are pure functions that decide
why a hole is there and which segments share a pixel; ``render()`` draws it
with matplotlib (the optional extra ``[plot]``) and writes ``.svg``,
``.png``, ``.pdf`` or a self-contained ``.html`` with hover details.

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

Speed (bench/timeline.py): 1,000 streams over 7 days (10 million segments)
are read in about twice the time of ``history.coverage`` alone, most of it
the driver handing over ten million index rows; a PNG of them takes a
fifth of that (one painted image, not an artist per span).
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import dataclasses
import datetime as dt
import errno
import functools
import gc
import html
import io
import json
import os
import time
import zoneinfo
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast
from xml.etree import ElementTree

import peewee as pw

from .backends import current_database
from .cli_output import format_duration, format_size
from .errors import StorageFull, StreamStateError, ValidationError
from .history import resolve_stream
from .history.eventlog import MAX_PAGE, events
from .history.segments import (
    DEFAULT_TOLERANCE,
    Gap,
    SegmentStates,
    coverage,
    coverage_of_states,
    read_runs,
    recordings,
    segment_states,
)
from .history.storage import UsageRow, storage_usage
from .models import Event, Recording, Stream
from .states import EventType, HealthState, SegmentState, Severity
from .timeutil import from_millis, now_millis, to_millis

INSTALL_HINT = "pip install 'stream_state[plot]'"
FORMATS = ("svg", "png", "pdf", "html")

# Layout in pixels at DPI: a lane's height shrinks with the number of lanes
# so that 1,000 streams stay a picture (about 10 px each), not a poster.
DPI = 100
DEFAULT_WIDTH = 1600
LABEL_PX = 170
RIGHT_PX = 30
HEADER_PX = 110
FOOTER_PX = 150

# Lane geometry, in lanes: lane i is centred on y = i (down the picture);
# spans and holes take this part of it.
SPAN_LO, SPAN_HI = -0.28, 0.18
SPAN_MIDDLE = (SPAN_LO + SPAN_HI) / 2

MAX_TICKS_PER_LANE = 5_000
TICK_PX = 3  # events closer than this many pixels share a tick (a tick is about 1 px wide)
# An HTML page of more elements than this shows the picture as a PNG under
# the hover layer (the hover works from the data, not from the elements):
# 1,000 lanes of SVG would be hundreds of MB for the browser to lay out.
HTML_SVG_ELEMENTS = 30_000
# Up to this many segments in the window, each is read whole (hover shows
# paths and sizes, archived ones their own colour); beyond, spans come from
# the index alone (states and times: 5x cheaper) and only the segments around
# holes are read whole, to explain them.
DETAIL_SEGMENTS = 300_000
MAX_TOLD = 5  # event messages quoted in a hole's detail
NEAR_BEFORE = 3  # segments before a hole looked at to explain it (they may overlap)
DOWN_SLACK_MS = 1_000  # evidence this close to a hole's ends still explains it

# Display states of a span: the segment states, with "open" for a segment
# still being written and "archived" for one whose file went to an archive.
SPAN_COLOURS = {
    "complete": "#2b83ba",
    "open": "#66c2a5",
    "interrupted": "#fdae61",
    "failed": "#d7191c",
    "archived": "#5e3c99",
    "recovered": "#abdda4",
    "missing": "#969696",
    "deleting": "#bdbdbd",
    "archiving": "#9e9ac8",
}
HOLE_REASONS = ("down", "unhealthy", "clock problem", "file missing", "unknown")
HOLE_COLOURS = {
    "down": "#252525",
    "unhealthy": "#e7298a",
    "clock problem": "#7570b3",
    "file missing": "#d95f02",
    "unknown": "#bdbdbd",
}
HEALTH_COLOURS = {
    "healthy": "#a6d96a",
    "degraded": "#fee08b",
    "unhealthy": "#f46d43",
    "failed": "#a50026",
    "unknown": "#e0e0e0",
}
SEVERITY_COLOURS = {
    "debug": "#bdbdbd",
    "info": "#737373",
    "warning": "#ff7f00",
    "error": "#e31a1c",
    "critical": "#000000",
}
MARKER_COLOURS = {"crash": "#e31a1c", "restart": "#1f78b4", "shutdown": "#33a02c"}
MARKER_LABELS = {"crash": "restart after a crash", "restart": "recorder start", "shutdown": "clean stop"}
MAX_MARKER_LABELS = 12
# Up to this many holes each is an artist of its own (an SVG group with its
# reason as <title>); beyond, one hatched collection per reason.
MAX_HOLE_ARTISTS = 2_000
HATCH_PX = 6  # period of a hole's stripes in a PNG
_SEVERITY_RANK = {severity.value: rank for rank, severity in enumerate(Severity)}
_NOT_COVERING = {SegmentState.FAILED.value, SegmentState.MISSING.value, SegmentState.DELETING.value}
_BAD_HEALTH = {HealthState.UNHEALTHY.value, HealthState.FAILED.value}


class PlotUnavailable(StreamStateError):
    """Drawing needs matplotlib, which comes with the extra ``[plot]``."""

    def __init__(self) -> None:
        super().__init__(f"drawing a timeline or chart needs matplotlib: {INSTALL_HINT}")


# --- what the picture shows ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """One segment row as the timeline reads it (times in epoch ms; ``end`` of an open one: now)."""

    index: int
    start: int
    end: int
    state: str  # a display state: a SegmentState value, "open" or "archived"
    size_bytes: int
    path: str


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    """Segments of one display state merged where they are closer than a pixel."""

    start: int
    end: int
    state: str
    segments: int
    size_bytes: int
    first_path: str
    last_path: str


@dataclasses.dataclass(frozen=True, slots=True)
class Hole:
    """A gap of ``history.coverage`` with why it is there.

    ``reason`` is one of HOLE_REASONS (the first that applies, in that
    order); ``detail`` says what showed it, every finding, for people.
    """

    start: int
    end: int
    reason: str
    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class HealthPiece:
    start: int
    end: int
    health: str
    reason: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Tick:
    """Events of a lane that fall in one pixel: the most severe one shows, ``count`` says how many."""

    at: int
    type: str
    severity: str
    message: str
    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class Marker:
    """A system event drawn across every lane: a restore (after a crash or a clean stop) or a shutdown."""

    at: int
    kind: str  # "crash", "restart" or "shutdown"
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class Lane:
    stream_id: int
    name: str
    start: int  # the part of the window the stream existed in
    end: int
    spans: tuple[Span, ...]
    holes: tuple[Hole, ...]
    health: tuple[HealthPiece, ...]
    ticks: tuple[Tick, ...]
    recorded_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Timeline:
    since: int
    until: int
    pixel_ms: float
    width: int
    lanes: tuple[Lane, ...]
    markers: tuple[Marker, ...]
    query_seconds: float = 0.0  # how long collect() took

    @property
    def holes(self) -> list[tuple[Lane, Hole]]:
        return [(lane, hole) for lane in self.lanes for hole in lane.holes]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- pure decisions ------------------------------------------------------------------------------------


def merge_spans(segments: Sequence[Segment], pixel_ms: float) -> list[Span]:
    """Merge segments (sorted by start) of one display state that are less than a pixel apart.

    A segment of another state in between ends the span, so a failed
    segment keeps its own rectangle however narrow (the drawing gives every
    span at least a pixel).
    """
    spans: list[Span] = []
    current: list[Any] | None = None  # start, end, state, count, size, first, last
    for seg in segments:
        if current is not None and seg.state == current[2] and seg.start - current[1] < pixel_ms:
            current[1] = max(current[1], seg.end)
            current[3] += 1
            current[4] += seg.size_bytes
            current[6] = seg.path
            continue
        if current is not None:
            spans.append(Span(*current))
        current = [seg.start, seg.end, seg.state, 1, seg.size_bytes, seg.path, seg.path]
    if current is not None:
        spans.append(Span(*current))
    return spans


def merge_states(rows: Iterable[tuple[int, int, str | None, int]], pixel_ms: float) -> list[Span]:
    """``merge_spans`` for (start, end, state, segments) entries read from the index: no sizes, no paths.

    An entry is a segment (segments 1) or a run of them (``history.read_runs``);
    a state of None is "complete". A tight loop over plain tuples: a week of
    1,000 streams is ten million rows where no hour is summarized.
    """
    spans: list[Span] = []
    cur_start = cur_end = count = 0
    cur_state: Any = _NO_STATE
    for start, end, state, segments in rows:
        if state == cur_state and start - cur_end < pixel_ms:
            if end > cur_end:
                cur_end = end
            count += segments
            continue
        if count:
            spans.append(Span(cur_start, cur_end, _SHOWN.get(cur_state, cur_state), count, 0, "", ""))
        cur_start, cur_end, cur_state, count = start, end, state, segments
    if count:
        spans.append(Span(cur_start, cur_end, _SHOWN.get(cur_state, cur_state), count, 0, "", ""))
    return spans


_NO_STATE = object()  # before the first row: equal to no state, None included


@dataclasses.dataclass(frozen=True, slots=True)
class SystemEvent:
    at: int
    type: str
    clean: bool | None


@dataclasses.dataclass(frozen=True, slots=True)
class StatusChange:
    at: int
    new: str
    reason: str | None


def explain_hole(
    start: int,
    end: int,
    *,
    segments: Sequence[Segment],
    health: Sequence[HealthPiece],
    system: Sequence[SystemEvent],
    statuses: Sequence[StatusChange] = (),
    clock_events: Sequence[tuple[int, str]] = (),
    zone: dt.tzinfo | None = None,
    told: Sequence[str] = (),
) -> Hole:
    """Why nothing was recorded in [start, end): the evidence in the window, in the order of HOLE_REASONS.

    * down: the recorder started again after a crash (a ``restored`` event
      that found no clean stop) or stopped cleanly inside the hole, or the
      stream's status went to ``stopped``;
    * unhealthy: the stream's health was unhealthy or failed at the hole's
      start or turned so inside it;
    * clock problem: segments numbered between the ones around the hole
      carry times outside it (a clock that stepped; 1970 at boot), or a
      clock event falls in it;
    * file missing: a segment in the hole has no usable file (failed,
      missing, being deleted);
    * unknown: none of these; nothing in the database says why.

    ``told``: the messages of the events ``history.gaps`` finds in the hole
    (``Gap.reasons``), added to the detail as they were written.

    ``system``, ``statuses``, ``clock_events`` and ``health`` are in time
    order (``health``: pieces end to end, as ``collect`` makes them): only
    the part near the hole is looked at, so a lane's dozen holes do not
    each walk its week of health changes.
    """
    findings: dict[str, list[str]] = {reason: [] for reason in HOLE_REASONS}

    def clock(ms: int) -> str:
        return _clock(ms, zone)

    lo, hi = start - DOWN_SLACK_MS, end + DOWN_SLACK_MS
    system = system[bisect.bisect_left(system, lo, key=_at) : bisect.bisect_right(system, hi, key=_at)]
    statuses = statuses[
        bisect.bisect_left(statuses, lo, key=_at) : bisect.bisect_left(statuses, end, key=_at)
    ]
    clock_events = clock_events[
        bisect.bisect_left(clock_events, lo, key=_first) : bisect.bisect_right(clock_events, end, key=_first)
    ]
    # The piece in force at the hole's start, and those starting before its end.
    health = health[
        max(0, bisect.bisect_right(health, start, key=_start) - 1) : bisect.bisect_left(
            health, end, key=_start
        )
    ]
    for event in system:
        if start - DOWN_SLACK_MS <= event.at <= end + DOWN_SLACK_MS:
            if event.type == EventType.RESTORED.value and event.clean is False:
                findings["down"].append(f"the recorder crashed (restarted {clock(event.at)})")
            elif event.type == EventType.RESTORED.value and event.clean is True:
                findings["down"].append(f"the recorder was stopped (restarted {clock(event.at)})")
            elif event.type == EventType.CLEAN_SHUTDOWN.value:
                findings["down"].append(f"the recorder stopped cleanly at {clock(event.at)}")
    for change in statuses:
        if start - DOWN_SLACK_MS <= change.at < end and change.new == "stopped":
            findings["down"].append(
                f"stream stopped at {clock(change.at)}" + (f" ({change.reason})" if change.reason else "")
            )
    for piece in health:
        if piece.health in _BAD_HEALTH and piece.start < end and piece.end > start:
            findings["unhealthy"].append(
                f"{piece.health} from {clock(piece.start)}" + (f" ({piece.reason})" if piece.reason else "")
            )
    numbered = [s for s in segments if s.index >= 0]  # read from the index alone: no number
    before = [s for s in numbered if s.end <= start + 1 and s.state not in _NOT_COVERING]
    after = [s for s in numbered if s.start >= end - 1 and s.state not in _NOT_COVERING]
    if before and after:
        low = max(before, key=lambda s: s.end).index
        high = min(after, key=lambda s: s.start).index
        misplaced = [s for s in numbered if low < s.index < high and (s.end <= start or s.start >= end)]
        if misplaced:
            first = min(misplaced, key=lambda s: s.index)
            findings["clock problem"].append(
                f"{len(misplaced)} segment(s) numbered between {low} and {high} are dated elsewhere "
                f"(#{first.index} at {_clock(first.start, zone, date=True)})"
            )
    for at, message in clock_events:
        if start - DOWN_SLACK_MS <= at <= end:
            findings["clock problem"].append(message)
    for seg in segments:
        if seg.state in _NOT_COVERING and seg.start < end and seg.end >= start - DOWN_SLACK_MS:
            findings["file missing"].append(f"{os.path.basename(seg.path) or 'a segment'} {seg.state}")
    found = [reason for reason in HOLE_REASONS if findings[reason]]
    # What the events in the hole said, as history.gaps tells it.
    said = ""
    if told:
        said = (
            "; events: "
            + " | ".join(told[:MAX_TOLD])
            + (f" (+{len(told) - MAX_TOLD} more)" if len(told) > MAX_TOLD else "")
        )
    if not found:
        return Hole(start, end, "unknown", "unknown: no event or segment in the database explains it" + said)
    detail = "; ".join(f"{reason}: {', '.join(_dedupe(findings[reason]))}" for reason in found)
    return Hole(start, end, found[0], detail + said)


def _at(item: SystemEvent | StatusChange) -> int:
    return item.at


def _first(item: tuple[int, str]) -> int:
    return item[0]


def _start(item: HealthPiece) -> int:
    return item.start


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def merge_ticks(events: Iterable[Tick], pixel_ms: float) -> list[Tick]:
    """One tick per ``pixel_ms``: the most severe event (the first of equals), with the count."""
    return _merge_tick_rows(((t.at, t.type, t.severity, t.message, t.count) for t in events), pixel_ms)


def _merge_tick_rows(rows: Iterable[tuple[int, str, str, str, int]], pixel_ms: float) -> list[Tick]:
    """``merge_ticks`` of (at, type, severity, message, count) rows: a Tick made only for each one shown."""
    merged: dict[int, list[Any]] = {}  # key -> [rank, row, count]
    rank_of = _SEVERITY_RANK.get
    for row in rows:
        at = row[0]
        key = int(at // pixel_ms) if pixel_ms > 0 else at
        rank = rank_of(row[2], 0)
        found = merged.get(key)
        if found is None:
            merged[key] = [rank, row, row[4]]
            continue
        found[2] += row[4]
        if rank > found[0]:
            found[0], found[1] = rank, row
    return [
        Tick(row[0], row[1], row[2], row[3], count)
        for _rank, row, count in sorted(merged.values(), key=lambda item: item[1][0])
    ]


# --- reading the data ----------------------------------------------------------------------------------


def collect(
    streams: Iterable[Stream | int | str] | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    *,
    width: int = DEFAULT_WIDTH,
    tolerance: dt.timedelta = DEFAULT_TOLERANCE,
    now: dt.datetime | None = None,
    fit: bool = False,
    ticks: Severity | str = Severity.INFO,
) -> Timeline:
    """What the timeline of ``streams`` (default: every live stream) over [since, until) shows.

    ``since`` defaults to 24 hours before ``until``, ``until`` to now.
    ``width`` is the picture's width in pixels (it sets what "narrower than
    a pixel" means). With ``fit`` the window shrinks to the part that has
    segments or events, plus a margin (what ``stream-state timeline
    --fit`` uses to show a short run inside a long default window).
    Events of at least ``ticks`` severity are ticks (health changes are the
    band, not ticks).
    """
    started = time.perf_counter()
    with _collector_paused():
        return _collect(streams, since, until, width, tolerance, now, fit, ticks, started)


def _collect(
    streams: Iterable[Stream | int | str] | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    width: int,
    tolerance: dt.timedelta,
    now: dt.datetime | None,
    fit: bool,
    ticks: Severity | str,
    started: float,
) -> Timeline:
    now_ms = now_millis() if now is None else to_millis(now, "now")
    until_ms = now_ms if until is None else to_millis(until, "until")
    since_ms = until_ms - 86_400_000 if since is None else to_millis(since, "since")
    if until_ms <= since_ms:
        raise ValidationError("until", from_millis(until_ms), f"must be after since={from_millis(since_ms)}")
    if isinstance(width, bool) or not isinstance(width, int) or not 400 <= width <= 20_000:
        raise ValidationError("width", width, "expected a number of pixels from 400 to 20000")
    if str(ticks) not in _SEVERITY_RANK:
        raise ValidationError("ticks", ticks, f"expected one of {', '.join(_SEVERITY_RANK)}")
    ticks = str(ticks)
    lanes_streams = _streams(streams)
    if fit:
        since_ms, until_ms = _fit(lanes_streams, since_ms, until_ms)
    detail = _segment_estimate(lanes_streams, since_ms, until_ms) <= DETAIL_SEGMENTS
    pixel_ms = (until_ms - since_ms) / (width - LABEL_PX - RIGHT_PX)
    zone = local_zone()
    system = _system_events(since_ms, until_ms)
    lanes = tuple(
        _lane(stream, since_ms, until_ms, pixel_ms, tolerance, now_ms, system, zone, ticks, detail)
        for stream in lanes_streams
    )
    markers = tuple(_marker(event, zone) for event in system)
    return Timeline(
        since=since_ms,
        until=until_ms,
        pixel_ms=pixel_ms,
        width=width,
        lanes=lanes,
        markers=markers,
        query_seconds=time.perf_counter() - started,
    )


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while ``collect`` builds a timeline, then as it was.

    A week of 1,000 lanes is a million short-lived rows and hundreds of
    thousands of ticks, spans and pieces that live until the picture is
    done and make no cycles; each full collection walked all of them again
    (0.75 s of the 5.9 s ``collect`` took on the benchmark's week).
    Reference counting still frees everything as usual; only cycles made
    meanwhile, by any thread, wait until the collector runs again.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _streams(streams: Iterable[Stream | int | str] | None) -> list[Stream]:
    if streams is None:
        return list(Stream.select().where(Stream.removed_at.is_null()).order_by(Stream.name, Stream.id))
    if isinstance(streams, (Stream, int, str)):
        streams = [streams]
    found = [resolve_stream(item, f"streams[{i}]") for i, item in enumerate(streams)]
    return list({stream.id: stream for stream in found}.values())


def _segment_estimate(streams: list[Stream], since_ms: int, until_ms: int) -> int:
    """Segments of ``streams`` started on the UTC days the window touches (the usage summary: one query)."""
    if not streams:
        return 0
    first = from_millis(since_ms).date()
    last = from_millis(until_ms - 1).date() + dt.timedelta(days=1)
    rows = storage_usage("stream", since=first, until=last, streams=[s.id for s in streams])
    return sum(row.segments for row in rows)


def _fit(streams: list[Stream], since_ms: int, until_ms: int) -> tuple[int, int]:
    """The part of [since, until) with segments or events of ``streams``, plus 5% on each side."""
    lows: list[int] = []
    highs: list[int] = []
    for stream in streams:
        # Open segments count up to their last checkpoint, not up to now.
        for start, end, _state in segment_states(
            stream, from_millis(since_ms), from_millis(until_ms), now=from_millis(0)
        ):
            lows.append(start)
            highs.append(max(start, end))
        page = events(stream=stream, since=from_millis(since_ms), until=from_millis(until_ms), limit=1)
        if page.events:
            highs.append(to_millis(page.events[0].ts))
    for event in _system_events(since_ms, until_ms):
        highs.append(event.at)
    if not lows:
        return since_ms, until_ms
    low, high = max(since_ms, min(lows)), min(until_ms, max(highs + lows))
    margin = max((high - low) // 20, 500)
    return max(since_ms, low - margin), min(until_ms, high + margin)


def _system_events(since_ms: int, until_ms: int) -> list[SystemEvent]:
    found = []
    for kind in (EventType.RESTORED.value, EventType.CLEAN_SHUTDOWN.value):
        for event in _all_events(type=kind, since=since_ms, until=until_ms):
            if event.stream_id is not None:
                continue
            data = event.data if isinstance(event.data, dict) else {}
            clean = data.get("clean_shutdown") if kind == EventType.RESTORED.value else True
            found.append(SystemEvent(to_millis(event.ts), kind, clean))
    return sorted(found, key=lambda e: e.at)


def _all_events(*, limit: int = 100_000, since: int, until: int, **filters: Any) -> list[Any]:
    """Events (newest first) through ``history.events``' pages, at most ``limit``."""
    rows: list[Any] = []
    cursor = None
    while len(rows) < limit:
        page = events(
            since=from_millis(since),
            until=from_millis(until),
            cursor=cursor,
            limit=min(MAX_PAGE, limit - len(rows)),
            **filters,
        )
        rows.extend(page.events)
        cursor = page.next_cursor
        if cursor is None:
            break
    return rows


def _marker(event: SystemEvent, zone: dt.tzinfo) -> Marker:
    when = _clock(event.at, zone)
    if event.type == EventType.CLEAN_SHUTDOWN.value:
        return Marker(event.at, "shutdown", f"{when} recorder stopped cleanly")
    if event.clean is False:
        return Marker(event.at, "crash", f"{when} recorder restarted after a crash")
    return Marker(event.at, "restart", f"{when} recorder started")


def _tuples(query: Any) -> Iterable[tuple[Any, ...]]:
    """Rows of a ``.tuples()`` query, typed as what they are (peewee's stubs say models)."""
    return cast(Iterable[tuple[Any, ...]], query)


# Display names of segment states; None is how read_states reads "complete".
_SHOWN: dict[str | None, str] = {SegmentState.RECORDING.value: "open", None: SegmentState.COMPLETE.value}
_COMPLETE = SegmentState.COMPLETE.value


def _shown(state: str | None) -> str:
    return _SHOWN.get(state) or cast(str, state)


def _display_state(state: str, archived: bool, open_: bool) -> str:
    if open_:
        return "open"
    if archived and state == _COMPLETE:
        return "archived"
    return _SHOWN.get(state, state)


def _lane(
    stream: Stream,
    since_ms: int,
    until_ms: int,
    pixel_ms: float,
    tolerance: dt.timedelta,
    now_ms: int,
    system: list[SystemEvent],
    zone: dt.tzinfo,
    tick_severity: str,
    detail: bool,
) -> Lane:
    # Before a stream was registered (or after it was removed) is not a
    # hole; segments dated earlier than the registration (imported, backfilled)
    # still start the lane.
    start = since_ms
    end = min(until_ms, to_millis(stream.removed_at)) if stream.removed_at else until_ms
    if end <= start:
        return Lane(stream.id, stream.name, since_ms, since_ms, (), (), (), (), 0)
    segments: list[Segment] | None = None
    rows: Any = []
    states: SegmentStates | None = None
    if detail:
        segments = whole = _segments(stream, start, end, now_ms)
        first = whole[0].start if whole else None
        spans = merge_spans(whole, pixel_ms)
    else:
        # One read of the index for the spans and the holes: coverage_of_states
        # decides the holes from the same rows, by coverage's rules.
        states = read_runs(stream, from_millis(start), from_millis(end), now=from_millis(now_ms))
        ordered = states.merged()
        first = ordered[0][0] if ordered else None
        spans = merge_states(ordered, pixel_ms)
        # Enough for explain_hole's first look; no number (-1), no path.
        rows = _LazySegments(ordered)
    created = to_millis(stream.created_at) if stream.created_at else start
    start = max(start, min(created, first) if first is not None else created)
    if end <= start:
        return Lane(stream.id, stream.name, end, end, (), (), (), (), 0)
    since, until = from_millis(start), from_millis(end)
    if states is None:
        cover = coverage(stream, since, until, tolerance=tolerance, now=from_millis(now_ms), reasons=True)
    else:
        cover = coverage_of_states(stream, states, since, until, tolerance=tolerance, reasons=True)
    read = _lane_events(stream, start, end, pixel_ms, tick_severity)
    explain = functools.partial(
        explain_hole,
        health=read.health,
        system=system,
        statuses=read.statuses,
        clock_events=read.clock_events,
        zone=zone,
    )
    holes = []
    for gap, nearby in _near_gaps(segments if segments is not None else rows, cover.gaps):
        gap_start, gap_end = to_millis(gap.start), to_millis(gap.end)
        told = [reason.message for reason in gap.reasons]
        if segments is not None:
            holes.append(
                explain(gap_start, gap_end, segments=nearby + _neighbours(stream, nearby), told=told)
            )
            continue
        hole = explain(gap_start, gap_end, segments=nearby, told=told)
        if hole.reason not in ("down", "unhealthy") and nearby:
            # Read from the index alone, the segments have no numbers or
            # paths: unless an event already explains the hole, read the few
            # around it whole, for the clock check and the missing files' names:
            # those overlapping the hole and its slack (the one that ended where
            # it begins among them), not the whole hour a run before it spans.
            whole = _segments(
                stream, max(nearby[0].start, gap_start - DOWN_SLACK_MS), nearby[-1].start + 1, now_ms
            )
            hole = explain(gap_start, gap_end, segments=whole + _neighbours(stream, whole), told=told)
        holes.append(hole)
    return Lane(
        stream_id=stream.id,
        name=stream.name,
        start=start,
        end=end,
        spans=tuple(spans),
        holes=tuple(holes),
        health=tuple(read.health),
        ticks=tuple(read.ticks),
        recorded_ms=cover.recorded // dt.timedelta(milliseconds=1),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _LaneEvents:
    """What a lane shows or explains its holes with from the event table."""

    health: list[HealthPiece]
    statuses: list[StatusChange]
    clock_events: list[tuple[int, str]]
    ticks: list[Tick]


def _lane_events(stream: Stream, start: int, end: int, pixel_ms: float, tick_severity: str) -> _LaneEvents:
    events = _events(stream.id, start, end)
    health = _health(stream, start, end, events)
    statuses = [
        StatusChange(at, new, reason) for at, kind, _, _, new, reason in events if kind == "status_changed"
    ]
    clock_events = [(at, message or kind) for at, kind, _, message, _, _ in events if "clock" in kind]
    shown = _SEVERITY_RANK[tick_severity]
    health_changed = EventType.HEALTH_CHANGED.value
    ticks = _merge_tick_rows(
        (
            (at, kind, severity, message or kind, 1)
            for at, kind, severity, message, _, _ in events
            if kind != health_changed  # the health band shows those
            and _SEVERITY_RANK.get(severity, 1) >= shown
        ),
        pixel_ms * TICK_PX,
    )
    return _LaneEvents(health, statuses, clock_events, ticks)


class _Prepared:
    """A query peewee builds once, run again with other values where its marker values were.

    Building a query costs peewee about a millisecond, more than running
    these ones: a week of 1,000 lanes ran thousands of them. ``build`` takes
    one value per marker and returns the query; the markers are values no
    caller passes (large, distinct), so each of the query's parameters that
    equals one is that argument's place. The SQL is kept per database class
    (SQLite and PostgreSQL write it differently).
    """

    MARKERS = (987_654_321_987, 1_111_111_111_111, 1_222_222_222_222, 3_333_333_333)

    def __init__(self, build: Any, arity: int):
        self.build = build
        self.markers = self.MARKERS[:arity]
        self.made: dict[tuple[type, str], tuple[str, list[Any], list[int]]] = {}

    def rows(self, *values: Any) -> list[tuple[Any, ...]]:
        db = current_database()
        key = (type(db), db.param)
        if key not in self.made:
            sql, params = self.build(*self.markers).sql()
            slots = [self.markers.index(p) if p in self.markers else -1 for p in params]
            if set(range(len(self.markers))) - set(slots):  # an argument went elsewhere: no template
                return _raw(self.build(*values))
            self.made[key] = (sql, list(params), slots)
        sql, params, slots = self.made[key]
        bound = [values[slot] if slot >= 0 else param for param, slot in zip(params, slots, strict=True)]
        return list(db.execute_sql(sql, bound).fetchall())


def _raw(query: Any) -> list[tuple[Any, ...]]:
    """A peewee query's rows as the driver returns them (stored values, no conversion)."""
    sql, params = query.sql()
    return list(query.model._meta.database.execute_sql(sql, params).fetchall())


def _events(stream_id: int, start: int, end: int) -> list[tuple[int, str, str, str | None, Any, Any]]:
    """(ts, type, severity, message, data's new, data's reason) of events in [start, end), oldest first.

    The newest ``MAX_TICKS_PER_LANE`` at most, read on the (stream, ts) index
    like ``history.events``, but as plain values: event models cost a
    hundred times more per row, and a week has thousands of events a lane.
    Only status and health changes have their data read (the JSON parsed).
    """
    rows = _LANE_EVENTS.rows(stream_id, start, end, MAX_TICKS_PER_LANE)
    rows.reverse()
    return cast(list[tuple[int, str, str, str | None, Any, Any]], rows)


_CHANGES = [EventType.STATUS_CHANGED.value, EventType.HEALTH_CHANGED.value]


def _lane_events_query(stream_id: int, start: int, end: int, limit: int) -> Any:
    def of_changes(value: Any) -> Any:
        return pw.Case(None, [(Event.type.in_(_CHANGES), value)], None)

    return (
        Event.select(
            Event.ts,
            Event.type,
            Event.severity,
            Event.message,
            of_changes(Event.data["new"].as_text()),
            of_changes(Event.data["reason"].as_text()),
        )
        .where((Event.stream == stream_id) & (Event.ts >= start) & (Event.ts < end))
        .order_by(Event.ts.desc(), Event.id.desc())
        .limit(limit)
    )


_LANE_EVENTS = _Prepared(_lane_events_query, 4)


def _health_before_query(stream_id: int, before: int) -> Any:
    """The last health change of a stream before a time: its data's new state and reason."""
    return (
        Event.select(Event.data["new"].as_text(), Event.data["reason"].as_text())
        .where(
            (Event.stream == stream_id) & (Event.type == EventType.HEALTH_CHANGED.value) & (Event.ts < before)
        )
        .order_by(Event.ts.desc(), Event.id.desc())
        .limit(1)
    )


_HEALTH_BEFORE = _Prepared(_health_before_query, 2)


def _health_changes_query(stream_id: int, start: int, end: int) -> Any:
    """(ts, new, reason) of a stream's health changes in [start, end), oldest first.

    The rows ``history.health_transitions`` reads, as plain values (it makes
    a datetime and an enum of each: most of the time of a busy lane).
    """
    return (
        Event.select(Event.ts, Event.data["new"].as_text(), Event.data["reason"].as_text())
        .where(
            (Event.stream == stream_id)
            # || '' keeps SQLite off the (type, ts) index: every stream's
            # health changes of the window, where the stream's own are few.
            & (Event.type.concat("") == EventType.HEALTH_CHANGED.value)
            & (Event.ts >= start)
            & (Event.ts < end)
        )
        .order_by(Event.ts, Event.id)
    )


_HEALTH_CHANGES = _Prepared(_health_changes_query, 3)


def _segments_query(stream_id: int, start: int, end: int) -> Any:
    return recordings(Stream(id=stream_id), from_millis(start), from_millis(end)).select(
        Recording.segment_index,
        Recording.started_at,
        Recording.ended_at,
        Recording.checkpoint_at,
        Recording.state,
        Recording.archived,
        Recording.size_bytes,
        Recording.path,
    )


_SEGMENTS = _Prepared(_segments_query, 3)


def _segments(stream: Stream, start: int, end: int, now_ms: int) -> list[Segment]:
    """The segments of ``history.recordings`` with their index, state, size and path."""
    found = []
    # The query's own SQL on the cursor: times come back as the stored epoch
    # ms, with none of peewee's per-row conversion (20 us a row, most of the
    # time of a week of segments).
    rows = _SEGMENTS.rows(stream.id, start, end)
    for index, started, ended, checkpoint, state, archived, size, path in rows:
        # An open segment reaches now or its last checkpoint, as coverage counts it.
        seg_end = ended if ended is not None else max(now_ms, checkpoint or 0)
        display = _display_state(state, bool(archived), open_=ended is None)
        found.append(Segment(index, started, seg_end, display, size or 0, path))
    return found


class _LazySegments:
    """(start, end, state, segments) entries as Segments (number -1, no path) where sliced: near a hole."""

    def __init__(self, rows: list[tuple[int, int, str | None, int]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> list[Segment]:
        return [Segment(-1, a, b, _shown(state), 0, "") for a, b, state, _n in self.rows[part]]

    def start(self, i: int) -> int:
        return self.rows[i][0]


def _row_start(row: tuple[Any, ...]) -> Any:
    return row[0]


def _segment_start(segment: Segment) -> int:
    return segment.start


def _near_gaps(segments: Any, gaps: Sequence[Gap]) -> list[tuple[Gap, list[Segment]]]:
    """Each gap with the segments around it (``segments``: a list of Segment or _LazySegments, by start).

    A bisection finds the few segments before the gap (the one that ended
    where it begins is among them), those starting inside it and the first
    one after it, so a week of segments is not scanned once per hole.
    """
    if isinstance(segments, _LazySegments):
        items: Sequence[Any] = segments.rows
        key: Any = _row_start
    else:
        items, key = segments, _segment_start
    found = []
    for gap in gaps:
        gap_start, gap_end = to_millis(gap.start), to_millis(gap.end)
        lo = max(0, bisect.bisect_left(items, gap_start - DOWN_SLACK_MS, key=key) - NEAR_BEFORE)
        hi = min(bisect.bisect_left(items, gap_end, key=key) + 1, len(items))
        hi = max(hi, bisect.bisect_right(items, gap_end + DOWN_SLACK_MS, key=key))
        found.append((gap, segments[lo:hi]))
    return found


def _neighbours(stream: Stream, segments: list[Segment]) -> list[Segment]:
    """Segments numbered inside the window's index range but dated outside it (a clock that stepped).

    Two index probes: segment indexes only grow, so a row numbered between
    two of the window's segments belongs between them in time.
    """
    if not segments:
        return []
    low = min(s.index for s in segments)
    high = max(s.index for s in segments)
    seen = {s.index for s in segments}
    if high - low + 1 == len(seen):
        return []
    rows = (
        Recording.select(
            Recording.segment_index,
            Recording.started_at,
            Recording.ended_at,
            Recording.state,
            Recording.archived,
            Recording.size_bytes,
            Recording.path,
        )
        .where(
            (Recording.stream == stream.id)
            & (Recording.segment_index > low)
            & (Recording.segment_index < high)
            & Recording.segment_index.not_in(sorted(seen))
        )
        .limit(10_000)
    )
    found = []
    for index, started, ended, state, archived, size, path in _raw(rows):
        seg_start = started
        seg_end = ended if ended is not None else seg_start
        found.append(
            Segment(
                index,
                seg_start,
                seg_end,
                _display_state(state, bool(archived), ended is None),
                size or 0,
                path,
            )
        )
    return found


def _health(
    stream: Stream, start: int, end: int, lane_events: list[tuple[int, str, str, str | None, Any, Any]]
) -> list[HealthPiece]:
    """The health band: the state at ``start`` (the last change before it), then each change.

    The changes come from the lane's events (``_events``, read once: the
    same rows ``history.health_transitions`` reads, in the same order),
    unless those were cut at ``MAX_TICKS_PER_LANE``; then from a query of
    the health changes alone, so the band is never cut.
    """
    state, reason = HealthState.UNKNOWN.value, None
    for new, why in _HEALTH_BEFORE.rows(stream.id, start):
        state, reason = str(new or state), why
    kind = EventType.HEALTH_CHANGED.value
    if len(lane_events) < MAX_TICKS_PER_LANE:
        changes: Iterable[tuple[int, Any, Any]] = [
            (at, new, why) for at, type_, _, _, new, why in lane_events if type_ == kind
        ]
    else:
        changes = _HEALTH_CHANGES.rows(stream.id, start, end)
    pieces: list[HealthPiece] = []
    at = start
    for change_ms, new, why in changes:
        if change_ms > at:
            pieces.append(HealthPiece(at, change_ms, state, reason))
        at = max(at, change_ms)
        state, reason = str(new or HealthState.UNKNOWN.value), why
    if end > at:
        pieces.append(HealthPiece(at, end, state, reason))
    return pieces


# --- time for people -------------------------------------------------------------------------------------


def local_zone() -> dt.tzinfo:
    """The zone the operator reads: $TZ, else /etc/localtime's name, else the current UTC offset.

    A named zone (not a fixed offset) keeps the axis right across a
    daylight-saving change inside the window.
    """
    names = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.readlink("/etc/localtime")
        names.append(target.split("zoneinfo/", 1)[-1])
    except OSError:
        pass
    for name in names:
        if name:
            try:
                return zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
                continue
    return dt.datetime.now().astimezone().tzinfo or dt.UTC


def zone_label(zone: dt.tzinfo, at_ms: int) -> str:
    """``Europe/Berlin (CET, UTC+01:00)``, or ``UTC``."""
    when = from_millis(at_ms).astimezone(zone)
    offset = when.strftime("%z")
    offset = f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"
    key = getattr(zone, "key", None)
    abbreviation = when.tzname() or offset
    if key in ("UTC", "Etc/UTC") or (key is None and offset in ("UTC+00:00", "UTC")):
        return "UTC"
    return f"{key} ({abbreviation}, {offset})" if key else f"{abbreviation} ({offset})"


def _clock(ms: int, zone: dt.tzinfo | None, date: bool = False) -> str:
    when = from_millis(ms).astimezone(zone or local_zone())
    text = when.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")
    return f"{text}.{when.microsecond // 1000:03d}"


# --- drawing ---------------------------------------------------------------------------------------------


def require_plot() -> None:
    """Raise ``PlotUnavailable`` (saying what to install) unless matplotlib can be imported."""
    _matplotlib()


def _matplotlib() -> Any:
    try:
        import matplotlib
        import matplotlib.dates
        import matplotlib.figure
    except ImportError as exc:
        raise PlotUnavailable() from exc
    return matplotlib


def _lane_px(lanes: int) -> int:
    return max(10, min(44, 900 // max(lanes, 1)))


@dataclasses.dataclass
class _Drawn:
    """A figure and what the SVG and HTML outputs need to know about its artists."""

    figure: Any
    titles: dict[str, str]  # gid -> text for a <title>
    lane_rows: list[tuple[float, float]]  # each lane's top and bottom in figure pixels from the top
    plot_x: tuple[float, float]  # the axes' left and right in figure pixels


def draw(timeline: Timeline, *, title: str | None = None) -> Any:
    """The matplotlib Figure of a timeline (see ``render`` for a file)."""
    return _draw(timeline, title=title).figure


def _draw(timeline: Timeline, *, title: str | None = None, elements: bool = True) -> _Drawn:
    mpl = _matplotlib()
    import numpy as np
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    zone = local_zone()
    lanes = timeline.lanes
    n = max(len(lanes), 1)
    lane_px = _lane_px(n)
    height_px = HEADER_PX + FOOTER_PX + n * lane_px
    width_px = timeline.width
    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    left = LABEL_PX / width_px
    right = 1 - RIGHT_PX / width_px
    bottom = FOOTER_PX / height_px
    top = 1 - HEADER_PX / height_px
    ax = figure.add_axes((left, bottom, right - left, top - bottom))
    epoch = mpl.dates.date2num(dt.datetime(1970, 1, 1, tzinfo=dt.UTC))

    def x(ms: float) -> float:
        return epoch + ms / 86_400_000

    min_w = timeline.pixel_ms / 86_400_000  # a pixel in axis units
    titles: dict[str, str] = {}
    font = 9 if lane_px >= 16 else max(4, lane_px - 4)

    # Lane geometry in axis units: lane i is centred on y = i, top lane first.
    span_lo, span_hi = SPAN_LO, SPAN_HI
    band_lo, band_hi = 0.22, 0.40
    tick_lo, tick_hi = -0.46, -0.30
    markers_lines = []
    x_lo, x_hi = x(timeline.since), x(timeline.until)
    # The artists are few and big (a collection per lane for its spans, one
    # for all health bands, one for all ticks, one for the stripes), and
    # none updates the data limits: that is what keeps 1,000 lanes fast.
    stripes = [
        [(x_lo, i - 0.5), (x_hi, i - 0.5), (x_hi, i + 0.5), (x_lo, i + 0.5)] for i in range(1, len(lanes), 2)
    ]
    ax.add_collection(
        PolyCollection(stripes, facecolors="#f4f4f4", edgecolors="none", zorder=0), autolim=False
    )
    # A group per hole is for SVG and HTML (its <title>, the hover); in a
    # PNG one collection per reason draws the same pixels much faster.
    separate_holes = elements and sum(len(lane.holes) for lane in lanes) <= MAX_HOLE_ARTISTS
    bands, band_colours = [], []
    tick_x, tick_y, tick_colours = [], [], []
    hole_boxes: dict[str, list] = {}
    for i, lane in enumerate(lanes):
        gid = f"lane-{i}"
        # A group per lane (its <title> names the stream) where the output
        # keeps groups; one collection for every lane in a PNG.
        if elements:
            boxes: list[Any] = []
            colours: list[str] = []
            for span in lane.spans:
                x0, x1 = x(span.start), x(span.end)
                x1 = max(x1, x0 + min_w)
                boxes.append([(x0, i + span_lo), (x1, i + span_lo), (x1, i + span_hi), (x0, i + span_hi)])
                colours.append(SPAN_COLOURS.get(span.state, "#737373"))
            spans = PolyCollection(boxes, facecolors=colours, edgecolors="none", linewidths=0, gid=gid)
            ax.add_collection(spans, autolim=False)
        titles[gid] = (
            f"{lane.name}: {sum(s.segments for s in lane.spans)} segment(s), "
            f"{format_size(sum(s.size_bytes for s in lane.spans))}, "
            f"{format_duration(lane.recorded_ms / 1000)} recorded, "
            f"{len(lane.holes)} hole(s)"
        )
        for piece in lane.health if elements else ():
            x0, x1 = x(piece.start), max(x(piece.end), x(piece.start) + min_w)
            bands.append([(x0, i + band_lo), (x1, i + band_lo), (x1, i + band_hi), (x0, i + band_hi)])
            band_colours.append(HEALTH_COLOURS.get(piece.health, "#e0e0e0"))
        for k, hole in enumerate(lane.holes):
            x0 = x(hole.start)
            w = max(x(hole.end) - x0, min_w)
            if not elements:
                continue  # painted with the spans
            if not separate_holes:
                box = [(x0, i + span_lo), (x0 + w, i + span_lo), (x0 + w, i + span_hi), (x0, i + span_hi)]
                hole_boxes.setdefault(hole.reason, []).append(box)
                continue
            gid = f"hole-{i}-{k}"
            # add_artist, not add_patch: no data-limit update per hole.
            ax.add_artist(
                Rectangle(
                    (x0, i + span_lo),
                    w,
                    span_hi - span_lo,
                    facecolor="white",
                    edgecolor=HOLE_COLOURS[hole.reason],
                    hatch="////",
                    linewidth=0.6,
                    gid=gid,
                )
            )
            titles[gid] = (
                f"{lane.name}: hole {_clock(hole.start, zone)} - {_clock(hole.end, zone)} "
                f"({format_duration((hole.end - hole.start) / 1000)}): {hole.detail}"
            )
        for tick in lane.ticks if elements else ():
            tick_x.append(x(tick.at))
            tick_y.append(i + (tick_lo + tick_hi) / 2)
            tick_colours.append(SEVERITY_COLOURS.get(tick.severity, "#737373"))
    if not elements:
        # A PNG: spans and health bands painted into an image of exactly the
        # axes' pixels (a few hundred thousand rectangles cost seconds as
        # paths, a tenth of that as array slices).
        image = _raster_image()(
            ax,
            extent=(x_lo, x_hi, n - 0.5, -0.5),
            origin="upper",
            interpolation="none",
            zorder=1,
            gid="spans",
        )
        image.set_data(_raster(timeline, lane_px, (span_lo, span_hi), (band_lo, band_hi), (tick_lo, tick_hi)))
        ax.add_image(image)
    for reason, boxes in hole_boxes.items():
        gid = f"holes-{reason.replace(' ', '-')}"
        ax.add_collection(
            PolyCollection(
                boxes,
                facecolors="white",
                edgecolors=HOLE_COLOURS[reason],
                hatch="////",
                linewidths=0.6,
                gid=gid,
            ),
            autolim=False,
        )
        titles[gid] = f"{len(boxes)} hole(s): {reason} (the HTML page tells each one's reason)"
    if bands:
        ax.add_collection(
            PolyCollection(bands, facecolors=band_colours, edgecolors="none", gid="health"), autolim=False
        )
    if tick_x:
        # One marker path stamped at every tick: far cheaper than a line each.
        tick_pt = (tick_hi - tick_lo) * lane_px * 72 / DPI
        ax.scatter(
            np.asarray(tick_x),
            np.asarray(tick_y),
            s=tick_pt**2,
            marker="|",
            c=tick_colours,
            linewidths=1.2,
            gid="ticks",
            zorder=3,
        )
    for k, marker in enumerate(timeline.markers):
        gid = f"marker-{k}"
        colour = MARKER_COLOURS[marker.kind]
        ax.axvline(x(marker.at), color=colour, linestyle="--", linewidth=1.0, gid=gid)
        titles[gid] = marker.message
        markers_lines.append(marker)
    # Name a few markers above the lanes, stepping labels that would overlap.
    if 0 < len(timeline.markers) <= MAX_MARKER_LABELS:
        plot_px = width_px - LABEL_PX - RIGHT_PX
        last_px: dict[int, float] = {}
        for marker in sorted(timeline.markers, key=lambda m: m.at):
            px = (marker.at - timeline.since) / (timeline.until - timeline.since) * plot_px
            row = next((r for r in range(3) if px - last_px.get(r, -1e9) > 170), 0)
            last_px[row] = px
            ax.annotate(
                MARKER_LABELS[marker.kind],
                xy=(x(marker.at), 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, 24 + 10 * row),
                textcoords="offset points",
                fontsize=7,
                color=MARKER_COLOURS[marker.kind],
                annotation_clip=False,
            )

    ax.set_xlim(x(timeline.since), x(timeline.until))
    ax.set_ylim(n - 0.5, -0.5)
    # The lanes' names where y tick labels would be (right-aligned, the
    # default pad left of the axes), as plain texts: a thousand ticks cost
    # matplotlib a second and a half of copied tick properties.
    ax.set_yticks([])
    name_at, va, ha = ax.get_yaxis_text1_transform(mpl.rcParams["ytick.major.pad"])
    for i, lane in enumerate(lanes):
        ax.text(0, i, lane.name, transform=name_at, va=va, ha=ha, fontsize=font, clip_on=False)
    locator = mpl.dates.AutoDateLocator(tz=zone, minticks=4, maxticks=12)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mpl.dates.ConciseDateFormatter(locator, tz=zone))
    ax.tick_params(axis="x", labeltop=True, top=True, labelsize=8)
    ax.grid(axis="x", color="#d9d9d9", linewidth=0.5)
    ax.set_axisbelow(True)
    zone_text = zone_label(zone, timeline.until)
    ax.set_xlabel(f"local time, {zone_text}", fontsize=9)
    heading = title or (
        f"Recording timeline, {len(lanes)} stream(s), "
        f"{_clock(timeline.since, zone, date=True)[:19]} to {_clock(timeline.until, zone, date=True)[:19]}"
    )
    figure.suptitle(heading, x=left, y=1 - 12 / height_px, ha="left", va="top", fontsize=11)
    for side in ("right", "left"):
        ax.spines[side].set_visible(False)

    used_spans = {s.state for lane in lanes for s in lane.spans} | {"complete", "interrupted", "failed"}
    used_holes = {h.reason for lane in lanes for h in lane.holes}
    handles: list[Any] = [
        Patch(facecolor=SPAN_COLOURS[s], label=f"segment {s}") for s in SPAN_COLOURS if s in used_spans
    ]
    handles += [
        Patch(facecolor="white", edgecolor=HOLE_COLOURS[r], hatch="////", label=f"hole: {r}")
        for r in HOLE_REASONS
        if r in used_holes or r in ("down", "unhealthy")
    ]
    handles += [Patch(facecolor=HEALTH_COLOURS[h], label=f"health {h}") for h in HEALTH_COLOURS]
    from matplotlib.lines import Line2D

    handles += [
        Line2D([], [], color=SEVERITY_COLOURS[s], label=f"event {s}") for s in ("info", "warning", "error")
    ]
    kinds = {m.kind for m in markers_lines}
    handles += [
        Line2D(
            [],
            [],
            color=MARKER_COLOURS[k],
            linestyle="--",
            label=MARKER_LABELS[k],
        )
        for k in ("crash", "restart", "shutdown")
        if k in kinds
    ]
    legend = figure.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(left, 4 / height_px),
        ncol=min(6, len(handles)),
        fontsize=8,
        frameon=False,
    )
    legend.set_gid("legend")

    # Where the lanes are, for the HTML hover: figure pixels from the top.
    lane_rows = []
    for i in range(len(lanes)):
        y_top = ax.transData.transform((0, i - 0.5))[1]
        y_bottom = ax.transData.transform((0, i + 0.5))[1]
        lane_rows.append((height_px - y_top, height_px - y_bottom))
    x_left = ax.transData.transform((x(timeline.since), 0))[0]
    x_right = ax.transData.transform((x(timeline.until), 0))[0]
    return _Drawn(figure, titles, lane_rows, (x_left, x_right))


def _raster(
    timeline: Timeline,
    lane_px: int,
    span: tuple[float, float],
    band: tuple[float, float],
    tick: tuple[float, float],
) -> Any:
    """RGBA pixels of the lanes' spans, holes, health bands, ticks: lane_px rows a lane, a pixel a column.

    Each band of a lane (ticks, spans, health) is one row of colours
    repeated over its pixel rows: a column shows the last item painted over
    it (``_owners``), as if each were painted in turn; only holes, whose
    hatch runs across rows, are painted one by one.
    """
    import numpy as np
    from matplotlib.colors import to_rgba

    columns = timeline.width - LABEL_PX - RIGHT_PX
    lanes = max(len(timeline.lanes), 1)
    image = np.zeros((lanes * lane_px, columns, 4), dtype=np.uint8)
    scale = columns / (timeline.until - timeline.since)
    since = timeline.since
    # Index 0 is transparent: a column no item reaches.
    names: dict[str, int] = {}
    palette: list[tuple[int, ...]] = [(0, 0, 0, 0)]

    def colour(name: str) -> int:
        if name not in names:
            names[name] = len(palette)
            palette.append(tuple(round(255 * c) for c in to_rgba(name)))
        return names[name]

    def rows(i: int, part: tuple[float, float]) -> slice:
        return slice(round((i + 0.5 + part[0]) * lane_px), max(round((i + 0.5 + part[1]) * lane_px), 1))

    def columns_of(starts: list[int], ends: list[int]) -> tuple[Any, Any]:
        """Each item's [first, last + 1) columns: at least one, clipped to the plot (empty outside it)."""
        x0 = (np.asarray(starts, dtype=np.int64) - since) * scale
        x1 = (np.asarray(ends, dtype=np.int64) - since) * scale
        c0 = np.clip(np.floor(x0), 0, columns).astype(np.int64)
        # At least a pixel: an item left of the plot still shows in its first column.
        return c0, np.minimum(columns, np.maximum(c0 + 1, np.ceil(x1).astype(np.int64)))

    def paint_band(target: slice, c0: Any, c1: Any, shades: list[int]) -> None:
        if len(shades):
            owner = _owners(c0, c1, columns)
            shade = np.asarray([0, *shades], dtype=np.intp)[owner + 1]
            image[target] = np.asarray(palette, dtype=np.uint8)[shade][np.newaxis]

    # Palette indices by name, looked up once per item below (a million ticks).
    health_shade = {name: colour(value) for name, value in HEALTH_COLOURS.items()}
    span_shade = {name: colour(value) for name, value in SPAN_COLOURS.items()}
    tick_shade = {name: colour(value) for name, value in SEVERITY_COLOURS.items()}
    unknown_health, unknown_span, unknown_tick = colour("#e0e0e0"), colour("#737373"), colour("#737373")
    for i, lane in enumerate(timeline.lanes):
        span_rows, band_rows, tick_rows = rows(i, span), rows(i, band), rows(i, tick)
        health = lane.health
        c0, c1 = columns_of([p.start for p in health], [p.end for p in health])
        paint_band(band_rows, c0, c1, [health_shade.get(p.health, unknown_health) for p in health])
        spans = lane.spans
        c0, c1 = columns_of([s.start for s in spans], [s.end for s in spans])
        paint_band(span_rows, c0, c1, [span_shade.get(s.state, unknown_span) for s in spans])
        for hole in lane.holes:
            h0 = max(0, int((hole.start - since) * scale))
            h1 = min(columns, max(h0 + 1, int(-(-(hole.end - since) * scale // 1))))
            if h0 >= columns or h1 <= 0:
                continue
            block = image[span_rows, h0:h1]
            block[:] = palette[colour("white")]
            # A hole's hatch: white with diagonal stripes of its reason's colour.
            diagonal = np.add.outer(np.arange(span_rows.start, span_rows.stop), np.arange(h0, h1)) % HATCH_PX
            edge_colour = palette[colour(HOLE_COLOURS[hole.reason])]
            block[diagonal < 2] = edge_colour
            if h1 - h0 > 2:  # an outline, as the vector drawing has
                for edge in (block[0], block[-1], block[:, 0], block[:, -1]):
                    edge[:] = edge_colour
        ticks = lane.ticks
        if ticks:
            # int() of the position: toward zero, as a column index.
            x = (np.asarray([t.at for t in ticks], dtype=np.int64) - since) * scale
            at = np.trunc(x).astype(np.int64)
            inside = (at >= 0) & (at < columns)
            t0 = np.where(inside, at, np.where(at < 0, 0, columns))
            t1 = np.where(inside, at + 1, t0)
            shades = [tick_shade.get(t.severity, unknown_tick) for t in ticks]
            owner = _owners(t0, t1, columns)
            present = owner >= 0
            shade = np.asarray([0, *shades], dtype=np.intp)[owner + 1]
            image[tick_rows, present] = np.asarray(palette, dtype=np.uint8)[shade[present]]
    return image


@functools.cache
def _raster_image() -> Any:
    """An AxesImage for ``_raster``'s pixels, taken as they are.

    matplotlib checks an image for NaNs by building a masked copy of it
    (for a uint8 array, where no NaN can be) and resamples it through
    float copies: 3 s of the 9 s of a 1,000-lane PNG. Should matplotlib stop
    calling these hooks, it only gets slower, not wrong.
    """
    import numpy as np
    from matplotlib.image import AxesImage
    from matplotlib.transforms import IdentityTransform

    class RasterImage(AxesImage):
        @staticmethod
        def _normalize_image_array(A: Any) -> Any:
            return A

        def make_image(self, renderer: Any, magnification: float = 1.0, unsampled: bool = False) -> Any:
            # The pixels are the plot's own, one for one (the extent is the
            # axes' limits, the array the axes' size): drawn as they are,
            # not resampled through float copies of 16 million pixels.
            pixels: Any = self.get_array()
            box = self.axes.bbox
            if (
                not unsampled
                and magnification == 1.0
                and tuple(self.get_extent()) == (*self.axes.get_xlim(), *self.axes.get_ylim())
                and (box.x0, box.y0, box.width, box.height)
                == (round(box.x0), round(box.y0), pixels.shape[1], pixels.shape[0])
            ):
                # Rows bottom up, as the renderer counts them.
                return np.ascontiguousarray(pixels[::-1]), box.x0, box.y0, IdentityTransform()
            return super().make_image(renderer, magnification, unsampled)

    return RasterImage


def _owners(c0: Any, c1: Any, columns: int) -> Any:
    """For each column, the last item (by index) whose [c0, c1) covers it, or -1.

    Items in time order (the usual case: spans, health pieces and ticks are
    read by start) have both bounds non-decreasing; then the last item
    starting at or before a column is the only one that can be the last to
    cover it, and a binary search answers for every column at once.
    """
    import numpy as np

    owner = np.full(columns, -1, dtype=np.int64)
    if not len(c0):
        return owner
    if bool(np.all(c0[1:] >= c0[:-1])) and bool(np.all(c1[1:] >= c1[:-1])):
        every = np.arange(columns)
        last = np.searchsorted(c0, every, side="right") - 1
        covered = (last >= 0) & (c1[np.maximum(last, 0)] > every)
        owner[covered] = last[covered]
        return owner
    for k in range(len(c0)):
        owner[c0[k] : c1[k]] = k
    return owner


# --- files -------------------------------------------------------------------------------------------


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
    fmt = _format(out, format) if out is not None or format is not None else None
    _check_out(out)
    _matplotlib()  # say what to install before reading anything
    if timeline is None:
        timeline = collect(streams, since, until, width=width, tolerance=tolerance, now=now, fit=fit)
    drawn = _draw(timeline, title=title, elements=_wants_elements(fmt, timeline))
    if fmt is None:
        return drawn.figure
    data = _encode(drawn, timeline, fmt)
    if out is None:
        return data
    return _write(out, data)


def _check_out(out: str | os.PathLike[str] | None) -> None:
    """Refuse an ``out`` that cannot be a new file before anything is read or drawn."""
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise ValidationError("out", str(out), "is a directory; give a file name")
    if not path.parent.is_dir():
        raise ValidationError("out", str(out), f"directory {path.parent} does not exist")


def _write(out: str | os.PathLike[str], data: bytes) -> Path:
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
    fmt = _format(None, format)
    return _encode(_draw(timeline, title=title, elements=_wants_elements(fmt, timeline)), timeline, fmt)


def _wants_elements(fmt: str | None, timeline: Timeline) -> bool:
    """Whether holes are drawn as artists of their own (SVG groups with titles), not one collection."""
    if fmt in ("png", "pdf"):
        return False
    return not (fmt == "html" and _elements(timeline) > HTML_SVG_ELEMENTS)


def _format(out: Any, format: str | None) -> str:
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


def _encode(drawn: _Drawn, timeline: Timeline, fmt: str) -> bytes:
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
    svg = _svg(drawn)
    if fmt == "svg":
        return svg.encode("utf-8")
    return _html(drawn, timeline, svg).encode("utf-8")


def _elements(timeline: Timeline) -> int:
    return sum(
        len(lane.spans) + len(lane.holes) + len(lane.ticks) + len(lane.health) for lane in timeline.lanes
    )


_SVG = "http://www.w3.org/2000/svg"


def _svg(drawn: _Drawn) -> str:
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


def _html(drawn: _Drawn, timeline: Timeline, picture: str) -> str:
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


# --- storage per day ------------------------------------------------------------------------------------


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
    fmt = _format(out, format) if out is not None or format is not None else None
    _check_out(out)
    mpl = _matplotlib()
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
    drawn = _Drawn(figure, titles, [], (0.0, 0.0))
    if fmt == "svg":
        data = _svg(drawn).encode("utf-8")
    elif fmt == "html":
        # The bars' <title>s are the browser's own hover text.
        data = (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Storage per day</title>'
            f"</head><body>{_svg(drawn)}</body></html>"
        ).encode()
    else:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=DPI)
        data = buffer.getvalue()
    if out is None:
        return data
    return _write(out, data)
