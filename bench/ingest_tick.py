"""record_many of one manager tick (50 streams x 10 series = 500 samples) against raw executemany.

    python bench/ingest_tick.py                 # SQLite, 300 ticks
    python bench/ingest_tick.py --profile       # and where record_many's CPU goes

bench/ingest.py measures big batches (200 samples per series per call); a
manager calls ``record_many`` once per tick with one sample per series, where
validating and looking up every series used to cost 4x the database work.
Every call after the first finds its series in the per-database id cache.

Both sides write the same rows with the same statement in one transaction per
tick, each into its own copy of the same database (the same streams and
series, so the same series ids): ``record_many`` gets (name, value, stream,
labels, at) tuples as a manager hands them over (one labels dict per series,
one ``at`` per tick); the baseline is the bare ``sqlite3`` connection running
the same INSERT for the same (series_id, ts, value) rows, ready-made and in
the key order ``record_many`` writes them, in ``BEGIN IMMEDIATE`` ... ``COMMIT``.
Separate files, because two connections taking turns on one file each reread
what the other wrote, and whichever writes the earlier timestamp of a series
pays more for it (a first version of this bench charged the package about
1 ms a tick that way). Ticks alternate between the two sides.

CPU time of this process; the ratio is raw / API (goal >= 0.8). A second
baseline also replays, in the same transaction, the reads the package makes
on every call (the streams' ownership gate of invariant 15, the series
deletion counter and the rollup watermark), captured from one call: what the
package's Python costs beyond the statements it must run. Not a test: CI
does not run it.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import pstats
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_state import MetricSample, Stream, open_database
from stream_state.database import sqlite_pragmas
from stream_state.models.metric import series_key

NAMES = (
    "fps",
    "bitrate_kbps",
    "dropped",
    "latency_ms",
    "decode_ms",
    "queue",
    "jitter_ms",
    "lost",
    "gop",
    "cpu",
)
T0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
UPSERT = (
    'INSERT INTO "metric_sample" ("series_id", "ts", "value") VALUES (?, ?, ?) '
    'ON CONFLICT ("series_id", "ts") DO UPDATE SET "value" = excluded."value"'
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--profile", action="store_true", help="cProfile (CPU time) the record_many calls")
    args = parser.parse_args(argv)
    profiler = cProfile.Profile(time.process_time) if args.profile else None
    with tempfile.TemporaryDirectory(prefix="bench-ingest-tick-") as tmp:
        path, raw_path, replay_path = f"{tmp}/api.db", f"{tmp}/raw.db", f"{tmp}/replay.db"
        db = open_database(path)
        cams = [Stream.register(f"cam-{i}", f"rtsp://10.0.0.{i % 250}/main") for i in range(args.streams)]
        labels = [{"pipeline": "main"} for _ in cams]

        def tick(t: int) -> list[tuple]:
            at = T0 + dt.timedelta(seconds=t)
            return [
                (name, float(t % 7) + k, cam, labels[i], at)
                for i, cam in enumerate(cams)
                for k, name in enumerate(NAMES)
            ]

        MetricSample.record_many(tick(0))  # creates the series
        # The package's reads in one call (once more, on the same rows).
        statements: list[str] = []
        db.connection().set_trace_callback(statements.append)
        MetricSample.record_many(tick(0))
        db.connection().set_trace_callback(None)
        reads = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]
        ids = dict(db.execute_sql('SELECT "key", "id" FROM "metric_series"').fetchall())
        series = [[ids[series_key(n, c.id, labels[i])] for n in NAMES] for i, c in enumerate(cams)]
        db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        shutil.copyfile(path, raw_path)  # the same streams, series and ids
        shutil.copyfile(path, replay_path)
        db.connect()
        raw = sqlite3.connect(raw_path, isolation_level=None)
        replay = sqlite3.connect(replay_path, isolation_level=None)
        for name, value in sqlite_pragmas():
            raw.execute(f"PRAGMA {name} = {value}")
            replay.execute(f"PRAGMA {name} = {value}")
        base = int(T0.timestamp() * 1000)
        api = raw_s = replay_s = 0.0
        for t in range(1, args.ticks + 1):
            items = tick(t)
            start = time.process_time()
            if profiler is not None:
                profiler.enable()
            MetricSample.record_many(items)
            if profiler is not None:
                profiler.disable()
            api += time.process_time() - start
            rows = sorted(
                (series[i][k], base + t * 1000, float(t % 7) + k)
                for i in range(len(cams))
                for k in range(len(NAMES))
            )
            start = time.process_time()
            raw.execute("BEGIN IMMEDIATE")
            raw.executemany(UPSERT, rows)
            raw.execute("COMMIT")
            raw_s += time.process_time() - start
            start = time.process_time()
            replay.execute("BEGIN IMMEDIATE")
            for sql in reads:
                replay.execute(sql).fetchall()
            replay.executemany(UPSERT, rows)
            replay.execute("COMMIT")
            replay_s += time.process_time() - start
        same = "SELECT series_id, ts, value FROM metric_sample ORDER BY series_id, ts"
        assert db.execute_sql(same).fetchall() == raw.execute(same).fetchall(), "the two sides differ"
        assert replay.execute(same).fetchall() == raw.execute(same).fetchall(), "the baselines differ"
        raw.close()
        replay.close()
        db.close()
    n = args.ticks
    print(
        f"record_many of a {len(cams) * len(NAMES)}-sample tick, {n} ticks: API {api / n * 1000:.2f} ms, "
        f"raw executemany {raw_s / n * 1000:.2f} ms CPU per tick: ratio {raw_s / api:.2f} (goal >= 0.8); "
        f"raw also replaying the package's {len(reads)} reads "
        f"{replay_s / n * 1000:.2f} ms: {replay_s / api:.2f}"
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
