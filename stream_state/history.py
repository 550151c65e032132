"""Read-side questions about the past: what was recorded, where the holes are, what used the disk,
what happened, and how the metrics looked.

Every function answers from an index (or from a summary the database keeps up
to date), so its cost grows with the size of the answer, not with the size of
the history: one stream's segments in an hour of ten million, one page of a
million events, a week of a 1-second metric read as 168 hourly rollups.

Functions that return rows of one model return a peewee query, so callers add
``.where()``, ``.limit()``, ``.count()`` or ``.tuples()``
(``recordings``, ``latest_segments``, ``metric_samples``). Aggregates come back
as small frozen dataclasses. Times are aware UTC datetimes; a ``stream``
argument is a ``Stream``, its id or its name.

Time-range queries over segments use a lower bound on the start:
``started_at >= since - longest``, where ``longest`` is the longest completed
segment of the stream, read from the partial index ``recording_long`` (the
database keeps it exact, whatever writes the rows). Open segments have no
length yet, so they come from their own small partial index in a second
branch of the query.

Storage used comes from ``recording_usage``, a summary per stream, day,
volume and state that triggers on ``recording`` keep exact (migration 003).

Metric rollups (per-minute and per-hour count, sum, min, max and last value)
are brought up to date by ``refresh_rollups()``, which the maintenance
schedule calls every few minutes; ``metric_buckets`` combines them with raw
samples for the parts they do not cover (ragged edges, the recent part past
the rollup watermark, hours marked stale by late writes), so its answer is
always the one the raw samples give.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import peewee as pw

from .errors import DatabaseUnavailable, NotFound, ValidationError
from .models import Event, MetricSample, MetricSeries, Recording, Stream, SystemState
from .models.base import BaseModel, database_proxy
from .models.recording import LONG_SEGMENT_MS
from .states import EventType, HealthState, SegmentState, Severity
from .timeutil import MAX_MILLIS, from_millis, now_millis, to_millis
from .validate import require_choice, require_count, require_text

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

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
DEFAULT_TOLERANCE = dt.timedelta(seconds=1)

# Rollup widths, coarsest first; a bucket width that is a multiple of one
# (and so aligned with it) is answered from it.
ROLLUP_WIDTHS = (HOUR_MS, MINUTE_MS)
ROLLUP_WATERMARK_KEY = "metric_rollups"
# refresh_rollups() without ``until`` stops this far before now: a manager
# commits its samples every 10-60 s, so the last minutes are still arriving.
ROLLUP_SETTLE = dt.timedelta(minutes=2)
ROLLUP_CHUNK = dt.timedelta(hours=6)
MAX_BUCKETS = 100_000
# The recording_usage summary computed from scratch (as migration 003 fills it).
USAGE_FILL_SQL = (
    'INSERT INTO "recording_usage" ("stream_id", "day_start", "storage", "state", "segments", '
    '"size_bytes", "duration_ms") '
    f'SELECT "stream_id", "started_at" / {DAY_MS} * {DAY_MS}, COALESCE("storage", \'\'), "state", '
    'COUNT(*), SUM("size_bytes"), SUM(COALESCE("ended_at" - "started_at", 0)) '
    'FROM "recording" GROUP BY 1, 2, 3, 4'
)
MAX_PAGE = 10_000
# Arms of one UNION ALL; SQLite allows 500.
_ARMS_PER_QUERY = 100

_SEVERITY_RANK = {severity: rank for rank, severity in enumerate(Severity)}
_USAGE_KEYS = ("stream", "storage", "day", "state")


# --- result types -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Gap:
    """A hole in the recording: nothing with footage covers [start, end)."""

    start: dt.datetime
    end: dt.datetime

    @property
    def duration(self) -> dt.timedelta:
        return self.end - self.start


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


@dataclasses.dataclass(frozen=True, slots=True)
class UsageRow:
    """Segments, bytes and recorded time of one group; fields not grouped by are None."""

    stream_id: int | None
    stream: str | None
    storage: str | None
    day: dt.date | None
    state: SegmentState | str | None
    segments: int
    size_bytes: int
    duration: dt.timedelta  # of completed segments; an open one counts 0


@dataclasses.dataclass(frozen=True, slots=True)
class EventPage:
    """One page of events, newest first; pass ``next_cursor`` to get the next (None: no more).

    Each event carries ``stream_name`` (None for a system event), read in the
    same query; ``event.stream`` would cost a query per event.
    """

    events: tuple[Event, ...]
    next_cursor: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class StreamHealth:
    stream_id: int
    stream: str
    health: HealthState | str
    changed_at: dt.datetime | None
    last_seen_at: dt.datetime | None
    removed: bool


@dataclasses.dataclass(frozen=True, slots=True)
class HealthTransition:
    event_id: int
    stream_id: int
    stream: str
    at: dt.datetime
    old: HealthState | str | None
    new: HealthState | str | None
    reason: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Bucket:
    """Aggregates of the samples in [start, end) that fall inside the queried range."""

    start: dt.datetime
    end: dt.datetime
    count: int
    sum: float
    min: float
    max: float
    last: float  # the value of the latest sample

    @property
    def avg(self) -> float:
        return self.sum / self.count


@dataclasses.dataclass(frozen=True, slots=True)
class SeriesBuckets:
    series: MetricSeries
    buckets: tuple[Bucket, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class RollupReport:
    """What one ``refresh_rollups`` did."""

    previous: dt.datetime | None  # the watermark before
    watermark: dt.datetime | None  # rollups are complete below this
    minute_rows: int
    hour_rows: int
    stale_hours: int  # late-written hours recomputed


# --- the summary and rollup tables ----------------------------------------------------------


class _SqliteOnlyWithoutRowid(pw.Metadata):
    """``WITHOUT ROWID`` on SQLite, nothing on PostgreSQL (which has no such clause)."""

    @property
    def without_rowid(self) -> bool:
        database = self.database
        database = getattr(database, "obj", database)
        return isinstance(database, pw.SqliteDatabase)

    @without_rowid.setter
    def without_rowid(self, value: bool) -> None:
        pass  # decided by the backend, see above


class RecordingUsage(BaseModel):
    """Segments, bytes and recorded ms per (stream, UTC day, storage, state).

    Kept exact by triggers on ``recording`` (migration 003): never write it.
    ``storage`` is '' for segments without a storage volume.
    """

    stream = pw.ForeignKeyField(Stream, on_delete="CASCADE", index=False)
    day_start = pw.BigIntegerField()
    storage = pw.TextField()
    state = pw.TextField()
    segments = pw.BigIntegerField()
    size_bytes = pw.BigIntegerField()
    duration_ms = pw.BigIntegerField()

    class Meta:
        table_name = "recording_usage"
        primary_key = pw.CompositeKey("stream", "day_start", "storage", "state")


class MetricRollup(BaseModel):
    """Count, sum, min, max and last value of a series per minute or hour bucket."""

    series = pw.ForeignKeyField(MetricSeries, on_delete="CASCADE", index=False)
    width_ms = pw.IntegerField()
    bucket_start = pw.BigIntegerField()
    sample_count = pw.BigIntegerField()
    value_sum = pw.DoubleField()
    value_min = pw.DoubleField()
    value_max = pw.DoubleField()
    value_last = pw.DoubleField()

    class Meta:
        table_name = "metric_rollup"
        primary_key = pw.CompositeKey("series", "width_ms", "bucket_start")
        model_metadata_class = _SqliteOnlyWithoutRowid


class MetricRollupStale(BaseModel):
    """An hour of a series whose rollups are out of date (samples written below the watermark)."""

    series = pw.ForeignKeyField(MetricSeries, on_delete="CASCADE", index=False)
    hour_start = pw.BigIntegerField()

    class Meta:
        table_name = "metric_rollup_stale"
        primary_key = pw.CompositeKey("series", "hour_start")


HISTORY_MODELS = (RecordingUsage, MetricRollup, MetricRollupStale)


# --- argument checks ---------------------------------------------------------------------------


def _db() -> pw.Database:
    if database_proxy.obj is None:
        raise DatabaseUnavailable("no database is open; call stream_state.open_database() first")
    return database_proxy.obj


def _is_sqlite(db: pw.Database) -> bool:
    return isinstance(db, pw.SqliteDatabase)


def resolve_stream(stream: Stream | int | str, field: str = "stream") -> Stream:
    """The stream a ``stream`` argument names: a ``Stream``, an id or a name.

    A name finds the live stream of that name, else the most recently removed
    one (its history stays queryable). ``NotFound`` when there is none.
    """
    if isinstance(stream, Stream):
        if stream.id is None:
            raise ValidationError(field, stream, "the stream has not been saved")
        return stream
    if isinstance(stream, bool):
        raise ValidationError(field, stream, "expected a Stream, a stream id or a stream name")
    if isinstance(stream, int):
        require_count(field, stream)
        found = Stream.get_or_none(Stream.id == stream)
    elif isinstance(stream, str):
        require_text(field, stream, max_length=200)
        found = (
            Stream.select()
            .where(Stream.name == stream)
            .order_by(
                # Live first: false sorts before true on both backends, and a
                # boolean (unlike CASE ... 0/1) is typed the same by asyncpg.
                Stream.removed_at.is_null(False),
                Stream.removed_at.desc(),
                Stream.id.desc(),
            )
            .first()
        )
    else:
        raise ValidationError(field, stream, "expected a Stream, a stream id or a stream name")
    if found is None:
        raise NotFound("stream", stream)
    return found


def _stream_ids(streams: Any, field: str = "streams") -> list[int] | None:
    """Ids of a collection of stream arguments (None stays None: every stream)."""
    if streams is None:
        return None
    if isinstance(streams, (Stream, int, str)):
        return [resolve_stream(streams, field).id]
    if not isinstance(streams, Iterable):
        raise ValidationError(field, streams, "expected a collection of streams, ids or names")
    ids: list[int] = []
    known: set[int] = set()  # ids of Stream objects: no need to look them up
    names: list[str] = []
    for index, item in enumerate(streams):
        if isinstance(item, Stream):
            known.add(resolve_stream(item, f"{field}[{index}]").id)
            ids.append(item.id)
        elif isinstance(item, int) and not isinstance(item, bool):
            ids.append(require_count(f"{field}[{index}]", item))
        elif isinstance(item, str):
            names.append(require_text(f"{field}[{index}]", item, max_length=200))
        else:
            raise ValidationError(
                f"{field}[{index}]", item, "expected a Stream, a stream id or a stream name"
            )
    plain_ids = [i for i in ids if i not in known]
    if plain_ids:
        # One query for all of them, however many.
        found_ids = {i for (i,) in Stream.select(Stream.id).where(Stream.id.in_(plain_ids)).tuples()}
        for stream_id in plain_ids:
            if stream_id not in found_ids:
                raise NotFound("stream", stream_id)
    if names:
        # Live streams first, then the most recently removed: like resolve_stream.
        by_name: dict[str, int] = {}
        rows = (
            Stream.select(Stream.name, Stream.id)
            .where(Stream.name.in_(names))
            .order_by(Stream.removed_at.is_null(False), Stream.removed_at.desc())
            .tuples()
        )
        for name, stream_id in rows:
            by_name.setdefault(name, stream_id)
        for name in names:
            if name not in by_name:
                raise NotFound("stream", name)
            ids.append(by_name[name])
    return list(dict.fromkeys(ids))


def _window(since: dt.datetime, until: dt.datetime) -> tuple[int, int]:
    since_ms = to_millis(since, "since")
    until_ms = to_millis(until, "until")
    if until_ms <= since_ms:
        raise ValidationError("until", until, f"must be after since={since.isoformat()}")
    return since_ms, until_ms


def _optional_window(since: dt.datetime | None, until: dt.datetime | None) -> tuple[int | None, int | None]:
    since_ms = None if since is None else to_millis(since, "since")
    until_ms = None if until is None else to_millis(until, "until")
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        raise ValidationError("until", until, f"must be after since={since.isoformat()}")
    return since_ms, until_ms


def _duration_ms(field: str, value: Any, *, positive: bool) -> int:
    if not isinstance(value, dt.timedelta):
        raise ValidationError(field, value, "expected a datetime.timedelta")
    if value % dt.timedelta(milliseconds=1):
        raise ValidationError(field, value, "must be a whole number of milliseconds")
    millis = value // dt.timedelta(milliseconds=1)
    if millis < 0 or (positive and millis == 0):
        raise ValidationError(field, value, "must be positive" if positive else "must not be negative")
    if millis > MAX_MILLIS:
        raise ValidationError(field, value, "too long")
    return millis


def _day(field: str, value: Any) -> int | None:
    """A UTC day given as a ``date`` (not a datetime) -> its start in epoch ms."""
    if value is None:
        return None
    if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
        raise ValidationError(field, value, "expected a datetime.date (a UTC day)")
    return to_millis(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC), field)


# --- recordings -------------------------------------------------------------------------------


def _bound_sql(p: str) -> str:
    """The longest completed segment of stream ``p`` (at least LONG_SEGMENT_MS), from recording_long.

    The WHERE repeats the partial index's own condition, so both backends
    can prove the index applies; MAX over its (stream, length) order is one
    index probe.
    """
    return (
        f'(SELECT COALESCE(MAX("ended_at" - "started_at"), {LONG_SEGMENT_MS}) FROM "recording" '
        f'WHERE "stream_id" = {p} AND ("ended_at" - "started_at") > {LONG_SEGMENT_MS})'
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
    p = db.param
    open_index = ' INDEXED BY "recording_open"' if _is_sqlite(db) else ""
    return (
        f'SELECT {closed_columns} FROM "recording" WHERE "stream_id" = {p} AND "started_at" < {p} '
        f'AND "started_at" >= {p} - {_bound_sql(p)} AND "ended_at" > {p}{extra_closed} '
        f'UNION ALL SELECT {open_columns} FROM "recording"{open_index} '
        f'WHERE "stream_id" = {p} AND "ended_at" IS NULL AND "started_at" < {p}'
    )


def recordings(stream: Stream | int | str, since: dt.datetime, until: dt.datetime) -> pw.ModelSelect:
    """Segments of ``stream`` overlapping [since, until), open ones included, in recording order.

    A segment overlaps when it starts before ``until`` and ends after
    ``since``; an open segment (still being written) overlaps when it
    started before ``until``. The result is a query: add ``.where()``,
    ``.limit()``, ``.count()``, ``.tuples()``... Whatever the state: filter
    with ``.where(Recording.state == ...)``.
    """
    stream_id = resolve_stream(stream).id
    since_ms, until_ms = _window(since, until)
    db = _db()
    ids = pw.SQL(
        _overlap_sql(db, '"id"', '"id"'),
        (stream_id, until_ms, since_ms, stream_id, since_ms, stream_id, until_ms),
    )
    return (
        Recording.select()
        .where(Recording.id.in_(pw.EnclosedNodeList([ids])))
        .order_by(Recording.started_at, Recording.id)
    )


def latest_segments(streams: Iterable[Stream | int | str] | None = None) -> pw.ModelSelect:
    """The latest segment (highest segment index) of every stream, or of ``streams``, by stream id.

    One index probe per stream on (stream_id, segment_index). Streams without
    segments are absent; removed streams are included (their history stays).
    """
    stream_ids = _stream_ids(streams)
    last = Recording.alias("last_segment")
    latest_id = (
        last.select(last.id).where(last.stream == Stream.id).order_by(last.segment_index.desc()).limit(1)
    )
    owners = Stream.select(latest_id)
    if stream_ids is not None:
        owners = owners.where(Stream.id.in_(stream_ids))
    return Recording.select().where(Recording.id.in_(owners)).order_by(Recording.stream)


def coverage(
    stream: Stream | int | str,
    since: dt.datetime,
    until: dt.datetime,
    tolerance: dt.timedelta = DEFAULT_TOLERANCE,
    now: dt.datetime | None = None,
) -> Coverage:
    """What share of [since, until) ``stream`` has on disk, and the gaps.

    Segments in ``COVERING_STATES`` count; failed, deleting and missing ones
    are holes. An open segment covers up to ``now`` (default: the current
    time) or its last checkpoint, whichever is later. A hole shorter than
    ``tolerance`` is not reported as a gap (a segmenter leaves a few
    milliseconds between files), but it is not recorded time either.
    Reads (start, end) of the window's segments from indexes only: about
    8,600 index entries for 24 hours of 10-second segments.
    """
    stream_id = resolve_stream(stream).id
    since_ms, until_ms = _window(since, until)
    tolerance_ms = _duration_ms("tolerance", tolerance, positive=False)
    now_ms = now_millis() if now is None else to_millis(now, "now")
    db = _db()
    p = db.param
    states = ", ".join(f"'{state.value}'" for state in COVERING_STATES if state != SegmentState.RECORDING)
    greatest = "MAX" if _is_sqlite(db) else "GREATEST"
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
    recorded, holes = _sweep(rows, since_ms, until_ms)
    gaps = tuple(
        Gap(from_millis(start), from_millis(end)) for start, end in holes if end - start >= tolerance_ms
    )
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
) -> list[Gap]:
    """The holes of at least ``tolerance`` in ``stream``'s recording between two times (see ``coverage``)."""
    return list(coverage(stream, since, until, tolerance=tolerance, now=now).gaps)


