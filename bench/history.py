"""History queries on a big SQLite database, against the same SQL through the bare driver.

    python bench/history.py                  # 1,000 streams, 10M segments, 1M events; a week of 1 s metrics
    python bench/history.py --small          # 100 streams, 1M segments, 100k events (a quick look)
    python bench/history.py --runs 9 --cases 40

The databases come from ``bench/dataset.py`` (built on first use, then
reused) and are opened with ``stream_state.open_database``. Each query runs
for ``--cases`` different random arguments (streams, windows), every case
``--runs`` times after a warm-up pass, so the page cache is warm and no one
lucky row decides. The figure is the median over all those calls.

"median ms" is wall-clock time, "cpu ms" this process's CPU time for the
same calls (SQLite runs in-process, so it is the same work, and another busy
process on the machine disturbs it less). The baseline is the very SQL the
API sent, captured from peewee's log during the warm-up, run through a
second, bare ``sqlite3`` connection with the same pragmas in the same
process, rows fetched with ``fetchall``. The ratio (baseline time / API
time) shows what the package's Python adds: building the query, turning
rows into models or dataclasses, the gap sweep. Calls of the two sides
alternate, so noise falls on both. For gaps the baseline is the query
alone (the API also sweeps the rows into gaps).

Goals from the issue: one stream's segments overlapping a 1-hour window in
<= 1 ms, gaps over 24 hours in <= 20 ms, a week of a 1-second metric in
1-hour buckets in <= 10 ms. Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset import T0, T0_MS, metrics_db, recordings_db
from playhouse.test_utils import count_queries

from stream_state import MetricSeries, Stream, open_database
from stream_state import history as h
from stream_state.database import sqlite_pragmas
from stream_state.history.segments import _overlap_sql
from stream_state.models import Recording
from stream_state.timeutil import from_millis

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


# --- capturing the API's SQL ----------------------------------------------------------------------


@contextlib.contextmanager
def captured() -> Iterator[list[tuple[str, tuple]]]:
    """The (sql, params) the API runs inside the block, from peewee's ``count_queries``."""
    statements: list[tuple[str, tuple]] = []
    with count_queries() as counter:
        yield statements
    statements += [
        (r.msg[0], tuple(r.msg[1] or ())) for r in counter.get_queries() if isinstance(r.msg, tuple)
    ]


