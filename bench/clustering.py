"""One stream's segments in a 1-hour window: what would make the listing read fewer pages, and what it costs.

    python bench/clustering.py                      # the 10M-recording database of bench/dataset.py
    python bench/clustering.py --small              # 100 streams, 1M recordings
    python bench/clustering.py --pg URL             # also PostgreSQL (a scratch schema, dropped)
    python bench/clustering.py --scratch DIR --keep # keep the scratch copies and reuse them next time

The recording table is a rowid table in insert order: a recorder writes every
stream's segment n, then every stream's n+1, so one stream's hour (361 rows)
sits on 361 pages. Three ways to read fewer pages are measured against the
table as the package has it (index (stream_id, started_at, ended_at, state)):

* ``wide``: a covering index (stream_id, started_at, ended_at, state, then
  every other column ``history.segment_rows`` returns), which would replace
  that index: the listing is one range scan of consecutive index pages;
* ``narrow``: a partial covering index of closed segments with only what the
  CLI's table shows (id, index, times, size, state, archived, path), next to
  that index; the open segment still comes from the table;
* ``clustered``: the table ``WITHOUT ROWID`` keyed (stream_id, started_at,
  id): rows of a stream are neighbours, ids no longer ``AUTOINCREMENT``.

Figures:

1. the listing (the package's two-branch SQL through the bare driver, the
   index named with ``INDEXED BY``), median over random windows: *cold*
   (the database file dropped from the OS page cache with
   ``posix_fadvise(DONTNEED)``, no root needed, then a fresh connection: a
   disk read per page), *fresh* (a new connection, file in the OS cache: what
   a CLI process pays), *hot* (the same window again on the same connection,
   CPU time); and ``history.segment_rows`` itself on the real table;
2. the size of each index on disk, the time to build it (what a migration
   would take) and the clustered copy's free space;
3. the segment lifecycle with each layout: 1,000 streams over a table that
   already holds 1M segments, per stream one begin (claim the index +
   INSERT), nine checkpoints (one transaction a second for every stream, as
   ``stream_state.Tick`` writes them) and one complete every 10 s; CPU and
   bytes written (``wchar`` of ``/proc/self/io``: WAL frames and checkpoints)
   per cycle;
4. with ``--pg``: the lifecycle (client and server CPU, WAL bytes, share of
   HOT updates) and the hot listing (time, buffers touched, heap fetches) on
   1M rows, for the table as it is and the two covering indexes as
   ``INCLUDE`` indexes.

The scratch copies of the 10M database take about 2 x 2.4 GB and 10 minutes
to build; they are deleted at the end unless ``--keep``. Not a test: CI does
not run it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import peewee as pw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset import T0_MS, recordings_db

from stream_state import Stream, open_database
from stream_state import history as h
from stream_state.database import sqlite_pragmas
from stream_state.history.segments import _ROW_COLUMNS, _overlap_sql
from stream_state.timeutil import from_millis

HOUR_MS = 3_600_000
TIME_INDEX = "recording_stream_id_started_at_ended_at_state"
# What the CLI's table shows (cli.py `recordings`); its --json shows every column.
NARROW_COLUMNS = (
    '"id", "stream_id", "path", "segment_index", "started_at", "ended_at", "size_bytes", "state", "archived"'
)
WIDE_KEY = '"stream_id", "started_at", "ended_at", "state"'
WIDE_REST = (
    '"id", "path", "storage", "segment_index", "size_bytes", "archived", "checkpoint_at", '
    '"media_started_at", "media_ended_at", "frame_count", "finalized", "metadata"'
)
NARROW_REST = '"id", "path", "segment_index", "size_bytes", "archived"'
# SQLite has no INCLUDE: the extra columns are key columns there.
SQLITE_INDEXES = {
    "wide": f'CREATE INDEX "recording_listing_wide" ON "recording" ({WIDE_KEY}, {WIDE_REST})',
    "narrow": (
        f'CREATE INDEX "recording_listing_narrow" ON "recording" ({WIDE_KEY}, {NARROW_REST}) '
        'WHERE "ended_at" IS NOT NULL'
    ),
}
PG_INDEXES = {
    "wide": f'CREATE INDEX "recording_listing" ON "recording" ({WIDE_KEY}) INCLUDE ({WIDE_REST})',
    "narrow": (
        f'CREATE INDEX "recording_listing" ON "recording" ({WIDE_KEY}) INCLUDE ({NARROW_REST}) '
        'WHERE "ended_at" IS NOT NULL'
    ),
}
LAYOUTS = ("table", "wide", "narrow", "clustered")


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for name, value in sqlite_pragmas():
        conn.execute(f"PRAGMA {name} = {value}")
    conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the schema is read before timing
    return conn


def remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def drop_from_cache(path: Path) -> None:
    """Evict the file's pages from the OS page cache (this file only; no root needed)."""
    for name in (str(path), f"{path}-wal"):
        if os.path.exists(name):
            fd = os.open(name, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.3f} ms"


