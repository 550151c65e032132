"""``collect()``: what a timeline shows, read from the database through the history queries."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import datetime as dt
import functools
import gc
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import peewee as pw

from ..backends import current_database
from ..errors import ValidationError
from ..history import resolve_stream
from ..history.eventlog import MAX_PAGE, events
from ..history.segments import (
    DEFAULT_TOLERANCE,
    Gap,
    SegmentStates,
    coverage,
    coverage_of_states,
    read_runs,
    recordings,
    segment_states,
)
from ..history.storage import storage_usage
from ..models import Event, Recording, Stream
from ..states import EventType, HealthState, Severity
from ..timeutil import from_millis, now_millis, to_millis
from .shapes import (
    DEFAULT_WIDTH,
    DOWN_SLACK_MS,
    LABEL_PX,
    RIGHT_PX,
    SEVERITY_RANK,
    TICK_PX,
    HealthPiece,
    Lane,
    Marker,
    Segment,
    StatusChange,
    SystemEvent,
    Tick,
    Timeline,
    display_state,
    explain_hole,
    merge_spans,
    merge_states,
    merge_tick_rows,
    shown_state,
)
from .zones import clock_text, local_zone

MAX_TICKS_PER_LANE = 5_000
# Up to this many segments in the window, each is read whole (hover shows
# paths and sizes, archived ones their own colour); beyond, spans come from
# the index alone (states and times: 5x cheaper) and only the segments around
# holes are read whole, to explain them.
DETAIL_SEGMENTS = 300_000
NEAR_BEFORE = 3  # segments before a hole looked at to explain it (they may overlap)


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


@_collector_paused()
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
    now_ms = now_millis() if now is None else to_millis(now, "now")
    until_ms = now_ms if until is None else to_millis(until, "until")
    since_ms = until_ms - 86_400_000 if since is None else to_millis(since, "since")
    if until_ms <= since_ms:
        raise ValidationError("until", from_millis(until_ms), f"must be after since={from_millis(since_ms)}")
    if isinstance(width, bool) or not isinstance(width, int) or not 400 <= width <= 20_000:
        raise ValidationError("width", width, "expected a number of pixels from 400 to 20000")
    if str(ticks) not in SEVERITY_RANK:
        raise ValidationError("ticks", ticks, f"expected one of {', '.join(SEVERITY_RANK)}")
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
    when = clock_text(event.at, zone)
    if event.type == EventType.CLEAN_SHUTDOWN.value:
        return Marker(event.at, "shutdown", f"{when} recorder stopped cleanly")
    if event.clean is False:
        return Marker(event.at, "crash", f"{when} recorder restarted after a crash")
    return Marker(event.at, "restart", f"{when} recorder started")


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
    shown = SEVERITY_RANK[tick_severity]
    health_changed = EventType.HEALTH_CHANGED.value
    ticks = merge_tick_rows(
        (
            (at, kind, severity, message or kind, 1)
            for at, kind, severity, message, _, _ in events
            if kind != health_changed  # the health band shows those
            and SEVERITY_RANK.get(severity, 1) >= shown
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
        display = display_state(state, bool(archived), open_=ended is None)
        found.append(Segment(index, started, seg_end, display, size or 0, path))
    return found


class _LazySegments:
    """(start, end, state, segments) entries as Segments (number -1, no path) where sliced: near a hole."""

    def __init__(self, rows: list[tuple[int, int, str | None, int]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> list[Segment]:
        return [Segment(-1, a, b, shown_state(state), 0, "") for a, b, state, _n in self.rows[part]]

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
                display_state(state, bool(archived), ended is None),
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