# --- one benchmark row -----------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    goal_ms: float | None
    api: Callable[[Any], Any]  # one call for one case
    cases: list[Any]
    baseline: bool = True  # False: no single SQL statement does the same work
    note: str = ""
    api_times: list[float] = field(default_factory=list)
    api_cpu: list[float] = field(default_factory=list)
    raw_times: list[float] = field(default_factory=list)
    statements: list[list[tuple[str, tuple]]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    @property
    def api_ms(self) -> float:
        return statistics.median(self.api_times) * 1000

    @property
    def api_cpu_ms(self) -> float:
        return statistics.median(self.api_cpu) * 1000

    @property
    def raw_ms(self) -> float | None:
        return statistics.median(self.raw_times) * 1000 if self.raw_times else None


def _size(result: Any) -> int:
    if isinstance(result, h.Coverage):
        return len(result.gaps)
    if isinstance(result, h.EventPage):
        return len(result.events)
    if isinstance(result, int):
        return result
    try:
        return len(result)
    except TypeError:
        return 1


def run_row(row: Row, raw: sqlite3.Connection, runs: int) -> None:
    # Warm-up: every case once, capturing what the API sends.
    for case in row.cases:
        with captured() as statements:
            result = row.api(case)
        row.statements.append(list(statements))
        row.rows.append(_size(result))
    for case_statements in row.statements:
        for sql, params in case_statements:
            raw.execute(sql, params).fetchall()
    gc.collect()
    for rep in range(runs):
        for index, case in enumerate(row.cases):
            order = (0, 1) if (rep + index) % 2 == 0 else (1, 0)
            for side in order:
                if side == 0:
                    cpu = time.process_time()
                    start = time.perf_counter()
                    row.api(case)
                    row.api_times.append(time.perf_counter() - start)
                    row.api_cpu.append(time.process_time() - cpu)
                elif row.baseline:
                    start = time.perf_counter()
                    for sql, params in row.statements[index]:
                        raw.execute(sql, params).fetchall()
                    row.raw_times.append(time.perf_counter() - start)


def plan_of(raw: sqlite3.Connection, row: Row) -> list[str]:
    lines = []
    for sql, params in row.statements[0]:
        if sql.lstrip().upper().startswith("SELECT"):
            lines += [detail for *_, detail in raw.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()]
    return lines


# --- the workloads ----------------------------------------------------------------------------------


def index_search(stream: Stream, since: dt.datetime, until: dt.datetime) -> list[tuple]:
    """The two-branch index search that recordings() wraps, without the table rows around it."""
    db = Stream._meta.database
    s, u = int(since.timestamp() * 1000), int(until.timestamp() * 1000)
    sql = _overlap_sql(db.obj, '"id"', '"id"')
    return db.execute_sql(sql, (stream.id, u, s, stream.id, s, stream.id, u)).fetchall()


def recording_rows(n_cases: int, seed: int) -> tuple[list[Row], dict]:
    rng = random.Random(seed)
    streams = list(Stream.select().order_by(Stream.id))
    (end_ms,) = Stream._meta.database.execute_sql('SELECT MAX("last_seen_at") FROM "stream"').fetchone()
    span = end_ms - T0_MS
    now = from_millis(end_ms)

    def windows(length: dt.timedelta) -> list[tuple[Stream, dt.datetime, dt.datetime]]:
        cases = []
        room = span - int(length.total_seconds() * 1000)
        for _ in range(n_cases):
            since = from_millis(T0_MS + rng.randrange(max(1, room)))
            cases.append((rng.choice(streams), since, since + length))
        return cases

    hour_cases = windows(HOUR)
    day_cases = windows(DAY)
    first_page = h.events(limit=100)
    deep_cursors = []
    cursor = first_page.next_cursor
    for page_number in range(2, 51):
        page = h.events(limit=100, cursor=cursor)
        cursor = page.next_cursor
        if page_number % 10 == 0:
            deep_cursors.append(cursor)
    days = sorted({row.day for row in h.storage_usage("day")})
    rows = [
        Row(
            "segments overlapping 1 h (Recording models)",
            1.0,
            lambda c: list(h.recordings(*c)),
            hour_cases,
        ),
        Row(
            "segments overlapping 1 h (.tuples(): start, end, size)",
            1.0,
            lambda c: list(
                h.recordings(*c)
                .select(Recording.started_at, Recording.ended_at, Recording.size_bytes)
                .tuples()
            ),
            hour_cases,
        ),
        Row("segments overlapping 1 h (.count())", 1.0, lambda c: h.recordings(*c).count(), hour_cases),
        Row(
            "segments overlapping 1 h (ids: the index search alone)",
            1.0,
            lambda c: index_search(*c),
            hour_cases,
            note="the SQL inside recordings(), run with execute_sql: no table row is read",
        ),
        Row(
            "gaps + coverage over 24 h",
            20.0,
            lambda c: h.coverage(*c, now=now),
            day_cases,
            note="baseline: the query only (the API adds the sweep)",
        ),
        Row("latest segment of each of the streams", None, lambda c: list(h.latest_segments()), [None] * 5),
        Row("storage used per stream, all history", None, lambda c: h.storage_usage("stream"), [None] * 5),
        Row(
            "storage used per stream and day, one day",
            None,
            lambda c: h.storage_usage(("stream", "day"), since=days[0], until=days[0] + dt.timedelta(days=1)),
            [None] * 5,
        ),
        Row("storage used per volume", None, lambda c: h.storage_usage("storage"), [None] * 5),
        Row("segment counts by state", None, lambda c: h.segment_counts(), [None] * 5),
        Row("events: newest page of 100", None, lambda c: h.events(limit=100), [None] * 5),
        Row(
            "events: page of 100 of one stream",
            None,
            lambda c: h.events(stream=c, limit=100),
            [rng.choice(streams) for _ in range(n_cases)],
        ),
        Row(
            "events: page of 100 of one type",
            None,
            lambda c: h.events(type="segment_failed", limit=100),
            [None] * 5,
        ),
        Row(
            "events: page of 100, severity >= error",
            None,
            lambda c: h.events(min_severity="error", limit=100),
            [None] * 5,
        ),
        Row(
            "events: pages 10-50 deep (keyset cursor)",
            None,
            lambda c: h.events(limit=100, cursor=c),
            deep_cursors,
        ),
        Row("health of every stream now", None, lambda c: h.current_health(), [None] * 5),
        Row(
            "health transitions of one stream, 24 h",
            None,
            lambda c: h.health_transitions(c[0], c[1], c[2]),
            day_cases,
        ),
        Row(
            "health transitions of every stream, 1 h",
            None,
            lambda c: h.health_transitions(None, c[1], c[2]),
            hour_cases[: max(5, n_cases // 4)],
        ),
    ]
    info = {"streams": len(streams), "span_hours": span / 3_600_000}
    return rows, info


def metric_rows(n_cases: int, seed: int) -> list[Row]:
    rng = random.Random(seed)
    series = MetricSeries.get()
    week_end = T0 + 7 * DAY
    starts = [T0 + dt.timedelta(seconds=rng.randrange(0, 3600)) for _ in range(n_cases)]
    day_starts = [T0 + dt.timedelta(seconds=rng.randrange(0, 6 * 86_400)) for _ in range(n_cases)]
    return [
        Row(
            "metric: 7 days in 1 h buckets (rollups + raw edges)",
            10.0,
            lambda c: h.metric_buckets(series, c, c + 7 * DAY - dt.timedelta(hours=1), HOUR),
            starts,
        ),
        Row(
            "metric: 7 days in 1 h buckets, aligned (rollups only)",
            10.0,
            lambda c: h.metric_buckets(series, T0, week_end, HOUR),
            [None] * 5,
        ),
        Row(
            "metric: 7 days in 1 h buckets from raw samples",
            None,
            lambda c: h.metric_buckets(series, T0, week_end, HOUR, source="raw"),
            [None] * 3,
            note="source='raw': what the rollups save",
        ),
        Row(
            "metric: 24 h in 1 min buckets",
            None,
            lambda c: h.metric_buckets(series, c, c + DAY, dt.timedelta(minutes=1)),
            day_starts,
        ),
        Row(
            "metric: raw samples of 1 h (MetricSample models)",
            None,
            lambda c: list(h.metric_samples(series, c, c + HOUR)),
            day_starts,
        ),
    ]


# --- main ------------------------------------------------------------------------------------------------


def bare_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for name, value in sqlite_pragmas():
        conn.execute(f"PRAGMA {name} = {value}")
    return conn


def report(title: str, rows: list[Row], raw: sqlite3.Connection, plans: bool) -> None:
    print(f"\n{title}\n")
    header = (
        f"| {'query':<58} | {'median ms':>9} | {'cpu ms':>7} | {'goal':>6} | {'met':^4} | {'sqlite3 ms':>10} "
        f"| {'ratio':>5} | {'rows':>6} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
    for row in rows:
        goal = f"{row.goal_ms:g}" if row.goal_ms is not None else ""
        met = ("yes" if row.api_ms <= row.goal_ms else "NO") if row.goal_ms is not None else ""
        raw_ms = f"{row.raw_ms:.3f}" if row.raw_ms is not None else "-"
        ratio = f"{row.raw_ms / row.api_ms:.2f}" if row.raw_ms is not None else "-"
        rows_seen = statistics.median(row.rows)
        print(
            f"| {row.name:<58} | {row.api_ms:>9.3f} | {row.api_cpu_ms:>7.3f} | {goal:>6} | {met:^4} "
            f"| {raw_ms:>10} | {ratio:>5} | {rows_seen:>6g} |"
        )
    notes = [f"* {row.name}: {row.note}" for row in rows if row.note]
    if notes:
        print()
        print("\n".join(notes))
    if plans:
        print()
        for row in rows:
            print(f"{row.name}:")
            for line in plan_of(raw, row):
                print(f"    {line}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="100 streams, 1M segments, 100k events")
    parser.add_argument("--cases", type=int, default=30, help="random arguments per query")
    parser.add_argument("--runs", type=int, default=7, help="timed calls per case")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plans", action="store_true", help="print the query plans too")
    args = parser.parse_args(argv)

    size = {"streams": 100, "recordings": 1_000_000, "events": 100_000} if args.small else {}
    path = recordings_db(**size)
    db = open_database(f"sqlite:///{path}", backup_before_migrate=False)
    raw = bare_connection(path)
    try:
        rows, info = recording_rows(args.cases, args.seed)
        for row in rows:
            run_row(row, raw, args.runs)
        gigabytes = path.stat().st_size / 1e9
        report(
            f"{path.name}: {info['streams']:,} streams, {info['span_hours']:.1f} h of segments, "
            f"{gigabytes:.2f} GB; median of {args.cases} cases x {args.runs} runs, warm cache "
            f"(ratio = bare sqlite3 / API)",
            rows,
            raw,
            args.plans,
        )
    finally:
        raw.close()
        db.close()

    path = metrics_db()
    db = open_database(f"sqlite:///{path}", backup_before_migrate=False)
    raw = bare_connection(path)
    try:
        rows = metric_rows(args.cases, args.seed)
        for row in rows:
            run_row(row, raw, args.runs)
        report(f"{path.name}: one series, a sample every second for 7 days (604,800)", rows, raw, args.plans)
    finally:
        raw.close()
        db.close()


if __name__ == "__main__":
    main()
