"""One commit per tick (stream_state.tick), the manager statements written once, the series-id cache.

Database tests take the ``db`` fixture, so each runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt

import peewee as pw
import pytest
from playhouse.test_utils import count_queries

import stream_state
from stream_state import (
    AlreadyExists,
    Event,
    InvalidTransition,
    MetricSample,
    MetricSeries,
    NotFound,
    Recording,
    Stream,
    TickFailed,
    ValidationError,
)
from stream_state.errors import OwnershipLost
from stream_state.models import Session, metric
from stream_state.models.session import current_session
from stream_state.timeutil import to_millis, utc_now

from .dbdump import dump_tables
from .factories import T0
from .sessionkit import expire

SECOND = dt.timedelta(seconds=1)
URI = "rtsp://user:secret@10.0.0.1/main"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def cams(n: int) -> list[tuple[Stream, Recording]]:
    out = []
    for i in range(n):
        stream = Stream.register(f"cam-{i}", URI)
        stream.record_health("healthy", at=at(-1))
        out.append((stream, stream.begin_segment(f"/rec/cam-{i}/0.mp4", started_at=at(-1))))
    return out


def samples(stream: Stream, t: float) -> list[tuple]:
    return [("fps", 15.0, stream, {"pipe": "main"}, at(t)), ("kbps", 4000.0 + t, stream, None, at(t))]


def rows(sql: str, params: tuple = ()) -> list[tuple]:
    db = Stream._meta.database
    return [tuple(row) for row in db.execute_sql(sql, params).fetchall()]


def state_of(stream: Stream) -> tuple:
    p = Stream._meta.database.param
    return rows(f"SELECT health, last_seen_at, health_changed_at FROM stream WHERE id = {p}", (stream.id,))[0]


def recording_row(recording: Recording) -> tuple:
    p = Stream._meta.database.param
    sql = f"SELECT size_bytes, checkpoint_at, ended_at, state FROM recording WHERE id = {p}"
    return rows(sql, (recording.id,))[0]


def sample_rows() -> list[tuple]:
    return rows(
        "SELECT s.key, m.ts, m.value FROM metric_sample m JOIN metric_series s ON s.id = m.series_id "
        "ORDER BY s.key, m.ts"
    )


def event_rows(kind: str) -> list[tuple]:
    return rows(
        f"SELECT stream_id, ts, type, severity, message FROM event WHERE type = {Stream._meta.database.param}"
        " "
        "ORDER BY id",
        (kind,),
    )


# --- what a tick writes ------------------------------------------------------------------------


def test_a_tick_writes_exactly_what_the_single_calls_write_in_one_transaction(db):
    (a, seg_a), (b, seg_b) = cams(2)
    # Stream a: the per-call API.
    seg_a.checkpoint(1000, at=at(1))
    a.record_health("healthy", at=at(1))
    Event.record("motion", a, message="zone 1 rtsp://u:pw@h/x", data={"zone": 1}, at=at(1))
    MetricSample.record_many(samples(a, 1))
    # Stream b: the same calls through one tick.
    with count_queries() as counter, stream_state.Tick() as tick:
        tick.checkpoint(seg_b, 1000, at=at(1))
        tick.record_health(b, "healthy", at=at(1))
        tick.event("motion", b, message="zone 1 rtsp://u:pw@h/x", data={"zone": 1}, at=at(1))
        assert tick.record_many(samples(b, 1)) == 2
        assert len(tick) == 4
    assert recording_row(seg_a) == recording_row(seg_b) == (1000, to_millis(at(1)), None, "recording")
    assert state_of(a) == state_of(b)
    ev_a, ev_b = event_rows("motion")
    assert ev_a[1:] == ev_b[1:] and "secret" not in ev_b[4] and "pw" not in ev_b[4]
    stored = Event.select().where(Event.type == "motion").order_by(Event.id)
    assert [e.data for e in stored] == [{"zone": 1}, {"zone": 1}]
    by_stream = {}
    for key, ts, value in sample_rows():
        by_stream.setdefault(key.replace(str(a.id), "X", 1).replace(str(b.id), "X", 1), []).append(
            (ts, value)
        )
    assert all(len(v) == 2 and v[0] == v[1] for v in by_stream.values())
    # The objects the manager holds show what was written.
    assert seg_b.size_bytes == 1000 and seg_b.checkpoint_at == at(1) and b.last_seen_at == at(1)
    # peewee logs no BEGIN/COMMIT; what matters is one statement per kind, not per call
    # (+1: the ownership check of sessions, once for the whole tick).
    assert counter.count <= 11


def test_a_thousand_streams_are_a_handful_of_statements(db):
    many = cams(30)
    with count_queries() as counter, stream_state.Tick() as tick:
        for stream, segment in many:
            tick.checkpoint(segment, 5, at=at(1))
            tick.record_health(stream, "healthy", at=at(1))
            tick.record_many(samples(stream, 1))
    assert counter.count <= 11  # not 3 per stream (one of them: the tick's ownership check)
    assert {recording_row(seg)[0] for _, seg in many} == {5}
    assert len(sample_rows()) == 60


def test_the_report_lists_health_changes_and_their_events_are_in_the_tick(db):
    (a, _), (b, _) = cams(2)
    with stream_state.Tick() as tick:
        tick.record_health(a, "healthy", at=at(1))
        tick.record_health(b, "degraded", reason="fps low", at=at(1))
    assert state_of(b) == ("degraded", to_millis(at(1)), to_millis(at(1)))
    assert state_of(a)[0] == "healthy"
    changes = Event.select().where(Event.type == "health_changed", Event.ts == at(1))
    assert [(e.stream_id, e.data["old"], e.data["new"], e.data["reason"]) for e in changes] == [
        (b.id, "healthy", "degraded", "fps low")
    ]


def test_commit_returns_the_report(db):
    (a, seg), (b, _) = cams(2)
    tick = stream_state.Tick()
    tick.checkpoint(seg, 9, at=at(1))
    tick.record_health(a, "healthy", at=at(1))
    tick.record_health(b, "unhealthy", at=at(1))
    tick.record(name="fps", value=1.0, stream=a, at=at(1))
    report = tick.commit()
    assert (report.checkpoints, report.health_reports, report.samples) == (1, 2, 1)
    assert [(s.id, str(state)) for s, state in report.health_changes] == [(b.id, "unhealthy")]
    with pytest.raises(InvalidTransition):
        tick.commit()
    with pytest.raises(InvalidTransition):
        tick.record_health(a, "healthy")


def test_two_reports_of_one_stream_in_a_tick_apply_in_order(db):
    ((a, seg),) = cams(1)
    with stream_state.Tick() as tick:
        tick.record_health(a, "degraded", at=at(1))
        tick.record_health(a, "healthy", at=at(2))
        tick.checkpoint(seg, 10, at=at(1))
        tick.checkpoint(seg, 20, at=at(2))
    assert state_of(a) == ("healthy", to_millis(at(2)), to_millis(at(2)))
    changes = Event.select().where(Event.type == "health_changed", Event.ts > at(0)).order_by(Event.id)
    assert [(e.data["old"], e.data["new"]) for e in changes] == [
        ("healthy", "degraded"),
        ("degraded", "healthy"),
    ]
    assert recording_row(seg)[:2] == (20, to_millis(at(2)))


def test_samples_of_several_calls_for_one_series_merge_and_the_last_wins(db):
    ((a, _),) = cams(1)
    with stream_state.Tick() as tick:
        tick.record_many([("fps", 1.0, a, None, at(1))])
        tick.record_many([("fps", 2.0, a, None, at(1)), ("fps", 3.0, a, None, at(2))])
    assert [(ts, v) for _, ts, v in sample_rows()] == [(to_millis(at(1)), 2.0), (to_millis(at(2)), 3.0)]


# --- validation and failures -----------------------------------------------------------------


def test_a_bad_call_raises_at_once_and_the_tick_keeps_the_others(db):
    ((a, seg),) = cams(1)
    tick = stream_state.Tick()
    tick.checkpoint(seg, 10, at=at(1))
    with pytest.raises(ValidationError, match="size_bytes"):
        tick.checkpoint(seg, -1, at=at(1))
    with pytest.raises(ValidationError, match="at"):
        tick.checkpoint(seg, 10, at=at(-5))  # before the segment started
    with pytest.raises(ValidationError, match="state"):
        tick.record_health(a, "on fire")
    with pytest.raises(ValidationError, match=r"samples\[1\]\.value"):
        tick.record_many([("fps", 1.0, a), ("fps", "fast", a)])
    with pytest.raises(ValidationError, match="type"):
        tick.event("", a)
    with pytest.raises(ValidationError, match="recording"):
        tick.checkpoint("not a segment", 1)  # type: ignore[arg-type]
    assert len(tick) == 1
    tick.commit()
    assert recording_row(seg)[0] == 10
    assert sample_rows() == []


def test_a_block_that_raises_writes_nothing(db):
    ((a, seg),) = cams(1)
    before = state_of(a)
    with pytest.raises(RuntimeError), stream_state.Tick() as tick:
        tick.checkpoint(seg, 10, at=at(1))
        tick.record_health(a, "healthy", at=at(1))
        tick.record_many(samples(a, 1))
        raise RuntimeError("the manager changed its mind")
    assert recording_row(seg)[0] == 0 and state_of(a) == before and sample_rows() == []


def test_a_refused_call_commits_nothing_names_the_call_and_the_rest_can_be_committed(db):
    (a, seg_a), (_, seg_b) = cams(2)
    seg_b.complete_segment(ended_at=at(0), size_bytes=7)  # closed elsewhere: the manager's object is stale
    seg_b.state = "recording"
    before = state_of(a)
    tick = stream_state.Tick()
    tick.checkpoint(seg_a, 10, at=at(1))
    tick.checkpoint(seg_b, 10, at=at(1))
    tick.record_health(a, "healthy", at=at(1))
    tick.record_many(samples(a, 1))
    with pytest.raises(TickFailed) as caught:
        tick.commit()
    error = caught.value
    assert [(f.index, f.call) for f in error.failures] == [(1, f"checkpoint of {seg_b.path}")]
    assert isinstance(error.failures[0].error, InvalidTransition)
    assert seg_b.path in str(error) and "nothing of the tick was committed" in str(error)
    # Nothing at all was written.
    assert recording_row(seg_a)[0] == 0 and state_of(a) == before and sample_rows() == []
    assert recording_row(seg_b)[:1] == (7,)
    # The rest goes through.
    assert len(error.remaining) == 3
    report = error.remaining.commit()
    assert report.checkpoints == 1 and report.samples == 2
    assert recording_row(seg_a)[0] == 10 and len(sample_rows()) == 2


def test_removed_and_unknown_streams_are_refused_by_name(db):
    (a, _), (b, seg_b) = cams(2)
    seg_b.complete_segment(ended_at=at(0), size_bytes=1)
    b.remove()
    ghost = Stream(id=99_999, name="ghost")
    tick = stream_state.Tick()
    tick.record_health(a, "healthy", at=at(1))
    tick.record_health(b, "healthy", at=at(1))
    tick.record_health(ghost, "healthy", at=at(1))
    tick.record_many([("fps", 1.0, 99_998, None, at(1))])
    with pytest.raises(TickFailed) as caught:
        tick.commit()
    failed = {f.index: f for f in caught.value.failures}
    assert set(failed) == {1, 2}  # samples are looked at once health and checkpoints passed
    assert "removed" in str(failed[1].error) and "ghost" in failed[2].call
    remaining = caught.value.remaining
    with pytest.raises(TickFailed) as again:
        remaining.commit()
    assert [(f.index, f.call) for f in again.value.failures] == [(1, "samples (1)")]
    again.value.remaining.commit()
    assert state_of(a)[1] == to_millis(at(1))


def test_an_event_of_an_unknown_stream_is_refused_by_name(db):
    ((a, _),) = cams(1)
    tick = stream_state.Tick()
    tick.record_health(a, "healthy", at=at(1))
    tick.event("motion", 4242, at=at(1))
    with pytest.raises(TickFailed) as caught:
        tick.commit()
    assert [(f.index, f.call) for f in caught.value.failures] == [(1, "event motion")]
    assert isinstance(caught.value.failures[0].error, NotFound)
    assert event_rows("motion") == []


# --- the single calls, written once per backend -------------------------------------------------


def test_the_single_calls_are_one_statement_each(db):
    ((a, seg),) = cams(1)
    with count_queries() as counter:
        seg.checkpoint(5, at=at(1))
        a.record_health("healthy", at=at(1))
        event = Event.record("motion", a, data={"zone": 2}, at=at(1))
    # checkpoint and health: one gated statement each; an event: the ownership check, then the INSERT
    assert counter.count == 4
    assert Event.get_by_id(event.id).data == {"zone": 2}
    with pytest.raises(InvalidTransition):
        seg.complete_segment(ended_at=at(2), size_bytes=5)
        seg.checkpoint(6, at=at(3))
    with pytest.raises(NotFound):
        Event.record("motion", 4242)


# --- the series-id cache -------------------------------------------------------------------------


def series_of(key_part: str) -> list[tuple]:
    param = Stream._meta.database.param
    return rows(f"SELECT id, key FROM metric_series WHERE key LIKE {param} ORDER BY id", (f"%{key_part}%",))


def test_cached_series_ids_skip_the_lookup(db):
    ((a, _),) = cams(1)
    MetricSample.record_many(samples(a, 1))
    with count_queries() as counter:
        MetricSample.record_many(samples(a, 2))
    statements = [s for s in counter.get_queries()] if hasattr(counter, "get_queries") else None
    del statements
    # deletion counter + executemany + the rollup watermark (+ the ownership check of sessions):
    # no SELECT by key text.
    assert counter.count <= 4


def test_a_deleted_series_is_never_written_under_its_old_id(db):
    (a, _), (b, _) = cams(2)
    MetricSample.record_many([("fps", 1.0, a, None, at(1))])
    ((old_id, _),) = series_of('"fps"')
    # Another process deletes the series and creates another, which may get the freed id.
    conn = Stream._meta.database
    conn.execute_sql(f"DELETE FROM metric_series WHERE id = {conn.param}", (old_id,))
    MetricSeries.create(key=metric.series_key("other", b.id), name="other", stream=b.id)
    MetricSample.record_many([("fps", 2.0, a, None, at(2))])
    assert [(k, v) for k, _, v in sample_rows()] == [(metric.series_key("fps", a.id), 2.0)]


def test_series_created_by_another_writer_or_rolled_back_are_found_again(db):
    ((a, _),) = cams(1)
    database = Stream._meta.database
    with pytest.raises(RuntimeError), database.atomic():
        MetricSample.record_many([("fps", 1.0, a, None, at(1))])
        raise RuntimeError("rolled back")
    assert series_of('"fps"') == []
    # Another writer creates the series (here by hand): the next batch finds it.
    MetricSeries.create(key=metric.series_key("kbps", a.id), name="kbps", stream=a.id)
    MetricSample.record_many([("fps", 1.0, a, None, at(1)), ("kbps", 2.0, a, None, at(1))])
    assert len(series_of("")) == 2 and len(sample_rows()) == 2


def test_remembered_identities_never_let_a_bool_pass_for_an_int_or_text(db):
    ((a, _),) = cams(1)
    MetricSample.record_many([("fps", 1.0, a.id, {"ch": "1"}, at(1))])
    with pytest.raises(ValidationError, match="ch"):
        MetricSample.record_many([("fps", 1.0, a.id, {"ch": True}, at(2))])
    with pytest.raises(ValidationError, match="stream"):
        MetricSample.record_many([("fps", 1.0, True, {"ch": "1"}, at(2))])
    with pytest.raises(ValidationError, match="name"):
        MetricSample.record_many([("", 1.0, a.id, {"ch": "1"}, at(2))])


def test_a_series_deleted_under_a_cached_id_on_integrity_error_is_recreated(db):
    ((a, _),) = cams(1)
    MetricSample.record_many([("fps", 1.0, a, None, at(1))])
    cache = metric.series_id_cache(db)
    ((sid, _),) = series_of('"fps"')
    # Simulate a stale entry the deletion counter did not catch (a concurrent delete).
    db.execute_sql(f"DELETE FROM metric_series WHERE id = {db.param}", (sid,))
    cache.deletions = db.execute_sql(
        f"SELECT value FROM system_state WHERE key = {db.param}", (metric.SERIES_DELETED_KEY,)
    ).fetchone()[0]
    cache.ids[metric.series_key("fps", a.id)] = sid
    MetricSample.record_many([("fps", 2.0, a, None, at(2))])
    assert [v for _, _, v in sample_rows()] == [2.0]


def test_the_per_database_cache_is_not_shared_between_databases(db, backend):
    assert metric.series_id_cache(db) is metric.series_id_cache(db)
    other = pw.SqliteDatabase(":memory:")
    assert metric.series_id_cache(other) is not metric.series_id_cache(db)


# --- segment rolls in a tick ----------------------------------------------------------------------


def test_segments_roll_inside_the_tick_and_the_new_row_exists_after_the_commit(db):
    ((a, seg),) = cams(1)
    with stream_state.Tick() as tick:
        tick.checkpoint(seg, 900, at=at(10))
        tick.complete_segment(seg, ended_at=at(10), size_bytes=1000)
        pending = tick.begin_segment(a, "/rec/cam-0/1.mp4", started_at=at(10))
        assert pending.recording is None  # not before the commit: open the file after it
    new = pending.recording
    assert new is not None and new.segment_index == 1 and new.path == "/rec/cam-0/1.mp4"
    assert recording_row(seg) == (1000, to_millis(at(10)), to_millis(at(10)), "complete")
    assert recording_row(new)[2:] == (None, "recording")
    # The same rows the single calls write.
    b = Stream.register("cam-1", URI)
    seg_b = b.begin_segment("/rec/cam-1/0.mp4", started_at=at(-1))
    seg_b.checkpoint(900, at=at(10))
    seg_b.complete_segment(ended_at=at(10), size_bytes=1000)
    new_b = b.begin_segment("/rec/cam-1/1.mp4", started_at=at(10))
    assert recording_row(new_b) == recording_row(new)


def test_a_refused_roll_rolls_the_whole_tick_back(db):
    ((a, seg),) = cams(1)
    tick = stream_state.Tick()
    tick.complete_segment(seg, ended_at=at(10), size_bytes=1000)
    pending = tick.begin_segment(a, seg.path, started_at=at(10))  # the path is taken
    tick.record_many(samples(a, 10))
    with pytest.raises(TickFailed) as caught:
        tick.commit()
    assert [(f.index, f.call) for f in caught.value.failures] == [(1, "begin segment of cam-0")]
    assert pending.recording is None
    assert recording_row(seg)[2:] == (None, "recording") and sample_rows() == []
    caught.value.remaining.commit()
    assert recording_row(seg)[2:] == (to_millis(at(10)), "complete") and len(sample_rows()) == 2


# --- segment rolls, set-based (models/rolls.py) ---------------------------------------------------


def full_row(recording: Recording) -> tuple:
    """A segment's row without what differs between two streams (ids, stream, path)."""
    p = Stream._meta.database.param
    return rows(
        "SELECT segment_index, started_at, ended_at, size_bytes, state, archived, metadata, "
        "media_started_at, media_ended_at, frame_count, finalized, clock_suspect, session_epoch "
        f"FROM recording WHERE id = {p}",
        (recording.id,),
    )[0]