def clustered_ddl(table_sql: str) -> str:
    """The recording table's own CREATE TABLE, keyed (stream_id, started_at, id) WITHOUT ROWID."""
    sql = table_sql.replace('"id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT', '"id" INTEGER NOT NULL')
    assert sql != table_sql, "the recording table's id column changed: update clustered_ddl"
    return sql[: sql.rindex(")")] + ', PRIMARY KEY ("stream_id", "started_at", "id")) WITHOUT ROWID'


def index_bytes(conn: sqlite3.Connection, name: str) -> tuple[int, float]:
    size, unused = conn.execute(
        "SELECT SUM(pgsize), SUM(unused) FROM dbstat WHERE name = ?", (name,)
    ).fetchone()
    return size or 0, (unused or 0) / max(1, size or 1)


# --- scratch copies ---------------------------------------------------------------------


def covering_copy(dataset: Path, target: Path, keep: bool) -> None:
    if keep and target.exists():
        print(f"  reusing {target}", flush=True)
        return
    remove(target)
    start = time.perf_counter()
    shutil.copyfile(dataset, target)
    print(f"  copy of the database: {time.perf_counter() - start:.0f} s", flush=True)
    conn = connect(target)
    for kind, sql in SQLITE_INDEXES.items():
        start = time.perf_counter()
        conn.execute(sql)
        print(f"  build the {kind} covering index: {time.perf_counter() - start:.0f} s", flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def clustered_copy(dataset: Path, target: Path, keep: bool) -> None:
    """Only the recording table and its indexes (the listing reads nothing else)."""
    if keep and target.exists():
        print(f"  reusing {target}", flush=True)
        return
    remove(target)
    source = sqlite3.connect(dataset)
    (table_sql,) = source.execute("SELECT sql FROM sqlite_master WHERE name = 'recording'").fetchone()
    indexes = [
        sql
        for (name, sql) in source.execute(
            "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'recording' AND type = 'index' "
            "AND sql IS NOT NULL"
        )
        if name != TIME_INDEX  # the key is (stream_id, started_at, id): that index would repeat it
    ]
    source.close()
    conn = connect(target)
    conn.execute("PRAGMA foreign_keys = 0")
    conn.execute(clustered_ddl(table_sql))
    start = time.perf_counter()
    conn.execute(f"ATTACH DATABASE '{dataset}' AS src")
    conn.execute("BEGIN")
    conn.execute(
        'INSERT INTO main."recording" SELECT * FROM src."recording" ORDER BY "stream_id", "started_at", "id"'
    )
    conn.execute("COMMIT")
    conn.execute("DETACH DATABASE src")
    for sql in indexes:
        conn.execute(sql)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    print(f"  clustered copy (table and its other indexes): {time.perf_counter() - start:.0f} s", flush=True)
    conn.close()


def sizes(dataset: Path, covering: Path, clustered: Path) -> None:
    conn = sqlite3.connect(covering)
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    (rows,) = conn.execute('SELECT MAX("id") FROM "recording"').fetchone()
    db_bytes = dataset.stat().st_size
    table, table_free = index_bytes(conn, "recording")
    print(f"\nsizes ({rows:,} recordings, {db_bytes / 1e9:.2f} GB database, {page_size}-byte pages):")
    print(
        f"  recording table                {table / 1e6:7.0f} MB  {table / rows:5.0f} B/row, "
        f"{table_free:5.1%} free"
    )
    for name in (TIME_INDEX, "recording_listing_wide", "recording_listing_narrow"):
        size, _ = index_bytes(conn, name)
        print(
            f"  {name[:30]:<30} {size / 1e6:7.0f} MB  {size / rows:5.0f} B/row, "
            f"{size / db_bytes:6.1%} of the database"
        )
    conn.close()
    conn = sqlite3.connect(clustered)
    size, free = index_bytes(conn, "recording")
    others = sum(
        index_bytes(conn, name)[0]
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'recording'"
        )
    )
    conn.close()
    conn = sqlite3.connect(dataset)
    before = sum(
        index_bytes(conn, name)[0]
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'recording' AND name != ?",
            (TIME_INDEX,),
        )
    )
    conn.close()
    print(
        f"  clustered table                {size / 1e6:7.0f} MB  {free:5.1%} free right after a sorted copy; "
        f"its other indexes {others / 1e6:.0f} MB (were {before / 1e6:.0f} MB: "
        "they carry the key, not a rowid)"
    )


