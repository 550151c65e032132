"""The manager workload: what a recorder asks of the package every second, per stream.

    python bench/manager.py                                   # SQLite, 50 streams, 10 simulated minutes
    python bench/manager.py --pg postgresql://postgres@127.0.0.1:5432/test
    python bench/manager.py --streams 1000 --seconds 30 --modes batch --pg URL   # real time at 1,000?
    python bench/manager.py --modes loop --profile 25        # cProfile the per-call loop

Every simulated second, for every stream (as ``stream_state`` is called by a
stream manager that drives splitmuxsink-style segmenters):

* ``recording.checkpoint(size, at)``: progress of the open segment;
* ``stream.record_health("healthy", at)``: unchanged, so only ``last_seen_at``;
* every 10th second (staggered across streams) ``complete_segment`` of the
  open segment and ``begin_segment`` of the next one (10-second files);
* every 5 minutes (staggered) a motion ``Event.record``;

and once per tick one ``MetricSample.record_many`` with 10 series per stream.

The simulated time runs as fast as the machine goes. The figure is CPU
seconds per *stream-hour* (the CPU one stream costs for one hour of real
recording), from which *streams per core* = 3600 / that. CPU is this
process's (``time.process_time``: every thread, and SQLite's work, which runs
inside it) plus, on PostgreSQL, the CPU of the server backends that served
this run, read from ``/proc/<pid>/stat`` (the shared WAL writer and
checkpointer are left out, on both sides alike). ``wall/sim s`` is the wall
time per simulated second: below 1.0 the mode keeps real time at that many
streams.

Modes (``--modes``, comma-separated):

* ``loop``: the per-call API in one synchronous loop, as a manager does today;
* ``threads``: the same calls from ``--threads`` threads, each owning a slice
  of the streams (its own connection; one ``record_many`` per thread per tick);
* ``aio``: the same calls through ``stream_state.aio`` from ``--threads``
  tasks on one event loop (each drives a slice of the streams; one
  ``record_many`` a tick, as in ``loop``);
* ``batch``: one loop, each tick's checkpoints, health touches, events,
  samples and segment rolls gathered in one ``stream_state.Tick()`` (one
  transaction, one ``executemany`` or ``unnest`` per statement); a rolled
  segment's new row is committed with the tick, and its file opened after it;
* ``aio-coalesce``: ``aio`` on a database opened with ``coalesce=True``: the
  single calls the tasks make at about the same time are written together as
  one ``Tick`` on the writer thread (stream_state.coalesce; SQLite only,
  PostgreSQL ignores it);
* ``aio-batch``: ``batch`` through ``aio.tick()`` (one tick a second for
  every stream, as in ``batch``).

The baseline (**raw**): the very statements the package issued in the
``loop`` and ``batch`` modes, with the same parameters, in the same
transactions (BEGIN/COMMIT are statements in peewee 4, so they are in the
trace), replayed through the bare driver (``sqlite3`` / ``psycopg2``) on a
twin database built the same way, in interleaved chunks so that table growth
and machine noise fall on both alike. The package side pays a trace hook of
well under a microsecond per statement. ``ratio`` is raw CPU / package CPU
(1.0 = as cheap as the driver alone) for the statements that mode issues;
``vs raw loop`` compares with the per-call statements, the work the issue's
first figures were measured against.

Each database is fresh (a temporary file; on PostgreSQL a scratch schema,
dropped at the end). Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import gc
import os
import pstats
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import peewee as pw

import stream_state
from stream_state import Event, MetricSample, Recording, Stream, open_database
from stream_state.database import sqlite_pragmas
from stream_state.models import database_proxy
from stream_state.models.session import forget_process_session

T0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)
SEGMENT_SECONDS = 10
MOTION_SECONDS = 300
BYTES_PER_SECOND = 500_000  # a 4 Mbit/s camera
SERIES = (
    "fps",
    "bitrate_kbps",
    "frames_dropped",
    "latency_ms",
    "decode_ms",
    "queue_depth",
    "rtp_jitter_ms",
    "packets_lost",
    "keyframe_interval",
    "cpu_pct",
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
GOAL_RATIO = 0.5
GOAL_AIO = 1.2
GOAL_PG_STREAMS = 1000


# --- the workload ----------------------------------------------------------------------


@dataclass
class Cam:
    """One stream as the manager sees it: the model, its open segment, its metric labels."""

    stream: Stream
    index: int
    segment: Recording | None = None
    size: int = 0
    files: int = 0
    labels: dict[str, str] = field(default_factory=dict)

    def path(self, side: str) -> str:
        self.files += 1
        return f"/media/{self.stream.name}/{side}-{self.files:08d}.mp4"

    def samples(self, t: int, at: dt.datetime) -> list[tuple[Any, ...]]:
        stream = self.stream
        labels = self.labels
        return [
            (name, value, stream, labels, at)
            for name, value in zip(SERIES, values(t, self.index), strict=True)
        ]


def values(t: int, i: int) -> tuple[float, ...]:
    """Stream ``i``'s 10 metric values at second ``t``: rounded, as a pipeline reports them."""
    return (
        15.0 if (t + i) % 97 else 14.0,
        float(4000 + (t * 7 + i * 13) % 400),
        float((t + i) % 53 == 0),
        round(80 + ((t * 31 + i) % 40) * 0.5, 1),
        round(4 + ((t + i) % 9) * 0.25, 2),
        float((t + i) % 4),
        round(((t * 17 + i) % 30) * 0.1, 1),
        0.0,
        30.0,
        round(10 + ((t * 3 + i) % 50) * 0.2, 1),
    )


