"""Event.record: anything else the manager wants to keep."""

from __future__ import annotations

import datetime as dt

import pytest

from stream_state import Event, NotFound, Severity, ValidationError

from .dbdump import dump_tables
from .factories import EventFactory, StreamFactory

T0 = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)


def test_record_a_stream_event_and_a_system_event(db):
    stream = StreamFactory()
    event = Event.record("motion", stream, severity="warning", message="zone 2", data={"score": 0.93}, at=T0)
    system = Event.record("manager_started", data={"version": "1.2"})
    stored = Event.get_by_id(event.id)
    assert (stored.type, stored.stream_id, stored.severity, stored.message) == (
        "motion",
        stream.id,
        "warning",
        "zone 2",
    )
    assert stored.data == {"score": 0.93} and stored.ts == T0
    assert Event.get_by_id(system.id).stream is None
    assert Event.get_by_id(system.id).severity == Severity.INFO


def test_events_are_stored_with_credentials_masked(db):
    event = Event.record(
        "reconnect",
        StreamFactory(),
        message="lost rtsp://admin:hunter2@cam/1",
        data={"uri": "rtsp://admin:hunter2@cam/1", "api_token": "abc123", "attempt": 3},
    )
    stored = Event.get_by_id(event.id)
    assert "hunter2" not in stored.message and "hunter2" not in repr(stored.data)
    assert stored.data["api_token"] == "***" and stored.data["attempt"] == 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"type": ""}, "type"),
        ({"type": None}, "type"),
        ({"type": "x" * 101}, "type"),
        ({"severity": "loud"}, "severity"),
        ({"message": 12}, "message"),
        ({"data": {"when": dt.datetime(2026, 1, 1)}}, "data['when']"),
        ({"at": dt.datetime(2026, 1, 1)}, "at"),
    ],
)
def test_record_refuses_bad_input_and_writes_nothing(db, kwargs, field):
    EventFactory()
    before = dump_tables()
    with pytest.raises(ValidationError) as info:
        Event.record(**{"type": "note", **kwargs})
    assert info.value.field == field
    assert dump_tables() == before


def test_an_unknown_stream_is_not_found_and_writes_nothing(db):
    before = dump_tables()
    with pytest.raises(NotFound, match="stream"):
        Event.record("note", stream=999_999)
    assert dump_tables() == before


def test_strings_are_stored_literally(db):
    text = "'; DELETE FROM event; -- \u202e\ttab ünïcödé"
    event = Event.record("note", message=text, data={"k": text})
    stored = Event.get_by_id(event.id)
    assert stored.message == text and stored.data == {"k": text}