# --- 1. the listing ------------------------------------------------------------------------


def listing_sql(db: pw.Database, columns: str, index: str | None = None) -> str:
    """``segment_rows``'s SQL for ``columns``, its closed branch on ``index`` (SQLite's ``INDEXED BY``)."""
    sql = f'SELECT * FROM ({_overlap_sql(db, columns, columns)}) AS found ORDER BY "started_at", "id"'
    if index is not None:
        closed = 'FROM "recording" WHERE "stream_id" = ? AND "started_at" < ?'
        assert closed in sql
        sql = sql.replace(
            closed, f'FROM "recording" INDEXED BY "{index}" WHERE "stream_id" = ? AND "started_at" < ?', 1
        )
    return sql


def listing(dataset: Path, covering: Path, clustered: Path, cases: int) -> None:
    db = open_database(f"sqlite:///{dataset}", backup_before_migrate=False)
    streams = {stream.id: stream for stream in Stream.select()}
    (end_ms,) = db.execute_sql('SELECT MAX("last_seen_at") FROM "stream"').fetchone()
    rng = random.Random(16)
    windows = []
    for _ in range(cases):
        since = T0_MS + rng.randrange(max(1, end_ms - T0_MS - HOUR_MS))
        windows.append((rng.choice(list(streams)), since, since + HOUR_MS))
    sqlite = pw.SqliteDatabase(None)
    variants: dict[str, tuple[Path, str | None]] = {
        "table": (dataset, listing_sql(sqlite, _ROW_COLUMNS, TIME_INDEX)),
        "wide": (covering, listing_sql(sqlite, _ROW_COLUMNS, "recording_listing_wide")),
        "narrow": (covering, listing_sql(sqlite, NARROW_COLUMNS, "recording_listing_narrow")),
        "clustered": (clustered, listing_sql(sqlite, _ROW_COLUMNS)),
        "segment_rows": (dataset, None),
    }
    for name, (path, sql) in variants.items():
        if sql is not None:
            conn = connect(path)
            plan = [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (1, 2, 1, 1, 1, 1, 2))]
            conn.close()
            print(f"  {name}: {'; '.join(step for step in plan if step.startswith('SEARCH'))}")
    hot_conns = {name: connect(path) for name, (path, sql) in variants.items() if sql is not None}
    found: dict[tuple[str, str], list[float]] = {
        (n, m): [] for n in variants for m in ("cold", "fresh", "hot")
    }
    counts = []

    def package(stream_id: int, since: int, until: int) -> int:
        return len(h.segment_rows(streams[stream_id], from_millis(since), from_millis(until)))

    for i, (stream_id, since, until) in enumerate(windows):
        params = (stream_id, until, since, stream_id, since, stream_id, until)
        order = list(variants) if i % 2 == 0 else list(reversed(variants))
        for name in order:
            path, sql = variants[name]
            if sql is None:
                for mode in ("cold", "fresh"):
                    if mode == "cold":
                        drop_from_cache(path)
                    db.close()
                    db.connect()
                    db.execute_sql("SELECT COUNT(*) FROM sqlite_master").fetchone()
                    start = time.perf_counter()
                    package(stream_id, since, until)
                    found[name, mode].append(time.perf_counter() - start)
                start = time.thread_time()
                package(stream_id, since, until)
                found[name, "hot"].append(time.thread_time() - start)
                continue
            drop_from_cache(path)
            for mode in ("cold", "fresh"):
                conn = connect(path)
                start = time.perf_counter()
                rows = conn.execute(sql, params).fetchall()
                found[name, mode].append(time.perf_counter() - start)
                conn.close()
            conn = hot_conns[name]
            conn.execute(sql, params).fetchall()
            start = time.thread_time()
            conn.execute(sql, params).fetchall()
            found[name, "hot"].append(time.thread_time() - start)
            if name == "table":
                counts.append(len(rows))
    for conn in hot_conns.values():
        conn.close()
    print(
        f"\none stream's segments in a 1-hour window ({statistics.median(counts):g} rows), median of {cases} "
        "windows; cold and fresh: wall time, hot: CPU time:"
    )
    labels = {
        "table": "the table's index, every column (bare driver)",
        "wide": "wide covering index, every column",
        "narrow": "narrow covering index, the CLI's columns",
        "clustered": "clustered copy, every column",
        "segment_rows": "history.segment_rows on the table",
    }
    for name in variants:
        print(
            f"  {labels[name]:<47} cold {ms(statistics.median(found[name, 'cold']))}  "
            f"fresh {ms(statistics.median(found[name, 'fresh']))}  "
            f"hot {ms(statistics.median(found[name, 'hot']))}"
        )
    print("  goal for segment_rows: <= 2 ms")


