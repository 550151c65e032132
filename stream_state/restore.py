"""Bring the manager back after a restart, a crash or a power cut.

``Restorer(db).restore()`` is the one call a manager makes at start-up. It
finishes what dead sessions (processes that crashed, expired or stopped)
left half done (segments still ``recording``, deletes still ``deleting``,
archive moves), resets the statuses and health they left behind, writes
every repair as an event, and returns a ``RestoredState`` of plain frozen
dataclasses: the streams to start, where each resumes, who had each stream
and how that session ended, and what was repaired. It never touches what a
live session is doing, and claims nothing. ``Restorer(db).shutdown()`` is
the call at a clean stop: it closes this process's open segments and its
session, so the next restore can tell a clean stop from a crash.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import peewee as pw

from .models import Event, Recording, Session, Stream, SystemState, database_proxy
from .models.base import check_database_file, locked
from .models.gate import Transition, batched_events
from .models.recording import finish_archive, undo_archive, unlink_quietly
from .models.session import (
    ENDED_CRASHED,
    _register,
    current_session,
    keep_alive_by_default,
    live_session_ids,
    mark_crashed,
    on_takeover,
    sweep_dead_sessions,
)
from .probe import Playability, Probe, probe
from .pwtypes import dict_rows, tuple_rows
from .redact import redact_data, redact_uri
from .states import EventType, HealthState, SegmentState, Severity, StreamStatus, desired_state
from .timeutil import from_millis, now_millis, to_millis

log = logging.getLogger(__name__)

LIFECYCLE_KEY = "lifecycle"

# Kept for code that imported it; the run is now this process's Session row.
PROCESS_SESSION = uuid.uuid4().hex

# A file modified this far after "now" is taken as a clock problem, not as
# evidence of when the segment ended.
MTIME_SKEW_MS = 5 * 60 * 1000


# --- what restore returns -------------------------------------------------------------


@dataclass(frozen=True)
class SegmentSnapshot:
    """A segment as found at restore (before any repair)."""

    recording_id: int
    stream: str
    path: str
    segment_index: int
    started_at: dt.datetime
    checkpoint_at: dt.datetime | None
    size_bytes: int
    state: SegmentState


@dataclass(frozen=True)
class Repair:
    """One thing restore (or shutdown) did to a segment's row or file."""

    recording_id: int
    stream_id: int
    stream: str
    path: str
    old_state: SegmentState
    new_state: SegmentState | None  # None: the row was removed (a finished delete)
    ended_at: dt.datetime | None
    size_bytes: int
    evidence: str  # why: "file mtime", "last checkpoint", "file missing", ...
    applied: bool = False  # already written to the row (archive moves); only its event is pending
    finalized: bool | None = None  # what the probe said of the file, when it could tell
    started_ms: int | None = None  # the open row's start, to flag an implausible length

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON (``stream-state restore --json``); a removed row is ``"deleted"``."""
        return {
            "stream": self.stream,
            "recording_id": self.recording_id,
            "path": self.path,
            "old_state": self.old_state,
            "new_state": self.new_state if self.new_state is not None else "deleted",
            "ended_at": self.ended_at,
            "size_bytes": self.size_bytes,
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class StreamSnapshot:
    """Everything the manager needs to bring one stream back."""

    id: int
    name: str
    uri: str = field(repr=False)  # the real URI, for the manager; never printed
    config: dict[str, Any] = field(repr=False)
    enabled: bool
    recording: bool  # desired: should be recording
    status: StreamStatus | str
    health: HealthState | str
    last_seen_at: dt.datetime | None
    was_recording: bool  # had a segment open when the process stopped
    next_segment_index: int  # hand this to the segmenter's start index
    last_segment_path: str | None
    last_segment_ended_at: dt.datetime | None
    # Which session had the stream when restore looked, and how it ended
    # ("clean", "crashed", "expired"; None while it lives, or no session had it).
    session: int | None = None
    session_ended: str | None = None

    @property
    def display_uri(self) -> str:
        return redact_uri(self.uri)

    @property
    def desired(self) -> str:
        """``recording``, ``running`` or ``stopped``."""
        return desired_state(self.enabled, self.recording)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON, credentials masked (``stream-state restore --json``)."""
        return {
            "name": self.name,
            "uri": self.display_uri,
            "enabled": self.enabled,
            "recording": self.recording,
            "status": self.status,
            "health": self.health,
            "was_recording": self.was_recording,
            "next_segment_index": self.next_segment_index,
            "last_segment_path": self.last_segment_path,
            "last_segment_ended_at": self.last_segment_ended_at,
            "config": redact_data(self.config),
            "session": self.session,
            "session_ended": self.session_ended,
        }


