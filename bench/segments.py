"""Segment lifecycle: begin_segment + complete_segment against the raw driver.

    python bench/segments.py                        # SQLite
    python bench/segments.py --pg postgresql://postgres@127.0.0.1:5432/test
    python bench/segments.py --cycles 1000 --profile 25    # cProfile the API's cycles

One *cycle* is what the stream manager does for every segment file it writes:

1. ``stream.begin_segment(path, started_at=...)``: one transaction that claims
   the stream's next segment index (``UPDATE stream ... RETURNING``) and
   inserts the recording row (``INSERT ... RETURNING id``);
2. ``recording.complete_segment(ended_at=..., size_bytes=...)``: one
   ``UPDATE ... SET state = ?, ... WHERE id = ? AND state = ?``, the
   compare-and-set of the segment-state gate (``models/gate.py``), which only
   an open segment matches (no metadata to merge, so no read first).
   ``size_bytes`` is given, so no file is stat()ed.

The baseline runs, in the same process and on the same database, the very
statements the API issues, with the same transaction boundaries, through the
bare driver: ``sqlite3`` with ``BEGIN IMMEDIATE`` ... ``COMMIT`` (the
package's pragmas applied, as ``sqlite_pragmas()`` lists them), or
``psycopg2`` with autocommit off and a commit per transaction. Before timing,
one API cycle runs with peewee's logger captured and the script stops if the
API's SQL no longer matches the baseline's, so the ratio always compares the
same database work and measures only what the package adds in Python.

The database is fresh, built by ``open_database`` (a file in a temporary
directory; on PostgreSQL a scratch schema ``bench_<random>``, dropped at the
end), with ``--streams`` streams written round-robin. Both sides write into it
in interleaved rounds (alternating which side goes first), so table growth,
checkpoints and background noise fall on both alike. Inputs (aware datetimes
for the API, epoch milliseconds for the baseline) are built before timing.
Figures are total cycles over total time per side; the goal from the issue is
API >= 0.3 x raw. A PostgreSQL commit waits for its WAL to reach the disk
(a millisecond or more), so PostgreSQL runs 2,000 cycles by default where
SQLite runs 5,000: the whole run stays under a minute. Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import pstats
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import peewee as pw
from playhouse.test_utils import count_queries

from stream_state import Stream, open_database
from stream_state.database import sqlite_pragmas
from stream_state.models import Recording, gate
from stream_state.models.statements import spelled
from stream_state.states import SegmentState

GOAL_RATIO = 0.3
SQLITE_CYCLES = 5000
POSTGRES_CYCLES = 2000
SEGMENT = dt.timedelta(seconds=10)
SIZE_BYTES = 4_000_000
T0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
COMPLETE, RECORDING = SegmentState.COMPLETE.value, SegmentState.RECORDING.value


@dataclass(frozen=True)
class Statements:
    """The statements of a cycle, in the order they run, as the API spells them.

    The package writes its per-segment SQL once per backend
    (``stream_state.models.statements`` and the gate's cached compare-and-set,
    ``stream_state.models.gate``); the baseline runs that very text, and
    ``check_same_sql`` proves the API still issues exactly it.
    """

    claim: str
    insert: str
    complete: str

    @classmethod
    def for_backend(cls, placeholder: str) -> Statements:
        text = spelled(placeholder)
        complete = gate._spelled(Recording, placeholder, '""', False, ("ended_at", "size_bytes"), 1, 1)
        return cls(text.claim_index, text.insert_recording, complete)

    def in_order(self) -> list[str]:
        return [self.claim, self.insert, self.complete]


# What one cycle gets: the API takes a Stream and aware datetimes, as the
# manager hands them over; the baseline takes the stream id and milliseconds.
ApiJob = tuple[Stream, str, dt.datetime, dt.datetime]
RawJob = tuple[int, str, int, int]


@dataclass
class Side:
    """One contender: a function running a batch of cycles, and its tally."""

    run: Callable[[Sequence[Any]], None]
    jobs: list[Any]
    used: int = 0  # jobs consumed so far (warm-up, check, timed, profile)
    timed_cycles: int = 0
    seconds: float = 0.0
    round_rates: list[float] = field(default_factory=list)

    def take(self, n: int) -> list[Any]:
        batch = self.jobs[self.used : self.used + n]
        if len(batch) != n:
            raise RuntimeError(f"{n} jobs wanted, {len(batch)} left: Plan.jobs_per_side is wrong")
        self.used += n
        return batch

    def timed(self, n: int) -> None:
        batch = self.take(n)
        # Collect leftovers from the other side's round first; GC then stays on,
        # because the objects the API allocates per cycle are part of its cost.
        gc.collect()
        start = time.perf_counter()
        self.run(batch)
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        self.timed_cycles += n
        self.round_rates.append(n / elapsed)

    @property
    def rate(self) -> float:
        return self.timed_cycles / self.seconds


@dataclass
class Plan:
    cycles: int
    rounds: int
    warmup: int
    streams: int
    profile: int

    def jobs_per_side(self) -> int:
        # +1: the cycle that checks the API's SQL (the baseline needs none).
        return self.warmup + self.cycles + 1 + (self.cycles // self.rounds if self.profile else 0)

    def round_sizes(self) -> list[int]:
        base, extra = divmod(self.cycles, self.rounds)
        return [base + (1 if r < extra else 0) for r in range(self.rounds)]


@dataclass
class Result:
    backend: str
    plan: Plan
    api: Side
    raw: Side

    @property
    def ratio(self) -> float:
        return self.api.rate / self.raw.rate

    @property
    def round_ratios(self) -> list[float]:
        return [a / r for a, r in zip(self.api.round_rates, self.raw.round_rates, strict=True)]


# --- workload ---------------------------------------------------------------------------


def millis(when: dt.datetime) -> int:
    return (when - EPOCH) // dt.timedelta(milliseconds=1)


def register_streams(n: int) -> list[Stream]:
    return [Stream.register(f"cam-{i}", f"rtsp://10.0.0.{i + 1}/main") for i in range(n)]


def make_jobs(streams: list[Stream], side: str, n: int) -> tuple[list[ApiJob], list[RawJob]]:
    """``n`` cycles for one side, round-robin over the streams, paths unique per side."""
    api: list[ApiJob] = []
    raw: list[RawJob] = []
    for i in range(n):
        stream = streams[i % len(streams)]
        path = f"/media/{stream.name}/{side}-{i:08d}.mp4"
        started = T0 + i * SEGMENT
        api.append((stream, path, started, started + SEGMENT))
        raw.append((stream.id, path, millis(started), millis(started + SEGMENT)))
    return api, raw


def run_api(jobs: Sequence[ApiJob]) -> None:
    for stream, path, started, ended in jobs:
        recording = stream.begin_segment(path, started_at=started)
        recording.complete_segment(ended_at=ended, size_bytes=SIZE_BYTES)


def raw_sqlite_runner(conn: sqlite3.Connection, sql: Statements) -> Callable[[Sequence[RawJob]], None]:
    def run(jobs: Sequence[RawJob]) -> None:
        execute = conn.execute
        for stream_id, path, started, ended in jobs:
            execute("BEGIN IMMEDIATE")
            (next_index,) = execute(sql.claim, (stream_id,)).fetchone()
            (recording_id,) = execute(
                sql.insert, (stream_id, path, None, next_index - 1, started, 0, None, None)
            ).fetchone()
            execute("COMMIT")
            # One statement in autocommit, as the API closes an open segment.
            if execute(sql.complete, (COMPLETE, ended, SIZE_BYTES, recording_id, RECORDING)).rowcount != 1:
                raise RuntimeError(f"recording {recording_id} was not open")

    return run


def raw_psycopg2_runner(conn: Any, sql: Statements) -> Callable[[Sequence[RawJob]], None]:
    cursor = conn.cursor()

    def run(jobs: Sequence[RawJob]) -> None:
        execute, fetchone, commit = cursor.execute, cursor.fetchone, conn.commit
        for stream_id, path, started, ended in jobs:
            # autocommit is off: psycopg2 sends BEGIN before the first statement,
            # as peewee sends its own BEGIN.
            execute(sql.claim, (stream_id,))
            (next_index,) = fetchone()
            execute(sql.insert, (stream_id, path, None, next_index - 1, started, False, None, None))
            (recording_id,) = fetchone()
            commit()
            execute(sql.complete, (COMPLETE, ended, SIZE_BYTES, recording_id, RECORDING))
            if cursor.rowcount != 1:
                raise RuntimeError(f"recording {recording_id} was not open")
            commit()

    return run


# --- checks -----------------------------------------------------------------------------


def check_same_sql(api: Side, sql: Statements) -> None:
    """Run one API cycle with peewee's log captured; stop if the baseline is out of date.

    peewee does not log BEGIN and COMMIT; the transaction boundaries are
    those of ``db.atomic()``, one per method.
    """
    with count_queries() as counter:
        api.run(api.take(1))
    # peewee logs each query as a (sql, params) tuple.
    statements = [r.msg[0] for r in counter.get_queries() if isinstance(r.msg, tuple)]
    if statements != sql.in_order():
        lines = ["the API's SQL no longer matches the baseline; update the statements in bench/segments.py"]
        lines += ["  API:"] + [f"    {s}" for s in statements]
        lines += ["  baseline:"] + [f"    {s}" for s in sql.in_order()]
        raise SystemExit("\n".join(lines))


def check_rows(count: Callable[[str], int], cycles: int) -> None:
    """Both sides really did the work: every segment complete, every index claimed once."""
    complete = count("SELECT COUNT(*) FROM recording WHERE state = 'complete' AND ended_at IS NOT NULL")
    total = count("SELECT COUNT(*) FROM recording")
    claimed = count("SELECT SUM(next_segment_index) FROM stream")
    if not complete == total == claimed == cycles:
        raise SystemExit(
            f"unexpected rows: {complete} complete of {total}, {claimed} indexes claimed, {cycles} cycles run"
        )


# --- the run ----------------------------------------------------------------------------


def measure(
    backend: str, plan: Plan, sql: Statements, raw_runner: Callable[[Sequence[RawJob]], None]
) -> Result:
    """Warm up, check the SQL, time interleaved rounds; optionally profile the API."""
    streams = register_streams(plan.streams)
    api_jobs, _ = make_jobs(streams, "api", plan.jobs_per_side())
    _, raw_jobs = make_jobs(streams, "raw", plan.jobs_per_side())
    api = Side(run_api, api_jobs)
    raw = Side(raw_runner, raw_jobs)
    check_same_sql(api, sql)
    for side in (api, raw):
        side.run(side.take(plan.warmup))
    for r, size in enumerate(plan.round_sizes()):
        for side in (api, raw) if r % 2 == 0 else (raw, api):
            side.timed(size)
    if plan.profile:
        profile_api(backend, api, plan)
    return Result(backend, plan, api, raw)


def profile_api(backend: str, api: Side, plan: Plan) -> None:
    profiler = cProfile.Profile()
    batch = api.take(plan.cycles // plan.rounds)
    profiler.runcall(api.run, batch)
    print(f"\ncProfile of {len(batch):,} API cycles on {backend}, top {plan.profile} by own time:")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(plan.profile)
    print(f"top {plan.profile} by cumulative time:")
    stats.sort_stats("cumulative").print_stats(plan.profile)


def bench_sqlite(plan: Plan) -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-segments-") as tmp:
        path = str(Path(tmp) / "segments.db")
        db = open_database(path)
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        try:
            # The package's pragmas, in its order and the way peewee sets them.
            for name, value in sqlite_pragmas():
                conn.execute(f"PRAGMA {name} = {value}")
            sql = Statements.for_backend("?")
            result = measure(f"sqlite {sqlite3.sqlite_version}", plan, sql, raw_sqlite_runner(conn, sql))

            def count(query: str) -> int:
                return conn.execute(query).fetchone()[0]

            check_rows(count, result.api.used + result.raw.used)
        finally:
            conn.close()
            db.close()
    return result


def bench_postgres(url: str, plan: Plan) -> Result:
    import psycopg2

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(url)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE SCHEMA "{schema}"')
    db: pw.Database | None = None
    conn: Any = None
    try:
        db = open_database(url, options=f"-c search_path={schema}")
        conn = psycopg2.connect(url, options=f"-c search_path={schema}")
        sql = Statements.for_backend("%s")
        label = f"postgresql {conn.server_version // 10000}.{conn.server_version % 10000}"
        result = measure(label, plan, sql, raw_psycopg2_runner(conn, sql))

        def count(query: str) -> int:
            with conn.cursor() as cursor:
                cursor.execute(query)
                return int(cursor.fetchone()[0])

        check_rows(count, result.api.used + result.raw.used)
    finally:
        if conn is not None:
            conn.close()
        if db is not None:
            db.close_all()  # pooled: close() would only hand the connection back to the pool
        with admin.cursor() as cursor:
            cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()
    return result


def report(results: list[Result]) -> None:
    plan = results[0].plan
    print(
        "\nbegin_segment + complete_segment cycles (2 transactions each) vs the raw driver, "
        f"{plan.streams} streams round-robin, {plan.rounds} interleaved rounds after "
        f"{plan.warmup:,} warm-up cycles per side"
    )
    header = (
        f"{'backend':<18} {'cycles':>7} {'API cycles/s':>13} {'raw cycles/s':>13} {'ratio':>6}  "
        f"{'goal':<7} {'met':<4} ratio per round"
    )
    print(header)
    print("-" * len(header))
    for res in results:
        met = "yes" if res.ratio >= GOAL_RATIO else "NO"
        ratios = res.round_ratios
        print(
            f"{res.backend:<18} {res.plan.cycles:>7,} {res.api.rate:>13,.0f} {res.raw.rate:>13,.0f} "
            f"{res.ratio:>6.2f}  >= {GOAL_RATIO:<4} {met:<4} {min(ratios):.2f}..{max(ratios):.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cycles",
        type=int,
        help=f"timed cycles per side (default: {SQLITE_CYCLES:,} SQLite, {POSTGRES_CYCLES:,} PostgreSQL)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed cycles per side first (default 200)")
    parser.add_argument("--streams", type=int, default=8, help="streams written round-robin (default 8)")
    parser.add_argument("--pg", metavar="URL", help="also run against PostgreSQL (a scratch schema, dropped)")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="cProfile API cycles, show the top N functions"
    )
    args = parser.parse_args(argv)
    too_few_cycles = args.cycles is not None and args.cycles < args.rounds
    if args.rounds < 1 or too_few_cycles or args.streams < 1 or args.warmup < 0:
        parser.error("need --rounds >= 1, --cycles >= --rounds, --streams >= 1, --warmup >= 0")

    def plan(default_cycles: int) -> Plan:
        return Plan(args.cycles or default_cycles, args.rounds, args.warmup, args.streams, args.profile)

    print(f"peewee {pw.__version__}, Python {sys.version.split()[0]}")
    results = [bench_sqlite(plan(SQLITE_CYCLES))]
    if args.pg:
        results.append(bench_postgres(args.pg, plan(POSTGRES_CYCLES)))
    report(results)


if __name__ == "__main__":
    main()
