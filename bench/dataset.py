"""Big benchmark databases, built once and cached on disk.

    python bench/dataset.py                         # 1,000 streams, 10M segments, 1M events
    python bench/dataset.py --recordings 1000000 --streams 100 --events 100000
    python bench/dataset.py --metrics               # one 1-second series over 7 days

From another bench script::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from dataset import recordings_db, metrics_db

    path = recordings_db()                     # Path of a SQLite file; open it with open_database
    path = recordings_db(streams=100, recordings=1_000_000, events=100_000)

The schema is the package's own: ``open_database`` creates the file and runs
the migrations, then the rows go in through the bare ``sqlite3`` driver
(``executemany`` in big transactions, secondary indexes dropped during the
load and recreated from their stored SQL afterwards), which is the only way to
write 10 million rows in a minute or two. A finished database is renamed into
place next to a JSON manifest of the parameters it was built with; a later
call with the same parameters reuses it, other parameters build another file.
Files live in ``$STREAM_STATE_BENCH_DIR`` or ``/tmp/stream_state_bench``.
A full-size recordings database takes about 2.5 GB.

What the recordings database holds (deterministic for given parameters):

* ``streams`` cameras ``cam-0000``..., four storage volumes, bitrates of 2 to
  8 Mbit/s, health and status consistent with their latest events;
* ``recordings // streams`` segments per stream of 9.5 to 10.5 s, back to
  back, inserted in time order (every stream's segment 0, then every stream's
  segment 1, ...) as a recorder writes them, so one stream's rows are spread
  over the whole table like in production; about one segment in 2,000 is
  followed by a hole of 20 s to 15 min, a few streams have one segment of
  20 to 40 minutes (a segmenter that did not split), 2% of the streams still
  have their last segment open (``ended_at`` NULL), and a few segments are
  ``interrupted`` or ``failed`` instead of ``complete``;
* ``events`` events over the same time span, newest id = newest time:
  health and status changes (with their ``data``), motion, notes, a few
  failures and system events without a stream.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_state.history import USAGE_FILL_SQL
from stream_state.timeutil import HOUR_MS

FORMAT = 2  # bump when what the builders write changes, so old caches are not reused
DEFAULT_DIR = Path(os.environ.get("STREAM_STATE_BENCH_DIR", "/tmp/stream_state_bench"))
T0 = dt.datetime(2026, 11, 25, 0, 0, tzinfo=dt.UTC)
T0_MS = int(T0.timestamp() * 1000)
SEGMENT_MS = 10_000
STORAGES = ("disk0", "disk1", "disk2", "disk3")
HEALTH = ("healthy", "degraded", "unhealthy", "failed")
ROWS_PER_TRANSACTION = 500_000


@dataclass(frozen=True)
class RecordingsSpec:
    streams: int = 1000
    recordings: int = 10_000_000
    events: int = 1_000_000
    seed: int = 20261125
    format: int = FORMAT
    segment_ms: int = SEGMENT_MS  # typical length of a segment

    @property
    def segments_per_stream(self) -> int:
        return self.recordings // self.streams

    @property
    def name(self) -> str:
        # The default segment length is left out, so databases built before
        # the parameter existed are still found.
        length = "" if self.segment_ms == SEGMENT_MS else f"-m{self.segment_ms}"
        counts = f"s{self.streams}-r{self.recordings}-e{self.events}"
        return f"recordings-{counts}-{self.seed}{length}-v{self.format}"

    @property
    def params(self) -> dict:
        params = asdict(self)
        if self.segment_ms == SEGMENT_MS:
            del params["segment_ms"]
        return params


@dataclass(frozen=True)
class MetricsSpec:
    days: int = 7
    interval_ms: int = 1000
    seed: int = 7
    format: int = FORMAT

    @property
    def samples(self) -> int:
        return self.days * 86_400_000 // self.interval_ms

    @property
    def name(self) -> str:
        return f"metrics-d{self.days}-i{self.interval_ms}-{self.seed}-v{self.format}"


# --- public entry points ----------------------------------------------------------------------


def recordings_db(
    path: str | os.PathLike[str] | None = None,
    streams: int = 1000,
    recordings: int = 10_000_000,
    events: int = 1_000_000,
    *,
    seed: int = 20261125,
    segment_ms: int = SEGMENT_MS,
    verbose: bool = True,
) -> Path:
    """A SQLite database of ``streams`` streams, ``recordings`` segments and ``events`` events.

    Segments last about ``segment_ms`` (±0.5 s), so a stream's history spans
    ``recordings // streams * segment_ms``: 10-second segments make about
    28 hours at full size, 1-minute segments (``segment_ms=60_000``) a week.

    Built on first use (one to two minutes at full size) and reused while its
    manifest matches the parameters. ``path`` defaults to a file named after
    the parameters in the bench directory.
    """
    spec = RecordingsSpec(streams, recordings, events, seed, segment_ms=segment_ms)
    if recordings < streams:
        raise ValueError("need at least one recording per stream")
    target = Path(path) if path is not None else DEFAULT_DIR / f"{spec.name}.db"
    return _cached(target, spec.params, lambda tmp: _build_recordings(tmp, spec, verbose), verbose)


def metrics_db(
    path: str | os.PathLike[str] | None = None,
    days: int = 7,
    interval_ms: int = 1000,
    *,
    seed: int = 7,
    verbose: bool = True,
) -> Path:
    """A SQLite database with one metric series (``bitrate_kbps`` of ``cam-0``) over ``days``.

    One sample every ``interval_ms`` from ``T0`` (604,800 samples for the
    default week of seconds), and the per-minute and per-hour rollups brought
    up to date by ``stream_state.history.refresh_rollups``.
    """
    spec = MetricsSpec(days, interval_ms, seed)
    target = Path(path) if path is not None else DEFAULT_DIR / f"{spec.name}.db"
    return _cached(target, asdict(spec), lambda tmp: _build_metrics(tmp, spec, verbose), verbose)


# --- caching ------------------------------------------------------------------------------------


def _manifest(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _cached(target: Path, params: dict, build, verbose: bool) -> Path:
    manifest = _manifest(target)
    if target.is_file() and manifest.is_file():
        try:
            if json.loads(manifest.read_text()).get("params") == params:
                return target
        except (OSError, ValueError):
            pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.building-{os.getpid()}")
    _remove_database(tmp)
    started = time.perf_counter()
    try:
        build(tmp)
    except BaseException:
        _remove_database(tmp)
        raise
    _remove_database(target)
    manifest.unlink(missing_ok=True)
    os.replace(tmp, target)
    seconds = time.perf_counter() - started
    manifest.write_text(json.dumps({"params": params, "build_seconds": round(seconds, 1)}, indent=2))
    if verbose:
        size = target.stat().st_size / 1e9
        print(f"built {target} ({size:.2f} GB) in {seconds:.0f} s", file=sys.stderr)
    return target


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _create_schema(path: Path) -> None:
    """The package's own schema, made by open_database (pragmas, migrations and all)."""
    from stream_state import open_database

    db = open_database(f"sqlite:///{path}", backup_before_migrate=False)
    db.close()