@dataclass(frozen=True)
class RestoredState:
    """The result of ``Restorer.restore()``: plain data, safe to hand to any thread."""

    streams: tuple[StreamSnapshot, ...]
    open_segments: tuple[SegmentSnapshot, ...]
    repairs: tuple[Repair, ...]
    clean_shutdown: bool | None  # None: the database had never been started before
    last_stop_at: dt.datetime | None
    restored_at: dt.datetime

    def stream(self, name: str) -> StreamSnapshot:
        for snapshot in self.streams:
            if snapshot.name == name:
                return snapshot
        raise KeyError(name)

    @property
    def summary(self) -> dict[str, int]:
        """Counts of streams and repairs by what was done."""
        counts = {"streams": len(self.streams), "open_segments": len(self.open_segments)}
        for repair in self.repairs:
            key = str(repair.new_state) if repair.new_state is not None else "deleted"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON, credentials masked (``stream-state restore --json``)."""
        return {
            "clean_shutdown": self.clean_shutdown,
            "last_stop_at": self.last_stop_at,
            "restored_at": self.restored_at,
            "streams": [s.as_dict() for s in self.streams],
            "repairs": [r.as_dict() for r in self.repairs],
            "summary": self.summary,
        }


@dataclass(frozen=True)
class TakeOver:
    """What a claim repaired: the dead owners' open segments, and each stream's next index."""

    repairs: tuple[Repair, ...]
    next_index: dict[int, int]


@dataclass(frozen=True)
class ShutdownReport:
    closed: tuple[Repair, ...]
    recording_streams: tuple[str, ...]
    stopped_at: dt.datetime


# --- the decision, without a database -------------------------------------------------------


@dataclass(frozen=True)
class SegmentDecision:
    state: SegmentState
    ended_ms: int
    size_bytes: int
    evidence: str
    finalized: bool | None = None  # what the probe found, written to the row when known


def decide_open_segment(
    *,
    started_ms: int,
    checkpoint_ms: int | None,
    checkpoint_size: int,
    file_size: int | None,
    file_mtime_ms: int | None,
    now_ms: int,
    clean: bool = False,
    playability: Playability | None = None,
) -> SegmentDecision:
    """What to make of a segment that was still open when its writer stopped.

    A missing or empty file is ``failed``: nothing usable was written. So is
    a file the probe found unplayable (an MP4 whose muxer never wrote the
    ``moov`` atom): its row must not promise footage. A playable file keeps
    its data, sized from the file: ``complete`` when the muxer finalised it
    (or, at a clean shutdown, when the probe cannot tell), else
    ``interrupted`` (a Matroska file cut short plays up to its last frame).
    It ends where its media ends when the probe measured it, else at the
    latest credible evidence of writing: the file's mtime if it lies between
    the start and now, else the last checkpoint, else the start.
    """
    if file_size is None or file_size == 0:
        ended = max(started_ms, checkpoint_ms or started_ms)
        return SegmentDecision(
            SegmentState.FAILED, ended, 0, "file missing" if file_size is None else "file empty", False
        )
    candidates = []
    if checkpoint_ms is not None and checkpoint_ms >= started_ms:
        candidates.append((checkpoint_ms, "last checkpoint"))
    if file_mtime_ms is not None and started_ms <= file_mtime_ms <= now_ms + MTIME_SKEW_MS:
        candidates.append((file_mtime_ms, "file mtime"))
    ended, evidence = max(candidates) if candidates else (started_ms, "start time (no other evidence)")
    if playability is None or playability.playable is None:
        state = SegmentState.COMPLETE if clean else SegmentState.INTERRUPTED
        return SegmentDecision(state, ended, file_size, evidence)
    if not playability.playable:
        return SegmentDecision(
            SegmentState.FAILED,
            ended,
            file_size,
            f"not playable: {playability.reason}",
            playability.finalized,
        )
    if playability.duration is not None:
        media_ms = playability.duration // dt.timedelta(milliseconds=1)
        ended = min(started_ms + media_ms, max(now_ms, started_ms))
        evidence = f"{media_ms / 1000:.3f} s of playable media"
    state = SegmentState.COMPLETE if playability.finalized else SegmentState.INTERRUPTED
    return SegmentDecision(
        state, ended, file_size, f"{evidence}; {playability.reason}", playability.finalized
    )


def _stat(path: str) -> tuple[int | None, int | None]:
    try:
        info = os.stat(path)
    except OSError:
        return None, None
    return info.st_size, info.st_mtime_ns // 1_000_000


# --- the service ---------------------------------------------------------------------------


class Restorer:
    """Rehydrates the manager after a restart and records clean stops.

    Holds no state beyond its configuration; safe to create anew each time.
    ``session`` is the session the restorer acts as: a ``Session``, or None
    for this process's session (opened on first need). A string labels
    this process's run: a restore under a new label in the same process
    ends the process's previous session as a crash and opens a new one
    (for tests and for tools that host several runs in one process).
    """

    def __init__(
        self,
        db: pw.Database | None = None,
        *,
        session: Session | str | None = None,
        probe: Probe | None = probe,
    ):
        if db is not None and database_proxy.obj is not db:
            database_proxy.initialize(db)
        self.db = db or database_proxy.obj
        self._session_arg = session
        # Judges whether an open segment's file plays (stream_state.probe);
        # None keeps the size-and-mtime judgement alone.
        self.probe = probe

    @property
    def session(self) -> Session:
        """The session this restorer acts as (opened on first need)."""
        arg = self._session_arg
        if isinstance(arg, Session):
            return arg
        found = current_session(self.db, open=False)
        if arg is None:
            return found if found is not None else current_session(self.db)  # type: ignore[return-value]
        if found is not None and found.label == arg:
            return found
        if found is not None:
            # A new run in the same process: the previous one ends as if it crashed.
            mark_crashed(self.db, found.id)
            found._die("replaced by a new run in this process")
            if found._keeper is not None:
                found._keeper.stop()
        opened = Session.open(label=arg, database=self.db, register=False)
        _register(self.db, opened)
        keep_alive_by_default(self.db, opened)
        return opened

    def _existing_session(self) -> Session | None:
        """The session a dry run acts as, opening nothing: None when a real run would open a new one."""
        arg = self._session_arg
        if isinstance(arg, Session):
            return arg
        found = current_session(self.db, open=False)
        if found is not None and isinstance(arg, str) and found.label != arg:
            return None  # a real run would end it as a crash
        return found

    # --- restore -------------------------------------------------------------------------

    def restore(self, now: dt.datetime | None = None, *, dry_run: bool = False) -> RestoredState:
        """Finish what dead sessions left half done and return what the manager needs.

        With ``dry_run`` nothing is written or unlinked; the result says what
        a real restore would do.
        """
        now_ms = now_millis() if now is None else to_millis(now, "now")
        check_database_file(self.db)
        # A dry run opens no session and marks nothing; it judges as a real run would.
        me = self.session if not dry_run else self._existing_session()
        me_id = me.id if me is not None else None
        gone = set(sweep_dead_sessions(self.db, dry_run=dry_run))
        if dry_run and isinstance(self._session_arg, str):
            replaced = current_session(self.db, open=False)
            if replaced is not None and replaced.label != self._session_arg:
                gone.add(replaced.id)
        live = (live_session_ids(self.db) - gone) | ({me_id} if me_id is not None else set())
        lifecycle = SystemState.read(LIFECYCLE_KEY) or {}
        same_run = (
            me_id is not None and lifecycle.get("state") == "running" and lifecycle.get("session") == me_id
        )
        every_open = self._open_segments()
        # Only what dead sessions (and rows from before sessions) left is repaired.
        open_rows = [row for row in every_open if row["session_id"] not in live]
        mine_open = {row["stream_id"] for row in every_open if row["session_id"] == me_id}
        had = self._stream_owners(live)
        if same_run:
            clean, stopped_ms = lifecycle["last_stop"]["clean"], lifecycle["last_stop"]["at"]
            was_recording = set(lifecycle.get("recording_stream_ids", ())) | mine_open
        else:
            clean, stopped_ms = self._last_stop(lifecycle, open_rows)
            was_recording = set(mine_open)
            if clean:
                was_recording |= set(lifecycle.get("recording_stream_ids", ()))
        was_recording |= {r["stream_id"] for r in open_rows}
        repairs = self._reconcile(open_rows, now_ms, clean=False)
        repairs += self._finish_deletes(dry_run, live)
        repairs += self._finish_archive_moves(dry_run, now_ms, live)
        if not dry_run:
            self._commit_repairs(repairs, now_ms, kind=EventType.SEGMENT_REPAIRED)
            self._reset_streams(had, now_ms)
            if not same_run:
                self._write_lifecycle(
                    {
                        "state": "running",
                        "session": me_id,
                        "started_at": now_ms,
                        "last_stop": {"clean": clean, "at": stopped_ms},
                        "recording_stream_ids": sorted(was_recording),
                    },
                    event=(
                        EventType.RESTORED,
                        Severity.WARNING if clean is False else Severity.INFO,
                        f"restored after a {_stop_kind(clean)}; {len(repairs)} repair(s)",
                        {"clean_shutdown": clean, "repairs": len(repairs), "session": me_id},
                    ),
                    now_ms=now_ms,
                )
        state = RestoredState(
            streams=self._stream_snapshots(was_recording, had),
            open_segments=tuple(_segment_snapshot(row) for row in open_rows),
            repairs=tuple(repairs),
            clean_shutdown=clean,
            last_stop_at=from_millis(stopped_ms) if stopped_ms is not None else None,
            restored_at=from_millis(now_ms),
        )
        if repairs and not dry_run:
            log.warning("restore repaired %d segment(s): %s", len(repairs), state.summary)
        return state

    def take_over(self, stream_ids: list[int], *, session: Session) -> TakeOver:
        """Repairs at a claim: the dead owners' open segments of ``stream_ids``, and their statuses.

        Called by ``claim_streams`` after the streams became ``session``'s.
        """
        if not stream_ids:
            return TakeOver((), {})
        now_ms = now_millis()
        live = live_session_ids(self.db) | {session.id}
        rows = [row for row in self._open_segments(stream_ids) if row["session_id"] not in live]
        repairs = self._reconcile(rows, now_ms, clean=False)
        self._commit_repairs(repairs, now_ms, kind=EventType.SEGMENT_REPAIRED)
        self._reset_streams({sid: (None, None) for sid in stream_ids}, now_ms, owned_by=session.id)
        next_index: dict[int, int] = {
            sid: index
            for sid, index in tuple_rows(
                Stream.select(Stream.id, Stream.next_segment_index).where(Stream.id.in_(stream_ids))
            )
        }
        return TakeOver(tuple(repairs), next_index)

    # --- clean stop -----------------------------------------------------------------------

    def shutdown(self, now: dt.datetime | None = None) -> ShutdownReport:
        """Record a clean stop: close this process's open segments, then its session.

        Call it after the pipelines have stopped. A segment this session
        still has open is closed from its file (``complete``, or ``failed``
        if the file is missing or empty); other sessions' segments are not
        touched. The next ``restore()`` reports a clean stop and which
        streams were recording.
        """
        now_ms = now_millis() if now is None else to_millis(now, "now")
        check_database_file(self.db)
        me = self.session
        open_rows = [row for row in self._open_segments() if row["session_id"] == me.id]
        closed = self._reconcile(open_rows, now_ms, clean=True)
        recording_ids = sorted({row["stream_id"] for row in open_rows})
        names = {row["stream_id"]: row["stream_name"] for row in open_rows}
        self._commit_repairs(closed, now_ms, kind=EventType.SEGMENT_REPAIRED)
        self._write_lifecycle(
            {
                "state": "stopped",
                "clean": True,
                "session": me.id,
                "stopped_at": now_ms,
                "recording_stream_ids": recording_ids,
            },
            event=(
                EventType.CLEAN_SHUTDOWN,
                Severity.INFO,
                f"clean shutdown; {len(closed)} open segment(s) closed",
                {
                    "closed": len(closed),
                    "recording_streams": [names[i] for i in recording_ids],
                    "session": me.id,
                },
            ),
            now_ms=now_ms,
        )
        me.close(clean=True)
        log.info("clean shutdown recorded; closed %d open segment(s)", len(closed))
        return ShutdownReport(
            closed=tuple(closed),
            recording_streams=tuple(names[i] for i in recording_ids),
            stopped_at=from_millis(now_ms),
        )

    # --- sessions' streams ------------------------------------------------------------------

    def _stream_owners(self, live: set[int]) -> dict[int, tuple[int | None, str | None]]:
        """stream id -> (owner session, how it ended or None while alive), for owned streams."""
        rows = self.db.execute_sql(
            'SELECT s."id", s."owner_session_id", o."ended", o."closed_at" '
            'FROM "stream" s LEFT JOIN "session" o ON o."id" = s."owner_session_id" '
            'WHERE s."owner_session_id" IS NOT NULL'
        ).fetchall()
        owners: dict[int, tuple[int | None, str | None]] = {}
        for sid, owner, ended, closed in rows:
            if owner in live:
                owners[sid] = (owner, None)
            else:
                owners[sid] = (owner, ended or ("clean" if closed is not None else ENDED_CRASHED))
        return owners

    def _reset_streams(
        self,
        had: dict[int, tuple[int | None, str | None]],
        now_ms: int,
        owned_by: int | None = None,
    ) -> None:
        """Streams a dead session left: status stopped (error if mid-transition), health unknown.

        Each change is an event. Streams of live sessions are not touched;
        with ``owned_by`` (a takeover) the given streams are reset although
        that live session owns them now. A dead session's streams stay
        marked as its own (it can write nothing: the gate checks its lease)
        until a live session claims them, so a second restore reports the
        same owner and changes nothing.
        """
        now = from_millis(now_ms)
        if owned_by is None:
            dead_owned = [sid for sid, (owner, ended) in had.items() if ended is not None]
            query = Stream.select().where(Stream.id.in_(dead_owned) | Stream.owner_session_id.is_null())
        else:
            query = Stream.select().where(Stream.id.in_(list(had)) & (Stream.owner_session_id == owned_by))
        query = query.where(
            (Stream.status != StreamStatus.STOPPED.value)
            | (Stream.health != HealthState.UNKNOWN.value)
            | Stream.owner_session_id.is_null(False)
        )
        with self.db.atomic():
            for stream in locked(query.order_by(Stream.id)):
                if owned_by is None and stream.owner_session_id is not None:
                    owner, ended = had.get(stream.id, (None, None))
                    if stream.owner_session_id != owner or ended is None:
                        continue  # taken by a live session since we looked
                changes: dict[str, Any] = {}
                events = []
                previous = had.get(stream.id, (None, None))
                if stream.status != StreamStatus.STOPPED:
                    new = (
                        StreamStatus.ERROR
                        if stream.status in (StreamStatus.STARTING, StreamStatus.STOPPING, StreamStatus.ERROR)
                        else StreamStatus.STOPPED
                    )
                    if new != stream.status:
                        changes.update(status=new, status_changed_at=now_ms)
                        events.append(
                            Event.build(
                                EventType.STATUS_CHANGED,
                                stream=stream.id,
                                severity=Severity.ERROR if new == StreamStatus.ERROR else Severity.WARNING,
                                message=f"{stream.name}: {stream.status} -> {new} (its session "
                                f"{previous[0]} is gone: {previous[1] or 'no owner'})",
                                data={
                                    "old": str(stream.status),
                                    "new": str(new),
                                    "reason": "session ended",
                                    "session": previous[0],
                                    "ended": previous[1],
                                },
                                at=now,
                            )
                        )
                if stream.health != HealthState.UNKNOWN:
                    changes.update(health=HealthState.UNKNOWN, health_changed_at=now_ms)
                    events.append(
                        Event.build(
                            EventType.HEALTH_CHANGED,
                            stream=stream.id,
                            severity=Severity.INFO,
                            message=f"{stream.name}: {stream.health} -> unknown (nobody is watching it)",
                            data={"old": str(stream.health), "new": "unknown", "reason": "session ended",
                                  "session": previous[0], "ended": previous[1]},
                            at=now,
                        )
                    )  # fmt: skip
                if changes:
                    Stream.update(**changes).where(Stream.id == stream.id).execute()
                if events:
                    Event.bulk_create(events, batch_size=200)

    # --- steps ----------------------------------------------------------------------------------

    def _last_stop(self, lifecycle: dict[str, Any], open_rows: list[dict]) -> tuple[bool | None, int | None]:
        if not lifecycle:
            return None, None
        if lifecycle.get("state") == "stopped":
            return bool(lifecycle.get("clean")), lifecycle.get("stopped_at")
        # A crash: the last sign of life is the newest checkpoint, segment
        # start or health report we have.
        signs = [lifecycle.get("started_at") or 0]
        signs += [row["checkpoint_at"] or row["started_at"] for row in open_rows]
        latest_seen = Stream.select(pw.fn.MAX(Stream.last_seen_at)).scalar()
        if latest_seen is not None:
            signs.append(latest_seen if isinstance(latest_seen, int) else to_millis(latest_seen))
        return False, max(signs)

    def _open_segments(self, stream_ids: list[int] | None = None) -> list[dict]:
        # invariant 5: open (no end) is the same as recording
        query = (
            Recording.select(
                Recording.id,
                Recording.stream,
                Stream.name.alias("stream_name"),
                Recording.path,
                Recording.segment_index,
                Recording.started_at,
                Recording.checkpoint_at,
                Recording.size_bytes,
                Recording.state,
                Recording.session_id,
            )
            .join(Stream)
            .where(Recording.ended_at.is_null())
            .order_by(Recording.id)
        )
        if stream_ids is not None:
            query = query.where(Recording.stream.in_(stream_ids))
        return [_raw_times(row) for row in dict_rows(query)]

    def _reconcile(self, open_rows: list[dict], now_ms: int, *, clean: bool) -> list[Repair]:
        repairs = []
        for row in open_rows:
            size, mtime = _stat(row["path"])
            decision = decide_open_segment(
                started_ms=row["started_at"],
                checkpoint_ms=row["checkpoint_at"],
                checkpoint_size=row["size_bytes"],
                file_size=size,
                file_mtime_ms=mtime,
                now_ms=now_ms,
                clean=clean,
                playability=self.probe(row["path"]) if size and self.probe is not None else None,
            )
            repairs.append(
                Repair(
                    recording_id=row["id"],
                    stream_id=row["stream_id"],
                    stream=row["stream_name"],
                    path=row["path"],
                    old_state=SegmentState(row["state"]),
                    new_state=decision.state,
                    ended_at=from_millis(decision.ended_ms),
                    size_bytes=decision.size_bytes,
                    evidence=decision.evidence,
                    finalized=decision.finalized,
                    started_ms=row["started_at"],
                )
            )
        return repairs

    def _finish_deletes(self, dry_run: bool, live: set[int]) -> list[Repair]:
        """Complete deletes a crash interrupted: unlink if still there, then drop the row (invariant 7).

        A delete a live session is in the middle of is its own business.
        """
        rows = (
            Recording.select(
                Recording.id,
                Recording.stream,
                Stream.name.alias("stream_name"),
                Recording.path,
                Recording.busy_session_id,
            )
            .join(Stream)
            # The first term matches the partial index recording_unsettled.
            .where(
                (Recording.state != SegmentState.COMPLETE.value)
                & (Recording.state == SegmentState.DELETING.value)
            )
        )
        repairs = []
        for row in dict_rows(rows):
            if row["busy_session_id"] in live:
                continue
            freed = 0 if dry_run else unlink_quietly(row["path"])
            repairs.append(
                Repair(
                    recording_id=row["id"],
                    stream_id=row["stream"],
                    stream=row["stream_name"],
                    path=row["path"],
                    old_state=SegmentState.DELETING,
                    new_state=None,
                    ended_at=None,
                    size_bytes=freed,
                    evidence="delete was under way",
                )
            )
        return repairs

    def _finish_archive_moves(self, dry_run: bool, now_ms: int, live: set[int]) -> list[Repair]:
        """Finish or undo archive moves a crash interrupted, from the plan in the row (invariants 7, 9).

        A move a live session is in the middle of is its own business.
        """
        rows = (
            Recording.select(
                Recording.id,
                Recording.stream,
                Stream.name.alias("stream_name"),
                Recording.metadata,
                Recording.busy_session_id,
            )
            .join(Stream)
            .where(
                (Recording.state != SegmentState.COMPLETE.value)
                & (Recording.state == SegmentState.ARCHIVING.value)
            )
        )
        repairs = []
        for row in dict_rows(rows):
            if row["busy_session_id"] in live:
                continue  # a live session is moving it right now
            plan = (row["metadata"] or {}).get("archive") or {}
            source, dest = plan.get("from"), plan.get("to")
            previous = SegmentState(plan.get("previous_state", SegmentState.COMPLETE))
            if dest and os.path.exists(dest):
                outcome, evidence, path = previous, "archived copy complete; move finished", dest
                if not dry_run:
                    if source and source != dest and os.path.exists(source):
                        os.unlink(source)
                    finish_archive(row["id"], plan)
            elif source and os.path.exists(source):
                outcome, evidence, path = previous, "archive copy incomplete; move undone", source
                if not dry_run:
                    undo_archive(row["id"], plan)
            else:
                outcome, evidence, path = (
                    SegmentState.MISSING,
                    "neither the file nor its archive copy exists",
                    source,
                )
                if not dry_run:
                    Recording.transition(
                        row["id"],
                        SegmentState.ARCHIVING,
                        SegmentState.MISSING,
                        values={"busy_session_id": None},
                    )
            repairs.append(
                Repair(
                    recording_id=row["id"],
                    stream_id=row["stream"],
                    stream=row["stream_name"],
                    path=path or "",
                    old_state=SegmentState.ARCHIVING,
                    new_state=outcome,
                    ended_at=None,
                    size_bytes=0,
                    evidence=evidence,
                    applied=True,
                )
            )
        return repairs

    # Repairs commit in batches of this many, each its own short transaction
    # (about 10 ms of work), with a pause after it long enough for a writer
    # sleeping in SQLite's busy handler to take its turn: a writer waits about
    # one batch, not the whole run. A restore killed halfway leaves the rest
    # open and the next run settles them (issue 13).
    REPAIR_BATCH = 50
    REPAIR_PAUSE_SECONDS = 0.02

    def _commit_repairs(self, repairs: list[Repair], now_ms: int, kind: str) -> None:
        for first in range(0, len(repairs), self.REPAIR_BATCH):
            if first:
                time.sleep(self.REPAIR_PAUSE_SECONDS)
            self._commit_batch(repairs[first : first + self.REPAIR_BATCH], now_ms, kind)

    def _commit_batch(self, repairs: list[Repair], now_ms: int, kind: str) -> None:
        # One transaction per batch; each change goes through the gate with
        # its event (invariant 11), the events gathered and written together
        # at the end of the batch, then those of archive moves. The events are
        # built before the transaction: Python work the write lock need not
        # wait for. A row someone else settled in the meantime is refused by
        # the gate's compare-and-set and gets no event.
        longest_ms = Recording.max_plausible_length / dt.timedelta(milliseconds=1)
        events = [_repair_event(repair, kind, now_ms) for repair in repairs]
        with self.db.atomic():
            applied = []
            with batched_events(self.db):
                for repair, event in zip(repairs, events, strict=True):
                    if repair.applied:
                        # Archive moves were already settled through the gate
                        # while their files were looked at; only the events remain.
                        applied.append(event)
                    elif repair.new_state is None:
                        # invariants 6, 7: the file is gone; the deleting row goes too
                        Recording.finish_delete(repair.recording_id, event=_just(event))
                    else:
                        # invariants 5, 7: an open row is settled from what the disk shows
                        assert repair.ended_at is not None, "a settled segment always gets an end time"
                        ended_ms = to_millis(repair.ended_at)
                        values: dict[str, Any] = {"ended_at": ended_ms, "size_bytes": repair.size_bytes}
                        if repair.finalized is not None:
                            values["finalized"] = repair.finalized
                        if repair.started_ms is not None and ended_ms - repair.started_ms > longest_ms:
                            # open across a clock step (a 1970 boot, then NTP): flagged, not believed
                            values["clock_suspect"] = "too_long"
                        Recording.transition(
                            repair.recording_id,
                            repair.old_state,
                            repair.new_state,
                            values=values,
                            event=_just(event),
                        )
            if applied:
                Event.bulk_create(applied, batch_size=200)

    def _write_lifecycle(self, value: dict[str, Any], *, event: tuple, now_ms: int) -> None:
        kind, severity, message, data = event
        with self.db.atomic():
            SystemState.write(LIFECYCLE_KEY, value)
            Event.record(kind, severity=severity, message=message, data=data, at=from_millis(now_ms))

    def _stream_snapshots(
        self, was_recording: set[int], had: dict[int, tuple[int | None, str | None]] | None = None
    ) -> tuple[StreamSnapshot, ...]:
        # One query: each live stream with its newest segment, found by one
        # index seek per stream on (stream_id, segment_index), not by a
        # GROUP BY over every recording.
        last = Recording.alias("last")
        newest = (
            last.select(last.id).where(last.stream == Stream.id).order_by(last.segment_index.desc()).limit(1)
        )
        segment = Recording.alias("segment")
        query = (
            Stream.select(
                Stream.id,
                Stream.name,
                Stream.uri,
                Stream.config,
                Stream.desired_enabled,
                Stream.desired_recording,
                Stream.status,
                Stream.health,
                Stream.last_seen_at,
                Stream.next_segment_index,
                segment.path,
                segment.ended_at,
            )
            .join(segment, pw.JOIN.LEFT_OUTER, on=(segment.id == newest))
            .where(Stream.removed_at.is_null())
            .order_by(Stream.name)
        )
        # Rows straight from the cursor, converted by hand: with a thousand
        # streams, peewee's per-column conversion was most of restore's time.
        sql, params = query.sql()
        rows = self.db.execute_sql(sql, params).fetchall()
        config_value = Stream.config.python_value
        return tuple(
            StreamSnapshot(
                id=stream_id,
                name=name,
                uri=uri,
                config=config_value(config) or {},
                enabled=bool(enabled),
                recording=bool(recording),
                status=_enum_or_text(StreamStatus, status),
                health=_enum_or_text(HealthState, health),
                last_seen_at=None if last_seen is None else from_millis(last_seen),
                was_recording=stream_id in was_recording,
                next_segment_index=next_index,
                last_segment_path=path,
                last_segment_ended_at=None if ended is None else from_millis(ended),
                session=(had or {}).get(stream_id, (None, None))[0],
                session_ended=(had or {}).get(stream_id, (None, None))[1],
            )
            for (
                stream_id,
                name,
                uri,
                config,
                enabled,
                recording,
                status,
                health,
                last_seen,
                next_index,
                path,
                ended,
            ) in rows
        )


def _just(event: Event) -> Callable[[Transition], list[Event]]:
    """A repair's prebuilt event, for the gate to write with the change."""
    return lambda _moved: [event]


