"""Sessions: one row per manager process, a lease judged by the database's clock.

A stream has one owner session and a fencing epoch bumped at every change
of owner. Every manager write on a stream carries ``(session, epoch)`` and
is gated on it in the same statement (or transaction), together with "the
session's lease has not expired by the database's clock". So:

* a write commits only while its session is alive and owns the stream at
  the epoch it believes in;
* a stream is taken (claimed) only from no one, or from a dead session
  (lease expired, closed, or, on SQLite, a process that is gone);

hence two live sessions never both write on one stream, and a paused or
partitioned process that wakes after its lease expired writes nothing.

Lease times come from the database (``clock_timestamp()`` on PostgreSQL;
on SQLite, which runs on the one host, that host's clock through
``julianday('now')``), never from the caller, so clock skew between nodes
cannot make two owners.

A process gets one session per database, opened on first need (a fork gets
its own), kept alive by a daemon thread. Managers that want control open
their own with ``Session.open()``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
import os
import socket
import threading
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

import peewee as pw

from ..errors import DatabaseUnavailable, NotFound, OwnershipLost, StreamStateError, ValidationError
from ..fields import GrowingIdField, TimestampField
from ..timeutil import from_millis
from ..validate import optional_text
from .base import BaseModel, database_proxy, dialect
from .statements import prepared

log = logging.getLogger(__name__)

DEFAULT_TTL = 30.0
MIN_TTL = 1.0
MAX_TTL = 24 * 3600.0

# How a session ended, as stored in ``session.ended``.
ENDED_CLEAN = "clean"  # closed by its own process (Session.close, Restorer.shutdown)
ENDED_CRASHED = "crashed"  # its process is gone (SQLite, same host), or it was replaced in-process
ENDED_EXPIRED = "expired"  # its lease ran out (found so by another session)


# --- what differs between backends, asked of the database --------------------------------------


def _database(db: Any) -> Any:
    """The database behind the models' proxy (any other database as it is)."""
    return database_proxy.obj if db is database_proxy else db


def clock_ms_sql(db: Any) -> str:
    """The database's "now" in epoch milliseconds, as SQL."""
    return dialect(db).clock_ms_sql


def judges_pids(db: Any) -> bool:
    """Whether every session of ``db`` runs on this one host (SQLite), so a gone pid means dead."""
    return dialect(db).judges_pids


def _lock_clause(db: Any, kind: str) -> str:
    """`` FOR <kind>`` where the backend has row locks (its transactions do not lock the whole database)."""
    return "" if dialect(db).is_sqlite else f" FOR {kind}"


# --- the process we are ------------------------------------------------------------------------


def process_start(pid: int) -> str | None:
    """What tells process ``pid`` from a later one with the same pid: boot id and start time.

    ``None`` where /proc is not there (the lease alone then decides).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        # The command name (field 2) may hold spaces and parentheses.
        fields = stat[stat.rindex(b")") + 2 :].split()
        start_ticks = fields[19].decode()
    except (OSError, ValueError, IndexError):
        return None
    return f"{_boot_id()}:{start_ticks}"


@lru_cache(maxsize=1)
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return "?"


def process_gone(pid: int, started: str | None) -> bool:
    """True when process ``pid`` (started at ``started``) no longer runs on this host."""
    if started is None:
        return False  # no way to tell pid reuse apart: let the lease decide
    if started.split(":", 1)[0] != _boot_id():
        return True  # the host rebooted since
    return process_start(pid) != started


# --- the model ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Renewal:
    """What ``Session.renew()`` found: the lease's new end and what changed."""

    expires_at: Any  # aware datetime, by the database's clock
    lost: tuple[int, ...]  # stream ids this session believed it owned, now another's (or nobody's)
    release: tuple[int, ...]  # stream ids to stop and ``release()``: above the fair share, a node is short
    gained: tuple[int, ...]  # stream ids taken by the claim run with the renew (``renew(claim=True)``)