def _bulk_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    # The file is scratch until it is renamed into place, so nothing needs to
    # survive a crash while it is filled.
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")  # 1 GB: index builds sort in memory
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA foreign_keys=OFF")
    return conn


def _finish(conn: sqlite3.Connection) -> None:
    # Back to the mode open_database sets, so readers find the file as the
    # package leaves it.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _without_indexes(conn: sqlite3.Connection, tables: tuple[str, ...]) -> list[str]:
    """Drop the tables' secondary indexes and triggers; return their CREATE statements for after the load.

    The recording_usage triggers go too: the summary is computed once at the
    end, from all the rows, as migration 003 does for an existing database.
    """
    placeholders = ", ".join("?" * len(tables))
    rows = conn.execute(
        f"SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'trigger') AND sql IS NOT NULL "
        f"AND tbl_name IN ({placeholders}) ORDER BY type",
        tables,
    ).fetchall()
    for kind, name, _ in rows:
        conn.execute(f'DROP {kind.upper()} "{name}"')
    return [sql for _, _, sql in rows]


def mark_runs_stale(conn: Any) -> None:
    """Every hour with closed segments stale in ``segment_runs``: what its triggers would have written.

    The load runs with the triggers dropped (``_without_indexes``), so the
    runs summary starts empty; stale, as migration 009 leaves an existing
    database, ``summarize_runs`` makes it from scratch. ``conn``: a sqlite3
    connection or a peewee database (both have ``execute``-like calls).
    """
    execute = getattr(conn, "execute_sql", None) or conn.execute
    execute(
        'INSERT INTO "segment_runs" ("stream_id", "hour", "version", "runs") '
        f'SELECT "stream_id", "started_at" / {HOUR_MS}, 1, NULL FROM "recording" '
        'WHERE "ended_at" IS NOT NULL GROUP BY 1, 2 '
        'ON CONFLICT ("stream_id", "hour") '
        'DO UPDATE SET "runs" = NULL, "version" = "segment_runs"."version" + 1'
    )