def _repair_event(repair: Repair, kind: str, now_ms: int) -> Event:
    if repair.applied:
        message = f"archive move of {repair.path}: {repair.evidence}"
    elif repair.new_state is None:
        message = f"finished deleting {repair.path}"
    else:
        message = f"segment {repair.path}: {repair.old_state} -> {repair.new_state} ({repair.evidence})"
    return Event.build(
        kind,
        stream=repair.stream_id,
        severity=Severity.WARNING if repair.new_state != SegmentState.COMPLETE else Severity.INFO,
        message=message,
        data={
            "recording_id": repair.recording_id,
            "stream": repair.stream,
            "path": repair.path,
            "old_state": str(repair.old_state),
            "new_state": str(repair.new_state) if repair.new_state else "deleted",
            "size_bytes": repair.size_bytes,
            "evidence": repair.evidence,
            "finalized": repair.finalized,
        },
        at=from_millis(now_ms),
    )


def _enum_or_text(enum_class: type, value: str) -> Any:
    # A value written by a newer version stays readable as plain text.
    try:
        return enum_class(value)
    except ValueError:
        return value


def _stop_kind(clean: bool | None) -> str:
    return {True: "clean stop", False: "crash", None: "first start"}[clean]


def _raw_times(row: dict) -> dict:
    """Rows from ``.dicts()`` carry converted datetimes; the decisions work in ms."""
    for key in ("started_at", "checkpoint_at"):
        value = row[key]
        if isinstance(value, dt.datetime):
            row[key] = to_millis(value)
    row["stream_id"] = row.pop("stream")
    return row


def _segment_snapshot(row: dict) -> SegmentSnapshot:
    return SegmentSnapshot(
        recording_id=row["id"],
        stream=row["stream_name"],
        path=row["path"],
        segment_index=row["segment_index"],
        started_at=from_millis(row["started_at"]),
        checkpoint_at=from_millis(row["checkpoint_at"]) if row["checkpoint_at"] is not None else None,
        size_bytes=row["size_bytes"],
        state=SegmentState(row["state"]),
    )


# A claim of a dead session's streams repairs what it left, as restore would.
on_takeover(lambda db, stream_ids, session: Restorer(db).take_over(stream_ids, session=session).repairs)