class Session(BaseModel):
    id = GrowingIdField()
    node = pw.TextField()
    host = pw.TextField()
    pid = pw.IntegerField()
    process_start = pw.TextField(null=True)
    label = pw.TextField(null=True)
    ttl_ms = pw.BigIntegerField()
    # Takes part in sharing the streams out (it has called claim_streams).
    claims = pw.BooleanField(default=False)
    started_at = TimestampField()
    renewed_at = TimestampField()
    expires_at = TimestampField()
    closed_at = TimestampField(null=True)
    clean = pw.BooleanField(null=True)
    ended = pw.TextField(null=True)

    class Meta:
        table_name = "session"
        indexes = ((("expires_at",), False),)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # stream id -> the epoch this session owns it at; the gate's parameters.
        self._owned: dict[int, int] = {}
        self._lock = threading.RLock()
        self._dead: str | None = None
        self._keeper: KeepAlive | None = None
        # Opened on first need by current_session (not by the manager itself).
        self._implicit = False
        # The database this session lives in: the proxy may be pointed
        # elsewhere later (tests, tools), the session must not follow.
        # Weak, so that the registry of process sessions (keyed weakly by
        # database) does not keep a closed database alive forever.
        self._db_ref: Any = None

    @property
    def db(self) -> Any:
        if self._db_ref is None:
            return _database(self._meta.database)
        db = self._db_ref()
        if db is None:
            raise DatabaseUnavailable(f"the database of session {self.id} was closed and dropped")
        return db

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.node} pid {self.pid}{' dead' if self._dead else ''}>"

    # --- life ------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        node: str | None = None,
        ttl: float = DEFAULT_TTL,
        *,
        label: str | None = None,
        keep_alive: bool = False,
        register: bool = True,
        database: Any = None,
    ) -> Session:
        """Open a session for this process: a lease of ``ttl`` seconds from the database's clock.

        ``node`` names the manager node (default: the host name). With
        ``register`` (the default) the session becomes this process's
        session for the database: the models' writes go through it. With
        ``keep_alive`` a daemon thread renews it every ``ttl / 3`` seconds.
        """
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not MIN_TTL <= ttl <= MAX_TTL:
            raise ValidationError("ttl", ttl, f"expected seconds between {MIN_TTL:g} and {MAX_TTL:g}")
        host = socket.gethostname()
        node = optional_text("node", node, max_length=200) or host
        label = optional_text("label", label, max_length=200)
        db = _database(database if database is not None else cls._meta.database)
        if db is None:
            raise StreamStateError("no database is open; call stream_state.open_database() first")
        clock = clock_ms_sql(db)
        p = db.param
        ttl_ms = int(ttl * 1000)
        pid = os.getpid()
        row = db.execute_sql(
            'INSERT INTO "session" ("node", "host", "pid", "process_start", "label", "ttl_ms", "claims", '
            '"started_at", "renewed_at", "expires_at") '
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {clock}, {clock}, {clock} + {p}) "
            'RETURNING "id", "started_at", "expires_at"',
            (node, host, pid, process_start(pid), label, ttl_ms, cls.claims.db_value(False), ttl_ms),
        ).fetchone()
        session = cls(
            id=row[0],
            node=node,
            host=host,
            pid=pid,
            process_start=process_start(pid),
            label=label,
            ttl_ms=ttl_ms,
            claims=False,
            started_at=from_millis(row[1]),
            renewed_at=from_millis(row[1]),
            expires_at=from_millis(row[2]),
        )
        session._dirty.clear()
        session._db_ref = weakref.ref(db)
        if register:
            _register(db, session)
        if keep_alive:
            session.keep_alive()
        log.info("opened session %s (node %s, pid %s, ttl %gs)", session.id, node, pid, ttl)
        return session

    @property
    def ttl(self) -> float:
        return self.ttl_ms / 1000.0

    @property
    def is_dead(self) -> bool:
        """Known dead to this process (found expired, closed, or refused)."""
        return self._dead is not None

    def renew(self, *, claim: bool = False, fair_share: int | None = None) -> Renewal:
        """Extend the lease by ``ttl`` from the database's clock; report what changed.

        A session whose lease already ran out (or that was closed) is dead
        for good: ``OwnershipLost``, and the manager must stop every pipeline
        and open a new session. ``claim=True`` also runs ``claim_streams``.
        """
        db = self.db
        clock = clock_ms_sql(db)
        p = db.param
        row = db.execute_sql(
            f'UPDATE "session" SET "renewed_at" = {clock}, "expires_at" = {clock} + "ttl_ms" '
            f'WHERE "id" = {p} AND "closed_at" IS NULL AND "expires_at" > {clock} '
            'RETURNING "renewed_at", "expires_at"',
            (self.id,),
        ).fetchone()
        if row is None:
            if self._resurrect(db):
                return self.renew(claim=claim, fair_share=fair_share)
            reason = self._why_dead(db)
            self._die(reason)
            raise OwnershipLost(None, self.id, None, reason)
        self.renewed_at, self.expires_at = from_millis(row[0]), from_millis(row[1])
        self._dirty.clear()
        owned = dict(
            db.execute_sql(
                f'SELECT "id", "owner_epoch" FROM "stream" WHERE "owner_session_id" = {p}', (self.id,)
            ).fetchall()
        )
        with self._lock:
            lost = tuple(sorted(sid for sid, epoch in self._owned.items() if owned.get(sid) != epoch))
            for sid in lost:
                del self._owned[sid]
        gained: tuple[int, ...] = ()
        if claim:
            gained = tuple(c.stream_id for c in self.claim_streams(fair_share=fair_share))
            owned.update({sid: self._owned[sid] for sid in gained if sid in self._owned})
        release = self._to_release(db, owned, fair_share) if self.claims else ()
        if lost:
            log.warning("session %s lost %d stream(s) to other sessions: %s", self.id, len(lost), lost)
        return Renewal(self.expires_at, lost, release, gained)

    def close(self, *, clean: bool = True) -> None:
        """End the session; its streams stay marked as its own until a restore or a claim takes them.

        Call it after the pipelines stopped (``Restorer.shutdown()`` does).
        Closing twice does nothing.
        """
        if self._keeper is not None:
            self._keeper.stop()
        db = self.db
        clock = clock_ms_sql(db)
        p = db.param
        db.execute_sql(
            f'UPDATE "session" SET "closed_at" = {clock}, "clean" = {p}, "ended" = {p}, '
            f'"expires_at" = CASE WHEN "expires_at" < {clock} THEN "expires_at" ELSE {clock} END '
            f'WHERE "id" = {p} AND "closed_at" IS NULL',
            (Session.clean.db_value(clean), ENDED_CLEAN if clean else ENDED_CRASHED, self.id),
        )
        self._die("the session was closed")
        _unregister(db, self)
        log.info("closed session %s (%s)", self.id, "clean" if clean else "not clean")

    def keep_alive(self, interval: float | None = None) -> KeepAlive:
        """Start (once) a daemon thread that renews the lease every ``interval`` (default ttl / 3) s."""
        with self._lock:
            if self._keeper is None or not self._keeper.is_alive():
                self._keeper = KeepAlive(self, interval)
                self._keeper.start()
            return self._keeper

    @contextlib.contextmanager
    def acting(self) -> Iterator[Session]:
        """Make the models' writes in this thread (or task) go through this session."""
        token = _ACTING.set(self)
        try:
            yield self
        finally:
            _ACTING.reset(token)

    # --- ownership -------------------------------------------------------------------------------

    def owned(self) -> dict[int, int]:
        """Stream id -> epoch of the streams this process believes the session owns."""
        with self._lock:
            return dict(self._owned)

    def epoch_for(self, stream_id: int, name: str | None = None) -> int:
        """The epoch this session owns ``stream_id`` at, claiming it on this first write if it may.

        A stream that is unowned, or whose owner is dead, is taken (epoch
        bumped, a ``stream_claimed`` event written); one held by another live
        session raises ``OwnershipLost``.
        """
        if self._dead is not None:
            raise OwnershipLost(name or str(stream_id), self.id, None, self._dead)
        epoch = self._owned.get(stream_id)
        if epoch is not None:
            return epoch
        return self.claim(stream_id)

    def claim(self, stream: Any) -> int:
        """Take ``stream`` (a Stream or its id) unless another live session holds it; return the epoch."""
        stream_id = stream if isinstance(stream, int) else stream.id
        db = self.db
        for _ in range(5):
            outcome = self._try_claim(db, stream_id)
            if outcome is not None:
                return outcome
        raise OwnershipLost(str(stream_id), self.id, None, "the stream kept changing hands")

    def _try_claim(self, db: Any, stream_id: int) -> int | None:
        from .event import Event

        clock = clock_ms_sql(db)
        p = db.param
        with db.atomic():
            row = db.execute_sql(
                'SELECT s."name", s."removed_at", s."owner_session_id", s."owner_epoch", '
                f'o."closed_at" IS NULL AND o."expires_at" > {clock}, o."host", o."pid", o."process_start", '
                f'o."ended", o."expires_at" <= {clock} '
                'FROM "stream" s LEFT JOIN "session" o ON o."id" = s."owner_session_id" '
                f'WHERE s."id" = {p}' + _lock_clause(db, "UPDATE OF s"),
                (stream_id,),
            ).fetchone()
            if row is None:
                raise NotFound("stream", stream_id)
            name, _removed, owner, epoch, owner_live, host, pid, started, ended, expired = row
            if owner == self.id:
                with self._lock:
                    self._owned[stream_id] = epoch
                return epoch
            if owner is not None and owner_live:
                if judges_pids(db) and host == self.host and process_gone(pid, started):
                    mark_crashed(db, owner)
                    ended = ENDED_CRASHED
                else:
                    raise OwnershipLost(name, self.id, owner, f"session {owner} owns it and is alive")
            if owner is not None and ended is None:
                ended = ENDED_EXPIRED if expired else None
                if ended:
                    _mark_ended(db, [owner], ENDED_EXPIRED)
            # invariant 14: the owner changes with its epoch, in one statement, with its event.
            # Removed streams are claimed too: their last segments may still need closing.
            taken = db.execute_sql(
                f'UPDATE "stream" SET "owner_session_id" = {p}, "owner_epoch" = "owner_epoch" + 1 '
                f'WHERE "id" = {p} AND "owner_epoch" = {p} AND {_live_session_sql(db)} '
                'RETURNING "owner_epoch"',
                (self.id, stream_id, epoch, self.id),
            ).fetchone()
            if taken is None:
                if not self._alive_now(db) and not self._resurrect(db):
                    reason = self._why_dead(db)
                    self._die(reason)
                    raise OwnershipLost(name, self.id, owner, reason)
                return None  # someone else moved it in between: look again
            new_epoch = taken[0]
            Event._record(
                "stream_claimed",
                stream_id,
                message=f"{name}: owned by session {self.id} (epoch {new_epoch})",
                data={
                    "session": self.id,
                    "node": self.node,
                    "epoch": new_epoch,
                    "previous_session": owner,
                    "previous_ended": ended,
                },
                gate=False,
            )
        with self._lock:
            self._owned[stream_id] = new_epoch
        log.info("session %s took stream %s at epoch %s (from %s)", self.id, name, new_epoch, owner)
        return new_epoch

    def release(self, stream: Any) -> bool:
        """Give ``stream`` up (after stopping its pipeline): unowned, epoch bumped, an event.

        Returns False when this session did not own it.
        """
        from .event import Event

        stream_id = stream if isinstance(stream, int) else stream.id
        db = self.db
        p = db.param
        with db.atomic():
            done = db.execute_sql(
                'UPDATE "stream" SET "owner_session_id" = NULL, "owner_epoch" = "owner_epoch" + 1 '
                f'WHERE "id" = {p} AND "owner_session_id" = {p} RETURNING "owner_epoch", "name"',
                (stream_id, self.id),
            ).fetchone()
            if done is not None:
                Event._record(
                    "stream_released",
                    stream_id,
                    message=f"{done[1]}: released by session {self.id} (epoch {done[0]})",
                    data={"session": self.id, "node": self.node, "epoch": done[0]},
                    gate=False,
                )
        with self._lock:
            self._owned.pop(stream_id, None)
        return done is not None

    def claim_streams(self, limit: int | None = None, *, fair_share: int | None = None) -> list[Claim]:
        """Take unowned and dead sessions' streams up to a fair share (``claim_streams`` below)."""
        return claim_streams(self, limit=limit, fair_share=fair_share)

    # --- the gate, as the models use it --------------------------------------------------------

    def refused(self, stream_id: int, name: str | None = None) -> int | None:
        """After a gated write matched nothing: raise ``OwnershipLost`` if ownership was why.

        Returns None when this session still owns the stream at its epoch
        (the write was refused for another reason the caller reports
        itself), or a new epoch when the stream was free and taken again
        (the caller retries the write once): a live session loses a stream
        only by releasing it, so a stream it believed its own and finds free
        was claimed in a transaction that rolled back.
        """
        db = self.db
        p = db.param
        row = db.execute_sql(
            'SELECT s."name", s."owner_session_id", s."owner_epoch", '
            f'o."closed_at" IS NULL AND o."expires_at" > {clock_ms_sql(db)} '
            'FROM "stream" s LEFT JOIN "session" o ON o."id" = s."owner_session_id" '
            f'WHERE s."id" = {p}',
            (stream_id,),
        ).fetchone()
        if row is None:
            return None
        shown, owner, epoch, owner_live = row
        if not self._alive_now(db) and not self._resurrect(db):
            reason = self._why_dead(db)
            self._die(reason)
            raise OwnershipLost(name or shown, self.id, owner, reason)
        with self._lock:
            mine = self._owned.get(stream_id)
            if owner == self.id and epoch == mine:
                return None
            self._owned.pop(stream_id, None)
        if owner == self.id or owner is None or not owner_live:
            return self.claim(stream_id)
        raise OwnershipLost(name or shown, self.id, owner, f"session {owner} owns it and is alive")

    def owned_epoch(self, stream_id: int) -> int | None:
        """The epoch this process believes the session owns ``stream_id`` at (None: not owned)."""
        return self._owned.get(stream_id)

    @contextlib.contextmanager
    def gate(
        self,
        stream_ids: int | Iterable[int],
        name: str | None = None,
        *,
        verify: bool = True,
        skip_missing: bool = False,
    ) -> Iterator[int]:
        """Inside a write transaction: the write may go on only as the streams' owner (invariant 15).

        Takes a stream that is free on this first write (the claim commits
        or rolls back with the write), verifies ownership in the
        transaction (``verify``; else the caller's statement is gated
        itself) and yields the epoch (of the first stream). A write that
        fails forgets the claims it made. With ``skip_missing`` a stream that
        does not exist is left to the write to refuse (a tick names it).
        """
        ids = [stream_ids] if isinstance(stream_ids, int) else list(dict.fromkeys(stream_ids))
        fresh = [sid for sid in ids if sid not in self._owned]
        try:
            epochs: dict[int, int] = {}
            for sid in ids:
                try:
                    epochs[sid] = self.epoch_for(sid, name if len(ids) == 1 else None)
                except NotFound:
                    if not skip_missing:
                        raise
            if verify and epochs:
                self._verify(epochs, name)
            yield next(iter(epochs.values()), 0)
        except BaseException:
            with self._lock:
                for sid in fresh:
                    self._owned.pop(sid, None)
            raise

    def check(self, stream_id: int, name: str | None = None) -> None:
        """Refuse with ``OwnershipLost`` unless this session owns the stream (claiming it if free)."""
        with self.gate(stream_id, name):
            pass

    def _verify(self, wanted: dict[int, int], name: str | None) -> None:
        """One statement: every stream in ``wanted`` is this session's at its epoch, and the lease lives.

        The rows are share-locked on PostgreSQL until the transaction ends,
        so no claim can commit in between.
        """
        if len(wanted) != 1:
            self._verify_many(wanted)
            return
        ((stream_id, epoch),) = wanted.items()
        db = self.db
        p = db.param
        found = db.execute_sql(
            f'SELECT 1 FROM "stream" WHERE "id" = {p} AND "owner_session_id" = {p} AND "owner_epoch" = {p} '
            f"AND {_live_session_sql(db)}" + _lock_clause(db, "SHARE"),
            (stream_id, self.id, epoch, self.id),
        ).fetchone()
        if found is None:
            again = self.refused(stream_id, name)
            if again is not None:
                self._verify({stream_id: again}, name)

    def _verify_many(self, wanted: dict[int, int]) -> None:
        if not wanted:
            return
        db = self.db
        p = db.param
        marks = ", ".join([p] * len(wanted))
        rows = db.execute_sql(
            f'SELECT "id", "owner_epoch" FROM "stream" WHERE "id" IN ({marks}) AND "owner_session_id" = {p} '
            f"AND {_live_session_sql(db)}" + _lock_clause(db, "SHARE"),
            (*wanted, self.id, self.id),
        ).fetchall()
        found = dict(rows)
        for sid, epoch in wanted.items():
            if found.get(sid) != epoch:
                again = self.refused(sid)
                if again is not None:
                    self._verify({sid: again}, None)

    # --- helpers ---------------------------------------------------------------------------------

    def _alive_now(self, db: Any) -> bool:
        return db.execute_sql(f"SELECT 1 WHERE {_live_session_sql(db)}", (self.id,)).fetchone() is not None

    def _resurrect(self, db: Any) -> bool:
        """Write the session's row again (same id, a fresh lease) if it vanished; True if it did.

        A session opened inside a transaction that later rolled back (its
        first write was part of the caller's ``atomic()``) loses its row
        although the process goes on. Nobody else ever saw that id, so it
        is safe to write it again.
        """
        p = db.param
        if db.execute_sql(f'SELECT 1 FROM "session" WHERE "id" = {p}', (self.id,)).fetchone() is not None:
            return False
        clock = clock_ms_sql(db)
        db.execute_sql(
            'INSERT INTO "session" ("id", "node", "host", "pid", "process_start", "label", "ttl_ms", '
            '"claims", "started_at", "renewed_at", "expires_at") '
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {clock}, {clock}, {clock} + {p})",
            (
                self.id,
                self.node,
                self.host,
                self.pid,
                self.process_start,
                self.label,
                self.ttl_ms,
                Session.claims.db_value(bool(self.claims)),
                self.ttl_ms,
            ),
        )
        with self._lock:
            self._owned.clear()  # its claims went with the same rollback
        log.warning("session %s lost its row to a rolled-back transaction; written again", self.id)
        return True

    def _why_dead(self, db: Any) -> str:
        p = db.param
        row = db.execute_sql(
            f'SELECT "closed_at", "ended" FROM "session" WHERE "id" = {p}', (self.id,)
        ).fetchone()
        if row is None:
            return "the session's row is gone"
        if row[0] is not None:
            return "the session was closed"
        if row[1] == ENDED_CRASHED:
            return "the session was declared crashed"
        return "the session's lease expired"

    def _die(self, reason: str) -> None:
        with self._lock:
            if self._dead is None:
                self._dead = reason
            self._owned.clear()

    def _to_release(self, db: Any, owned: dict[int, int], fair_share: int | None) -> tuple[int, ...]:
        """Streams above the fair share, when another claiming session is short of its share."""
        return share_out(self, db, owned, fair_share)