def next_index(stream: Stream) -> int:
    p = Stream._meta.database.param
    return rows(f"SELECT next_segment_index FROM stream WHERE id = {p}", (stream.id,))[0][0]


def test_a_tick_rolls_many_segments_in_a_few_statements_writing_what_single_calls_write(db):
    many = cams(21)
    (single, seg_single), rolled = many[0], many[1:]
    seg_single.checkpoint(900, at=at(10))
    seg_single.complete_segment(ended_at=at(10), size_bytes=1000, media_ended_at=at(10), finalized=True)
    new_single = single.begin_segment(f"/rec/{single.name}/1.mp4", started_at=at(10))
    with count_queries() as counter, stream_state.Tick() as tick:
        pending = []
        for stream, segment in rolled:
            tick.checkpoint(segment, 900, at=at(10))
            tick.complete_segment(
                segment, ended_at=at(10), size_bytes=1000, media_ended_at=at(10), finalized=True
            )
            pending.append(tick.begin_segment(stream, f"/rec/{stream.name}/1.mp4", started_at=at(10)))
        assert all(p.recording is None for p in pending)  # no file before the commit (invariant 1)
    # Not five statements a roll: a checkpoint UPDATE, a roll's completes, claims and inserts, the
    # tick's ownership check (peewee logs no BEGIN/COMMIT).
    assert counter.count <= 6, [q.msg[0][:60] for q in counter.get_queries()]
    for (stream, segment), p in zip(rolled, pending, strict=True):
        assert full_row(segment) == full_row(seg_single)
        assert segment.state == "complete" and segment.ended_at == at(10) and segment.finalized is True
        assert p.recording is not None and p.recording.path == f"/rec/{stream.name}/1.mp4"
        assert full_row(p.recording) == full_row(new_single)
        assert next_index(stream) == stream.next_segment_index == 2
    # What the objects say is what a read gives.
    made = pending[0].recording.__data__
    fresh = Recording.get_by_id(pending[0].recording.id).__data__
    assert {key: fresh[key] for key in made} == made


