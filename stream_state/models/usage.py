"""The storage-used summary: segments, bytes and recorded time per stream, day, volume and state."""

from __future__ import annotations

import peewee as pw

from ..timeutil import DAY_MS
from .base import BaseModel
from .stream import Stream


class RecordingUsage(BaseModel):
    """Segments, bytes and recorded ms per (stream, UTC day, storage, state).

    Kept exact by triggers on ``recording`` (migration 003): never write it.
    ``storage`` is '' for segments without a storage volume.
    """

    stream = pw.ForeignKeyField(Stream, on_delete="CASCADE", index=False)
    day_start = pw.BigIntegerField()
    storage = pw.TextField()
    state = pw.TextField()
    segments = pw.BigIntegerField()
    size_bytes = pw.BigIntegerField()
    duration_ms = pw.BigIntegerField()

    class Meta:
        table_name = "recording_usage"
        primary_key = pw.CompositeKey("stream", "day_start", "storage", "state")


# The recording_usage summary computed from scratch (as migration 003 fills it).
USAGE_FILL_SQL = (
    'INSERT INTO "recording_usage" ("stream_id", "day_start", "storage", "state", "segments", '
    '"size_bytes", "duration_ms") '
    f'SELECT "stream_id", "started_at" / {DAY_MS} * {DAY_MS}, COALESCE("storage", \'\'), "state", '
    'COUNT(*), SUM("size_bytes"), SUM(COALESCE("ended_at" - "started_at", 0)) '
    'FROM "recording" GROUP BY 1, 2, 3, 4'
)
