"""The per-segment statements, written once per backend instead of built per call.

``begin_segment`` and ``complete_segment`` run for every segment file of
every stream (the UPDATE that closes a segment is the segment-state gate's,
spelled the same way in models/gate.py). Building their SQL with peewee's query builder costs about a
millisecond of Python per cycle, several times what SQLite needs to execute
them, so their text is written here once per placeholder style and run with
``execute_sql``. The same goes for a manager's per-second statements (``ManagerStatements``:
checkpoint, unchanged health, event), which run every second for every stream;
their ``*_bulk`` forms are PostgreSQL's one-statement (``unnest``) form of a
tick's worth of rows, one round trip with a rowcount that counts every row.
Table and column names come from the models' ``_meta``, so a
renamed field cannot leave a stale spelling behind. The values still go
through the model fields' ``db_value``, and a test checks that the rows they
write read back exactly like rows written by the ORM.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import peewee as pw

from ..backends import Dialect
from ..states import SegmentState
from .base import current_database, dialect


@dataclass(frozen=True)
class SegmentStatements:
    claim_index: str
    insert_recording: str


@lru_cache(maxsize=8)
def spelled(param: str, clock: str) -> SegmentStatements:
    """The statements with ``param`` (``?`` or ``%s``) as the placeholder and ``clock`` as "now" in ms."""
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
            "session_id",
            "session_epoch",
        )
    )
    owner, epoch = col(Stream, "owner_session_id"), col(Stream, "owner_epoch")
    # The session named by the parameter is alive by the database's clock (models/session.py).
    live = (
        f'EXISTS (SELECT 1 FROM "session" WHERE "session"."id" = {p} '
        f'AND "session"."closed_at" IS NULL AND "session"."expires_at" > {clock})'
    )
    recording_id = col(Recording, "id")
    return SegmentStatements(
        # Takes the next index, refuses a removed stream, and is gated on
        # (owner session, epoch) and the session's lease, in one statement.
        # Parameters: stream, session, epoch, session.
        claim_index=(
            f"UPDATE {stream} SET {next_index} = {next_index} + 1 "
            f"WHERE {stream_id} = {p} AND {removed_at} IS NULL AND {owner} = {p} AND {epoch} = {p} "
            f"AND {live} RETURNING {next_index}"
        ),
        insert_recording=(
            f"INSERT INTO {recording} ({inserted}) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, 0, '{SegmentState.RECORDING.value}', {p}, {p}, {p}, {p}, {p}) "
            f"RETURNING {recording_id}"
        ),
    )


def segment_statements(db: pw.Database) -> SegmentStatements:
    """The statements in ``db``'s placeholder style (``?`` or ``%s``) and clock."""
    return spelled(db.param, dialect(db).clock_ms_sql)


def _column(model: type[pw.Model], name: str) -> str:
    return f'"{model._meta.fields[name].column_name}"'


@dataclass(frozen=True)
class ManagerStatements:
    # (size_bytes, checkpoint_at, id); only an open segment matches.
    checkpoint: str
    # (last_seen_at, id, health); only a live stream still in that health matches.
    touch_health: str
    # (ts, stream_id, type, severity, message, data)
    insert_event: str
    insert_event_returning: str
    # PostgreSQL only: the same, one array per column.
    checkpoint_bulk: str
    touch_health_bulk: str


@lru_cache(maxsize=8)
def manager_spelled(param: str) -> ManagerStatements:
    """The statements with ``param`` (``?`` or ``%s``) as the placeholder."""
    # Imported here: the model modules import this one.
    from .event import Event
    from .recording import Recording
    from .stream import Stream

    p = param
    recording, stream, event = (f'"{m._meta.table_name}"' for m in (Recording, Stream, Event))
    r_id, size, checkpoint_at, ended_at = (
        _column(Recording, n) for n in ("id", "size_bytes", "checkpoint_at", "ended_at")
    )
    s_id, last_seen, health, removed = (
        _column(Stream, n) for n in ("id", "last_seen_at", "health", "removed_at")
    )
    event_columns = ", ".join(
        _column(Event, n) for n in ("ts", "stream", "type", "severity", "message", "data")
    )
    insert_event = f"INSERT INTO {event} ({event_columns}) VALUES ({p}, {p}, {p}, {p}, {p}, {p})"
    return ManagerStatements(
        checkpoint=(
            f"UPDATE {recording} SET {size} = {p}, {checkpoint_at} = {p} "
            f"WHERE {r_id} = {p} AND {ended_at} IS NULL"
        ),
        touch_health=(
            f"UPDATE {stream} SET {last_seen} = {p} "
            f"WHERE {s_id} = {p} AND {health} = {p} AND {removed} IS NULL"
        ),
        insert_event=insert_event,
        insert_event_returning=f"{insert_event} RETURNING {_column(Event, 'id')}",
        checkpoint_bulk=(
            f"UPDATE {recording} AS r SET {size} = v.size, {checkpoint_at} = v.at "
            f"FROM unnest({p}::bigint[], {p}::bigint[], {p}::bigint[]) AS v(id, size, at) "
            f"WHERE r.{r_id} = v.id AND r.{ended_at} IS NULL"
        ),
        touch_health_bulk=(
            f"UPDATE {stream} AS s SET {last_seen} = v.at "
            f"FROM unnest({p}::bigint[], {p}::bigint[], {p}::text[]) AS v(id, at, health) "
            f"WHERE s.{s_id} = v.id AND s.{health} = v.health AND s.{removed} IS NULL"
        ),
    )


def manager_statements(db: pw.Database) -> ManagerStatements:
    """The statements in ``db``'s placeholder style."""
    return manager_spelled(db.param)


@dataclass(frozen=True)
class Prepared:
    """One database's hot-path statements, spelled once and kept on the database object.

    A manager calls ``checkpoint`` and ``record_health`` every second for
    every stream: looking up the database behind the proxy, its dialect and
    each statement through three caches cost more per call than running the
    statement. Each gated statement still carries the ownership gate
    (invariant 15): owner session, epoch and the session's lease, checked in
    the statement itself.
    """

    db: pw.Database  # the database itself, never the proxy
    dialect: Dialect
    segment: SegmentStatements
    manager: ManagerStatements
    # manager.checkpoint + the gate: (size, at, id, session, epoch, session)
    gated_checkpoint: str
    # manager.touch_health + the gate: (at, id, health, session, epoch, session)
    gated_touch_health: str
    # The segment-state gate's ownership guard over "recording": (session, epoch, session)
    owner_guard: str


_PREPARED = "_stream_state_prepared"


def prepared(db: pw.Database) -> Prepared:
    """``db``'s ``Prepared`` (``db`` may be the models' proxy); built on first use."""
    if isinstance(db, pw.DatabaseProxy):
        db = db.obj if db.obj is not None else current_database()
    found: Prepared | None = db.__dict__.get(_PREPARED)
    if found is None:
        found = _prepare(db)
        db.__dict__[_PREPARED] = found
    return found


def _prepare(db: pw.Database) -> Prepared:
    # Imported here: session.py imports this module.
    from .session import gated_checkpoint, gated_touch_health, owner_guard_sql

    d = dialect(db)
    return Prepared(
        db=db,
        dialect=d,
        segment=spelled(db.param, d.clock_ms_sql),
        manager=manager_spelled(db.param),
        gated_checkpoint=gated_checkpoint(db),
        gated_touch_health=gated_touch_health(db),
        owner_guard=owner_guard_sql(db),
    )
