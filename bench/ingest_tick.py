"""record_many of one manager tick (50 streams x 10 series = 500 samples) against raw executemany.

    python bench/ingest_tick.py                 # SQLite, 300 ticks

bench/ingest.py measures big batches (200 samples per series per call); a
manager calls ``record_many`` once per tick with one sample per series, where
validating and looking up every series used to cost 4x the database work.
Here every call after the first finds its series in the per-database id cache
and its identities in the validation memo. The baseline is the bare
``sqlite3`` connection running the same INSERT for the same rows (series ids
known, rows pre-sorted) in one ``BEGIN IMMEDIATE`` ... ``COMMIT`` per tick.
CPU time of this process; the ratio is raw / API (goal >= 0.8). Not a test:
CI does not run it.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-tick-") as tmp:
        path = f"{tmp}/tick.db"
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
        ids = dict(db.execute_sql('SELECT "key", "id" FROM "metric_series"').fetchall())
        series = [[ids[series_key(n, c.id, labels[i])] for n in NAMES] for i, c in enumerate(cams)]
        raw = sqlite3.connect(path, isolation_level=None)
        for name, value in sqlite_pragmas():
            raw.execute(f"PRAGMA {name} = {value}")
        base = int(T0.timestamp() * 1000)
        api = raw_s = 0.0
        for t in range(1, args.ticks + 1):
            items = tick(t)
            start = time.process_time()
            MetricSample.record_many(items)
            api += time.process_time() - start
            rows = sorted(
                (series[i][k], base + t * 1000 + 500, float(t % 7) + k)
                for i in range(len(cams))
                for k in range(len(NAMES))
            )
            start = time.process_time()
            raw.execute("BEGIN IMMEDIATE")
            raw.executemany(UPSERT, rows)
            raw.execute("COMMIT")
            raw_s += time.process_time() - start
        raw.close()
        db.close()
    n = args.ticks
    print(
        f"record_many of a {len(cams) * len(NAMES)}-sample tick, {n} ticks: API {api / n * 1000:.2f} ms, "
        f"raw executemany {raw_s / n * 1000:.2f} ms CPU per tick: ratio {raw_s / api:.2f} (goal >= 0.8)"
    )


if __name__ == "__main__":
    main()
