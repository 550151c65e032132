"""The rollup and usage writers: bring the metric rollups up to date, mark them for
recomputation, and rebuild the storage-used summary.

Metric rollups (per-minute and per-hour count, sum, min, max and last value)
are brought up to date by ``refresh_rollups()``, which the maintenance
schedule calls every few minutes; ``history.metric_buckets`` combines them
with raw samples for the parts they do not cover (ragged edges, the recent
part past the rollup watermark, hours marked stale by late writes), so its
answer is always the one the raw samples give.

The readers of these tables are in ``stream_state.history``; the tables are
in ``stream_state.models.rollups`` and ``stream_state.models.usage``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable

import peewee as pw

from .backends import current_database, dialect
from .errors import ValidationError
from .models import MetricSeries, SystemState
from .models.rollups import ROLLUP_WATERMARK_KEY, MetricRollupStale, read_watermark, watermark_value
from .models.usage import USAGE_FILL_SQL, RecordingUsage
from .pwtypes import exception_wrapper, tuple_rows
from .timeutil import HOUR_MS, MINUTE_MS, from_millis, now_millis, to_millis
from .validate import require_duration_ms

log = logging.getLogger(__name__)

# refresh_rollups() without ``until`` stops this far before now: a manager
# commits its samples every 10-60 s, so the last minutes are still arriving.
ROLLUP_SETTLE = dt.timedelta(minutes=2)
ROLLUP_CHUNK = dt.timedelta(hours=6)


@dataclasses.dataclass(frozen=True, slots=True)
class RollupReport:
    """What one ``refresh_rollups`` did."""

    previous: dt.datetime | None  # the watermark before
    watermark: dt.datetime | None  # rollups are complete below this
    minute_rows: int
    hour_rows: int
    stale_hours: int  # late-written hours recomputed


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
    chunk_ms = max(HOUR_MS, require_duration_ms("chunk", chunk, positive=True) // HOUR_MS * HOUR_MS)
    target = until_ms // MINUTE_MS * MINUTE_MS
    db = current_database()
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
    final = read_watermark(db)
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
    series of a batch; returns the marks written. ``MetricSample.record_many``
    does this itself; see ``MetricRollupStale.note_late_samples``.
    """
    return MetricRollupStale.note_late_samples(ranges)


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
    series_ids = None if series is None else [MetricSeries.existing_id(series)]
    db = current_database()
    with db.atomic():
        watermark = read_watermark(db, share=True)
        if watermark is None:
            return 0
        hi = watermark if until_ms is None else min(until_ms, watermark)
        if hi <= since_ms:
            return 0
        if series_ids is None:
            series_ids = [series_id for (series_id,) in tuple_rows(MetricSeries.select(MetricSeries.id))]
        hours = range(since_ms // HOUR_MS * HOUR_MS, hi, HOUR_MS)
        marks = [(series_id, hour) for series_id in series_ids for hour in hours]
        MetricRollupStale.mark(db, marks)
    return len(marks)


def _lock_watermark(db: pw.Database) -> int | None:
    """The watermark, locked until the transaction ends (SQLite: BEGIN IMMEDIATE already did)."""
    if dialect(db).is_sqlite:
        return read_watermark(db)
    p = db.param
    db.execute_sql(
        f'INSERT INTO "system_state" ("key", "value", "updated_at") VALUES ({p}, {p}, {p}) '
        'ON CONFLICT ("key") DO NOTHING',
        (ROLLUP_WATERMARK_KEY, SystemState.value.db_value({"until": None}), now_millis()),
    )
    row = db.execute_sql(
        f'SELECT "value" FROM "system_state" WHERE "key" = {p} FOR UPDATE', (ROLLUP_WATERMARK_KEY,)
    ).fetchone()
    return watermark_value(row[0])


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
        with exception_wrapper:
            dialect(db).executemany(
                db.cursor(),
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


# --- storage used: the summary -------------------------------------------------------------


def rebuild_usage() -> int:
    """Recompute the ``recording_usage`` summary from the segments; return its row count.

    The triggers keep it exact, so this is a repair tool (after restoring a
    table by hand, say), run in one transaction.
    """
    db = current_database()
    with db.atomic():
        db.execute_sql(f'DELETE FROM "{RecordingUsage._meta.table_name}"')
        db.execute_sql(USAGE_FILL_SQL)
        return RecordingUsage.select().count()
