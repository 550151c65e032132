"""Stream: register, config, desired state, status, health, removal, secrets."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from stream_state import (
    Event,
    HealthState,
    InvalidTransition,
    NotFound,
    Stream,
    StreamStatus,
    ValidationError,
)
from stream_state.errors import StreamRemoved
from stream_state.states import EventType

from .dbdump import dump_tables
from .factories import StreamFactory

SECRET_URI = "rtsp://admin:hunter2@10.0.0.7:554/stream1"


def events_of(stream, type_=None):
    # Ownership events (a session taking the stream on its first write) aside.
    query = (
        Event.select()
        .where((Event.stream == stream) & Event.type.not_in(["stream_claimed", "stream_released"]))
        .order_by(Event.id)
    )
    if type_:
        query = query.where(Event.type == type_)
    return list(query)


# --- register ---------------------------------------------------------------------


def test_register_creates_a_stream_with_defaults_and_an_event(db):
    stream = Stream.register("cam-1", "rtsp://10.0.0.7/stream1", {"fps": 15})
    fresh = Stream.by_name("cam-1")
    assert fresh.id == stream.id
    assert fresh.config == {"fps": 15}
    assert (fresh.desired_enabled, fresh.desired_recording) == (True, False)
    assert fresh.status == StreamStatus.STOPPED and fresh.health == HealthState.UNKNOWN
    assert fresh.next_segment_index == 0
    assert [e.type for e in events_of(stream)] == [EventType.STREAM_REGISTERED]


def test_register_again_updates_in_place_and_records_each_change(db):
    first = Stream.register("cam-1", "rtsp://10.0.0.7/a", {"fps": 15}, recording=False)
    again = Stream.register("cam-1", "rtsp://10.0.0.8/a", {"fps": 30}, recording=True)
    assert again.id == first.id
    fresh = Stream.by_name("cam-1")
    assert (fresh.uri, fresh.config, fresh.desired_recording) == ("rtsp://10.0.0.8/a", {"fps": 30}, True)
    assert [e.type for e in events_of(first)] == [
        EventType.STREAM_REGISTERED,
        EventType.STREAM_UPDATED,
        EventType.CONFIG_CHANGED,
        EventType.DESIRED_CHANGED,
    ]
    assert Stream.select().count() == 1


def test_register_with_nothing_new_writes_nothing(db):
    Stream.register("cam-1", "rtsp://10.0.0.7/a", {"fps": 15})
    before = dump_tables()
    Stream.register("cam-1", "rtsp://10.0.0.7/a", {"fps": 15})
    Stream.register("cam-1", "rtsp://10.0.0.7/a")  # config=None keeps the config
    assert dump_tables() == before


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": " cam"}, "name"),
        ({"name": "cam\n1"}, "name"),
        ({"name": None}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"uri": "not a uri"}, "uri"),
        ({"uri": "rtsp://"}, "uri"),
        ({"config": {"roi": object()}}, "config['roi']"),
        ({"config": "fps=15"}, "config"),
        ({"enabled": "yes"}, "enabled"),
        ({"recording": 1}, "recording"),
        ({"colour": True}, "colour"),
    ],
)
def test_register_refuses_bad_input_and_writes_nothing(db, kwargs, field):
    StreamFactory(name="cam-0")
    before = dump_tables()
    arguments = {"name": "cam-1", "uri": "rtsp://10.0.0.7/a", **kwargs}
    with pytest.raises(ValidationError) as info:
        Stream.register(**arguments)
    assert info.value.field == field
    assert field in str(info.value)
    assert dump_tables() == before


def test_names_are_stored_literally(db):
    name = "cam'); DROP TABLE stream; --"
    Stream.register(name, "rtsp://cam/1")
    assert Stream.by_name(name).name == name
    assert "stream" in db.get_tables()


# --- config and desired state --------------------------------------------------------------


def test_update_config_records_which_keys_changed_but_no_secrets(db):
    stream = Stream.register("cam-1", "rtsp://cam/1", {"fps": 15, "password": "old-pass", "bitrate": 4000})
    assert stream.update_config(
        {"fps": 30, "password": "new-pass", "source": "rtsp://u:new-pass@cam/2", "bitrate": 4000}
    )
    (event,) = events_of(stream, EventType.CONFIG_CHANGED)
    assert event.data["changed"]["fps"] == {"old": 15, "new": 30}
    assert set(event.data["changed"]) == {"fps", "password"}
    assert set(event.data["added"]) == {"source"}
    text = repr(event.data) + (event.message or "")
    assert "old-pass" not in text and "new-pass" not in text
    assert Stream.by_name("cam-1").config["password"] == "new-pass", "the real value is stored"


def test_update_config_unchanged_writes_nothing(db):
    stream = Stream.register("cam-1", "rtsp://cam/1", {"fps": 15})
    before = dump_tables()
    assert stream.update_config({"fps": 15}) is False
    assert dump_tables() == before


def test_set_desired(db):
    stream = Stream.register("cam-1", "rtsp://cam/1")
    assert stream.set_desired(recording=True) is True
    assert stream.set_desired(recording=True) is False
    assert stream.set_desired(enabled=False, recording=False) is True
    fresh = Stream.by_name("cam-1")
    assert (fresh.desired_enabled, fresh.desired_recording) == (False, False)
    assert len(events_of(stream, EventType.DESIRED_CHANGED)) == 2
    with pytest.raises(ValidationError, match="enabled"):
        stream.set_desired(enabled="no")
    with pytest.raises(ValidationError):
        stream.set_desired()


# --- status ----------------------------------------------------------------------------


def test_set_status_follows_the_transition_map_and_writes_events(db):
    stream = StreamFactory()
    assert stream.set_status("starting") is True
    assert stream.set_status(StreamStatus.RUNNING, reason="first frame") is True
    assert stream.set_status("running") is False
    events = events_of(stream, EventType.STATUS_CHANGED)
    assert [(e.data["old"], e.data["new"]) for e in events] == [
        ("stopped", "starting"),
        ("starting", "running"),
    ]
    assert events[1].data["reason"] == "first frame"
    fresh = Stream.get_by_id(stream.id)
    assert fresh.status == StreamStatus.RUNNING and fresh.status_changed_at is not None


def test_a_refused_status_names_current_and_requested_and_writes_nothing(db):
    stream = StreamFactory()
    before = dump_tables()
    with pytest.raises(InvalidTransition, match="from stopped to running"):
        stream.set_status("running")
    with pytest.raises(ValidationError, match="status='flying'"):
        stream.set_status("flying")
    assert dump_tables() == before


def test_set_status_decides_on_the_stored_status_not_a_stale_object(db):
    stream = StreamFactory()
    Stream.get_by_id(stream.id).set_status("starting")  # another handle moves it on
    assert stream.status == StreamStatus.STOPPED, "this handle is stale"
    assert stream.set_status("running") is True  # allowed from the stored status
    last = events_of(stream, EventType.STATUS_CHANGED)[-1]
    assert (last.data["old"], last.data["new"]) == ("starting", "running")
    assert stream.status == StreamStatus.RUNNING


# --- health ----------------------------------------------------------------------------


def test_record_health_writes_an_event_only_on_change(db):
    stream = StreamFactory()
    t0 = dt.datetime(2026, 11, 26, 3, 0, tzinfo=dt.UTC)
    assert stream.record_health("healthy", at=t0) is True
    for second in range(1, 50):
        assert stream.record_health("healthy", at=t0 + dt.timedelta(seconds=second)) is False
    assert stream.record_health(
        "degraded", reason="packet loss 4%", data={"loss": 0.04}, at=t0 + dt.timedelta(minutes=1)
    )
    events = events_of(stream, EventType.HEALTH_CHANGED)
    assert [(e.data["old"], e.data["new"]) for e in events] == [
        ("unknown", "healthy"),
        ("healthy", "degraded"),
    ]
    assert events[1].severity == "warning" and events[1].data["detail"] == {"loss": 0.04}
    fresh = Stream.get_by_id(stream.id)
    assert fresh.health == HealthState.DEGRADED
    assert fresh.health_changed_at == t0 + dt.timedelta(minutes=1)
    assert fresh.last_seen_at == t0 + dt.timedelta(minutes=1)


def test_repeated_health_only_refreshes_last_seen(db):
    stream = StreamFactory()
    stream.record_health("healthy")
    events_before = Event.select().count()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    stream.record_health("healthy", at=later)
    assert Event.select().count() == events_before
    assert Stream.get_by_id(stream.id).last_seen_at == later.replace(
        microsecond=later.microsecond // 1000 * 1000
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"state": "sick"}, "state"),
        ({"state": "unknown"}, "state"),
        ({"state": HealthState.UNKNOWN}, "state"),
        ({"state": "HEALTHY"}, "state"),
        ({"state": ["healthy"]}, "state"),
        ({"state": "healthy", "data": {"x": float("nan")}}, "data['x']"),
        ({"state": "healthy", "at": dt.datetime(2026, 1, 1)}, "at"),
        ({"state": "healthy", "reason": 5}, "reason"),
    ],
)
def test_record_health_refuses_bad_input_and_writes_nothing(db, kwargs, field):
    stream = StreamFactory()
    before = dump_tables()
    with pytest.raises(ValidationError) as info:
        stream.record_health(**kwargs)
    assert info.value.field == field
    assert dump_tables() == before


# --- removal -------------------------------------------------------------------------------


def test_remove_is_a_soft_delete_and_frees_the_name(db):
    stream = Stream.register("cam-1", "rtsp://cam/1")
    stream.record_health("healthy")
    assert stream.remove() is True
    assert stream.remove() is False
    with pytest.raises(NotFound):
        Stream.by_name("cam-1")
    assert [s.name for s in Stream.active()] == []
    assert len(events_of(stream)) == 3, "history stays: registered, health, removed"
    again = Stream.register("cam-1", "rtsp://cam/2")
    assert again.id != stream.id
    assert [s.id for s in Stream.active()] == [again.id]


def test_a_removed_stream_takes_no_writes(db):
    stream = StreamFactory()
    stream.remove()
    before = dump_tables()
    for call in (
        lambda: stream.set_status("starting"),
        lambda: stream.record_health("failed"),
        lambda: stream.update_config({"fps": 1}),
        lambda: stream.set_desired(enabled=False),
        lambda: stream.begin_segment("/rec/x.mp4"),
    ):
        with pytest.raises(StreamRemoved, match="removed"):
            call()
    assert dump_tables() == before


def test_remove_is_refused_while_a_segment_is_open(db):
    stream = StreamFactory()
    segment = stream.begin_segment("/rec/a.mp4")
    with pytest.raises(InvalidTransition, match="still open"):
        stream.remove()
    segment.complete_segment(size_bytes=10)
    assert stream.remove() is True


# --- secrets ---------------------------------------------------------------------------


def test_credentials_are_stored_but_never_shown(db, caplog):
    caplog.set_level(logging.DEBUG, logger="stream_state")
    stream = Stream.register("cam-1", SECRET_URI, {"password": "hunter2"})
    stream.set_status("starting")
    stream.record_health("failed", reason=f"cannot open {SECRET_URI}")
    Stream.register("cam-1", SECRET_URI.replace("10.0.0.7", "10.0.0.8"))
    assert Stream.by_name("cam-1").uri == SECRET_URI.replace("10.0.0.7", "10.0.0.8")
    shown = [repr(stream), str(stream), stream.display_uri, caplog.text]
    shown += [f"{e.message} {e.data}" for e in Event.select()]
    try:
        stream.set_status("running")
        stream.set_status("stopping")
    except InvalidTransition as exc:
        shown.append(str(exc))
    assert all("hunter2" not in text for text in shown), shown
    assert "admin:***@10.0.0.7" in stream.display_uri or "admin:***@10.0.0.8" in stream.display_uri


def test_a_config_change_of_any_size_is_saved_with_a_summarised_event(db):
    """Issue 13, item 14: 800 changed keys made the event's message too long and lost the config."""
    cam = Stream.register("cam-1", "rtsp://cam/1", {f"old_setting_number_{i:04d}": i for i in range(400)})
    new = {f"a_rather_long_configuration_key_{i:04d}_" + "x" * 40: i for i in range(800)}
    assert cam.update_config(new) is True
    assert Stream.by_name("cam-1").config == new
    event = Event.select().where(Event.type == "config_changed").order_by(Event.id.desc()).get()
    assert len(event.message) < 1000
    assert "1200 keys: 800 added, 400 removed, 0 changed" in event.message
    assert len(event.data["added"]) == 800 and len(event.data["removed"]) == 400
    huge_key = {"k" * 5000: 1}
    assert Stream.register("cam-1", "rtsp://cam/1", huge_key).config == huge_key


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200b", "\ufeff", "\u00ad", "\U000e0041"])
def test_names_refuse_unicode_format_characters(db, char):
    """Issue 13, item 16: U+202E in a name reversed how the CLI's tables read."""
    before = dump_tables()
    with pytest.raises(ValidationError, match="format characters") as info:
        Stream.register(f"cam{char}1", "rtsp://cam/1")
    assert info.value.field == "name"
    assert dump_tables() == before