def test_several_begins_of_one_stream_take_its_indexes_in_call_order(db):
    ((a, _seg),) = cams(1)
    with stream_state.Tick() as tick:
        first = tick.begin_segment(a, path_template="/rec/{stream}/{index:04d}.mp4", started_at=at(10))
        second = tick.begin_segment(a, "/rec/cam-0/other.mp4", started_at=at(11), metadata={"lens": "wide"})
        third = tick.begin_segment(a, path_template="/rec/{stream}/{index:04d}.mp4", started_at=at(12))
    got = [(p.recording.segment_index, p.recording.path) for p in (first, second, third)]
    assert got == [(1, "/rec/cam-0/0001.mp4"), (2, "/rec/cam-0/other.mp4"), (3, "/rec/cam-0/0003.mp4")]
    assert next_index(a) == 4  # invariant 3
    assert Recording.get_by_id(second.recording.id).metadata == {"lens": "wide"}


def test_roll_arguments_are_validated_at_the_call_and_the_tick_keeps_its_other_calls(db, tmp_path):
    ((a, seg),) = cams(1)
    tick = stream_state.Tick()
    tick.checkpoint(seg, 10, at=at(1))
    with pytest.raises(ValidationError, match="ended_at"):
        tick.complete_segment(seg, ended_at=at(-5), size_bytes=1)  # before the start
    with pytest.raises(ValidationError, match="finalized"):
        tick.complete_segment(seg, ended_at=at(5), size_bytes=1, finalized=False)
    with pytest.raises(ValidationError, match="path"):
        tick.begin_segment(a, "relative/path.mp4")
    with pytest.raises(ValidationError, match="size_bytes"):
        tick.complete_segment(seg, ended_at=at(5))  # no size, and no file to read it from
    assert len(tick) == 1
    tick.commit()
    assert recording_row(seg)[:1] == (10,)


