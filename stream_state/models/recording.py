"""One row per segment file on disk."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import peewee as pw

from ..errors import AlreadyExists, InvalidTransition, NotFound, StorageFull, ValidationError
from ..fields import EnumField, GrowingIdField, TimestampField
from ..redact import redact_text
from ..states import EventType, SegmentState, Severity
from ..timeutil import exact_utc, from_millis, to_millis, utc_now
from ..transitions import check_segment_transition
from ..validate import optional_text, require_count, require_json_object, require_segment_path, require_text
from . import gate
from .base import BaseModel, locked
from .gate import EachGuard, EventsFor, Guard, Transition
from .session import ownership_guard, writer
from .statements import Prepared, prepared
from .stream import Stream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    """What closing a segment writes, validated (``Recording._completion``): end, size, metadata, media."""

    ended: dt.datetime  # as given (or now, or the start when clamped)
    ended_ms: int
    size_bytes: int
    metadata: dict[str, Any] | None  # None: keep the row's (the common case: one statement)
    media: dict[str, Any]  # media_ended_at (ms), frame_count, finalized: only those given
    too_long: bool  # flagged clock_suspect "too_long" (a clock step inside the segment)
    clamped: dict[str, Any] | None  # the note of an end clamped to the start (a clock stepped back)

    def values(self) -> dict[str, Any]:
        """The columns the gate sets besides the state when the metadata is kept."""
        return {
            "ended_at": self.ended_ms,
            "size_bytes": self.size_bytes,
            **self.media,
            **({"clock_suspect": "too_long"} if self.too_long else {}),
        }


class Recording(BaseModel):
    # Never reused: events and operators refer to segments by id.
    id = GrowingIdField()
    # The unique (stream, segment_index) index below leads with stream_id and
    # serves foreign-key checks, so the default single-column index is skipped.
    stream = pw.ForeignKeyField(Stream, backref="recordings", on_delete="RESTRICT", index=False)
    stream_id: int  # the foreign key's column, as peewee exposes it
    path = pw.TextField(unique=True)
    storage = pw.TextField(null=True)
    segment_index = pw.BigIntegerField(constraints=[pw.Check("segment_index >= 0")])
    started_at = TimestampField()
    ended_at = TimestampField(null=True)  # NULL exactly while the segment is open
    checkpoint_at = TimestampField(null=True)  # last progress report of an open segment
    size_bytes = pw.BigIntegerField(default=0, constraints=[pw.Check("size_bytes >= 0")])  # invariant 8
    state = EnumField(SegmentState, default=SegmentState.RECORDING)
    archived = pw.BooleanField(default=False)
    metadata = pw.JSONField(null=True)
    # The media's own evidence (migration 005): first frame and end of the last
    # frame mapped to wall clock, frames muxed, whether the muxer finalised the
    # file. When given, the media times are also started_at / ended_at.
    media_started_at = TimestampField(null=True)
    media_ended_at = TimestampField(null=True)
    frame_count = pw.BigIntegerField(null=True)
    finalized = pw.BooleanField(null=True)
    # Why the segment's timestamps cannot be believed (migration 004), else
    # NULL: kept with its evidence, never trusted for the range queries'
    # bound or retention's age order. See clock.py.
    clock_suspect = pw.TextField(null=True)

    # A segment longer than this is not believed (a clock step inside it, say
    # a 1970 boot then NTP): flagged ``too_long``. Managers with longer
    # segments raise it: ``Recording.max_plausible_length = dt.timedelta(hours=48)``.
    max_plausible_length = dt.timedelta(hours=24)

    # The session that began the segment and its epoch on the stream then
    # (restore repairs only dead sessions' segments; the audit checks them).
    session_id = pw.BigIntegerField(null=True)
    session_epoch = pw.BigIntegerField(null=True)
    # The session in the middle of a multi-step change of the row
    # (deleting, archiving): a repair leaves it alone while that one lives.
    busy_session_id = pw.BigIntegerField(null=True)

    class Meta:
        table_name = "recording"
        constraints = [pw.Check("ended_at IS NULL OR ended_at >= started_at")]  # invariant 8
        indexes = (
            # A segment index is never reused within a stream (invariant 2).
            (("stream", "segment_index"), True),
            # Time-range queries: start < until AND start >= since - max_length;
            # with end and state in the index, gaps and overlaps read only the index.
            (("stream", "started_at", "ended_at", "state"), False),
            # Retention scans oldest-first by end time.
            (("ended_at",), False),
        )

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"<Recording {self.id} {self.path!r} #{self.segment_index} {self.state}>"

    @property
    def is_open(self) -> bool:
        return self.ended_at is None

    @property
    def duration(self) -> dt.timedelta | None:
        """How long the segment covers; None while it is open."""
        return None if self.ended_at is None else self.ended_at - self.started_at

    # --- queries ---------------------------------------------------------------------------

    @classmethod
    def open_segments(cls) -> pw.ModelSelect[Recording]:
        """Segments still being written, oldest first (served by the partial index)."""
        return cls.select().where(cls.ended_at.is_null()).order_by(cls.started_at, cls.id)

    @classmethod
    def for_stream(cls, stream: Stream | int) -> pw.ModelSelect[Recording]:
        """A stream's segments in recording order."""
        return cls.select().where(cls.stream == stream).order_by(cls.stream, cls.started_at, cls.id)

    # --- the gate: every change of a segment's state goes through here --------------------

    @classmethod
    def transition(
        cls,
        ids: int | Iterable[int],
        from_: SegmentState | str | Iterable[SegmentState | str],
        to: SegmentState | str,
        *,
        values: Mapping[str, Any] | None = None,
        event: EventsFor | None = None,
        guard: Guard | None = None,
        strict: bool = False,
    ) -> Transition:
        """Move the rows ``ids`` that are in a ``from_`` state to ``to``, as one compare-and-set.

        The transition map must allow every ``from_ -> to`` (else
        ``InvalidTransition``, nothing written). ``values`` sets other
        columns in the same UPDATE; ``event(transition)`` returns unsaved
        events, written in the same transaction when a row changed;
        ``guard`` adds a condition to the statement (the owner check of
        sessions). Rows in another state are left alone and reported in
        ``refused``; ``strict`` raises for them instead (invariant 10).
        """
        return gate.change(cls, ids, from_, to, values=values, event=event, guard=guard, strict=strict)

    @classmethod
    def transition_each(
        cls,
        rows: Sequence[tuple[int, Sequence[Any]]],
        columns: Sequence[str],
        from_: SegmentState | str | Iterable[SegmentState | str],
        to: SegmentState | str,
        *,
        event: EventsFor | None = None,
        guard: EachGuard | None = None,
    ) -> Transition:
        """``transition`` for many rows, each setting ``columns`` to its own values: one statement.

        ``rows`` are ``(id, values)`` with the values in ``columns`` order;
        ``guard`` is a per-row guard (``OwnershipEachGuard``: each segment's
        stream owned at its own epoch). Refused rows are reported, never
        raised (invariant 10).
        """
        return gate.change_each(cls, rows, columns, from_, to, event=event, guard=guard)

    @classmethod
    def finish_delete(
        cls,
        ids: int | Iterable[int],
        *,
        event: EventsFor | None = None,
        guard: Guard | None = None,
        strict: bool = False,
    ) -> Transition:
        """Remove the rows ``ids`` that are ``deleting`` (their files are gone): the last step of a delete.

        A row is only ever removed from ``deleting`` (invariant 6).
        """
        return gate.change(cls, ids, SegmentState.DELETING, None, event=event, guard=guard, strict=strict)

    @classmethod
    def create_segment(cls, state: SegmentState, **columns: Any) -> Recording:
        """Insert a row that starts in ``state`` (``recovered`` for an adopted file)."""
        return gate.create(cls, state, **columns)  # type: ignore[return-value]

    # --- the life of a segment ------------------------------------------------------------

    def checkpoint(self, size_bytes: int, at: dt.datetime | None = None) -> None:
        """Record the progress of an open segment: one UPDATE, no transaction.

        After a crash the last checkpoint bounds what was lost. Inside a
        manager's tick, ``tick.checkpoint(recording, ...)`` writes it with the
        tick's other calls in one transaction.
        """
        self._clock_clamped = None
        size, when_ms = self._checkpoint_values(size_bytes, at)
        # This runs every second for every stream: the statement is spelled
        # once per database (statements.Prepared) and gated on (owner, epoch)
        # and the session's lease in itself (invariant 15).
        hot = prepared(self._meta.database)
        session = writer(hot.db)
        stream_id = self.stream_id
        epoch = session.owned_epoch(stream_id)
        if epoch is not None:
            updated = self._write_checkpoint(hot, session, epoch, size, when_ms)
        else:
            with _claiming(hot.db, session, stream_id) as epoch:
                updated = self._write_checkpoint(hot, session, epoch, size, when_ms)
        if not updated:
            again = session.refused(stream_id)
            if again is not None:  # the stream was free again and is taken: one retry
                updated = self._write_checkpoint(hot, session, again, size, when_ms)
        if not updated:
            self._raise_not_open("checkpoint")
        self.size_bytes = size
        self.checkpoint_at = at if exact_utc(at) else from_millis(when_ms)
        if self._clock_clamped is not None:
            self._note_in_metadata(self._clock_clamped)

    _clock_clamped: dict[str, Any] | None = None

    def _note_in_metadata(self, note: dict[str, Any]) -> None:
        """Merge a clamped-clock note into the row's metadata (rare: only after a clock step)."""
        cls = type(self)
        with self._meta.database.atomic():
            fresh = locked(cls.select(cls.metadata).where(cls.id == self.id)).first()
            if fresh is None:
                return
            merged = dict(fresh.metadata or {})
            earlier = merged.get("clock_clamped")
            clamp = note["clock_clamped"]
            merged["clock_clamped"] = {**earlier, **clamp} if isinstance(earlier, dict) else clamp
            cls.update(metadata=merged).where(cls.id == self.id).execute()
        self.metadata = merged

    def _checkpoint_values(self, size_bytes: int, at: dt.datetime | None) -> tuple[int, int]:
        """(size_bytes, at in epoch ms) of a checkpoint, validated; nothing is written."""
        require_count("size_bytes", size_bytes)
        when = utc_now() if at is None else at
        when_ms = to_millis(when, "at")
        started_ms = to_millis(self.started_at)
        clamped = at is None and when_ms < started_ms
        if when_ms < started_ms and not clamped:
            raise ValidationError("at", when, f"before the segment started ({self.started_at.isoformat()})")
        if clamped:
            # The wall clock stepped back since the segment began: the caller
            # passed no time, so nothing of theirs is wrong; clamp and say so
            # (checkpoint() writes the note into the row's metadata).
            self._clock_clamped = clock_note("checkpoint_at", when, self.started_at)
            when_ms = started_ms
        return size_bytes, when_ms

    def _write_checkpoint(
        self, hot: Prepared, session: Any, epoch: int, size_bytes: int, when_ms: int
    ) -> int:
        session_id = session.id
        return int(
            hot.db.execute_sql(
                hot.gated_checkpoint, (size_bytes, when_ms, self.id, session_id, epoch, session_id)
            ).rowcount
        )

    def complete_segment(
        self,
        ended_at: dt.datetime | None = None,
        size_bytes: int | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        media_ended_at: dt.datetime | None = None,
        frame_count: int | None = None,
        finalized: bool | None = None,
    ) -> Recording:
        """Close the segment: end time (default now), size (default the file's), metadata merged.

        ``media_ended_at`` (the end of the last frame, mapped to wall clock)
        is also the row's ``ended_at`` when given; ``frame_count`` and
        ``finalized`` record what the muxer did. ``finalized=False`` is
        refused: a file the muxer did not finalise is never ``complete``
        (``fail()`` it, or leave it open for restore to judge).

        Completing again with the same values is harmless; completing a
        segment that is not open is ``InvalidTransition``.
        """
        done = self._completion(ended_at, size_bytes, metadata, media_ended_at, frame_count, finalized)
        return self._complete(done)

    def _completion(
        self,
        ended_at: dt.datetime | None,
        size_bytes: int | None,
        metadata: dict[str, Any] | None,
        media_ended_at: dt.datetime | None = None,
        frame_count: int | None = None,
        finalized: bool | None = None,
    ) -> Completion:
        """``complete_segment``'s arguments, validated and defaulted (now, the file's size); nothing written.

        A tick (``Tick.complete_segment``) takes them at the call and writes
        many at once (models/rolls.py).
        """
        if finalized is not None and not isinstance(finalized, bool):
            raise ValidationError("finalized", finalized, "expected True, False or None")
        if finalized is False:
            raise ValidationError(
                "finalized",
                finalized,
                f"{self.path} was not finalised by its muxer, so it cannot be complete",
            )
        if frame_count is not None:
            require_count("frame_count", frame_count)
        media_ms = None if media_ended_at is None else to_millis(media_ended_at, "media_ended_at")
        ended = (
            ended_at if ended_at is not None else media_ended_at if media_ended_at is not None else utc_now()
        )
        ended_ms = to_millis(ended, "ended_at")
        started_ms = to_millis(self.started_at)
        clamped: dict[str, Any] | None = None
        if ended_at is None and media_ended_at is None and ended_ms < started_ms:
            # A defaulted "now" before the start: the wall clock stepped back
            # (NTP). The caller gave no time, so nothing of theirs is wrong:
            # the end is clamped to the start and the row says why.
            note = clamped = clock_note("ended_at", ended, self.started_at)
            metadata = (
                {**(metadata or {}), **note} if isinstance(metadata, dict) or metadata is None else metadata
            )
            ended_ms = started_ms
            ended = self.started_at
        if media_ms is not None and media_ms != ended_ms:
            raise ValidationError(
                "ended_at", ended_at, "differs from media_ended_at; the media time is the row's end"
            )
        if ended_ms < started_ms:
            raise ValidationError(
                "ended_at", ended, f"before the segment started ({self.started_at.isoformat()})"
            )
        if size_bytes is None:
            size_bytes = self._size_on_disk()
        require_count("size_bytes", size_bytes)
        if metadata is not None:
            metadata = require_json_object("metadata", metadata)
        media = (
            {
                key: value
                for key, value in (
                    ("media_ended_at", media_ms),
                    ("frame_count", frame_count),
                    ("finalized", finalized),
                )
                if value is not None
            }
            if media_ms is not None or frame_count is not None or finalized is not None
            else {}
        )
        # invariant: a segment whose length cannot be true is flagged, not believed
        too_long = ended_ms - started_ms > self.max_plausible_length / _ONE_MS
        return Completion(ended, ended_ms, size_bytes, metadata, media, too_long, clamped)

    def _complete(self, done: Completion) -> Recording:
        """Write a validated completion (``_completion``) as ``complete_segment`` does."""
        ended_ms, size_bytes, metadata, media, too_long, clamped = (
            done.ended_ms,
            done.size_bytes,
            done.metadata,
            done.media,
            done.too_long,
            done.clamped,
        )
        suspect = {"clock_suspect": "too_long"} if too_long else {}
        cls = type(self)
        db = self._meta.database
        session = writer(db)
        stream_id = self.stream_id
        epoch = session.owned_epoch(stream_id)
        if metadata is None and epoch is not None:
            # The common case, an open segment closed without new metadata:
            # one statement, which only an open row matches (invariants 5, 8);
            # media values not given keep what the row has.
            values: dict[str, Any] = {"ended_at": ended_ms, "size_bytes": size_bytes}
            if media:
                values.update(media)
            if too_long:
                values.update(suspect)
            closed = cls.transition(
                self.id,
                SegmentState.RECORDING,
                SegmentState.COMPLETE,
                values=values,
                guard=ownership_guard(session, stream_id, epoch),
            )
            if closed:
                self._closed(done)
                return self
        with db.atomic():
            fresh = locked(cls.select().where(cls.id == self.id)).first()
            if fresh is None:
                raise NotFound("recording", self.path)
            with session.gate(fresh.stream_id):
                if (
                    fresh.state == SegmentState.COMPLETE
                    and fresh.ended_at == from_millis(ended_ms)
                    and fresh.size_bytes == size_bytes
                    and all(
                        fresh.__data__.get(key) == (from_millis(value) if key == "media_ended_at" else value)
                        for key, value in media.items()
                    )
                    and (metadata is None or {**(fresh.metadata or {}), **metadata} == (fresh.metadata or {}))
                ):
                    # completing again with the same values is harmless
                    self.__data__.update(fresh.__data__)
                    return self
                merged = {**(fresh.metadata or {}), **metadata} if metadata else fresh.metadata
                earlier = (fresh.metadata or {}).get("clock_clamped")
                if clamped is not None and isinstance(earlier, dict):  # keep an earlier clamp's note too
                    merged["clock_clamped"] = {**earlier, **clamped["clock_clamped"]}
                cls.transition(
                    self.id,
                    fresh.state,
                    SegmentState.COMPLETE,
                    values={
                        "ended_at": ended_ms,
                        "size_bytes": size_bytes,
                        "metadata": merged,
                        **media,
                        **suspect,
                    },
                    strict=True,
                )
        self.state = SegmentState.COMPLETE
        self.ended_at = from_millis(ended_ms)
        self.size_bytes = size_bytes
        self.metadata = merged
        if too_long:
            self.clock_suspect = "too_long"
        self._take_media(media)
        return self

    def _closed(self, done: Completion) -> None:
        """This object shows the row a completion without new metadata wrote."""
        if done.too_long:
            self.clock_suspect = "too_long"
        self.state = SegmentState.COMPLETE
        self.ended_at = done.ended if exact_utc(done.ended) else from_millis(done.ended_ms)
        self.size_bytes = done.size_bytes
        if done.media:
            self._take_media(done.media)

    def _take_media(self, media: dict[str, Any]) -> None:
        # Straight into the row's data: these are stored values, not edits to save.
        for key, value in media.items():
            self.__data__[key] = from_millis(value) if key == "media_ended_at" else value

    def fail(self, reason: str, at: dt.datetime | None = None) -> Recording:
        """Give up on an open segment; writes a ``segment_failed`` event with the reason.

        The row keeps what is known: size from the file if it exists (else the
        last checkpoint) and an end time. Failing a failed segment again does
        nothing.
        """
        from .event import Event

        reason = require_text("reason", reason, max_length=2000, allow_control=True)
        when = utc_now() if at is None else at
        when_ms = max(to_millis(when, "at"), to_millis(self.started_at))
        cls = type(self)
        session = writer(self._meta.database)
        with self._meta.database.atomic():
            fresh = locked(cls.select().where(cls.id == self.id)).first()
            if fresh is None:
                raise NotFound("recording", self.path)
            with session.gate(fresh.stream_id):
                if fresh.state == SegmentState.FAILED:
                    self.__data__.update(fresh.__data__)
                    return self
                size = self._size_on_disk(default=fresh.size_bytes)
                cls.transition(
                    self.id,
                    fresh.state,
                    SegmentState.FAILED,
                    values={"ended_at": when_ms, "size_bytes": size},
                    # invariant 11: the event commits with the change
                    event=lambda _moved: [
                        Event.build(
                            EventType.SEGMENT_FAILED,
                            fresh.stream_id,
                            severity=Severity.ERROR,
                            message=f"segment {self.path} failed: {reason}",
                            data={
                                "recording_id": self.id,
                                "path": self.path,
                                "reason": reason,
                                "size_bytes": size,
                            },
                            at=from_millis(when_ms),
                        )
                    ],
                    strict=True,
                )
        self.state = SegmentState.FAILED
        self.ended_at = from_millis(when_ms)
        self.size_bytes = size
        log.warning("segment %s failed: %s", self.path, redact_text(reason))
        return self

    def delete_file(self) -> int:
        """Delete the segment's file and then its row, in the crash-safe order.

        1. the row is marked ``deleting`` (committed), 2. the file is
        unlinked, 3. the row is removed. A crash between the steps leaves a
        ``deleting`` row, which the next restore finishes; no row ever points
        at a file that was deleted without it knowing. Returns the bytes freed
        (0 if the file was already gone). An open segment cannot be deleted.
        """
        cls = type(self)
        session = writer(self._meta.database)
        with self._meta.database.atomic():
            fresh = locked(cls.select().where(cls.id == self.id)).first()
            if fresh is None:
                return 0
            with session.gate(fresh.stream_id):
                if fresh.state != SegmentState.DELETING:
                    # invariant 6: the row says "deleting" (committed) before the file goes
                    cls.transition(
                        self.id,
                        fresh.state,
                        SegmentState.DELETING,
                        values={"busy_session_id": session.id},
                        strict=True,
                    )
        # The row's path, not this object's: an archive move may have changed it since it was read.
        self.state, self.path = SegmentState.DELETING, fresh.path
        freed = unlink_quietly(fresh.path)
        cls.finish_delete(self.id)
        log.info("deleted segment %s (%d bytes)", self.path, freed)
        return freed

    # --- archive ---------------------------------------------------------------------------

    def archive(
        self, dest_root: str | os.PathLike[str] | None = None, storage: str | None = None
    ) -> Recording:
        """Mark a finished recording archived: retention by age or size never removes it.

        With ``dest_root`` the file also moves to ``dest_root/<stream>/<file>``,
        crash-safe: the row is marked ``archiving`` (with both paths) first,
        the file is renamed (or copied, synced and renamed across
        filesystems) and the source removed, then the row takes the new path.
        A crash in between is finished or undone by the next restore.
        """
        cls = type(self)
        storage = optional_text("storage", storage, max_length=1000)
        root = None if dest_root is None else _archive_root(dest_root)
        with self._meta.database.atomic():
            fresh = locked(cls.select().where(cls.id == self.id)).first()
            if fresh is None:
                raise NotFound("recording", self.path)
            if root is None:
                if fresh.state not in ARCHIVABLE:
                    raise InvalidTransition(
                        "segment", fresh.state, "archived", "only finished segments are archived"
                    )
                cls.update(archived=True).where(cls.id == self.id).execute()
                self.__data__.update(fresh.__data__, archived=True)
                return self
            check_segment_transition(fresh.state, SegmentState.ARCHIVING)
            stream_name = Stream.select(Stream.name).where(Stream.id == fresh.stream_id).scalar()
            dest = os.path.join(
                root, _path_component(stream_name, fresh.stream_id), os.path.basename(fresh.path)
            )
            if os.path.exists(dest) or cls.select().where(cls.path == dest).exists():
                raise AlreadyExists("recording", "path", dest)
            plan = {"from": fresh.path, "to": dest, "previous_state": str(fresh.state), "storage": storage}
            # invariant 9: the row names both paths before the file moves
            cls.transition(
                self.id,
                fresh.state,
                SegmentState.ARCHIVING,
                values={
                    "metadata": {**(fresh.metadata or {}), "archive": plan},
                    "busy_session_id": writer(self._meta.database).id,
                },
                strict=True,
            )
        try:
            move_file(fresh.path, dest)
        except OSError as exc:
            undo_archive(self.id, plan)  # the row goes back; nothing moved
            if exc.errno == errno.ENOSPC:
                raise StorageFull(f"no space to archive {fresh.path} to {dest}") from exc
            raise ValidationError("dest_root", dest, f"cannot move the file there ({exc.strerror})") from exc
        finish_archive(self.id, plan)
        fresh = cls.get_by_id(self.id)
        self.__data__.update(fresh.__data__)
        log.info("archived %s to %s", plan["from"], dest)
        return self

    @classmethod
    def archive_completed(
        cls,
        older_than: dt.timedelta,
        stream: Stream | int | None = None,
        dest_root: str | os.PathLike[str] | None = None,
        storage: str | None = None,
        now: dt.datetime | None = None,
    ) -> int:
        """Archive every finished, unarchived recording that ended more than ``older_than`` ago.

        Returns how many were archived.
        """
        if not isinstance(older_than, dt.timedelta) or older_than < dt.timedelta(0):
            raise ValidationError("older_than", older_than, "expected a non-negative timedelta")
        cutoff = to_millis(utc_now() if now is None else now, "now") - int(older_than.total_seconds() * 1000)
        query = cls.select().where(
            cls.ended_at.is_null(False)
            & (cls.ended_at < cutoff)
            & (cls.archived == False)  # noqa: E712 - SQL, not Python
            & cls.state.in_([s.value for s in ARCHIVABLE])
        )
        if stream is not None:
            query = query.where(cls.stream == stream)
        count = 0
        for recording in query.order_by(cls.ended_at, cls.id):
            recording.archive(dest_root, storage)
            count += 1
        return count

    # --- helpers ---------------------------------------------------------------------------

    def _size_on_disk(self, default: int | None = None) -> int:
        try:
            return os.stat(self.path).st_size
        except OSError as exc:
            if default is not None:
                return default
            raise ValidationError(
                "size_bytes", None, f"not given, and the file {self.path} cannot be read ({exc.strerror})"
            ) from exc

    def _raise_not_open(self, action: str) -> None:
        cls = type(self)
        current = cls.select(cls.state).where(cls.id == self.id).scalar()
        if current is None:
            raise NotFound("recording", self.path)
        raise InvalidTransition("segment", current, action, f"{self.path} is not open")


