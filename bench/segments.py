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
from stream_state.models.session import forget_process_session, ownership_guard, writer
from stream_state.models.statements import segment_statements
from stream_state.states import SegmentState

GOAL_RATIO = 0.3
GATE_GOAL = 0.10  # the gate may make a cycle at most 10 % slower
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

    gated: bool = True

    @classmethod
    def for_db(cls, db: pw.Database) -> Statements:
        """The API's statements on ``db``: begin's two, and the gate's UPDATE with the ownership guard."""
        text = segment_statements(db)
        complete = gate.statement(Recording, db, SegmentState.COMPLETE, ("ended_at", "size_bytes"))
        guard, _ = ownership_guard(writer(), 0, 0).where(db)
        return cls(text.claim_index, text.insert_recording, f"{complete} AND ({guard})")

    @classmethod
    def ungated(cls, db: pw.Database) -> Statements:
        """The cycle as it was before sessions (issue 14): no ownership gate, no session columns."""
        p = db.param
        gated = segment_statements(db)
        insert = gated.insert_recording.replace(', "session_id", "session_epoch")', ")").replace(
            f", {p}, {p}) RETURNING", ") RETURNING"
        )
        return cls(
            'UPDATE "stream" SET "next_segment_index" = "next_segment_index" + 1 '
            f'WHERE "id" = {p} AND "removed_at" IS NULL RETURNING "next_segment_index"',
            insert,
            gate.statement(Recording, db, SegmentState.COMPLETE, ("ended_at", "size_bytes")),
            gated=False,
        )

    def params(self, session: tuple[int, int] | None) -> tuple[tuple, tuple, tuple]:
        """Extra parameters of the gated statements: (claim, insert, complete) suffixes."""
        if not self.gated or session is None:
            return (), (), ()
        sid, epoch = session
        return (sid, epoch, sid), (sid, epoch), (sid, epoch, sid)

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
    bare: Side  # the raw driver without the gate
    gate_python: float  # seconds per cycle

    @property
    def ratio(self) -> float:
        return self.api.rate / self.raw.rate

    @property
    def gate_db_cost(self) -> float:
        """How much slower the raw driver's cycle is with the gate than without (0.05 = 5 %)."""
        return self.bare.rate / self.raw.rate - 1

    @property
    def gate_cost(self) -> float:
        """The API's cycle time spent on the gate: database work plus Python, as a fraction."""
        api_cycle = 1 / self.api.rate
        db_extra = 1 / self.raw.rate - 1 / self.bare.rate
        return (db_extra + self.gate_python) / (api_cycle - db_extra - self.gate_python)

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


def raw_sqlite_runner(
    conn: sqlite3.Connection, sql: Statements, session: tuple[int, int] | None
) -> Callable[[Sequence[RawJob]], None]:
    claim_extra, insert_extra, complete_extra = sql.params(session)

    def run(jobs: Sequence[RawJob]) -> None:
        execute = conn.execute
        for stream_id, path, started, ended in jobs:
            execute("BEGIN IMMEDIATE")
            (next_index,) = execute(sql.claim, (stream_id, *claim_extra)).fetchone()
            (recording_id,) = execute(
                sql.insert, (stream_id, path, None, next_index - 1, started, 0, None, None, *insert_extra)
            ).fetchone()
            execute("COMMIT")
            # One statement in autocommit, as the API closes an open segment.
            if (
                execute(
                    sql.complete, (COMPLETE, ended, SIZE_BYTES, recording_id, RECORDING, *complete_extra)
                ).rowcount
                != 1
            ):
                raise RuntimeError(f"recording {recording_id} was not open")

    return run


def raw_psycopg2_runner(
    conn: Any, sql: Statements, session: tuple[int, int] | None
) -> Callable[[Sequence[RawJob]], None]:
    cursor = conn.cursor()
    claim_extra, insert_extra, complete_extra = sql.params(session)

    def run(jobs: Sequence[RawJob]) -> None:
        execute, fetchone, commit = cursor.execute, cursor.fetchone, conn.commit
        for stream_id, path, started, ended in jobs:
            # autocommit is off: psycopg2 sends BEGIN before the first statement,
            # as peewee sends its own BEGIN.
            execute(sql.claim, (stream_id, *claim_extra))
            (next_index,) = fetchone()
            execute(
                sql.insert, (stream_id, path, None, next_index - 1, started, False, None, None, *insert_extra)
            )
            (recording_id,) = fetchone()
            commit()
            execute(sql.complete, (COMPLETE, ended, SIZE_BYTES, recording_id, RECORDING, *complete_extra))
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


