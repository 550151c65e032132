"""One row per segment file on disk."""

from __future__ import annotations

import peewee as pw

from ..fields import EnumField, TimestampField
from ..states import SegmentState
from .base import BaseModel
from .stream import Stream


class Recording(BaseModel):
    id = pw.BigAutoField()
    # The unique (stream, segment_index) index below leads with stream_id and
    # serves foreign-key checks, so the default single-column index is skipped.
    stream = pw.ForeignKeyField(Stream, backref="recordings", on_delete="RESTRICT", index=False)
    path = pw.TextField(unique=True)
    storage = pw.TextField(null=True)
    segment_index = pw.BigIntegerField(constraints=[pw.Check("segment_index >= 0")])
    started_at = TimestampField()
    ended_at = TimestampField(null=True)  # NULL while the segment is open
    checkpoint_at = TimestampField(null=True)  # last progress report of an open segment
    size_bytes = pw.BigIntegerField(default=0, constraints=[pw.Check("size_bytes >= 0")])
    state = EnumField(SegmentState, default=SegmentState.RECORDING)
    archived = pw.BooleanField(default=False)
    metadata = pw.JSONField(null=True)

    class Meta:
        table_name = "recording"
        constraints = [pw.Check("ended_at IS NULL OR ended_at >= started_at")]
        indexes = (
            # A segment index is never reused within a stream.
            (("stream", "segment_index"), True),
            # Time-range queries: start < until AND start >= since - max_length.
            (("stream", "started_at"), False),
            # Retention scans oldest-first by end time.
            (("ended_at",), False),
        )


# Open segments have no end yet, so the bounded range scan above cannot find
# them; this small partial index does.
Recording.add_index(
    Recording.index(
        Recording.stream,
        Recording.started_at,
        where=Recording.ended_at.is_null(),
        name="recording_open",
    )
)
# Restore looks for unfinished work (recording, deleting, ...): a partial index
# over the few rows not yet complete instead of an index over all of them.
Recording.add_index(
    Recording.index(
        Recording.state,
        where=Recording.state != SegmentState.COMPLETE.value,
        name="recording_unsettled",
    )
)