def _live_session_sql(db: Any) -> str:
    """SQL: the session given as the one parameter is alive now (by the database's clock)."""
    return (
        f'EXISTS (SELECT 1 FROM "session" WHERE "session"."id" = {db.param} '
        f'AND "session"."closed_at" IS NULL AND "session"."expires_at" > {clock_ms_sql(db)})'
    )


def live_session_sql(db: Any) -> str:
    return _live_session_sql(_database(db))


def owns_recording_stream_sql(db: Any) -> str:
    """SQL in a statement on ``recording``: its stream is owned by (session, epoch), two parameters."""
    p = _database(db).param
    return (
        'EXISTS (SELECT 1 FROM "stream" WHERE "stream"."id" = "recording"."stream_id" '
        f'AND "stream"."owner_session_id" = {p} AND "stream"."owner_epoch" = {p})'
    )


@dataclasses.dataclass
class OwnershipGuard:
    """The segment-state gate's guard (models/gate.py): the segment's stream is owned by (session, epoch).

    ANDed into the gate's own UPDATE, so the check and the write are one
    statement; the session's lease is part of it.
    """

    session: Session
    stream_id: int
    epoch: int
    key: Hashable = "owner"

    def where(self, db: Any) -> tuple[str, list[Any]]:
        # Spelled once per database (statements.Prepared): this runs for every segment closed.
        session_id = self.session.id
        return prepared(db).owner_guard, [session_id, self.epoch, session_id]

    def why_refused(self, ids: Any) -> StreamStateError | None:
        try:
            again = self.session.refused(self.stream_id)
        except OwnershipLost as exc:
            return exc
        if again is not None:
            return OwnershipLost(
                str(self.stream_id), self.session.id, None, "the stream was taken again; retry"
            )
        return None


