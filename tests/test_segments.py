"""Segments: one Recording row per file, committed before the file is opened."""

from __future__ import annotations

import datetime as dt

import pytest
from playhouse.test_utils import count_queries

from stream_state import (
    AlreadyExists,
    Event,
    InvalidTransition,
    Recording,
    SegmentState,
    Stream,
    ValidationError,
)
from stream_state.errors import StreamRemoved
from stream_state.models.session import writer
from stream_state.states import EventType

from .dbdump import dump_tables
from .factories import StreamFactory

T0 = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)


def seconds(n: float) -> dt.timedelta:
    return dt.timedelta(seconds=n)


def test_begin_segment_commits_an_open_row_with_the_next_index(db, tmp_path):
    stream = StreamFactory()
    first = stream.begin_segment(
        tmp_path / "a.mp4", started_at=T0, storage="disk1", metadata={"codec": "h264"}
    )
    second = stream.begin_segment(str(tmp_path / "b.mp4"), started_at=T0 + seconds(60))
    assert (first.segment_index, second.segment_index) == (0, 1)
    stored = Recording.get_by_id(first.id)
    assert stored.state == SegmentState.RECORDING and stored.is_open
    assert stored.path == str(tmp_path / "a.mp4") and stored.storage == "disk1"
    assert stored.started_at == T0 and stored.metadata == {"codec": "h264"}
    assert Stream.get_by_id(stream.id).next_segment_index == 2


def test_overlapping_open_segments_are_normal(db):
    """splitmuxsink opens fragment N+1 before it closes fragment N."""
    stream = StreamFactory()
    n = stream.begin_segment("/rec/0.mp4", started_at=T0)
    n1 = stream.begin_segment("/rec/1.mp4", started_at=T0 + seconds(59.9))
    assert {r.id for r in Recording.open_segments()} == {n.id, n1.id}
    n.complete_segment(ended_at=T0 + seconds(60), size_bytes=100)
    assert [r.id for r in Recording.open_segments()] == [n1.id]


def test_segment_indexes_are_per_stream_and_never_reused(db):
    one, two = StreamFactory(), StreamFactory()
    indexes = []
    for i in range(3):
        indexes.append(one.begin_segment(f"/rec/one/{i}.mp4").segment_index)
        two.begin_segment(f"/rec/two/{i}.mp4")
    assert indexes == [0, 1, 2]
    Recording.delete().where(Recording.stream == one).execute()  # files gone, rows gone
    assert one.begin_segment("/rec/one/again.mp4").segment_index == 3


def test_a_duplicate_path_is_refused_and_the_counter_does_not_move(db):
    stream = StreamFactory()
    stream.begin_segment("/rec/a.mp4")
    before = dump_tables()
    with pytest.raises(AlreadyExists, match="/rec/a.mp4"):
        stream.begin_segment("/rec/a.mp4")
    with pytest.raises(AlreadyExists):
        StreamFactory().begin_segment("/rec/a.mp4")
    after = dump_tables()
    assert after["recording"] == before["recording"] and after["event"] == before["event"]
    assert Stream.get_by_id(stream.id).next_segment_index == 1


def test_a_removed_stream_cannot_begin_a_segment(db):
    stream = StreamFactory()
    stream.remove()
    with pytest.raises(StreamRemoved):
        stream.begin_segment("/rec/x.mp4")
    assert Recording.select().count() == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"path": ""}, "path"),
        ({"path": None}, "path"),
        ({"path": "/rec/\x00.mp4"}, "path"),
        ({"started_at": dt.datetime(2026, 1, 1)}, "started_at"),
        ({"started_at": "2026-01-01"}, "started_at"),
        ({"storage": 7}, "storage"),
        ({"metadata": {"x": {1, 2}}}, "metadata['x']"),
    ],
)
def test_begin_segment_refuses_bad_input_and_writes_nothing(db, kwargs, field):
    stream = StreamFactory()
    before = dump_tables()
    with pytest.raises(ValidationError) as info:
        stream.begin_segment(**{"path": "/rec/ok.mp4", **kwargs})
    assert info.value.field == field
    assert dump_tables() == before


def test_begin_and_complete_take_two_statements_each(db):
    stream = StreamFactory()
    writer().claim(stream)  # the first write of a process on a stream claims it first
    with count_queries() as begin:
        segment = stream.begin_segment("/rec/q.mp4")
    with count_queries() as complete:
        segment.complete_segment(size_bytes=1)
    # begin: UPDATE ... RETURNING, INSERT; complete: one conditional UPDATE.
    assert begin.count == 2 and complete.count == 1


