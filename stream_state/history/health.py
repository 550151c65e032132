"""Stream health: where every stream stands now, and how it got there."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from ..errors import ValidationError
from ..models import Event, Stream
from ..pwtypes import tuple_rows
from ..states import EventType, HealthState
from ._args import optional_window, resolve_stream


@dataclasses.dataclass(frozen=True, slots=True)
class StreamHealth:
    stream_id: int
    stream: str
    health: HealthState | str
    changed_at: dt.datetime | None
    last_seen_at: dt.datetime | None
    removed: bool


@dataclasses.dataclass(frozen=True, slots=True)
class HealthTransition:
    event_id: int
    stream_id: int
    stream: str
    at: dt.datetime
    old: HealthState | str | None
    new: HealthState | str | None
    reason: str | None


def current_health(include_removed: bool = False) -> list[StreamHealth]:
    """Every stream's health now, by name: one query over the stream table."""
    query = Stream.select(
        Stream.id,
        Stream.name,
        Stream.health,
        Stream.health_changed_at,
        Stream.last_seen_at,
        Stream.removed_at,
    )
    if not include_removed:
        query = query.where(Stream.removed_at.is_null())
    rows = tuple_rows(query.order_by(Stream.name, Stream.id))
    return [
        StreamHealth(
            stream_id=stream_id,
            stream=name,
            health=health,
            changed_at=changed_at,
            last_seen_at=last_seen_at,
            removed=removed_at is not None,
        )
        for stream_id, name, health, changed_at, last_seen_at, removed_at in rows
    ]


def health_transitions(
    stream: Stream | int | str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int | None = None,
) -> list[HealthTransition]:
    """Health changes of one stream (or every stream) in [since, until), oldest first.

    Read from the ``health_changed`` events that ``Stream.record_health``
    writes; one query (the type's or the stream's time index).
    """
    stream_id = None if stream is None else resolve_stream(stream).id
    since_ms, until_ms = optional_window(since, until)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValidationError("limit", limit, "expected a positive integer or None")
    # The three keys are read in SQL (->> on both backends): parsing each
    # event's whole JSON in Python would cost more than the query.
    query = (
        Event.select(
            Event.id,
            Event.ts,
            Event.stream,
            Stream.name,
            Event.data["old"].as_text(),
            Event.data["new"].as_text(),
            Event.data["reason"].as_text(),
        )
        .join(Stream, on=(Event.stream == Stream.id))
        .where(Event.type == EventType.HEALTH_CHANGED.value)
    )
    if stream_id is not None:
        query = query.where(Event.stream == stream_id)
    if since_ms is not None:
        query = query.where(Event.ts >= since_ms)
    if until_ms is not None:
        query = query.where(Event.ts < until_ms)
    query = query.order_by(Event.ts, Event.id)
    if limit is not None:
        query = query.limit(limit)
    return [
        HealthTransition(
            event_id=event_id,
            stream_id=event_stream_id,
            stream=name,
            at=at,
            old=_health(old),
            new=_health(new),
            reason=reason,
        )
        for event_id, at, event_stream_id, name, old, new, reason in tuple_rows(query)
    ]


def _health(value: Any) -> HealthState | str | None:
    if value is None:
        return None
    try:
        return HealthState(value)
    except ValueError:
        return value
