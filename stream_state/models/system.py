"""Named records about the recorder as a whole (lifecycle, identity, schedules)."""

from __future__ import annotations

import uuid
from typing import Any

import peewee as pw

from ..fields import TimestampField
from ..timeutil import utc_now
from .base import BaseModel

DATABASE_ID = "database_id"


class SystemState(BaseModel):
    key = pw.TextField(primary_key=True)
    value = pw.JSONField(null=True)
    updated_at = TimestampField(default=utc_now)

    class Meta:
        table_name = "system_state"

    @classmethod
    def read(cls, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""
        row = cls.get_or_none(cls.key == key)
        return default if row is None else row.value

    @classmethod
    def write(cls, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` (insert or replace) in one statement."""
        cls.insert(key=key, value=value, updated_at=utc_now()).on_conflict(
            conflict_target=[cls.key], update={cls.value: value, cls.updated_at: utc_now()}
        ).execute()

    @classmethod
    def database_id(cls) -> str:
        """This database's identity, created on first use and never changed.

        Storage roots carry it in a marker file, so a disk that belongs to
        another installation (or none) is recognised as such.
        """
        cls.insert(
            key=DATABASE_ID, value=str(uuid.uuid4()), updated_at=utc_now()
        ).on_conflict_ignore().execute()
        return cls.read(DATABASE_ID)