# --- 3. the segment lifecycle ----------------------------------------------------------------


def wchar() -> int:
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("wchar"):
                return int(line.split()[1])
    return 0


def lifecycle_base(folder: Path, streams: int, segments: int) -> Path:
    """A migrated database with ``streams`` streams and ``segments`` closed segments each, in insert order."""
    path = folder / "lifecycle-base.db"
    remove(path)
    db = open_database(f"sqlite:///{path}", backup_before_migrate=False)
    with db.atomic():
        for i in range(1, streams + 1):
            Stream.register(f"cam-{i:04d}", f"rtsp://cam-{i:04d}/live")
    db.close()
    conn = connect(path)
    conn.execute("BEGIN")
    conn.executemany(
        'INSERT INTO "recording" ("stream_id", "path", "storage", "segment_index", "started_at", "ended_at", '
        '"size_bytes", "state", "archived") VALUES (?, ?, ?, ?, ?, ?, 5000000, \'complete\', 0)',
        (
            (s, f"/srv/nvr/disk{s % 4}/h{n // 360:05d}/cam-{s:04d}/{n:08d}.mp4", f"disk{s % 4}", n,
             T0_MS + n * 10_000, T0_MS + (n + 1) * 10_000)
            for n in range(segments)
            for s in range(1, streams + 1)
        ),
    )  # fmt: skip
    conn.execute('UPDATE "stream" SET "next_segment_index" = ?', (segments,))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


