"""The asyncio face against the synchronous API, in the same run, on the same database.

    python bench/async.py                                   # SQLite
    python bench/async.py --pg postgresql://postgres@127.0.0.1:5432/test
    python bench/async.py --cycles 500 --batches 50 --tasks 50

Two workloads, each what a stream manager does all day:

* **segment cycle**: ``begin_segment`` then ``complete_segment(ended_at=...,
  size_bytes=...)`` (two transactions, the hot path);
* **metric batch**: ``MetricSample.record_many`` of one tick's samples
  (``--streams`` streams x 2 series each, one transaction).

Each runs three ways against one database, in interleaved rounds (so table
growth and background noise fall on all alike):

* ``sync``: the synchronous API in a plain loop (the baseline);
* ``async 1 task``: the same calls awaited one after another through
  ``stream_state.aio``: what the hand-off to the database costs;
* ``async N tasks``: ``--tasks`` tasks in one loop, each driving its own
  streams at once, as a manager does (on SQLite they queue on the one
  writer thread; on PostgreSQL they run on parallel connections).

Where the async time goes. SQLite: each call runs whole on a database
thread (one hand-off there and one wake-up of the loop back, however many
statements the call runs); with many tasks the writer thread runs their
calls back to back and the loop collects the outcomes in one wake-up.
PostgreSQL: every statement is a trip to asyncpg and back through the
loop, the network round trip that psycopg2 pays too, so PostgreSQL loses
little and gains from parallel connections.

The table gives operations per second, the ratio to ``sync``, and the worst
lag of a 5 ms ticker task running in the same loop. For ``sync`` the lag is
how long the loop stays blocked when the manager calls the synchronous API
from it (here: a whole round). For the async modes it is the Python work
that happens to run in one loop iteration: on PostgreSQL validation and SQL
building stay on the loop's thread (a 200-sample batch takes a few ms to
validate, so 50 tasks starting one each at the same instant hold the loop
for 50 times that); on SQLite they run on the database thread, which shares
the GIL with the loop; the waiting for the database never blocks the loop.
Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import peewee as pw

from stream_state import Stream, aio, open_database
from stream_state.models import MetricSample, database_proxy

SEGMENT = dt.timedelta(seconds=10)
SIZE_BYTES = 4_000_000
T0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
MODES = ("sync", "async 1 task", "async N tasks")
Job = tuple[Stream, str, dt.datetime]  # one segment cycle: the stream, the file, its start


@dataclass
class Tally:
    ops: int = 0
    seconds: float = 0.0
    worst_lag: float = 0.0

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


@dataclass
class Workload:
    name: str
    unit: str
    tallies: dict[str, Tally] = field(default_factory=lambda: {mode: Tally() for mode in MODES})


class LagMeter:
    """A task that sleeps 5 ms again and again and remembers its worst overshoot."""

    def __init__(self, period: float = 0.005):
        self.period = period
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, loop.time() - before - self.period)

    async def __aenter__(self) -> LagMeter:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)  # let it start before the work does
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        # Let the ticker wake up once more: after a blocking stretch its
        # overshoot is only measured when it runs again.
        await asyncio.sleep(2 * self.period)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Bench:
    def __init__(self, sync_db: pw.Database, async_db: aio.AsyncStateDatabase, args: argparse.Namespace):
        self.sync_db = sync_db
        self.async_db = async_db
        self.args = args
        # Each face writes on streams of its own: the two databases are two
        # sessions of this process, and a stream has one owner session.
        self.streams: list[Stream] = []
        self.async_streams: list[Stream] = []
        self.counter = 0

    def bind(self, db: pw.Database) -> None:
        database_proxy.initialize(db)

    # --- jobs --------------------------------------------------------------------------

    def segment_jobs(self, n: int, streams: list[Stream]) -> list[Job]:
        jobs = []
        for _ in range(n):
            self.counter += 1
            stream = streams[self.counter % len(streams)]
            jobs.append((stream, f"/media/{stream.name}/{self.counter:09d}.mp4", T0 + self.counter * SEGMENT))
        return jobs

    def metric_batches(self, n: int, streams: list[Stream]) -> list[list[tuple]]:
        batches = []
        for _ in range(n):
            self.counter += 1
            at = T0 + dt.timedelta(milliseconds=self.counter)
            batch = []
            for stream in streams:
                batch.append(("fps", 15.0, stream, None, at))
                batch.append(("bitrate_kbps", float(self.counter % 4000), stream, None, at))
            batches.append(batch)
        return batches

    # --- one round of each mode --------------------------------------------------------

    async def timed(self, tally: Tally, ops: int, work: Callable[[], Awaitable[None]]) -> None:
        gc.collect()
        async with LagMeter() as lag:
            start = time.perf_counter()
            await work()
            elapsed = time.perf_counter() - start
        tally.ops += ops
        tally.seconds += elapsed
        tally.worst_lag = max(tally.worst_lag, lag.worst)

    async def segments_round(self, workload: Workload, n: int, order: list[str]) -> None:
        for mode in order:
            if mode == "sync":
                self.bind(self.sync_db)
                jobs = self.segment_jobs(n, self.streams)
                await self.timed(workload.tallies[mode], len(jobs), partial(sync_segments, jobs))
            elif mode == "async 1 task":
                self.bind(self.async_db)
                jobs = self.segment_jobs(n, self.async_streams)
                await self.timed(workload.tallies[mode], len(jobs), partial(async_segments, jobs))
            else:
                self.bind(self.async_db)
                tasks = self.args.tasks
                per_task = [self.segment_jobs(n // tasks, self.async_streams[t::tasks]) for t in range(tasks)]
                total = sum(len(jobs) for jobs in per_task)
                work = partial(gather, [partial(async_segments, jobs) for jobs in per_task])
                await self.timed(workload.tallies[mode], total, work)

    async def metrics_round(self, workload: Workload, n: int, order: list[str]) -> None:
        for mode in order:
            batches = self.metric_batches(n, self.streams if mode == "sync" else self.async_streams)
            if mode == "sync":
                self.bind(self.sync_db)
                work = partial(sync_metrics, batches)
            elif mode == "async 1 task":
                self.bind(self.async_db)
                work = partial(async_metrics, batches)
            else:
                self.bind(self.async_db)
                tasks = min(self.args.tasks, n)
                work = partial(gather, [partial(async_metrics, batches[t::tasks]) for t in range(tasks)])
            await self.timed(workload.tallies[mode], n, work)


# --- the work, per mode -----------------------------------------------------------------------


async def sync_segments(jobs: list[Job]) -> None:
    """The synchronous API, called right in the loop (which it blocks: see the lag column)."""
    for stream, path, started in jobs:
        segment = stream.begin_segment(path, started_at=started)
        segment.complete_segment(ended_at=started + SEGMENT, size_bytes=SIZE_BYTES)


async def async_segments(jobs: list[Job]) -> None:
    for stream, path, started in jobs:
        segment = await aio.begin_segment(stream, path, started_at=started)
        await aio.complete_segment(segment, ended_at=started + SEGMENT, size_bytes=SIZE_BYTES)


async def sync_metrics(batches: list[list[tuple]]) -> None:
    for batch in batches:
        MetricSample.record_many(batch)


async def async_metrics(batches: list[list[tuple]]) -> None:
    for batch in batches:
        await aio.record_many(batch)


async def gather(works: list[Callable[[], Awaitable[None]]]) -> None:
    await asyncio.gather(*(work() for work in works))


async def run_backend(label: str, url: str, params: dict, args: argparse.Namespace) -> list[Workload]:
    sync_db = open_database(url, **params)
    async_db = await aio.open_database_async(url, pool_size=args.pool_size, **params)
    try:
        database_proxy.initialize(sync_db)
        bench = Bench(sync_db, async_db, args)
        bench.streams = [
            Stream.register(f"cam-{i}", f"rtsp://10.0.0.{i % 250 + 1}/main") for i in range(args.streams)
        ]
        bench.async_streams = [
            Stream.register(f"acam-{i}", f"rtsp://10.0.1.{i % 250 + 1}/main") for i in range(args.streams)
        ]
        segments = Workload("segment cycle", "cycles/s")
        metrics = Workload(f"metric batch ({2 * args.streams} samples)", "batches/s")
        # Warm-up: caches, prepared statements, pools, metric series.
        await bench.segments_round(Workload("warm-up", ""), args.tasks, list(MODES))
        await bench.metrics_round(Workload("warm-up", ""), 2, list(MODES))
        for r in range(args.rounds):
            order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
            await bench.segments_round(segments, args.cycles // args.rounds, order)
            await bench.metrics_round(metrics, max(1, args.batches // args.rounds), order)
        return [segments, metrics]
    finally:
        await aio.close_database_async(async_db)
        if isinstance(sync_db, pw.PostgresqlDatabase):
            sync_db.close_all()
        else:
            sync_db.close()
        database_proxy.initialize(None)


def print_table(label: str, workloads: list[Workload], args: argparse.Namespace) -> None:
    print(f"\n{label}: {args.streams} streams, {args.tasks} tasks, pool of {args.pool_size}")
    header = f"{'workload':34} {'mode':15} {'ops/s':>10} {'x sync':>8} {'worst loop lag':>16}"
    print(header)
    print("-" * len(header))
    for workload in workloads:
        base = workload.tallies["sync"].rate
        for mode in MODES:
            tally = workload.tallies[mode]
            mode_label = mode.replace("N", str(args.tasks))
            print(
                f"{workload.name:34} {mode_label:15} {tally.rate:10.0f} {tally.rate / base:8.2f} "
                f"{tally.worst_lag * 1000:13.1f} ms"
            )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg", metavar="URL", help="also run on this PostgreSQL database (scratch schema)")
    parser.add_argument("--cycles", type=int, default=2000, help="segment cycles per mode (default 2000)")
    parser.add_argument("--batches", type=int, default=200, help="metric batches per mode (default 200)")
    parser.add_argument("--streams", type=int, default=100, help="streams (default 100)")
    parser.add_argument(
        "--tasks", type=int, default=50, help="concurrent tasks in the N-task mode (default 50)"
    )
    parser.add_argument("--pool-size", type=int, default=10, help="async connection pool (default 10)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        results = await run_backend("SQLite", f"sqlite:///{tmp}/bench.db", {}, args)
        print_table("SQLite (WAL, synchronous=NORMAL)", results, args)
    if args.pg:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin = pw.PostgresqlDatabase(None)
        from playhouse.db_url import parse

        admin.init(**parse(args.pg))
        admin.execute_sql(f'CREATE SCHEMA "{schema}"')
        try:
            results = await run_backend("PostgreSQL", args.pg, {"options": f"-c search_path={schema}"}, args)
            print_table("PostgreSQL", results, args)
        finally:
            admin.execute_sql(f'DROP SCHEMA "{schema}" CASCADE')
            admin.close()


if __name__ == "__main__":
    asyncio.run(main())