def make_cams(n: int) -> list[Cam]:
    cams = []
    for i in range(n):
        stream = Stream.register(f"cam-{i:05d}", f"rtsp://10.{i // 250}.{i % 250}.1/main", recording=True)
        stream.record_health("healthy", at=T0 - SECOND)
        cams.append(Cam(stream, i, labels={"pipeline": "main"}))
    return cams


def open_segments(cams: list[Cam], side: str) -> None:
    for cam in cams:
        cam.segment = cam.stream.begin_segment(cam.path(side), started_at=T0 - SECOND)


def tick_calls(cams: list[Cam], t: int, side: str) -> list[tuple[Any, ...]]:
    """The per-call API for one simulated second of ``cams``; returns the tick's samples."""
    at = T0 + t * SECOND
    samples: list[tuple[Any, ...]] = []
    for cam in cams:
        cam.size += BYTES_PER_SECOND
        segment = cam.segment
        assert segment is not None
        segment.checkpoint(cam.size, at=at)
        if (t + cam.index) % SEGMENT_SECONDS == 0:
            segment.complete_segment(ended_at=at, size_bytes=cam.size)
            cam.segment = cam.stream.begin_segment(cam.path(side), started_at=at)
            cam.size = 0
        cam.stream.record_health("healthy", at=at)
        if (t + cam.index) % MOTION_SECONDS == 0:
            Event.record(
                "motion", cam.stream, message="motion in zone 1", data={"zone": 1, "score": 0.82}, at=at
            )
        samples.extend(cam.samples(t, at))
    return samples


def run_loop(cams: list[Cam], seconds: range, side: str) -> None:
    for t in seconds:
        MetricSample.record_many(tick_calls(cams, t, side))


def batch_tick(cams: list[Cam], t: int, side: str) -> None:
    """One tick through ``stream_state.Tick()``: one transaction, segment rolls included."""
    at = T0 + t * SECOND
    with stream_state.Tick() as tick:
        rolled = fill_tick(tick, cams, t, at, side)
    settle_rolls(rolled)


def fill_tick(tick: Any, cams: list[Cam], t: int, at: dt.datetime, side: str) -> list[tuple[Cam, Any]]:
    rolled = []
    for cam in cams:
        cam.size += BYTES_PER_SECOND
        segment = cam.segment
        assert segment is not None
        tick.checkpoint(segment, cam.size, at=at)
        if (t + cam.index) % SEGMENT_SECONDS == 0:
            # The file rolls now: the old row closes and the next row is
            # committed with the tick; the new file opens after the commit.
            tick.complete_segment(segment, ended_at=at, size_bytes=cam.size)
            rolled.append((cam, tick.begin_segment(cam.stream, cam.path(side), started_at=at)))
        tick.record_health(cam.stream, "healthy", at=at)
        if (t + cam.index) % MOTION_SECONDS == 0:
            tick.event(
                "motion", cam.stream, message="motion in zone 1", data={"zone": 1, "score": 0.82}, at=at
            )
        tick.record_many(cam.samples(t, at))
    return rolled


