"""Metric samples and their aggregates per step, from the rollups where they are complete.

``metric_buckets`` combines the rollups (kept up to date by
``stream_state.rollups.refresh_rollups``) with raw samples for the parts they
do not cover (ragged edges, the recent part past the rollup watermark, hours
marked stale by late writes), so its answer is always the one the raw
samples give. Hours that ``compact_samples`` moved into ``metric_block`` rows
are read from their blocks wherever raw samples would be (an hour has one or
the other, never both: models/blocks.py).
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

import peewee as pw

from .. import codec
from ..backends import current_database, dialect
from ..errors import ValidationError
from ..models import MetricBlock, MetricSample, MetricSeries, Stream
from ..models.rollups import ROLLUP_WATERMARK_KEY, watermark_value
from ..pwtypes import tuple_rows
from ..redact import redact_data
from ..timeutil import HOUR_MS, MINUTE_MS, from_millis
from ..validate import require_count, require_duration_ms
from ._args import resolve_stream, window

# Rollup widths, coarsest first; a bucket width that is a multiple of one
# (and so aligned with it) is answered from it.
ROLLUP_WIDTHS = (HOUR_MS, MINUTE_MS)
MAX_BUCKETS = 100_000
# Arms of one UNION ALL; SQLite allows 500.
_ARMS_PER_QUERY = 100


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


def metric_values(
    series: MetricSeries | int, since: dt.datetime, until: dt.datetime, *, limit: int | None = None
) -> list[tuple[dt.datetime, float]]:
    """Every sample of one series in [since, until) as (time, value), oldest first: compacted and raw.

    Two queries: the blocks of the range and the raw rows (``metric_samples``);
    ``limit`` keeps the first n.
    """
    series_id = MetricSeries.existing_id(series)
    since_ms, until_ms = window(since, until)
    db = current_database()
    stamps, values = MetricBlock.samples_in(db, [series_id], since_ms, until_ms).get(series_id, ([], []))
    p = db.param
    bound = "" if limit is None else f" LIMIT {int(limit)}"
    raw = db.execute_sql(
        f'SELECT "ts", "value" FROM "metric_sample" WHERE "series_id" = {p} AND "ts" >= {p} AND "ts" < {p} '
        f'ORDER BY "ts"{bound}',
        (series_id, since_ms, until_ms),
    ).fetchall()
    found = list(zip(stamps, values, strict=True)) + [(int(ts), float(value)) for ts, value in raw]
    found.sort(key=lambda pair: pair[0])
    return [(from_millis(ts), value) for ts, value in found[:limit]]


def metric_samples(
    series: MetricSeries | int, since: dt.datetime, until: dt.datetime
) -> pw.ModelSelect[MetricSample]:
    """Raw samples of one series in [since, until), oldest first (a query: add ``.tuples()``...).

    Only the raw head: hours that ``compact_samples`` moved into blocks are
    not in it. ``metric_values`` reads both.
    """
    series_id = MetricSeries.existing_id(series)
    since_ms, until_ms = window(since, until)
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
    only (compacted hours: their blocks). Two queries (one more for a
    series id that has no bucket in the range, to tell it from an unknown id).
    """
    if isinstance(series, MetricSeries):
        series_id = MetricSeries.existing_id(series)
    else:
        # An id is looked up only when nothing was found: a bucket is proof enough that it exists.
        series_id = (
            require_count("series", series) if type(series) is int else MetricSeries.existing_id(series)
        )
    found = _buckets([series_id], since, until, step, source).get(series_id)
    if found is None:
        MetricSeries.existing_id(series_id)
        return []
    return found


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


@dataclasses.dataclass(frozen=True, slots=True)
class SeriesInfo:
    """Who a metric series belongs to: its stream's name (None: a system series) and labels."""

    id: int
    stream: str | None
    labels: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "stream": self.stream, "labels": redact_data(self.labels)}


@dataclasses.dataclass(frozen=True, slots=True)
class SamplePoint:
    """One raw sample of a series."""

    time: dt.datetime
    series_id: int
    value: float

    def as_dict(self) -> dict[str, Any]:
        return {"time": self.time, "series_id": self.series_id, "value": self.value}


