"""Metric rollups: per-minute and per-hour aggregates of a series, the hours they are stale for,
and the watermark below which they are complete.

The service that brings them up to date is ``stream_state.rollups``; the
readers are in ``stream_state.history.metrics``. What lives here is what the
ingest path (``MetricSample.record_many``) needs in its own transaction:
reading the watermark and marking the hours that late samples made stale.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import peewee as pw

from ..pwtypes import exception_wrapper
from ..timeutil import HOUR_MS
from .base import BaseModel, WithoutRowidOnSqlite, current_database, dialect

# ROLLUP_WATERMARK_KEY: the system_state key of the watermark, {"until": epoch
# ms} (rollups are complete below it), or {"until": null} before the first
# refresh. Defined in metric.py, whose ingest path reads it with the series
# deletion counter; importable from here as before.
from .metric import ROLLUP_WATERMARK_KEY, MetricSeries


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
        model_metadata_class = WithoutRowidOnSqlite


class MetricRollupStale(BaseModel):
    """An hour of a series whose rollups are out of date (samples written below the watermark)."""

    series = pw.ForeignKeyField(MetricSeries, on_delete="CASCADE", index=False)
    hour_start = pw.BigIntegerField()

    class Meta:
        table_name = "metric_rollup_stale"
        primary_key = pw.CompositeKey("series", "hour_start")

    @classmethod
    def note_late_samples(cls, ranges: Iterable[tuple[int, int, int]], earliest: int | None = None) -> int:
        """Mark rollups stale for samples written below the watermark; call inside the write's transaction.

        ``ranges`` holds (series_id, first ts, last ts) in epoch ms for each
        series of a batch. Reads the watermark (one query; on PostgreSQL with a
        share lock, so that a concurrent ``refresh_rollups`` either saw these
        samples or is waited for) and writes marks only for samples older than
        it, which a live recorder never produces. Returns the marks written.
        ``earliest`` (the batch's first ts, when the caller knows it) skips
        reading ``ranges`` (worked out per series) when nothing is late.
        """
        db = current_database()
        return cls.note_late_samples_below(read_watermark(db, share=True), ranges, earliest)

    @classmethod
    def note_late_samples_below(
        cls, watermark: int | None, ranges: Iterable[tuple[int, int, int]], earliest: int | None = None
    ) -> int:
        """``note_late_samples`` with the watermark read already, in the caller's transaction."""
        if watermark is None or (earliest is not None and earliest >= watermark):
            return 0
        db = current_database()
        marks: list[tuple[int, int]] = []
        for series_id, first_ts, last_ts in ranges:
            if first_ts < watermark:
                hour = first_ts // HOUR_MS * HOUR_MS
                last_hour = min(last_ts, watermark - 1) // HOUR_MS * HOUR_MS
                marks.extend((series_id, h) for h in range(hour, last_hour + 1, HOUR_MS))
        if marks:
            cls.mark(db, marks)
            # A compacted hour written into goes back to raw rows (the invariant of models/blocks.py).
            from .blocks import MetricBlock

            MetricBlock.expand(db, marks)
        return len(marks)

    @classmethod
    def mark(cls, db: pw.Database, marks: list[tuple[int, int]]) -> None:
        """Insert (series_id, hour_start) marks, leaving the ones already there."""
        p = db.param
        table = cls._meta.table_name
        series, hour = cls.series.column_name, cls.hour_start.column_name
        sql = (
            f'INSERT INTO "{table}" ("{series}", "{hour}") VALUES ({p}, {p}) '
            f'ON CONFLICT ("{series}", "{hour}") DO NOTHING'
        )
        with exception_wrapper:
            # The dialect's: watched and translated on the package's databases, batched on psycopg2.
            dialect(db).executemany(db.cursor(), sql, marks)


def read_watermark(db: pw.Database, share: bool = False) -> int | None:
    """The rollup watermark in epoch ms (None: never refreshed); ``share``: FOR SHARE on PostgreSQL."""
    p = db.param
    lock = dialect(db).share_lock if share else ""
    row = db.execute_sql(
        f'SELECT "value" FROM "system_state" WHERE "key" = {p}{lock}', (ROLLUP_WATERMARK_KEY,)
    ).fetchone()
    return None if row is None else watermark_value(row[0])


def watermark_value(value: Any) -> int | None:
    """The watermark in a ``system_state`` value as read by a raw query."""
    if isinstance(value, str):  # SQLite hands JSON back as text
        value = json.loads(value)
    if isinstance(value, dict) and isinstance(value.get("until"), int):
        return value["until"]
    return None
