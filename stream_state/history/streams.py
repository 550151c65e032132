"""The streams as an operator lists them: status, health, desired state, whether each records now."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import peewee as pw

from ..models import Recording, Stream
from ..pwtypes import tuple_rows
from ..redact import redact_data, redact_uri
from ..states import HealthState, StreamStatus, desired_state


@dataclasses.dataclass(frozen=True, slots=True)
class StreamOverview:
    """One stream now. ``uri`` and ``config`` are the stored ones (credentials included): show
    ``display_uri`` and ``as_dict()``, which mask them."""

    id: int
    name: str
    uri: str = dataclasses.field(repr=False)
    config: dict[str, Any] = dataclasses.field(repr=False)
    status: StreamStatus | str
    health: HealthState | str
    enabled: bool
    recording: bool  # desired: should be recording
    open_segments: int  # segments being written now (two for a moment at a segment boundary)
    last_seen_at: dt.datetime | None
    status_changed_at: dt.datetime | None
    health_changed_at: dt.datetime | None
    next_segment_index: int
    removed_at: dt.datetime | None

    @property
    def display_uri(self) -> str:
        return redact_uri(self.uri)

    @property
    def desired(self) -> str:
        """``recording``, ``running`` or ``stopped``."""
        return desired_state(self.enabled, self.recording)

    @property
    def is_recording(self) -> bool:
        return self.open_segments > 0

    @property
    def is_removed(self) -> bool:
        return self.removed_at is not None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON, credentials masked (``stream-state streams --json``)."""
        return {
            "id": self.id,
            "name": self.name,
            "uri": self.display_uri,
            "status": self.status,
            "health": self.health,
            "desired": self.desired,
            "recording": self.is_recording,
            "open_segments": self.open_segments,
            "last_seen_at": self.last_seen_at,
            "status_changed_at": self.status_changed_at,
            "health_changed_at": self.health_changed_at,
            "next_segment_index": self.next_segment_index,
            "config": redact_data(self.config),
            "removed_at": self.removed_at,
        }


def stream_overview(include_removed: bool = False) -> list[StreamOverview]:
    """Every live stream (every stream with ``include_removed``) by name, with its open segments.

    Two queries: the streams, and the open segments counted per stream from
    the partial index on open segments.
    """
    query = Stream.select().order_by(Stream.name, Stream.id)
    if not include_removed:
        query = query.where(Stream.removed_at.is_null())
    streams = list(query)
    open_counts: dict[int, int] = dict(
        tuple_rows(
            Recording.select(Recording.stream, pw.fn.COUNT(Recording.id))
            .where(Recording.ended_at.is_null())
            .group_by(Recording.stream)
        )
    )
    return [
        StreamOverview(
            id=s.id,
            name=s.name,
            uri=s.uri,
            config=s.config or {},
            status=s.status,
            health=s.health,
            enabled=bool(s.desired_enabled),
            recording=bool(s.desired_recording),
            open_segments=open_counts.get(s.id, 0),
            last_seen_at=s.last_seen_at,
            status_changed_at=s.status_changed_at,
            health_changed_at=s.health_changed_at,
            next_segment_index=s.next_segment_index,
            removed_at=s.removed_at,
        )
        for s in streams
    ]