def _sweep(
    rows: Sequence[tuple[int, int]], since_ms: int, until_ms: int
) -> tuple[int, list[tuple[int, int]]]:
    """Recorded ms and holes of [since, until) given (start, end) intervals sorted by start.

    Intervals may overlap (a segmenter opens the next file before it closes
    the last): the covered end only ever moves forward.
    """
    covered_to = since_ms
    recorded = 0
    holes: list[tuple[int, int]] = []
    for start, end in rows:
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


# --- storage used ---------------------------------------------------------------------------


def storage_usage(
    by: str | Sequence[str] = "stream",
    *,
    since: dt.date | None = None,
    until: dt.date | None = None,
    streams: Iterable[Stream | int | str] | Stream | int | str | None = None,
    storage: str | None = None,
    states: Collection[SegmentState | str] | None = None,
) -> list[UsageRow]:
    """Segments, bytes and recorded time grouped by any of "stream", "storage", "day", "state".

    ``since`` / ``until`` are UTC days (``datetime.date``, ``until``
    exclusive); a segment belongs to the day it started. Largest first.
    Reads the ``recording_usage`` summary (one row per stream, day, storage
    and state, kept exact by triggers), never the segments: one query
    whatever the size of the history.
    """
    keys = _usage_keys(by)
    since_day = _day("since", since)
    until_day = _day("until", until)
    if since_day is not None and until_day is not None and until_day <= since_day:
        raise ValidationError("until", until, f"must be after since={since}")
    stream_ids = _stream_ids(streams)
    if storage is not None:
        require_text("storage", storage, max_length=1000)
    state_values = _states(states)

    U = RecordingUsage
    columns: list[Any] = []
    group: list[Any] = []
    if "stream" in keys:
        columns += [U.stream.alias("stream_id"), Stream.name.alias("stream_name")]
        group += [U.stream, Stream.name]
    if "storage" in keys:
        columns.append(U.storage.alias("storage"))
        group.append(U.storage)
    if "day" in keys:
        columns.append(U.day_start.alias("day_start"))
        group.append(U.day_start)
    if "state" in keys:
        columns.append(U.state.alias("state"))
        group.append(U.state)
    total_bytes = pw.fn.SUM(U.size_bytes)
    query = U.select(
        *columns,
        pw.fn.SUM(U.segments).alias("segments"),
        total_bytes.alias("size_bytes"),
        pw.fn.SUM(U.duration_ms).alias("duration_ms"),
    )
    if "stream" in keys:
        query = query.join(Stream, on=(U.stream == Stream.id))
    if since_day is not None:
        query = query.where(U.day_start >= since_day)
    if until_day is not None:
        query = query.where(U.day_start < until_day)
    if stream_ids is not None:
        query = query.where(U.stream.in_(stream_ids))
    if storage is not None:
        query = query.where(U.storage == storage)
    if state_values is not None:
        query = query.where(U.state.in_(state_values))
    query = query.group_by(*group).order_by(total_bytes.desc(), *group)
    rows = []
    for row in query.dicts():
        rows.append(
            UsageRow(
                stream_id=row.get("stream_id"),
                stream=row.get("stream_name"),
                storage=(row["storage"] or None) if "storage" in keys else None,
                day=from_millis(int(row["day_start"])).date() if "day" in keys else None,
                state=_state(row["state"]) if "state" in keys else None,
                segments=int(row["segments"]),
                size_bytes=int(row["size_bytes"]),
                duration=dt.timedelta(milliseconds=int(row["duration_ms"])),
            )
        )
    return rows


