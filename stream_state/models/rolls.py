"""A tick's segment rolls, set-based: its completions in one statement per shape, its begins in two.

Every tenth second a recorder rolls a tenth of its segments (the old file
closes, the next one begins). Run one by one inside a tick, each roll is a
compare-and-set for the completion and, for the begin, a savepoint around
the index claim and the insert: about five statements, each a round trip on
PostgreSQL, so 500 round trips a tick at 1,000 streams. Here a tick's rolls
usually take three statements whatever their number (``Tick.commit`` calls
these; completions that set different optional columns, such as
``frame_count`` or ``finalized``, are one statement per such shape, and
SQLite takes at most 500 rows a statement):

* ``complete_many``: one compare-and-set through the segment-state gate's
  batched form (``Recording.transition_each``), each row guarded by its
  stream's owner and epoch and the session's lease in the same statement
  (invariants 5, 8, 10, 15);
* ``begin_many``: one ``UPDATE stream ... RETURNING`` claims every stream's
  indexes (``+ n`` for a stream that begins n segments; a removed stream, or
  one this session does not own at its epoch, does not match: invariants 2,
  3, 12, 15), a path filled from a template skips files already on disk as
  ``begin_segment`` does (invariant 16), then one ``INSERT ... SELECT`` writes the rows, born
  ``recording`` with the session and epoch that began them (invariant 14).
  The tick commits them before the caller opens a file (invariant 1). A path
  already used is skipped by ``ON CONFLICT ("path") DO NOTHING`` and named by
  the caller, where a failed INSERT would abort a PostgreSQL transaction.

What the batch cannot take (a completion with new metadata, a segment of a
stream this session does not hold yet, a row the compare-and-set refused) is
left to the single call, which writes it or names why not, with the same
checks and errors as ever. Nothing here commits: the tick's transaction
does, or rolls everything back.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import peewee as pw

from ..errors import AlreadyExists, NotFound, OwnershipLost, StreamStateError
from ..states import SegmentState
from .base import dialect
from .recording import Completion, Recording
from .session import OwnershipEachGuard, Session, live_session_sql
from .stream import SegmentStart, Stream


def complete_many(session: Session, items: Sequence[tuple[Recording, Completion]]) -> list[bool]:
    """Close the segments the batch can take; True for each one it closed (the rest: the single call).

    The batch takes a completion without new metadata of a segment whose
    stream this session already owns, the first one of each segment in the
    tick (a later one runs after it, alone, as it would in call order).
    """
    closed = [False] * len(items)
    seen: set[int] = set()
    shapes: dict[tuple[str, ...], list[int]] = {}
    values: list[dict[str, Any]] = []
    epochs: dict[int, int] = {}
    for i, (recording, done) in enumerate(items):
        values.append({})
        first = recording.id not in seen
        seen.add(recording.id)
        epoch = session.owned_epoch(recording.stream_id)
        if not first or done.metadata is not None or epoch is None:
            continue
        values[i] = done.values()
        epochs[recording.id] = epoch
        shapes.setdefault(tuple(values[i]), []).append(i)
    for columns, members in shapes.items():
        rows = [(items[i][0].id, tuple(values[i].values())) for i in members]
        moved = Recording.transition_each(
            rows,
            columns,
            SegmentState.RECORDING,
            SegmentState.COMPLETE,
            guard=OwnershipEachGuard(session, epochs),
        )
        changed = set(moved.changed)
        for i in members:
            closed[i] = items[i][0].id in changed
    return closed


@dataclass(frozen=True)
class Begun:
    """A segment row ``begin_many`` wrote (uncommitted): ``stream._begun(...)`` makes it an object."""

    stream: Stream
    start: SegmentStart
    recording_id: int
    index: int
    path: str
    session_id: int
    epoch: int

    def recording(self) -> Recording:
        return self.stream._begun(
            self.start, self.recording_id, self.index, self.path, self.session_id, self.epoch
        )


def begin_many(
    session: Session, items: Sequence[tuple[Stream, SegmentStart]], claims: contextlib.ExitStack
) -> list[Begun | StreamStateError]:
    """Write the rows of new segments, in call order per stream; each result is the row or why not.

    A stream this session does not hold yet is taken on this first write, as
    ``begin_segment`` takes it (its ``stream_claimed`` event with it), inside
    ``claims``: leaving it with an error forgets the claims the rolled-back
    transaction undid. ``OwnershipLost`` of a dead session is raised: no
    write of it may commit.
    """
    db = session.db
    results: list[Begun | StreamStateError | None] = [None] * len(items)
    by_stream: dict[int, list[int]] = {}
    for i, (stream, _start) in enumerate(items):
        by_stream.setdefault(stream.id, []).append(i)
    epochs: dict[int, int] = {}
    for sid, members in by_stream.items():
        stream = items[members[0]][0]
        epoch = session.owned_epoch(sid)
        if epoch is None:
            try:
                epoch = claims.enter_context(session.gate(sid, stream.name, verify=False))
            except (OwnershipLost, NotFound) as exc:
                _refuse(session, results, members, exc)
                continue
        epochs[sid] = epoch
    # invariants 2, 3, 12, 15: every stream's indexes in one gated statement
    wanted = [(sid, len(by_stream[sid]), epoch) for sid, epoch in epochs.items()]
    claimed = _claim(db, session, wanted)
    for sid in list(epochs):
        if sid in claimed:
            continue
        members = by_stream[sid]
        stream = items[members[0]][0]
        try:
            # The stream was free again (taken now: one retry), removed, or another's.
            epochs[sid] = again = stream._why_refused(session)
            retried = _claim(db, session, [(sid, len(members), again)])
            if sid not in retried:
                raise OwnershipLost(stream.name, session.id, None, "refused by the ownership gate")
            claimed[sid] = retried[sid]
        except (OwnershipLost, NotFound) as exc:
            _refuse(session, results, members, exc)
    rows: list[tuple[Any, ...]] = []
    spots: dict[tuple[int, int], tuple[int, str]] = {}
    for sid, after in claimed.items():
        members = by_stream[sid]
        index = after - len(members)
        for i in members:
            stream, start = items[i]
            # invariant 16: a path from a template never names a file already
            # on disk (a database behind its disk): skipped, with its event.
            index, path = stream._segment_name(start, index, session.id)
            spots[(sid, index)] = (i, path)
            rows.append(
                (
                    sid,
                    path,
                    start.storage,
                    index,
                    start.started_ms,
                    None if start.metadata is None else _json_text(start.metadata),
                    start.media_ms,
                    session.id,
                    epochs[sid],
                    start.suspicion,
                )
            )
            index += 1
        if index > after:  # a skip moved past the claimed indexes: the counter follows (invariant 3)
            _advance(db, sid, index)
    inserted = _insert(db, rows)
    for (sid, index), (i, path) in spots.items():
        recording_id = inserted.get((sid, index))
        stream, start = items[i]
        if recording_id is None:
            results[i] = AlreadyExists("recording", "path", path)
        else:
            results[i] = Begun(stream, start, recording_id, index, path, session.id, epochs[sid])
    assert all(result is not None for result in results)
    return results  # type: ignore[return-value]


def _refuse(session: Session, results: list[Any], members: list[int], exc: OwnershipLost | NotFound) -> None:
    if isinstance(exc, OwnershipLost) and session.is_dead:
        raise exc  # the session itself is refused: nothing of the tick may commit
    for i in members:
        results[i] = exc


def _claim(db: pw.Database, session: Session, wanted: list[tuple[int, int, int]]) -> dict[int, int]:
    """{stream id: next_segment_index after the claim} for the streams the gated claim matched."""
    if not wanted:
        return {}
    d = dialect(db)
    p = db.param
    found: dict[int, int] = {}
    for chunk in pw.chunked(wanted, d.max_table_rows):
        table = d.rows_table(_CLAIM_COLUMNS, len(chunk))
        sql = (
            'UPDATE "stream" SET "next_segment_index" = "stream"."next_segment_index" + v."n" '
            f'FROM {table} WHERE "stream"."id" = v."id" AND "stream"."removed_at" IS NULL '
            f'AND "stream"."owner_session_id" = {p} AND "stream"."owner_epoch" = v."epoch" '
            f'AND {live_session_sql(db)} RETURNING "stream"."id", "stream"."next_segment_index"'
        )
        params = [*d.rows_params(chunk, 3), session.id, session.id]
        found.update((sid, after) for sid, after in db.execute_sql(sql, params).fetchall())
    return found


def _advance(db: pw.Database, stream_id: int, next_index: int) -> None:
    """Move a stream's counter up to ``next_index`` (never down)."""
    p = db.param
    db.execute_sql(
        f'UPDATE "stream" SET "next_segment_index" = {p} WHERE "id" = {p} AND "next_segment_index" < {p}',
        (next_index, stream_id, next_index),
    )


