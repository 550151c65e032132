"""A camera stream: identity, configuration, desired and observed state."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import peewee as pw

from ..errors import (
    AlreadyExists,
    InvalidTransition,
    NotFound,
    OwnershipLost,
    StreamRemoved,
    ValidationError,
)
from ..fields import EnumField, TimestampField
from ..redact import MASK, is_secret_key, redact_data, redact_text, redact_uri
from ..states import EventType, HealthState, SegmentState, Severity, StreamStatus
from ..timeutil import exact_utc, from_millis, to_millis, utc_now
from ..transitions import REPORTABLE_HEALTH, health_severity, status_change
from ..validate import (
    MAX_STREAM_ID,
    normalise_path,
    optional_text,
    require_bool,
    require_choice,
    require_json,
    require_json_object,
    require_segment_path,
    require_text,
    require_uri,
)
from .base import BaseModel, locked
from .session import Session, writer
from .statements import prepared

if TYPE_CHECKING:
    from .recording import Recording

log = logging.getLogger(__name__)

DESIRED_FLAGS = ("enabled", "recording")
# Long enough for any error text; short enough that the event message built
# around it stays within an event message's limit.
REASON_MAX_LENGTH = 2000


@dataclass(frozen=True)
class SegmentStart:
    """A new segment's row before it is written, validated (``Stream._segment_start``)."""

    path: str | None  # or, once the index is known, the template filled
    path_template: str | None
    storage: str | None
    metadata: dict[str, Any] | None
    started: dt.datetime  # as given (or now)
    started_ms: int
    media_ms: int | None
    suspicion: str | None  # why its start cannot be believed (clock_suspect), else None

    def path_at(self, stream: Stream, index: int) -> str:
        """The file's path once the segment's index is claimed."""
        if self.path is not None:
            return self.path
        assert self.path_template is not None
        return normalise_path(self.path_template.format(stream=stream.name, stream_id=stream.id, index=index))