_ONE_MS = dt.timedelta(milliseconds=1)

# Timestamps before this are a clock that has not been set (a board booted in 1970).
PLAUSIBLE_SINCE_MS = 946_684_800_000  # 2000-01-01T00:00:00Z


# A start this long before its stream was registered is a clock set back, not
# imported footage (which managers may add with its own, earlier, times).
REGISTRATION_MARGIN_MS = 366 * 86_400_000


def start_suspicion(started_ms: int, registered_ms: int | None) -> str | None:
    """Why a segment's start cannot be believed, else None."""
    if started_ms < PLAUSIBLE_SINCE_MS:
        return "before_2000"
    if registered_ms is not None and started_ms < registered_ms - REGISTRATION_MARGIN_MS:
        return "before_registration"
    return None


def clock_note(column: str, now: dt.datetime, started_at: dt.datetime) -> dict[str, Any]:
    """The metadata a clamped default time leaves on its row: what "now" said, and what was kept."""
    log.warning(
        "the wall clock (%s) is before the segment's start (%s): %s clamped to the start",
        now.isoformat(),
        started_at.isoformat(),
        column,
    )
    return {"clock_clamped": {column: {"clock_said": now.isoformat(), "kept": started_at.isoformat()}}}


@contextlib.contextmanager
def _claiming(db: Any, session: Any, stream_id: int) -> Iterator[int]:
    """A transaction that takes a free stream on this first write, with the write."""
    with db.atomic(), session.gate(stream_id, verify=False) as epoch:
        yield epoch