def settle_rolls(rolled: list[tuple[Cam, Any]]) -> None:
    for cam, pending in rolled:
        assert pending.recording is not None
        cam.segment = pending.recording
        cam.size = 0


def run_batch(cams: list[Cam], seconds: range, side: str) -> None:
    for t in seconds:
        batch_tick(cams, t, side)


def run_threads(cams: list[Cam], seconds: range, side: str, threads: int, batch: bool = False) -> None:
    slices = [cams[i::threads] for i in range(threads)]
    errors: list[BaseException] = []

    def work(mine: list[Cam]) -> None:
        try:
            (run_batch if batch else run_loop)(mine, seconds, side)
        except BaseException as exc:  # reported after join
            errors.append(exc)
        finally:
            database_proxy.close()  # hands a pooled connection back for the next run's threads

    workers = [threading.Thread(target=work, args=(mine,)) for mine in slices]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]


async def run_aio(cams: list[Cam], seconds: range, side: str, tasks: int, batch: bool) -> None:
    """``loop`` or ``batch`` through ``stream_state.aio``: the same calls and the same transactions.

    Single calls: each tick, ``tasks`` tasks drive their slices of the
    streams at once, then one ``record_many`` takes the tick's samples, as
    in ``loop``. The tick: one ``aio.tick()`` a second for every stream, as
    in ``batch`` (gathering needs no await, so tasks would add nothing).
    """
    from stream_state import aio

    slices = [cams[i::tasks] for i in range(tasks)]

    async def work(mine: list[Cam], t: int, at: dt.datetime, samples: list[tuple[Any, ...]]) -> None:
        for cam in mine:
            cam.size += BYTES_PER_SECOND
            await aio.checkpoint(cam.segment, cam.size, at=at)
            if (t + cam.index) % SEGMENT_SECONDS == 0:
                await aio.complete_segment(cam.segment, ended_at=at, size_bytes=cam.size)
                cam.segment = await aio.begin_segment(cam.stream, cam.path(side), started_at=at)
                cam.size = 0
            await aio.record_health(cam.stream, "healthy", at=at)
            if (t + cam.index) % MOTION_SECONDS == 0:
                await aio.record_event("motion", cam.stream, message="motion in zone 1",
                                       data={"zone": 1, "score": 0.82}, at=at)  # fmt: skip
            samples.extend(cam.samples(t, at))

    for t in seconds:
        at = T0 + t * SECOND
        if batch:
            async with aio.tick() as tick:
                rolled = fill_tick(tick, cams, t, at, side)
            settle_rolls(rolled)
            continue
        samples: list[tuple[Any, ...]] = []
        await asyncio.gather(*(work(mine, t, at, samples) for mine in slices))
        await aio.record_many(samples)


# --- tracing the package's statements for the raw replay ---------------------------------

Trace = list[tuple[str, Any, Any]]  # ("x", sql, params) or ("m", sql, rows)


def sqlite_trace_cursor(trace: Trace) -> type[sqlite3.Cursor]:
    class TraceCursor(sqlite3.Cursor):
        def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:  # type: ignore[override]
            trace.append(("x", sql, params))
            return super().execute(sql, params)

        def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:  # type: ignore[override]
            rows = list(rows)
            trace.append(("m", sql, rows))
            return super().executemany(sql, rows)

    return TraceCursor


def psycopg2_trace_cursor(trace: Trace) -> type:
    from psycopg2.extensions import cursor as base

    class TraceCursor(base):  # type: ignore[misc, valid-type]
        def execute(self, sql: Any, params: Any = None) -> None:
            trace.append(("x", sql, params))
            return super().execute(sql, params)

        def executemany(self, sql: Any, rows: Any) -> None:
            rows = list(rows)
            trace.append(("m", sql, rows))
            return super().executemany(sql, rows)

    return TraceCursor