def lifecycle_layout(base: Path, kind: str) -> Path:
    path = base.with_name(f"lifecycle-{kind}.db")
    remove(path)
    shutil.copyfile(base, path)
    conn = connect(path)
    if kind == "wide":  # replaces the time index: it starts with the same columns
        conn.execute(f'DROP INDEX "{TIME_INDEX}"')
        conn.execute(SQLITE_INDEXES["wide"])
    elif kind == "narrow":
        conn.execute(SQLITE_INDEXES["narrow"])
    elif kind == "clustered":
        (table_sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'recording'").fetchone()
        others = conn.execute(
            "SELECT name, type, sql FROM sqlite_master WHERE tbl_name = 'recording' AND sql IS NOT NULL "
            "AND type IN ('index', 'trigger')"
        ).fetchall()
        conn.execute("PRAGMA foreign_keys = 0")
        for name, kind_, _sql in others:
            conn.execute(f'DROP {kind_.upper()} "{name}"')
        conn.execute('ALTER TABLE "recording" RENAME TO "recording_old"')
        conn.execute(clustered_ddl(table_sql))
        conn.execute(
            'INSERT INTO "recording" SELECT * FROM "recording_old" ORDER BY "stream_id", "started_at", "id"'
        )
        conn.execute('DROP TABLE "recording_old"')
        for name, _kind, sql in others:
            if name != TIME_INDEX:
                conn.execute(sql)
        conn.execute("PRAGMA foreign_keys = 1")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


def lifecycle_run(
    path: Path, kind: str, streams: int, rounds: int, checkpoints: int = 9
) -> tuple[float, float, float]:
    conn = connect(path)
    (next_id,) = conn.execute('SELECT MAX("id") + 1 FROM "recording"').fetchone()
    (first,) = conn.execute('SELECT MAX("segment_index") + 1 FROM "recording"').fetchone()
    claim = (
        'UPDATE "stream" SET "next_segment_index" = "next_segment_index" + 1 WHERE "id" = ? '
        'RETURNING "next_segment_index"'
    )
    insert = (
        'INSERT INTO "recording" ("id", "stream_id", "path", "storage", "segment_index", "started_at", '
        '"size_bytes", '
        '"state", "archived") VALUES (?, ?, ?, ?, ?, ?, 0, \'recording\', 0)'
    )
    # The clustered table finds a row by its key: the id alone would be a secondary index.
    key = '"stream_id" = ? AND "started_at" = ? AND "id" = ?' if kind == "clustered" else '"id" = ?'
    checkpoint = (
        f'UPDATE "recording" SET "size_bytes" = ?, "checkpoint_at" = ? WHERE {key} AND "ended_at" IS NULL'
    )
    close = (
        f'UPDATE "recording" SET "state" = \'complete\', "ended_at" = ?, "size_bytes" = ? '
        f"WHERE {key} AND \"state\" = 'recording'"
    )

    def where(stream: int, started: int, rid: int) -> tuple[int, ...]:
        return (stream, started, rid) if kind == "clustered" else (rid,)

    opened: dict[int, tuple[int, int]] = {}
    cpu, written = 0.0, 0
    # Round 0 only opens every stream's first segment, untimed: every timed
    # cycle then closes one segment and begins the next.
    for n in range(first, first + rounds + 1):
        if n == first + 1:
            cpu, written = time.process_time(), wchar()
        start = T0_MS + n * 10_000
        for s in range(1, streams + 1):
            if s in opened:
                rid, started = opened[s]
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(close, (start, 5_000_000, *where(s, started, rid)))
                conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            (index,) = conn.execute(claim, (s,)).fetchone()
            conn.execute(
                insert,
                (
                    next_id,
                    s,
                    f"/srv/nvr/disk0/h{n // 360:05d}/cam-{s:04d}/{index:08d}.mp4",
                    "disk0",
                    index,
                    start,
                ),
            )
            conn.execute("COMMIT")
            opened[s] = (next_id, start)
            next_id += 1
        for k in range(1, checkpoints + 1):
            conn.execute("BEGIN IMMEDIATE")
            for s, (rid, started) in opened.items():
                conn.execute(checkpoint, (500_000 * k, started + 1000 * k, *where(s, started, rid)))
            conn.execute("COMMIT")
    cycles = rounds * streams
    cpu_us = (time.process_time() - cpu) / cycles * 1e6
    written_kib = (wchar() - written) / cycles / 1024
    _, free = index_bytes(conn, "recording")
    conn.close()
    return cpu_us, written_kib, free


def lifecycle(folder: Path, streams: int, segments: int, rounds: int, repeats: int) -> None:
    print(
        f"\nsegment lifecycle: {streams} streams over {streams * segments:,} segments, "
        f"{rounds} segments a stream, a cycle = begin + 9 checkpoint ticks + complete:",
        flush=True,
    )
    base = lifecycle_base(folder, streams, segments)
    found: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in LAYOUTS}
    for repeat in range(repeats):
        for kind in LAYOUTS if repeat % 2 == 0 else tuple(reversed(LAYOUTS)):
            path = lifecycle_layout(base, kind)
            found[kind].append(lifecycle_run(path, kind, streams, rounds))
            remove(path)
    remove(base)
    for kind in LAYOUTS:
        runs = found[kind]
        cpu = ", ".join(f"{r[0]:.0f}" for r in runs)
        written = ", ".join(f"{r[1]:.0f}" for r in runs)
        print(
            f"  {kind:<10} CPU {cpu} us a cycle; written {written} KiB a cycle; "
            f"table pages free {runs[-1][2]:.1%}"
        )


