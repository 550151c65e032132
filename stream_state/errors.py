"""Every error the package raises on purpose.

Callers catch ``StreamStateError`` for "the package refused or could not do
this"; the subclasses say why. Driver errors are never leaked bare: they are
wrapped in one of these with the original kept as ``__cause__``.
"""

from __future__ import annotations

from typing import Any


class StreamStateError(Exception):
    """Base class of every error raised by stream_state on purpose."""


class ValidationError(StreamStateError, ValueError):
    """An argument was rejected before anything was written.

    ``field`` names the offending argument and ``value`` holds what was given
    (already redacted when it could carry a credential).
    """

    def __init__(self, field: str, value: Any, reason: str):
        self.field = field
        self.value = value
        self.reason = reason
        shown = _safe_repr(value)
        if len(shown) > 200:
            shown = shown[:200] + "...(truncated)"
        super().__init__(f"invalid {field}={shown}: {reason}")


def _safe_repr(value: Any) -> str:
    # repr() itself can fail: ints of more than 4,300 digits refuse conversion.
    try:
        return repr(value)
    except ValueError:
        if isinstance(value, int):
            return f"<int of {value.bit_length()} bits>"
        return f"<unprintable {type(value).__name__}>"


class NotFound(StreamStateError, LookupError):
    """The stream, recording or series asked for does not exist."""

    def __init__(self, kind: str, key: Any):
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} {key!r} not found")


class AlreadyExists(StreamStateError):
    """A unique thing (a segment path, a stream name) is already taken."""

    def __init__(self, kind: str, field: str, value: Any):
        self.kind = kind
        self.field = field
        self.value = value
        super().__init__(f"{kind} with {field}={value!r} already exists")


class InvalidTransition(StreamStateError):
    """A state change that the transition map does not allow."""

    def __init__(self, what: str, current: Any, requested: Any, detail: str = ""):
        self.what = what
        self.current = current
        self.requested = requested
        message = f"cannot move {what} from {current!s} to {requested!s}"
        super().__init__(f"{message}: {detail}" if detail else message)


class SchemaMismatch(StreamStateError):
    """The database schema is not the version this code expects."""

    def __init__(self, database_version: str | None, code_version: str | None, detail: str = ""):
        self.database_version = database_version
        self.code_version = code_version
        message = (
            f"database schema is at {database_version or 'nothing (empty database)'}, "
            f"this code expects {code_version}"
        )
        super().__init__(f"{message}; {detail}" if detail else message)


class MigrationError(StreamStateError):
    """Applying or rolling back a migration failed; the database was left as it was."""


class DatabaseUnavailable(StreamStateError):
    """The database cannot be reached, opened or written at all."""


class StorageFull(StreamStateError):
    """The write did not fit: the disk or the database's size limit is full."""


class StreamRemoved(NotFound):
    """The stream was removed (soft-deleted); its history stays, but it takes no new writes."""

    def __init__(self, name: str):
        StreamStateError.__init__(
            self, f"stream {name!r} has been removed; register it again to reuse the name"
        )
        self.kind = "stream"
        self.key = name


class CorruptBlock(StreamStateError):
    """A compacted metric block cannot be decoded: garbled on disk, or written by a newer stream_state."""

    def __init__(self, reason: str, series_id: int | None = None):
        self.reason = reason
        self.series_id = series_id
        which = "a metric block" if series_id is None else f"a metric block of series {series_id}"
        super().__init__(
            f"{which} cannot be decoded ({reason}): the database is damaged there, or was written "
            "by a newer stream_state; the query that needs that hour fails, the others still answer"
        )


class TickFailed(StreamStateError):
    """A tick (``stream_state.Tick()``) was not written: the database refused some of its calls.

    ``failures`` names each refused call (``TickFailure``: its position in the
    tick, what it was, the error); ``remaining`` is a ``Tick`` with every
    other call, ready to ``commit()``. Nothing of the tick was committed.
    """

    def __init__(self, failures: list[Any], remaining: Any, calls: int):
        self.failures = failures
        self.remaining = remaining
        shown = "; ".join(f"call {f.index} ({f.call}): {f.error}" for f in failures[:5])
        more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
        super().__init__(
            f"tick not written: {len(failures)} of {calls} calls refused: {shown}{more}; "
            "nothing of the tick was committed (commit .remaining to write the others)"
        )


class OwnershipLost(StreamStateError):
    """This session may not write on the stream: another session owns it, or this session is dead.

    Nothing of the refused write was stored. ``stream`` names the stream (None
    when the session itself was refused, e.g. at renew), ``session`` the
    refused session's id and ``owner`` the id of the session that owns the
    stream now (None: nobody). The manager must stop the stream's pipeline;
    when the session itself is dead (its lease expired, or it was closed) it
    must stop every pipeline and open a new session.
    """

    def __init__(self, stream: str | None, session: int | None, owner: int | None, reason: str):
        self.stream = stream
        self.session = session
        self.owner = owner
        self.reason = reason
        what = f"stream {stream!r}" if stream is not None else "any stream"
        holder = f"session {owner}" if owner is not None else "no session"
        super().__init__(f"session {session} may not write on {what} ({reason}); it is owned by {holder} now")
