"""Storage used: segments, bytes and recorded time by stream, volume, day and state.

Read from ``recording_usage``, a summary per stream, day, volume and state
that triggers on ``recording`` keep exact (migration 003).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import peewee as pw

from ..errors import ValidationError
from ..models import Stream
from ..models.usage import RecordingUsage
from ..pwtypes import dict_rows
from ..states import SegmentState
from ..timeutil import from_millis
from ..validate import require_choice, require_text
from ._args import stream_ids, utc_day

_USAGE_KEYS = ("stream", "storage", "day", "state")


@dataclasses.dataclass(frozen=True, slots=True)
class UsageRow:
    """Segments, bytes and recorded time of one group; fields not grouped by are None."""

    stream_id: int | None
    stream: str | None
    storage: str | None
    day: dt.date | None
    state: SegmentState | str | None
    segments: int
    size_bytes: int
    duration: dt.timedelta  # of completed segments; an open one counts 0


def storage_usage(
    by: str | Sequence[str] = "stream",
    *,
    since: dt.date | None = None,
    until: dt.date | None = None,
    streams: Iterable[Stream | int | str] | Stream | int | str | None = None,
    storage: str | None = None,
    states: Collection[SegmentState | str] | None = None,
) -> list[UsageRow]:
    """Segments, bytes and recorded time grouped by any of "stream", "storage", "day", "state".

    ``since`` / ``until`` are UTC days (``datetime.date``, ``until``
    exclusive); a segment belongs to the day it started. Largest first.
    Reads the ``recording_usage`` summary (one row per stream, day, storage
    and state, kept exact by triggers), never the segments: one query
    whatever the size of the history.
    """
    keys = _usage_keys(by)
    since_day = utc_day("since", since)
    until_day = utc_day("until", until)
    if since_day is not None and until_day is not None and until_day <= since_day:
        raise ValidationError("until", until, f"must be after since={since}")
    ids = stream_ids(streams)
    if storage is not None:
        require_text("storage", storage, max_length=1000)
    state_values = _states(states)

    U = RecordingUsage
    columns: list[Any] = []
    group: list[Any] = []
    if "stream" in keys:
        columns += [U.stream.alias("stream_id"), Stream.name.alias("stream_name")]
        group += [U.stream, Stream.name]
    if "storage" in keys:
        columns.append(U.storage.alias("storage"))
        group.append(U.storage)
    if "day" in keys:
        columns.append(U.day_start.alias("day_start"))
        group.append(U.day_start)
    if "state" in keys:
        columns.append(U.state.alias("state"))
        group.append(U.state)
    total_bytes = pw.fn.SUM(U.size_bytes)
    query = U.select(
        *columns,
        pw.fn.SUM(U.segments).alias("segments"),
        total_bytes.alias("size_bytes"),
        pw.fn.SUM(U.duration_ms).alias("duration_ms"),
    )
    if "stream" in keys:
        query = query.join(Stream, on=(U.stream == Stream.id))
    if since_day is not None:
        query = query.where(U.day_start >= since_day)
    if until_day is not None:
        query = query.where(U.day_start < until_day)
    if ids is not None:
        query = query.where(U.stream.in_(ids))
    if storage is not None:
        query = query.where(U.storage == storage)
    if state_values is not None:
        query = query.where(U.state.in_(state_values))
    query = query.group_by(*group).order_by(total_bytes.desc(), *group)
    rows = []
    for row in dict_rows(query):
        rows.append(
            UsageRow(
                stream_id=row.get("stream_id"),
                stream=row.get("stream_name"),
                storage=(row["storage"] or None) if "storage" in keys else None,
                day=from_millis(int(row["day_start"])).date() if "day" in keys else None,
                state=_state(row["state"]) if "state" in keys else None,
                segments=int(row["segments"]),
                size_bytes=int(row["size_bytes"]),
                duration=dt.timedelta(milliseconds=int(row["duration_ms"])),
            )
        )
    return rows


def segment_counts(
    streams: Iterable[Stream | int | str] | Stream | int | str | None = None,
    *,
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> dict[SegmentState | str, int]:
    """Number of segments in each state (of ``streams``, started in [since, until) days)."""
    return {
        row.state: row.segments
        for row in storage_usage("state", since=since, until=until, streams=streams)
        if row.state is not None
    }


def _usage_keys(by: Any) -> tuple[str, ...]:
    keys = (by,) if isinstance(by, str) else by
    if not isinstance(keys, (tuple, list)) or not keys:
        raise ValidationError("by", by, f"expected one or more of {', '.join(_USAGE_KEYS)}")
    for key in keys:
        if key not in _USAGE_KEYS:
            raise ValidationError("by", by, f"unknown grouping {key!r}; use {', '.join(_USAGE_KEYS)}")
    return tuple(keys)


def _states(states: Any) -> list[str] | None:
    if states is None:
        return None
    if isinstance(states, str) or not isinstance(states, Collection):
        raise ValidationError("states", states, "expected a collection of segment states")
    return [require_choice("states", state, SegmentState).value for state in states]


def _state(value: str) -> SegmentState | str:
    try:
        return SegmentState(value)
    except ValueError:
        return value
