"""History queries: recordings in a range, gaps, storage used, events, health, metric buckets.

Every answer is checked against a brute-force Python computation over the
same seeded random data, on SQLite and PostgreSQL (the ``db`` fixture). List
calls have their query counts asserted, and on SQLite the plans of the main
queries must not scan ``recording``, ``event`` or ``metric_sample``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import peewee as pw
import pytest
from playhouse.test_utils import count_queries

import stream_state
from stream_state import (
    Event,
    HealthState,
    MetricSample,
    MetricSeries,
    NotFound,
    Recording,
    SegmentState,
    Severity,
    Stream,
    ValidationError,
)
from stream_state import history as h
from stream_state.database import migrate_to_head, rollback_one
from stream_state.models import rollups as rollup_models
from stream_state.timeutil import from_millis, to_millis

from .factories import StreamFactory

T0 = dt.datetime(2026, 11, 26, 0, 0, tzinfo=dt.UTC)
T0_MS = to_millis(T0)
SECOND = dt.timedelta(seconds=1)
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)


def ms(when: dt.datetime) -> int:
    return to_millis(when)


# --- SQL capture and plans ------------------------------------------------------------------------


def statements_of(counter: count_queries) -> list[tuple[str, tuple]]:
    """The (sql, params) peewee ran inside a ``count_queries`` block: one capture for counts and plans."""
    return [
        (record.msg[0], tuple(record.msg[1] or ()))
        for record in counter.get_queries()
        if isinstance(record.msg, tuple) and len(record.msg) == 2 and isinstance(record.msg[0], str)
    ]


BIG_TABLES = {"recording", "event", "metric_sample"}


def full_scans(db: pw.Database, statements: list[tuple[str, tuple]]) -> list[str]:
    """Plan lines that SCAN one of the big tables (by name or alias) in any of ``statements``.

    One exception: a statement whose result ends in LIMIT may walk an index
    in its ORDER BY order ("SCAN event USING INDEX event_ts_id" for the
    newest events): it stops after LIMIT rows, which no plan beats.
    """
    found = []
    for sql, params in statements:
        if not re.match(r"\s*(SELECT|INSERT|DELETE|UPDATE|WITH)", sql, re.I):
            continue
        aliases = {alias: table for table, alias in re.findall(r'"(\w+)" AS "(\w+)"', sql)}
        limited = re.search(r"\bLIMIT \S+( OFFSET \S+)?$", sql.strip()) is not None
        for row in db.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall():
            detail = row[-1]
            match = re.match(r"SCAN (\w+)( USING (COVERING )?INDEX)?", detail)
            if not match or aliases.get(match.group(1), match.group(1)) not in BIG_TABLES:
                continue
            if limited and match.group(2):
                continue
            found.append(f"{detail}   <- {sql[:200]}")
    return found


def assert_uses_indexes(db: pw.Database, run: Callable[[], Any]) -> None:
    if not isinstance(db, pw.SqliteDatabase):
        return
    with count_queries() as counter:
        run()
    statements = statements_of(counter)
    assert statements
    assert full_scans(db, statements) == []


# --- random segments and their brute force ----------------------------------------------------------


def make_segments(rng: random.Random, stream: Stream, count: int, prefix: str) -> list[dict]:
    """Segments of every shape: back to back, overlapping, holes, long ones, empty ones, open ones."""
    rows = []
    clock = T0_MS + rng.randrange(60_000)
    for index in range(count):
        roll = rng.random()
        if roll < 0.05:
            length = rng.randrange(3 * 60_000, 20 * 60_000)  # longer than LONG_SEGMENT_MS
        elif roll < 0.08:
            length = 0
        else:
            length = rng.randrange(2_000, 15_000)
        start = clock
        open_ = rng.random() < 0.04
        state = (
            SegmentState.RECORDING
            if open_
            else rng.choice(
                [SegmentState.COMPLETE] * 12
                + [
                    SegmentState.INTERRUPTED,
                    SegmentState.FAILED,
                    SegmentState.DELETING,
                    SegmentState.ARCHIVING,
                ]
                + [SegmentState.RECOVERED, SegmentState.MISSING]
            )
        )
        rows.append(
            {
                "stream": stream.id,
                "path": f"/rec/{prefix}/{index:05d}.mp4",
                "storage": rng.choice(["disk0", "disk1", None]),
                "segment_index": index,
                "started_at": start,
                "ended_at": None if open_ else start + length,
                "checkpoint_at": start + rng.randrange(0, 20_000) if open_ and rng.random() < 0.5 else None,
                "size_bytes": rng.randrange(0, 5_000_000),
                "state": state,
            }
        )
        step = rng.random()
        if step < 0.6:
            clock = start + length  # back to back
        elif step < 0.75:
            clock = start + max(0, length - rng.randrange(1, 2_000))  # the next opened early
        elif step < 0.9:
            clock = start + length + rng.randrange(1, 3_000)  # a small hole
        else:
            clock = start + length + rng.randrange(10_000, 30 * 60_000)  # a real gap
    return rows


def insert_segments(rows: list[dict]) -> dict[str, int]:
    for chunk in pw.chunked(rows, 200):
        Recording.insert_many(chunk).execute()
    return dict(Recording.select(Recording.path, Recording.id).tuples())


def overlapping(rows: list[dict], since: int, until: int) -> list[dict]:
    hits = [r for r in rows if r["started_at"] < until and (r["ended_at"] is None or r["ended_at"] > since)]
    return sorted(hits, key=lambda r: (r["started_at"], r["id"]))


def brute_coverage(rows: list[dict], since: int, until: int, now: int) -> tuple[int, list[tuple[int, int]]]:
    """Recorded ms and holes, by testing every elementary interval between boundaries."""
    covering = {state.value for state in h.COVERING_STATES}
    spans = []
    for r in rows:
        if r["state"] not in covering:
            continue
        end = r["ended_at"]
        if end is None:
            end = max(now, r["checkpoint_at"] or 0)
        spans.append((r["started_at"], end))
    cuts = sorted({since, until} | {t for span in spans for t in span if since < t < until})
    recorded = 0
    holes: list[tuple[int, int]] = []
    for lo, hi in itertools.pairwise(cuts):
        if any(start <= lo and hi <= end for start, end in spans):
            recorded += hi - lo
        elif holes and holes[-1][1] == lo:
            holes[-1] = (holes[-1][0], hi)
        else:
            holes.append((lo, hi))
    return recorded, holes


@pytest.fixture
def segments(db) -> tuple[Stream, Stream, list[dict]]:
    rng = random.Random(5)
    one, two = StreamFactory(), StreamFactory()
    rows = make_segments(rng, one, 400, "one")
    other = make_segments(rng, two, 150, "two")
    ids = insert_segments(rows + other)
    for r in rows + other:
        r["id"] = ids[r["path"]]
        r["state"] = r["state"].value
    return one, two, rows


def random_windows(rng: random.Random, rows: list[dict], count: int) -> Iterator[tuple[int, int]]:
    first = rows[0]["started_at"] - 120_000
    last = max(r["ended_at"] or r["started_at"] for r in rows) + 120_000
    edges = [r["started_at"] for r in rows] + [r["ended_at"] for r in rows if r["ended_at"] is not None]
    for i in range(count):
        if i % 3 == 0:  # on segment boundaries exactly
            lo, hi = sorted(rng.sample(edges, 2))
            if lo == hi:
                hi += 1
        else:
            lo = rng.randrange(first, last)
            hi = lo + rng.choice([1, 500, 10_000, 60_000, 3_600_000, rng.randrange(1, 4 * 3_600_000)])
        yield lo, hi


# --- recordings -----------------------------------------------------------------------------


def test_recordings_overlapping_a_window_match_brute_force(db, segments):
    one, _, rows = segments
    rng = random.Random(11)
    for since, until in random_windows(rng, rows, 120):
        query = h.recordings(one, from_millis(since), from_millis(until))
        expected = [r["id"] for r in overlapping(rows, since, until)]
        assert [r.id for r in query] == expected, (since, until)


def test_a_long_segment_that_began_long_before_the_window_is_found(db):
    stream = StreamFactory()
    stream.begin_segment("/rec/long.mp4", started_at=T0).complete_segment(
        ended_at=T0 + 3 * HOUR, size_bytes=1
    )
    stream.begin_segment("/rec/short.mp4", started_at=T0 + 3 * HOUR).complete_segment(
        ended_at=T0 + 3 * HOUR + 10 * SECOND, size_bytes=1
    )
    found = h.recordings(stream, T0 + 2 * HOUR, T0 + 2 * HOUR + MINUTE)
    assert [r.path for r in found] == ["/rec/long.mp4"]
    # The bound comes from the data: shorten that segment and it stops being found.
    Recording.update(ended_at=ms(T0 + MINUTE)).where(Recording.path == "/rec/long.mp4").execute()
    assert list(h.recordings(stream, T0 + 2 * HOUR, T0 + 2 * HOUR + MINUTE)) == []


def test_open_segments_overlap_everything_after_their_start(db):
    stream = StreamFactory()
    old = stream.begin_segment("/rec/open-old.mp4", started_at=T0)
    stream.begin_segment("/rec/open-new.mp4", started_at=T0 + 5 * HOUR)
    found = h.recordings(stream, T0 + 2 * HOUR, T0 + 3 * HOUR)
    assert [r.id for r in found] == [old.id]
    assert h.recordings(stream, T0 + 6 * HOUR, T0 + 7 * HOUR).count() == 2


def test_recordings_compose_like_any_query(db, segments):
    one, _, rows = segments
    since, until = rows[50]["started_at"], rows[150]["started_at"]
    query = h.recordings(one, from_millis(since), from_millis(until))
    expected = overlapping(rows, since, until)
    complete = [r["id"] for r in expected if r["state"] == "complete"]
    assert [r.id for r in query.where(Recording.state == SegmentState.COMPLETE)] == complete
    assert query.count() == len(expected)
    assert [r.id for r in query.limit(3)] == [r["id"] for r in expected[:3]]
    assert [p for (p,) in query.select(Recording.path).tuples()] == [r["path"] for r in expected]


def test_recordings_is_one_query_and_uses_indexes(db, segments):
    one, _, rows = segments
    since, until = from_millis(rows[100]["started_at"]), from_millis(rows[130]["started_at"])
    with count_queries() as counter:
        found = list(h.recordings(one, since, until))
    assert found and counter.count == 1
    with count_queries() as counter:
        list(h.recordings(one.name, since, until))
    assert counter.count == 2  # the name is looked up first
    assert_uses_indexes(db, lambda: list(h.recordings(one, since, until)))


def test_latest_segments_per_stream(db, segments):
    one, two, _ = segments
    third = StreamFactory()  # no segments
    latest = {}
    for r in Recording.select():
        if r.stream_id not in latest or r.segment_index > latest[r.stream_id].segment_index:
            latest[r.stream_id] = r
    with count_queries() as counter:
        found = list(h.latest_segments())
    assert counter.count == 1
    assert [r.id for r in found] == [latest[one.id].id, latest[two.id].id]
    assert [r.id for r in h.latest_segments([two, third.name])] == [latest[two.id].id]
    failed = h.latest_segments([one.id]).where(Recording.state == SegmentState.FAILED).count()
    assert failed == (1 if latest[one.id].state == SegmentState.FAILED else 0)
    assert_uses_indexes(db, lambda: list(h.latest_segments()))


# --- gaps and coverage ------------------------------------------------------------------------------


def test_coverage_and_gaps_match_brute_force(db, segments):
    one, _, rows = segments
    rng = random.Random(12)
    now = max(r["started_at"] for r in rows) + 60_000
    for since, until in random_windows(rng, rows, 100):
        tolerance = rng.choice([0, 1, 1000, 5000, 60_000])
        found = h.coverage(
            one,
            from_millis(since),
            from_millis(until),
            dt.timedelta(milliseconds=tolerance),
            now=from_millis(now),
        )
        recorded, holes = brute_coverage(rows, since, until, now)
        assert found.recorded == dt.timedelta(milliseconds=recorded), (since, until)
        assert found.share == recorded / (until - since)
        expected = [(lo, hi) for lo, hi in holes if hi - lo >= tolerance]
        assert [(ms(g.start), ms(g.end)) for g in found.gaps] == expected, (since, until, tolerance)
        assert h.gaps(
            one,
            from_millis(since),
            from_millis(until),
            dt.timedelta(milliseconds=tolerance),
            now=from_millis(now),
        ) == list(found.gaps)


def test_coverage_of_states_is_coverage_from_the_rows_read_once(db, segments):
    # The timeline reads a stream's segments once (read_states) for its spans
    # and its holes: the coverage it computes from them is coverage's own,
    # whatever the window, the tolerance and the states in it.
    one, _, rows = segments
    rng = random.Random(17)
    now = from_millis(max(r["started_at"] for r in rows) + 60_000)
    assert any(r["ended_at"] is None for r in rows)  # open ones among them
    for since, until in random_windows(rng, rows, 40):
        tolerance = dt.timedelta(milliseconds=rng.choice([0, 1, 1000, 60_000]))
        window = from_millis(since), from_millis(until)
        states = h.read_states(one, *window, now=now)
        assert states.rows() == h.segment_states(one, *window, now=now)
        read = {state for _start, _end, state, _n in states.closed}
        assert read <= {None} | set(SegmentState) - {"complete"}
        expected = h.coverage(one, *window, tolerance, now=now, reasons=True)
        assert h.coverage_of_states(one, states, *window, tolerance, reasons=True) == expected
        # Rows read for a wider window give the narrower window's coverage.
        wider = h.read_states(one, from_millis(since - 3_600_000), from_millis(until + 3_600_000), now=now)
        assert h.coverage_of_states(one, wider, *window, tolerance) == h.coverage(
            one, *window, tolerance, now=now
        )


def test_gaps_of_a_simple_day(db):
    stream = StreamFactory()
    for i, (start, end) in enumerate([(0, 10), (10, 20), (20.5, 30), (90, 100)]):
        stream.begin_segment(f"/rec/{i}.mp4", started_at=T0 + start * SECOND).complete_segment(
            ended_at=T0 + end * SECOND, size_bytes=1
        )
    bad = stream.begin_segment("/rec/bad.mp4", started_at=T0 + 100 * SECOND)
    bad.fail("encoder died", at=T0 + 110 * SECOND)
    stream.begin_segment("/rec/open.mp4", started_at=T0 + 110 * SECOND)
    result = h.coverage(stream, T0, T0 + 200 * SECOND, now=T0 + 150 * SECOND)
    assert [(g.start, g.end) for g in result.gaps] == [
        (T0 + 30 * SECOND, T0 + 90 * SECOND),
        (T0 + 100 * SECOND, T0 + 110 * SECOND),  # the failed segment is a hole
        (T0 + 150 * SECOND, T0 + 200 * SECOND),  # the open one reaches now
    ]
    assert result.recorded == 79.5 * SECOND and result.share == 79.5 / 200
    assert result.missing == 120 * SECOND
    zero = h.gaps(stream, T0, T0 + 100 * SECOND, tolerance=dt.timedelta(0), now=T0 + 150 * SECOND)
    assert (T0 + 20 * SECOND, T0 + 20.5 * SECOND) in [(g.start, g.end) for g in zero]


def test_coverage_is_one_query_and_uses_indexes(db, segments):
    one, _, rows = segments
    since, until = from_millis(rows[0]["started_at"]), from_millis(rows[-1]["started_at"])
    with count_queries() as counter:
        h.coverage(one, since, until)
    assert counter.count == 1
    assert_uses_indexes(db, lambda: h.coverage(one, since, until))
    if isinstance(db, pw.SqliteDatabase):
        with count_queries() as counter:
            h.coverage(one, since, until)
        statements = statements_of(counter)
        plan = " | ".join(
            row[-1] for row in db.execute_sql("EXPLAIN QUERY PLAN " + statements[0][0], statements[0][1])
        )
        # Closed segments from the wide index alone, open ones from the partial index.
        assert "COVERING INDEX recording_stream_id_started_at_ended_at_state" in plan, plan
        assert "INDEX recording_open" in plan, plan


@pytest.mark.parametrize("holes", [30, 70])  # 70: more than MAX_REASON_RANGES, one range over them all
def test_gap_reasons_are_read_from_the_streams_own_index_however_many_holes(db, holes):
    """Each hole's reasons from its range of the (stream, ts) index, never every stream's on the type index.

    From 21 holes on, SQLite's planner once walked the (type, ts) index over
    every stream's health and status changes instead: 0.17 s a call on a
    week of 1,000 streams, where the ranges take 50 us.
    """
    cam, other = StreamFactory(), StreamFactory()
    health = [HealthState.UNHEALTHY, HealthState.HEALTHY]
    for i in range(holes + 1):
        start = T0 + i * MINUTE
        cam.begin_segment(f"/rec/{i}.mp4", started_at=start).complete_segment(
            ended_at=start + 30 * SECOND, size_bytes=1
        )
        if i < holes:  # one health change inside each hole, and one of another stream's
            cam.record_health(health[i % 2], reason=f"check {i}", at=start + 40 * SECOND)
            other.record_health(health[i % 2], reason=f"other {i}", at=start + 40 * SECOND)
    until = T0 + holes * MINUTE + 30 * SECOND
    with count_queries() as counter:
        found = h.gaps(cam, T0, until, now=until)
    assert [(g.start, g.end) for g in found] == [
        (T0 + i * MINUTE + 30 * SECOND, T0 + (i + 1) * MINUTE) for i in range(holes)
    ]
    assert [[r.message.rsplit(" ", 2)[-2:] for r in g.reasons] for g in found] == [
        [["(check", f"{i})"]] for i in range(holes)
    ]
    if isinstance(db, pw.SqliteDatabase):
        (sql, params), *_ = [s for s in statements_of(counter) if 'FROM "event"' in s[0]]
        plan = [row[-1] for row in db.execute_sql("EXPLAIN QUERY PLAN " + sql, params)]
        # The type index serves the system events' branch alone.
        assert sum("event_type_ts_id" in line for line in plan) == 1, plan
        assert any("event_stream_id_ts_id (stream_id=?" in line for line in plan), plan


# --- storage used --------------------------------------------------------------------------------


def brute_usage(keys: tuple[str, ...], **filters: Any) -> dict[tuple, tuple[int, int, int]]:
    names = dict(Stream.select(Stream.id, Stream.name).tuples())
    groups: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in Recording.select().tuples().iterator():
        row = dict(zip(Recording._meta.sorted_field_names, r, strict=True))
        started = ms(row["started_at"])
        day = from_millis(started - started % h.DAY_MS).date()
        if "since" in filters and day < filters["since"]:
            continue
        if "until" in filters and day >= filters["until"]:
            continue
        if "states" in filters and row["state"] not in filters["states"]:
            continue
        if "storage" in filters and row["storage"] != filters["storage"]:
            continue
        if "streams" in filters and row["stream"] not in filters["streams"]:
            continue
        values = {
            "stream": (row["stream"], names[row["stream"]]),
            "storage": row["storage"],
            "day": day,
            "state": row["state"],
        }
        key = tuple(values[k] for k in keys)
        group = groups[key]
        group[0] += 1
        group[1] += row["size_bytes"]
        group[2] += 0 if row["ended_at"] is None else ms(row["ended_at"]) - started
    return {key: tuple(value) for key, value in groups.items()}


def found_usage(rows: list[h.UsageRow], keys: tuple[str, ...]) -> dict[tuple, tuple[int, int, int]]:
    values = []
    for row in rows:
        parts = {
            "stream": (row.stream_id, row.stream),
            "storage": row.storage,
            "day": row.day,
            "state": None if row.state is None else str(row.state),
        }
        values.append(
            (tuple(parts[k] for k in keys), (row.segments, row.size_bytes, ms(T0 + row.duration) - T0_MS))
        )
    return dict(values)


USAGE_GROUPINGS = [
    ("stream",),
    ("storage",),
    ("day",),
    ("state",),
    ("stream", "day"),
    ("stream", "storage", "day", "state"),
]


def churn(rng: random.Random, streams: list[Stream], steps: int) -> None:
    """Every kind of write the package does to segments, and a few it does not."""
    clock = {s.id: T0 + rng.randrange(3600) * SECOND for s in streams}
    open_segments: list[Recording] = []
    for step in range(steps):
        stream = rng.choice(streams)
        action = rng.random()
        if action < 0.4 or not open_segments:
            start = clock[stream.id]
            clock[stream.id] = start + rng.randrange(1, 40_000) * dt.timedelta(milliseconds=1) * 30
            open_segments.append(
                stream.begin_segment(
                    f"/rec/churn/{step}.mp4", started_at=start, storage=rng.choice(["a", "b", None])
                )
            )
        elif action < 0.7:
            segment = open_segments.pop(rng.randrange(len(open_segments)))
            segment.complete_segment(
                ended_at=segment.started_at + rng.randrange(0, 20_000) * dt.timedelta(milliseconds=1),
                size_bytes=rng.randrange(1, 10**7),
            )
        elif action < 0.8:
            segment = rng.choice(open_segments)
            segment.checkpoint(rng.randrange(1, 10**6), at=segment.started_at + SECOND)
        elif action < 0.85:
            open_segments.pop(rng.randrange(len(open_segments))).fail("gone", at=clock[stream.id])
        elif action < 0.92:
            closed = (
                Recording.select().where(Recording.ended_at.is_null(False)).order_by(pw.fn.random()).first()
            )
            if closed is not None:
                closed.delete_file()
        else:
            # Hand-written fixes move a row between groups: storage, day, state.
            target = Recording.select().order_by(pw.fn.random()).first()
            Recording.update(
                storage=rng.choice(["a", "c"]), started_at=ms(target.started_at) - rng.choice([0, h.DAY_MS])
            ).where(Recording.id == target.id).execute()


def test_storage_usage_matches_brute_force_after_every_kind_of_write(db):
    rng = random.Random(21)
    streams = [StreamFactory() for _ in range(3)]
    churn(rng, streams, 250)
    for keys in USAGE_GROUPINGS:
        assert found_usage(h.storage_usage(keys), keys) == brute_usage(keys), keys
    days = sorted({key[0] for key in brute_usage(("day",))})
    filters = {
        "since": days[-1],
        "until": days[-1] + dt.timedelta(days=1),
        "states": ["complete", "failed"],
        "storage": "a",
        "streams": [streams[0].id, streams[2].id],
    }
    for name, value in filters.items():
        argument = value if name != "streams" else [streams[0], streams[2].name]
        assert found_usage(h.storage_usage(("stream", "state"), **{name: argument}), ("stream", "state")) == (
            brute_usage(("stream", "state"), **{name: value})
        ), name
    counts = h.segment_counts()
    assert counts == {SegmentState(k[0]): v[0] for k, v in brute_usage(("state",)).items()}
    assert h.segment_counts(streams[1]) == {
        SegmentState(k[1]): v[0]
        for k, v in brute_usage(("stream", "state")).items()
        if k[0][0] == streams[1].id
    }
    assert h.rebuild_usage() == h.RecordingUsage.select().count()
    assert found_usage(h.storage_usage(USAGE_GROUPINGS[-1]), USAGE_GROUPINGS[-1]) == brute_usage(
        USAGE_GROUPINGS[-1]
    )


def test_storage_usage_is_largest_first_and_one_query(db):
    small, big = StreamFactory(), StreamFactory()
    small.begin_segment("/rec/s.mp4", started_at=T0).complete_segment(ended_at=T0 + MINUTE, size_bytes=10)
    big.begin_segment("/rec/b.mp4", started_at=T0).complete_segment(ended_at=T0 + MINUTE, size_bytes=99)
    with count_queries() as counter:
        rows = h.storage_usage()
    assert counter.count == 1
    assert [(r.stream, r.size_bytes, r.duration) for r in rows] == [
        (big.name, 99, MINUTE),
        (small.name, 10, MINUTE),
    ]
    assert_uses_indexes(db, lambda: h.storage_usage(("stream", "day")))


def test_migration_003_fills_the_usage_summary_from_existing_segments(db):
    rng = random.Random(3)
    stream = StreamFactory()
    # Back to just before 003, whatever came after it.
    while rollback_one(db) != "003_history":
        pass
    assert "recording_usage" not in db.get_tables()
    rows = make_segments(rng, stream, 60, "old")
    for chunk in pw.chunked(rows, 100):
        Recording.insert_many(chunk).execute()
    migrate_to_head(db)
    keys = ("stream", "storage", "day", "state")
    assert found_usage(h.storage_usage(keys), keys) == brute_usage(keys)


def usage_rows(db: pw.Database) -> list[tuple]:
    return [
        tuple(int(v) if isinstance(v, int) else v for v in row)
        for row in db.execute_sql(
            'SELECT "stream_id", "day_start", "storage", "state", "segments", "size_bytes", "duration_ms" '
            'FROM "recording_usage" ORDER BY 1, 2, 3, 4'
        ).fetchall()
    ]


def assert_usage_exact(db: pw.Database, step: str) -> None:
    """The summary the triggers kept equals rebuild_usage's computation from the segments."""
    kept = usage_rows(db)
    h.rebuild_usage()
    assert kept == usage_rows(db), step


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_statement_level_usage_triggers_match_a_rebuild_after_every_kind_of_statement(db):
    # Migration 008: on PostgreSQL the summary is kept per statement from transition tables;
    # a tick's bulk UPDATE is one statement over many rows, keys moving, meeting and emptying.
    names = {
        trigger
        for (trigger,) in db.execute_sql(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'recording'::regclass AND NOT tgisinternal"
        ).fetchall()
    }
    assert {"recording_usage_insert", "recording_usage_delete", "recording_usage_update"} <= names
    assert "recording_usage_track" not in names
    rng = random.Random(8)
    streams = [StreamFactory() for _ in range(6)]
    # Many rows in one INSERT: several per key, some with no end yet.
    rows = []
    for stream in streams:
        rows.extend(make_segments(rng, stream, 40, f"bulk-{stream.id}"))
    for row in rows:
        row["storage"] = rng.choice(["a", "b", None])
    Recording.insert_many(rows).execute()
    assert_usage_exact(db, "insert many")
    # Open segments through the package, then a Tick's one-statement bulk checkpoint.
    open_segments = [
        s.begin_segment(f"/rec/tick/{s.id}/{i}.mp4", started_at=T0 + i * MINUTE, storage=storage)
        for s in [StreamFactory() for _ in range(12)]
        for i, storage in enumerate(["a", None])
    ]
    assert_usage_exact(db, "begin_segment")
    for second in (1, 2, 3):
        with stream_state.Tick() as tick:
            for segment in open_segments:
                size = rng.randrange(10**6) * second
                tick.checkpoint(segment, size, at=segment.started_at + second * SECOND)
        assert_usage_exact(db, f"tick checkpoint {second}")
    # One checkpoint repeating the size it had: its key's deltas cancel.
    with stream_state.Tick() as tick:
        for segment in open_segments:
            tick.checkpoint(segment, segment.size_bytes, at=segment.started_at + 4 * SECOND)
    assert_usage_exact(db, "tick repeating sizes")
    for segment in open_segments[::2]:
        segment.complete_segment(ended_at=segment.started_at + 10 * SECOND, size_bytes=rng.randrange(10**6))
    assert_usage_exact(db, "complete_segment")
    # State changes moving keys in one statement: several rows into one key, whole keys emptied.
    closed = [r.id for r in Recording.select(Recording.id).where(Recording.ended_at.is_null(False))]
    moved = rng.sample(closed, len(closed) // 3)
    Recording.update(state=SegmentState.DELETING).where(Recording.id.in_(moved)).execute()
    assert_usage_exact(db, "state change")
    Recording.update(state=SegmentState.COMPLETE).where(Recording.state != SegmentState.RECORDING).execute()
    assert_usage_exact(db, "every closed row to complete")
    # Storage and day moves, and a same-key end/size correction, in single and bulk statements.
    Recording.update(storage="c").where(Recording.id.in_(moved[:20])).execute()
    earlier = {"started_at": Recording.started_at - h.DAY_MS, "ended_at": Recording.ended_at - h.DAY_MS}
    Recording.update(earlier).where(Recording.id.in_(moved[20:40])).execute()
    Recording.update(size_bytes=Recording.size_bytes + 7, ended_at=Recording.ended_at + 1).where(
        Recording.id.in_(closed[::5])
    ).execute()
    assert_usage_exact(db, "storage, day and size moves")
    # An UPDATE of no tracked column changes nothing.
    before = usage_rows(db)
    assert Recording.update(metadata={"note": "x"}).where(Recording.id.in_(closed[::2])).execute() > 0
    assert usage_rows(db) == before
    assert_usage_exact(db, "metadata only")
    # Deletes: a few rows, then whole keys, then everything of a stream.
    Recording.delete().where(Recording.id.in_(rng.sample(closed, 25))).execute()
    assert_usage_exact(db, "delete some")
    Recording.delete().where(Recording.storage == "c").execute()
    assert_usage_exact(db, "delete a whole key")
    Recording.delete().where(Recording.stream == streams[0].id).execute()
    assert_usage_exact(db, "delete a stream's rows")
    assert not [row for row in usage_rows(db) if row[0] == streams[0].id]
    assert Recording.delete().execute() > 0
    assert usage_rows(db) == []


def test_the_usage_triggers_roll_back_to_migration_003s_and_forward_again(db):
    # Rolling 008 back restores the row trigger (PostgreSQL); the summary stays exact either way.
    rng = random.Random(80)
    stream = StreamFactory()
    Recording.insert_many(make_segments(rng, stream, 30, "before")).execute()
    # Back to just before 008, whatever came after it.
    while rollback_one(db) != "008_usage_statement_triggers":
        pass
    if isinstance(db, pw.PostgresqlDatabase):
        names = {
            trigger
            for (trigger,) in db.execute_sql(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'recording'::regclass AND NOT tgisinternal"
            ).fetchall()
        }
        assert "recording_usage_track" in names and "recording_usage_update" not in names
    ids = [r.id for r in Recording.select(Recording.id).order_by(Recording.id)]
    Recording.update(state=SegmentState.DELETING).where(Recording.id.in_(ids[::3])).execute()
    Recording.delete().where(Recording.id.in_(ids[::5])).execute()
    assert_usage_exact(db, "row trigger")
    migrate_to_head(db)
    Recording.update(state=SegmentState.COMPLETE).where(Recording.id.in_(ids[::2])).execute()
    Recording.delete().where(Recording.id.in_(ids[1::7])).execute()
    assert_usage_exact(db, "statement triggers again")


# --- events ----------------------------------------------------------------------------------------


@pytest.fixture
def many_events(db) -> tuple[list[Stream], list[Event]]:
    rng = random.Random(31)
    streams = [StreamFactory() for _ in range(3)]
    Event.delete().execute()  # the registration events of the factories
    rows = []
    for i in range(400):
        rows.append(
            {
                # Few distinct times, so that many events share one.
                "ts": T0_MS + rng.randrange(120) * 1000,
                "stream": rng.choice([*streams, None]),
                "type": rng.choice(["motion", "note", "health_changed", "storage_warning"]),
                "severity": rng.choice(list(Severity)),
                "message": f"event {i}",
            }
        )
    Event.insert_many(rows).execute()
    return streams, list(Event.select())


def brute_events(all_events: list[Event], **filters: Any) -> list[int]:
    chosen = []
    for e in all_events:
        if "stream" in filters and e.stream_id != filters["stream"]:
            continue
        if "types" in filters and e.type not in filters["types"]:
            continue
        if "severities" in filters and e.severity not in filters["severities"]:
            continue
        if "since" in filters and ms(e.ts) < filters["since"]:
            continue
        if "until" in filters and ms(e.ts) >= filters["until"]:
            continue
        chosen.append(e)
    return [e.id for e in sorted(chosen, key=lambda e: (ms(e.ts), e.id), reverse=True)]


def all_pages(limit: int, **kwargs: Any) -> list[list[int]]:
    pages = []
    cursor = None
    while True:
        with count_queries() as counter:
            page = h.events(cursor=cursor, limit=limit, **kwargs)
        assert counter.count == 1 + isinstance(kwargs.get("stream"), str)  # a name is looked up first
        pages.append([e.id for e in page.events])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


def test_event_pages_match_brute_force_for_every_filter(db, many_events):
    streams, all_events = many_events
    rng = random.Random(32)
    cases = [
        ({}, {}),
        ({"stream": streams[0]}, {"stream": streams[0].id}),
        ({"stream": streams[1].name}, {"stream": streams[1].id}),
        ({"type": "motion"}, {"types": {"motion"}}),
        ({"severity": "warning"}, {"severities": {"warning"}}),
        ({"min_severity": Severity.ERROR}, {"severities": {"error", "critical"}}),
        ({"severity": ["debug", "error"], "min_severity": "info"}, {"severities": {"error"}}),
        (
            {"stream": streams[2], "type": "motion", "since": T0 + 20 * SECOND, "until": T0 + 90 * SECOND},
            {"stream": streams[2].id, "types": {"motion"}, "since": T0_MS + 20_000, "until": T0_MS + 90_000},
        ),
    ]
    for kwargs, filters in cases:
        expected = brute_events(all_events, **filters)
        limit = rng.choice([1, 7, 50, 1000])
        pages = all_pages(limit, **kwargs)
        assert [i for page in pages for i in page] == expected, kwargs
        assert all(len(page) == limit for page in pages[:-1])


def test_event_pages_are_stable_under_concurrent_inserts(db, many_events):
    _, all_events = many_events
    expected = brute_events(all_events)
    seen: list[int] = []
    page = h.events(limit=30)
    rng = random.Random(33)
    while True:
        seen += [e.id for e in page.events]
        # Newer, older and same-time events arrive while an operator reads.
        for _ in range(5):
            Event.record("late", at=from_millis(T0_MS + rng.randrange(-5, 125) * 1000))
        if page.next_cursor is None:
            break
        page = h.events(limit=30, cursor=page.next_cursor)
    assert len(seen) == len(set(seen)), "no event twice"
    assert [i for i in seen if i in set(expected)] == expected, "every event there at the start, in order"


def test_events_carry_their_stream_name_without_more_queries(db, many_events):
    streams, _ = many_events
    names = {s.id: s.name for s in streams}
    with count_queries() as counter:
        page = h.events(limit=100)
        found = [(e.stream_id, e.stream_name) for e in page.events]
    assert counter.count == 1
    assert found == [(i, names.get(i)) for i, _ in found] and None in dict(found)


def test_event_queries_use_indexes(db, many_events):
    streams, _ = many_events
    page = h.events(limit=5)
    for kwargs in [
        {},
        {"stream": streams[0]},
        {"type": "motion"},
        {"stream": streams[0], "type": "motion"},
        {"min_severity": "error", "since": T0, "until": T0 + MINUTE},
        {"cursor": page.next_cursor},
        {"stream": streams[1], "cursor": page.next_cursor},
    ]:
        assert_uses_indexes(db, lambda kwargs=kwargs: h.events(limit=10, **kwargs))


# --- health -------------------------------------------------------------------------------------


def test_current_health_and_transitions_match_what_was_recorded(db):
    rng = random.Random(41)
    streams = [StreamFactory() for _ in range(4)]
    gone = StreamFactory()
    gone.remove()
    recorded: list[tuple[int, int, str, str]] = []  # (ts, stream_id, old, new)
    state = {s.id: "unknown" for s in streams}
    for step in range(120):
        stream = rng.choice(streams)
        new = rng.choice(["healthy", "degraded", "unhealthy", "failed"])
        at = T0 + step * SECOND
        if stream.record_health(new, reason=f"step {step}", at=at):
            recorded.append((ms(at), stream.id, state[stream.id], new))
            state[stream.id] = new
    with count_queries() as counter:
        now = h.current_health()
    assert counter.count == 1
    assert [(x.stream_id, str(x.health)) for x in now] == sorted(
        ((s.id, state[s.id]) for s in streams), key=lambda pair: Stream.get_by_id(pair[0]).name
    )
    assert gone.id in {x.stream_id for x in h.current_health(include_removed=True)}
    for stream, since, until in [
        (None, None, None),
        (streams[0], None, None),
        (streams[1].name, T0 + 30 * SECOND, T0 + 90 * SECOND),
        (None, T0 + 10 * SECOND, T0 + 11 * SECOND),
    ]:
        stream_id = None if stream is None else Stream.get(Stream.name == getattr(stream, "name", stream)).id
        expected = [
            (ts, sid, old, new)
            for ts, sid, old, new in recorded
            if (stream_id is None or sid == stream_id)
            and (since is None or ts >= ms(since))
            and (until is None or ts < ms(until))
        ]
        with count_queries() as counter:
            found = h.health_transitions(stream, since, until)
        assert counter.count == (1 if stream is None or isinstance(stream, Stream) else 2)
        assert [(ms(t.at), t.stream_id, str(t.old), str(t.new)) for t in found] == expected
        assert all(t.reason and t.reason.startswith("step ") for t in found)
    assert len(h.health_transitions(limit=3)) == 3
    assert_uses_indexes(db, lambda: h.health_transitions(since=T0, until=T0 + MINUTE))
    assert_uses_indexes(db, lambda: h.health_transitions(streams[0], since=T0, until=T0 + MINUTE))


# --- metrics ----------------------------------------------------------------------------------------


class MetricWorld:
    """Samples written through the API and the same samples kept in Python."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.values: dict[int, dict[int, float]] = defaultdict(dict)
        self.stream = StreamFactory()

    def write(self, name: str, labels: dict | None, times: list[int]) -> None:
        batch = []
        for ts in times:
            value = self.rng.randrange(-4000, 4000) / 4  # exact in binary: sums compare exactly
            batch.append((name, value, self.stream, labels, from_millis(ts)))
        MetricSample.record_many(batch)
        series = MetricSeries.matching(name, stream=self.stream, labels=labels).first()
        for _, value, _, _, at in batch:
            self.values[series.id][ms(at)] = value
        # What record_many would do for samples below the rollup watermark.
        h.note_late_samples([(series.id, min(times), max(times))])

    def buckets(self, series_id: int, since: int, until: int, step: int) -> list[tuple]:
        acc: dict[int, list] = {}
        for ts in sorted(self.values[series_id]):
            if not since <= ts < until:
                continue
            value = self.values[series_id][ts]
            start = ts // step * step
            if start not in acc:
                acc[start] = [0, 0.0, value, value, value]
            a = acc[start]
            a[0] += 1
            a[1] += value
            a[2] = min(a[2], value)
            a[3] = max(a[3], value)
            a[4] = value
        return [(start, *acc[start]) for start in sorted(acc)]


def as_tuples(buckets: list[h.Bucket]) -> list[tuple]:
    return [(ms(b.start), b.count, b.sum, b.min, b.max, b.last) for b in buckets]


STEPS = [1000, 7000, 60_000, 300_000, 3_600_000, 5_400_000, 7_200_000, 86_400_000]


@pytest.fixture
def metric_world(db) -> MetricWorld:
    world = MetricWorld(random.Random(51))
    span = 5 * 3_600_000
    dense = list(range(T0_MS, T0_MS + span, 1000))
    world.write("bitrate_kbps", {"track": "main"}, dense)
    sparse = sorted(world.rng.sample(range(T0_MS, T0_MS + span), 3000))
    world.write("bitrate_kbps", {"track": "sub"}, sparse)
    world.write("fps", None, sorted(world.rng.sample(range(T0_MS, T0_MS + span), 500)))
    return world


def check_buckets(world: MetricWorld, rng: random.Random, rounds: int) -> None:
    for series in MetricSeries.select():
        for _ in range(rounds):
            since = T0_MS - 600_000 + rng.randrange(6 * 3_600_000)
            until = since + rng.randrange(1, 6 * 3_600_000)
            if rng.random() < 0.3:  # aligned ranges take the rollup paths whole
                since, until = since // 3_600_000 * 3_600_000, -(-until // 3_600_000) * 3_600_000
            step = rng.choice(STEPS)
            if (until - since) // step > 20_000:
                step = 60_000
            expected = world.buckets(series.id, since, until, step)
            args = (series, from_millis(since), from_millis(until), dt.timedelta(milliseconds=step))
            assert as_tuples(h.metric_buckets(*args)) == expected, (since, until, step)
            assert as_tuples(h.metric_buckets(*args, source="raw")) == expected


def rollup_rows() -> list[tuple]:
    return list(
        h.MetricRollup.select()
        .order_by(h.MetricRollup.series, h.MetricRollup.width_ms, h.MetricRollup.bucket_start)
        .tuples()
    )


def brute_rollups(world: MetricWorld, watermark: int) -> list[tuple]:
    rows = []
    for series_id in sorted(world.values):
        for width in (60_000, 3_600_000):
            end = watermark // width * width
            for start, count, total, low, high, last in world.buckets(series_id, 0, end, width):
                rows.append((series_id, width, start, count, total, low, high, last))
    return rows


def test_metric_buckets_match_brute_force_before_during_and_after_rollups(db, metric_world):
    world = metric_world
    rng = random.Random(52)
    check_buckets(world, rng, 6)  # no rollups yet: all raw
    # A watermark in the middle of an hour and of a minute's worth of samples.
    report = h.refresh_rollups(until=T0 + 2 * HOUR + 30 * MINUTE + 17 * SECOND)
    assert report.previous is None and report.watermark == T0 + 2 * HOUR + 30 * MINUTE
    assert rollup_rows() == brute_rollups(world, ms(report.watermark))
    check_buckets(world, rng, 6)
    # Late and replaced samples below the watermark, in a few hours only.
    main = MetricSeries.matching("bitrate_kbps", labels={"track": "main"}).first()
    world.write("bitrate_kbps", {"track": "main"}, [T0_MS + 5_000, T0_MS + 3_600_000 + 60_500])
    world.write("fps", None, [T0_MS + 2 * 3_600_000 + 1])
    stale = {(s, h_) for s, h_ in h.MetricRollupStale.select().tuples()}
    fps = MetricSeries.get(MetricSeries.name == "fps").id
    assert stale == {(main.id, T0_MS), (main.id, T0_MS + 3_600_000), (fps, T0_MS + 2 * 3_600_000)}
    check_buckets(world, rng, 6)  # stale hours are read raw
    # Refreshing in small steps ends where one big step would.
    h.refresh_rollups(until=T0 + 3 * HOUR + 1 * MINUTE, chunk=HOUR)
    report = h.refresh_rollups(until=T0 + 6 * HOUR, chunk=HOUR)
    assert report.stale_hours == 0 and report.watermark == T0 + 6 * HOUR
    assert h.MetricRollupStale.select().count() == 0
    assert rollup_rows() == brute_rollups(world, ms(T0 + 6 * HOUR))
    check_buckets(world, rng, 8)
    # Idempotent: again, and with an earlier until, nothing changes.
    before = rollup_rows()
    assert h.refresh_rollups(until=T0 + 6 * HOUR).minute_rows == 0
    assert h.refresh_rollups(until=T0 + HOUR).watermark == T0 + 6 * HOUR
    assert rollup_rows() == before


def test_invalidate_rollups_recomputes_a_backfill(db, metric_world):
    world = metric_world
    h.refresh_rollups(until=T0 + 6 * HOUR)
    fps = MetricSeries.get(MetricSeries.name == "fps")
    # A backfill written behind the package's back, then declared.
    times = [T0_MS + 3_600_000 + i * 997 for i in range(50)]
    MetricSample.insert_many([{"series": fps.id, "ts": t, "value": 0.25} for t in times]).on_conflict(
        conflict_target=[MetricSample.series, MetricSample.ts], update={MetricSample.value: 0.25}
    ).execute()
    for t in times:
        world.values[fps.id][t] = 0.25
    assert h.invalidate_rollups(T0 + HOUR, T0 + HOUR + MINUTE, series=fps) == 1
    check_buckets(world, random.Random(53), 5)
    h.refresh_rollups(until=T0 + 6 * HOUR)
    assert rollup_rows() == brute_rollups(world, ms(T0 + 6 * HOUR))
    marked = h.invalidate_rollups(T0)
    assert marked == 6 * MetricSeries.select().count()
    h.refresh_rollups(until=T0 + 6 * HOUR)
    assert rollup_rows() == brute_rollups(world, ms(T0 + 6 * HOUR))


def test_rollups_of_purged_raw_samples_are_kept(db, metric_world):
    world = metric_world
    h.refresh_rollups(until=T0 + 6 * HOUR)
    kept = rollup_rows()
    MetricSample.delete().where(MetricSample.ts < T0_MS + 3_600_000).execute()  # retention
    h.invalidate_rollups(T0, T0 + HOUR)
    h.refresh_rollups(until=T0 + 6 * HOUR)
    assert rollup_rows() == kept
    main = MetricSeries.matching("bitrate_kbps", labels={"track": "main"}).first()
    hourly = h.metric_buckets(main, T0, T0 + 6 * HOUR, HOUR)
    assert as_tuples(hourly)[0][:2] == (
        T0_MS,
        len([t for t in world.values[main.id] if t < T0_MS + 3_600_000]),
    )


def test_late_writes_racing_a_refresh_are_never_lost(db, monkeypatch):
    """A refresh running while a writer's transaction is open loses none of its samples.

    The writer marks late samples in its own transaction. On PostgreSQL the
    watermark row is where they meet: the writer holds it FOR SHARE until it
    commits, a refresh takes it FOR UPDATE, so the refresh either sees the
    writer's samples or the writer sees the new watermark and marks them.
    The writer lets the refresher go only once it has read the watermark,
    and then dawdles: the worst moment, had the locking been wrong.
    """
    world = MetricWorld(random.Random(54))
    world.write("load", None, [T0_MS])
    series_id = MetricSeries.get(MetricSeries.name == "load").id
    h.refresh_rollups(until=T0 + MINUTE)
    read_watermark = rollup_models.read_watermark

    errors: list[BaseException] = []
    writing = [0]  # the batch the writer is in
    progress = [0]  # the batch the refresher may catch up with

    def slow_read(database: pw.Database, share: bool = False) -> int | None:
        found = read_watermark(database, share)
        if share:
            progress[0] = writing[0]
            time.sleep(0.01)
        return found

    monkeypatch.setattr(rollup_models, "read_watermark", slow_read)

    def writer() -> None:
        rng = random.Random(55)
        try:
            # Like a recorder: each batch a little further in time.
            for k in range(1, 80):
                writing[0] = k
                times = sorted({T0_MS + k * 30_000 + rng.randrange(30_000) for _ in range(10)})
                with db.atomic():
                    MetricSample.record_many(
                        [
                            ("load", rng.randrange(-400, 400) / 4, world.stream, None, from_millis(t))
                            for t in times
                        ]
                    )
                    h.note_late_samples([(series_id, times[0], times[-1])])
        except BaseException as exc:  # reported on the test's thread
            errors.append(exc)
        finally:
            db.close()

    def refresher() -> None:
        try:
            while progress[0] < 79 and not errors:
                # Right behind the writer: the minute it is writing into.
                h.refresh_rollups(until=from_millis(T0_MS + (progress[0] + 2) * 30_000))
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=writer), threading.Thread(target=refresher)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    world.values[series_id] = {
        ms(t): v for t, v in MetricSample.select(MetricSample.ts, MetricSample.value).tuples()
    }
    final = h.refresh_rollups(until=T0 + HOUR)
    assert rollup_rows() == brute_rollups(world, ms(final.watermark))


def test_metric_buckets_matching_selects_series_by_labels_in_three_queries(db, metric_world):
    world = metric_world
    h.refresh_rollups(until=T0 + 4 * HOUR)
    since, until = T0 + 10 * MINUTE + 3 * SECOND, T0 + 5 * HOUR
    with count_queries() as counter:
        found = h.metric_buckets_matching("bitrate_kbps", since, until, HOUR)
    assert counter.count == 3
    assert [s.series.labels for s in found] == [{"track": "main"}, {"track": "sub"}]
    for item in found:
        assert as_tuples(list(item.buckets)) == world.buckets(item.series.id, ms(since), ms(until), 3_600_000)
    (sub,) = h.metric_buckets_matching(
        "bitrate_kbps", since, until, HOUR, stream=world.stream, labels={"track": "sub"}
    )
    assert sub.series.labels == {"track": "sub"}
    assert h.metric_buckets_matching("nothing", since, until, HOUR) == []
    with count_queries() as counter:
        h.metric_buckets(sub.series, since, until, MINUTE)
    assert counter.count == 2


def test_a_week_of_hourly_buckets_reads_rollups_not_raw_samples(db, metric_world):
    h.refresh_rollups(until=T0 + 6 * HOUR)
    main = MetricSeries.matching("bitrate_kbps", labels={"track": "main"}).first()
    with count_queries() as counter:
        h.metric_buckets(main, T0, T0 + 5 * HOUR, HOUR)
    statements = statements_of(counter)
    data = statements[-1][0]
    assert '"metric_rollup"' in data and '"metric_sample"' not in data.split("FROM", 2)[1].split("AS")[0]
    assert_uses_indexes(db, lambda: h.metric_buckets(main, T0 + 7 * SECOND, T0 + 5 * HOUR, HOUR))
    assert_uses_indexes(db, lambda: h.metric_buckets(main, T0, T0 + HOUR, 7 * SECOND))
    assert_uses_indexes(db, lambda: h.refresh_rollups(until=T0 + 7 * HOUR))
    h.invalidate_rollups(T0, T0 + HOUR)
    assert_uses_indexes(db, lambda: h.refresh_rollups(until=T0 + 7 * HOUR))


def test_metric_samples_is_a_query_over_one_range(db, metric_world):
    world = metric_world
    fps = MetricSeries.get(MetricSeries.name == "fps")
    since, until = T0 + 30 * MINUTE, T0 + 2 * HOUR
    query = h.metric_samples(fps.id, since, until)
    expected = [(t, v) for t, v in sorted(world.values[fps.id].items()) if ms(since) <= t < ms(until)]
    assert [(ms(s.ts), s.value) for s in query] == expected
    assert query.count() == len(expected)
    assert_uses_indexes(db, lambda: list(h.metric_samples(fps, since, until)))


# --- the schema agrees with the models -----------------------------------------------------------


def test_the_history_tables_match_their_models(backend, db):
    from .test_schema import _constraints, _where

    def describe(database: pw.Database) -> dict:
        return {
            table: (
                sorted(
                    (c.name, c.data_type.lower(), c.null, c.primary_key) for c in database.get_columns(table)
                ),
                sorted(
                    (i.name, tuple(i.columns), i.unique, _where(i.sql)) for i in database.get_indexes(table)
                ),
                sorted((f.column, f.dest_table, f.dest_column) for f in database.get_foreign_keys(table)),
                sorted(_constraints(database, table)),
            )
            for table in ("recording", "recording_usage", "metric_rollup", "metric_rollup_stale")
        }

    from_models = backend.connect()
    try:
        models = [Stream, Recording, MetricSeries, *h.HISTORY_MODELS]
        with from_models.bind_ctx(models):
            from_models.create_tables(models)
            assert describe(db) == describe(from_models)
            if isinstance(from_models, pw.SqliteDatabase):
                sql = from_models.execute_sql(
                    "SELECT sql FROM sqlite_master WHERE name = 'metric_rollup'"
                ).fetchone()[0]
                assert sql.endswith("WITHOUT ROWID")
    finally:
        from_models.close()


# --- bad input ----------------------------------------------------------------------------------------

NAIVE = dt.datetime(2026, 1, 1)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: h.recordings(s, NAIVE, T0), "since"),
        (lambda s: h.recordings(s, T0, NAIVE), "until"),
        (lambda s: h.recordings(s, T0, T0), "until"),
        (lambda s: h.recordings(s, T0, T0 - SECOND), "until"),
        (lambda s: h.recordings(3.5, T0, T0 + SECOND), "stream"),
        (lambda s: h.recordings(True, T0, T0 + SECOND), "stream"),
        (lambda s: h.recordings("", T0, T0 + SECOND), "stream"),
        (lambda s: h.recordings(-1, T0, T0 + SECOND), "stream"),
        (lambda s: h.recordings(Stream(name="x"), T0, T0 + SECOND), "stream"),
        (lambda s: h.latest_segments([s, object()]), "streams[1]"),
        (lambda s: h.latest_segments(7.0), "streams"),
        (lambda s: h.coverage(s, T0, T0 + HOUR, tolerance=-SECOND), "tolerance"),
        (lambda s: h.coverage(s, T0, T0 + HOUR, tolerance=5), "tolerance"),
        (lambda s: h.coverage(s, T0, T0 + HOUR, tolerance=dt.timedelta(microseconds=5)), "tolerance"),
        (lambda s: h.coverage(s, T0, T0 + HOUR, now=NAIVE), "now"),
        (lambda s: h.gaps(s, "2026-01-01", T0 + HOUR), "since"),
        (lambda s: h.storage_usage("bogus"), "by"),
        (lambda s: h.storage_usage(()), "by"),
        (lambda s: h.storage_usage(since=T0), "since"),
        (lambda s: h.storage_usage(until="2026-01-01"), "until"),
        (lambda s: h.storage_usage(since=T0.date(), until=T0.date()), "until"),
        (lambda s: h.storage_usage(states=["burning"]), "states"),
        (lambda s: h.storage_usage(states="complete"), "states"),
        (lambda s: h.storage_usage(storage=5), "storage"),
        (lambda s: h.storage_usage(streams=[None]), "streams[0]"),
        (lambda s: h.segment_counts(since=1), "since"),
        (lambda s: h.events(limit=0), "limit"),
        (lambda s: h.events(limit=h.MAX_PAGE + 1), "limit"),
        (lambda s: h.events(limit="10"), "limit"),
        (lambda s: h.events(cursor="abc"), "cursor"),
        (lambda s: h.events(cursor=12), "cursor"),
        (lambda s: h.events(severity="loud"), "severity"),
        (lambda s: h.events(severity=[]), "severity"),
        (lambda s: h.events(min_severity="x"), "min_severity"),
        (lambda s: h.events(type=""), "type"),
        (lambda s: h.events(type=["motion"]), "type"),
        (lambda s: h.events(since=NAIVE), "since"),
        (lambda s: h.events(since=T0, until=T0), "until"),
        (lambda s: h.events(stream=2.5), "stream"),
        (lambda s: h.health_transitions(limit=0), "limit"),
        (lambda s: h.health_transitions(since=NAIVE), "since"),
        (lambda s: h.metric_samples("cpu", T0, T0 + HOUR), "series"),
        (lambda s: h.metric_buckets(1, T0, T0 + HOUR, dt.timedelta(0)), "step"),
        (lambda s: h.metric_buckets(1, T0, T0 + HOUR, 60), "step"),
        (lambda s: h.metric_buckets(1, T0, T0 + HOUR, dt.timedelta(microseconds=1500)), "step"),
        (lambda s: h.metric_buckets(1, T0, T0 + 1000 * HOUR, dt.timedelta(milliseconds=1)), "step"),
        (lambda s: h.metric_buckets(1, T0, T0 + HOUR, MINUTE, source="cache"), "source"),
        (lambda s: h.metric_buckets(1, NAIVE, T0 + HOUR, MINUTE), "since"),
        (lambda s: h.metric_buckets_matching("", T0, T0 + HOUR, MINUTE), "name"),
        (lambda s: h.metric_buckets_matching("x", T0, T0 + HOUR, MINUTE, labels={"a": 1.5}), "labels['a']"),
        (lambda s: h.refresh_rollups(until=NAIVE), "until"),
        (lambda s: h.refresh_rollups(chunk=-HOUR), "chunk"),
        (lambda s: h.invalidate_rollups(NAIVE), "since"),
        (lambda s: h.invalidate_rollups(T0, T0), "until"),
        (lambda s: h.invalidate_rollups(T0, series="x"), "series"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(db, call, field):
    stream = StreamFactory()
    MetricSample.record("cpu", 1.0, stream=stream, at=T0)
    with pytest.raises(ValidationError) as info:
        call(stream)
    assert info.value.field == field


def test_unknown_streams_and_series_are_not_found(db):
    StreamFactory(name="cam-known")
    for call in [
        lambda: h.recordings(999, T0, T0 + HOUR),
        lambda: h.recordings("cam-unknown", T0, T0 + HOUR),
        lambda: h.coverage("cam-unknown", T0, T0 + HOUR),
        lambda: h.latest_segments(["cam-known", "cam-unknown"]),
        lambda: h.storage_usage(streams=[12345]),
        lambda: h.events(stream=12345),
        lambda: h.health_transitions("nope"),
        lambda: h.metric_buckets(424242, T0, T0 + HOUR, MINUTE),
    ]:
        with pytest.raises(NotFound):
            call()


def test_a_removed_streams_history_is_found_by_name(db):
    old = StreamFactory(name="cam-reused")
    old.begin_segment("/rec/old.mp4", started_at=T0).complete_segment(ended_at=T0 + MINUTE, size_bytes=1)
    old.remove()
    assert h.resolve_stream("cam-reused").id == old.id
    assert [r.path for r in h.recordings("cam-reused", T0, T0 + HOUR)] == ["/rec/old.mp4"]
    new = Stream.register("cam-reused", "rtsp://cam/again")
    assert h.resolve_stream("cam-reused").id == new.id


def test_late_samples_written_by_record_many_keep_rollups_exact(db):
    """A sample replaced or added behind the rollup watermark re-aggregates its hour by itself."""
    t0 = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    MetricSample.record_many(
        [("late_metric", float(i), None, None, t0 + dt.timedelta(minutes=i)) for i in range(180)]
    )
    h.refresh_rollups(until=t0 + dt.timedelta(hours=3))
    series = MetricSeries.get(MetricSeries.name == "late_metric")
    MetricSample.record_many(
        [("late_metric", 1000.0, None, None, t0 + dt.timedelta(minutes=5)),  # replaces a rolled-up value
         ("late_metric", -7.0, None, None, t0 + dt.timedelta(minutes=90, seconds=30))]  # a new, late sample
    )  # fmt: skip
    h.refresh_rollups(until=t0 + dt.timedelta(hours=3))
    args = (series, t0, t0 + dt.timedelta(hours=3), dt.timedelta(hours=1))
    assert h.metric_buckets(*args) == h.metric_buckets(*args, source="raw")
    assert h.metric_buckets(*args)[0].max == 1000.0 and h.metric_buckets(*args)[1].min == -7.0


def test_segment_rows_are_the_recordings_as_plain_rows(db, segments):
    one, _, rows = segments
    rng = random.Random(16)
    for since, until in random_windows(rng, rows, 60):
        models = list(h.recordings(one, from_millis(since), from_millis(until)))
        plain = h.segment_rows(one, from_millis(since), from_millis(until))
        fields = (
            "id",
            "stream_id",
            "path",
            "storage",
            "segment_index",
            "started_at",
            "ended_at",
            "size_bytes",
            "checkpoint_at",
            "media_started_at",
            "media_ended_at",
            "frame_count",
            "finalized",
            "metadata",
        )
        assert [tuple(getattr(r, f) for f in fields) for r in plain] == [
            tuple(getattr(m, f) for f in fields) for m in models
        ], (since, until)
        assert [(r.state, r.archived, r.duration) for r in plain] == [
            (m.state, m.archived, m.duration) for m in models
        ]
    since, until = from_millis(rows[50]["started_at"]), from_millis(rows[150]["started_at"])
    assert [r.id for r in h.segment_rows(one, since, until, limit=3)] == [
        m.id for m in h.recordings(one, since, until).limit(3)
    ]
    with count_queries() as counter:
        h.segment_rows(one, since, until)
    assert counter.count == 1
    assert_uses_indexes(db, lambda: h.segment_rows(one, since, until))
    with pytest.raises(ValidationError, match="limit"):
        h.segment_rows(one, since, until, limit=0)
