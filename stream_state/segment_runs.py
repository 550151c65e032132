"""Summarizing segments into runs: the stale hours of ``segment_runs`` made current again.

``summarize_runs()`` (``Maintenance`` runs it every 10 minutes as the
``runs`` job) takes every stream-hour that the triggers of migration 009
marked stale and is older than ``settle``, reads that hour's closed segments
from the index and stores their runs (``models/runs.py``), so that
``history.read_runs`` (the timeline's reader) reads one row for the hour
instead of its sixty segments. An hour with no closed segment left
(retention deleted them) loses its row.

Invariant 17: a run is stored only where the hour's ``version`` is still the
one read before its segments. A writer that changed a segment of the hour
in the meantime (another connection, on PostgreSQL) bumped it, so the
stored runs are never older than the segments; that hour is summarized by a
later pass.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
from typing import Any

import peewee as pw

from .models.base import current_database
from .models.runs import closed_segments_by_hour, encode_runs, merge_runs
from .timeutil import HOUR_MS, now_millis, to_millis
from .validate import require_count, require_duration_ms

log = logging.getLogger(__name__)

# The last hours change with every segment a manager closes: summarizing
# them would be undone within minutes, and a reader reads them raw cheaply.
RUNS_SETTLE = dt.timedelta(hours=1)


@dataclasses.dataclass(frozen=True, slots=True)
class RunsReport:
    """What one ``summarize_runs`` did."""

    hours: int  # stream-hours whose runs were stored
    segments: int  # closed segments those runs stand for
    emptied: int  # stream-hours with no closed segment left: their rows removed
    changed: int  # stream-hours a writer changed while being summarized: left stale for the next pass


def summarize_runs(
    now: dt.datetime | None = None,
    *,
    settle: dt.timedelta = RUNS_SETTLE,
    hours_per_transaction: int = 500,
) -> RunsReport:
    """Store the runs of every stale stream-hour that ended at least ``settle`` before ``now``.

    Works in transactions of at most ``hours_per_transaction`` stream-hours
    (short write locks beside a live manager), oldest hours first, each
    stale hour once per call.
    """
    now_ms = now_millis() if now is None else to_millis(now, "now")
    settle_ms = require_duration_ms("settle", settle, positive=False)
    batch = max(1, require_count("hours_per_transaction", hours_per_transaction, maximum=1_000_000))
    # Hours h with (h + 1) * HOUR_MS <= now - settle; negative hours (times
    # before 1970, a broken clock's) are left stale: readers read them raw.
    before = (now_ms - settle_ms) // HOUR_MS
    db = current_database()
    p = db.param
    hours = segments = emptied = changed = 0
    after: tuple[int, int] = (-1, 0)  # keyset: (hour, stream) of the last stale row taken
    while True:
        with db.atomic():
            # Versions first, then the segments: a change committed between
            # the two reads has bumped the version, and the store below fails.
            stale = db.execute_sql(
                f'SELECT "hour", "stream_id", "version" FROM "segment_runs" '
                f'WHERE "runs" IS NULL AND "hour" >= 0 AND "hour" < {p} '
                f'AND ("hour" > {p} OR ("hour" = {p} AND "stream_id" > {p})) '
                f'ORDER BY "hour", "stream_id" LIMIT {p}',
                (before, after[0], after[0], after[1], batch),
            ).fetchall()
            if not stale:
                break
            after = (stale[-1][0], stale[-1][1])
            stored, emptied_now, count = _summarize(db, stale)
            hours += stored
            emptied += emptied_now
            segments += count
            changed += len(stale) - stored - emptied_now
    if hours or emptied:
        log.info("summarized %d stream-hours (%d segments) into runs; %d emptied", hours, segments, emptied)
    return RunsReport(hours, segments, emptied, changed)


def _summarize(db: pw.Database, stale: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """Store the runs of the stale (hour, stream, version) rows: (hours stored, hours emptied, segments)."""
    p = db.param
    by_stream: dict[int, dict[int, int]] = {}
    for hour, stream_id, version in stale:
        by_stream.setdefault(stream_id, {})[hour] = version
    updates: list[tuple[tuple[str, int, int, int], int]] = []  # (statement parameters, segments)
    removals: list[tuple[int, int, int]] = []
    for stream_id, versions in by_stream.items():
        found: dict[int, list[Any]] = {}
        # One index range per run of consecutive stale hours.
        ordered = sorted(versions)
        for _, group in itertools.groupby(enumerate(ordered), key=lambda item: item[1] - item[0]):
            span = [hour for _, hour in group]
            found |= closed_segments_by_hour(stream_id, span[0], span[-1] + 1)
        for hour in versions:
            rows = found.get(hour, [])
            if rows:
                text = encode_runs(hour, merge_runs(rows))
                updates.append(((text, stream_id, hour, versions[hour]), len(rows)))
            else:
                removals.append((stream_id, hour, versions[hour]))
    stored = segments = emptied = 0
    # Row by row: each store must see whether its version still holds.
    for params, count in updates:
        cursor = db.execute_sql(
            f'UPDATE "segment_runs" SET "runs" = {p} WHERE "stream_id" = {p} AND "hour" = {p} '
            f'AND "version" = {p}',
            params,
        )
        if cursor.rowcount:
            stored += 1
            segments += count
    for key in removals:
        cursor = db.execute_sql(
            f'DELETE FROM "segment_runs" WHERE "stream_id" = {p} AND "hour" = {p} AND "version" = {p}', key
        )
        emptied += cursor.rowcount
    return stored, emptied, segments