def _archive_root(dest_root: Any) -> str:
    """A usable archive directory, created if needed, before any row is touched."""
    if not isinstance(dest_root, (str, os.PathLike)) or isinstance(dest_root, bytes):
        raise ValidationError("dest_root", dest_root, "expected a directory path (str or PathLike)")
    root = os.fspath(dest_root)
    if not isinstance(root, str) or not root:
        raise ValidationError("dest_root", dest_root, "expected a non-empty directory path")
    root = require_segment_path("dest_root", root)  # absolute, one spelling
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise ValidationError("dest_root", root, f"cannot use it as a directory ({exc.strerror})") from exc
    return root


def _path_component(name: str, stream_id: int) -> str:
    """The stream's name as one safe directory name (never '..', never absolute), else its id."""
    if (
        not name
        or name in (".", "..")
        or os.sep in name
        or (os.altsep and os.altsep in name)
        or "\x00" in name
    ):
        return f"stream-{stream_id}"
    return name


# Finished segments whose file is worth keeping.
ARCHIVABLE = (SegmentState.COMPLETE, SegmentState.INTERRUPTED, SegmentState.RECOVERED)


def move_file(source: str, dest: str) -> None:
    """Move a file so that a crash leaves the source, or the complete destination, or both.

    Never a half-written destination under its final name: across
    filesystems the copy is written as ``dest + '.part'``, synced, then renamed.
    """
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    try:
        os.rename(source, dest)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    partial = dest + ".part"
    shutil.copyfile(source, partial)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.rename(partial, dest)
    os.unlink(source)