def owner_guard_sql(db: Any) -> str:
    """``OwnershipGuard``'s fragment in ``db``'s spelling: (session, epoch, session)."""
    return f"{owns_recording_stream_sql(db)} AND {live_session_sql(db)}"


def ownership_guard(session: Session, stream_id: int, epoch: int) -> OwnershipGuard:
    """The guard that lets the gate change a segment of ``stream_id`` only as its owner at ``epoch``."""
    return OwnershipGuard(session, stream_id, epoch)


@dataclasses.dataclass
class OwnershipEachGuard:
    """``OwnershipGuard`` for the gate's batched form (``change_each``): each row at its stream's epoch.

    ``epochs`` maps each changed recording's id to the epoch this session
    owns its stream at; the check and the lease ride in the one statement,
    as for a single row (invariant 15).
    """

    session: Session
    epochs: Mapping[int, int]
    columns: tuple[tuple[str, str], ...] = (("epoch", "bigint"),)

    def row_values(self, row_id: int) -> tuple[Any, ...]:
        return (self.epochs[row_id],)

    def where_each(self, db: Any, row: Callable[[str], str]) -> tuple[str, list[Any]]:
        p = _database(db).param
        owns = (
            'EXISTS (SELECT 1 FROM "stream" WHERE "stream"."id" = "recording"."stream_id" '
            f'AND "stream"."owner_session_id" = {p} AND "stream"."owner_epoch" = {row("epoch")})'
        )
        return f"{owns} AND {live_session_sql(db)}", [self.session.id, self.session.id]

    def why_refused(self, ids: Any) -> StreamStateError | None:
        return None  # the caller asks each refused segment why, by its single call


