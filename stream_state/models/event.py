"""Things that happened: health and status changes, repairs, anything the manager records."""

from __future__ import annotations

import peewee as pw

from ..fields import EnumField, TimestampField
from ..states import Severity
from ..timeutil import utc_now
from .base import BaseModel
from .stream import Stream


class Event(BaseModel):
    id = pw.BigAutoField()
    ts = TimestampField(default=utc_now)
    # NULL for system events (a clean stop, a maintenance run).
    stream = pw.ForeignKeyField(Stream, null=True, backref="events", on_delete="RESTRICT", index=False)
    type = pw.TextField()
    severity = EnumField(Severity, default=Severity.INFO)
    message = pw.TextField(null=True)
    data = pw.JSONField(null=True)

    class Meta:
        table_name = "event"
        # Each ends in id so newest-first keyset pagination (ts, id) is an
        # index walk on both backends.
        indexes = (
            (("ts", "id"), False),
            (("stream", "ts", "id"), False),
            (("type", "ts", "id"), False),
        )