def test_rows_written_by_the_hot_path_read_back_like_orm_rows(db):
    stream = StreamFactory()
    metadata = {"codec": "h265", "ünïcode": ["a", 1, 2.5, None, True], "nested": {"k": "v"}}
    fast = stream.begin_segment("/rec/fast.mp4", started_at=T0, storage="disk", metadata=metadata)
    orm = Recording.create(
        stream=stream, path="/rec/orm.mp4", storage="disk", segment_index=99, started_at=T0, metadata=metadata
    )
    # Who began the segment: only the hot path (a manager write) knows.
    skip = ("id", "path", "segment_index", "session_id", "session_epoch")
    columns = [f for f in Recording._meta.sorted_field_names if f not in skip]
    stored_fast, stored_orm = Recording.get_by_id(fast.id), Recording.get_by_id(orm.id)
    assert {c: getattr(stored_fast, c) for c in columns} == {c: getattr(stored_orm, c) for c in columns}
    assert {c: getattr(fast, c) for c in columns} == {c: getattr(stored_fast, c) for c in columns}
    assert Recording.select().where(Recording.metadata["codec"] == "h265").count() == 2


def test_begin_segment_returns_its_row_clean_with_its_stream_attached(db):
    stream = StreamFactory()
    segment = stream.begin_segment("/rec/clean.mp4", started_at=T0)
    with count_queries() as reads:
        assert segment.stream is stream  # no query: the row was built around the stream
    assert reads.count == 0
    # Nothing is dirty: a save() has nothing to write (the row is what the database holds).
    assert segment._dirty == set()
    assert segment.started_at is T0  # the caller's time, exact to the millisecond, is kept
    assert segment.state == SegmentState.RECORDING and segment.size_bytes == 0 and not segment.archived


def test_hot_path_statements_are_spelled_once_per_database_and_carry_the_gate(db):
    from stream_state.models import database_proxy
    from stream_state.models.statements import prepared

    hot = prepared(database_proxy)
    assert prepared(db) is hot and hot.db is db
    # invariant 15: the per-second statements are gated in themselves on
    # (owner session, epoch) and the session's lease.
    for sql in (hot.gated_checkpoint, hot.gated_touch_health, hot.segment.claim_index):
        assert '"owner_session_id" = ' in sql and '"owner_epoch" = ' in sql and '"expires_at" > ' in sql
    assert '"owner_session_id" = ' in hot.owner_guard and '"expires_at" > ' in hot.owner_guard


# --- checkpoint ---------------------------------------------------------------------


def test_checkpoint_records_progress_of_an_open_segment(db):
    segment = StreamFactory().begin_segment("/rec/a.mp4", started_at=T0)
    with count_queries() as counter:
        segment.checkpoint(4096, at=T0 + seconds(10))
    assert counter.count == 1
    stored = Recording.get_by_id(segment.id)
    assert (stored.size_bytes, stored.checkpoint_at) == (4096, T0 + seconds(10))
    assert stored.is_open


@pytest.mark.parametrize(
    ("args", "field"),
    [((-1,), "size_bytes"), (("10",), "size_bytes"), ((True,), "size_bytes"), ((10, T0 - seconds(1)), "at")],
)
def test_checkpoint_refuses_bad_input(db, args, field):
    segment = StreamFactory().begin_segment("/rec/a.mp4", started_at=T0)
    before = dump_tables()
    with pytest.raises(ValidationError) as info:
        segment.checkpoint(*args)
    assert info.value.field == field
    assert dump_tables() == before


def test_checkpoint_of_a_closed_segment_is_an_invalid_transition(db):
    segment = StreamFactory().begin_segment("/rec/a.mp4", started_at=T0)
    segment.complete_segment(ended_at=T0 + seconds(60), size_bytes=10)
    with pytest.raises(InvalidTransition, match="complete"):
        segment.checkpoint(20)


# --- complete ---------------------------------------------------------------------------


def test_complete_takes_the_size_from_the_file_and_merges_metadata(db, tmp_path):
    path = tmp_path / "seg.mp4"
    segment = StreamFactory().begin_segment(path, started_at=T0, metadata={"codec": "h264", "fps": 15})
    path.write_bytes(b"\0" * 12345)
    segment.complete_segment(ended_at=T0 + seconds(60), metadata={"fps": 14.9, "frames": 894})
    stored = Recording.get_by_id(segment.id)
    assert stored.state == SegmentState.COMPLETE and not stored.is_open
    assert stored.size_bytes == 12345 and stored.ended_at == T0 + seconds(60)
    assert stored.metadata == {"codec": "h264", "fps": 14.9, "frames": 894}
    assert stored.duration == seconds(60)


def test_completing_twice_with_the_same_values_is_harmless(db):
    segment = StreamFactory().begin_segment("/rec/a.mp4", started_at=T0)
    segment.complete_segment(ended_at=T0 + seconds(60), size_bytes=500)
    before = dump_tables()
    Recording.get_by_id(segment.id).complete_segment(ended_at=T0 + seconds(60), size_bytes=500)
    assert dump_tables() == before
    with pytest.raises(InvalidTransition, match="from complete to complete"):
        segment.complete_segment(ended_at=T0 + seconds(61), size_bytes=500)