# --- 4. PostgreSQL ---------------------------------------------------------------------------


def pg_bench(url: str, streams: int, segments: int, rounds: int, repeats: int, cases: int) -> None:
    import psycopg2

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE SCHEMA "{schema}"')
    try:
        options = f"-c search_path={schema}"
        db = open_database(url, options=options, backup_before_migrate=False)
        with db.atomic():
            for i in range(1, streams + 1):
                Stream.register(f"cam-{i:04d}", f"rtsp://cam-{i:04d}/live")
        db.close()
        conn = psycopg2.connect(url, options=options)
        cur = conn.cursor()
        # Generated in the server; the usage trigger is off while loading (it would only count).
        cur.execute("ALTER TABLE recording DISABLE TRIGGER USER")
        cur.execute(
            "INSERT INTO recording (stream_id, path, storage, segment_index, started_at, ended_at, "
            "size_bytes, state, archived) SELECT s, format('/srv/nvr/disk%%s/h%%s/cam-%%s/%%s.mp4', s %% 4, "
            "lpad((n / 360)::text, 5, '0'), lpad(s::text, 4, '0'), lpad(n::text, 8, '0')), "
            "'disk' || (s %% 4), n, "
            "%s + n * 10000, %s + (n + 1) * 10000, 5000000, 'complete', false "
            "FROM generate_series(0, %s) AS n, generate_series(1, %s) AS s ORDER BY n, s",
            (T0_MS, T0_MS, segments - 1, streams),
        )
        cur.execute("ALTER TABLE recording ENABLE TRIGGER USER")
        cur.execute("UPDATE stream SET next_segment_index = %s", (segments,))
        conn.commit()
        print(f"\nPostgreSQL, {streams} streams over {streams * segments:,} segments:", flush=True)
        kinds = ("table", "wide", "narrow")
        found: dict[str, list[tuple[float, ...]]] = {kind: [] for kind in kinds}
        first = segments
        for repeat in range(repeats):
            for kind in kinds if repeat % 2 == 0 else tuple(reversed(kinds)):
                pg_layout(conn, kind)
                found[kind].append(pg_lifecycle(conn, streams, first, rounds))
                first += rounds + 1
        print("  lifecycle (a cycle = begin + 9 checkpoint ticks + complete, one commit each):")
        for kind in kinds:
            runs = found[kind]
            print(
                f"    {kind:<7} client CPU {', '.join(f'{r[0]:.0f}' for r in runs)} us; server CPU "
                f"{', '.join(f'{r[1]:.0f}' for r in runs)} us; "
                f"WAL {', '.join(f'{r[2]:.1f}' for r in runs)} KiB a cycle; "
                f"HOT updates {', '.join(f'{r[3]:.0%}' for r in runs)}"
            )
        print(
            f"  hot listing of a 1-hour window (median of {cases}, the newest hour excluded: see the README):"
        )
        for kind in kinds:
            pg_layout(conn, kind)
            pg_listing(conn, kind, streams, segments, cases)
        conn.close()
    finally:
        admin.cursor().execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