class Stream(BaseModel):
    id = pw.AutoField()
    name = pw.TextField()
    uri = pw.TextField()
    config = pw.JSONField(default=dict)
    # Desired state: what the manager should bring back after a restart.
    desired_enabled = pw.BooleanField(default=True)
    desired_recording = pw.BooleanField(default=False)
    # Observed state: what the manager last reported.
    status = EnumField(StreamStatus, default=StreamStatus.STOPPED)
    health = EnumField(HealthState, default=HealthState.UNKNOWN)
    status_changed_at = TimestampField(null=True)
    health_changed_at = TimestampField(null=True)
    last_seen_at = TimestampField(null=True)
    # Only ever grows, so a resumed segmenter never overwrites a file.
    next_segment_index = pw.BigIntegerField(default=0, constraints=[pw.Check("next_segment_index >= 0")])
    # Per-stream retention overrides ({"max_age_days": ..., "max_bytes": ...});
    # NULL means the global policy applies.
    retention = pw.JSONField(null=True)
    created_at = TimestampField(default=utc_now)
    updated_at = TimestampField(default=utc_now)
    # Soft delete: history stays queryable and the name can be reused.
    removed_at = TimestampField(null=True)
    # The session that owns the stream (models/session.py) and the fencing
    # epoch, bumped at every change of owner; manager writes are gated on both.
    owner_session_id = pw.BigIntegerField(null=True, index=True)
    owner_epoch = pw.BigIntegerField(default=0)

    class Meta:
        table_name = "stream"

    # --- how it shows ------------------------------------------------------------

    @property
    def display_uri(self) -> str:
        """The URI with its password masked: the only form ever shown or logged."""
        return redact_uri(self.uri)

    @property
    def is_removed(self) -> bool:
        return self.removed_at is not None

    def __str__(self) -> str:
        return str(self.name)

    def __repr__(self) -> str:
        return f"<Stream {self.id} {self.name!r} {self.display_uri} {self.status}/{self.health}>"

    # --- queries -------------------------------------------------------------------

    @classmethod
    def active(cls) -> pw.ModelSelect[Stream]:
        """Streams that have not been removed, by name."""
        return cls.select().where(cls.removed_at.is_null()).order_by(cls.name)

    @classmethod
    def by_name(cls, name: str) -> Stream:
        """The live stream called ``name``; ``NotFound`` if there is none."""
        stream = cls.get_or_none((cls.name == name) & cls.removed_at.is_null())
        if stream is None:
            raise NotFound("stream", name)
        return stream

    # --- registration and configuration ---------------------------------------------

    @classmethod
    def register(cls, name: str, uri: str, config: dict[str, Any] | None = None, **desired: bool) -> Stream:
        """Create the stream ``name``, or update the live one of that name, and return it.

        ``config`` replaces the stored config when given (``None`` keeps it);
        ``enabled=`` and ``recording=`` set the desired state. Every change is
        written as an event in the same transaction.
        """
        require_text("name", name, max_length=200)
        if name != name.strip():
            raise ValidationError("name", name, "must not start or end with whitespace")
        require_uri("uri", uri)
        if config is not None:
            config = require_json_object("config", config)
        flags = _desired_flags(desired)
        from .event import Event

        db = cls._meta.database
        # On PostgreSQL two processes can both find no row and both insert;
        # the unique index refuses the second, which then updates instead.
        for attempt in range(3):
            try:
                with db.atomic():
                    stream = locked(cls.select().where((cls.name == name) & cls.removed_at.is_null())).first()
                    if stream is None:
                        stream = cls.create(
                            name=name,
                            uri=uri,
                            config=config or {},
                            desired_enabled=flags.get("enabled", True),
                            desired_recording=flags.get("recording", False),
                        )
                        Event._record(
                            EventType.STREAM_REGISTERED,
                            stream,
                            message=f"stream {name} registered",
                            data={"uri": stream.display_uri, "enabled": stream.desired_enabled,
                                  "recording": stream.desired_recording}, gate=False)  # fmt: skip
                        log.info("registered stream %s (%s)", name, stream.display_uri)
                        return stream
                    if stream.uri != uri:
                        old = stream.display_uri
                        stream.uri = uri
                        stream._touch(uri=uri)
                        Event._record(
                            EventType.STREAM_UPDATED,
                            stream,
                            message=f"stream {name} URI changed",
                            data={"uri": {"old": old, "new": stream.display_uri}},
                            gate=False,
                        )
                    if config is not None:
                        stream._replace_config(config)
                    if flags:
                        stream._change_desired(flags)
                    return stream
            except pw.IntegrityError as exc:
                if attempt == 2:
                    raise AlreadyExists("stream", "name", name) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def update_config(self, config: dict[str, Any]) -> bool:
        """Replace the config; write a ``config_changed`` event naming the changed keys.

        Returns False (and writes nothing) when the config is unchanged.
        """
        config = require_json_object("config", config)
        with self._meta.database.atomic():
            self._refresh_live()
            return self._replace_config(config)

    def _replace_config(self, config: dict[str, Any]) -> bool:
        from .event import Event

        change = config_diff(self.config or {}, config)
        if not change:
            return False
        self.config = config
        self._touch(config=config)
        Event._record(
            EventType.CONFIG_CHANGED,
            self,
            message=_config_message(self.name, change),
            data=change,
            gate=False,
        )
        return True

    def set_desired(self, enabled: bool | None = None, recording: bool | None = None) -> bool:
        """Set what the manager should bring back after a restart.

        ``None`` leaves a flag as it is. Returns whether anything changed.
        """
        flags = _desired_flags({"enabled": enabled, "recording": recording}, drop_none=True)
        if not flags:
            raise ValidationError("enabled/recording", None, "give at least one of enabled= or recording=")
        with self._meta.database.atomic():
            self._refresh_live()
            return self._change_desired(flags)

    def _change_desired(self, flags: dict[str, bool]) -> bool:
        from .event import Event

        changed = {
            flag: {"old": getattr(self, f"desired_{flag}"), "new": value}
            for flag, value in flags.items()
            if getattr(self, f"desired_{flag}") != value
        }
        if not changed:
            return False
        columns = {f"desired_{flag}": change["new"] for flag, change in changed.items()}
        for column, value in columns.items():
            setattr(self, column, value)
        self._touch(**columns)
        Event._record(
            EventType.DESIRED_CHANGED,
            self,
            message=f"desired state of {self.name} changed",
            data=changed,
            gate=False,
        )
        return True

    # --- observed state -----------------------------------------------------------------

    def set_status(
        self, status: StreamStatus | str, reason: str | None = None, at: dt.datetime | None = None
    ) -> bool:
        """Record what the manager is doing with this stream.

        An unchanged status does nothing and returns False. A move the
        transition map refuses raises ``InvalidTransition`` naming both
        statuses. An allowed move updates the stream and writes a
        ``status_changed`` event in one transaction, and returns True.
        """
        requested = require_choice("status", status, StreamStatus)
        reason = optional_text("reason", reason, max_length=REASON_MAX_LENGTH)
        shown_reason = f" ({redact_text(reason)})" if reason else ""
        when = utc_now() if at is None else at
        to_millis(when, "at")
        from .event import Event

        session = writer(self._meta.database)
        with self._meta.database.atomic():
            self._refresh_live()
            with session.gate(self.id, self.name):
                current = self.status
                if not status_change(current, requested):
                    return False
                self.status = requested
                self.status_changed_at = when
                self._touch(status=requested, status_changed_at=when)
                Event._record(
                    EventType.STATUS_CHANGED,
                    self,
                    severity=Severity.ERROR if requested == StreamStatus.ERROR else Severity.INFO,
                    message=f"{self.name}: {current} -> {requested}{shown_reason}",
                    data={"old": str(current), "new": str(requested), "reason": reason},
                    at=when,
                    gate=False,
                )
        log.info("stream %s status %s -> %s%s", self.name, current, requested, shown_reason)
        return True

    def record_health(
        self,
        state: HealthState | str,
        reason: str | None = None,
        data: dict[str, Any] | None = None,
        at: dt.datetime | None = None,
    ) -> bool:
        """Report the stream's health; called every few seconds by the manager.

        An unchanged state only refreshes ``last_seen_at`` (one UPDATE, no
        event). A change writes a ``health_changed`` event and returns True.
        """
        requested, reason, data, when, when_ms = health_values(state, reason, data, at)
        hot = prepared(self._meta.database)
        session = writer(hot.db)
        stream_id = self.id
        epoch = session.owned_epoch(stream_id)
        # The common case, the same state again on a stream this session owns:
        # one statement, no transaction, spelled once per database
        # (statements.Prepared), gated on (owner, epoch) and the session's lease.
        if epoch is not None:
            session_id = session.id
            if hot.db.execute_sql(
                hot.gated_touch_health, (when_ms, stream_id, requested.value, session_id, epoch, session_id)
            ).rowcount:
                self.health = requested
                self.last_seen_at = when
                return False
        return self._change_health(requested, reason, data, when)

    def _change_health(
        self, requested: HealthState, reason: str | None, data: dict[str, Any] | None, when: dt.datetime
    ) -> bool:
        """The slow path of ``record_health`` (values already validated): a real change, or a check."""
        shown_reason = f" ({redact_text(reason)})" if reason else ""
        from .event import Event

        db = self._meta.database
        session = writer(db)
        with db.atomic():
            self._refresh_live()
            with session.gate(self.id, self.name):
                current = self.health
                self.last_seen_at = when
                if current == requested:
                    self._touch(last_seen_at=when, stamp=False)
                    return False
                self.health = requested
                self.health_changed_at = when
                self._touch(health=requested, health_changed_at=when, last_seen_at=when)
                Event._record(
                    EventType.HEALTH_CHANGED,
                    self,
                    severity=health_severity(requested),
                    message=f"{self.name}: {current} -> {requested}{shown_reason}",
                    data={"old": str(current), "new": str(requested), "reason": reason, "detail": data},
                    at=when,
                    gate=False,
                )
        log.log(
            logging.WARNING if requested != HealthState.HEALTHY else logging.INFO,
            "stream %s health %s -> %s%s",
            self.name,
            current,
            requested,
            shown_reason,
        )
        return True

    def remove(self) -> bool:
        """Soft-delete: the stream takes no new writes and its name is free again.

        Its recordings, events and metrics stay queryable. Refused while a
        segment is still open (complete or fail it first). Returns False if
        the stream was already removed.
        """
        from .event import Event
        from .recording import Recording

        with self._meta.database.atomic():
            fresh = locked(type(self).select().where(type(self).id == self.id)).first()
            if fresh is None:
                raise NotFound("stream", self.name)
            if fresh.removed_at is not None:
                self.removed_at = fresh.removed_at
                return False
            # invariant 12: a removed stream has no open segment
            open_count = Recording.open_segments().where(Recording.stream == self.id).count()
            if open_count:
                raise InvalidTransition(
                    "stream",
                    "recording",
                    "removed",
                    f"{open_count} segment(s) still open; complete or fail them",
                )
            self.removed_at = utc_now()
            self._touch(removed_at=self.removed_at)
            Event._record(EventType.STREAM_REMOVED, self, message=f"stream {self.name} removed", gate=False)
        log.info("removed stream %s", self.name)
        return True

    # --- segments -----------------------------------------------------------------------

    def begin_segment(
        self,
        path: str | os.PathLike[str] | None = None,
        started_at: dt.datetime | None = None,
        storage: str | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        path_template: str | None = None,
        media_started_at: dt.datetime | None = None,
    ) -> Recording:
        """Commit the row of a new segment file before the manager opens the file.

        The segment index comes from the stream's counter in the same
        transaction, so no index is ever handed out twice. Several segments
        of one stream may be open at once (a segmenter opens the next file
        before it finalises the last).

        Give ``path``, or ``path_template``: a ``str.format`` template with
        ``{index}`` (and optionally ``{stream}``, ``{stream_id}``) that is
        filled with the index taken in the same transaction, so the name a
        file gets always carries its row's ``segment_index``; read the result
        from the returned row's ``path``.

        ``media_started_at`` is the first frame's time mapped to wall clock.
        When given it is the row's ``started_at`` too (media time beats the
        time of a callback that runs a GOP late); giving both with different
        values is an error.
        """
        Recording = _recording_module().Recording

        start = self._segment_start(
            path,
            started_at,
            storage,
            metadata,
            path_template=path_template,
            media_started_at=media_started_at,
        )
        hot = prepared(self._meta.database)
        db = hot.db
        # A segment recorded into a deleted database file would vanish at the
        # next restart: one stat() per segment to refuse that loudly.
        hot.dialect.verify_file()
        sql = hot.segment
        session = writer(db)
        # A stream this session owns already needs no gate of its own: the
        # statement below is gated itself (owner, epoch, lease).
        epoch = session.owned_epoch(self.id)
        gated = (
            contextlib.nullcontext(epoch)
            if epoch is not None
            else session.gate(self.id, self.name, verify=False)
        )
        path = start.path
        try:
            # invariant 1: this transaction commits before the caller opens the file.
            # The ownership gate takes a free stream on this first write, in the
            # same transaction; the statement below is gated itself.
            with db.atomic(), gated as epoch:
                # invariants 2, 3, 12: the counter hands out the index and moves
                # past it in one statement, which a removed stream (or a stream
                # this session does not own at this epoch) does not match
                claimed = db.execute_sql(sql.claim_index, (self.id, session.id, epoch, session.id)).fetchone()
                if claimed is None:
                    epoch = self._why_refused(session)  # the stream was free again: taken, one retry
                    claimed = db.execute_sql(
                        sql.claim_index, (self.id, session.id, epoch, session.id)
                    ).fetchone()
                    if claimed is None:
                        raise OwnershipLost(self.name, session.id, None, "refused by the ownership gate")
                index = claimed[0] - 1
                index, path = self._segment_name(start, index, session.id)
                metadata = start.metadata
                (recording_id,) = db.execute_sql(
                    sql.insert_recording,
                    (
                        self.id,
                        path,
                        start.storage,
                        index,
                        start.started_ms,
                        _STORED_FALSE,
                        None if metadata is None else hot.dialect.json_param(Recording.metadata, metadata),
                        start.media_ms,
                        session.id,
                        epoch,
                    ),
                ).fetchone()
                if start.suspicion is not None:  # rare: a clock not yet set, or set back
                    Recording.update(clock_suspect=start.suspicion).where(
                        Recording.id == recording_id
                    ).execute()
        except pw.IntegrityError as exc:
            if "path" in str(exc):
                raise AlreadyExists("recording", "path", path) from exc
            raise
        return self._begun(start, recording_id, index, path, session.id, epoch)

    def _segment_start(
        self,
        path: str | os.PathLike[str] | None = None,
        started_at: dt.datetime | None = None,
        storage: str | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        path_template: str | None = None,
        media_started_at: dt.datetime | None = None,
    ) -> SegmentStart:
        """``begin_segment``'s arguments, validated and defaulted (now); nothing written.

        A tick (``Tick.begin_segment``) takes them at the call and begins
        many segments at once (models/rolls.py).
        """
        if (path is None) == (path_template is None):
            raise ValidationError("path", path, "give exactly one of path= or path_template=")
        if path is not None:
            path = require_segment_path("path", path)  # absolute, one spelling (invariant 13)
        else:
            path_template = require_path_template(path_template, self.name, self.id)
        storage = optional_text("storage", storage, max_length=1000)
        metadata = require_json_object("metadata", metadata) if metadata is not None else None
        media_ms = None if media_started_at is None else to_millis(media_started_at, "media_started_at")
        if started_at is None:
            started = utc_now() if media_started_at is None else media_started_at
        else:
            started = started_at
        started_ms = to_millis(started, "started_at")
        if media_ms is not None and started_ms != media_ms:
            raise ValidationError(
                "started_at", started_at, "differs from media_started_at; the media time is the row's start"
            )
        registered = self.__data__.get("created_at")
        suspicion = _recording_module().start_suspicion(
            started_ms, None if registered is None else to_millis(registered)
        )
        return SegmentStart(path, path_template, storage, metadata, started, started_ms, media_ms, suspicion)

    def _begun(
        self, start: SegmentStart, recording_id: int, index: int, path: str, session_id: int, epoch: int
    ) -> Recording:
        """The new segment's row as an object, once its row is written; the stream moves past its index."""
        self.next_segment_index = index + 1
        # The row as written, straight into the model's data (what a row read
        # back holds; nothing is left to save): a model built field by field
        # cost as much Python as the rest of begin_segment.
        recording = _recording_module().Recording(__no_default__=True)
        started = start.started
        recording.__data__ = {
            "id": recording_id,
            "stream": self.id,
            "path": path,
            "storage": start.storage,
            "segment_index": index,
            "started_at": started if exact_utc(started) else from_millis(start.started_ms),
            "size_bytes": 0,
            "state": SegmentState.RECORDING,
            "archived": False,
            "metadata": start.metadata,
            "media_started_at": None if start.media_ms is None else from_millis(start.media_ms),
            "clock_suspect": start.suspicion,
            "session_id": session_id,
            "session_epoch": epoch,
        }
        recording.__rel__["stream"] = self
        if start.suspicion is not None:
            log.warning(
                "segment %s of %s starts at %s (%s): its time is flagged, not believed",
                index,
                self.name,
                from_millis(start.started_ms).isoformat(),
                start.suspicion,
            )
        return recording

    def _segment_name(self, start: SegmentStart, index: int, session_id: int) -> tuple[int, str]:
        """(index, path) of the segment claimed at ``index``: past files already on disk (invariant 16).

        One lstat() per segment, so that a database behind its disk (an
        older backup put back) never names a file that is already there. A
        ``path=`` is the caller's own choice (a manager may register a file
        its muxer just opened) and is taken as given.

        Runs inside the gated transaction that claimed ``index``: a skip
        moves the counter past the skipped indexes in it, with an event
        saying which and why, or not at all.
        """
        path = start.path_at(self, index)
        if start.path_template is None or not os.path.lexists(path):
            return index, path
        from .event import Event

        first = index
        while os.path.lexists(path):
            index += 1
            path = start.path_at(self, index)
        # invariant 3: the counter only grows, past every index handed out or skipped
        Stream.update(next_segment_index=index + 1).where(
            (Stream.id == self.id) & (Stream.next_segment_index <= index)
        ).execute()
        note = _skip_note(first, index - 1)
        Event._record(
            EventType.SEGMENT_INDEX_SKIPPED,
            self.id,
            Severity.WARNING,
            note,
            {"first": first, "last": index - 1, "next": index, "session": session_id},
            gate=False,  # the caller's transaction is gated already
        )
        log.warning("stream %s: %s", self.name, note)
        return index, path

    def _why_refused(self, session: Session) -> int:
        """A gated write on this stream matched nothing: raise the reason, or the epoch to retry at."""
        cls = type(self)
        row = cls.select(cls.removed_at).where(cls.id == self.id).first()
        if row is None:
            raise NotFound("stream", self.name)
        if row.removed_at is not None:
            raise StreamRemoved(self.name)
        again = session.refused(self.id, self.name)
        if again is None:
            raise OwnershipLost(self.name, session.id, None, "refused by the ownership gate")
        return again

    # --- helpers --------------------------------------------------------------------------

    def _refresh_live(self) -> None:
        """Reload this row under a lock (inside a transaction) and refuse a removed stream."""
        cls = type(self)
        fresh = locked(cls.select().where(cls.id == self.id)).first()
        if fresh is None:
            raise NotFound("stream", self.name)
        if fresh.removed_at is not None:
            raise StreamRemoved(self.name)
        self.__data__.update(fresh.__data__)
        self._dirty.clear()

    def _touch(self, stamp: bool = True, **columns: Any) -> None:
        """Write ``columns`` (and ``updated_at``) to this row."""
        if stamp:
            self.updated_at = utc_now()
            columns["updated_at"] = self.updated_at
        type(self).update(**columns).where(type(self).id == self.id).execute()


