"""Segment runs (migration 009): hours of segments read as runs give coverage's exact answer.

Invariant 17: an hour's stored runs are NULL (stale) or exactly the runs of
its closed segments as they are now. The triggers mark an hour stale in the
transaction of every change to one of its closed segments, and
``summarize_runs`` stores runs only under the version it read them with.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest

from stream_state import Maintenance, Recording, SegmentState
from stream_state import history as h
from stream_state.invariants import check_invariants
from stream_state.models import SegmentRuns
from stream_state.models.base import current_database
from stream_state.models.runs import decode_runs, hour_of, merge_runs
from stream_state.segment_runs import _summarize, summarize_runs
from stream_state.timeutil import HOUR_MS, from_millis, to_millis

from .factories import StreamFactory
from .test_history import T0_MS, insert_segments, make_segments, random_windows

HOUR = dt.timedelta(hours=1)
LATER = from_millis(T0_MS + 400 * HOUR_MS)  # every hour of the test's segments has settled


@pytest.fixture
def hours_of_segments(db):
    """Segments of every shape over several hours on one stream, and a few on another."""
    rng = random.Random(23)
    one, two = StreamFactory(), StreamFactory()
    rows = make_segments(rng, one, 2_500, "one")
    other = make_segments(rng, two, 300, "two")
    insert_segments(rows + other)
    return one, two, rows


def stored_runs(stream_id: int) -> dict[int, str | None]:
    return {
        row.hour: row.runs
        for row in SegmentRuns.select().where(SegmentRuns.stream == stream_id).order_by(SegmentRuns.hour)
    }


def runs_from_rows(stream_id: int, hour: int) -> list:
    """What merge_runs makes of the hour's closed segments as they are now (the invariant's right side)."""
    database = current_database()
    p = database.param
    rows = database.execute_sql(
        f'SELECT "started_at", "ended_at", "state" FROM "recording" WHERE "stream_id" = {p} '
        f'AND "started_at" >= {p} AND "started_at" < {p} AND "ended_at" IS NOT NULL ORDER BY "started_at"',
        (stream_id, hour * HOUR_MS, (hour + 1) * HOUR_MS),
    ).fetchall()
    return merge_runs((a, b, None if s == "complete" else s) for a, b, s in rows)


def assert_invariant_17(stream_id: int) -> int:
    """Every stored hour is stale or exact; returns how many are summarized."""
    summarized = 0
    for hour, runs in stored_runs(stream_id).items():
        if runs is None:
            continue
        summarized += 1
        (decoded,) = decode_runs([(hour, runs)])
        assert decoded == runs_from_rows(stream_id, hour), f"invariant 17: hour {hour} is out of date"
    return summarized


def assert_runs_give_coverage(stream, rows, seed: int, windows: int = 40) -> None:
    rng = random.Random(seed)
    now = from_millis(max(r["started_at"] for r in rows) + 60_000)
    for since, until in random_windows(rng, rows, windows):
        window = from_millis(since), from_millis(until)
        tolerance = dt.timedelta(milliseconds=rng.choice([0, 1, 1000, 60_000]))
        runs = h.read_runs(stream, *window, now=now)
        expected = h.coverage(stream, *window, tolerance, now=now, reasons=True)
        found = h.coverage_of_states(stream, runs, *window, tolerance, reasons=True)
        assert found == expected, (since, until)
        assert runs.open == h.read_states(stream, *window, now=now).open


def test_read_runs_is_coverage_before_during_and_after_summarizing(db, hours_of_segments):
    one, two, rows = hours_of_segments
    # The migration's triggers marked every hour with a closed segment stale.
    hours = {hour_of(r["started_at"]) for r in rows if r["ended_at"] is not None}
    assert set(stored_runs(one.id)) == hours
    assert all(runs is None for runs in stored_runs(one.id).values())
    assert_runs_give_coverage(one, rows, seed=1)  # nothing summarized: rows only

    report = summarize_runs(LATER, hours_per_transaction=3)
    assert report.hours == len(hours) + len(stored_runs(two.id)) and report.changed == 0
    assert report.segments == sum(1 for r in rows if r["ended_at"] is not None) + sum(
        1 for _ in Recording.select().where((Recording.stream == two.id) & Recording.ended_at.is_null(False))
    )
    assert assert_invariant_17(one.id) == len(hours)
    assert_runs_give_coverage(one, rows, seed=2)
    # A window of whole hours reads runs, not rows: fewer entries (this data
    # is full of holes and states; an hour of back-to-back segments is one).
    since, until = min(hours) * HOUR_MS, (max(hours) + 1) * HOUR_MS
    runs = h.read_runs(one, from_millis(since), from_millis(until), now=LATER)
    states = h.read_states(one, from_millis(since), from_millis(until), now=LATER)
    assert len(runs.closed) < len(states.closed)
    assert sum(n for *_, n in runs.closed) == len(states.closed)


def test_every_change_to_a_closed_segment_marks_its_hour_stale(db, hours_of_segments):
    """Invariant 17: inserts, completions, state changes, moves and deletes of closed segments."""
    one, _two, _rows = hours_of_segments
    summarize_runs(LATER)
    assert all(runs is not None for runs in stored_runs(one.id).values())
    versions = {row.hour: row.version for row in SegmentRuns.select().where(SegmentRuns.stream == one.id)}

    closed = Recording.select().where((Recording.stream == one.id) & Recording.ended_at.is_null(False))
    by_start = sorted(closed, key=lambda r: r.started_at)
    failed, deleted, moved = by_start[10], by_start[400], by_start[900]
    opened = Recording.get((Recording.stream == one.id) & Recording.ended_at.is_null())
    last = by_start[-1]
    untouched = hour_of(to_millis(last.started_at))

    Recording.update(state=SegmentState.FAILED.value).where(Recording.id == failed.id).execute()
    Recording.delete().where(Recording.id == deleted.id).execute()
    moved_to = moved.started_at - 2 * HOUR
    Recording.update(started_at=moved_to).where(Recording.id == moved.id).execute()
    Recording.update(
        ended_at=opened.started_at + dt.timedelta(seconds=5), state=SegmentState.COMPLETE.value
    ).where(Recording.id == opened.id).execute()
    new_hour = untouched + 30
    Recording.insert(
        stream=one.id, path="/rec/late.mp4", segment_index=99_999, started_at=from_millis(new_hour * HOUR_MS),
        ended_at=from_millis(new_hour * HOUR_MS + 1_000), size_bytes=1, state=SegmentState.COMPLETE.value,
        archived=False,
    ).execute()  # fmt: skip
    # Metadata of a closed segment is not what runs are made of.
    Recording.update(archived=True).where(Recording.id == last.id).execute()

    stale = {hour for hour, runs in stored_runs(one.id).items() if runs is None}
    touched = {hour_of(to_millis(r.started_at)) for r in (failed, deleted, moved, opened)}
    touched |= {hour_of(to_millis(moved_to)), new_hour}
    assert stale == touched
    if untouched not in touched:
        assert stored_runs(one.id)[untouched] is not None
    now = versions | {new_hour: 0}
    for row in SegmentRuns.select().where(SegmentRuns.stream == one.id):
        assert (row.version > now.get(row.hour, 0)) == (row.hour in touched), row.hour
    assert_invariant_17(one.id)

    fresh = list(
        Recording.select(Recording.started_at, Recording.ended_at).where(Recording.stream == one.id).tuples()
    )
    fresh = [{"started_at": to_millis(a), "ended_at": b and to_millis(b)} for a, b in fresh]
    assert_runs_give_coverage(one, fresh, seed=3, windows=25)
    summarize_runs(LATER)
    assert all(runs is not None for runs in stored_runs(one.id).values())
    assert assert_invariant_17(one.id) == len(stored_runs(one.id))
    assert_runs_give_coverage(one, fresh, seed=4, windows=25)


def test_a_checkpoint_leaves_the_runs_alone(db):
    stream = StreamFactory()
    t0 = T0_MS
    first = stream.begin_segment("/rec/a.mp4", started_at=from_millis(t0))
    first.complete_segment(ended_at=from_millis(t0 + 10_000), size_bytes=1)
    current = stream.begin_segment("/rec/b.mp4", started_at=from_millis(t0 + 10_000))
    summarize_runs(from_millis(t0 + 10 * HOUR_MS))
    (row,) = SegmentRuns.select().where(SegmentRuns.stream == stream.id)
    assert row.runs is not None
    current.checkpoint(size_bytes=500, at=from_millis(t0 + 15_000))
    assert SegmentRuns.get_by_id((stream.id, row.hour)).version == row.version
    current.complete_segment(ended_at=from_millis(t0 + 20_000), size_bytes=900)
    after = SegmentRuns.get_by_id((stream.id, row.hour))
    assert after.runs is None and after.version > row.version


def test_summarize_leaves_an_hour_stale_when_a_writer_changed_it_meanwhile(db, hours_of_segments):
    """Invariant 17: the store checks the version read before the segments (another connection's write)."""
    one, _two, rows = hours_of_segments
    database = current_database()
    stale = database.execute_sql(
        'SELECT "hour", "stream_id", "version" FROM "segment_runs" WHERE "stream_id" = '
        f'{database.param} ORDER BY "hour"',
        (one.id,),
    ).fetchall()
    # A writer changes a segment of the first hour after the versions were read.
    first = min((r for r in rows if r["ended_at"] is not None), key=lambda r: r["started_at"])
    Recording.update(state=SegmentState.MISSING.value).where(Recording.path == first["path"]).execute()
    with database.atomic():
        stored, emptied, _segments = _summarize(database, stale)
    assert (stored, emptied) == (len(stale) - 1, 0)
    assert stored_runs(one.id)[hour_of(first["started_at"])] is None
    assert_invariant_17(one.id)


def test_an_hour_with_no_segment_left_loses_its_row(db):
    stream = StreamFactory()
    seg = stream.begin_segment("/rec/a.mp4", started_at=from_millis(T0_MS))
    seg.complete_segment(ended_at=from_millis(T0_MS + 10_000), size_bytes=1)
    summarize_runs(LATER)
    assert len(stored_runs(stream.id)) == 1
    Recording.delete().where(Recording.stream == stream.id).execute()
    assert list(stored_runs(stream.id).values()) == [None]
    report = summarize_runs(LATER)
    assert report.emptied == 1 and stored_runs(stream.id) == {}


def test_recent_hours_wait_for_settle(db):
    stream = StreamFactory()
    seg = stream.begin_segment("/rec/a.mp4", started_at=from_millis(T0_MS))
    seg.complete_segment(ended_at=from_millis(T0_MS + 10_000), size_bytes=1)
    hour_end = from_millis((hour_of(T0_MS) + 1) * HOUR_MS)
    assert summarize_runs(hour_end + dt.timedelta(minutes=59)).hours == 0
    assert summarize_runs(hour_end + dt.timedelta(hours=1)).hours == 1


def test_maintenance_runs_the_summary(db):
    stream = StreamFactory()
    seg = stream.begin_segment("/rec/a.mp4", started_at=from_millis(T0_MS))
    seg.complete_segment(ended_at=from_millis(T0_MS + 10_000), size_bytes=1)
    report = Maintenance().run_due(LATER)
    assert report.ran["runs"]["hours"] == 1
    assert assert_invariant_17(stream.id) == 1


def test_merge_runs_keeps_each_states_union():
    rows = [
        (0, 10, None),
        (10, 20, None),
        (12, 14, "failed"),  # inside a complete run: its own run
        (25, 30, None),  # a hole before it
        (28, 40, None),  # overlapping
        (40, 40, None),  # empty, touching
        (41, 50, "interrupted"),
    ]
    assert merge_runs(rows) == [
        (0, 20, None, 2),
        (12, 14, "failed", 1),
        (25, 40, None, 3),
        (41, 50, "interrupted", 1),
    ]


def test_integrity_reports_runs_that_differ_from_their_segments(db, hours_of_segments):
    """Invariant 17 from the database alone: a summary edited behind the triggers' back is found."""
    one, _two, _rows = hours_of_segments
    summarize_runs(LATER)
    assert not [v for v in check_invariants() if v.invariant == 17]
    hour = min(stored_runs(one.id))
    SegmentRuns.update(runs="[[0,1,null,1]]").where(
        (SegmentRuns.stream == one.id) & (SegmentRuns.hour == hour)
    ).execute()
    (found,) = [v for v in check_invariants() if v.invariant == 17]
    assert found.count == 1 and str(one.id) in found.examples[0]


def test_the_timeline_shows_the_same_holes_from_runs_as_from_rows(db, hours_of_segments, monkeypatch):
    from stream_state import timeline as tl
    from stream_state.timeline import reading as tl_reading

    one, two, rows = hours_of_segments
    monkeypatch.setattr(tl_reading, "DETAIL_SEGMENTS", 0)  # the week view: spans from the index
    first = min(r["started_at"] for r in rows)
    since, until = from_millis(first - HOUR_MS), from_millis(first + 30 * HOUR_MS)

    def picture() -> list:
        found = tl.collect([one, two], since=since, until=until, now=LATER, width=1_000)
        return [
            (lane.holes, lane.recorded_ms, sum(s.segments for s in lane.spans), {s.state for s in lane.spans})
            for lane in found.lanes
        ]

    from_rows = picture()
    assert summarize_runs(LATER).hours > 10
    assert picture() == from_rows
    assert sum(len(lane[0]) for lane in from_rows) > 10  # holes were there to find