@lru_cache(maxsize=8)
def _gated(statement: str, param: str, clock: str, on_recording: bool) -> str:
    live = (
        f'EXISTS (SELECT 1 FROM "session" WHERE "session"."id" = {param} '
        f'AND "session"."closed_at" IS NULL AND "session"."expires_at" > {clock})'
    )
    if on_recording:
        owns = (
            'EXISTS (SELECT 1 FROM "stream" WHERE "stream"."id" = "recording"."stream_id" '
            f'AND "stream"."owner_session_id" = {param} AND "stream"."owner_epoch" = {param})'
        )
    else:
        owns = f'"owner_session_id" = {param} AND "owner_epoch" = {param}'
    return f"{statement} AND {owns} AND {live}"


def gated_checkpoint(db: Any) -> str:
    """The checkpoint UPDATE (statements.py) plus the gate: (size, at, id, session, epoch, session)."""
    from .statements import manager_statements

    d = dialect(db)
    return _gated(manager_statements(_database(db)).checkpoint, _database(db).param, d.clock_ms_sql, True)


def gated_touch_health(db: Any) -> str:
    """The same-health UPDATE (statements.py) plus the gate: (at, id, health, session, epoch, session)."""
    from .statements import manager_statements

    d = dialect(db)
    return _gated(manager_statements(_database(db)).touch_health, _database(db).param, d.clock_ms_sql, False)