def test_refused_rolls_are_named_nothing_is_written_and_the_rest_can_be_committed(db):
    (a, seg_a), (b, seg_b), (_c, seg_c) = cams(3)
    seg_b.complete_segment(ended_at=at(5), size_bytes=5)  # already closed, with other values
    before = next_index(a), next_index(b)
    tick = stream_state.Tick()
    tick.complete_segment(seg_a, ended_at=at(10), size_bytes=10)  # 0: fine
    tick.complete_segment(seg_b, ended_at=at(10), size_bytes=10)  # 1: not open
    tick.begin_segment(a, "/rec/cam-0/1.mp4", started_at=at(10))  # 2: fine
    tick.begin_segment(b, "/rec/cam-1/1.mp4", started_at=at(10))  # 3: fine
    tick.begin_segment(b, "/rec/cam-0/1.mp4", started_at=at(10))  # 4: the path of call 2
    tick.begin_segment(b, seg_c.path, started_at=at(10))  # 5: a path already used
    tick.checkpoint(seg_c, 77, at=at(10))  # 6: fine
    with pytest.raises(TickFailed) as caught:
        tick.commit()
    failures = caught.value.failures
    assert [(f.index, f.call) for f in failures] == [
        (1, f"complete segment of {seg_b.path}"),
        (4, "begin segment of cam-1"),
        (5, "begin segment of cam-1"),
    ]
    assert isinstance(failures[0].error, InvalidTransition) and "complete" in str(failures[0].error)
    assert all(isinstance(f.error, AlreadyExists) for f in failures[1:])
    assert "/rec/cam-0/1.mp4" in str(failures[1].error)
    # Nothing of the tick: the counters did not move, no row was begun or closed.
    assert (next_index(a), next_index(b)) == before
    assert recording_row(seg_a)[2:] == (None, "recording") and recording_row(seg_c)[0] == 0
    assert seg_a.state == "recording"  # the object too
    report = caught.value.remaining.commit()
    assert (report.segments_completed, report.segments_begun, report.checkpoints) == (1, 2, 1)
    assert recording_row(seg_a)[2:] == (to_millis(at(10)), "complete") and recording_row(seg_c)[0] == 77
    assert (next_index(a), next_index(b)) == (before[0] + 1, before[1] + 1)  # invariant 3