# Recording.archived's stored False, as begin_segment writes it.
_STORED_FALSE = pw.BooleanField().db_value(False)

_recording: ModuleType | None = None


def _recording_module() -> ModuleType:
    """models/recording.py, imported on first use: it imports this module (begin_segment runs per segment)."""
    global _recording
    if _recording is None:
        from . import recording

        _recording = recording
    return _recording


def _skip_note(first: int, last: int) -> str:
    return (
        f"segment indexes {first}..{last} skipped: their files already exist but have no row "
        "(is the database older than the disk? an older backup restored?); run `stream-state check` "
        "to adopt or remove them"
    )


def require_path_template(template: Any, name: str, stream_id: int) -> str:
    """A ``str.format`` template that names a file after its segment index, checked by filling it once."""
    template = require_text("path_template", template, max_length=4096)
    try:
        probe = template.format(stream=name, stream_id=stream_id, index=0)
        other = template.format(stream=name, stream_id=stream_id, index=1)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ValidationError(
            "path_template", template, f"cannot be filled with stream, stream_id and index ({exc!r})"
        ) from exc
    if probe == other:
        raise ValidationError("path_template", template, "must contain {index}: each file needs its own name")
    require_segment_path("path_template", probe)  # absolute once filled
    return template


def health_values(
    state: HealthState | str, reason: str | None, data: dict[str, Any] | None, at: dt.datetime | None
) -> tuple[HealthState, str | None, dict[str, Any] | None, dt.datetime, int]:
    """A health report's arguments, validated: (state, reason, data, at, at in epoch ms)."""
    # Every stream reports its health every second: a reportable state given
    # as its member or its text is one dict lookup (anything else, and every
    # error, takes the full checks).
    requested = _REPORTABLE.get(state) if type(state) is str or type(state) is HealthState else None
    if requested is None:
        requested = require_choice("state", state, HealthState)
        if requested not in REPORTABLE_HEALTH:
            raise ValidationError("state", state, f"report one of: {', '.join(sorted(REPORTABLE_HEALTH))}")
    if reason is not None:
        reason = optional_text("reason", reason, max_length=REASON_MAX_LENGTH)
    if data is not None:
        require_json("data", data)
    when = utc_now() if at is None else at
    return requested, reason, data, when, to_millis(when, "at")


