"""Restorer: reconcile rows with files after a crash, tell a clean stop from a crash.

Every test here has ``state_restoration`` in its name (``pytest -k state_restoration``).
"""

from __future__ import annotations

import datetime as dt
import os

import pytest

from stream_state import Event, Recording, SegmentState, Stream
from stream_state.restore import Restorer, decide_open_segment
from stream_state.states import EventType

from .dbdump import dump_tables
from .factories import StreamFactory

T0 = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)
MS = 1


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


def write(path, size: int, mtime: dt.datetime | None = None) -> None:
    path.write_bytes(b"\x47" * size)
    if mtime is not None:
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))


# --- the decision as a pure function --------------------------------------------------


def test_state_restoration_decision_keeps_a_file_with_data_as_interrupted():
    decision = decide_open_segment(
        started_ms=1000,
        checkpoint_ms=5000,
        checkpoint_size=10,
        file_size=4096,
        file_mtime_ms=7000,
        now_ms=9000,
    )
    assert (decision.state, decision.ended_ms, decision.size_bytes, decision.evidence) == (
        SegmentState.INTERRUPTED,
        7000,
        4096,
        "file mtime",
    )


def test_state_restoration_decision_distrusts_an_mtime_outside_the_segment():
    for bad_mtime in (500, 10_000_000_000):  # before the start; far in the future
        decision = decide_open_segment(
            started_ms=1000,
            checkpoint_ms=5000,
            checkpoint_size=10,
            file_size=10,
            file_mtime_ms=bad_mtime,
            now_ms=9000,
        )
        assert (decision.ended_ms, decision.evidence) == (5000, "last checkpoint")
    decision = decide_open_segment(
        started_ms=1000, checkpoint_ms=None, checkpoint_size=0, file_size=10, file_mtime_ms=500, now_ms=9000
    )
    assert decision.ended_ms == 1000 and "start time" in decision.evidence


@pytest.mark.parametrize(("size", "evidence"), [(None, "file missing"), (0, "file empty")])
def test_state_restoration_decision_fails_a_segment_without_data(size, evidence):
    decision = decide_open_segment(
        started_ms=1000,
        checkpoint_ms=3000,
        checkpoint_size=99,
        file_size=size,
        file_mtime_ms=2000,
        now_ms=9000,
    )
    assert (decision.state, decision.size_bytes, decision.evidence) == (SegmentState.FAILED, 0, evidence)
    assert decision.ended_ms == 3000


def test_state_restoration_decision_at_a_clean_stop_completes():
    decision = decide_open_segment(
        started_ms=1000,
        checkpoint_ms=None,
        checkpoint_size=0,
        file_size=5,
        file_mtime_ms=2000,
        now_ms=9000,
        clean=True,
    )
    assert decision.state == SegmentState.COMPLETE


# --- restore against a database -----------------------------------------------------------------


def test_state_restoration_on_a_fresh_database(db):
    state = Restorer(db, session="a").restore()
    assert state.streams == () and state.repairs == ()
    assert state.clean_shutdown is None and state.last_stop_at is None


def test_state_restoration_reconciles_open_segments_with_the_disk(db, tmp_path):
    stream = StreamFactory(name="cam-1")
    with_data = stream.begin_segment(tmp_path / "0.mp4", started_at=at(0))
    with_data.checkpoint(1000, at=at(20))
    write(tmp_path / "0.mp4", 2500, mtime=at(31))
    missing = stream.begin_segment(tmp_path / "1.mp4", started_at=at(30))
    empty = stream.begin_segment(tmp_path / "2.mp4", started_at=at(31))
    write(tmp_path / "2.mp4", 0)

    state = Restorer(db, session="after-crash").restore(now=at(60))

    by_id = {r.recording_id: r for r in state.repairs}
    assert by_id[with_data.id].new_state == SegmentState.INTERRUPTED
    assert (by_id[with_data.id].size_bytes, by_id[with_data.id].ended_at) == (2500, at(31))
    assert by_id[missing.id].new_state == SegmentState.FAILED and by_id[missing.id].evidence == "file missing"
    assert by_id[empty.id].new_state == SegmentState.FAILED and by_id[empty.id].evidence == "file empty"
    stored = {r.id: r for r in Recording.select()}
    assert stored[with_data.id].state == SegmentState.INTERRUPTED and stored[with_data.id].size_bytes == 2500
    assert stored[with_data.id].ended_at == at(31)
    assert stored[missing.id].state == SegmentState.FAILED and stored[missing.id].ended_at == at(30)
    assert Recording.open_segments().count() == 0
    assert {s.recording_id for s in state.open_segments} == {with_data.id, missing.id, empty.id}
    # Every repair is an event naming the segment and what was done.
    events = Event.select().where(Event.type == EventType.SEGMENT_REPAIRED)
    assert {(e.data["recording_id"], e.data["new_state"]) for e in events} == {
        (with_data.id, "interrupted"),
        (missing.id, "failed"),
        (empty.id, "failed"),
    }
    assert all(e.stream_id == stream.id for e in events)