def segment_counts(
    streams: Iterable[Stream | int | str] | Stream | int | str | None = None,
    *,
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> dict[SegmentState | str, int]:
    """Number of segments in each state (of ``streams``, started in [since, until) days)."""
    return {
        row.state: row.segments
        for row in storage_usage("state", since=since, until=until, streams=streams)
        if row.state is not None
    }


def rebuild_usage() -> int:
    """Recompute the ``recording_usage`` summary from the segments; return its row count.

    The triggers keep it exact, so this is a repair tool (after restoring a
    table by hand, say), run in one transaction.
    """
    db = _db()
    with db.atomic():
        db.execute_sql('DELETE FROM "recording_usage"')
        db.execute_sql(USAGE_FILL_SQL)
        return RecordingUsage.select().count()


def _usage_keys(by: Any) -> tuple[str, ...]:
    keys = (by,) if isinstance(by, str) else by
    if not isinstance(keys, (tuple, list)) or not keys:
        raise ValidationError("by", by, f"expected one or more of {', '.join(_USAGE_KEYS)}")
    for key in keys:
        if key not in _USAGE_KEYS:
            raise ValidationError("by", by, f"unknown grouping {key!r}; use {', '.join(_USAGE_KEYS)}")
    return tuple(keys)


def _states(states: Any) -> list[str] | None:
    if states is None:
        return None
    if isinstance(states, str) or not isinstance(states, Collection):
        raise ValidationError("states", states, "expected a collection of segment states")
    return [require_choice("states", state, SegmentState).value for state in states]


def _state(value: str) -> SegmentState | str:
    try:
        return SegmentState(value)
    except ValueError:
        return value


# --- events --------------------------------------------------------------------------------------


def events(
    *,
    stream: Stream | int | str | None = None,
    type: str | None = None,
    severity: Severity | str | Collection[Severity | str] | None = None,
    min_severity: Severity | str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> EventPage:
    """A page of events, newest first, filtered by stream, type, severity and time.

    ``cursor`` is the ``next_cursor`` of the previous page: pages are cut at
    a (time, id) position, not an offset, so each page is one index walk
    however deep, and events written meanwhile neither repeat nor shift a
    row into the next page. ``severity`` keeps the given level(s);
    ``min_severity`` keeps that level and above. One query per page, with
    each event's stream name joined in (``event.stream_name``).

    The walk is on (stream, time), (type, time) or time alone; a severity
    is checked on the way, so asking for a rare one over a long history
    reads far: bound it with ``since``.
    """
    stream_id = None if stream is None else resolve_stream(stream).id
    event_type = None if type is None else require_text("type", type, max_length=100)
    severities = _severities(severity, min_severity)
    since_ms, until_ms = _optional_window(since, until)
    position = _parse_cursor(cursor)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ValidationError("limit", limit, f"expected an integer from 1 to {MAX_PAGE}")

    query = Event.select(Event, Stream.name.alias("stream_name")).join(
        Stream, pw.JOIN.LEFT_OUTER, on=(Event.stream == Stream.id)
    )
    if stream_id is not None:
        query = query.where(Event.stream == stream_id)
    if event_type is not None:
        query = query.where(Event.type == event_type)
    if severities is not None:
        query = query.where(Event.severity.in_(severities))
    if since_ms is not None:
        query = query.where(Event.ts >= since_ms)
    if until_ms is not None:
        query = query.where(Event.ts < until_ms)
    if position is not None:
        query = query.where(pw.Tuple(Event.ts, Event.id) < pw.Tuple(*position))
    # objects(): plain Event instances with the name as an attribute, not a
    # half-loaded Stream that a careless save() would write back.
    rows = list(query.order_by(Event.ts.desc(), Event.id.desc()).limit(limit + 1).objects())
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if more:
        last = rows[-1]
        next_cursor = f"{to_millis(last.ts)}_{last.id}"
    return EventPage(events=tuple(rows), next_cursor=next_cursor)


def _parse_cursor(cursor: Any) -> tuple[int, int] | None:
    if cursor is None:
        return None
    if isinstance(cursor, str):
        ts_text, dot, id_text = cursor.partition("_")
        if dot and ts_text.isdigit() and id_text.isdigit() and len(cursor) <= 40:
            return int(ts_text), int(id_text)
    raise ValidationError("cursor", cursor, "not a cursor returned by events(); start again without one")


def _severities(severity: Any, minimum: Any) -> list[str] | None:
    chosen: set[Severity] | None = None
    if severity is not None:
        if isinstance(severity, (str, Severity)):
            chosen = {require_choice("severity", severity, Severity)}
        elif isinstance(severity, Collection) and severity:
            chosen = {require_choice("severity", item, Severity) for item in severity}
        else:
            raise ValidationError("severity", severity, "expected a severity or a collection of them")
    if minimum is not None:
        floor = _SEVERITY_RANK[require_choice("min_severity", minimum, Severity)]
        at_least = {level for level, rank in _SEVERITY_RANK.items() if rank >= floor}
        chosen = at_least if chosen is None else chosen & at_least
    if chosen is None:
        return None
    return sorted(level.value for level in chosen)


# --- health -------------------------------------------------------------------------------------


def current_health(include_removed: bool = False) -> list[StreamHealth]:
    """Every stream's health now, by name: one query over the stream table."""
    query = Stream.select(
        Stream.id,
        Stream.name,
        Stream.health,
        Stream.health_changed_at,
        Stream.last_seen_at,
        Stream.removed_at,
    )
    if not include_removed:
        query = query.where(Stream.removed_at.is_null())
    rows = query.order_by(Stream.name, Stream.id).tuples()
    return [
        StreamHealth(
            stream_id=stream_id,
            stream=name,
            health=health,
            changed_at=changed_at,
            last_seen_at=last_seen_at,
            removed=removed_at is not None,
        )
        for stream_id, name, health, changed_at, last_seen_at, removed_at in rows
    ]


def health_transitions(
    stream: Stream | int | str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int | None = None,
) -> list[HealthTransition]:
    """Health changes of one stream (or every stream) in [since, until), oldest first.

    Read from the ``health_changed`` events that ``Stream.record_health``
    writes; one query (the type's or the stream's time index).
    """
    stream_id = None if stream is None else resolve_stream(stream).id
    since_ms, until_ms = _optional_window(since, until)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValidationError("limit", limit, "expected a positive integer or None")
    # The three keys are read in SQL (->> on both backends): parsing each
    # event's whole JSON in Python would cost more than the query.
    query = (
        Event.select(
            Event.id,
            Event.ts,
            Event.stream,
            Stream.name,
            Event.data["old"].as_text(),
            Event.data["new"].as_text(),
            Event.data["reason"].as_text(),
        )
        .join(Stream, on=(Event.stream == Stream.id))
        .where(Event.type == EventType.HEALTH_CHANGED.value)
    )
    if stream_id is not None:
        query = query.where(Event.stream == stream_id)
    if since_ms is not None:
        query = query.where(Event.ts >= since_ms)
    if until_ms is not None:
        query = query.where(Event.ts < until_ms)
    query = query.order_by(Event.ts, Event.id)
    if limit is not None:
        query = query.limit(limit)
    return [
        HealthTransition(
            event_id=event_id,
            stream_id=event_stream_id,
            stream=name,
            at=at,
            old=_health(old),
            new=_health(new),
            reason=reason,
        )
        for event_id, at, event_stream_id, name, old, new, reason in query.tuples()
    ]


def _health(value: Any) -> HealthState | str | None:
    if value is None:
        return None
    try:
        return HealthState(value)
    except ValueError:
        return value


# --- metrics: reading ---------------------------------------------------------------------------


def _series_id(series: Any, field: str = "series") -> int:
    if isinstance(series, MetricSeries):
        if series.id is None:
            raise ValidationError(field, series, "the series has not been saved")
        return series.id
    if isinstance(series, bool) or not isinstance(series, int):
        raise ValidationError(field, series, "expected a MetricSeries or a series id")
    require_count(field, series)
    if not MetricSeries.select().where(MetricSeries.id == series).exists():
        raise NotFound("metric series", series)
    return series


def metric_samples(series: MetricSeries | int, since: dt.datetime, until: dt.datetime) -> pw.ModelSelect:
    """Raw samples of one series in [since, until), oldest first (a query: add ``.tuples()``...)."""
    series_id = _series_id(series)
    since_ms, until_ms = _window(since, until)
    return (
        MetricSample.select()
        .where(
            (MetricSample.series == series_id) & (MetricSample.ts >= since_ms) & (MetricSample.ts < until_ms)
        )
        .order_by(MetricSample.ts)
    )


def metric_buckets(
    series: MetricSeries | int,
    since: dt.datetime,
    until: dt.datetime,
    step: dt.timedelta,
    *,
    source: str = "auto",
) -> list[Bucket]:
    """Count, sum, min, max, avg and last of one series per ``step`` over [since, until).

    Buckets are aligned on multiples of ``step`` since the epoch (an hour
    bucket starts on the hour, UTC); a bucket cut by ``since`` or ``until``
    aggregates only the samples inside the range, and buckets without
    samples are left out. With ``source="auto"`` complete hours and minutes
    below the rollup watermark come from the rollups (when ``step`` is a
    multiple of the rollup's width), everything else from raw samples:
    same answer, a fraction of the rows. ``source="raw"`` reads raw samples
    only. Two queries.
    """
    series_id = _series_id(series)
    return _buckets([series_id], since, until, step, source).get(series_id, [])


def metric_buckets_matching(
    name: str,
    since: dt.datetime,
    until: dt.datetime,
    step: dt.timedelta,
    *,
    stream: Stream | int | str | None = None,
    labels: dict[str, str | int] | None = None,
    source: str = "auto",
) -> list[SeriesBuckets]:
    """``metric_buckets`` for every series called ``name`` with at least ``labels`` (of ``stream``).

    Series are matched like ``MetricSeries.matching``; series without a
    sample in the range are included with no buckets. Three queries, however
    many series match.
    """
    stream_id = None if stream is None else resolve_stream(stream).id
    matched = list(MetricSeries.matching(name, stream=stream_id, labels=labels))
    by_series = _buckets([s.id for s in matched], since, until, step, source) if matched else {}
    return [SeriesBuckets(series=s, buckets=tuple(by_series.get(s.id, ()))) for s in matched]


def _buckets(
    series_ids: list[int], since: dt.datetime, until: dt.datetime, step: dt.timedelta, source: str
) -> dict[int, list[Bucket]]:
    since_ms, until_ms = _window(since, until)
    step_ms = _duration_ms("step", step, positive=True)
    if (until_ms - 1) // step_ms - since_ms // step_ms + 1 > MAX_BUCKETS:
        raise ValidationError(
            "step", step, f"more than {MAX_BUCKETS} buckets in the range; use a larger step"
        )
    if source not in ("auto", "raw"):
        raise ValidationError("source", source, 'expected "auto" or "raw"')
    db = _db()
    widths = tuple(width for width in ROLLUP_WIDTHS if step_ms % width == 0) if source == "auto" else ()
    watermark = None
    stale: dict[int, set[int]] = {}
    if widths:
        watermark, stale = _rollup_state(db, series_ids, since_ms, until_ms)
    if watermark is None:
        widths = ()
    plans: dict[tuple[tuple[int, int, int], ...], list[int]] = {}
    for series_id in series_ids:
        plan = tuple(_plan(since_ms, until_ms, widths, watermark or 0, stale.get(series_id, set())))
        plans.setdefault(plan, []).append(series_id)
    arms = [_arm_sql(width, lo, hi, step_ms, ids) for plan, ids in plans.items() for width, lo, hi in plan]
    merged: dict[tuple[int, int], list[Any]] = {}
    for start in range(0, len(arms), _ARMS_PER_QUERY):
        sql = " UNION ALL ".join(arms[start : start + _ARMS_PER_QUERY])
        for series_id, bucket, count, total, low, high, last_key, last in db.execute_sql(sql).fetchall():
            key = (series_id, int(bucket))
            found = merged.get(key)
            if found is None:
                merged[key] = [int(count), total, low, high, last_key, last]
                continue
            found[0] += int(count)
            found[1] += total
            found[2] = min(found[2], low)
            found[3] = max(found[3], high)
            if last_key > found[4]:
                found[4], found[5] = last_key, last
    result: dict[int, list[Bucket]] = {}
    for (series_id, bucket), (count, total, low, high, _, last) in sorted(merged.items()):
        result.setdefault(series_id, []).append(
            Bucket(
                start=from_millis(bucket),
                end=from_millis(bucket + step_ms),
                count=count,
                sum=float(total),
                min=float(low),
                max=float(high),
                last=float(last),
            )
        )
    return result


def _plan(
    lo: int, hi: int, widths: tuple[int, ...], watermark: int, stale: set[int]
) -> list[tuple[int, int, int]]:
    """Pieces (width, lo, hi) that tile [lo, hi): width 0 is raw samples, else that rollup.

    The coarsest rollup takes the whole buckets it has (complete, below the
    watermark, not stale); the ragged ends go to the next finer one, and
    what no rollup covers to the raw samples.
    """
    if lo >= hi:
        return []
    if not widths:
        return [(0, lo, hi)]
    width, finer = widths[0], widths[1:]
    first = -(-lo // width) * width
    last = min(hi, watermark) // width * width
    if first >= last:
        return _merge(_plan(lo, hi, finer, watermark, stale))
    pieces: list[tuple[int, int, int]] = []
    cursor = first
    for hour in sorted(h for h in stale if h + HOUR_MS > first and h < last):
        start, end = max(hour, first), min(hour + HOUR_MS, last)
        if start > cursor:
            pieces.append((width, cursor, start))
        # A stale hour's minutes are as stale as its hour: raw samples.
        pieces.append((0, start, end))
        cursor = end
    if cursor < last:
        pieces.append((width, cursor, last))
    return _merge(
        _plan(lo, first, finer, watermark, stale) + pieces + _plan(last, hi, finer, watermark, stale)
    )


def _merge(pieces: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    merged: list[tuple[int, int, int]] = []
    for piece in pieces:
        if merged and merged[-1][0] == piece[0] and merged[-1][2] == piece[1]:
            merged[-1] = (piece[0], merged[-1][1], piece[2])
        else:
            merged.append(piece)
    return merged


def _arm_sql(width: int, lo: int, hi: int, step: int, series_ids: list[int]) -> str:
    """One piece as (series, bucket, count, sum, min, max, last_key, last) rows per step bucket.

    Only integers we computed or read from the database are inlined (ids,
    times, widths), so the text needs no parameters: an arm per piece and
    a thousand series stay far from any parameter limit.
    """
    ids = ", ".join(str(int(i)) for i in series_ids)
    if width == 0:
        inner = (
            f'SELECT "series_id", "ts" / {step} * {step} AS "b", COUNT(*) AS "n", SUM("value") AS "s", '
            f'MIN("value") AS "mn", MAX("value") AS "mx", MAX("ts") AS "k" FROM "metric_sample" '
            f'WHERE "series_id" IN ({ids}) AND "ts" >= {lo} AND "ts" < {hi} GROUP BY "series_id", "b"'
        )
        last = (
            'SELECT "value" FROM "metric_sample" AS "x" '
            'WHERE "x"."series_id" = "g"."series_id" AND "x"."ts" = "g"."k"'
        )
    else:
        inner = (
            f'SELECT "series_id", "bucket_start" / {step} * {step} AS "b", '
            f'CAST(SUM("sample_count") AS BIGINT) AS "n", SUM("value_sum") AS "s", MIN("value_min") AS "mn", '
            f'MAX("value_max") AS "mx", MAX("bucket_start") AS "k" FROM "metric_rollup" '
            f'WHERE "series_id" IN ({ids}) AND "width_ms" = {width} AND "bucket_start" >= {lo} '
            f'AND "bucket_start" < {hi} GROUP BY "series_id", "b"'
        )
        last = (
            'SELECT "value_last" FROM "metric_rollup" AS "x" WHERE "x"."series_id" = "g"."series_id" '
            f'AND "x"."width_ms" = {width} AND "x"."bucket_start" = "g"."k"'
        )
    return (
        f'SELECT "g"."series_id", "g"."b", "g"."n", "g"."s", "g"."mn", "g"."mx", "g"."k", ({last}) '
        f'FROM ({inner}) AS "g"'
    )


def _rollup_state(
    db: pw.Database, series_ids: list[int], since_ms: int, until_ms: int
) -> tuple[int | None, dict[int, set[int]]]:
    """The rollup watermark and the stale hours of ``series_ids`` in the range: one query."""
    p = db.param
    ids = ", ".join(str(int(i)) for i in series_ids)
    first_hour = since_ms // HOUR_MS * HOUR_MS
    rows = db.execute_sql(
        f'SELECT NULL, NULL, "value" FROM "system_state" WHERE "key" = {p} '
        f'UNION ALL SELECT "series_id", "hour_start", NULL FROM "metric_rollup_stale" '
        f'WHERE "series_id" IN ({ids}) AND "hour_start" >= {p} AND "hour_start" < {p}',
        (ROLLUP_WATERMARK_KEY, first_hour, until_ms),
    ).fetchall()
    watermark = None
    stale: dict[int, set[int]] = {}
    for series_id, hour, value in rows:
        if series_id is None:
            watermark = _watermark_value(value)
        else:
            stale.setdefault(series_id, set()).add(int(hour))
    return watermark, stale


def _watermark_value(value: Any) -> int | None:
    if isinstance(value, str):  # SQLite hands JSON back as text
        value = json.loads(value)
    if isinstance(value, dict) and isinstance(value.get("until"), int):
        return value["until"]
    return None


# --- metrics: keeping the rollups up to date ------------------------------------------------------


def refresh_rollups(until: dt.datetime | None = None, *, chunk: dt.timedelta = ROLLUP_CHUNK) -> RollupReport:
    """Bring the per-minute and per-hour rollups up to ``until`` (default: now minus two minutes).

    Incremental and idempotent: it aggregates the raw samples between the
    watermark (stored in ``system_state``) and ``until``, rounded down to a
    minute, recomputes the hours marked stale by late writes, and moves the
    watermark. Runs in transactions of ``chunk`` of time each, so a first
    run over a long history does not hold the write lock for long. A
    watermark never moves back: an earlier ``until`` only handles stale
    hours.

    Samples written below the watermark must mark their hours stale
    (``note_late_samples``, for the ingest path, or ``invalidate_rollups``
    after a backfill). A stale hour whose raw samples are all gone (purged
    by retention) keeps its rollups: they are the only record left.
    """
    if until is None:
        until_ms = now_millis() - ROLLUP_SETTLE // dt.timedelta(milliseconds=1)
    else:
        until_ms = to_millis(until, "until")
    chunk_ms = max(HOUR_MS, _duration_ms("chunk", chunk, positive=True) // HOUR_MS * HOUR_MS)
    target = until_ms // MINUTE_MS * MINUTE_MS
    db = _db()
    minute_rows = hour_rows = stale_hours = 0
    previous: int | None = None
    first = True
    while True:
        with db.atomic():
            current = _lock_watermark(db)
            if first:
                first = False
                previous = current
                if current is not None:
                    stale_hours = _recompute_stale(db, current)
            if current is None:
                start = _first_sample_minute(db)
                if start is None or start >= target:
                    # No samples below the target: the rollups are complete (empty) up to it.
                    _write_watermark(db, target)
                    break
                current = start
            if current >= target:
                break
            end = min(target, current // HOUR_MS * HOUR_MS + chunk_ms)
            minutes, hours = _roll_forward(db, current, end)
            minute_rows += minutes
            hour_rows += hours
            _write_watermark(db, end)
            if end >= target:
                break
    final = _read_watermark(db)
    report = RollupReport(
        previous=None if previous is None else from_millis(previous),
        watermark=None if final is None else from_millis(final),
        minute_rows=minute_rows,
        hour_rows=hour_rows,
        stale_hours=stale_hours,
    )
    log.debug("refreshed metric rollups: %s", report)
    return report


def note_late_samples(ranges: Iterable[tuple[int, int, int]]) -> int:
    """Mark rollups stale for samples written below the watermark; call inside the write's transaction.

    ``ranges`` holds (series_id, first ts, last ts) in epoch ms for each
    series of a batch. Reads the watermark (one query; on PostgreSQL with a
    share lock, so that a concurrent ``refresh_rollups`` either saw these
    samples or is waited for) and writes marks only for samples older than
    it, which a live recorder never produces. Returns the marks written.
    """
    db = _db()
    watermark = _read_watermark(db, share=True)
    if watermark is None:
        return 0
    marks = []
    for series_id, first_ts, last_ts in ranges:
        if first_ts < watermark:
            hour = first_ts // HOUR_MS * HOUR_MS
            last_hour = min(last_ts, watermark - 1) // HOUR_MS * HOUR_MS
            marks.extend((series_id, h) for h in range(hour, last_hour + 1, HOUR_MS))
    if marks:
        _insert_stale(db, marks)
    return len(marks)


def invalidate_rollups(
    since: dt.datetime,
    until: dt.datetime | None = None,
    series: MetricSeries | int | None = None,
) -> int:
    """Mark the rollups of ``series`` (default: every series) in [since, until) for recomputation.

    For samples written below the watermark by anything other than the
    ingest path (a backfill, an import, a hand-written fix). The next
    ``refresh_rollups`` recomputes those hours from the raw samples; until
    then ``metric_buckets`` reads them raw. Returns the hours marked.
    """
    since_ms = to_millis(since, "since")
    until_ms = None if until is None else to_millis(until, "until")
    if until_ms is not None and until_ms <= since_ms:
        raise ValidationError("until", until, f"must be after since={since.isoformat()}")
    series_ids = None if series is None else [_series_id(series)]
    db = _db()
    with db.atomic():
        watermark = _read_watermark(db, share=True)
        if watermark is None:
            return 0
        hi = watermark if until_ms is None else min(until_ms, watermark)
        if hi <= since_ms:
            return 0
        if series_ids is None:
            series_ids = [series_id for (series_id,) in MetricSeries.select(MetricSeries.id).tuples()]
        hours = range(since_ms // HOUR_MS * HOUR_MS, hi, HOUR_MS)
        marks = [(series_id, hour) for series_id in series_ids for hour in hours]
        _insert_stale(db, marks)
    return len(marks)


def _insert_stale(db: pw.Database, marks: list[tuple[int, int]]) -> None:
    p = db.param
    sql = (
        f'INSERT INTO "metric_rollup_stale" ("series_id", "hour_start") VALUES ({p}, {p}) '
        'ON CONFLICT ("series_id", "hour_start") DO NOTHING'
    )
    with pw.__exception_wrapper__:
        db.cursor().executemany(sql, marks)


def _read_watermark(db: pw.Database, share: bool = False) -> int | None:
    p = db.param
    lock = " FOR SHARE" if share and not _is_sqlite(db) else ""
    row = db.execute_sql(
        f'SELECT "value" FROM "system_state" WHERE "key" = {p}{lock}', (ROLLUP_WATERMARK_KEY,)
    ).fetchone()
    return None if row is None else _watermark_value(row[0])


def _lock_watermark(db: pw.Database) -> int | None:
    """The watermark, locked until the transaction ends (SQLite: BEGIN IMMEDIATE already did)."""
    if _is_sqlite(db):
        return _read_watermark(db)
    p = db.param
    db.execute_sql(
        f'INSERT INTO "system_state" ("key", "value", "updated_at") VALUES ({p}, {p}, {p}) '
        'ON CONFLICT ("key") DO NOTHING',
        (ROLLUP_WATERMARK_KEY, SystemState.value.db_value({"until": None}), now_millis()),
    )
    row = db.execute_sql(
        f'SELECT "value" FROM "system_state" WHERE "key" = {p} FOR UPDATE', (ROLLUP_WATERMARK_KEY,)
    ).fetchone()
    return _watermark_value(row[0])


def _write_watermark(db: pw.Database, watermark: int) -> None:
    SystemState.write(ROLLUP_WATERMARK_KEY, {"until": watermark})


def _first_sample_minute(db: pw.Database) -> int | None:
    # Per series MIN(ts) is one probe of the (series_id, ts) key; a bare
    # MIN(ts) over the table would read all of it.
    row = db.execute_sql(
        'SELECT MIN("first") FROM (SELECT (SELECT MIN("ts") FROM "metric_sample" '
        'WHERE "series_id" = "metric_series"."id") AS "first" FROM "metric_series") AS "q"'
    ).fetchone()
    if row is None or row[0] is None:
        return None
    return int(row[0]) // MINUTE_MS * MINUTE_MS


_ROLLUP_COLUMNS = (
    '"series_id", "width_ms", "bucket_start", "sample_count", '
    '"value_sum", "value_min", "value_max", "value_last"'
)


def _minutes_from_raw(source: str, where: str) -> str:
    """INSERT minute rollups aggregated from raw samples ``source`` (aliased "s") filtered by ``where``."""
    return (
        f'INSERT INTO "metric_rollup" ({_ROLLUP_COLUMNS}) '
        f'SELECT "g"."series_id", {MINUTE_MS}, "g"."b", "g"."n", "g"."sm", "g"."mn", "g"."mx", '
        '(SELECT "x"."value" FROM "metric_sample" AS "x" WHERE "x"."series_id" = "g"."series_id" '
        'AND "x"."ts" = "g"."k") '
        f'FROM (SELECT "s"."series_id" AS "series_id", "s"."ts" / {MINUTE_MS} * {MINUTE_MS} AS "b", '
        'COUNT(*) AS "n", SUM("s"."value") AS "sm", MIN("s"."value") AS "mn", MAX("s"."value") AS "mx", '
        f'MAX("s"."ts") AS "k" FROM {source} WHERE {where} GROUP BY "s"."series_id", "b") AS "g"'
    )


def _hours_from_minutes(source: str, where: str) -> str:
    """INSERT hour rollups aggregated from minute rollups ``source`` (aliased "r") filtered by ``where``."""
    return (
        f'INSERT INTO "metric_rollup" ({_ROLLUP_COLUMNS}) '
        f'SELECT "g"."series_id", {HOUR_MS}, "g"."b", "g"."n", "g"."sm", "g"."mn", "g"."mx", '
        '(SELECT "x"."value_last" FROM "metric_rollup" AS "x" WHERE "x"."series_id" = "g"."series_id" '
        f'AND "x"."width_ms" = {MINUTE_MS} AND "x"."bucket_start" = "g"."k") '
        f'FROM (SELECT "r"."series_id" AS "series_id", "r"."bucket_start" / {HOUR_MS} * {HOUR_MS} AS "b", '
        'CAST(SUM("r"."sample_count") AS BIGINT) AS "n", SUM("r"."value_sum") AS "sm", '
        'MIN("r"."value_min") AS "mn", MAX("r"."value_max") AS "mx", MAX("r"."bucket_start") AS "k" '
        f'FROM {source} WHERE "r"."width_ms" = {MINUTE_MS} AND {where} GROUP BY "r"."series_id", "b") AS "g"'
    )


def _roll_forward(db: pw.Database, lo: int, hi: int) -> tuple[int, int]:
    """Aggregate raw samples in [lo, hi) into minutes, and the hours that became complete."""
    every_series = 'IN (SELECT "id" FROM "metric_series")'
    # Nothing should be there (rows are only ever written below the
    # watermark); clearing first keeps a retry after a failure exact.
    db.execute_sql(
        f'DELETE FROM "metric_rollup" WHERE "series_id" {every_series} AND "width_ms" = {MINUTE_MS} '
        f'AND "bucket_start" >= {lo} AND "bucket_start" < {hi}'
    )
    minutes = db.execute_sql(
        _minutes_from_raw(
            '"metric_sample" AS "s"',
            f'"s"."series_id" {every_series} AND "s"."ts" >= {lo} AND "s"."ts" < {hi}',
        )
    ).rowcount
    first_hour = lo // HOUR_MS * HOUR_MS
    end_hour = hi // HOUR_MS * HOUR_MS  # hours that end at or before hi are complete
    hours = 0
    if end_hour > first_hour:
        db.execute_sql(
            f'DELETE FROM "metric_rollup" WHERE "series_id" {every_series} AND "width_ms" = {HOUR_MS} '
            f'AND "bucket_start" >= {first_hour} AND "bucket_start" < {end_hour}'
        )
        hours = db.execute_sql(
            _hours_from_minutes(
                '"metric_rollup" AS "r"',
                f'"r"."series_id" {every_series} AND "r"."bucket_start" >= {first_hour} '
                f'AND "r"."bucket_start" < {end_hour}',
            )
        ).rowcount
    return max(minutes, 0), max(hours, 0)


def _recompute_stale(db: pw.Database, watermark: int) -> int:
    """Recompute the minutes (below ``watermark``) and complete hours of every stale hour; clear the marks."""
    (count,) = db.execute_sql('SELECT COUNT(*) FROM "metric_rollup_stale"').fetchone()
    if not count:
        return 0
    # An hour whose raw samples are all gone keeps its rollups (see refresh_rollups).
    mark = '"metric_rollup_stale"'
    db.execute_sql(
        f'DELETE FROM {mark} WHERE NOT EXISTS (SELECT 1 FROM "metric_sample" AS "s" '
        f'WHERE "s"."series_id" = {mark}."series_id" AND "s"."ts" >= {mark}."hour_start" '
        f'AND "s"."ts" < {mark}."hour_start" + {HOUR_MS} AND "s"."ts" < {watermark})'
    )
    stale = db.execute_sql('SELECT "series_id", "hour_start" FROM "metric_rollup_stale"').fetchall()
    if stale:
        p = db.param
        # One key range per mark; a set-based DELETE would read every rollup row.
        with pw.__exception_wrapper__:
            db.cursor().executemany(
                f'DELETE FROM "metric_rollup" WHERE "series_id" = {p} AND "width_ms" IN ({MINUTE_MS}, '
                f'{HOUR_MS}) AND "bucket_start" >= {p} AND "bucket_start" < {p}',
                [(series_id, hour, hour + HOUR_MS) for series_id, hour in stale],
            )
        # CROSS JOIN: SQLite then keeps the few marks as the outer loop and
        # probes the samples' key for each, instead of scanning the samples.
        db.execute_sql(
            _minutes_from_raw(
                '"metric_rollup_stale" AS "st" CROSS JOIN "metric_sample" AS "s"',
                '"s"."series_id" = "st"."series_id" AND "s"."ts" >= "st"."hour_start" '
                f'AND "s"."ts" < "st"."hour_start" + {HOUR_MS} AND "s"."ts" < {watermark}',
            )
        )
        complete_below = watermark // HOUR_MS * HOUR_MS
        db.execute_sql(
            _hours_from_minutes(
                '"metric_rollup_stale" AS "st" CROSS JOIN "metric_rollup" AS "r"',
                '"r"."series_id" = "st"."series_id" AND "r"."bucket_start" >= "st"."hour_start" '
                f'AND "r"."bucket_start" < "st"."hour_start" + {HOUR_MS} '
                f'AND "st"."hour_start" < {complete_below}',
            )
        )
        db.execute_sql('DELETE FROM "metric_rollup_stale"')
    return count