def mark_crashed(db: Any, session_id: int) -> None:
    """Declare a session dead at once (its process is gone): its lease ends now."""
    clock = clock_ms_sql(db)
    p = db.param
    db.execute_sql(
        f'UPDATE "session" SET "ended" = {p}, "clean" = {p}, '
        f'"expires_at" = CASE WHEN "expires_at" < {clock} THEN "expires_at" ELSE {clock} END '
        f'WHERE "id" = {p} AND "closed_at" IS NULL',
        (ENDED_CRASHED, Session.clean.db_value(False), session_id),
    )
    log.warning("session %s declared crashed: its process is gone", session_id)


def _mark_ended(db: Any, session_ids: list[int], how: str) -> None:
    if not session_ids:
        return
    p = db.param
    marks = ", ".join([p] * len(session_ids))
    db.execute_sql(
        f'UPDATE "session" SET "ended" = {p}, "clean" = {p} WHERE "id" IN ({marks}) AND "ended" IS NULL '
        'AND "closed_at" IS NULL',
        (how, Session.clean.db_value(False), *session_ids),
    )


def sweep_dead_sessions(db: Any, *, dry_run: bool = False) -> list[int]:
    """Mark sessions found dead: expired leases, and (SQLite) sessions whose process is gone.

    Returns the ids newly marked (with ``dry_run``: the ids it would mark,
    writing nothing). Safe to run from any process at any time.
    """
    db = _database(db)
    clock = clock_ms_sql(db)
    newly: list[int] = []
    if judges_pids(db):
        host = socket.gethostname()
        rows = db.execute_sql(
            'SELECT "id", "pid", "process_start" FROM "session" '
            f'WHERE "closed_at" IS NULL AND "expires_at" > {clock} AND "host" = {db.param}',
            (host,),
        ).fetchall()
        for session_id, pid, started in rows:
            if process_gone(pid, started):
                if not dry_run:
                    mark_crashed(db, session_id)
                newly.append(session_id)
    expired = [
        sid
        for (sid,) in db.execute_sql(
            'SELECT "id" FROM "session" WHERE "ended" IS NULL AND "closed_at" IS NULL '
            f'AND "expires_at" <= {clock}'
        ).fetchall()
    ]
    if not dry_run:
        _mark_ended(db, expired, ENDED_EXPIRED)
    return newly + expired


def live_session_ids(db: Any) -> set[int]:
    db = _database(db)
    return {
        sid
        for (sid,) in db.execute_sql(
            f'SELECT "id" FROM "session" WHERE "closed_at" IS NULL AND "expires_at" > {clock_ms_sql(db)}'
        ).fetchall()
    }


# --- the process's session -----------------------------------------------------------------------

_ACTING: contextvars.ContextVar[Session | None] = contextvars.ContextVar("stream_state_session", default=None)
_BY_DATABASE: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()

# This process's pid, renewed in a forked child: every manager write asks
# whether the registered session is this process's, and os.getpid() is a
# system call each time.
_pid = os.getpid()


def _renew_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_renew_pid)


def _register(db: Any, session: Session) -> None:
    with _REGISTRY_LOCK:
        _BY_DATABASE[db] = session


def _unregister(db: Any, session: Session) -> None:
    with _REGISTRY_LOCK:
        if _BY_DATABASE.get(db) is session:
            del _BY_DATABASE[db]


def acting_session() -> Session | None:
    """The session made current by ``Session.acting()`` in this thread or task, if any."""
    return _ACTING.get()


def registered_session(db: Any) -> Session | None:
    """The process session registered for ``db`` (the database itself, not a proxy), as it stands."""
    return _BY_DATABASE.get(db)


def current_session(db: Any = None, *, open: bool = True) -> Session | None:
    """The session the models' writes go through: the acting one, else this process's.

    This process's session is opened on first need (and kept alive by a
    daemon thread); a forked child gets a session of its own, never its
    parent's. With ``open=False`` returns None instead of opening one.
    """
    acting = _ACTING.get()
    if acting is not None:
        return acting
    db = _database(db if db is not None else Session._meta.database)
    # The common case, this process's live session, read without the lock:
    # one dict read, and every change of the registry is made under the lock.
    session = _BY_DATABASE.get(db)
    if session is not None and session._dead is None and session.pid == _pid:
        return session
    with _REGISTRY_LOCK:
        session = _BY_DATABASE.get(db)
        if session is not None and session.pid != os.getpid():
            session = None  # the parent's session, after a fork
    if session is not None and session.is_dead:
        if not session._implicit:
            # The manager opened this one itself: it must stop its pipelines
            # and open a new session; writes do not quietly go on under another.
            raise OwnershipLost(None, session.id, None, session._dead or "the session is dead")
        session = None  # opened on first need: the next write opens the next one
    if session is not None or not open:
        return session
    with _REGISTRY_LOCK:
        found = _BY_DATABASE.get(db)
        if found is not None and found.pid == os.getpid() and not found.is_dead:
            return found
    session = Session.open(register=False, database=db)
    session._implicit = True
    # Another thread (or, on an asyncio database, another task of this
    # thread: the INSERT above yields to the loop) may have opened one
    # meanwhile: the first registered wins, the other is closed unused.
    with _REGISTRY_LOCK:
        found = _BY_DATABASE.get(db)
        winner = found if found is not None and found.pid == os.getpid() and not found.is_dead else session
        if winner is session:
            _BY_DATABASE[db] = session
    if winner is not session:
        session.close()
        return winner
    keep_alive_by_default(db, session)
    return session


