"""Metric ingest: MetricSample.record_many against the driver's own executemany.

    python bench/ingest.py                                             # SQLite
    python bench/ingest.py --pg postgresql://postgres@127.0.0.1:5432/test  # and PostgreSQL

Every database is fresh and built by ``open_database``, so the baseline writes
into exactly the schema the package uses. Both sides write the same
(series_id, ts, value) rows with the same statement,
``INSERT ... ON CONFLICT (series_id, ts) DO UPDATE SET value = excluded.value``,
in one transaction. The baseline gets its rows ready-made, in tick order (every
series at t0, then every series at t1, ...), the order a recorder produces
them. ``record_many`` gets the same samples as (name, value, stream, labels,
at) tuples, the way a stream manager hands them over (one labels dict per
series, one ``at`` per tick), and pays for validating them and resolving their
series. It writes them in key order; the baseline is also timed with its rows
pre-sorted, to show how much of the result that order is worth.

Each figure is the best of ``--repeat`` runs, interleaved, wall clock and
(SQLite only, where all the work is in this process) CPU time, which a busy
machine disturbs less. Ratios are baseline time / record_many time measured in
this run: 1.0 means as fast as the driver alone. Storage: bytes per sample of
the metric_sample b-tree after VACUUM (dbstat), and the growth of the whole
file. Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import pstats
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import peewee as pw

from stream_state import MetricSample, MetricSeries, Stream, open_database
from stream_state.database import sqlite_pragmas
from stream_state.models.metric import series_key

GOAL_RATIO = 0.8
GOAL_BYTES = 20.0
NAMES = ("bitrate_kbps", "fps", "frames_dropped", "latency_ms", "decode_ms")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
T0 = dt.datetime(2026, 11, 26, 0, 0, tzinfo=dt.UTC)
UPSERT = (
    'INSERT INTO "metric_sample" ("series_id", "ts", "value") VALUES ({p}, {p}, {p}) '
    'ON CONFLICT ("series_id", "ts") DO UPDATE SET "value" = excluded."value"'
)
PG_PAGE_SIZE = 1000  # the page size record_many uses with psycopg2 (backends.PG_PAGE_SIZE)

Row = tuple[int, int, float]


class Workload:
    """``n_series`` series sampled every 10 s at ``n_times`` ticks, in tick order."""

    def __init__(self, n_series: int, n_times: int, seed: int = 1):
        rng = random.Random(seed)
        self.n_streams = max(1, -(-n_series // len(NAMES)))
        # Series i: metric NAMES[i % 5] of stream i // 5 + 1, with a labels dict of its own.
        self.series = [
            (
                NAMES[i % len(NAMES)],
                i // len(NAMES) + 1,
                {"pipeline": "main", "codec": ("h264", "h265")[i % 2]},
            )
            for i in range(n_series)
        ]
        times = [T0 + dt.timedelta(seconds=10 * t) for t in range(n_times)]
        # Values with a fraction (bitrates, latencies): SQLite stores each as an 8-byte REAL.
        values = [[round(rng.uniform(0, 5000), 3) for _ in range(n_series)] for _ in range(n_times)]
        self.samples = [
            (name, values[t][i], stream_id, labels, at)
            for t, at in enumerate(times)
            for i, (name, stream_id, labels) in enumerate(self.series)
        ]
        # Series are created in order, so series i has id i + 1 in a fresh database.
        millis = [(at - EPOCH) // dt.timedelta(milliseconds=1) for at in times]
        self.rows: list[Row] = [
            (i + 1, millis[t], values[t][i]) for t in range(n_times) for i in range(n_series)
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def populate(self, *, series: bool) -> None:
        """Streams, and optionally the series, in the database the models are bound to."""
        Stream.insert_many(
            [
                {"name": f"cam-{n}", "uri": f"rtsp://10.0.{n // 250}.{n % 250}/s"}
                for n in range(1, self.n_streams + 1)
            ]
        ).execute()
        if not series:
            return
        rows = [
            {"key": series_key(name, sid, labels), "name": name, "stream": sid, "labels": labels}
            for name, sid, labels in self.series
        ]
        for chunk in pw.chunked(rows, 100):
            MetricSeries.insert_many(chunk).execute()
        assert MetricSeries.select(pw.fn.MAX(MetricSeries.id)).scalar() == len(self.series)


class Timing(NamedTuple):
    wall: float
    cpu: float


def timed(fn: Callable[[], Any]) -> Timing:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def best(runs: list[Timing]) -> Timing:
    return Timing(min(t.wall for t in runs), min(t.cpu for t in runs))


def line(label: str, n: int, t: Timing, baseline: Timing | None = None, cpu: bool = True) -> str:
    text = f"  {label:<42} {n / t.wall:>10,.0f} samples/s {t.wall * 1000:8.0f} ms"
    if baseline is not None:
        text += f"   ratio {baseline.wall / t.wall:.2f}"
        if cpu:
            text += f" (CPU {baseline.cpu / t.cpu:.2f})"
    return text


def check_rows(db: pw.Database, work: Workload) -> None:
    count, total = db.execute_sql("SELECT COUNT(*), SUM(value) FROM metric_sample").fetchone()
    assert count == len(work.rows), (count, len(work.rows))
    assert abs(total - sum(row[2] for row in work.rows)) < 1e-6 * abs(total), total


# --- SQLite -------------------------------------------------------------------------


def sqlite_db(workdir: Path, work: Workload, *, series: bool) -> pw.SqliteDatabase:
    db = open_database(f"sqlite:///{workdir / f'{uuid.uuid4().hex[:8]}.db'}")
    with db.atomic():
        work.populate(series=series)
    return db


def raw_sqlite(path: str, rows: list[Row]) -> Timing:
    con = sqlite3.connect(path, isolation_level=None)
    try:
        for name, value in sqlite_pragmas():  # the package's pragmas: foreign keys, cache, sync
            con.execute(f"PRAGMA {name} = {value}")
        sql = UPSERT.format(p="?")

        def run() -> None:
            con.execute("BEGIN IMMEDIATE")
            con.executemany(sql, rows)
            con.execute("COMMIT")

        return timed(run)
    finally:
        con.close()


def file_bytes(db: pw.SqliteDatabase) -> int:
    (pages,) = db.execute_sql("PRAGMA page_count").fetchone()
    (size,) = db.execute_sql("PRAGMA page_size").fetchone()
    return pages * size


def sqlite_storage(db: pw.SqliteDatabase, n: int, empty_bytes: int) -> tuple[float, float]:
    db.execute_sql("VACUUM")
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    (table_bytes,) = db.execute_sql("SELECT SUM(pgsize) FROM dbstat WHERE name = 'metric_sample'").fetchone()
    return table_bytes / n, (file_bytes(db) - empty_bytes) / n


def bench_sqlite(work: Workload, repeat: int, profile: bool) -> None:
    n = len(work)
    runs: dict[str, list[Timing]] = {"raw": [], "raw_sorted": [], "warm": [], "cold": []}
    sorted_rows = sorted(work.rows, key=lambda row: (row[0], row[1]))
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        workdir = Path(tmp)
        empty = sqlite_db(workdir, work, series=True)
        empty.execute_sql("VACUUM")
        empty_bytes = file_bytes(empty)
        empty.close()

        for run in range(repeat):
            for label, rows in (("raw", work.rows), ("raw_sorted", sorted_rows)):
                db = sqlite_db(workdir, work, series=True)
                db.close()
                runs[label].append(raw_sqlite(db.database, rows))

            db = sqlite_db(workdir, work, series=True)
            runs["warm"].append(timed(lambda: MetricSample.record_many(work.samples)))
            if run == 0:
                check_rows(db, work)
                storage = sqlite_storage(db, n, empty_bytes)
            db.close()

            db = sqlite_db(workdir, work, series=False)
            runs["cold"].append(timed(lambda: MetricSample.record_many(work.samples)))
            db.close()

        # The same samples with integral values (counters, frame rates): SQLite
        # stores a REAL without a fraction as a small integer.
        integral = [
            (name, float(round(value)), sid, labels, at) for name, value, sid, labels, at in work.samples
        ]
        db = sqlite_db(workdir, work, series=True)
        MetricSample.record_many(integral)
        storage_integral = sqlite_storage(db, n, empty_bytes)
        db.close()

        if profile:
            db = sqlite_db(workdir, work, series=True)
            profiler = cProfile.Profile()
            profiler.runcall(MetricSample.record_many, work.samples)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
            db.close()

    raw, raw_sorted, warm, cold = (best(runs[k]) for k in ("raw", "raw_sorted", "warm", "cold"))
    print(f"SQLite {sqlite3.sqlite_version}: {n:,} samples, {len(work.series):,} series, best of {repeat}")
    print(line("raw sqlite3 executemany, tick order", n, raw))
    print(line("raw sqlite3 executemany, key order", n, raw_sorted))
    print(line("record_many, series exist", n, warm, raw))
    print(line("record_many, series created by the call", n, cold, raw))
    print(
        f"  against the key-order baseline: ratio {raw_sorted.wall / warm.wall:.2f} "
        f"(CPU {raw_sorted.cpu / warm.cpu:.2f}) and {raw_sorted.wall / cold.wall:.2f} "
        f"(CPU {raw_sorted.cpu / cold.cpu:.2f})"
    )
    verdict = "met" if raw.wall / warm.wall >= GOAL_RATIO else "NOT MET"
    print(f"  goal: record_many >= {GOAL_RATIO} of raw: {verdict}")
    print("  storage after VACUUM, bytes per sample:  metric_sample b-tree   whole file growth")
    for label, (per_table, per_file) in (
        ("values with a fraction", storage),
        ("integral values", storage_integral),
    ):
        verdict = "met" if per_table <= GOAL_BYTES else "NOT MET"
        print(f"    {label:<38} {per_table:8.1f} {per_file:19.1f}      goal <= {GOAL_BYTES:.0f}: {verdict}")


# --- PostgreSQL ---------------------------------------------------------------------


def bench_postgres(url: str, work: Workload, repeat: int) -> None:
    import psycopg2
    from playhouse.db_url import parse
    from psycopg2.extras import execute_batch

    n = len(work)
    sql = UPSERT.format(p="%s")
    sorted_rows = sorted(work.rows, key=lambda row: (row[0], row[1]))
    admin = pw.PostgresqlDatabase(None)
    admin.init(**parse(url))
    admin.connect()
    (version,) = admin.execute_sql("SHOW server_version").fetchone()
    schemas: list[str] = []

    def fresh(series: bool) -> tuple[pw.Database, str]:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin.execute_sql(f'CREATE SCHEMA "{schema}"')
        schemas.append(schema)
        db = open_database(url, options=f"-c search_path={schema}")
        with db.atomic():
            work.populate(series=series)
        return db, schema

    def raw(rows: list[Row], batch: bool) -> Timing:
        db, schema = fresh(series=True)
        db.close_all()
        con = psycopg2.connect(url, options=f"-c search_path={schema}")
        try:
            cur = con.cursor()

            def run() -> None:
                if batch:
                    execute_batch(cur, sql, rows, page_size=PG_PAGE_SIZE)
                else:
                    cur.executemany(sql, rows)
                con.commit()

            return timed(run)
        finally:
            con.close()

    runs: dict[str, list[Timing]] = {"many": [], "batch": [], "batch_sorted": [], "warm": [], "cold": []}
    try:
        # A round trip per row: one run is enough to see it.
        runs["many"].append(raw(work.rows, batch=False))
        for run in range(repeat):
            runs["batch"].append(raw(work.rows, batch=True))
            runs["batch_sorted"].append(raw(sorted_rows, batch=True))
            db, _ = fresh(series=True)
            runs["warm"].append(timed(lambda: MetricSample.record_many(work.samples)))
            if run == 0:
                check_rows(db, work)
                db.execute_sql("VACUUM ANALYZE metric_sample")
                (table_bytes,) = db.execute_sql("SELECT pg_table_size('metric_sample')").fetchone()
                (index_bytes,) = db.execute_sql("SELECT pg_indexes_size('metric_sample')").fetchone()
            db.close_all()
            db, _ = fresh(series=False)
            runs["cold"].append(timed(lambda: MetricSample.record_many(work.samples)))
            db.close_all()
    finally:
        for schema in schemas:
            admin.execute_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()

    many, batch, batch_sorted, warm, cold = (
        best(runs[k]) for k in ("many", "batch", "batch_sorted", "warm", "cold")
    )
    print(f"PostgreSQL {version}: {n:,} samples, best of {repeat} (executemany: one run)")
    print(line("raw psycopg2 executemany, tick order", n, many))
    print(line(f"raw psycopg2 execute_batch({PG_PAGE_SIZE}), tick order", n, batch))
    print(line(f"raw psycopg2 execute_batch({PG_PAGE_SIZE}), key order", n, batch_sorted))
    print(line("record_many, series exist", n, warm, batch, cpu=False) + " vs execute_batch")
    print(line("record_many, series created by the call", n, cold, batch, cpu=False) + " vs execute_batch")
    print(
        f"  against executemany: {many.wall / warm.wall:.2f} and {many.wall / cold.wall:.2f}; "
        f"against key-order execute_batch: {batch_sorted.wall / warm.wall:.2f} "
        f"and {batch_sorted.wall / cold.wall:.2f}"
    )
    print(
        f"  storage after VACUUM: {table_bytes / n:.1f} bytes/sample heap + {index_bytes / n:.1f} primary key"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=1000, help="number of series (default 1000)")
    parser.add_argument("--times", type=int, default=200, help="samples per series (default 200)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each measurement (default 5)")
    parser.add_argument(
        "--pg", metavar="URL", help="also run on PostgreSQL, in scratch schemas dropped at the end"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one record_many run on SQLite")
    args = parser.parse_args(argv)
    work = Workload(args.series, args.times)
    bench_sqlite(work, args.repeat, args.profile)
    if args.pg:
        bench_postgres(args.pg, work, args.repeat)


if __name__ == "__main__":
    main()
