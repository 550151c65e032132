"""Would clustering the recording table by (stream, start) pay? A measurement, not a feature.

    python bench/clustering.py                      # the 10M-recording database of bench/dataset.py
    python bench/clustering.py --small              # 100 streams, 1M recordings
    python bench/clustering.py --cycles 20000       # longer insert pattern for the free-page figure

Three figures, each for the table as the package has it (a rowid table,
``AUTOINCREMENT`` ids, the index (stream_id, started_at, ended_at, state)) and
for a scratch copy clustered by its key: ``WITHOUT ROWID``, primary key
(stream_id, started_at, id), the same partial indexes:

1. one stream's segments in a 1-hour window as plain rows, every column but
   metadata (``history.segment_rows`` on the real table; the same two-branch
   SQL on the copy), warm cache, median over random windows;
2. the segment lifecycle (insert an open row, then close it) for a recorder's
   insert pattern, every stream's segment n, then every stream's n+1, ...,
   CPU per cycle;
3. the pages the clustered copy leaves free after that pattern (rows arrive
   in time order, but the key orders them by stream, so leaves split).

The copy is made in a scratch file next to the dataset (a minute or two and
the size of the table at full size) and deleted at the end. Not a test: CI
does not run it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset import T0_MS, recordings_db

from stream_state import Stream, open_database
from stream_state import history as h
from stream_state.database import sqlite_pragmas
from stream_state.history.segments import _ROW_COLUMNS, _overlap_sql
from stream_state.timeutil import from_millis

HOUR_MS = 3_600_000
CLUSTERED = (
    'CREATE TABLE "recording" ("id" INTEGER NOT NULL, "stream_id" INTEGER NOT NULL, "path" TEXT NOT NULL, '
    '"storage" TEXT, "segment_index" INTEGER NOT NULL, "started_at" INTEGER NOT NULL, "ended_at" INTEGER, '
    '"checkpoint_at" INTEGER, "size_bytes" INTEGER NOT NULL, "state" TEXT NOT NULL, '
    '"archived" INTEGER NOT NULL, "metadata" JSON, PRIMARY KEY ("stream_id", "started_at", "id")) '
    "WITHOUT ROWID"
)
CLUSTERED_INDEXES = (
    'CREATE INDEX "recording_open" ON "recording" ("stream_id", "started_at") WHERE "ended_at" IS NULL',
    'CREATE INDEX "recording_long" ON "recording" ("stream_id", ("ended_at" - "started_at")) '
    'WHERE (("ended_at" - "started_at") > 120000)',
    'CREATE UNIQUE INDEX "recording_path" ON "recording" ("path")',
)


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for name, value in sqlite_pragmas():
        conn.execute(f"PRAGMA {name} = {value}")
    return conn


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def listing(dataset: Path, scratch: Path, cases: int, runs: int) -> None:
    open_database(f"sqlite:///{dataset}", backup_before_migrate=False)
    streams = list(Stream.select().order_by(Stream.id))
    db = Stream._meta.database
    (end_ms,) = db.execute_sql('SELECT MAX("last_seen_at") FROM "stream"').fetchone()
    rng = random.Random(16)
    windows = []
    for _ in range(cases):
        since = T0_MS + rng.randrange(max(1, end_ms - T0_MS - HOUR_MS))
        windows.append((rng.choice(streams), since, since + HOUR_MS))

    print("copying the recording table into a clustered scratch table ...", flush=True)
    start = time.perf_counter()
    scratch.unlink(missing_ok=True)
    copy = connect(scratch)
    copy.execute(CLUSTERED)
    copy.execute(f"ATTACH DATABASE '{dataset}' AS src")
    copy.execute("BEGIN")
    copy.execute(
        'INSERT INTO "recording" SELECT "id", "stream_id", "path", "storage", "segment_index", "started_at", '
        '"ended_at", "checkpoint_at", "size_bytes", "state", "archived", "metadata" FROM src."recording" '
        'ORDER BY "stream_id", "started_at", "id"'
    )
    copy.execute("COMMIT")
    copy.execute("DETACH DATABASE src")
    for sql in CLUSTERED_INDEXES:
        copy.execute(sql)
    copy.execute("ANALYZE")
    print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    sql = (
        f"SELECT * FROM ({_overlap_sql(db.obj, _ROW_COLUMNS, _ROW_COLUMNS)}) AS found "
        'ORDER BY "started_at", "id"'
    )

    models: list[float] = []
    plain: list[float] = []
    clustered: list[float] = []
    rows = []
    for rep in range(runs + 1):
        for stream, since, until in windows:
            a, b = from_millis(since), from_millis(until)
            t = time.perf_counter()
            list(h.recordings(stream, a, b))
            models.append(time.perf_counter() - t)
            t = time.perf_counter()
            got = h.segment_rows(stream, a, b)
            plain.append(time.perf_counter() - t)
            params = (stream.id, until, since, stream.id, since, stream.id, until)
            t = time.perf_counter()
            other = copy.execute(sql, params).fetchall()
            clustered.append(time.perf_counter() - t)
            if rep == 0:
                rows.append(len(got))
                assert len(other) == len(got), (stream.id, since)
        if rep == 0:  # the first pass warms the caches
            models.clear()
            plain.clear()
            clustered.clear()
    print(
        f"\none stream's segments in a 1-hour window ({statistics.median(rows):g} rows), "
        f"median of {cases} windows x {runs} runs, warm cache:"
    )
    print(f"  Recording models (history.recordings)        {median_ms(models):7.3f} ms")
    print(f"  plain rows (history.segment_rows)            {median_ms(plain):7.3f} ms   goal <= 2 ms")
    print(f"  plain rows from the clustered copy (sqlite3) {median_ms(clustered):7.3f} ms")
    copy.close()
    scratch.unlink(missing_ok=True)


def lifecycle(scratch: Path, streams: int, cycles: int) -> None:
    results = {}
    for kind in ("rowid", "clustered"):
        scratch.unlink(missing_ok=True)
        conn = connect(scratch)
        if kind == "rowid":
            conn.execute(
                CLUSTERED.replace(
                    ', PRIMARY KEY ("stream_id", "started_at", "id")) WITHOUT ROWID', ")"
                ).replace('"id" INTEGER NOT NULL', '"id" INTEGER PRIMARY KEY AUTOINCREMENT')
            )
            conn.execute(
                'CREATE INDEX "rec_time" ON "recording" ("stream_id", "started_at", "ended_at", "state")'
            )
            for sql in CLUSTERED_INDEXES:
                conn.execute(sql)
            insert = (
                'INSERT INTO "recording" ("stream_id", "path", "segment_index", "started_at", "size_bytes", '
                '"state", "archived") VALUES (?, ?, ?, ?, 0, \'recording\', 0) RETURNING "id"'
            )
        else:
            conn.execute(CLUSTERED)
            for sql in CLUSTERED_INDEXES:
                conn.execute(sql)
            insert = (
                'INSERT INTO "recording" ("id", "stream_id", "path", "segment_index", "started_at", '
                '"size_bytes", '
                '"state", "archived") VALUES (?, ?, ?, ?, ?, 0, \'recording\', 0)'
            )
        close = (
            'UPDATE "recording" SET "state" = \'complete\', "ended_at" = ?, "size_bytes" = ? '
            'WHERE "stream_id" = ? AND "started_at" = ? AND "id" = ? AND "ended_at" IS NULL'
        )
        cpu = time.process_time()
        next_id = 1
        for n in range(cycles // streams):
            start = T0_MS + n * 10_000
            for s in range(1, streams + 1):
                conn.execute("BEGIN IMMEDIATE")
                if kind == "rowid":
                    (rid,) = conn.execute(insert, (s, f"/r/{s}/{n}.mp4", n, start)).fetchone()
                else:
                    rid = next_id
                    conn.execute(insert, (rid, s, f"/r/{s}/{n}.mp4", n, start))
                next_id += 1
                conn.execute("COMMIT")
                conn.execute(close, (start + 10_000, 4_000_000, s, start, rid))
        per_cycle = (time.process_time() - cpu) / (cycles // streams * streams) * 1e6
        row = conn.execute(
            "SELECT SUM(unused), SUM(pgsize), COUNT(*) FROM dbstat WHERE name = 'recording'"
        ).fetchone()
        results[kind] = (per_cycle, row[0] / row[1], row[2])
        conn.close()
    scratch.unlink(missing_ok=True)
    print(f"\nsegment lifecycle, {streams} streams round-robin, {cycles:,} cycles (insert + close):")
    for kind, (per_cycle, free, pages) in results.items():
        print(
            f"  {kind:<10} {per_cycle:7.1f} us CPU per cycle, table pages {pages:,}, free in them {free:5.1%}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="100 streams, 1M recordings")
    parser.add_argument("--cases", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=50_000)
    args = parser.parse_args(argv)
    size = {"streams": 100, "recordings": 1_000_000, "events": 100_000} if args.small else {}
    dataset = recordings_db(**size)
    scratch = dataset.with_name("clustering-scratch.db")
    print(f"{dataset.name}, {dt.datetime.now(dt.UTC):%Y-%m-%d}")
    listing(dataset, scratch, args.cases, args.runs)
    lifecycle(scratch, 1000 if not args.small else 100, args.cycles)


if __name__ == "__main__":
    main()