def test_a_roll_on_a_removed_or_vanished_stream_is_refused_by_name(db):
    (a, seg_a), (b, _seg_b) = cams(2)
    seg_a.complete_segment(ended_at=at(5), size_bytes=5)
    a.remove()
    tick = stream_state.Tick()
    tick.begin_segment(b, "/rec/cam-1/1.mp4", started_at=at(10))
    tick.begin_segment(a, "/rec/cam-0/1.mp4", started_at=at(10))
    with pytest.raises(TickFailed) as caught:
        tick.commit()
    ((index, call, error),) = [(f.index, f.call, f.error) for f in caught.value.failures]
    assert (index, call) == (1, "begin segment of cam-0") and isinstance(error, NotFound)  # StreamRemoved
    caught.value.remaining.commit()
    assert next_index(b) == 2 and next_index(a) == 1


def test_a_roll_of_another_live_sessions_stream_is_refused_and_writes_nothing(db, tmp_path):
    ((_mine, my_seg),) = cams(1)
    theirs = Stream.register("cam-theirs", URI)
    owner = Session.open(ttl=30, register=False)  # another manager, as far as the database can tell
    with owner.acting():
        their_seg = theirs.begin_segment("/rec/theirs/0.mp4", started_at=at(-1))
    before = dump_tables()
    me = current_session(Stream._meta.database)
    tick = stream_state.Tick()
    tick.checkpoint(my_seg, 5, at=at(10))
    tick.complete_segment(their_seg, ended_at=at(10), size_bytes=10)
    tick.begin_segment(theirs, "/rec/theirs/1.mp4", started_at=at(10))
    with pytest.raises(TickFailed) as caught:
        tick.commit()
    assert [(f.index, f.call) for f in caught.value.failures] == [
        (1, "complete segment of /rec/theirs/0.mp4"),
        (2, "begin segment of cam-theirs"),
    ]
    for failure in caught.value.failures:
        assert isinstance(failure.error, OwnershipLost) and failure.error.owner == owner.id
    assert dump_tables() == before  # invariant 15: not a row, not a claim, not an event
    assert theirs.id not in me.owned()
    caught.value.remaining.commit()
    assert recording_row(my_seg)[0] == 5 and recording_row(their_seg)[2:] == (None, "recording")