def _insert(conn: sqlite3.Connection, sql: str, rows: Iterator[tuple]) -> int:
    count = 0
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= ROWS_PER_TRANSACTION:
            conn.execute("BEGIN")
            conn.executemany(sql, batch)
            conn.execute("COMMIT")
            count += len(batch)
            batch.clear()
    if batch:
        conn.execute("BEGIN")
        conn.executemany(sql, batch)
        conn.execute("COMMIT")
        count += len(batch)
    return count


# --- recordings -----------------------------------------------------------------------------


@dataclass
class _StreamPlan:
    id: int
    name: str
    storage: str
    bytes_per_ms: int
    open_last: bool
    long_segment_at: int  # segment index of the one long segment, or -1
    clock: int = T0_MS  # start of the next segment
    last_end: int | None = None


def _build_recordings(path: Path, spec: RecordingsSpec, verbose: bool) -> None:
    _create_schema(path)
    rng = random.Random(spec.seed)
    conn = _bulk_connection(path)
    recreate = _without_indexes(conn, ("recording", "event"))
    plans = _stream_plans(rng, spec)
    step = time.perf_counter()

    def note(what: str) -> None:
        nonlocal step
        if verbose:
            now = time.perf_counter()
            print(f"  {what}: {now - step:.1f} s", file=sys.stderr)
            step = now

    health = {plan.id: ("healthy", T0_MS) for plan in plans}
    written = _insert(
        conn,
        'INSERT INTO "recording" ("id", "stream_id", "path", "storage", "segment_index", "started_at", '
        '"ended_at", "checkpoint_at", "size_bytes", "state", "archived", "metadata") '
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL)",
        _recording_rows(rng, spec, plans),
    )
    note(f"{written:,} recordings")
    end_ms = max(plan.last_end or plan.clock for plan in plans)
    written = _insert(
        conn,
        'INSERT INTO "event" ("id", "ts", "stream_id", "type", "severity", "message", "data") '
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        _event_rows(rng, spec, plans, health, end_ms),
    )
    note(f"{written:,} events")
    conn.execute("BEGIN")
    conn.executemany(
        'INSERT INTO "stream" ("id", "name", "uri", "config", "desired_enabled", "desired_recording", '
        '"status", "health", "status_changed_at", "health_changed_at", "last_seen_at", '
        '"next_segment_index", "retention", "created_at", "updated_at", "removed_at") '
        "VALUES (?, ?, ?, ?, 1, 1, 'running', ?, ?, ?, ?, ?, NULL, ?, ?, NULL)",
        [
            (
                plan.id,
                plan.name,
                f"rtsp://10.{plan.id // 250}.{plan.id % 250}.1/main",
                json.dumps({"fps": 15, "bitrate_bps": plan.bytes_per_ms * 8000}),
                health[plan.id][0],
                T0_MS,
                health[plan.id][1],
                end_ms,
                spec.segments_per_stream,
                T0_MS,
                end_ms,
            )
            for plan in plans
        ],
    )
    conn.execute(USAGE_FILL_SQL)
    mark_runs_stale(conn)
    conn.execute("COMMIT")
    for sql in recreate:
        conn.execute(sql)
    note(f"{len(recreate)} indexes and triggers, usage summary")
    _finish(conn)