@contextmanager
def tracing(db: pw.Database, trace: Trace) -> Iterator[None]:
    """Every statement ``db`` runs from this thread goes into ``trace`` too."""
    if isinstance(db, pw.SqliteDatabase):
        factory = sqlite_trace_cursor(trace)

        def cursor(named_cursor: Any = None) -> Any:
            return db.connection().cursor(factory)
    else:
        factory = psycopg2_trace_cursor(trace)

        def cursor(named_cursor: Any = None) -> Any:
            return db.connection().cursor(cursor_factory=factory)

    db.cursor = cursor  # type: ignore[method-assign]
    try:
        yield
    finally:
        del db.cursor


def replay_sqlite(conn: sqlite3.Connection, trace: Trace) -> None:
    cursor = conn.cursor()
    execute, executemany = cursor.execute, cursor.executemany
    for kind, sql, params in trace:
        if kind == "x":
            execute(sql, params)
            if cursor.description is not None:
                cursor.fetchall()
        else:
            executemany(sql, params)


def replay_psycopg2(conn: Any, trace: Trace) -> None:
    cursor = conn.cursor()
    execute, executemany = cursor.execute, cursor.executemany
    for kind, sql, params in trace:
        if kind == "x":
            execute(sql, params)
            if cursor.description is not None:
                cursor.fetchall()
        else:
            executemany(sql, params)


# --- CPU ------------------------------------------------------------------------------------


def proc_cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


@dataclass
class Tally:
    client: float = 0.0
    server: float = 0.0
    wall: float = 0.0
    sim_seconds: int = 0
    statements: int = 0
    commits: int = 0
    # CPU of the thread that measured: the event loop's in the aio modes (the
    # rest of ``client`` is then the database threads', on SQLite).
    measuring_thread: float = 0.0

    @property
    def cpu(self) -> float:
        return self.client + self.server


class Meter:
    """Client CPU of this process plus server CPU of the backends named ``app``."""

    def __init__(self, backend: Backend, app: str | None):
        self.backend = backend
        self.app = app

    def pids(self) -> list[int]:
        return self.backend.backend_pids(self.app) if self.app else []

    def server_cpu(self) -> dict[int, float]:
        return {pid: proc_cpu([pid]) for pid in self.pids()}

    @contextmanager
    def measure(self, tally: Tally, sim_seconds: int) -> Iterator[None]:
        gc.collect()
        server0 = self.server_cpu()
        cpu0, wall0, thread0 = time.process_time(), time.perf_counter(), time.thread_time()
        yield
        tally.wall += time.perf_counter() - wall0
        tally.client += time.process_time() - cpu0
        tally.measuring_thread += time.thread_time() - thread0
        # A backend that started during the run counts whole (its connection setup too).
        server1 = self.server_cpu()
        tally.server += sum(cpu - server0.get(pid, 0.0) for pid, cpu in server1.items())
        tally.sim_seconds += sim_seconds


# --- backends -------------------------------------------------------------------------------


class Backend:
    name = ""

    def open(self, label: str, app: str) -> pw.Database:
        raise NotImplementedError

    def raw(self, label: str, app: str) -> tuple[Any, Callable[[Trace], None]]:
        raise NotImplementedError

    def backend_pids(self, app: str) -> list[int]:
        return []

    def async_url(self, label: str) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def cleanup(self) -> None:
        pass


class SqliteBackend(Backend):
    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-manager-")
        self.name = f"sqlite {sqlite3.sqlite_version}"

    def path(self, label: str) -> str:
        return str(Path(self.tmp.name) / f"{label}.db")

    def open(self, label: str, app: str) -> pw.Database:
        return open_database(self.path(label))

    def raw(self, label: str, app: str) -> tuple[Any, Callable[[Trace], None]]:
        conn = sqlite3.connect(self.path(label), timeout=30.0, isolation_level=None, check_same_thread=False)
        for name, value in sqlite_pragmas():
            conn.execute(f"PRAGMA {name} = {value}")
        return conn, lambda trace: replay_sqlite(conn, trace)

    def async_url(self, label: str) -> tuple[str, dict[str, Any]]:
        return self.path(label), {}

    def cleanup(self) -> None:
        self.tmp.cleanup()


