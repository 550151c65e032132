"""The per-segment statements, written once per backend instead of built per call.

``begin_segment`` and ``complete_segment`` run for every segment file of
every stream. Building their SQL with peewee's query builder costs about a
millisecond of Python per cycle, several times what SQLite needs to execute
them, so their text is written here once and run with ``execute_sql``. The
values still go through the model fields' ``db_value``, and a test checks
that the rows they write read back exactly like rows written by the ORM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import peewee as pw


@dataclass(frozen=True)
class SegmentStatements:
    claim_index: str
    insert_recording: str
    complete_open: str


@lru_cache(maxsize=8)
def _spelled(param: str) -> SegmentStatements:
    p = param
    return SegmentStatements(
        # Takes the next index and refuses a removed stream in one statement.
        claim_index=(
            'UPDATE "stream" SET "next_segment_index" = "next_segment_index" + 1 '
            f'WHERE "id" = {p} AND "removed_at" IS NULL RETURNING "next_segment_index"'
        ),
        insert_recording=(
            'INSERT INTO "recording" ("stream_id", "path", "storage", "segment_index", "started_at", '
            '"size_bytes", "state", "archived", "metadata", "media_started_at") '
            f"VALUES ({p}, {p}, {p}, {p}, {p}, 0, 'recording', {p}, {p}, {p}) RETURNING \"id\""
        ),
        # Only an open segment matches; zero rows means "look closer".
        complete_open=(
            f'UPDATE "recording" SET "state" = \'complete\', "ended_at" = {p}, "size_bytes" = {p}, '
            f'"media_ended_at" = COALESCE({p}, "media_ended_at"), '
            f'"frame_count" = COALESCE({p}, "frame_count"), "finalized" = COALESCE({p}, "finalized") '
            f'WHERE "id" = {p} AND "ended_at" IS NULL'
        ),
    )


def segment_statements(db: pw.Database) -> SegmentStatements:
    """The statements in ``db``'s placeholder style (``?`` or ``%s``)."""
    return _spelled(db.param)


def json_param(db: pw.Database, field: pw.JSONField, value: object) -> object:
    """A JSON value as a plain driver parameter.

    The field's own ``db_value`` wraps it in ``json(?)`` on SQLite (an SQL
    function, not a parameter); compact text is what that function stores.
    PostgreSQL's wrapper is already a driver adapter (jsonb).
    """
    if value is None:
        return None
    if isinstance(getattr(db, "obj", db), pw.SqliteDatabase):  # through a DatabaseProxy
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return field.db_value(value)
