"""The per-segment statements, written once per backend instead of built per call.

``begin_segment`` and ``complete_segment`` run for every segment file of
every stream (the UPDATE that closes a segment is the segment-state gate's,
spelled the same way in models/gate.py). Building their SQL with peewee's query builder costs about a
millisecond of Python per cycle, several times what SQLite needs to execute
them, so their text is written here once per placeholder style and run with
``execute_sql``. Table and column names come from the models' ``_meta``, so a
renamed field cannot leave a stale spelling behind. The values still go
through the model fields' ``db_value``, and a test checks that the rows they
write read back exactly like rows written by the ORM.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import peewee as pw

from ..states import SegmentState


@dataclass(frozen=True)
class SegmentStatements:
    claim_index: str
    insert_recording: str


@lru_cache(maxsize=8)
def spelled(param: str) -> SegmentStatements:
    """The statements with ``param`` (``?`` or ``%s``) as the placeholder."""
    # Imported here: stream.py and recording.py import this module.
    from .recording import Recording
    from .stream import Stream

    p = param
    S, R = Stream._meta, Recording._meta
    stream, recording = f'"{S.table_name}"', f'"{R.table_name}"'

    def col(model: type[pw.Model], name: str) -> str:
        return f'"{model._meta.fields[name].column_name}"'

    next_index, stream_id, removed_at = (
        col(Stream, "next_segment_index"),
        col(Stream, "id"),
        col(Stream, "removed_at"),
    )
    inserted = ", ".join(
        col(Recording, name)
        for name in (
            "stream",
            "path",
            "storage",
            "segment_index",
            "started_at",
            "size_bytes",
            "state",
            "archived",
            "metadata",
            "media_started_at",
        )
    )
    recording_id = col(Recording, "id")
    return SegmentStatements(
        # Takes the next index and refuses a removed stream in one statement.
        claim_index=(
            f"UPDATE {stream} SET {next_index} = {next_index} + 1 "
            f"WHERE {stream_id} = {p} AND {removed_at} IS NULL RETURNING {next_index}"
        ),
        insert_recording=(
            f"INSERT INTO {recording} ({inserted}) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, 0, '{SegmentState.RECORDING.value}', {p}, {p}, {p}) "
            f"RETURNING {recording_id}"
        ),
    )


def segment_statements(db: pw.Database) -> SegmentStatements:
    """The statements in ``db``'s placeholder style (``?`` or ``%s``)."""
    return spelled(db.param)
