"""One commit per tick: a stream manager's per-second calls, gathered and written together.

Every second a manager checkpoints each open segment, reports each stream's
health (nearly always unchanged), records the odd event and samples its
metrics. Called one by one, that is a commit per call: on SQLite most of the
CPU goes to building and committing small transactions, and on PostgreSQL
one loop falls behind real time at a few hundred streams, because every
commit waits for the WAL. A ``Tick`` gathers them instead::

    with stream_state.Tick() as tick:
        for cam in cams:
            tick.checkpoint(cam.segment, cam.bytes_written)
            tick.record_health(cam.stream, cam.health)
            tick.record_many(cam.samples())
        tick.event("motion", cam7.stream, data={"zone": 1})
    # written here: one transaction, one executemany (or unnest) per statement

Each call is validated when it is made, exactly as the single call is
(``ValidationError`` at once, naming the argument; the tick keeps its other
calls). ``commit()`` (or the end of the ``with`` block) writes everything in
one transaction, in this order: checkpoints, segment rolls (completions,
then begins), health reports, events, samples. A block that raises writes
nothing.

**Failure semantics: all or nothing.** A call the database refuses at commit
(a checkpoint or completion of a segment that is no longer open, a health
report or event of a removed or unknown stream, samples of an unknown
stream, a begin on a removed stream or with a path already used, a roll on a
stream another live session owns) rolls the whole tick back and raises
``TickFailed``, which names every refused call (its
position in the tick, what it was, why) and carries ``remaining``: a new
``Tick`` with every other call, ready to ``commit()``. So one stale segment
never loses a tick silently, and never costs the other streams more than
one retry. A database failure (disk full, connection lost) raises the
package's usual error; nothing of the tick is written.

Segment rolls ride in the tick: its completions are one statement (one per
shape of optional columns) and its begins two, whatever their number
(models/rolls.py), where one by one each
roll was a savepoint and four or five round trips on PostgreSQL. A begun
segment's row commits with the tick, and its ``PendingSegment.recording``
is set only then: open the file after the commit (invariant 1). A session
that is itself dead (its lease ran out) raises ``OwnershipLost``, as every
single call does. A health report that changes the
state takes the full path (event, log line) inside the tick's transaction;
``commit()`` returns a ``TickReport`` that lists those changes. Events
written by a tick are not read back, so they have no ``id``: use
``Event.record`` when you need it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import peewee as pw

from .errors import (
    InvalidTransition,
    NotFound,
    OwnershipLost,
    StreamStateError,
    TickFailed,
    ValidationError,
)
from .models import Event, MetricSample, Recording, Stream
from .models.base import check_database_file, current_database, dialect
from .models.metric import (
    Sample,
    _Batch,
    _executemany,
    _prepare,
    _wrap_database_error,
    series_id_cache,
)
from .models.recording import Completion
from .models.rolls import Begun, begin_many, complete_many
from .models.session import writer
from .models.statements import manager_statements
from .models.stream import SegmentStart, health_values
from .states import HealthState, Severity
from .timeutil import from_millis

log = logging.getLogger(__name__)


__all__ = ["PendingSegment", "Tick", "TickFailed", "TickFailure", "TickReport"]


@dataclass(frozen=True)
class TickFailure:
    """One call of a tick that the database refused."""

    index: int  # the call's position in the tick, from 0
    call: str  # what it was, e.g. "checkpoint of /rec/cam-1/00000042.mp4"
    error: StreamStateError


@dataclass
class TickReport:
    """What a committed tick wrote."""

    checkpoints: int = 0
    segments_completed: int = 0
    segments_begun: int = 0
    health_reports: int = 0
    health_changes: list[tuple[Stream, HealthState]] = field(default_factory=list)
    # The positions (in the tick) of the health reports that changed a state:
    # how a caller of a gathered single call (stream_state.coalesce) learns its own.
    health_changed_calls: list[int] = field(default_factory=list)
    events: int = 0
    samples: int = 0


@dataclass
class _Checkpoint:
    index: int
    recording: Recording
    size: int
    at_ms: int


@dataclass
class _Health:
    index: int
    stream: Stream
    state: HealthState
    reason: str | None
    data: dict[str, Any] | None
    at: dt.datetime
    at_ms: int


@dataclass
class _Event:
    index: int
    row: Event


@dataclass
class PendingSegment:
    """A segment a tick begins: ``recording`` is its row once the tick committed (None before).

    Open the file only after the commit: a row exists before its file.
    """

    stream: Stream
    recording: Recording | None = None


@dataclass
class _Segment:
    index: int
    kind: str  # "begin" or "complete"
    target: Any  # the Stream (begin) or Recording (complete)
    done: Completion | None = None  # complete: what it writes, validated at the call
    start: SegmentStart | None = None  # begin: the new row, validated at the call
    pending: PendingSegment | None = None
    # Set at commit: closed by the batch (the object is updated after the
    # commit), or the new row written (an object once committed).
    batched: bool = False
    begun: Begun | None = None


@dataclass
class _Samples:
    index: int
    batch: _Batch  # validated, as MetricSample.record_many validates them


class Tick:
    """The calls of one manager tick, written in one transaction by ``commit()``.

    Not thread-safe: one tick is filled by one thread (or task) and committed once.
    """

    def __init__(self) -> None:
        self._checkpoints: list[_Checkpoint] = []
        self._health: list[_Health] = []
        self._events: list[_Event] = []
        self._segments: list[_Segment] = []
        self._samples: list[_Samples] = []
        self._calls = 0
        self._committed = False

    def __len__(self) -> int:
        """How many calls the tick holds."""
        return self._calls

    def __enter__(self) -> Tick:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and not self._committed:
            self.commit()

    # --- gathering ---------------------------------------------------------------------

    def _next(self) -> int:
        if self._committed:
            raise InvalidTransition("tick", "committed", "add a call", "start a new tick")
        index = self._calls
        self._calls += 1
        return index

    def checkpoint(self, recording: Recording, size_bytes: int, at: dt.datetime | None = None) -> None:
        """``recording.checkpoint(size_bytes, at)``, written at commit."""
        if not isinstance(recording, Recording):
            raise ValidationError("recording", recording, "expected a Recording (from begin_segment)")
        size, at_ms = recording._checkpoint_values(size_bytes, at)
        self._checkpoints.append(_Checkpoint(self._next(), recording, size, at_ms))

    def record_health(
        self,
        stream: Stream,
        state: HealthState | str,
        reason: str | None = None,
        data: dict[str, Any] | None = None,
        at: dt.datetime | None = None,
    ) -> None:
        """``stream.record_health(...)``, written at commit (a change writes its event then)."""
        if not isinstance(stream, Stream):
            raise ValidationError("stream", stream, "expected a Stream")
        requested, reason, data, when, when_ms = health_values(state, reason, data, at)
        self._health.append(_Health(self._next(), stream, requested, reason, data, when, when_ms))

    def event(
        self,
        type: str,
        stream: Stream | int | None = None,
        severity: Severity | str = Severity.INFO,
        message: str | None = None,
        data: dict[str, Any] | None = None,
        at: dt.datetime | None = None,
    ) -> None:
        """``Event.record(...)``, written at commit (credentials masked, as always)."""
        row = Event.build(type, stream=stream, severity=severity, message=message, data=data, at=at)
        self._events.append(_Event(self._next(), row))

    def complete_segment(
        self,
        recording: Recording,
        ended_at: dt.datetime | None = None,
        size_bytes: int | None = None,
        metadata: dict[str, Any] | None = None,
        **media: Any,
    ) -> None:
        """``recording.complete_segment(...)``, written at commit with the tick's other rolls.

        Saves a commit per segment (on PostgreSQL each commit waits for the
        WAL), and the tick closes its segments in one statement (per shape). Validated
        now, as the single call validates; the end time defaults to now and
        the size to the file's, both read now, at the call (a clock stepped
        back since the segment began is clamped, as by the single call).
        """
        if not isinstance(recording, Recording):
            raise ValidationError("recording", recording, "expected a Recording (from begin_segment)")
        done = recording._completion(ended_at, size_bytes, metadata, **media)
        self._segments.append(_Segment(self._next(), "complete", recording, done=done))

    def begin_segment(
        self, stream: Stream, path: Any = None, started_at: dt.datetime | None = None, **more: Any
    ) -> PendingSegment:
        """``stream.begin_segment(...)``, written at commit with the tick's other rolls.

        Returns a ``PendingSegment`` whose ``recording`` is the new row once
        the tick committed: open the file only then (invariant 1). Validated
        now, as the single call validates (the start defaults to now, read
        now); a refusal by the database (a path already used, a removed
        stream, a stream another live session owns) is a ``TickFailed``
        naming this call.
        """
        if not isinstance(stream, Stream):
            raise ValidationError("stream", stream, "expected a Stream")
        start = stream._segment_start(path, started_at, **more)
        pending = PendingSegment(stream)
        self._segments.append(_Segment(self._next(), "begin", stream, start=start, pending=pending))
        return pending

    def record_many(self, samples: Iterable[Sample | Mapping[str, Any] | Sequence[Any]]) -> int:
        """``MetricSample.record_many(samples)``, written at commit; returns how many were taken."""
        if isinstance(samples, (str, bytes, Mapping, Sample)) or not isinstance(samples, Iterable):
            raise ValidationError("samples", samples, "expected an iterable of samples")
        items = samples if isinstance(samples, list) else list(samples)
        if not items:
            return 0
        batch = _prepare(items, single=False)  # before _next(): a refused call takes no place
        self._samples.append(_Samples(self._next(), batch))
        return len(items)

    def record(
        self,
        name: str,
        value: float,
        stream: Stream | int | None = None,
        labels: Mapping[str, str | int] | None = None,
        at: dt.datetime | None = None,
    ) -> None:
        """``MetricSample.record(...)``: one sample, written at commit."""
        batch = _prepare([(name, value, stream, labels, at)], single=True)
        self._samples.append(_Samples(self._next(), batch))

    # --- writing -------------------------------------------------------------------------

    def commit(self) -> TickReport:
        """Write every call in one transaction; ``TickFailed`` (nothing written) if any is refused."""
        if self._committed:
            raise InvalidTransition("tick", "committed", "commit", "a tick is written once")
        self._committed = True
        report = TickReport()
        if not self._calls:
            return report
        db = current_database()
        check_database_file(db)
        failures: list[TickFailure] = []
        learned: dict[str, int] = {}
        try:
            for attempt in range(2):
                try:
                    # One ownership check for every stream the tick writes on
                    # (invariant 15), in its transaction; a roll is gated in
                    # its own statements, and a stream it takes on its first
                    # write (claims) is forgotten again if the tick rolls back.
                    with db.atomic(), self._owned(db), contextlib.ExitStack() as claims:
                        self._write(db, report, failures, learned, claims)
                        if failures:
                            raise _Refused
                    break
                except pw.IntegrityError:
                    # A cached series id went stale under a concurrent delete
                    # (PostgreSQL): once more with the cache dropped.
                    series_id_cache(db).forget()
                    learned.clear()
                    if attempt or db.in_transaction() or not self._samples:
                        raise
                    report = TickReport()
        except _Refused:
            raise TickFailed(failures, self._without(failures), self._calls) from None
        except pw.PeeweeException as exc:
            self._diagnose_integrity(db, exc)
            raise _wrap_database_error(db, exc, f"writing a tick of {self._calls} calls") from exc
        series_id_cache(db).learn(learned, db)
        self._settle(report)
        return report

    def _owned(self, db: pw.Database) -> contextlib.AbstractContextManager[Any]:
        """The ownership gate over the streams of the tick's checkpoints, health, events and samples."""
        ids: set[int] = {c.recording.stream_id for c in self._checkpoints}
        ids |= {call.stream.id for call in self._health}
        ids |= {e.row.stream_id for e in self._events if e.row.stream_id is not None}
        for samples in self._samples:
            ids |= {sid for sid in samples.batch.stream_ids if sid is not None}
        if not ids:
            return contextlib.nullcontext()
        return writer(db).gate(sorted(ids), skip_missing=True)

    def _write(
        self,
        db: pw.Database,
        report: TickReport,
        failures: list[TickFailure],
        learned: dict[str, int],
        claims: contextlib.ExitStack,
    ) -> None:
        sql = manager_statements(db)
        postgres = not dialect(db).is_sqlite
        if self._checkpoints:
            # The last checkpoint of a segment in the tick wins, as if run in order.
            latest = {c.recording.id: c for c in self._checkpoints}
            rows = [(c.size, c.at_ms, rid) for rid, c in latest.items()]
            if postgres:
                ids, sizes, ats = zip(*((rid, size, at) for size, at, rid in rows), strict=True)
                written = db.execute_sql(sql.checkpoint_bulk, (list(ids), list(sizes), list(ats))).rowcount
            else:
                written = _rowcount(db, sql.checkpoint, rows)
            if written != len(rows):
                failures.extend(self._refused_checkpoints(db, latest))
            report.checkpoints = len(self._checkpoints)
        if self._segments:
            self._write_rolls(db, report, failures, claims)
        if self._health:
            self._write_health(db, sql, postgres, report, failures)
        if self._events:
            rows = [event.row._insert_values(db) for event in self._events]
            _executemany(db, sql.insert_event, rows, len(rows))
            report.events = len(rows)
        if self._samples and not failures:
            try:
                # Every call's samples together, in call order (the last
                # sample for a series and millisecond wins), by the path
                # MetricSample.record_many takes.
                MetricSample._write_batches(db, [s.batch for s in self._samples], learned)
            except NotFound as exc:
                failures.extend(self._refused_samples(exc))
            report.samples = sum(len(s.batch) for s in self._samples)

    def _write_rolls(
        self, db: pw.Database, report: TickReport, failures: list[TickFailure], claims: contextlib.ExitStack
    ) -> None:
        """Completions in one statement per shape, begins in two (models/rolls.py), the rest one by one."""
        session = writer(db)
        completes = [call for call in self._segments if call.kind == "complete"]
        begins = [call for call in self._segments if call.kind == "begin"]
        refused: list[TickFailure] = []
        closed = complete_many(session, [(call.target, cast(Completion, call.done)) for call in completes])
        for call, batched in zip(completes, closed, strict=True):
            call.batched = batched
            if batched:
                continue
            # Not for the batch, or refused by it: the single call writes it
            # or says why (not open, gone, another session's stream).
            try:
                call.target._complete(call.done)
            except (NotFound, InvalidTransition, OwnershipLost) as exc:
                if isinstance(exc, OwnershipLost) and session.is_dead:
                    raise
                refused.append(TickFailure(call.index, f"complete segment of {call.target.path}", exc))
        begun = begin_many(
            session, [(call.target, cast(SegmentStart, call.start)) for call in begins], claims
        )
        for call, result in zip(begins, begun, strict=True):
            if isinstance(result, StreamStateError):
                refused.append(TickFailure(call.index, f"begin segment of {call.target.name}", result))
            else:
                call.begun = result
        failures.extend(sorted(refused, key=lambda failure: failure.index))
        report.segments_completed = len(completes) - sum(f.call.startswith("complete") for f in refused)
        report.segments_begun = len(begins) - sum(f.call.startswith("begin") for f in refused)

    def _write_health(
        self, db: pw.Database, sql: Any, postgres: bool, report: TickReport, failures: list[TickFailure]
    ) -> None:
        per_stream: dict[int, list[_Health]] = {}
        for call in self._health:
            per_stream.setdefault(call.stream.id, []).append(call)
        # One report per stream (the usual tick): the state is unchanged, so
        # one bulk touch of last_seen_at; the few it does not match look closer.
        single = [calls[0] for calls in per_stream.values() if len(calls) == 1]
        closer = [call for calls in per_stream.values() if len(calls) > 1 for call in calls]
        if single:
            if postgres:
                written = db.execute_sql(
                    sql.touch_health_bulk,
                    (
                        [c.stream.id for c in single],
                        [c.at_ms for c in single],
                        [c.state.value for c in single],
                    ),
                ).rowcount
            else:
                written = _rowcount(
                    db, sql.touch_health, [(c.at_ms, c.stream.id, c.state.value) for c in single]
                )
            if written != len(single):
                closer = self._untouched(db, single) + closer
                closer.sort(key=lambda c: c.index)
        for call in closer:
            try:
                touched = db.execute_sql(
                    sql.touch_health, (call.at_ms, call.stream.id, call.state.value)
                ).rowcount
                if not touched and call.stream._change_health(call.state, call.reason, call.data, call.at):
                    report.health_changes.append((call.stream, call.state))
                    report.health_changed_calls.append(call.index)
            except (NotFound, InvalidTransition) as exc:
                failures.append(TickFailure(call.index, f"health of stream {call.stream.name}", exc))
        report.health_reports = len(self._health)

    def _untouched(self, db: pw.Database, calls: list[_Health]) -> list[_Health]:
        """The reports whose bulk touch matched no row: a change, or a removed stream."""
        current = _rows_by_id(db, Stream, ("health", "removed_at"), [c.stream.id for c in calls])
        return [
            c
            for c in calls
            if c.stream.id not in current
            or current[c.stream.id][1] is not None
            or current[c.stream.id][0] != c.state.value
        ]

    def _refused_checkpoints(self, db: pw.Database, latest: dict[int, _Checkpoint]) -> list[TickFailure]:
        found = _rows_by_id(db, Recording, ("ended_at", "state"), list(latest))
        failures: list[TickFailure] = []
        for rid, call in latest.items():
            row = found.get(rid)
            path = call.recording.path
            if row is None:
                error: StreamStateError = NotFound("recording", path)
            elif row[0] is not None:
                error = InvalidTransition("segment", row[1], "checkpoint", f"{path} is not open")
            else:
                continue
            # Every checkpoint of that segment in the tick is refused.
            failures.extend(
                TickFailure(c.index, f"checkpoint of {path}", error)
                for c in self._checkpoints
                if c.recording.id == rid
            )
        return failures

    def _refused_samples(self, exc: NotFound) -> list[TickFailure]:
        """The record_many calls that carry samples of the unknown stream(s)."""
        missing = exc.key if isinstance(exc.key, list) else [exc.key]
        return [
            TickFailure(s.index, f"samples ({len(s.batch)})", exc)
            for s in self._samples
            if not s.batch.stream_ids.isdisjoint(missing)
        ]

    def _diagnose_integrity(self, db: pw.Database, exc: pw.PeeweeException) -> None:
        """An event of an unknown stream fails its foreign key: say which, as TickFailed."""
        if not isinstance(exc, pw.IntegrityError) or not self._events:
            return
        wanted = [e.row.stream_key for e in self._events if e.row.stream_key is not None]
        query = Stream.select(Stream.id).where(Stream.id.in_(wanted))
        existing = {cast(Any, row)[0] for row in query.tuples()}
        failures = [
            TickFailure(e.index, f"event {e.row.type}", NotFound("stream", e.row.stream_key))
            for e in self._events
            if e.row.stream_key is not None and e.row.stream_key not in existing
        ]
        if failures:
            raise TickFailed(failures, self._without(failures), self._calls) from exc

    def _keeping(self, indexes: list[int]) -> Tick:
        """A new tick with only the calls at these positions (renumbered in order); nothing re-validated."""
        kept = set(indexes)
        return self._dropping({i for i in range(self._calls) if i not in kept})

    def _without(self, failures: list[TickFailure]) -> Tick:
        return self._dropping({f.index for f in failures})

    def _dropping(self, dropped: set[int]) -> Tick:
        rest = Tick()
        kept: list[Any] = sorted(
            itertools.chain(
                (c for c in self._checkpoints if c.index not in dropped),
                (c for c in self._health if c.index not in dropped),
                (c for c in self._events if c.index not in dropped),
                (c for c in self._segments if c.index not in dropped),
                (c for c in self._samples if c.index not in dropped),
            ),
            key=lambda call: call.index,
        )
        for call in kept:
            # Validated already (samples keep the times they were given, "now" included).
            copy = type(call)(**{**call.__dict__, "index": rest._next()})
            if isinstance(copy, _Segment):
                copy.batched, copy.begun = False, None
            if isinstance(copy, _Checkpoint):
                rest._checkpoints.append(copy)
            elif isinstance(copy, _Health):
                rest._health.append(copy)
            elif isinstance(copy, _Segment):
                rest._segments.append(copy)
            elif isinstance(copy, _Samples):
                rest._samples.append(copy)
            else:
                rest._events.append(copy)
        return rest

    def _settle(self, report: TickReport) -> None:
        """After the commit: the objects the caller holds show what was written."""
        at_ms, at = -1, None
        for c in self._checkpoints:
            if c.at_ms != at_ms:  # a tick's checkpoints nearly all share one time: one datetime
                at_ms, at = c.at_ms, from_millis(c.at_ms)
            c.recording.size_bytes = c.size
            c.recording.checkpoint_at = at
        for h in self._health:
            h.stream.health = h.state
            h.stream.last_seen_at = h.at
        for call in self._segments:
            if call.batched:
                assert call.done is not None
                call.target._closed(call.done)
            elif call.begun is not None and call.pending is not None:
                call.pending.recording = call.begun.recording()  # committed: open the file now
        log.debug(
            "tick: %d checkpoints, %d health reports (%d changes), %d events, %d samples",
            report.checkpoints,
            report.health_reports,
            len(report.health_changes),
            report.events,
            report.samples,
        )


class _Refused(Exception):
    """Internal: leave the transaction (rolling it back) because calls were refused."""


def _rows_by_id(
    db: pw.Database, model: type[pw.Model], columns: tuple[str, str], ids: list[int]
) -> dict[int, tuple[Any, Any]]:
    """{id: (column, column)} of the rows of ``model`` with these ids (the ones that exist)."""
    p = db.param
    selected = ", ".join(f'"{model._meta.fields[name].column_name}"' for name in columns)
    found: dict[int, tuple[Any, Any]] = {}
    for chunk in pw.chunked(ids, 500):
        marks = ", ".join([p] * len(chunk))
        cursor = db.execute_sql(
            f'SELECT "id", {selected} FROM "{model._meta.table_name}" WHERE "id" IN ({marks})', list(chunk)
        )
        found.update((row_id, (a, b)) for row_id, a, b in cursor.fetchall())
    return found


def _rowcount(db: pw.Database, sql: str, rows: list[tuple[Any, ...]]) -> int:
    """``executemany`` and the rows it changed (sqlite3 sums them over the rows)."""
    with cast(Any, pw).__exception_wrapper__:
        cursor = db.cursor()
        cursor.executemany(sql, rows)
        return int(cursor.rowcount)