def pg_layout(conn: Any, kind: str) -> None:
    cur = conn.cursor()
    cur.execute('DROP INDEX IF EXISTS "recording_listing"')
    cur.execute(f'DROP INDEX IF EXISTS "{TIME_INDEX}"')
    if kind != "wide":  # the wide one replaces the time index
        cur.execute(f'CREATE INDEX "{TIME_INDEX}" ON "recording" ({WIDE_KEY})')
    if kind != "table":
        cur.execute(PG_INDEXES[kind])
    conn.commit()
    conn.autocommit = True
    cur.execute("VACUUM ANALYZE recording")  # sets the visibility map: index-only scans at their best
    conn.autocommit = False


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pg_lifecycle(conn: Any, streams: int, first: int, rounds: int, checkpoints: int = 9) -> tuple[float, ...]:
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid(), pg_current_wal_lsn()")
    pid, lsn = cur.fetchone()
    cur.execute(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = 'recording'::regclass"
    )
    updates, hot = cur.fetchone()
    conn.commit()
    claim = (
        'UPDATE "stream" SET "next_segment_index" = "next_segment_index" + 1 WHERE "id" = %s '
        'RETURNING "next_segment_index"'
    )
    insert = (
        'INSERT INTO "recording" ("stream_id", "path", "storage", "segment_index", "started_at", '
        '"size_bytes", '
        '"state", "archived") VALUES (%s, %s, \'disk0\', %s, %s, 0, \'recording\', false) RETURNING "id"'
    )
    # The statement stream_state.Tick runs on PostgreSQL (models/statements.py: checkpoint_bulk).
    tick = (
        'UPDATE "recording" AS r SET "size_bytes" = v.size, "checkpoint_at" = v.at FROM unnest(%s::bigint[], '
        '%s::bigint[], %s::bigint[]) AS v(id, size, at) WHERE r."id" = v.id AND r."ended_at" IS NULL'
    )
    close = (
        'UPDATE "recording" SET "state" = \'complete\', "ended_at" = %s, "size_bytes" = %s '
        'WHERE "id" = %s AND "state" = \'recording\''
    )
    opened: dict[int, tuple[int, int]] = {}
    cpu, server = 0.0, 0.0
    for n in range(first, first + rounds + 1):  # round 0 opens the first segments, untimed
        if n == first + 1:
            cpu, server = time.process_time(), proc_cpu(pid)
            cur.execute("SELECT pg_current_wal_lsn()")
            (lsn,) = cur.fetchone()
            conn.commit()
        start = T0_MS + n * 10_000
        for s in range(1, streams + 1):
            if s in opened:
                cur.execute(close, (start, 5_000_000, opened[s][0]))
                conn.commit()
            cur.execute(claim, (s,))
            (index,) = cur.fetchone()
            cur.execute(
                insert, (s, f"/srv/nvr/disk0/h{n // 360:05d}/cam-{s:04d}/{index:08d}.mp4", index, start)
            )
            (rid,) = cur.fetchone()
            conn.commit()
            opened[s] = (rid, start)
        for k in range(1, checkpoints + 1):
            ids = [rid for rid, _ in opened.values()]
            cur.execute(
                tick, (ids, [500_000 * k] * len(ids), [started + 1000 * k for _, started in opened.values()])
            )
            conn.commit()
    cycles = rounds * streams
    client_us = (time.process_time() - cpu) / cycles * 1e6
    server_us = (proc_cpu(pid) - server) / cycles * 1e6
    cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn,))
    (wal,) = cur.fetchone()
    conn.commit()
    time.sleep(0.6)  # the statistics collector's report interval
    cur.execute(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = 'recording'::regclass"
    )
    updates2, hot2 = cur.fetchone()
    conn.commit()
    return client_us, server_us, float(wal) / cycles / 1024, (hot2 - hot) / max(1, updates2 - updates)