def test_a_roll_takes_a_free_stream_with_its_event_and_forgets_it_if_the_tick_is_refused(db):
    ((a, seg),) = cams(1)
    free = Stream.register("cam-free", URI)
    me = current_session(Stream._meta.database)
    assert free.id not in me.owned()
    tick = stream_state.Tick()
    pending = tick.begin_segment(free, "/rec/free/0.mp4", started_at=at(10))
    tick.begin_segment(a, seg.path, started_at=at(10))  # refused: the path is taken
    with pytest.raises(TickFailed) as caught:
        tick.commit()
    assert free.id not in me.owned()  # the claim rolled back with the tick
    assert Event.select().where((Event.stream == free) & (Event.type == "stream_claimed")).count() == 0
    caught.value.remaining.commit()
    assert me.owned()[free.id] == 1 and pending.recording is not None
    assert (pending.recording.session_id, pending.recording.session_epoch) == (me.id, 1)
    (claimed,) = Event.select().where((Event.stream == free) & (Event.type == "stream_claimed"))
    assert claimed.data["epoch"] == 1  # invariant 14: the claim's event with the claim


def test_a_dead_sessions_rolls_raise_ownership_lost_and_write_nothing(db):
    ((a, seg),) = cams(1)
    database = Stream._meta.database
    expire(database, current_session(database))
    before = dump_tables()
    tick = stream_state.Tick()
    tick.complete_segment(seg, ended_at=at(10), size_bytes=10)
    tick.begin_segment(a, "/rec/cam-0/1.mp4", started_at=at(10))
    with pytest.raises(OwnershipLost, match="lease expired"):
        tick.commit()
    assert dump_tables() == before