def keep_alive_by_default(db: Any, session: Session) -> None:
    """Renew a process session from a daemon thread, except on an asyncio database.

    There a task on the loop does it (``stream_state.aio``): a thread cannot
    use the greenlet bridge.
    """
    if getattr(db, "session_keep_alive", "thread") == "thread":
        session.keep_alive()


def writer(db: Any = None) -> Session:
    """The session a manager write goes through (``current_session``, opened if needed)."""
    session = current_session(db)
    assert session is not None
    return session


def forget_process_session(db: Any = None, *, close: bool = True, clean: bool = True) -> None:
    """Close (default) or just drop this process's session of ``db``; the next write opens a new one."""
    db = _database(db if db is not None else Session._meta.database)
    with _REGISTRY_LOCK:
        session = _BY_DATABASE.pop(db, None)
    if session is None or session.pid != os.getpid():
        return
    if close and not session.is_dead:
        with contextlib.suppress(StreamStateError, pw.PeeweeException):
            session.close(clean=clean)
    elif session._keeper is not None:
        session._keeper.stop()


# --- keeping the lease alive ---------------------------------------------------------------------


class KeepAlive(threading.Thread):
    """A daemon thread that renews a session's lease every ``interval`` seconds.

    It stops when the session is closed or found dead (renew raised
    ``OwnershipLost``), or when ``stop()`` is called. A database outage does
    not stop it: it retries until the lease is gone.
    """

    def __init__(self, session: Session, interval: float | None = None):
        super().__init__(name=f"stream_state-session-{session.id}", daemon=True)
        self.session = session
        self.interval = interval if interval is not None else max(0.05, session.ttl / 3)
        self._stopped = threading.Event()
        self.last_renewal: Renewal | None = None
        self.lost: OwnershipLost | None = None

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            if self.session.is_dead or self.session.pid != os.getpid():
                return
            if self.session._db_ref is not None and self.session._db_ref() is None:
                return  # its database is gone
            try:
                self.last_renewal = self.session.renew()
            except OwnershipLost as exc:
                self.lost = exc
                log.error("session %s is dead: %s", self.session.id, exc)
                return
            except Exception as exc:  # the database is away: try again next interval
                log.warning("renewing session %s failed: %s", self.session.id, exc)


# --- sharing streams between nodes -------------------------------------------------------------

# What a claim runs after taking streams from dead sessions: the restore
# service's repairs of their open segments and statuses (Restorer.take_over).
# The service registers it when imported; models import no service.
TakeOver = Callable[[Any, list[int], "Session"], Iterable[Any]]
_TAKE_OVER: TakeOver | None = None


def on_takeover(repair: TakeOver) -> None:
    """Register the repairs a claim runs on the streams it took (``repair(db, stream_ids, session)``)."""
    global _TAKE_OVER
    _TAKE_OVER = repair


@dataclasses.dataclass(frozen=True)
class Claim:
    """One stream taken by ``claim_streams``: everything needed to start recording it."""

    stream_id: int
    name: str
    epoch: int
    next_segment_index: int  # after the takeover repairs
    previous_session: int | None
    previous_ended: str | None  # how the previous owner ended: clean, crashed, expired (None: no owner)
    repairs: tuple[Any, ...]  # restore.Repair of the dead owner's open segments


def fair_share(db: Any, extra_claimers: int = 0) -> int:
    """ceil(enabled live streams / live claiming sessions), at least 1."""
    clock = clock_ms_sql(db)
    enabled = db.execute_sql(
        'SELECT COUNT(*) FROM "stream" WHERE "removed_at" IS NULL AND "desired_enabled" = '
        + ("1" if dialect(db).is_sqlite else "TRUE")
    ).fetchone()[0]
    claimers = db.execute_sql(
        f'SELECT COUNT(*) FROM "session" WHERE "claims" = {"1" if dialect(db).is_sqlite else "TRUE"} '
        f'AND "closed_at" IS NULL AND "expires_at" > {clock}'
    ).fetchone()[0]
    return max(1, math.ceil(enabled / max(1, claimers + extra_claimers)))


