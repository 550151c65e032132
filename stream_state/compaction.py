"""Compacting metric history: whole hours of raw samples into encoded blocks.

``compact_samples()`` (``Maintenance`` runs it hourly as the ``compact``
job) moves every (series, hour) that is older than ``settle`` and already
covered by the rollups from ``metric_sample`` rows (about 19 bytes a sample)
into one ``metric_block`` row (1-2 bytes a sample for rounded values, see
``stream_state.codec`` and bench/blocks.py). Readers combine both, and the
invariant of ``models/blocks.py`` (an hour has a block or raw rows, never
both) keeps their answers exact.

Samples written before migration 007 are not moved by the migration (it would
hold the upgrade's lock while millions of samples are encoded): the first
``compact_samples`` after the upgrade moves them, and ``Maintenance`` runs
its ``compact`` job at its first ``run_due`` (a job that never ran is due).
Until then readers answer exactly from raw rows.

Each transaction handles one series and at most ``hours_per_transaction``
hours, under the rollup watermark's lock (FOR UPDATE on PostgreSQL), which a
late writer takes FOR SHARE: a sample written into an hour while it is being
compacted either is in the block or expands it again right after.
Hours marked stale (late samples not yet rolled up) wait for
``refresh_rollups``. A series with a resolution (``set_resolution``) keeps
its values rounded in the block, so the rollups of an hour that rounding
changes are rewritten from the rounded values in the same transaction:
every answer (rollups, block summaries, decoded samples) stays the one the
stored samples give.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

import peewee as pw

from .models.base import current_database, dialect
from .models.blocks import MetricBlock
from .rollups import _lock_watermark
from .timeutil import HOUR_MS, MINUTE_MS, from_millis, now_millis, to_millis
from .validate import require_count, require_duration_ms

log = logging.getLogger(__name__)

# Hours younger than this stay raw: a manager's samples of the last minutes
# may still be arriving, and recent history is read raw most often.
COMPACT_SETTLE = dt.timedelta(hours=1)


@dataclasses.dataclass(frozen=True, slots=True)
class CompactReport:
    """What one ``compact_samples`` did."""

    blocks: int  # (series, hour) blocks written
    samples: int  # raw samples moved into them
    series: int  # series that had something to compact
    until: dt.datetime | None  # hours before this were considered


def compact_samples(
    now: dt.datetime | None = None,
    *,
    settle: dt.timedelta = COMPACT_SETTLE,
    hours_per_transaction: int = 24,
) -> CompactReport:
    """Move raw samples of whole hours that are older than ``settle`` and rolled up into blocks."""
    now_ms = now_millis() if now is None else to_millis(now, "now")
    settle_ms = require_duration_ms("settle", settle, positive=False)
    step = require_count("hours_per_transaction", hours_per_transaction, maximum=24 * 366) * HOUR_MS
    if step == 0:
        step = HOUR_MS
    db = current_database()
    p = db.param
    blocks = samples = touched = 0
    cutoff: int | None = None
    every = db.execute_sql('SELECT "id", "resolution" FROM "metric_series" ORDER BY "id"').fetchall()
    for series_id, resolution in every:
        lo: int | None = None
        did = False
        while True:
            with db.atomic():
                watermark = _lock_watermark(db)
                if watermark is None:
                    break
                cutoff = min(now_ms - settle_ms, watermark) // HOUR_MS * HOUR_MS
                if lo is None:
                    (first,) = db.execute_sql(
                        f'SELECT MIN("ts") FROM "metric_sample" WHERE "series_id" = {p} AND "ts" < {p}',
                        (series_id, cutoff),
                    ).fetchone()
                    if first is None:
                        break
                    lo = int(first) // HOUR_MS * HOUR_MS
                if lo >= cutoff:
                    break
                hi = min(lo + step, cutoff)
                written, moved = _compact_range(db, series_id, lo, hi, resolution)
                blocks += written
                samples += moved
                did = did or bool(written)
                lo = hi
        touched += did
    report = CompactReport(blocks, samples, touched, None if cutoff is None else from_millis(cutoff))
    if blocks:
        log.info("compacted %d metric samples into %d blocks", samples, blocks)
    return report


def _compact_range(
    db: pw.Database, series_id: int, lo: int, hi: int, resolution: int | None
) -> tuple[int, int]:
    """Blocks for the hours of [lo, hi) of one series (hour-aligned), inside the caller's transaction."""
    p = db.param
    stale = {
        int(hour)
        for (hour,) in db.execute_sql(
            f'SELECT "hour_start" FROM "metric_rollup_stale" WHERE "series_id" = {p} '
            f'AND "hour_start" >= {p} AND "hour_start" < {p}',
            (series_id, lo, hi),
        ).fetchall()
    }
    rows = db.execute_sql(
        f'SELECT "ts", "value" FROM "metric_sample" WHERE "series_id" = {p} AND "ts" >= {p} AND "ts" < {p} '
        'ORDER BY "ts"',
        (series_id, lo, hi),
    ).fetchall()
    hours: dict[int, tuple[list[int], list[float]]] = {}
    for ts, value in rows:
        hour = ts // HOUR_MS * HOUR_MS
        if hour in stale:
            continue
        found = hours.get(hour)
        if found is None:
            found = hours[hour] = ([], [])
        found[0].append(int(ts))
        found[1].append(float(value))
    if not hours:
        return 0, 0
    # By the invariant no block exists for these hours; one left by an
    # interrupted run of older code is merged, the raw values winning.
    existing = MetricBlock.samples_in(db, [series_id], min(hours), max(hours) + HOUR_MS)
    if existing:
        merged = dict(zip(*existing[series_id], strict=True))
        for stamps, values in hours.values():
            merged.update(zip(stamps, values, strict=True))
        hours = {}
        for ts in sorted(merged):
            if ts // HOUR_MS * HOUR_MS in stale:
                continue
            found = hours.setdefault(ts // HOUR_MS * HOUR_MS, ([], []))
            found[0].append(ts)
            found[1].append(merged[ts])
    block_rows = [MetricBlock.row(series_id, hour, *hours[hour], resolution) for hour in sorted(hours)]
    rounded = _rounded_rollups(series_id, hours, resolution) if resolution is not None else []
    # Through the dialect: watched and translated (StorageFull...) like execute_sql.
    with pw.__exception_wrapper__:  # type: ignore[attr-defined]
        many = dialect(db).executemany
        cursor = db.cursor()
        many(cursor, MetricBlock.upsert_sql(db), block_rows)
        many(
            cursor,
            f'DELETE FROM "metric_sample" WHERE "series_id" = {p} AND "ts" >= {p} AND "ts" < {p}',
            [(series_id, hour, hour + HOUR_MS) for hour in sorted(hours)],
        )
        if rounded:
            # The rollups were computed from the values as written; the block
            # keeps them rounded, and every answer must agree with what is stored.
            marks = sorted({(series_id, row[2] // HOUR_MS * HOUR_MS) for row in rounded})
            many(
                cursor,
                f'DELETE FROM "metric_rollup" WHERE "series_id" = {p} AND "width_ms" IN ({MINUTE_MS}, '
                f'{HOUR_MS}) AND "bucket_start" >= {p} AND "bucket_start" < {p}',
                [(sid, hour, hour + HOUR_MS) for sid, hour in marks],
            )
            many(
                cursor,
                'INSERT INTO "metric_rollup" ("series_id", "width_ms", "bucket_start", "sample_count", '
                f'"value_sum", "value_min", "value_max", "value_last") VALUES ({", ".join([p] * 8)})',
                rounded,
            )
    return len(block_rows), sum(len(stamps) for stamps, _ in hours.values())


def _rounded_rollups(
    series_id: int, hours: dict[int, tuple[list[int], list[float]]], resolution: int
) -> list[tuple[int, int, int, int, float, float, float, float]]:
    """Minute and hour rollup rows of the hours whose values ``resolution`` changes, from the rounded values.

    Hours that rounding leaves as they are keep their rollups (no rows).
    """
    rows: list[tuple[int, int, int, int, float, float, float, float]] = []
    for hour in sorted(hours):
        stamps, values = hours[hour]
        kept = [round(v, resolution) for v in values]
        if kept == values:
            continue
        minutes: dict[int, list[float]] = {}
        for ts, value in zip(stamps, kept, strict=True):
            minutes.setdefault(ts // MINUTE_MS * MINUTE_MS, []).append(value)
        for minute in sorted(minutes):
            got = minutes[minute]
            rows.append((series_id, MINUTE_MS, minute, len(got), sum(got), min(got), max(got), got[-1]))
        rows.append((series_id, HOUR_MS, hour, len(kept), sum(kept), min(kept), max(kept), kept[-1]))
    return rows
