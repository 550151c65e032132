"""Column types shared by the models."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import peewee as pw

from .backends import dialect
from .timeutil import from_millis, to_millis
from .validate import require_choice


class TimestampField(pw.BigIntegerField):
    """An aware UTC datetime stored as integer epoch milliseconds.

    Integers index and compare cheaply on both backends and carry no time zone
    ambiguity; the API still only ever sees aware datetimes.
    """

    def db_value(self, value: Any) -> Any:
        if value is None or isinstance(value, (int, pw.Node)):
            return value
        return to_millis(value, self.name or "time")

    def python_value(self, value: Any) -> dt.datetime | None:
        if value is None:
            return None
        return from_millis(int(value))


class EnumField(pw.TextField):
    """A ``str`` enum stored as its value, read back as the enum member."""

    def __init__(self, enum_class: type[enum.Enum], **kwargs: Any):
        self.enum_class = enum_class
        super().__init__(**kwargs)

    def db_value(self, value: Any) -> Any:
        if value is None or isinstance(value, pw.Node):
            return value
        return require_choice(self.name or "value", value, self.enum_class).value

    def python_value(self, value: Any) -> Any:
        if value is None:
            return None
        try:
            return self.enum_class(value)
        except ValueError:
            # A value written by a newer version of the package: keep it
            # readable rather than failing the whole query.
            return value


class GrowingIdField(pw.BigAutoField):
    """A BIGINT primary key that is never handed out twice (invariant 4).

    SQLite reuses the largest rowid after that row is deleted, so a deleted
    newest segment's id could come back naming another file; AUTOINCREMENT
    forbids that. PostgreSQL sequences never go back anyway.
    """

    def ddl(self, ctx: Any) -> Any:
        node = super().ddl(ctx)
        if dialect(self.model._meta.database).needs_autoincrement:
            return pw.NodeList((node, pw.SQL("AUTOINCREMENT")))
        return node


class BytesField(pw.Field):
    """Bytes: BLOB on SQLite, bytea on PostgreSQL, the same DDL as ``BlobField``.

    ``BlobField`` wraps values in the psycopg2 driver's ``Binary`` when the
    model is bound, which the asyncio face (asyncpg) does not have; every
    driver here takes plain ``bytes`` as they are. Read back as ``bytes``
    (psycopg2 returns a memoryview).
    """

    field_type = "BLOB"

    def db_value(self, value: Any) -> Any:
        return None if value is None else bytes(value)

    def python_value(self, value: Any) -> bytes | None:
        return None if value is None else bytes(value)
