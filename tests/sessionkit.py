"""Test helpers that stand in for time and for an operator where sessions are concerned."""

from __future__ import annotations

from collections.abc import Iterable

import peewee as pw

from stream_state.models import Session
from stream_state.sessions import end_session


def expire(db: pw.Database, session: Session) -> None:
    """Move the lease into the past, as if the holder paused for longer than its ttl."""
    p = db.param
    db.execute_sql(
        f'UPDATE "session" SET "expires_at" = "expires_at" - "ttl_ms" - 1000 WHERE "id" = {p}', (session.id,)
    )


def end_sessions_of(db: pw.Database, pids: Iterable[int]) -> None:
    """Declare the sessions of killed processes dead, as the operator who killed them would.

    PostgreSQL has no pid check (nodes share no process table), so without
    this a restore waits out the lease; restore repairs only dead sessions'
    rows (invariant 15).
    """
    for session in Session.select().where(Session.pid.in_(list(pids)) & Session.closed_at.is_null()):
        end_session(db, session.id)
