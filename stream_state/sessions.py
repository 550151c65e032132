"""Several managers on one database: claims and fair shares, the session list, ending a session.

``session.claim_streams()`` (this module's ``claim_streams``) takes unowned
streams and those of dead sessions, up to a fair share
(``ceil(enabled streams / live claiming sessions)`` unless given), with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL so that nodes never wait on each
other. Each claimed stream comes back with what the manager needs to start
it: the epoch, the next segment index, and the repairs done at takeover to
the dead owner's open segments (from their files, as restore does).

``session.renew()`` tells a node above its share, when another node is
short and no free stream is left for it, which streams to release.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

from .errors import NotFound
from .models import Session
from .models.session import (
    ENDED_CLEAN,
    ENDED_EXPIRED,
    Claim,
    _database,
    claim_streams,
    clock_ms_sql,
    fair_share,
    mark_crashed,
    share_out,
    sweep_dead_sessions,
)
from .timeutil import from_millis

log = logging.getLogger(__name__)

# claim_streams and the fair share live with the Session model (Session.claim_streams);
# they are named here too, beside the operator's tools.
__all__ = [
    "Claim",
    "SessionInfo",
    "claim_streams",
    "end_session",
    "fair_share",
    "list_sessions",
    "share_out",
]


def end_session(db: Any, session_id: int) -> bool:
    """Declare a session dead now (its process is known to be gone): any live session may take its streams.

    For the operator who killed a node and will not wait out its lease.
    Returns False if the session had already ended. Nothing else changes:
    the next restore or claim repairs what it left.
    """
    db = _database(db if db is not None else Session._meta.database)
    p = db.param
    row = db.execute_sql(
        f'SELECT "closed_at", "ended", "expires_at" > {clock_ms_sql(db)} FROM "session" WHERE "id" = {p}',
        (session_id,),
    ).fetchone()
    if row is None:
        raise NotFound("session", session_id)
    if row[0] is not None or not row[2]:
        return False
    mark_crashed(db, session_id)
    return True


# --- the session list ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SessionInfo:
    """One row of ``stream-state sessions``."""

    id: int
    node: str
    host: str
    pid: int
    label: str | None
    started_at: dt.datetime
    renewed_at: dt.datetime
    expires_at: dt.datetime
    lease_left: float  # seconds, by the database's clock; <= 0 once expired
    alive: bool
    ended: str | None  # clean, crashed, expired; None while alive
    closed_at: dt.datetime | None
    streams: int  # streams it owns now
    claims: bool

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("started_at", "renewed_at", "expires_at", "closed_at"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out


def list_sessions(db: Any = None, *, include_ended: bool = True, limit: int = 100) -> list[SessionInfo]:
    """Sessions newest first, each with its lease left and the streams it owns (after marking dead ones)."""
    db = _database(db if db is not None else Session._meta.database)
    sweep_dead_sessions(db)
    clock = clock_ms_sql(db)
    where = "" if include_ended else f'WHERE o."closed_at" IS NULL AND o."expires_at" > {clock} '
    rows = db.execute_sql(
        'SELECT o."id", o."node", o."host", o."pid", o."label", o."started_at", o."renewed_at", '
        f'o."expires_at", o."expires_at" - {clock}, o."closed_at", o."ended", o."claims", '
        '(SELECT COUNT(*) FROM "stream" s WHERE s."owner_session_id" = o."id" AND s."removed_at" IS NULL) '
        f'FROM "session" o {where}ORDER BY o."id" DESC LIMIT {int(limit)}'
    ).fetchall()
    out = []
    for sid, node, host, pid, label, started, renewed, expires, left, closed, ended, claims, streams in rows:
        alive = closed is None and left > 0
        out.append(
            SessionInfo(
                id=sid,
                node=node,
                host=host,
                pid=pid,
                label=label,
                started_at=from_millis(started),
                renewed_at=from_millis(renewed),
                expires_at=from_millis(expires),
                lease_left=left / 1000.0,
                alive=alive,
                ended=None if alive else (ended or (ENDED_CLEAN if closed else ENDED_EXPIRED)),
                closed_at=from_millis(closed) if closed is not None else None,
                streams=streams,
                claims=bool(claims),
            )
        )
    return out