def claim_streams(session: Session, limit: int | None = None, fair_share: int | None = None) -> list[Claim]:
    """Take free streams (unowned, or owned by dead sessions) up to the fair share; see the module doc."""

    db = session.db
    p = db.param
    clock = clock_ms_sql(db)
    sweep_dead_sessions(db)
    if not session.claims:
        db.execute_sql(
            f'UPDATE "session" SET "claims" = {p} WHERE "id" = {p}',
            (Session.claims.db_value(True), session.id),
        )
        session.claims = True
        session._dirty.clear()
    share = fair_share if fair_share is not None else _fair_share(db)
    true = "1" if dialect(db).is_sqlite else "TRUE"
    with db.atomic():
        owned = db.execute_sql(
            f'SELECT COUNT(*) FROM "stream" WHERE "owner_session_id" = {p} AND "removed_at" IS NULL',
            (session.id,),
        ).fetchone()[0]
        room = share - owned
        if limit is not None:
            room = min(room, limit)
        if room <= 0:
            return []
        candidates = db.execute_sql(
            'SELECT s."id", s."owner_session_id", o."ended", o."closed_at" IS NOT NULL, '
            f'o."expires_at" <= {clock} '
            'FROM "stream" s LEFT JOIN "session" o ON o."id" = s."owner_session_id" '
            f'WHERE s."removed_at" IS NULL AND s."desired_enabled" = {true} '
            f'AND (s."owner_session_id" IS NULL OR o."id" IS NULL OR o."closed_at" IS NOT NULL '
            f'OR o."expires_at" <= {clock}) '
            f'ORDER BY s."id" LIMIT {int(room)}' + _lock_clause(db, "UPDATE OF s SKIP LOCKED"),
        ).fetchall()
        if not candidates:
            return []
        previous = {
            sid: (owner, _ended(ended, closed, expired, owner))
            for sid, owner, ended, closed, expired in candidates
        }
        marks = ", ".join([p] * len(previous))
        taken = db.execute_sql(
            f'UPDATE "stream" SET "owner_session_id" = {p}, "owner_epoch" = "owner_epoch" + 1 '
            f'WHERE "id" IN ({marks}) AND {live_session_sql(db)} '
            'RETURNING "id", "owner_epoch", "name"',
            (session.id, *previous, session.id),
        ).fetchall()
        if not taken:
            session.refused(candidates[0][0])  # raises OwnershipLost: this session is dead
            return []
        now_ms = db.execute_sql(f"SELECT {clock}").fetchone()[0]
        _write_claim_events(db, session, taken, previous, now_ms)
    with session._lock:
        for sid, epoch, _name in taken:
            session._owned[sid] = epoch
    # Takeover: the dead owners' open segments and statuses, repaired now
    # (by the restore service, which registers itself: models import no service).
    ids = [sid for sid, _e, _n in taken]
    repairs: tuple[Any, ...] = ()
    if _TAKE_OVER is not None:
        repairs = tuple(_TAKE_OVER(db, ids, session))
    marks = ", ".join([p] * len(ids))
    next_index = dict(
        db.execute_sql(
            f'SELECT "id", "next_segment_index" FROM "stream" WHERE "id" IN ({marks})', ids
        ).fetchall()
    )
    claims = [
        Claim(
            stream_id=sid,
            name=name,
            epoch=epoch,
            next_segment_index=next_index.get(sid, 0),
            previous_session=previous[sid][0],
            previous_ended=previous[sid][1],
            repairs=tuple(r for r in repairs if r.stream_id == sid),
        )
        for sid, epoch, name in taken
    ]
    log.info("session %s claimed %d stream(s) (fair share %d)", session.id, len(claims), share)
    return claims


def _write_claim_events(
    db: Any, session: Session, taken: list[tuple[int, int, str]], previous: dict, now_ms: int
) -> None:
    from .event import Event

    """One ``stream_claimed`` event per stream taken, in one executemany (peewee builds no SQL per row).

    A claim of a thousand streams spent most of its time building the
    bulk INSERT's SQL in Python otherwise.
    """
    d = dialect(db)
    p = db.param
    columns = ", ".join(
        f'"{Event._meta.fields[name].column_name}"'
        for name in ("ts", "stream", "type", "severity", "message", "data")
    )
    table = Event._meta.table_name
    sql = f'INSERT INTO "{table}" ({columns}) VALUES ({p}, {p}, {p}, {p}, {p}, {d.json_placeholder(p)})'
    rows = [
        (
            now_ms,
            sid,
            "stream_claimed",
            "info",
            f"{name}: owned by session {session.id} (epoch {epoch})",
            d.json_param(
                Event.data,
                {
                    "session": session.id,
                    "node": session.node,
                    "epoch": epoch,
                    "previous_session": previous[sid][0],
                    "previous_ended": previous[sid][1],
                },
            ),
        )
        for sid, epoch, name in taken
    ]
    d.executemany(db.cursor(), sql, rows)


def _fair_share(db: Any) -> int:
    return fair_share(db)


def _ended(ended: str | None, closed: Any, expired: Any, owner: int | None) -> str | None:
    if owner is None:
        return None
    if ended:
        return ended
    if closed:
        return ENDED_CLEAN
    return ENDED_EXPIRED if expired else ENDED_CRASHED


def share_out(session: Session, db: Any, owned: dict[int, int], share: int | None) -> tuple[int, ...]:
    """The streams ``session`` should release so that a short claiming session can take them."""
    share = share if share is not None else _fair_share(db)
    excess = len(owned) - share
    if excess <= 0:
        return ()
    clock = clock_ms_sql(db)
    true = "1" if dialect(db).is_sqlite else "TRUE"
    counts = db.execute_sql(
        'SELECT o."id", COUNT(s."id") FROM "session" o LEFT JOIN "stream" s '
        'ON s."owner_session_id" = o."id" AND s."removed_at" IS NULL '
        f'WHERE o."claims" = {true} AND o."closed_at" IS NULL AND o."expires_at" > {clock} GROUP BY o."id"'
    ).fetchall()
    deficit = sum(max(0, share - n) for sid, n in counts if sid != session.id)
    free = db.execute_sql(
        'SELECT COUNT(*) FROM "stream" s LEFT JOIN "session" o ON o."id" = s."owner_session_id" '
        f'WHERE s."removed_at" IS NULL AND s."desired_enabled" = {true} AND (s."owner_session_id" IS NULL '
        f'OR o."id" IS NULL OR o."closed_at" IS NOT NULL OR o."expires_at" <= {clock})'
    ).fetchone()[0]
    if deficit <= free:
        return ()
    return tuple(sorted(owned)[-min(excess, deficit - free) :])
