"""Segments in a time range: which ones (``recordings``, ``latest_segments``) and what they
cover (``coverage``, ``gaps``).

Time-range queries over segments use a lower bound on the start:
``started_at >= since - longest``, where ``longest`` is the longest completed
segment of the stream, read from the partial index ``recording_long`` (the
database keeps it exact, whatever writes the rows). Open segments have no
length yet, so they come from their own small partial index in a second
branch of the query.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import functools
import json
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import peewee as pw

from ..backends import current_database, dialect
from ..errors import ValidationError
from ..models import Recording, Stream
from ..models.recording import LONG_SEGMENT_MS
from ..models.runs import decode_runs
from ..redact import redact_text
from ..states import EventType, SegmentState, Severity
from ..timeutil import HOUR_MS, from_millis, now_millis, to_millis
from ..validate import require_duration_ms
from ._args import resolve_stream, stream_ids, window

# LONG_SEGMENT_MS: segments longer than this are in the partial index
# recording_long; the bound of a time-range query is this or the longest of
# them. The literal is part of the index definition (migration 003).

# States whose file holds footage: these count as recorded time (an
# archiving segment's file is still there while it is copied). Failed,
# deleting and missing segments are holes.
COVERING_STATES = (
    SegmentState.RECORDING,
    SegmentState.COMPLETE,
    SegmentState.INTERRUPTED,
    SegmentState.ARCHIVING,
    SegmentState.RECOVERED,
)
# What covers among closed segments (a closed row still "recording" does
# not); an open segment covers whatever its state. coverage's SQL and
# coverage_of_states' filter both read this.
_COVERING_CLOSED = frozenset(state.value for state in COVERING_STATES if state != SegmentState.RECORDING)
DEFAULT_TOLERANCE = dt.timedelta(seconds=1)


# Events that explain a hole in the recording, and how long before the hole
# one may have been written (a health check that saw the stream go).
REASON_TYPES = (
    EventType.HEALTH_CHANGED,
    EventType.STATUS_CHANGED,
    EventType.SEGMENT_FAILED,
    EventType.SEGMENT_REPAIRED,
    EventType.RESTORED,
    EventType.CLEAN_SHUTDOWN,
    EventType.STREAM_REMOVED,
    EventType.DESIRED_CHANGED,
)
SYSTEM_REASON_TYPES = (EventType.RESTORED, EventType.CLEAN_SHUTDOWN)
REASON_LEAD_MS = 500
MAX_REASON_RANGES = 64  # holes looked up one index range each; more: one range over them all


@dataclasses.dataclass(frozen=True, slots=True)
class GapReason:
    """An event that explains a hole: a health or status change, a failed segment, a crash and restore."""

    at: dt.datetime
    type: str
    severity: Severity | str
    message: str
    stream_id: int | None  # None for system events (a restore, a clean shutdown)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON, credentials in the message masked."""
        return {
            "at": self.at,
            "type": self.type,
            "severity": self.severity,
            "message": redact_text(self.message),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Gap:
    """A hole in the recording: nothing with footage covers [start, end).

    ``reasons``: the events of the stream (and system events such as a
    restore after a crash) recorded from ``REASON_LEAD_MS`` before the hole
    to its end, oldest first: why nothing was recorded, as far as anyone said.
    """

    start: dt.datetime
    end: dt.datetime
    reasons: tuple[GapReason, ...] = ()

    @property
    def why(self) -> str:
        """The reasons in one line ("" when nobody said anything)."""
        return "; ".join(reason.message for reason in self.reasons)

    @property
    def duration(self) -> dt.timedelta:
        return self.end - self.start

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON (``stream-state gaps --json``), credentials masked."""
        return {
            "start": self.start,
            "end": self.end,
            "seconds": self.duration.total_seconds(),
            "why": redact_text(self.why),
            "reasons": [reason.as_dict() for reason in self.reasons],
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Coverage:
    """How much of [since, until) a stream has on disk, and the gaps in it."""

    stream_id: int
    since: dt.datetime
    until: dt.datetime
    recorded: dt.timedelta  # the union of the segments' time inside the window
    gaps: tuple[Gap, ...]  # holes at least as long as the tolerance, in order
    tolerance: dt.timedelta

    @property
    def window(self) -> dt.timedelta:
        return self.until - self.since

    @property
    def share(self) -> float:
        """Recorded share of the window, 0.0 to 1.0 (holes below the tolerance count as missing)."""
        return self.recorded / self.window

    @property
    def missing(self) -> dt.timedelta:
        """Total length of the reported gaps."""
        return sum((gap.duration for gap in self.gaps), dt.timedelta())

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON (``stream-state gaps --json``), credentials masked."""
        return {
            "since": self.since,
            "until": self.until,
            "min_gap_seconds": self.tolerance.total_seconds(),
            "gaps": [gap.as_dict() for gap in self.gaps],
            "recorded_seconds": self.recorded.total_seconds(),
            "window_seconds": self.window.total_seconds(),
            "recorded_share": self.share,
        }


def _bound_sql(p: str) -> str:
    """The longest completed segment of stream ``p`` (at least LONG_SEGMENT_MS), from recording_long.

    The WHERE repeats the partial index's own condition, so both backends
    can prove the index applies; MAX over its (stream, length) order is one
    index probe.
    """
    return (
        f'(SELECT COALESCE(MAX("ended_at" - "started_at"), {LONG_SEGMENT_MS}) FROM "recording" '
        f'WHERE "stream_id" = {p} AND ("ended_at" - "started_at") > {LONG_SEGMENT_MS} '
        'AND "clock_suspect" IS NULL)'
    )


def _overlap_sql(db: pw.Database, closed_columns: str, open_columns: str, extra_closed: str = "") -> str:
    """The two branches of "segments of a stream overlapping [since, until)".

    Parameters, in order: stream, until, since, stream (bound), since,
    [extra_closed's], stream, until.

    Closed segments: started_at in [since - longest, until) on the index
    (stream_id, started_at, ended_at, state), which also answers
    ``ended_at > since`` without reading the table. Open segments (ended_at
    NULL, no length to bound) come from the partial index recording_open.
    SQLite would rather walk the wider covering index over all of the
    stream's rows to find those, so it is told which index to use.
    """
    return f"{_closed_sql(db, closed_columns, extra_closed)} UNION ALL {_open_sql(db, open_columns)}"


def _closed_sql(db: pw.Database, columns: str, extra: str = "") -> str:
    """The closed branch of ``_overlap_sql``: parameters stream, until, since, stream, since."""
    p = db.param
    return (
        f'SELECT {columns} FROM "recording" WHERE "stream_id" = {p} AND "started_at" < {p} '
        f'AND "started_at" >= {p} - {_bound_sql(p)} AND "ended_at" > {p}{extra}'
    )


def _open_sql(db: pw.Database, columns: str) -> str:
    """The open branch of ``_overlap_sql``: parameters stream, until."""
    p = db.param
    open_index = dialect(db).index_hint("recording_open")
    return (
        f'SELECT {columns} FROM "recording"{open_index} '
        f'WHERE "stream_id" = {p} AND "ended_at" IS NULL AND "started_at" < {p}'
    )


def recordings(
    stream: Stream | int | str, since: dt.datetime, until: dt.datetime
) -> pw.ModelSelect[Recording]:
    """Segments of ``stream`` overlapping [since, until), open ones included, in recording order.

    A segment overlaps when it starts before ``until`` and ends after
    ``since``; an open segment (still being written) overlaps when it
    started before ``until``. The result is a query: add ``.where()``,
    ``.limit()``, ``.count()``, ``.tuples()``... Whatever the state: filter
    with ``.where(Recording.state == ...)``.
    """
    stream_id = resolve_stream(stream).id
    since_ms, until_ms = window(since, until)
    db = current_database()
    found = pw.SQL(
        _overlap_sql(db, '"id"', '"id"'),
        (stream_id, until_ms, since_ms, stream_id, since_ms, stream_id, until_ms),
    )
    return (
        Recording.select()
        .where(Recording.id.in_(pw.EnclosedNodeList([found])))
        .order_by(Recording.started_at, Recording.id)
    )


class SegmentRow(NamedTuple):
    """One segment as a listing shows it: plain values read from the cursor, no model.

    What ``segment_rows`` returns; the fields are ``Recording``'s, with times
    as aware UTC datetimes. A named tuple rather than a frozen dataclass:
    just as immutable, and built in a fifth of the time (a frozen
    dataclass's ``__init__`` sets each of its 16 fields through
    ``object.__setattr__``), which was most of a 1-hour listing's time once
    its pages were cached (bench/clustering.py). Being a tuple, it also
    unpacks and compares like one.
    """

    id: int
    stream_id: int
    path: str
    storage: str | None
    segment_index: int
    started_at: dt.datetime
    ended_at: dt.datetime | None
    size_bytes: int
    state: SegmentState | str
    archived: bool
    checkpoint_at: dt.datetime | None
    media_started_at: dt.datetime | None
    media_ended_at: dt.datetime | None
    frame_count: int | None
    finalized: bool | None
    metadata: dict[str, Any] | None

    @property
    def is_open(self) -> bool:
        return self.ended_at is None

    @property
    def duration(self) -> dt.timedelta | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


_ROW_COLUMNS = (
    '"id", "stream_id", "path", "storage", "segment_index", "started_at", "ended_at", '
    '"size_bytes", "state", "archived", "checkpoint_at", "media_started_at", "media_ended_at", '
    '"frame_count", "finalized", "metadata"'
)


def segment_rows(
    stream: Stream | int | str, since: dt.datetime, until: dt.datetime, limit: int | None = None
) -> list[SegmentRow]:
    """``recordings(stream, since, until)`` as lightweight rows, oldest first (``limit``: the first n).

    For listings that do not need models (the CLI, a UI): the rows are read
    straight from the cursor. At 10M recordings a 1-hour window (361 rows)
    takes 1-2 ms once its pages are cached, against about 20 ms as peewee
    models; a cold cache adds a disk read per row, because one stream's rows
    are spread over the table in insert order (bench/clustering.py, and the
    README on why the table is not clustered by stream).
    """
    stream_id = resolve_stream(stream).id
    since_ms, until_ms = window(since, until)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValidationError("limit", limit, "expected a positive int or None")
    db = current_database()
    sql = (
        f'SELECT * FROM ({_overlap_sql(db, _ROW_COLUMNS, _ROW_COLUMNS)}) AS found ORDER BY "started_at", "id"'
    )
    params: list[object] = [stream_id, until_ms, since_ms, stream_id, since_ms, stream_id, until_ms]
    if limit is not None:
        sql += f" LIMIT {db.param}"
        params.append(limit)
    states: dict[str, SegmentState | str] = {state.value: state for state in SegmentState}
    # Back-to-back segments: one's end is mostly the next one's start, so
    # each distinct time is converted once.
    times: dict[int, dt.datetime] = {}

    def stamp(millis: int) -> dt.datetime:
        found = times.get(millis)
        if found is None:
            found = times[millis] = from_millis(millis)
        return found

    make = SegmentRow._make
    rows = []
    for (
        row_id,
        row_stream,
        path,
        storage,
        index,
        started,
        ended,
        size,
        state,
        archived,
        checkpoint,
        media_started,
        media_ended,
        frames,
        finalized,
        metadata,
    ) in db.execute_sql(sql, params).fetchall():
        rows.append(
            make(
                (
                    row_id,
                    row_stream,
                    path,
                    storage,
                    index,
                    stamp(started),
                    None if ended is None else stamp(ended),
                    size,
                    states.get(state, state),
                    bool(archived),
                    None if checkpoint is None else from_millis(checkpoint),
                    None if media_started is None else stamp(media_started),
                    None if media_ended is None else stamp(media_ended),
                    frames,
                    None if finalized is None else bool(finalized),
                    # JSON text on SQLite, already parsed (jsonb) on PostgreSQL.
                    json.loads(metadata) if isinstance(metadata, str) else metadata,
                )
            )
        )
    return rows


def latest_segments(streams: Iterable[Stream | int | str] | None = None) -> pw.ModelSelect[Recording]:
    """The latest segment (highest segment index) of every stream, or of ``streams``, by stream id.

    One index probe per stream on (stream_id, segment_index). Streams without
    segments are absent; removed streams are included (their history stays).
    """
    ids = stream_ids(streams)
    last = Recording.alias("last_segment")
    latest_id = (
        last.select(last.id).where(last.stream == Stream.id).order_by(last.segment_index.desc()).limit(1)
    )
    owners = Stream.select(latest_id)
    if ids is not None:
        owners = owners.where(Stream.id.in_(ids))
    return Recording.select().where(Recording.id.in_(owners)).order_by(Recording.stream)


def coverage(
    stream: Stream | int | str,
    since: dt.datetime,
    until: dt.datetime,
    tolerance: dt.timedelta = DEFAULT_TOLERANCE,
    now: dt.datetime | None = None,
    *,
    reasons: bool = False,
) -> Coverage:
    """What share of [since, until) ``stream`` has on disk, and the gaps.

    Segments in ``COVERING_STATES`` count; failed, deleting and missing ones
    are holes. An open segment covers up to ``now`` (default: the current
    time) or its last checkpoint, whichever is later. A hole shorter than
    ``tolerance`` is not reported as a gap (a segmenter leaves a few
    milliseconds between files), but it is not recorded time either.
    Reads (start, end) of the window's segments from indexes only: about
    8,600 index entries for 24 hours of 10-second segments. Segments timed
    by their media (``media_started_at``) start and end where their frames
    do, so a stalled source is a hole here.

    With ``reasons`` each gap also carries the events that explain it
    (``Gap.reasons``): one more query, only when there are gaps.
    """
    stream_id = resolve_stream(stream).id
    since_ms, until_ms = window(since, until)
    tolerance_ms = require_duration_ms("tolerance", tolerance, positive=False)
    now_ms = now_millis() if now is None else to_millis(now, "now")
    db = current_database()
    p = db.param
    states = ", ".join(f"'{state}'" for state in sorted(_COVERING_CLOSED))
    greatest = dialect(db).greatest
    sql = (
        _overlap_sql(
            db,
            '"started_at", "ended_at"',
            # An open segment covers up to now or its last checkpoint.
            f'"started_at", {greatest}(COALESCE("checkpoint_at", 0), {p})',
            extra_closed=f' AND "state" IN ({states})',
        )
        + " ORDER BY 1"
    )
    # In the order the placeholders appear in the text.
    params = (stream_id, until_ms, since_ms, stream_id, since_ms, now_ms, stream_id, until_ms)
    rows = db.execute_sql(sql, params).fetchall()
    return _coverage(stream_id, rows, since_ms, until_ms, tolerance_ms, reasons)


def coverage_of_states(
    stream: Stream | int | str,
    states: SegmentStates,
    since: dt.datetime,
    until: dt.datetime,
    tolerance: dt.timedelta = DEFAULT_TOLERANCE,
    *,
    reasons: bool = False,
) -> Coverage:
    """``coverage`` of [since, until) from the segments ``read_states`` (or the runs ``read_runs``) read.

    For a caller that needs both the segments' states and the coverage (the
    timeline): the index is read once instead of twice. ``states`` must
    hold at least [since, until) (read for that window or a wider one, with
    the ``now`` that ``coverage`` would be given); the result is what
    ``coverage`` returns. Which segments count as recorded is decided here,
    as in ``coverage``'s SQL: closed ones in a covering state, every open one.
    """
    stream_id = resolve_stream(stream).id
    since_ms, until_ms = window(since, until)
    tolerance_ms = require_duration_ms("tolerance", tolerance, positive=False)
    closed = _COVERING_CLOSED
    covering: list[tuple[int, int, str | None, int]] = [
        row
        for row in states.closed
        if row[2] is None or row[2] in closed  # None: complete
    ]
    for row in states.open:
        bisect.insort_right(covering, row, key=_start)
    return _coverage(stream_id, covering, since_ms, until_ms, tolerance_ms, reasons)


def _coverage(
    stream_id: int,
    rows: Sequence[tuple[Any, ...]],
    since_ms: int,
    until_ms: int,
    tolerance_ms: int,
    reasons: bool,
) -> Coverage:
    """The Coverage of the covering intervals ``rows`` ((start, end, ...) sorted by start)."""
    recorded, holes = _sweep(rows, since_ms, until_ms)
    reported = [(start, end) for start, end in holes if end - start >= tolerance_ms]
    why = _gap_reasons(stream_id, reported) if reasons else [()] * len(reported)
    gaps = tuple(Gap(from_millis(start), from_millis(end), why[i]) for i, (start, end) in enumerate(reported))
    return Coverage(
        stream_id=stream_id,
        since=from_millis(since_ms),
        until=from_millis(until_ms),
        recorded=dt.timedelta(milliseconds=recorded),
        gaps=gaps,
        tolerance=dt.timedelta(milliseconds=tolerance_ms),
    )


def gaps(
    stream: Stream | int | str,
    since: dt.datetime,
    until: dt.datetime,
    tolerance: dt.timedelta = DEFAULT_TOLERANCE,
    now: dt.datetime | None = None,
    *,
    reasons: bool = True,
) -> list[Gap]:
    """The holes of at least ``tolerance`` in ``stream``'s recording between two times (see ``coverage``).

    Each gap carries its ``reasons`` (health and status changes, failed or
    repaired segments, restores and clean stops in the hole) unless
    ``reasons=False``.
    """
    return list(coverage(stream, since, until, tolerance=tolerance, now=now, reasons=reasons).gaps)


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentStates:
    """A stream's segments in a window as ``read_states`` or ``read_runs`` read them: closed and open apart.

    ``closed``: (start, end, state, segments) in epoch ms, by start, with
    ``None`` as the state of complete segments: a segment (segments 1) or,
    from ``read_runs``, a run of one hour's segments of one state;
    ``open``: (start, end, state, 1) of the segments still being written, by
    start, ending at ``now`` or their last checkpoint, whichever is later.
    """

    closed: list[tuple[int, int, str | None, int]]
    open: list[tuple[int, int, str, int]]

    def merged(self) -> list[tuple[int, int, str | None, int]]:
        """Closed and open entries in one list by start, states as read (None: complete).

        ``closed`` itself (not a copy) when no segment is open.
        """
        if not self.open:
            return self.closed
        found = list(self.closed)
        for row in self.open:
            bisect.insort_right(found, row, key=_start)
        return found

    def rows(self) -> list[tuple[int, int, str]]:
        """Every entry as (start, end, state), by start (``segment_states``' form)."""
        complete = SegmentState.COMPLETE.value
        return [(start, end, state or complete) for start, end, state, _n in self.merged()]


def _start(row: tuple[Any, ...]) -> Any:
    return row[0]


def read_states(
    stream: Stream | int | str,
    since: dt.datetime,
    until: dt.datetime,
    now: dt.datetime | None = None,
) -> SegmentStates:
    """The segments of ``stream`` overlapping [since, until) as (start, end, state, 1), from the index alone.

    What ``segment_states`` returns, closed and open segments apart; with
    ``coverage_of_states`` a caller that needs the states and the coverage
    (the timeline) reads the index once.
    """
    stream_id = resolve_stream(stream).id
    since_ms, until_ms = window(since, until)
    now_ms = now_millis() if now is None else to_millis(now, "now")
    db = current_database()
    closed = db.execute_sql(
        _closed_sql(db, _CLOSED_STATES) + ' ORDER BY "started_at"',
        (stream_id, until_ms, since_ms, stream_id, since_ms),
    ).fetchall()
    return SegmentStates(closed, _read_open(db, stream_id, until_ms, now_ms))


# (start, end, state, segments) of a closed row: the two branches of
# _overlap_sql as two statements, so the closed segments come in index order
# (no sort step), and which rows are open is known without a column saying
# so (a column costs the driver an object per row). "complete" reads as
# NULL: the driver then builds no string per row, a sixth of the read at ten
# million rows; the constant 1 is a cached int.
_CLOSED_STATES = f'"started_at", "ended_at", NULLIF("state", \'{SegmentState.COMPLETE.value}\'), 1'


def _read_open(db: pw.Database, stream_id: int, until_ms: int, now_ms: int) -> list[Any]:
    """(start, end, state, 1) of the stream's open segments starting before ``until``, by start."""
    p = db.param
    open_sql = _open_sql(
        db, f'"started_at", {dialect(db).greatest}(COALESCE("checkpoint_at", 0), {p}), "state", 1'
    )
    return db.execute_sql(open_sql + ' ORDER BY "started_at"', (now_ms, stream_id, until_ms)).fetchall()


def read_runs(
    stream: Stream | int | str,
    since: dt.datetime,
    until: dt.datetime,
    now: dt.datetime | None = None,
) -> SegmentStates:
    """``read_states``, with each summarized hour inside [since, until) read as its runs.

    The closed entries are (start, end, state, segments): a run of an hour
    that ``summarize_runs`` summarized (one entry for an hour of
    back-to-back segments), or a segment (segments 1) of the window's
    edges and of the hours not summarized (yet, or changed since). Each
    state's runs cover exactly what its segments cover (invariant 17), so
    ``coverage_of_states`` of this is ``coverage`` of the window, and a week
    of a stream is a few hundred entries instead of ten thousand.
    """
    stream_id = resolve_stream(stream).id
    since_ms, until_ms = window(since, until)
    now_ms = now_millis() if now is None else to_millis(now, "now")
    db = current_database()
    p = db.param
    # The whole hours inside the window (never before 1970: those stay rows).
    first_hour = max(0, -(-since_ms // HOUR_MS))
    end_hour = until_ms // HOUR_MS
    stored: list[tuple[int, str]] = []
    if end_hour > first_hour:
        stored = db.execute_sql(
            f'SELECT "hour", "runs" FROM "segment_runs" WHERE "stream_id" = {p} AND "hour" >= {p} '
            f'AND "hour" < {p} AND "runs" IS NOT NULL ORDER BY "hour"',
            (stream_id, first_hour, end_hour),
        ).fetchall()
    closed: list[Any] = []
    # The rows before the first summarized hour: the window's start, with
    # the longest segment's lead, as read_states reads them.
    # (Its end in place of the window's: SQLite bounds the range by one of them.)
    lead_end = stored[0][0] * HOUR_MS if stored else until_ms
    closed += db.execute_sql(
        _closed_sql(db, _CLOSED_STATES) + ' ORDER BY "started_at"',
        (stream_id, lead_end, since_ms, stream_id, since_ms),
    ).fetchall()
    # The closed segments that started in [lo, hi), of those the window holds.
    between = (
        f'SELECT {_CLOSED_STATES} FROM "recording" WHERE "stream_id" = {p} AND "started_at" >= {p} '
        f'AND "started_at" < {p} AND "ended_at" > {p} ORDER BY "started_at"'
    )
    for i, runs in enumerate(decode_runs(stored)):
        closed += runs
        lo = (stored[i][0] + 1) * HOUR_MS
        hi = stored[i + 1][0] * HOUR_MS if i + 1 < len(stored) else until_ms
        if hi > lo:
            closed += db.execute_sql(between, (stream_id, lo, hi, since_ms)).fetchall()
    return SegmentStates(closed, _read_open(db, stream_id, until_ms, now_ms))


def segment_states(
    stream: Stream | int | str,
    since: dt.datetime,
    until: dt.datetime,
    now: dt.datetime | None = None,
) -> list[tuple[int, int, str]]:
    """(start, end, state) in epoch ms of ``stream``'s segments overlapping [since, until), by start.

    The light form of ``recordings`` for pictures of long ranges (the
    timeline): every state, read from the index (stream, started_at,
    ended_at, state) alone, like ``coverage``, never from the table; a week
    of 1-minute segments costs a fifth of fetching the rows. An open segment
    (state ``recording``) ends at ``now`` or its last checkpoint, whichever
    is later.
    """
    return read_states(stream, since, until, now).rows()


def _gap_reasons(stream_id: int, holes: list[tuple[int, int]]) -> list[tuple[GapReason, ...]]:
    """The explaining events of each hole, from one query over the holes (with their leads)."""
    if not holes:
        return []
    # Each hole's own range (one index range scan each, a multi-index OR):
    # a week of a stream has hundreds of reason events and a dozen holes,
    # and the span from the first hole to the last held nearly all of them
    # (3.3 s CPU over 1,000 streams for 1,298 reasons). Past
    # MAX_REASON_RANGES the span itself, one range.
    if len(holes) <= MAX_REASON_RANGES:
        ranges = [(start - REASON_LEAD_MS, end) for start, end in holes]
    else:
        ranges = [(holes[0][0] - REASON_LEAD_MS, holes[-1][1])]

    # Two branches: the stream's own events on the (stream, ts) index, and
    # the system events (a restore, a clean stop: the only reason types
    # written without a stream) on the (type, ts) index.
    # * "+ 0" keeps the system branch off the (stream, ts) index, where NULL
    #   would mean every system event of the window.
    # * "|| ''" keeps the stream's branch off the (type, ts) index: from 21
    #   ranges on, SQLite's planner priced the ranges above walking every
    #   stream's reason events (0.17 s a call on the benchmark's week of
    #   1,000 streams; 50 us with the ranges).
    # * As one "stream = ? OR stream IS NULL" the planner walked the type
    #   index over every stream's health and status changes (300,000 rows a
    #   week on 1,000 streams: a third of a second a call).
    # The stream's condition is repeated in each range so that SQLite scans
    # the (stream, ts) index once per range. Written as text: peewee took
    # 3 ms to build this query, three times what running it takes.
    db = current_database()
    sql = _reasons_sql(db.param, len(ranges))
    params: list[Any] = [str(kind) for kind in REASON_TYPES]
    for lo, hi in ranges:
        params += (stream_id, lo, hi)
    params += [str(kind) for kind in SYSTEM_REASON_TYPES]
    for lo, hi in ranges:
        params += (lo, hi)
    found: list[list[GapReason]] = [[] for _ in holes]
    ends = [end for _start, end in holes]
    # Stored values (epoch ms), not models.
    for ts, kind, severity, message, event_stream, _id in db.execute_sql(sql, params):
        ts_ms = int(ts)
        # Holes are disjoint and in order: the first one ending at or after
        # the event, and the next ones while their lead reaches back to it.
        i = bisect.bisect_left(ends, ts_ms)
        while i < len(holes) and holes[i][0] - REASON_LEAD_MS <= ts_ms:
            found[i].append(
                GapReason(from_millis(ts_ms), kind, _severity(severity), message or kind, event_stream)
            )
            i += 1
    return [tuple(reasons) for reasons in found]


@functools.cache
def _reasons_sql(p: str, ranges: int) -> str:
    """``_gap_reasons``' query for ``ranges`` time ranges, placeholder ``p``.

    Parameters: the reason types, (stream, lo, hi) per range, the system
    reason types, (lo, hi) per range.
    """
    columns = '"ts", "type", "severity", "message", "stream_id", "id"'
    kinds = ", ".join([p] * len(REASON_TYPES))
    system_kinds = ", ".join([p] * len(SYSTEM_REASON_TYPES))
    own = " OR ".join([f'("stream_id" = {p} AND "ts" >= {p} AND "ts" <= {p})'] * ranges)
    system = " OR ".join([f'(("stream_id" + 0) IS NULL AND "ts" >= {p} AND "ts" <= {p})'] * ranges)
    return (
        f'SELECT {columns} FROM "event" WHERE ("type" || \'\') IN ({kinds}) AND ({own}) '
        f'UNION ALL SELECT {columns} FROM "event" WHERE "type" IN ({system_kinds}) AND ({system}) '
        "ORDER BY 1, 6"
    )


def _severity(value: Any) -> Severity | str:
    try:
        return Severity(value)
    except ValueError:
        return value


def _sweep(
    rows: Sequence[tuple[Any, ...]], since_ms: int, until_ms: int
) -> tuple[int, list[tuple[int, int]]]:
    """Recorded ms and holes of [since, until) given (start, end) intervals sorted by start.

    Intervals may overlap (a segmenter opens the next file before it closes
    the last): the covered end only ever moves forward.
    """
    covered_to = since_ms
    recorded = 0
    holes: list[tuple[int, int]] = []
    for row in rows:
        start, end = row[0], row[1]
        if end > until_ms:
            end = until_ms
        if end <= covered_to or end <= start:
            continue
        if start > covered_to:
            holes.append((covered_to, start))
            covered_to = start
        recorded += end - covered_to
        covered_to = end
    if covered_to < until_ms:
        holes.append((covered_to, until_ms))
    return recorded, holes