def _stream_plans(rng: random.Random, spec: RecordingsSpec) -> list[_StreamPlan]:
    long_streams = set(rng.sample(range(spec.streams), k=max(1, spec.streams // 200)))
    open_streams = set(rng.sample(range(spec.streams), k=max(1, spec.streams // 50)))
    plans = []
    for i in range(spec.streams):
        plans.append(
            _StreamPlan(
                id=i + 1,
                name=f"cam-{i:04d}",
                storage=STORAGES[i % len(STORAGES)],
                bytes_per_ms=rng.randrange(250, 1000),  # 2-8 Mbit/s
                open_last=i in open_streams,
                long_segment_at=rng.randrange(spec.segments_per_stream) if i in long_streams else -1,
                # Cameras did not all start at the same millisecond.
                clock=T0_MS + rng.randrange(spec.segment_ms),
            )
        )
    return plans


def _recording_rows(rng: random.Random, spec: RecordingsSpec, plans: list[_StreamPlan]) -> Iterator[tuple]:
    rand = rng.random
    randrange = rng.randrange
    per_stream = spec.segments_per_stream
    last = per_stream - 1
    rec_id = 0
    for index in range(per_stream):
        for plan in plans:
            rec_id += 1
            start = plan.clock
            if index == plan.long_segment_at:
                length = randrange(20 * 60_000, 40 * 60_000)
            else:
                length = spec.segment_ms - 500 + randrange(1000)
            end = start + length
            hour = (start - T0_MS) // 3_600_000
            path = f"/srv/nvr/{plan.storage}/h{hour:05d}/{plan.name}/{index:08d}.mp4"
            size = length * plan.bytes_per_ms
            if index == last and plan.open_last:
                yield (rec_id, plan.id, path, plan.storage, index, start, None, end - 2000, size // 2,
                       "recording")  # fmt: skip
                continue
            roll = rand()
            state = "complete" if roll > 0.0015 else ("interrupted" if roll > 0.0005 else "failed")
            yield (rec_id, plan.id, path, plan.storage, index, start, end, None, size, state)
            # Back to back, like splitmuxsink; now and then the camera drops out.
            plan.clock = end + (randrange(20_000, 900_000) if rand() < 0.0005 else 0)
            plan.last_end = end


_EVENT_TYPES = (
    # type, weight, severity
    ("motion", 50, "info"),
    ("health_changed", 20, None),
    ("status_changed", 10, "info"),
    ("note", 15, "debug"),
    ("segment_failed", 2, "error"),
    ("storage_warning", 3, "warning"),
)


def _event_rows(
    rng: random.Random,
    spec: RecordingsSpec,
    plans: list[_StreamPlan],
    health: dict[int, tuple[str, int]],
    end_ms: int,
) -> Iterator[tuple]:
    types = [t for t, weight, _ in _EVENT_TYPES for _ in range(weight)]
    severity_of = {t: s for t, _, s in _EVENT_TYPES}
    span = end_ms - T0_MS
    times = sorted(T0_MS + rng.randrange(span) for _ in range(spec.events))
    for event_id, ts in enumerate(times, start=1):
        kind = rng.choice(types)
        stream_id = None if rng.random() < 0.05 else rng.randrange(len(plans)) + 1
        if stream_id is None and kind == "health_changed":
            kind = "note"
        data = None
        severity = severity_of[kind]
        if kind == "health_changed":
            old = health[stream_id][0]
            new = rng.choice([h for h in HEALTH if h != old])
            health[stream_id] = (new, ts)
            severity = {"healthy": "info", "degraded": "warning", "unhealthy": "error", "failed": "critical"}[
                new
            ]
            reason = rng.choice(("rtsp timeout", "fps below 5", "recovered", "decoder error"))
            data = json.dumps({"old": old, "new": new, "reason": reason, "detail": None})
            message = f"cam: {old} -> {new} ({reason})"
        elif kind == "status_changed":
            data = json.dumps({"old": "running", "new": "running", "reason": None})
            message = "status report"
        else:
            message = f"{kind} #{event_id}"
        yield (event_id, ts, stream_id, kind, severity, message, data)


# --- metrics ------------------------------------------------------------------------------------


def _build_metrics(path: Path, spec: MetricsSpec, verbose: bool) -> None:
    import math

    from stream_state import MetricSample, Stream, open_database
    from stream_state.history import refresh_rollups
    from stream_state.models.session import forget_process_session
    from stream_state.timeutil import from_millis

    db = open_database(f"sqlite:///{path}", backup_before_migrate=False)
    try:
        stream = Stream.register("cam-0", "rtsp://10.0.0.1/main")
        MetricSample.record("bitrate_kbps", 0.0, stream=stream, at=T0)  # creates the series
        series_id = db.execute_sql('SELECT "id" FROM "metric_series"').fetchone()[0]
    finally:
        # The writes opened this process's session: end it, or its lease
        # keeper goes on renewing in a file renamed into place under it.
        forget_process_session(db)
        db.close()
    rng = random.Random(spec.seed)
    conn = _bulk_connection(path)
    period = 86_400_000 / spec.interval_ms

    def rows() -> Iterator[tuple]:
        for i in range(spec.samples):
            daily = 4000 + 1500 * math.sin(2 * math.pi * i / period)
            yield (series_id, T0_MS + i * spec.interval_ms, round(daily + rng.gauss(0, 200), 1))

    started = time.perf_counter()
    _insert(
        conn,
        'INSERT OR REPLACE INTO "metric_sample" ("series_id", "ts", "value") VALUES (?, ?, ?)',
        rows(),
    )
    _finish(conn)
    if verbose:
        print(f"  {spec.samples:,} samples: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    db = open_database(f"sqlite:///{path}", backup_before_migrate=False)
    try:
        started = time.perf_counter()
        report = refresh_rollups(until=from_millis(T0_MS + spec.samples * spec.interval_ms))
        if verbose:
            print(f"  rollups: {report} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    finally:
        forget_process_session(db)
        db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--recordings", type=int, default=10_000_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--metrics", action="store_true", help="build the metrics database instead")
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args(argv)
    if args.metrics:
        print(metrics_db(days=args.days))
    else:
        print(recordings_db(streams=args.streams, recordings=args.recordings, events=args.events))


if __name__ == "__main__":
    main()