def test_complete_refuses_an_end_before_the_start_and_a_missing_file(db):
    segment = StreamFactory().begin_segment("/nonexistent/a.mp4", started_at=T0)
    before = dump_tables()
    with pytest.raises(ValidationError, match="ended_at"):
        segment.complete_segment(ended_at=T0 - seconds(1), size_bytes=1)
    with pytest.raises(ValidationError, match="size_bytes.*cannot be read"):
        segment.complete_segment(ended_at=T0 + seconds(1))
    with pytest.raises(ValidationError, match="size_bytes"):
        segment.complete_segment(ended_at=T0 + seconds(1), size_bytes=-5)
    assert dump_tables() == before


def test_a_failed_segment_cannot_be_completed(db):
    segment = StreamFactory().begin_segment("/rec/a.mp4", started_at=T0)
    segment.fail("encoder crashed", at=T0 + seconds(5))
    with pytest.raises(InvalidTransition, match="from failed to complete"):
        segment.complete_segment(ended_at=T0 + seconds(6), size_bytes=1)


# --- fail -----------------------------------------------------------------------------------


def test_fail_closes_the_segment_and_writes_an_event(db, tmp_path):
    path = tmp_path / "partial.mp4"
    segment = StreamFactory().begin_segment(path, started_at=T0)
    path.write_bytes(b"x" * 77)
    segment.fail("camera went away", at=T0 + seconds(30))
    stored = Recording.get_by_id(segment.id)
    assert stored.state == SegmentState.FAILED
    assert stored.ended_at == T0 + seconds(30) and stored.size_bytes == 77
    (event,) = Event.select().where(Event.type == EventType.SEGMENT_FAILED)
    assert event.data["recording_id"] == segment.id and event.data["reason"] == "camera went away"
    assert event.severity == "error"
    before = dump_tables()
    assert segment.fail("again") is segment
    assert dump_tables() == before, "failing a failed segment does nothing"


def test_a_complete_segment_cannot_fail(db):
    segment = StreamFactory().begin_segment("/rec/a.mp4", started_at=T0)
    segment.complete_segment(ended_at=T0 + seconds(60), size_bytes=1)
    with pytest.raises(InvalidTransition, match="from complete to failed"):
        segment.fail("too late")
    with pytest.raises(ValidationError, match="reason"):
        StreamFactory().begin_segment("/rec/b.mp4").fail("")


# --- queries ----------------------------------------------------------------------------------


def test_queries_compose(db):
    one, two = StreamFactory(), StreamFactory()
    for i in range(5):
        segment = one.begin_segment(f"/rec/one/{i}.mp4", started_at=T0 + seconds(60 * i))
        if i < 4:
            segment.complete_segment(ended_at=T0 + seconds(60 * i + 60), size_bytes=i)
    two.begin_segment("/rec/two/0.mp4", started_at=T0)
    assert [r.segment_index for r in Recording.for_stream(one)] == [0, 1, 2, 3, 4]
    assert Recording.for_stream(one).where(Recording.size_bytes >= 2).count() == 2
    assert [r.path for r in Recording.open_segments().where(Recording.stream == one)] == ["/rec/one/4.mp4"]
    assert Recording.open_segments().count() == 2
    assert [s.name for s in Stream.active()] == sorted([one.name, two.name])


# --- crash-safe delete --------------------------------------------------------------------------


def test_delete_file_removes_the_file_then_the_row(db, tmp_path):
    path = tmp_path / "old.mp4"
    segment = StreamFactory().begin_segment(path, started_at=T0)
    path.write_bytes(b"x" * 300)
    segment.complete_segment(ended_at=T0 + seconds(60))
    assert segment.delete_file() == 300
    assert not path.exists()
    assert Recording.get_or_none(Recording.id == segment.id) is None
    assert segment.delete_file() == 0, "deleting again is harmless"


def test_delete_file_refuses_an_open_segment(db, tmp_path):
    path = tmp_path / "live.mp4"
    segment = StreamFactory().begin_segment(path)
    path.write_bytes(b"x")
    with pytest.raises(InvalidTransition, match="from recording to deleting"):
        segment.delete_file()
    assert path.exists() and Recording.get_by_id(segment.id).state == SegmentState.RECORDING


def test_a_failed_unlink_leaves_the_row_marked_deleting(db, tmp_path, monkeypatch):
    """The row never disappears before its file: a delete that cannot unlink stays pending."""
    path = tmp_path / "stuck.mp4"
    segment = StreamFactory().begin_segment(path, started_at=T0)
    path.write_bytes(b"x" * 10)
    segment.complete_segment(ended_at=T0 + seconds(1))

    def refuse(_path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("stream_state.models.recording.os.unlink", refuse)
    with pytest.raises(PermissionError):
        segment.delete_file()
    assert path.exists()
    assert Recording.get_by_id(segment.id).state == SegmentState.DELETING


def test_a_deleted_segments_id_is_never_handed_out_again(db, tmp_path):
    stream = StreamFactory()
    newest = stream.begin_segment(tmp_path / "a.mp4", started_at=T0)
    newest.complete_segment(ended_at=T0 + seconds(1), size_bytes=0)
    newest.delete_file()
    replacement = stream.begin_segment(tmp_path / "b.mp4", started_at=T0 + seconds(2))
    assert replacement.id > newest.id