class PostgresBackend(Backend):
    def __init__(self, url: str):
        import psycopg2

        self.url = url
        self.schemas: list[str] = []
        self.where: dict[str, str] = {}
        self.admin = psycopg2.connect(url)
        self.admin.autocommit = True
        version = self.admin.server_version
        self.name = f"postgresql {version // 10000}.{version % 10000}"

    def schema(self, label: str) -> str:
        schema = f"bench_{label.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        with self.admin.cursor() as cursor:
            cursor.execute(f'CREATE SCHEMA "{schema}"')
        self.schemas.append(schema)
        return schema

    def open(self, label: str, app: str) -> pw.Database:
        self.where[label] = self.schema(label)
        return open_database(self.url, options=f"-c search_path={self.where[label]}", application_name=app)

    def raw(self, label: str, app: str) -> tuple[Any, Callable[[Trace], None]]:
        import psycopg2

        conn = psycopg2.connect(self.url, options=f"-c search_path={self.where[label]}", application_name=app)
        conn.autocommit = True  # BEGIN and COMMIT are in the trace, as peewee sends them
        return conn, lambda trace: replay_psycopg2(conn, trace)

    def async_url(self, label: str) -> tuple[str, dict[str, Any]]:
        return self.url, {"options": f"-c search_path={self.schema(label)}"}

    def backend_pids(self, app: str) -> list[int]:
        with self.admin.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,))
            return [pid for (pid,) in cursor.fetchall()]

    def cleanup(self) -> None:
        with self.admin.cursor() as cursor:
            for schema in self.schemas:
                cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        self.admin.close()


# --- the runs -------------------------------------------------------------------------------


@dataclass
class Plan:
    streams: int
    seconds: int
    chunk: int
    threads: int
    warmup: int
    profile: int


@dataclass
class Row:
    backend: str
    mode: str
    streams: int
    api: Tally
    raw: Tally | None = None
    statements: int = 0

    def per_stream_hour(self, tally: Tally) -> float:
        return tally.cpu / (self.streams * tally.sim_seconds / 3600)

    @property
    def ratio(self) -> float | None:
        return None if self.raw is None else self.raw.cpu / self.api.cpu


def close(db: pw.Database) -> None:
    # The run's writes opened this process's session: ended with its database,
    # or its lease keeper goes on renewing on connections closed under it.
    forget_process_session(db)
    if isinstance(db, pw.PostgresqlDatabase):
        db.close_all()  # type: ignore[attr-defined]
    else:
        db.close()


def traced_mode(backend: Backend, plan: Plan, mode: str) -> Row:
    """loop or batch, one thread: the package on one database, its trace replayed raw on a twin."""
    run = run_loop if mode == "loop" else run_batch
    tag = uuid.uuid4().hex[:8]
    apps = {"api": f"bench-api-{tag}", "raw": f"bench-raw-{tag}"}
    cams = {}
    # Both databases are set up by the same API calls, so the twin holds the
    # same rows under the same ids and the trace replays statement for statement.
    for side in ("raw", "api"):
        db = backend.open(f"{mode}-{side}", apps[side])
        cams[side] = make_cams(plan.streams)
        open_segments(cams[side], "api")
        if side == "raw":
            close(db)
    raw_conn, replay = backend.raw(f"{mode}-raw", apps["raw"])
    api_meter, raw_meter = Meter(backend, apps["api"]), Meter(backend, apps["raw"])
    api, raw = Tally(), Tally()
    statements = 0
    chunks = [range(0, plan.warmup)] if plan.warmup else []
    chunks += [
        range(t, min(t + plan.chunk, plan.seconds)) for t in range(plan.warmup, plan.seconds, plan.chunk)
    ]
    for n, seconds in enumerate(chunks):
        trace: Trace = []
        timed = not (plan.warmup and n == 0)
        with tracing(db, trace):
            if timed:
                with api_meter.measure(api, len(seconds)):
                    run(cams["api"], seconds, "api")
            else:
                run(cams["api"], seconds, "api")
        if timed:
            with raw_meter.measure(raw, len(seconds)):
                replay(trace)
            statements += len(trace)
        else:
            replay(trace)
    if plan.profile:
        extra = range(plan.seconds, plan.seconds + plan.chunk)
        profile(backend.name, mode, lambda: run(cams["api"], extra, "api"), plan.profile)
    raw_conn.close()
    close(db)
    return Row(backend.name, mode, plan.streams, api, raw, statements=statements)