_CLAIM_COLUMNS = (("id", "bigint"), ("n", "bigint"), ("epoch", "bigint"))

# The columns of a new segment's row that vary; the rest are the birth values.
_INSERT_COLUMNS = (
    ("stream_id", "bigint"),
    ("path", "text"),
    ("storage", "text"),
    ("segment_index", "bigint"),
    ("started_at", "bigint"),
    ("metadata", "text"),
    ("media_started_at", "bigint"),
    ("session_id", "bigint"),
    ("session_epoch", "bigint"),
    ("clock_suspect", "text"),
)


def _insert(db: pw.Database, rows: list[tuple[Any, ...]]) -> dict[tuple[int, int], int]:
    """Insert the rows (``_INSERT_COLUMNS``); {(stream id, segment index): id} of those written."""
    if not rows:
        return {}
    d = dialect(db)
    names = ", ".join(f'"{name}"' for name, _type in _INSERT_COLUMNS)
    metadata = 'v."metadata"' if d.is_sqlite else 'v."metadata"::jsonb'
    picked = ", ".join(metadata if name == "metadata" else f'v."{name}"' for name, _type in _INSERT_COLUMNS)
    found: dict[tuple[int, int], int] = {}
    for chunk in pw.chunked(rows, d.max_table_rows):
        table = d.rows_table(_INSERT_COLUMNS, len(chunk))
        # invariant 1: born recording, committed with the tick before any file is opened.
        # WHERE TRUE: SQLite would read ON CONFLICT as a join's ON without it.
        sql = (
            f'INSERT INTO "recording" ({names}, "size_bytes", "state", "archived") '
            f"SELECT {picked}, 0, '{SegmentState.RECORDING.value}', FALSE FROM {table} WHERE TRUE "
            'ON CONFLICT ("path") DO NOTHING RETURNING "id", "stream_id", "segment_index"'
        )
        cursor = db.execute_sql(sql, d.rows_params(chunk, len(_INSERT_COLUMNS)))
        found.update(((sid, index), rid) for rid, sid, index in cursor.fetchall())
    return found


def _json_text(value: Any) -> str:
    """Compact JSON text, as the single insert stores it (backends' ``json_param``)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
