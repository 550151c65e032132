"""Segment runs: each stream-hour's closed segments merged into runs (migration 009).

A picture of a week of 1,000 streams (``stream_state.timeline``) needs, per
stream, which times are covered by segments of which state, and where the
holes are: from ten million segment rows, about five seconds of CPU just to
hand the index entries to Python. A stream's hour of back-to-back 1-minute
segments is one *run*: (start, end, state, segments), and the hours that
nothing changed in are read as runs instead of rows.

Rule (invariant 17): an hour's ``runs`` is either NULL (stale: readers read
its segments) or exactly what ``merge_runs`` makes of the hour's closed
segments as they are now. The triggers of migration 009 set it NULL in the
transaction of every change to a closed segment's stream, start, end or
state; ``stream_state.segment_runs.summarize_runs`` writes it only where
the hour's ``version`` is still the one it read the segments under.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import peewee as pw

from ..states import SegmentState
from ..timeutil import HOUR_MS
from .base import BaseModel, WithoutRowidOnSqlite, current_database
from .stream import Stream

# A run: (start ms, end ms, state, segments); state None is "complete", as
# history.read_states reads it (the driver then builds no string per row).
Run = tuple[int, int, "str | None", int]


class SegmentRuns(BaseModel):
    """The runs of one stream's closed segments that started in one hour. Written by triggers and
    ``summarize_runs`` only."""

    stream = pw.ForeignKeyField(Stream, on_delete="CASCADE", index=False)
    hour = pw.BigIntegerField()  # started_at / HOUR_MS as the database divides (toward zero)
    version = pw.BigIntegerField()  # bumped by every change to the hour's closed segments
    runs = pw.TextField(null=True)  # JSON, see encode_runs; NULL: stale

    class Meta:
        table_name = "segment_runs"
        primary_key = pw.CompositeKey("stream", "hour")
        model_metadata_class = WithoutRowidOnSqlite


# What summarize_runs looks for: the stale hours, oldest first.
SegmentRuns.add_index(
    SegmentRuns.index(SegmentRuns.hour, where=SegmentRuns.runs.is_null(), name="segment_runs_stale")
)


def hour_of(millis: int) -> int:
    """The hour key of a start time, as SQL's integer division computes it (toward zero)."""
    hours = abs(millis) // HOUR_MS
    return hours if millis >= 0 else -hours


def closed_segments_by_hour(stream_id: int, first_hour: int, end_hour: int) -> dict[int, list[Any]]:
    """(start, end, state) of the stream's closed segments that started in hours [first_hour, end_hour).

    By hour, each hour's rows by start, state None for "complete" (what
    ``merge_runs`` takes); one index range. Hours from 0 (1970) on, where
    the hour key is plain floor division.
    """
    db = current_database()
    p = db.param
    complete = SegmentState.COMPLETE.value
    rows = db.execute_sql(
        f'SELECT "started_at", "ended_at", NULLIF("state", \'{complete}\') FROM "recording" '
        f'WHERE "stream_id" = {p} AND "started_at" >= {p} AND "started_at" < {p} '
        'AND "ended_at" IS NOT NULL ORDER BY "started_at"',
        (stream_id, first_hour * HOUR_MS, end_hour * HOUR_MS),
    ).fetchall()
    by_hour: dict[int, list[Any]] = {}
    for row in rows:
        by_hour.setdefault(row[0] // HOUR_MS, []).append(row)
    return by_hour


def merge_runs(rows: Iterable[tuple[Any, ...]]) -> list[Run]:
    """Runs of (start, end, state, ...) rows sorted by start: each state's rows merged where they touch.

    Each state keeps its own open run, so a failed segment inside an hour of
    complete ones does not split the complete run: the union of each state's
    runs is exactly the union of its segments, which is all that coverage's
    sweep (recorded time, holes) depends on. Runs come out by start.
    """
    found: list[list[Any]] = []
    current: dict[Any, list[Any]] = {}
    for row in rows:
        start, end, state = row[0], row[1], row[2]
        run = current.get(state)
        if run is not None and start <= run[1]:
            if end > run[1]:
                run[1] = end
            run[3] += 1
            continue
        run = [start, end, state, 1]
        current[state] = run
        found.append(run)
    return [(start, end, state, count) for start, end, state, count in found]


def encode_runs(hour: int, runs: list[Run]) -> str:
    """The stored form: JSON [[start, end, state, segments], ...], times in ms from the hour's start."""
    base = hour * HOUR_MS
    return json.dumps([[s - base, e - base, state, n] for s, e, state, n in runs], separators=(",", ":"))


def decode_runs(stored: list[tuple[int, str]]) -> list[list[Run]]:
    """The runs of each (hour, encoded runs) row, times in epoch ms, in the rows' order.

    One ``json.loads`` for all of them: a week of a stream is 168 rows.
    """
    if not stored:
        return []
    decoded = json.loads("[" + ",".join(text for _hour, text in stored) + "]")
    found: list[list[Run]] = []
    for (hour, _text), runs in zip(stored, decoded, strict=True):
        base = hour * HOUR_MS
        found.append([(base + s, base + e, state, n) for s, e, state, n in runs])
    return found