# The reportable health states by member and by stored text.
_REPORTABLE: dict[str, HealthState] = {
    **{state: state for state in REPORTABLE_HEALTH},
    **{state.value: state for state in REPORTABLE_HEALTH},
}


def _desired_flags(desired: dict[str, Any], drop_none: bool = False) -> dict[str, bool]:
    unknown = sorted(set(desired) - set(DESIRED_FLAGS))
    if unknown:
        raise ValidationError(
            unknown[0], desired[unknown[0]], f"unknown desired-state flag; use {DESIRED_FLAGS}"
        )
    return {
        flag: require_bool(flag, value)
        for flag, value in desired.items()
        if not (drop_none and value is None)
    }


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What changed between two configs, safe to store in an event.

    Values of secret-looking keys are masked and credentials in URIs
    redacted; an empty dict means nothing changed.
    """

    def shown(key: str, value: Any) -> Any:
        return MASK if is_secret_key(key) else redact_data(value)

    added = {key: shown(key, new[key]) for key in new.keys() - old.keys()}
    removed = sorted(old.keys() - new.keys())
    changed = {
        key: {"old": shown(key, old[key]), "new": shown(key, new[key])}
        for key in old.keys() & new.keys()
        if not same_json(old[key], new[key])
    }
    diff: dict[str, Any] = {}
    if added:
        diff["added"] = added
    if removed:
        diff["removed"] = removed
    if changed:
        diff["changed"] = changed
    return diff


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values: numbers by value (jsonb returns 1e16 as an int), but True is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _changed_keys(diff: dict[str, Any]) -> list[str]:
    return [*diff.get("added", {}), *diff.get("removed", []), *diff.get("changed", {})]


# The message names at most this many keys (each cut to KEY_SHOWN characters)
# and counts the rest, so that a change of any size fits the event's message
# and the config is saved (issue 13); the event's data keeps the whole diff.
CONFIG_MESSAGE_KEYS = 10
KEY_SHOWN = 60


def _config_message(name: str, diff: dict[str, Any]) -> str:
    keys = sorted(_changed_keys(diff))
    shown = [key if len(key) <= KEY_SHOWN else key[: KEY_SHOWN - 3] + "..." for key in keys]
    text = ", ".join(redact_text(key) for key in shown[:CONFIG_MESSAGE_KEYS])
    if len(keys) > CONFIG_MESSAGE_KEYS:
        counts = {part: len(diff.get(part, ())) for part in ("added", "removed", "changed")}
        text += (
            f", ... ({len(keys)} keys: {counts['added']} added, {counts['removed']} removed, "
            f"{counts['changed']} changed)"
        )
    return f"config of {name} changed: {text}"


# A name is unique among live streams only, so a removed stream's name can be
# registered again while the old history stays attached to the old row.
Stream.add_index(
    Stream.index(Stream.name, unique=True, where=Stream.removed_at.is_null(), name="stream_name_live")
)


def require_stream_id(field: str, stream: Any, *, allow_none: bool = True) -> int | None:
    """A saved Stream or a stream id (a positive int in the column's range), as the id."""
    if stream is None and allow_none:
        return None
    if isinstance(stream, Stream):
        if stream.id is None:
            raise ValidationError(field, stream, "the stream has not been saved")
        return stream.id
    if isinstance(stream, bool) or not isinstance(stream, int):
        raise ValidationError(field, stream, "expected a Stream, a stream id or None")
    if not 0 < stream <= MAX_STREAM_ID:
        raise ValidationError(field, stream, f"a stream id is between 1 and {MAX_STREAM_ID}")
    return stream
