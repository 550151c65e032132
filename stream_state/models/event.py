"""Things that happened: health and status changes, repairs, anything the manager records."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import peewee as pw

from ..errors import NotFound
from ..fields import EnumField, TimestampField
from ..redact import redact_data, redact_text
from ..states import Severity
from ..timeutil import to_millis, utc_now
from ..validate import (
    EVENT_JSON_HEADROOM,
    MAX_JSON_DEPTH,
    optional_text,
    require_choice,
    require_json,
    require_text,
)
from .base import BaseModel
from .session import writer
from .statements import prepared
from .stream import Stream, require_stream_id


class Event(BaseModel):
    id = pw.BigAutoField()
    ts = TimestampField(default=utc_now)
    # NULL for system events (a clean stop, a maintenance run).
    stream = pw.ForeignKeyField(Stream, null=True, backref="events", on_delete="RESTRICT", index=False)
    stream_id: int | None  # the foreign key's column, set by peewee
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

    def __str__(self) -> str:
        return f"{self.type}@{self.ts.isoformat() if self.ts else '?'}"

    @classmethod
    def record(
        cls,
        type: str,
        stream: Stream | int | None = None,
        severity: Severity | str = Severity.INFO,
        message: str | None = None,
        data: dict[str, Any] | None = None,
        at: dt.datetime | None = None,
    ) -> Event:
        """Write one event and return it.

        Credentials in ``message`` and ``data`` (URIs with passwords,
        secret-looking keys) are masked before they are stored: events are
        shown to operators.

        An event attributed to a stream is a manager write: it goes through
        this process's session, which must own the stream (taking it on
        this first write if it is free), else ``OwnershipLost`` and nothing
        is written.
        """
        return cls._record(type, stream, severity, message, data, at, gate=True)

    @classmethod
    def _record(
        cls,
        type: str,
        stream: Stream | int | None = None,
        severity: Severity | str = Severity.INFO,
        message: str | None = None,
        data: dict[str, Any] | None = None,
        at: dt.datetime | None = None,
        *,
        gate: bool,
    ) -> Event:
        """``record``; the package's own operator paths (and writes already gated) pass ``gate=False``."""
        row = cls.build(type, stream=stream, severity=severity, message=message, data=data, at=at)
        hot = prepared(cls._meta.database)
        db = hot.db
        # Written once per backend (statements.py): the ORM's INSERT cost 5x the statement.
        sql = hot.manager.insert_event_returning
        try:
            if gate and row.stream_id is not None:
                with db.atomic(), writer(db).gate(row.stream_id):
                    (row.id,) = db.execute_sql(sql, row._insert_values(db)).fetchone()
            else:
                (row.id,) = db.execute_sql(sql, row._insert_values(db)).fetchone()
        except pw.IntegrityError as exc:
            raise NotFound("stream", stream if isinstance(stream, int) else row.stream_key) from exc
        cast(Any, row)._dirty.clear()
        return row

    @property
    def stream_key(self) -> int | None:
        """The stream's id, without loading the stream."""
        key = self.__data__.get("stream")
        return None if key is None else int(key)

    def _insert_values(self, db: pw.Database) -> tuple[Any, ...]:
        """This unsaved event as ``insert_event``'s parameters (ts, stream, type, severity, message, data)."""
        return (
            to_millis(self.ts, "at"),
            self.stream_key,
            self.type,
            self.severity.value,
            self.message,
            None if self.data is None else prepared(db).dialect.json_param(Event.data, self.data),
        )

    @classmethod
    def build(
        cls,
        type: str,
        stream: Stream | int | None = None,
        severity: Severity | str = Severity.INFO,
        message: str | None = None,
        data: dict[str, Any] | None = None,
        at: dt.datetime | None = None,
    ) -> Event:
        """Validate and build an unsaved event (for writing inside a larger transaction)."""
        require_text("type", type, max_length=100)
        severity = require_choice("severity", severity, Severity)
        message = optional_text("message", message)
        require_json("data", data, max_depth=MAX_JSON_DEPTH + EVENT_JSON_HEADROOM)
        stream_id = require_stream_id("stream", stream)
        ts = utc_now() if at is None else at
        to_millis(ts, "at")
        # No defaults to compute: every column with one is given here.
        return cls(
            __no_default__=True,
            ts=ts,
            # The Stream itself when given, so event.stream needs no query
            # (in async code a lazy load would need the greenlet bridge).
            stream=stream if isinstance(stream, Stream) else stream_id,
            type=type,
            severity=severity,
            message=redact_text(message) if message is not None else None,
            data=redact_data(data) if data is not None else None,
        )
