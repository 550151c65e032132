"""Compacted metric history: one row per series and hour, its samples encoded in a block.

Raw samples (``metric_sample``) are the crash-safe head: ``record_many``
writes there, one row per sample (about 19 bytes). ``compact_samples`` (run
by ``Maintenance``) moves whole hours that the rollups already cover into
``metric_block`` rows: count, sum, min, max and last of the hour, and the
samples themselves encoded by ``stream_state.codec`` (1-2 bytes a sample for
rounded values). Readers (``history.metric_buckets``, ``metric_values``)
take blocks and raw rows together, so their answers do not change.

The invariant: a (series, hour) has a block or raw
samples, never both. Compaction deletes an hour's raw rows in the
transaction that writes its block; a sample written late into a compacted
hour expands the block back into raw rows in the transaction of that write
(``expand``), and the next compaction packs the hour again. So no reader
ever needs to merge a block with raw rows of the same hour, and the rollups'
stale-hour recomputation from raw rows stays exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import peewee as pw

from .. import codec
from ..fields import BytesField
from ..timeutil import HOUR_MS
from .base import BaseModel, WithoutRowidOnSqlite, dialect
from .metric import MetricSeries


class MetricBlock(BaseModel):
    series = pw.ForeignKeyField(MetricSeries, on_delete="CASCADE", index=False)
    hour_start = pw.BigIntegerField()
    sample_count = pw.IntegerField()
    first_ts = pw.BigIntegerField()
    last_ts = pw.BigIntegerField()
    value_sum = pw.DoubleField()
    value_min = pw.DoubleField()
    value_max = pw.DoubleField()
    value_last = pw.DoubleField()
    # codec.encode's bytes: BLOB on SQLite, bytea on PostgreSQL.
    payload = BytesField()

    class Meta:
        table_name = "metric_block"
        primary_key = pw.CompositeKey("series", "hour_start")
        model_metadata_class = WithoutRowidOnSqlite

    @classmethod
    def row(
        cls,
        series_id: int,
        hour: int,
        stamps: Sequence[int],
        values: Sequence[float],
        resolution: int | None = None,
    ) -> tuple[Any, ...]:
        """The column values of a block for ``stamps``/``values`` (sorted, one hour), in table order.

        With a ``resolution`` the values are rounded to that many decimals,
        the aggregates too, so that they agree with what the block decodes to.
        """
        if resolution is not None:
            values = [round(v, resolution) for v in values]
        return (
            series_id,
            hour,
            len(stamps),
            stamps[0],
            stamps[-1],
            float(sum(values)),
            float(min(values)),
            float(max(values)),
            float(values[-1]),
            codec.encode(stamps, values, resolution),
        )

    @classmethod
    def upsert_sql(cls, db: pw.Database) -> str:
        p = db.param
        columns = ", ".join(f'"{f.column_name}"' for f in cls._meta.sorted_fields)
        marks = ", ".join([p] * len(cls._meta.sorted_fields))
        updates = ", ".join(
            f'"{f.column_name}" = excluded."{f.column_name}"'
            for f in cls._meta.sorted_fields
            if f.name not in ("series", "hour_start")
        )
        return (
            f'INSERT INTO "{cls._meta.table_name}" ({columns}) VALUES ({marks}) '
            f'ON CONFLICT ("series_id", "hour_start") DO UPDATE SET {updates}'
        )

    @classmethod
    def samples_in(
        cls, db: pw.Database, series_ids: Iterable[int], lo: int, hi: int
    ) -> dict[int, tuple[list[int], list[float]]]:
        """The compacted samples of ``series_ids`` with ``lo <= ts < hi``, per series, in time order."""
        ids = ", ".join(str(int(i)) for i in series_ids)
        if not ids:
            return {}
        p = db.param
        rows = db.execute_sql(
            f'SELECT "series_id", "payload" FROM "{cls._meta.table_name}" WHERE "series_id" IN ({ids}) '
            f'AND "hour_start" >= {p} AND "hour_start" < {p} ORDER BY "series_id", "hour_start"',
            (lo // HOUR_MS * HOUR_MS, hi),
        ).fetchall()
        found: dict[int, tuple[list[int], list[float]]] = {}
        for series_id, payload in rows:
            stamps, values = codec.decode_between(bytes(payload), lo, hi, series_id=series_id)
            into = found.setdefault(series_id, ([], []))
            into[0].extend(stamps)
            into[1].extend(values)
        return found

    @classmethod
    def expand(cls, db: pw.Database, marks: Sequence[tuple[int, int]]) -> int:
        """Turn the blocks of (series, hour) ``marks`` back into raw samples, in the write's transaction.

        A raw sample already there (the late write itself) wins over the
        block's value for the same millisecond. Returns the blocks expanded.
        """
        if not marks:
            return 0
        p = db.param
        table = cls._meta.table_name
        found = []
        for chunk in pw.chunked(sorted(set(marks)), 200):
            where = " OR ".join([f'("series_id" = {p} AND "hour_start" = {p})'] * len(chunk))
            found += db.execute_sql(
                f'SELECT "series_id", "hour_start", "payload" FROM "{table}" WHERE {where}',
                [value for mark in chunk for value in mark],
            ).fetchall()
        if not found:
            return 0
        rows: list[tuple[int, int, float]] = []
        for series_id, _hour, payload in found:
            stamps, values = codec.decode(bytes(payload), series_id=series_id)
            rows.extend(zip([series_id] * len(stamps), stamps, values, strict=True))
        with pw.__exception_wrapper__:  # type: ignore[attr-defined]
            # Through the dialect: watched and translated like execute_sql, batched on psycopg2.
            dialect(db).executemany(
                db.cursor(),
                f'INSERT INTO "metric_sample" ("series_id", "ts", "value") VALUES ({p}, {p}, {p}) '
                'ON CONFLICT ("series_id", "ts") DO NOTHING',
                rows,
            )
            dialect(db).executemany(
                db.cursor(),
                f'DELETE FROM "{table}" WHERE "series_id" = {p} AND "hour_start" = {p}',
                [(series_id, hour) for series_id, hour, _ in found],
            )
        return len(found)

    @classmethod
    def purge(cls, db: pw.Database, series_id: int, cutoff: int) -> int:
        """Drop the compacted samples of one series older than ``cutoff``; returns how many.

        Whole blocks below the cutoff's hour go in one DELETE; the block of
        the hour the cutoff falls in keeps its samples from the cutoff on.
        """
        p = db.param
        table = cls._meta.table_name
        hour = cutoff // HOUR_MS * HOUR_MS
        (whole,) = db.execute_sql(
            f'SELECT COALESCE(SUM("sample_count"), 0) FROM "{table}" '
            f'WHERE "series_id" = {p} AND "hour_start" < {p}',
            (series_id, hour),
        ).fetchone()
        if whole:
            db.execute_sql(
                f'DELETE FROM "{table}" WHERE "series_id" = {p} AND "hour_start" < {p}', (series_id, hour)
            )
        cut = db.execute_sql(
            f'SELECT "payload" FROM "{table}" '
            f'WHERE "series_id" = {p} AND "hour_start" = {p} AND "first_ts" < {p}',
            (series_id, hour, cutoff),
        ).fetchone()
        trimmed = 0
        if cut is not None:
            stamps, values = codec.decode(bytes(cut[0]), series_id=series_id)
            keep = [i for i, ts in enumerate(stamps) if ts >= cutoff]
            trimmed = len(stamps) - len(keep)
            if keep:
                row = cls.row(series_id, hour, [stamps[i] for i in keep], [values[i] for i in keep])
                db.execute_sql(cls.upsert_sql(db), row)
            else:
                db.execute_sql(
                    f'DELETE FROM "{table}" WHERE "series_id" = {p} AND "hour_start" = {p}', (series_id, hour)
                )
        return int(whole) + trimmed
