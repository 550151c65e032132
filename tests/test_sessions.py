"""Sessions, leases and fencing (issue 14): every manager write is gated on (owner session, epoch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream_state import Event, MetricSample, Recording, Restorer, Stream
from stream_state.errors import AlreadyExists, OwnershipLost, ValidationError
from stream_state.models import Session
from stream_state.models.session import current_session, forget_process_session, process_gone, process_start
from stream_state.sessions import claim_streams, list_sessions
from stream_state.states import HealthState, SegmentState, StreamStatus

from .dbdump import dump_tables
from .factories import StreamFactory
from .sessionkit import expire

REPO = Path(__file__).resolve().parent.parent


def other(ttl: float = 30.0) -> Session:
    """A second session in this process (another manager, as far as the database can tell)."""
    return Session.open(ttl=ttl, register=False)


def claim_events(stream) -> list[Event]:
    return list(
        Event.select().where((Event.stream == stream) & (Event.type == "stream_claimed")).order_by(Event.id)
    )


# --- the session row and its lease -----------------------------------------------------------------


def test_a_session_lease_comes_from_the_database_clock(db):
    session = Session.open(node="node-a", ttl=5, register=False)
    row = Session.get_by_id(session.id)
    assert (row.node, row.pid, row.ttl_ms) == ("node-a", os.getpid(), 5000)
    assert (row.expires_at - row.started_at).total_seconds() == 5
    before = row.expires_at
    time.sleep(0.02)
    renewal = session.renew()
    assert renewal.expires_at > before and renewal.lost == () and renewal.gained == ()
    session.close()
    closed = Session.get_by_id(session.id)
    assert closed.closed_at is not None and closed.clean is True and closed.ended == "clean"
    with pytest.raises(OwnershipLost, match="closed"):
        session.renew()


@pytest.mark.parametrize("ttl", [0, -1, 0.5, True, "30", 10**9])
def test_a_bad_ttl_is_refused(db, ttl):
    with pytest.raises(ValidationError, match="ttl"):
        Session.open(ttl=ttl, register=False)


def test_an_expired_lease_is_dead_for_good(db):
    session = other()
    expire(db, session)
    with pytest.raises(OwnershipLost, match="lease expired"):
        session.renew()
    assert session.is_dead


def test_process_identity_tells_pid_reuse_apart():
    mine = process_start(os.getpid())
    assert mine is not None and not process_gone(os.getpid(), mine)
    boot, ticks = mine.split(":")
    assert process_gone(os.getpid(), f"{boot}:{int(ticks) + 1}"), (
        "same pid, another start time: another process"
    )
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_start(child.pid)
    child.wait()
    assert started is None or process_gone(child.pid, started)


# --- ownership and fencing ---------------------------------------------------------------------------


def test_the_first_manager_write_claims_a_free_stream_with_an_event(db, tmp_path):
    stream = StreamFactory()
    segment = stream.begin_segment(tmp_path / "0.mp4")
    me = current_session(db)
    stored = Stream.get_by_id(stream.id)
    assert (stored.owner_session_id, stored.owner_epoch) == (me.id, 1)
    assert (segment.session_id, segment.session_epoch) == (me.id, 1)
    (claimed,) = claim_events(stream)
    assert claimed.data["session"] == me.id and claimed.data["epoch"] == 1
    assert claimed.data["previous_session"] is None


def test_a_live_owner_keeps_its_stream_and_the_other_writes_nothing(db, tmp_path):
    stream = StreamFactory()
    segment = stream.begin_segment(tmp_path / "0.mp4")
    owner = current_session(db)
    intruder = other()
    before = dump_tables()
    with intruder.acting():
        with pytest.raises(OwnershipLost) as refused:
            stream.begin_segment(tmp_path / "1.mp4")
        assert refused.value.stream == stream.name and refused.value.owner == owner.id
        with pytest.raises(OwnershipLost):
            segment.checkpoint(10)
        with pytest.raises(OwnershipLost):
            segment.complete_segment(size_bytes=10)
        with pytest.raises(OwnershipLost):
            segment.fail("intruder")
        with pytest.raises(OwnershipLost):
            stream.set_status("starting")
        with pytest.raises(OwnershipLost):
            stream.record_health("healthy")
        with pytest.raises(OwnershipLost):
            Event.record("note", stream, message="from the intruder")
        with pytest.raises(OwnershipLost):
            MetricSample.record("fps", 25.0, stream=stream)
    assert dump_tables() == before
    # Operator writes are not gated.
    with intruder.acting():
        assert stream.set_desired(recording=True)
        assert stream.update_config({"fps": 30})


def test_a_paused_owner_cannot_write_after_another_took_over(db, tmp_path):
    stream = StreamFactory()
    paused = other(ttl=5)
    with paused.acting():
        segment = stream.begin_segment(tmp_path / "0.mp4")
        stream.record_health("healthy")
    expire(db, paused)  # SIGSTOP past the lease
    taker = other()
    with taker.acting():
        stream.set_status("starting")  # takes the stream: its owner is dead
    assert Stream.get_by_id(stream.id).owner_session_id == taker.id
    before = dump_tables()
    with paused.acting():  # SIGCONT: its next writes are refused, whatever it believed
        for write in (
            lambda: segment.checkpoint(100),
            lambda: segment.complete_segment(size_bytes=100),
            lambda: stream.begin_segment(tmp_path / "1.mp4"),
            lambda: stream.record_health("healthy"),
        ):
            with pytest.raises(OwnershipLost):
                write()
    assert dump_tables() == before
    events = claim_events(stream)
    assert [(e.data["session"], e.data["epoch"]) for e in events] == [(paused.id, 1), (taker.id, 2)]
    assert events[1].data["previous_session"] == paused.id and events[1].data["previous_ended"] == "expired"


def test_an_expired_owner_writes_nothing_even_when_nobody_took_over(db, tmp_path):
    stream = StreamFactory()
    owner = other(ttl=5)
    with owner.acting():
        segment = stream.begin_segment(tmp_path / "0.mp4")
    expire(db, owner)
    with owner.acting(), pytest.raises(OwnershipLost, match="lease expired"):
        segment.complete_segment(size_bytes=1)
    assert Recording.get_by_id(segment.id).state == SegmentState.RECORDING


def test_a_refused_first_write_claims_nothing(db, tmp_path):
    stream = StreamFactory()
    stream.begin_segment(tmp_path / "a.mp4")
    fresh = StreamFactory()
    with pytest.raises(AlreadyExists):
        fresh.begin_segment(tmp_path / "a.mp4")  # duplicate path
    assert Stream.get_by_id(fresh.id).owner_session_id is None and claim_events(fresh) == []
    # ... and the next write claims it normally.
    fresh.begin_segment(tmp_path / "b.mp4")
    assert Stream.get_by_id(fresh.id).owner_epoch == 1


def test_release_then_claim_bumps_the_epoch(db, tmp_path):
    stream = StreamFactory()
    stream.record_health("healthy")
    me = current_session(db)
    assert me.release(stream)
    assert not me.release(stream)
    assert Stream.get_by_id(stream.id).owner_session_id is None
    taker = other()
    with taker.acting():
        stream.record_health("degraded")
    assert Stream.get_by_id(stream.id).owner_epoch == 3
    with pytest.raises(OwnershipLost):
        stream.record_health("healthy")


# --- restore and the scenarios of the issue -------------------------------------------------------------


def test_scenario_operator_restore_next_to_a_live_manager_changes_nothing_of_it(db, tmp_path):
    stream = StreamFactory()
    stream.set_status("starting")
    stream.set_status("running")
    stream.record_health("healthy")
    live = stream.begin_segment(tmp_path / "live.mp4")
    (tmp_path / "live.mp4").write_bytes(b"x" * 10)
    live.checkpoint(5)
    before = dump_tables()
    operator = other()
    state = Restorer(db, session=operator).restore()
    assert state.repairs == ()
    assert dump_tables()["recording"] == before["recording"]
    assert dump_tables()["stream"] == before["stream"]
    snapshot = state.stream(stream.name)
    assert snapshot.session == current_session(db).id and snapshot.session_ended is None
    Restorer(db, session=operator).shutdown()  # another process's clean stop: not ours to close
    assert Recording.get_by_id(live.id).state == SegmentState.RECORDING
    live.checkpoint(10)  # the manager goes on
    live.complete_segment(size_bytes=10)


def test_scenario_killed_while_stopping_can_start_again_after_restore(db):
    stream = StreamFactory()
    dead = other()
    with dead.acting():
        stream.set_status("starting")
        stream.set_status("running")
        stream.record_health("degraded")
        stream.set_status("stopping")
    expire(db, dead)  # SIGKILL, lease ran out
    state = Restorer(db, session=other()).restore()
    snapshot = state.stream(stream.name)
    assert (snapshot.status, snapshot.health) == (StreamStatus.ERROR, HealthState.UNKNOWN)
    assert (snapshot.session, snapshot.session_ended) == (dead.id, "expired")
    reset = Event.select().where((Event.stream == stream) & (Event.data["reason"] == "session ended"))
    assert sorted(e.type for e in reset) == ["health_changed", "status_changed"]
    assert stream.set_status("starting")  # no impossible transition
    assert Restorer(db, session=other()).restore().repairs == ()


def test_a_clean_stop_resets_statuses_and_health_at_the_next_restore(db, tmp_path):
    stream = StreamFactory()
    run = other()
    with run.acting():
        stream.set_status("starting")
        stream.set_status("running")
        stream.record_health("healthy")
        segment = stream.begin_segment(tmp_path / "0.mp4")
        (tmp_path / "0.mp4").write_bytes(b"abc")
        report = Restorer(db, session=run).shutdown()
    assert [r.recording_id for r in report.closed] == [segment.id]
    assert Session.get_by_id(run.id).ended == "clean"
    state = Restorer(db, session=other()).restore()
    snapshot = state.stream(stream.name)
    assert (snapshot.status, snapshot.health, snapshot.session_ended) == ("stopped", "unknown", "clean")
    assert state.clean_shutdown is True


def test_scenario_killed_retention_delete_is_finished_only_once_its_session_is_dead(db, tmp_path):
    stream = StreamFactory()
    segment = stream.begin_segment(tmp_path / "0.mp4")
    (tmp_path / "0.mp4").write_bytes(b"abc")
    segment.complete_segment()
    retention = other()
    Recording.update(state=SegmentState.DELETING, busy_session_id=retention.id).where(
        Recording.id == segment.id
    ).execute()
    assert Restorer(db, session=other()).restore().repairs == ()  # the retention run lives
    assert Recording.get_by_id(segment.id).state == SegmentState.DELETING
    expire(db, retention)  # killed
    state = Restorer(db, session=other()).restore()
    assert [(r.recording_id, r.new_state) for r in state.repairs] == [(segment.id, None)]
    assert not (tmp_path / "0.mp4").exists() and Recording.get_or_none(Recording.id == segment.id) is None


def test_restore_repairs_only_dead_sessions_segments(db, tmp_path):
    a, b = StreamFactory(), StreamFactory()
    dead, alive = other(), other()
    with dead.acting():
        lost = a.begin_segment(tmp_path / "a.mp4")
    with alive.acting():
        kept = b.begin_segment(tmp_path / "b.mp4")
    (tmp_path / "a.mp4").write_bytes(b"a" * 100)
    expire(db, dead)
    state = Restorer(db, session=other()).restore()
    assert [r.recording_id for r in state.repairs] == [lost.id]
    assert Recording.get_by_id(lost.id).state == SegmentState.INTERRUPTED
    assert Recording.get_by_id(kept.id).state == SegmentState.RECORDING
    assert state.stream(a.name).was_recording and state.stream(a.name).session_ended == "expired"


# --- several processes ---------------------------------------------------------------------------------

CHILD = """
import os, sys, time
from stream_state import open_database, Stream
db = open_database(sys.argv[1], **({{"options": sys.argv[2]}} if sys.argv[2] else {{}}))
stream = Stream.by_name("cam-child")
segment = stream.begin_segment(os.path.join(sys.argv[3], "child-%d.mp4" % os.getpid()))
open(segment.path, "wb").write(b"x" * 1000)
print(segment.id, flush=True)
{tail}
"""


def _url(backend, db) -> tuple[str, str]:
    if backend.name == "sqlite":
        return f"sqlite:///{db.database}", ""
    options = db.connect_params.get("options", "")
    return backend.pg_url, options


def _child(backend, db, tmp_path, tail: str, ttl_env: str | None = None) -> subprocess.Popen:
    url, options = _url(backend, db)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD.format(tail=tail), url, options, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_scenario_supervisor_restores_once_and_repairs_a_killed_child(backend, db, tmp_path, monkeypatch):
    Stream.register("cam-child", "rtsp://cam/child")
    supervisor = Restorer(db).restore()
    assert supervisor.repairs == ()
    child = _child(backend, db, tmp_path, "time.sleep(60)")
    recording_id = int(child.stdout.readline())
    # While the child lives, the supervisor's restore leaves its segment alone.
    assert Restorer(db).restore().repairs == ()
    child.send_signal(signal.SIGKILL)
    child.wait()
    child_session = Recording.get_by_id(recording_id).session_id
    if backend.name == "postgres":
        expire(db, Session.get_by_id(child_session))  # the lease decides on PostgreSQL; skip the wait
    state = Restorer(db).restore()  # the same run of the supervisor: it still repairs the dead child
    assert [r.recording_id for r in state.repairs] == [recording_id]
    assert Recording.get_by_id(recording_id).state == SegmentState.INTERRUPTED
    ended = Session.get_by_id(child_session).ended
    assert ended == ("crashed" if backend.name == "sqlite" else "expired")
    assert Recording.open_segments().count() == 0


def test_scenario_a_forked_child_writes_through_a_session_of_its_own(db, tmp_path):
    stream = StreamFactory()
    parent = current_session(db)
    child_stream = StreamFactory()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            # Never close the parent's connections from the child (that would
            # end them for the parent too): forget them and connect afresh.
            db._state.reset()
            if hasattr(db, "_in_use"):
                db._in_use.clear()
                db._connections.clear()
            segment = child_stream.begin_segment(tmp_path / "child.mp4")
            os.write(write, json.dumps([current_session(db).id, segment.session_id]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    child_session, segment_session = json.loads(os.read(read, 1000))
    assert child_session != parent.id and segment_session == child_session
    assert current_session(db) is parent
    stream.record_health("healthy")  # the parent's own streams are untouched by the child
    # The child exited without closing: its segment is a dead session's leftover.
    expire(db, Session.get_by_id(child_session))
    state = Restorer(db).restore()
    assert [r.stream for r in state.repairs] == [child_stream.name]


# --- sharing streams between nodes ---------------------------------------------------------------


def test_claim_streams_takes_a_fair_share_and_skips_live_owners(db):
    streams = [StreamFactory() for _ in range(10)]
    a, b = other(), other()
    first = a.claim_streams()
    assert len(first) == 10  # alone: the fair share is everything
    assert b.claim_streams() == []  # all owned by a live session
    claims = claim_streams(b, fair_share=5)
    assert claims == []
    expire(db, a)
    taken = b.claim_streams()
    assert len(taken) == 10 and {c.previous_ended for c in taken} == {"expired"}
    assert {c.epoch for c in taken} == {2}
    assert {s.owner_session_id for s in Stream.select()} == {b.id}
    assert len(streams) == 10


def test_a_joining_node_gets_streams_released_at_the_next_renew(db):
    for _ in range(9):
        StreamFactory()
    a = other()
    assert len(a.claim_streams()) == 9
    b = other()
    b.claim_streams()  # nothing free: marks b as a claiming node
    renewal = a.renew()
    assert len(renewal.release) == 4  # a keeps ceil(9 / 2) = 5
    for stream_id in renewal.release:
        assert a.release(stream_id)
    gained = b.renew(claim=True).gained
    assert sorted(gained) == sorted(renewal.release)
    assert a.renew().release == () and b.renew().release == ()
    counts = {s.id: s.streams for s in list_sessions(db)}
    assert (counts[a.id], counts[b.id]) == (5, 4)


def test_a_takeover_repairs_the_dead_owners_open_segments(db, tmp_path):
    stream = StreamFactory()
    dead = other()
    with dead.acting():
        stream.set_status("starting")
        segment = stream.begin_segment(tmp_path / "0.mp4")
    (tmp_path / "0.mp4").write_bytes(b"x" * 50)
    expire(db, dead)
    (claim,) = other().claim_streams()
    assert claim.next_segment_index == 1 and claim.previous_session == dead.id
    assert [(r.recording_id, r.new_state) for r in claim.repairs] == [(segment.id, SegmentState.INTERRUPTED)]
    assert Stream.get_by_id(stream.id).status == StreamStatus.ERROR


def test_sessions_are_listed_with_lease_and_streams(db):
    stream = StreamFactory()
    stream.record_health("healthy")
    me = current_session(db)
    gone = other()
    gone.close()
    listed = {s.id: s for s in list_sessions(db)}
    assert listed[me.id].alive and listed[me.id].streams == 1 and listed[me.id].lease_left > 0
    assert not listed[gone.id].alive and listed[gone.id].ended == "clean"
    forget_process_session(db)
    assert Session.get_by_id(me.id).ended == "clean"