def test_state_restoration_finishes_interrupted_deletes(db, tmp_path):
    stream = StreamFactory()
    still_there = stream.begin_segment(tmp_path / "a.mp4", started_at=at(0))
    write(tmp_path / "a.mp4", 100)
    still_there.complete_segment(ended_at=at(60))
    already_gone = stream.begin_segment(tmp_path / "b.mp4", started_at=at(60))
    already_gone.complete_segment(ended_at=at(120), size_bytes=5)
    # A crash after step 1 of the delete (row marked), and one after step 2 (file gone).
    Recording.update(state=SegmentState.DELETING).where(
        Recording.id.in_([still_there.id, already_gone.id])
    ).execute()

    state = Restorer(db, session="s").restore()

    assert not (tmp_path / "a.mp4").exists()
    assert Recording.select().count() == 0
    assert sorted((r.recording_id, r.new_state, r.size_bytes) for r in state.repairs) == [
        (still_there.id, None, 100),
        (already_gone.id, None, 0),
    ]
    assert Event.select().where(Event.type == EventType.SEGMENT_REPAIRED).count() == 2


def test_state_restoration_twice_repairs_nothing_and_returns_the_same_streams(db, tmp_path):
    stream = StreamFactory()
    stream.begin_segment(tmp_path / "0.mp4", started_at=at(0))
    write(tmp_path / "0.mp4", 10)
    first = Restorer(db, session="run-2").restore()
    before = dump_tables()
    second = Restorer(db, session="run-2").restore()
    assert second.repairs == ()
    assert second.streams == first.streams
    assert (second.clean_shutdown, second.last_stop_at) == (first.clean_shutdown, first.last_stop_at)
    assert dump_tables() == before


def test_state_restoration_in_the_same_run_leaves_live_segments_alone(db, tmp_path):
    stream = StreamFactory()
    Restorer(db, session="run").restore()
    live = stream.begin_segment(tmp_path / "live.mp4")
    state = Restorer(db, session="run").restore()
    assert state.repairs == ()
    assert Recording.get_by_id(live.id).state == SegmentState.RECORDING


def test_state_restoration_dry_run_changes_nothing(db, tmp_path):
    stream = StreamFactory()
    open_one = stream.begin_segment(tmp_path / "0.mp4", started_at=at(0))
    write(tmp_path / "0.mp4", 10)
    done = stream.begin_segment(tmp_path / "1.mp4", started_at=at(1))
    write(tmp_path / "1.mp4", 10)
    done.complete_segment(ended_at=at(2))
    Recording.update(state=SegmentState.DELETING).where(Recording.id == done.id).execute()
    before = dump_tables()
    state = Restorer(db, session="dry").restore(dry_run=True)
    assert {r.recording_id for r in state.repairs} == {open_one.id, done.id}
    assert dump_tables() == before
    assert (tmp_path / "1.mp4").exists()