def finish_archive(recording_id: int, plan: dict[str, Any]) -> None:
    """Point the row at the archived copy and leave the ``archiving`` state (invariant 9)."""
    row = Recording.get_by_id(recording_id)
    metadata = {k: v for k, v in (row.metadata or {}).items() if k != "archive"}
    Recording.transition(
        recording_id,
        SegmentState.ARCHIVING,
        SegmentState(plan["previous_state"]),
        values={
            "path": plan["to"],
            "storage": plan.get("storage") or row.storage,
            "archived": True,
            "metadata": metadata or None,
            "busy_session_id": None,
        },
    )


def undo_archive(recording_id: int, plan: dict[str, Any]) -> None:
    """Give up a move that did not happen: the row keeps its old path and state."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(plan["to"] + ".part")
    row = Recording.get_by_id(recording_id)
    metadata = {k: v for k, v in (row.metadata or {}).items() if k != "archive"}
    Recording.transition(
        recording_id,
        SegmentState.ARCHIVING,
        SegmentState(plan["previous_state"]),
        values={"metadata": metadata or None, "busy_session_id": None},
    )


def unlink_quietly(path: str) -> int:
    """Remove a file if it is there; return its size (0 if it was already gone).

    Callers mark the row ``deleting`` first (invariant 6).

    Other errors (permissions, a read-only disk) propagate: the row then stays
    ``deleting`` and the delete is retried later, rather than forgetting a
    file that still takes space.
    """
    try:
        size = os.stat(path).st_size
        os.unlink(path)
    except FileNotFoundError:
        return 0
    return size


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
# Segments longer than LONG_SEGMENT_MS (a segmenter that did not split): the
# longest one per stream bounds the time-range scan exactly (history/segments.py).
LONG_SEGMENT_MS = 120_000
_length = Recording.ended_at - Recording.started_at
Recording.add_index(
    Recording.index(
        Recording.stream,
        _length,
        # A suspect segment (a clock step made it decades long) never sets the bound.
        where=(_length > LONG_SEGMENT_MS) & Recording.clock_suspect.is_null(),
        name="recording_long",
    )
)
# The few segments whose time is suspect (retention judges them by index).
Recording.add_index(
    Recording.index(
        Recording.stream,
        Recording.segment_index,
        where=Recording.clock_suspect.is_null(False),
        name="recording_suspect",
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
