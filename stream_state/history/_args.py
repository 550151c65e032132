"""Argument checks the history readers share: stream arguments, time windows, UTC days."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from ..errors import NotFound, ValidationError
from ..models import Stream
from ..pwtypes import tuple_rows
from ..timeutil import to_millis
from ..validate import require_count, require_text


def resolve_stream(stream: Stream | int | str, field: str = "stream") -> Stream:
    """The stream a ``stream`` argument names: a ``Stream``, an id or a name.

    A name finds the live stream of that name, else the most recently removed
    one (its history stays queryable). ``NotFound`` when there is none.
    """
    if isinstance(stream, Stream):
        if stream.id is None:
            raise ValidationError(field, stream, "the stream has not been saved")
        return stream
    if isinstance(stream, bool):
        raise ValidationError(field, stream, "expected a Stream, a stream id or a stream name")
    if isinstance(stream, int):
        require_count(field, stream)
        found = Stream.get_or_none(Stream.id == stream)
    elif isinstance(stream, str):
        require_text(field, stream, max_length=200)
        found = (
            Stream.select()
            .where(Stream.name == stream)
            .order_by(
                # Live first: false sorts before true on both backends, and a
                # boolean (unlike CASE ... 0/1) is typed the same by asyncpg.
                Stream.removed_at.is_null(False),
                Stream.removed_at.desc(),
                Stream.id.desc(),
            )
            .first()
        )
    else:
        raise ValidationError(field, stream, "expected a Stream, a stream id or a stream name")
    if found is None:
        raise NotFound("stream", stream)
    return found


def stream_ids(streams: Any, field: str = "streams") -> list[int] | None:
    """Ids of a collection of stream arguments (None stays None: every stream)."""
    if streams is None:
        return None
    if isinstance(streams, (Stream, int, str)):
        return [resolve_stream(streams, field).id]
    if not isinstance(streams, Iterable):
        raise ValidationError(field, streams, "expected a collection of streams, ids or names")
    ids: list[int] = []
    known: set[int] = set()  # ids of Stream objects: no need to look them up
    names: list[str] = []
    for index, item in enumerate(streams):
        if isinstance(item, Stream):
            known.add(resolve_stream(item, f"{field}[{index}]").id)
            ids.append(item.id)
        elif isinstance(item, int) and not isinstance(item, bool):
            ids.append(require_count(f"{field}[{index}]", item))
        elif isinstance(item, str):
            names.append(require_text(f"{field}[{index}]", item, max_length=200))
        else:
            raise ValidationError(
                f"{field}[{index}]", item, "expected a Stream, a stream id or a stream name"
            )
    plain_ids = [i for i in ids if i not in known]
    if plain_ids:
        # One query for all of them, however many.
        found_ids = {i for (i,) in tuple_rows(Stream.select(Stream.id).where(Stream.id.in_(plain_ids)))}
        for stream_id in plain_ids:
            if stream_id not in found_ids:
                raise NotFound("stream", stream_id)
    if names:
        # Live streams first, then the most recently removed: like resolve_stream.
        by_name: dict[str, int] = {}
        rows = tuple_rows(
            Stream.select(Stream.name, Stream.id)
            .where(Stream.name.in_(names))
            .order_by(Stream.removed_at.is_null(False), Stream.removed_at.desc())
        )
        for name, stream_id in rows:
            by_name.setdefault(name, stream_id)
        for name in names:
            if name not in by_name:
                raise NotFound("stream", name)
            ids.append(by_name[name])
    return list(dict.fromkeys(ids))


def window(since: dt.datetime, until: dt.datetime) -> tuple[int, int]:
    since_ms = to_millis(since, "since")
    until_ms = to_millis(until, "until")
    if until_ms <= since_ms:
        raise ValidationError("until", until, f"must be after since={since.isoformat()}")
    return since_ms, until_ms


def optional_window(since: dt.datetime | None, until: dt.datetime | None) -> tuple[int | None, int | None]:
    since_ms = None if since is None else to_millis(since, "since")
    until_ms = None if until is None else to_millis(until, "until")
    if since is not None and since_ms is not None and until_ms is not None and until_ms <= since_ms:
        raise ValidationError("until", until, f"must be after since={since.isoformat()}")
    return since_ms, until_ms


def utc_day(field: str, value: Any) -> int | None:
    """A UTC day given as a ``date`` (not a datetime) -> its start in epoch ms."""
    if value is None:
        return None
    if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
        raise ValidationError(field, value, "expected a datetime.date (a UTC day)")
    return to_millis(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC), field)