def test_rolls_across_a_clock_step_are_clamped_or_flagged_as_by_the_single_calls(db):
    ahead = utc_now() + dt.timedelta(hours=1)  # began before the wall clock stepped back an hour
    (a, _), (b, _) = cams(2)
    seg_a = a.begin_segment("/rec/cam-0/ahead.mp4", started_at=ahead)
    seg_b = b.begin_segment("/rec/cam-1/ahead.mp4", started_at=ahead)
    seg_a.complete_segment(size_bytes=10)  # the single call: "now" is before the start
    epoch_1970 = dt.datetime(1970, 1, 1, 0, 0, 5, tzinfo=dt.UTC)  # a board without an RTC
    single_1970 = a.begin_segment("/rec/cam-0/1970.mp4", started_at=epoch_1970)
    long_ago = b.begin_segment("/rec/cam-1/long.mp4", started_at=at(0))
    with stream_state.Tick() as tick:
        tick.complete_segment(seg_b, size_bytes=10)  # clamped at the call, as the single call
        pending_1970 = tick.begin_segment(b, "/rec/cam-1/1970.mp4", started_at=epoch_1970)
        tick.complete_segment(long_ago, ended_at=at(0) + dt.timedelta(days=2), size_bytes=1)
    assert recording_row(seg_b)[2:] == recording_row(seg_a)[2:] == (to_millis(ahead), "complete")
    clamped = Recording.get_by_id(seg_b.id).metadata["clock_clamped"]["ended_at"]
    assert clamped["kept"] == ahead.isoformat()
    assert Recording.get_by_id(seg_a.id).metadata.keys() == {"clock_clamped"}
    assert full_row(pending_1970.recording)[11] == full_row(single_1970)[11] == "before_2000"
    assert pending_1970.recording.clock_suspect == "before_2000"
    assert full_row(long_ago)[11] == long_ago.clock_suspect == "too_long"


def test_begins_from_a_template_skip_files_already_on_disk_as_the_single_call_does(db, tmp_path):
    ((a, _seg),) = cams(1)  # its next index is 1
    template = f"{tmp_path}/cam-0/{{index:04d}}.mp4"
    (tmp_path / "cam-0").mkdir()
    for index in (1, 2):  # the disk is ahead of the database (an older backup restored)
        (tmp_path / "cam-0" / f"{index:04d}.mp4").write_bytes(b"footage")
    with stream_state.Tick() as tick:
        first = tick.begin_segment(a, path_template=template, started_at=at(10))
        second = tick.begin_segment(a, path_template=template, started_at=at(11))
    # invariant 16: neither names a file on disk; invariant 3: the counter is past both
    assert [p.recording.segment_index for p in (first, second)] == [3, 4]
    assert second.recording.path == f"{tmp_path}/cam-0/0004.mp4" and next_index(a) == 5
    (skipped,) = Event.select().where(Event.type == "segment_index_skipped")
    assert (skipped.data["first"], skipped.data["last"], skipped.data["next"]) == (1, 2, 3)
    assert (tmp_path / "cam-0" / "0001.mp4").read_bytes() == b"footage"