def test_state_restoration_tells_a_clean_stop_from_a_crash(db, tmp_path):
    cam = StreamFactory(name="cam-1", desired_recording=True)
    idle = StreamFactory(name="cam-2")
    Restorer(db, session="run-1").restore(now=at(0))
    segment = cam.begin_segment(tmp_path / "0.mp4", started_at=at(1))
    write(tmp_path / "0.mp4", 300)
    report = Restorer(db, session="run-1").shutdown(now=at(100))
    assert [r.recording_id for r in report.closed] == [segment.id]
    assert Recording.get_by_id(segment.id).state == SegmentState.COMPLETE
    assert report.recording_streams == ("cam-1",)

    after_clean = Restorer(db, session="run-2").restore(now=at(200))
    assert after_clean.clean_shutdown is True and after_clean.last_stop_at == at(100)
    assert after_clean.stream("cam-1").was_recording and not after_clean.stream("cam-2").was_recording
    assert idle.name == "cam-2"

    cam.begin_segment(tmp_path / "1.mp4", started_at=at(201))  # run-2 dies while recording
    after_crash = Restorer(db, session="run-3").restore(now=at(300))
    assert after_crash.clean_shutdown is False
    assert after_crash.last_stop_at >= at(200)
    assert after_crash.stream("cam-1").was_recording
    assert [e.data["clean_shutdown"] for e in Event.select().where(Event.type == EventType.RESTORED)] == [
        None,
        True,
        False,
    ]


def test_state_restoration_scenario_recording_crashes_and_resumes_with_the_next_index(db, tmp_path):
    """A stream records three segments, the process dies in the fourth, the manager resumes."""
    Restorer(db, session="run-1").restore()
    cam = Stream.register(
        "cam-7", "rtsp://admin:hunter2@10.0.0.7/stream1", {"segment_seconds": 60}, recording=True
    )
    cam.set_status("starting")
    cam.set_status("running")
    for index in range(3):
        path = tmp_path / f"cam-7-{index:05d}.mp4"
        segment = cam.begin_segment(path, started_at=at(60 * index))
        write(path, 1000 + index)
        segment.complete_segment(ended_at=at(60 * index + 60))
    crashed = cam.begin_segment(tmp_path / "cam-7-00003.mp4", started_at=at(180))
    write(tmp_path / "cam-7-00003.mp4", 512, mtime=at(200))
    crashed.checkpoint(256, at=at(190))
    # kill -9 here: no shutdown()

    state = Restorer(db, session="run-2").restore(now=at(600))

    snapshot = state.stream("cam-7")
    assert snapshot.uri == "rtsp://admin:hunter2@10.0.0.7/stream1", "the manager gets the real URI"
    assert "hunter2" not in repr(snapshot) and "hunter2" not in repr(state)
    assert snapshot.config == {"segment_seconds": 60}
    assert (snapshot.enabled, snapshot.recording, snapshot.was_recording) == (True, True, True)
    # The dead run's "running" is reset, so the next start is an allowed transition.
    assert snapshot.status == "stopped"
    assert (snapshot.session_ended, snapshot.session) == ("crashed", crashed.session_id)
    assert snapshot.next_segment_index == 4
    assert snapshot.last_segment_path == str(tmp_path / "cam-7-00003.mp4")
    assert snapshot.last_segment_ended_at == at(200)
    assert state.clean_shutdown is False
    # The manager resumes: the segmenter starts at next_segment_index; nothing is overwritten.
    resumed = Stream.by_name("cam-7").begin_segment(tmp_path / "cam-7-00004.mp4", started_at=at(601))
    assert resumed.segment_index == 4
    assert Recording.get_by_id(crashed.id).state == SegmentState.INTERRUPTED


def test_state_restoration_leaves_removed_streams_out(db):
    keep, gone = StreamFactory(), StreamFactory()
    gone.remove()
    state = Restorer(db, session="x").restore()
    assert [s.name for s in state.streams] == [keep.name]


def test_state_restoration_snapshot_is_plain_frozen_data(db):
    StreamFactory(config={"nested": {"a": [1, 2]}})
    state = Restorer(db, session="x").restore()
    snapshot = state.streams[0]
    with pytest.raises(AttributeError):
        snapshot.name = "other"  # type: ignore[misc]
    assert not any(hasattr(value, "_meta") for value in vars(snapshot).values()), "no live model objects"
