"""The event log, a page at a time."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection
from typing import Any

import peewee as pw

from ..errors import ValidationError
from ..models import Event, Stream
from ..states import Severity
from ..timeutil import to_millis
from ..validate import require_choice, require_text
from ._args import optional_window, resolve_stream

MAX_PAGE = 10_000

_SEVERITY_RANK = {severity: rank for rank, severity in enumerate(Severity)}


@dataclasses.dataclass(frozen=True, slots=True)
class EventPage:
    """One page of events, newest first; pass ``next_cursor`` to get the next (None: no more).

    Each event carries ``stream_name`` (None for a system event), read in the
    same query; ``event.stream`` would cost a query per event.
    """

    events: tuple[Event, ...]
    next_cursor: str | None


def events(
    *,
    stream: Stream | int | str | None = None,
    type: str | None = None,
    severity: Severity | str | Collection[Severity | str] | None = None,
    min_severity: Severity | str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> EventPage:
    """A page of events, newest first, filtered by stream, type, severity and time.

    ``cursor`` is the ``next_cursor`` of the previous page: pages are cut at
    a (time, id) position, not an offset, so each page is one index walk
    however deep, and events written meanwhile neither repeat nor shift a
    row into the next page. ``severity`` keeps the given level(s);
    ``min_severity`` keeps that level and above. One query per page, with
    each event's stream name joined in (``event.stream_name``).

    The walk is on (stream, time), (type, time) or time alone; a severity
    is checked on the way, so asking for a rare one over a long history
    reads far: bound it with ``since``.
    """
    stream_id = None if stream is None else resolve_stream(stream).id
    event_type = None if type is None else require_text("type", type, max_length=100)
    severities = _severities(severity, min_severity)
    since_ms, until_ms = optional_window(since, until)
    position = _parse_cursor(cursor)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ValidationError("limit", limit, f"expected an integer from 1 to {MAX_PAGE}")

    query = Event.select(Event, Stream.name.alias("stream_name")).join(
        Stream, pw.JOIN.LEFT_OUTER, on=(Event.stream == Stream.id)
    )
    if stream_id is not None:
        query = query.where(Event.stream == stream_id)
    if event_type is not None:
        query = query.where(Event.type == event_type)
    if severities is not None:
        query = query.where(Event.severity.in_(severities))
    if since_ms is not None:
        query = query.where(Event.ts >= since_ms)
    if until_ms is not None:
        query = query.where(Event.ts < until_ms)
    if position is not None:
        query = query.where(pw.Tuple(Event.ts, Event.id) < pw.Tuple(*position))
    # objects(): plain Event instances with the name as an attribute, not a
    # half-loaded Stream that a careless save() would write back.
    rows = list(query.order_by(Event.ts.desc(), Event.id.desc()).limit(limit + 1).objects())
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if more:
        last = rows[-1]
        next_cursor = f"{to_millis(last.ts)}_{last.id}"
    return EventPage(events=tuple(rows), next_cursor=next_cursor)


def _parse_cursor(cursor: Any) -> tuple[int, int] | None:
    if cursor is None:
        return None
    if isinstance(cursor, str):
        ts_text, dot, id_text = cursor.partition("_")
        if dot and ts_text.isdigit() and id_text.isdigit() and len(cursor) <= 40:
            return int(ts_text), int(id_text)
    raise ValidationError("cursor", cursor, "not a cursor returned by events(); start again without one")


def _severities(severity: Any, minimum: Any) -> list[str] | None:
    chosen: set[Severity] | None = None
    if severity is not None:
        if isinstance(severity, (str, Severity)):
            chosen = {require_choice("severity", severity, Severity)}
        elif isinstance(severity, Collection) and severity:
            chosen = {require_choice("severity", item, Severity) for item in severity}
        else:
            raise ValidationError("severity", severity, "expected a severity or a collection of them")
    if minimum is not None:
        floor = _SEVERITY_RANK[require_choice("min_severity", minimum, Severity)]
        at_least = {level for level, rank in _SEVERITY_RANK.items() if rank >= floor}
        chosen = at_least if chosen is None else chosen & at_least
    if chosen is None:
        return None
    return sorted(level.value for level in chosen)
