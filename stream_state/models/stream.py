"""A camera stream: identity, configuration, desired and observed state."""

from __future__ import annotations

import peewee as pw

from ..fields import EnumField, TimestampField
from ..states import HealthState, StreamStatus
from ..timeutil import utc_now
from .base import BaseModel


class Stream(BaseModel):
    id = pw.AutoField()
    name = pw.TextField()
    uri = pw.TextField()
    config = pw.JSONField(default=dict)
    # Desired state: what the manager should bring back after a restart.
    desired_enabled = pw.BooleanField(default=True)
    desired_recording = pw.BooleanField(default=False)
    # Observed state: what the manager last reported.
    status = EnumField(StreamStatus, default=StreamStatus.STOPPED)
    health = EnumField(HealthState, default=HealthState.UNKNOWN)
    status_changed_at = TimestampField(null=True)
    health_changed_at = TimestampField(null=True)
    last_seen_at = TimestampField(null=True)
    # Only ever grows, so a resumed segmenter never overwrites a file.
    next_segment_index = pw.BigIntegerField(default=0, constraints=[pw.Check("next_segment_index >= 0")])
    # Per-stream retention overrides ({"max_age_days": ..., "max_bytes": ...});
    # NULL means the global policy applies.
    retention = pw.JSONField(null=True)
    created_at = TimestampField(default=utc_now)
    updated_at = TimestampField(default=utc_now)
    # Soft delete: history stays queryable and the name can be reused.
    removed_at = TimestampField(null=True)

    class Meta:
        table_name = "stream"


# A name is unique among live streams only, so a removed stream's name can be
# registered again while the old history stays attached to the old row.
Stream.add_index(
    Stream.index(Stream.name, unique=True, where=Stream.removed_at.is_null(), name="stream_name_live")
)