@dataclasses.dataclass(frozen=True, slots=True)
class BucketPoint:
    """One bucket of a series: count, min, avg, max and last of its samples."""

    time: dt.datetime  # the bucket's start
    series_id: int
    count: int
    min: float
    avg: float
    max: float
    last: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "series_id": self.series_id,
            "count": self.count,
            "min": self.min,
            "avg": self.avg,
            "max": self.max,
            "last": self.last,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class MetricPoints:
    """A metric over a window, every matching series in one list of points by time.

    ``step`` None: raw samples (``SamplePoint``); else buckets (``BucketPoint``).
    """

    name: str
    since: dt.datetime
    until: dt.datetime
    step: dt.timedelta | None
    series: tuple[SeriesInfo, ...]  # every matching series, with or without points
    points: tuple[SamplePoint | BucketPoint, ...]  # by time, then series id; at most ``limit``

    def series_info(self, series_id: int) -> SeriesInfo:
        return next(s for s in self.series if s.id == series_id)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON, labels masked (``stream-state metrics --json``)."""
        return {
            "name": self.name,
            "since": self.since,
            "until": self.until,
            "bucket_seconds": self.step.total_seconds() if self.step is not None else 0.0,
            "series": [s.as_dict() for s in self.series],
            "points": [p.as_dict() for p in self.points],
        }


def metric_points(
    name: str,
    since: dt.datetime,
    until: dt.datetime,
    step: dt.timedelta | None = None,
    *,
    stream: Stream | int | str | None = None,
    labels: dict[str, str | int] | None = None,
    limit: int = 1000,
) -> MetricPoints:
    """Metric ``name`` over [since, until) for every matching series: raw samples, or buckets of ``step``.

    Series are matched like ``MetricSeries.matching``. The points of all
    series come in one list by time (then series id), cut at ``limit``:
    the first ``limit`` points of the window. Raw samples take one query per
    series, each reading at most ``limit`` rows; buckets are
    ``metric_buckets_matching``'s.
    """
    if require_count("limit", limit) < 1:
        raise ValidationError("limit", limit, "expected a positive integer")
    points: list[SamplePoint | BucketPoint]
    if step is None:
        stream_id = None if stream is None else resolve_stream(stream).id
        matched = list(MetricSeries.matching(name, stream=stream_id, labels=labels))
        points = [
            SamplePoint(time=ts, series_id=s.id, value=value)
            for s in matched
            for ts, value in metric_values(s, since, until, limit=limit)
        ]
    else:
        by_series = metric_buckets_matching(name, since, until, step, stream=stream, labels=labels)
        matched = [m.series for m in by_series]
        points = [
            BucketPoint(b.start, m.series.id, b.count, b.min, b.avg, b.max, b.last)
            for m in by_series
            for b in m.buckets
        ]
    stream_ids = {s.stream_id for s in matched if s.stream_id is not None}
    names: dict[int, str] = {}
    if stream_ids:
        names = dict(tuple_rows(Stream.select(Stream.id, Stream.name).where(Stream.id.in_(stream_ids))))
    points.sort(key=lambda p: (p.time, p.series_id))
    return MetricPoints(
        name=name,
        since=since,
        until=until,
        step=step,
        series=tuple(
            SeriesInfo(s.id, None if s.stream_id is None else names.get(s.stream_id), s.labels or {})
            for s in matched
        ),
        points=tuple(points[:limit]),
    )


def _buckets(
    series_ids: list[int], since: dt.datetime, until: dt.datetime, step: dt.timedelta, source: str
) -> dict[int, list[Bucket]]:
    """Buckets of ``series_ids``: one query for the rollup state, one for every piece of the plan.

    Whole rollup buckets come from the rollups; the rest (ragged edges, the
    head past the watermark, stale hours) from raw rows and, where those
    hours were compacted, from their blocks: a block whose samples all fall
    in one bucket of the piece is answered by its stored summary (count,
    sum, min, max, last), only a block cut by the piece or by a bucket is
    decoded (models/blocks.py). Rows are read from the cursor, no models.
    """
    since_ms, until_ms = window(since, until)
    step_ms = require_duration_ms("step", step, positive=True)
    if (until_ms - 1) // step_ms - since_ms // step_ms + 1 > MAX_BUCKETS:
        raise ValidationError(
            "step", step, f"more than {MAX_BUCKETS} buckets in the range; use a larger step"
        )
    if source not in ("auto", "raw"):
        raise ValidationError("source", source, 'expected "auto" or "raw"')
    db = current_database()
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
    # PostgreSQL types an untyped NULL of the first arms as text, which then clashes with bytea.
    no_payload = "NULL" if dialect(db).is_sqlite else "CAST(NULL AS BYTEA)"
    arms: list[tuple[str, list[int]]] = []
    for plan, ids in plans.items():
        for width, lo, hi in plan:
            arms.append(_arm_sql(db.param, width, lo, hi, step_ms, ids, no_payload))
            if width == 0:
                # Compacted hours have no raw rows (models/blocks.py): their blocks answer instead.
                arms.append(_block_arm_sql(db.param, lo, hi, step_ms, ids))
    merged: dict[tuple[int, int], list[Any]] = {}
    for start in range(0, len(arms), _ARMS_PER_QUERY):
        batch = arms[start : start + _ARMS_PER_QUERY]
        sql = " UNION ALL ".join(text for text, _ in batch)
        params = [value for _, values in batch for value in values]
        for series_id, bucket, count, total, low, high, last_key, last, payload, lo, hi in db.execute_sql(
            sql, params
        ).fetchall():
            if payload is not None:
                _fold_block(merged, series_id, bytes(payload), lo, hi, step_ms)
                continue
            key = (series_id, bucket)
            found = merged.get(key)
            if found is None:
                merged[key] = [count, total, low, high, last_key, last]
                continue
            found[0] += count
            found[1] += total
            if low < found[2]:
                found[2] = low
            if high > found[3]:
                found[3] = high
            if last_key > found[4]:
                found[4], found[5] = last_key, last
    result: dict[int, list[Bucket]] = {}
    if not merged:
        return result
    step_td = dt.timedelta(milliseconds=step_ms)
    # Every bucket start is a multiple of the step: one datetime, then
    # timedelta arithmetic (from_millis per bucket costs several times more);
    # a bucket that follows the previous one starts at its (immutable) end.
    base_ms = min(bucket for _, bucket in merged)
    base = from_millis(base_ms)
    found_list: list[Bucket] = []
    previous_series, previous_bucket, previous_end = None, 0, base
    for (series_id, bucket), (count, total, low, high, _, last) in sorted(merged.items()):
        if series_id != previous_series:
            found_list = result[series_id] = []
            previous_series = series_id
            opens = base + step_td * ((bucket - base_ms) // step_ms)
        elif bucket == previous_bucket + step_ms:
            opens = previous_end
        else:
            opens = base + step_td * ((bucket - base_ms) // step_ms)
        previous_bucket, previous_end = bucket, opens + step_td
        found_list.append(
            _new_bucket(opens, previous_end, int(count), float(total), float(low), float(high), float(last))
        )
    return result


def _bucket_maker() -> Callable[[dt.datetime, dt.datetime, int, float, float, float, float], Bucket]:
    """``Bucket(...)`` at about half the cost: a week of hours is 168 of them on every chart refresh.

    A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``; this sets the slots through their descriptors,
    which is what that ends in. The result is an ordinary ``Bucket`` (equal,
    hashable, frozen).
    """
    new = object.__new__
    start, end, count, total, low, high, last = (
        getattr(Bucket, field.name).__set__ for field in dataclasses.fields(Bucket)
    )

    def make(
        opens: dt.datetime, closes: dt.datetime, n: int, s: float, mn: float, mx: float, lv: float
    ) -> Bucket:
        bucket = new(Bucket)
        start(bucket, opens)
        end(bucket, closes)
        count(bucket, n)
        total(bucket, s)
        low(bucket, mn)
        high(bucket, mx)
        last(bucket, lv)
        return bucket

    return make


_new_bucket = _bucket_maker()


def _fold_block(
    merged: dict[tuple[int, int], list[Any]], series_id: int, payload: bytes, lo: int, hi: int, step: int
) -> None:
    """Add the samples of one block that fall in [lo, hi) to their buckets.

    Only those samples are decoded; their stamps are sorted, so each bucket
    is a slice found by bisection and aggregated by the builtins, not
    sample by sample in Python.
    """
    stamps, values = codec.decode_between(payload, lo, hi, series_id=series_id)
    i, end = 0, len(stamps)
    while i < end:
        bucket = stamps[i] // step * step
        j = bisect.bisect_left(stamps, bucket + step, i, end)
        part = values[i:j]
        key = (series_id, bucket)
        found = merged.get(key)
        if found is None:
            merged[key] = [j - i, sum(part), min(part), max(part), stamps[j - 1], part[-1]]
        else:
            found[0] += j - i
            found[1] += sum(part)
            found[2] = min(found[2], *part)
            found[3] = max(found[3], *part)
            if stamps[j - 1] > found[4]:
                found[4], found[5] = stamps[j - 1], part[-1]
        i = j


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


def _arm_sql(
    p: str, width: int, lo: int, hi: int, step: int, series_ids: list[int], no_payload: str = "NULL"
) -> tuple[str, list[int]]:
    """One piece as (series, bucket, count, sum, min, max, last_key, last, NULL, 0, 0) rows per step bucket.

    The three last columns are the block arm's (``_block_arm_sql``), which
    shares the UNION ALL; ``no_payload`` is the NULL payload, typed as the
    backend needs. Times, widths and the step are parameters (``p``), so a
    chart that moves its window every refresh runs the same text, which the
    driver keeps prepared; the ids, integers read from the database, are
    inlined (a thousand series stay far from any parameter limit).
    """
    ids = ", ".join(str(int(i)) for i in series_ids)
    if width == step:
        # A rollup bucket is a result bucket: its row as it is, no grouping, no lookup of the last value.
        return (
            'SELECT "series_id", "bucket_start", "sample_count", "value_sum", "value_min", "value_max", '
            f'"bucket_start", "value_last", {no_payload}, 0, 0 FROM "metric_rollup" '
            f'WHERE "series_id" IN ({ids}) AND "width_ms" = {p} AND "bucket_start" >= {p} '
            f'AND "bucket_start" < {p}',
            [width, lo, hi],
        )
    if width == 0:
        inner = (
            f'SELECT "series_id", "ts" / {p} * {p} AS "b", COUNT(*) AS "n", SUM("value") AS "s", '
            f'MIN("value") AS "mn", MAX("value") AS "mx", MAX("ts") AS "k" FROM "metric_sample" '
            f'WHERE "series_id" IN ({ids}) AND "ts" >= {p} AND "ts" < {p} GROUP BY "series_id", "b"'
        )
        inner_params = [step, step, lo, hi]
        last = (
            'SELECT "value" FROM "metric_sample" AS "x" '
            'WHERE "x"."series_id" = "g"."series_id" AND "x"."ts" = "g"."k"'
        )
        last_params = []
    else:
        inner = (
            f'SELECT "series_id", "bucket_start" / {p} * {p} AS "b", '
            f'CAST(SUM("sample_count") AS BIGINT) AS "n", SUM("value_sum") AS "s", MIN("value_min") AS "mn", '
            f'MAX("value_max") AS "mx", MAX("bucket_start") AS "k" FROM "metric_rollup" '
            f'WHERE "series_id" IN ({ids}) AND "width_ms" = {p} AND "bucket_start" >= {p} '
            f'AND "bucket_start" < {p} GROUP BY "series_id", "b"'
        )
        inner_params = [step, step, width, lo, hi]
        last = (
            'SELECT "value_last" FROM "metric_rollup" AS "x" WHERE "x"."series_id" = "g"."series_id" '
            f'AND "x"."width_ms" = {p} AND "x"."bucket_start" = "g"."k"'
        )
        last_params = [width]
    return (
        f'SELECT "g"."series_id", "g"."b", "g"."n", "g"."s", "g"."mn", "g"."mx", "g"."k", ({last}), '
        f'{no_payload}, 0, 0 FROM ({inner}) AS "g"',
        last_params + inner_params,
    )


def _block_arm_sql(p: str, lo: int, hi: int, step: int, series_ids: list[int]) -> tuple[str, list[int]]:
    """The compacted hours of a raw piece [lo, hi): a block's summary, or its payload to decode.

    A block whose samples all lie in [lo, hi) and in one step bucket is
    that bucket's (count, sum, min, max, last) as stored, and its payload
    is not even read; any other block comes with its payload and the
    piece's bounds (the last two columns), for ``_fold_block``.
    """
    ids = ", ".join(str(int(i)) for i in series_ids)
    return (
        f'SELECT "series_id", "first_ts" / {p} * {p}, "sample_count", "value_sum", "value_min", '
        f'"value_max", "last_ts", "value_last", CASE WHEN "first_ts" >= {p} AND "last_ts" < {p} '
        f'AND "first_ts" / {p} = "last_ts" / {p} THEN NULL ELSE "payload" END, {p}, {p} '
        f'FROM "metric_block" WHERE "series_id" IN ({ids}) AND "hour_start" >= {p} '
        f'AND "hour_start" < {p} AND "last_ts" >= {p} AND "first_ts" < {p}',
        [step, step, lo, hi, step, step, lo, hi, lo // HOUR_MS * HOUR_MS, hi, lo, hi],
    )


def _rollup_state(
    db: pw.Database, series_ids: list[int], since_ms: int, until_ms: int
) -> tuple[int | None, dict[int, set[int]]]:
    """The rollup watermark and the stale hours of ``series_ids`` in range: one query."""
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
            watermark = watermark_value(value)
        else:
            stale.setdefault(series_id, set()).add(int(hour))
    return watermark, stale