def pg_listing(conn: Any, kind: str, streams: int, segments: int, cases: int) -> None:
    # An unconnected peewee database spells the SQL for PostgreSQL.
    sql = listing_sql(pw.PostgresqlDatabase(None), NARROW_COLUMNS if kind == "narrow" else _ROW_COLUMNS)
    rng = random.Random(16)
    cur = conn.cursor()
    times, buffers, fetches = [], [], 0
    for _ in range(cases):
        stream = rng.randrange(1, streams + 1)
        since = T0_MS + rng.randrange(segments * 10_000 - HOUR_MS)
        params = (stream, since + HOUR_MS, since, stream, since, stream, since + HOUR_MS)
        cur.execute(sql, params)
        cur.fetchall()
        start = time.perf_counter()
        cur.execute(sql, params)
        cur.fetchall()
        times.append(time.perf_counter() - start)
        cur.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params)
        plan = cur.fetchone()[0][0]["Plan"]
        buffers.append(plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0))
        stack = [plan]
        while stack:
            node = stack.pop()
            fetches += node.get("Heap Fetches", 0)
            stack.extend(node.get("Plans", []))
    conn.commit()
    index = "recording_listing" if kind != "table" else TIME_INDEX
    cur.execute("SELECT pg_relation_size(%s)", (index,))
    (size,) = cur.fetchone()
    conn.commit()
    print(
        f"    {kind:<7} {ms(statistics.median(times))}, {statistics.median(buffers):g} buffers, "
        f"{fetches} heap fetches; index {size / 1e6:.0f} MB ({size / (streams * segments):.0f} B/row)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="100 streams, 1M recordings")
    parser.add_argument("--cases", type=int, default=40, help="random 1-hour windows (default 40)")
    parser.add_argument(
        "--scratch", type=Path, help="folder for the scratch copies (default: next to the dataset)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch copies, and reuse them if present"
    )
    parser.add_argument("--pg", metavar="URL", help="also PostgreSQL (a scratch schema, dropped at the end)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="segments a stream in the lifecycle runs (default 5)"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="interleaved lifecycle runs per layout (default 2)"
    )
    parser.add_argument("--skip-listing", action="store_true", help="only the lifecycle runs")
    args = parser.parse_args(argv)
    size = {"streams": 100, "recordings": 1_000_000, "events": 100_000} if args.small else {}
    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    if not args.skip_listing:
        dataset = recordings_db(**size)
        folder = args.scratch or dataset.parent
        folder.mkdir(parents=True, exist_ok=True)
        covering = folder / f"{dataset.stem}.covering.db"
        clustered = folder / f"{dataset.stem}.clustered.db"
        print(f"{dataset.name}; scratch copies in {folder}", flush=True)
        covering_copy(dataset, covering, args.keep)
        clustered_copy(dataset, clustered, args.keep)
        try:
            sizes(dataset, covering, clustered)
            listing(dataset, covering, clustered, args.cases)
        finally:
            if not args.keep:
                remove(covering)
                remove(clustered)
    with tempfile.TemporaryDirectory(dir=args.scratch) as folder:
        lifecycle(Path(folder), 1000, 1000, args.rounds, args.repeats)
    if args.pg:
        pg_bench(args.pg, 1000, 1000, 3, args.repeats, args.cases)


if __name__ == "__main__":
    main()