RunnerFactory = Callable[[Statements, "tuple[int, int] | None"], Callable[[Sequence[RawJob]], None]]


def measure(
    backend: str, plan: Plan, sql: Statements, ungated: Statements, make_raw: RunnerFactory
) -> Result:
    """Warm up, check the SQL, time interleaved rounds; optionally profile the API.

    Three sides: the API (gated), the raw driver running the API's gated
    statements as the API's session, and the raw driver running the
    statements of before the gate. The first ratio is the package's Python
    cost; the last two give the gate's database cost.
    """
    streams = register_streams(plan.streams)
    session = writer()
    for stream in streams:  # the first write of a session on a stream claims it: not a cycle
        session.claim(stream)
    api_jobs, _ = make_jobs(streams, "api", plan.jobs_per_side())
    _, raw_jobs = make_jobs(streams, "raw", plan.jobs_per_side())
    _, bare_jobs = make_jobs(streams, "bare", plan.jobs_per_side())
    api = Side(run_api, api_jobs)
    raw = Side(make_raw(sql, (session.id, 1)), raw_jobs)
    bare = Side(make_raw(ungated, None), bare_jobs)
    check_same_sql(api, sql)
    sides = [api, raw, bare]
    for side in sides:
        side.run(side.take(plan.warmup))
    for r, size in enumerate(plan.round_sizes()):
        for side in sides[r % 3 :] + sides[: r % 3]:
            side.timed(size)
    if plan.profile:
        profile_api(backend, api, plan)
    return Result(backend, plan, api, raw, bare, gate_python_seconds(streams[0]))


def gate_python_seconds(stream: Stream, n: int = 20000) -> float:
    """What the gate adds in Python per cycle: the session lookup and the epoch, twice (begin, complete)."""
    start = time.perf_counter()
    for _ in range(n):
        writer().owned_epoch(stream.id)
        writer().owned_epoch(stream.id)
    return (time.perf_counter() - start) / n


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
            sql = Statements.for_db(db)
            result = measure(
                f"sqlite {sqlite3.sqlite_version}",
                plan,
                sql,
                Statements.ungated(db),
                lambda statements, session: raw_sqlite_runner(conn, statements, session),
            )

            def count(query: str) -> int:
                return conn.execute(query).fetchone()[0]

            check_rows(count, result.api.used + result.raw.used + result.bare.used)
        finally:
            forget_process_session(db)
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
        sql = Statements.for_db(db)
        label = f"postgresql {conn.server_version // 10000}.{conn.server_version % 10000}"
        result = measure(
            label,
            plan,
            sql,
            Statements.ungated(db),
            lambda statements, session: raw_psycopg2_runner(conn, statements, session),
        )

        def count(query: str) -> int:
            with conn.cursor() as cursor:
                cursor.execute(query)
                return int(cursor.fetchone()[0])

        check_rows(count, result.api.used + result.raw.used + result.bare.used)
    finally:
        if conn is not None:
            conn.close()
        if db is not None:
            forget_process_session(db)
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
    print(
        "\nthe ownership gate (issue 14): (owner session, epoch) and the lease checked in the cycle's "
        "statements"
    )
    header = (
        f"{'backend':<18} {'raw no gate/s':>13} {'raw gated/s':>12} {'db cost':>8} {'python/cycle':>13} "
        f"{'API slower by':>14}  goal <= {GATE_GOAL:.0%} met"
    )
    print(header)
    print("-" * len(header))
    for res in results:
        met = "yes" if res.gate_cost <= GATE_GOAL else "NO"
        print(
            f"{res.backend:<18} {res.bare.rate:>13,.0f} {res.raw.rate:>12,.0f} {res.gate_db_cost:>8.1%} "
            f"{res.gate_python * 1e6:>10.1f} us {res.gate_cost:>14.1%}  {met}"
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