def threads_mode(backend: Backend, plan: Plan, batch: bool) -> Row:
    app = f"bench-thr-{uuid.uuid4().hex[:8]}"
    db = backend.open("threads-batch" if batch else "threads", app)
    cams = make_cams(plan.streams)
    open_segments(cams, "api")
    run_threads(cams, range(0, plan.warmup), "api", plan.threads, batch)  # every thread connects
    tally = Tally()
    with Meter(backend, app).measure(tally, plan.seconds - plan.warmup):
        run_threads(cams, range(plan.warmup, plan.seconds), "api", plan.threads, batch)
    close(db)
    return Row(backend.name, f"threads x{plan.threads}" + (" batch" if batch else ""), plan.streams, tally)


def aio_mode(backend: Backend, plan: Plan, batch: bool, coalesce: bool = False) -> Row:
    from stream_state import aio

    app = f"bench-aio-{uuid.uuid4().hex[:8]}"
    url, params = backend.async_url("aio-batch" if batch else "aio-coalesce" if coalesce else "aio")
    if isinstance(backend, PostgresBackend):
        params["application_name"] = app
    # The streams are registered with the synchronous API, as setup.
    sync_db = open_database(url, **{k: v for k, v in params.items()})
    cams = make_cams(plan.streams)
    open_segments(cams, "api")
    # The setup's session ends cleanly (close), so that the async database's session takes its streams.
    close(sync_db)
    tally = Tally()

    async def main() -> None:
        opened = aio.open_database_async(url, pool_size=max(plan.threads, 1), coalesce=coalesce, **params)
        async with opened:
            await run_aio(cams, range(0, plan.warmup), "api", plan.threads, batch)
            with Meter(backend, app).measure(tally, plan.seconds - plan.warmup):
                await run_aio(cams, range(plan.warmup, plan.seconds), "api", plan.threads, batch)

    asyncio.run(main())
    database_proxy.initialize(None)
    mode = "aio batch" if batch else f"aio x{plan.threads}" + (" coalesce" if coalesce else "")
    return Row(backend.name, mode, plan.streams, tally)


def profile(backend: str, mode: str, fn: Callable[[], None], top: int) -> None:
    profiler = cProfile.Profile()
    profiler.runcall(fn)
    print(f"\ncProfile of mode {mode} on {backend}, top {top} by own time:")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)


# --- report -----------------------------------------------------------------------------------


def report(rows: list[Row]) -> None:
    print(
        "\nCPU per stream-hour (client + server), streams per core = 3600 / that; "
        "raw = the same statements replayed by the bare driver"
    )
    header = (
        f"{'backend':<17} {'mode':<17} {'streams':>7} {'CPU s/stream-h':>15} {'streams/core':>12} "
        f"{'server %':>8} {'wall/sim s':>10} {'raw CPU s/sh':>12} {'ratio':>6} "
        f"{'vs raw loop':>11} {'vs loop':>8}"
    )
    print(header)
    print("-" * len(header))
    loops = {(r.backend, r.streams): r for r in rows if r.mode == "loop"}
    for row in rows:
        per_hour = row.per_stream_hour(row.api)
        loop = loops.get((row.backend, row.streams))
        raw_loop = loop.per_stream_hour(loop.raw) if loop and loop.raw else None
        raw = f"{row.per_stream_hour(row.raw):12.3f}" if row.raw else f"{'':>12}"
        ratio = f"{row.ratio:6.2f}" if row.ratio is not None else f"{'':>6}"
        vs_raw_loop = f"{raw_loop / per_hour:11.2f}" if raw_loop else f"{'':>11}"
        vs_loop = f"{per_hour / loop.per_stream_hour(loop.api):7.2f}x" if loop else f"{'':>8}"
        server = 100 * row.api.server / row.api.cpu if row.api.cpu else 0.0
        print(
            f"{row.backend:<17} {row.mode:<17} {row.streams:>7} {per_hour:15.3f} {3600 / per_hour:12,.0f} "
            f"{server:7.0f}% {row.api.wall / row.api.sim_seconds:10.3f} {raw} {ratio} {vs_raw_loop} {vs_loop}"
        )
    for row in rows:
        if not row.mode.startswith("aio"):
            continue
        sync_mode = "batch" if row.mode == "aio batch" else "loop"
        sync = next(
            (r for r in rows if (r.backend, r.streams, r.mode) == (row.backend, row.streams, sync_mode)), None
        )
        if sync is not None:
            times = row.per_stream_hour(row.api) / sync.per_stream_hour(sync.api)
            # Where it goes: the event loop's thread (the tasks, asyncio, the
            # hand-off; on PostgreSQL the calls too), the other threads (on
            # SQLite the database threads, which run the very calls the sync
            # loop runs), the server.
            hours = row.streams * row.api.sim_seconds / 3600
            on_loop = row.api.measuring_thread / hours
            others = (row.api.client - row.api.measuring_thread) / hours
            server, whole = row.api.server / hours, sync.per_stream_hour(sync.api)
            print(
                f"{row.backend}: {row.mode} costs {times:.2f}x the CPU of {sync_mode} (goal <= {GOAL_AIO}x); "
                f"CPU s/stream-h: the loop's thread {on_loop:.3f}, other threads {others:.3f}, "
                f"server {server:.3f}; {sync_mode} {whole:.3f} in all"
            )
    print(
        f"\ngoals: SQLite sync >= {GOAL_RATIO} of raw "
        "(batch against its own statements and against the raw loop); "
        f"aio <= {GOAL_AIO}x the sync CPU; PostgreSQL one sync loop with the batch: wall/sim s <= 1.0 "
        f"at >= {GOAL_PG_STREAMS:,} streams"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=50, help="streams (default 50)")
    parser.add_argument("--seconds", type=int, default=600, help="simulated seconds (default 600)")
    parser.add_argument(
        "--chunk", type=int, default=60, help="simulated seconds per interleaved chunk (default 60)"
    )
    parser.add_argument("--warmup", type=int, default=20, help="untimed simulated seconds first (default 20)")
    parser.add_argument("--threads", type=int, default=4, help="threads / asyncio tasks (default 4)")
    parser.add_argument(
        "--modes", default="loop,batch,threads,aio,aio-batch", help="comma-separated (default: all)"
    )
    parser.add_argument("--pg", metavar="URL", help="also run on PostgreSQL (scratch schemas, dropped)")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="cProfile the traced modes, top N"
    )
    args = parser.parse_args(argv)
    if args.streams < 1 or args.seconds <= args.warmup or args.chunk < 1 or args.threads < 1:
        parser.error("need --streams >= 1, --seconds > --warmup, --chunk >= 1, --threads >= 1")
    plan = Plan(args.streams, args.seconds, args.chunk, args.threads, args.warmup, args.profile)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {"loop", "batch", "threads", "threads-batch", "aio", "aio-coalesce", "aio-batch"}
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    print(
        f"peewee {pw.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
        f"{plan.streams} streams x {plan.seconds - plan.warmup} simulated seconds "
        f"(+{plan.warmup} warm-up), chunks of {plan.chunk}"
    )
    backends: list[Callable[[], Backend]] = []
    if not args.no_sqlite:
        backends.append(SqliteBackend)
    if args.pg:
        backends.append(lambda: PostgresBackend(args.pg))
    rows: list[Row] = []
    for make in backends:
        backend = make()
        try:
            for mode in modes:
                if mode in ("loop", "batch"):
                    rows.append(traced_mode(backend, plan, mode))
                elif mode in ("threads", "threads-batch"):
                    rows.append(threads_mode(backend, plan, batch=mode == "threads-batch"))
                else:
                    rows.append(aio_mode(backend, plan, mode == "aio-batch", mode == "aio-coalesce"))
                print(f"  {backend.name} {mode}: done", flush=True)
        finally:
            backend.cleanup()
    report(rows)


if __name__ == "__main__":
    main()
