"""The numbered rules of docs/invariants.md, and a checker for those the database can show broken.

``INVARIANTS`` holds each rule's number and short title (a test keeps it and
the document in step). ``check_invariants()`` looks for rows that break the
rules checkable from the database alone (2, 3, 4, 5, 8, 9, 10, 12, 14) and
returns one ``InvariantViolation`` per broken rule and kind, with a count
and a few example rows; ``integrity_check()`` and ``stream-state
integrity`` report them by number. It only reads.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import peewee as pw

from .backends import current_database, dialect
from .models import Recording, Session, Stream
from .models.runs import closed_segments_by_hour, decode_runs, merge_runs
from .states import SegmentState
from .timeutil import HOUR_MS, from_millis

INVARIANTS: dict[int, str] = {
    1: "A segment's row is committed before its file exists.",
    2: "No segment index and no path is used twice.",
    3: "`next_segment_index` is greater than every index the stream has used, and only grows.",
    4: "A recording id is never handed out twice.",
    5: "A row is open (`ended_at` NULL) exactly while its state is `recording`.",
    6: "A file is unlinked only after its row says `deleting` (committed), "
    "and a row is removed only from `deleting`.",
    7: "`deleting` and `archiving` rows are finished by the next restore.",
    8: "A closed row has an end no earlier than its start and a size; a `complete` row was finalised.",
    9: "An `archiving` row names its move before the file moves.",
    10: "Every change of a segment's state goes through the gate.",
    11: "Every repair leaves an event.",
    12: "A removed stream has no open segment.",
    13: "A file under a storage root has a row, and a settled row has its file.",
    14: "A stream has one owner session, and every change of owner bumps its epoch.",
    15: "A manager write commits only while its session is alive and owns the stream at its epoch.",
    16: "A segment the package names never takes the name of a file that is already there.",
    17: "An hour's stored segment runs are stale or exactly the runs of its closed segments.",
}

# How many example rows a violation carries: enough to start looking, not a dump.
EXAMPLES = 5


@dataclass(frozen=True)
class InvariantViolation:
    """Rows that break one rule in one way."""

    invariant: int
    rule: str  # the rule's title, INVARIANTS[invariant]
    problem: str  # what was found, e.g. "index not below next_segment_index"
    count: int
    examples: tuple[str, ...]  # up to EXAMPLES rows, e.g. "recording 17 (cam-1 #4, /media/...)"

    def as_dict(self) -> dict[str, Any]:
        return {
            "invariant": self.invariant,
            "rule": self.rule,
            "problem": self.problem,
            "count": self.count,
            "examples": list(self.examples),
        }

    def __str__(self) -> str:
        shown = "; ".join(self.examples)
        more = f" (and {self.count - len(self.examples)} more)" if self.count > len(self.examples) else ""
        return f"invariant {self.invariant}: {self.problem}: {self.count} found, e.g. {shown}{more}"


def _tuples(query: pw.ModelSelect[Any]) -> Iterable[tuple[Any, ...]]:
    return cast(Iterable[tuple[Any, ...]], query.tuples())


def _segments(where: pw.Expression) -> tuple[int, list[str]]:
    """Count and describe the recordings matching ``where``."""
    query = Recording.select().join(Stream).where(where)
    count = query.count()
    rows = _tuples(
        query.select(Recording.id, Stream.name, Recording.segment_index, Recording.state, Recording.path)
        .order_by(Recording.id)
        .limit(EXAMPLES)
    )
    return count, [
        f"recording {i} ({name} #{index}, {state}, {path})" for i, name, index, state, path in rows
    ]


def _duplicates(columns: Iterable[pw.Field], label: Callable[[tuple], str]) -> tuple[int, list[str]]:
    columns = list(columns)
    query = (
        Recording.select(*columns, pw.fn.COUNT(Recording.id))
        .group_by(*columns)
        .having(pw.fn.COUNT(Recording.id) > 1)
    )
    count = query.count()
    return count, [label(row) for row in _tuples(query.order_by(*columns).limit(EXAMPLES))]


def _rule_2() -> Iterable[tuple[str, int, list[str]]]:
    yield (
        "two rows of a stream with the same segment index",
        *_duplicates(
            (Recording.stream, Recording.segment_index),
            lambda row: f"stream {row[0]} index {row[1]}: {row[2]} rows",
        ),
    )
    yield (
        "two rows with the same path",
        *_duplicates((Recording.path,), lambda row: f"{row[0]}: {row[1]} rows"),
    )


def _rule_3() -> Iterable[tuple[str, int, list[str]]]:
    yield (
        "a segment index not below its stream's next_segment_index",
        *_segments(Recording.segment_index >= Stream.next_segment_index),
    )


def _rule_4() -> Iterable[tuple[str, int, list[str]]]:
    db = current_database()
    top = Recording.select(pw.fn.MAX(Recording.id)).scalar()
    if top is None:
        return
    table = Recording._meta.table_name
    if dialect(db).is_sqlite:
        row = db.execute_sql("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        counter = None if row is None else row[0]
        where = "sqlite_sequence"
    else:
        column = Recording.id.column_name
        (sequence,) = db.execute_sql("SELECT pg_get_serial_sequence(%s, %s)", (table, column)).fetchone()
        if sequence is None:
            return
        last, called = db.execute_sql(f"SELECT last_value, is_called FROM {sequence}").fetchone()
        counter = last if called else last - 1
        where = sequence
    if counter is None or counter < top:
        yield (
            "the id counter is behind the largest recording id (a deleted id could come back)",
            1,
            [f"{where} at {counter}, largest id {top}"],
        )


def _rule_5() -> Iterable[tuple[str, int, list[str]]]:
    recording = SegmentState.RECORDING.value
    yield (
        "an open row (no end) that is not recording",
        *_segments(Recording.ended_at.is_null() & (Recording.state != recording)),
    )
    yield (
        "a recording row with an end",
        *_segments(Recording.ended_at.is_null(False) & (Recording.state == recording)),
    )


def _rule_8() -> Iterable[tuple[str, int, list[str]]]:
    yield ("an end before the start", *_segments(Recording.ended_at < Recording.started_at))
    yield ("a negative size", *_segments(Recording.size_bytes < 0))
    yield (
        "a complete row its muxer did not finalise",
        *_segments((Recording.state == SegmentState.COMPLETE.value) & (Recording.finalized == False)),  # noqa: E712
    )


def _rule_9() -> Iterable[tuple[str, int, list[str]]]:
    rows = _tuples(
        Recording.select(Recording.id, Recording.path, Recording.metadata)
        .where(Recording.state == SegmentState.ARCHIVING.value)
        .order_by(Recording.id)
    )
    broken = []
    for rec_id, path, metadata in rows:
        plan = (metadata or {}).get("archive") if isinstance(metadata, dict) else None
        lacking = [
            k for k in ("from", "to", "previous_state") if not isinstance(plan, dict) or not plan.get(k)
        ]
        if lacking:
            broken.append(f"recording {rec_id} ({path}): no {', '.join(lacking)} in metadata['archive']")
    yield ("an archiving row without its move's plan", len(broken), broken[:EXAMPLES])


def _rule_10() -> Iterable[tuple[str, int, list[str]]]:
    yield (
        "a state the transition map does not know",
        *_segments(Recording.state.not_in([s.value for s in SegmentState])),
    )


def _rule_12() -> Iterable[tuple[str, int, list[str]]]:
    yield (
        "an open segment of a removed stream",
        *_segments(Recording.ended_at.is_null() & Stream.removed_at.is_null(False)),
    )


def _rule_14() -> Iterable[tuple[str, int, list[str]]]:
    owners = list(
        _tuples(
            Stream.select(Stream.id, Stream.name, Stream.owner_session_id)
            .join(Session, pw.JOIN.LEFT_OUTER, on=(Session.id == Stream.owner_session_id))
            .where(Stream.owner_session_id.is_null(False) & Session.id.is_null())
            .order_by(Stream.id)
        )
    )
    yield (
        "a stream owned by a session that has no row",
        len(owners),
        [f"stream {sid} ({name}): owner session {owner}" for sid, name, owner in owners[:EXAMPLES]],
    )
    yield (
        "a segment begun at an epoch its stream has not reached",
        *_segments(Recording.session_epoch > Stream.owner_epoch),
    )


def _rule_17() -> Iterable[tuple[str, int, list[str]]]:
    db = current_database()
    broken: list[str] = []
    stored = db.execute_sql(
        'SELECT "stream_id", "hour", "runs" FROM "segment_runs" WHERE "runs" IS NOT NULL '
        'ORDER BY "stream_id", "hour"'
    ).fetchall()
    for stream_id, hours in itertools.groupby(stored, key=lambda row: row[0]):
        summarized = [(hour, runs) for _, hour, runs in hours]
        # The stream's closed segments of those hours, one index range for all.
        by_hour = closed_segments_by_hour(stream_id, summarized[0][0], summarized[-1][0] + 1)
        for (hour, _), runs in zip(summarized, decode_runs(summarized), strict=True):
            if runs != merge_runs(by_hour.get(hour, [])):
                broken.append(f"stream {stream_id}, hour {from_millis(hour * HOUR_MS).isoformat()}")
    yield "stored runs that differ from the hour's segments", len(broken), broken[:EXAMPLES]


CHECKS: dict[int, Callable[[], Iterable[tuple[str, int, list[str]]]]] = {
    2: _rule_2,
    3: _rule_3,
    4: _rule_4,
    5: _rule_5,
    8: _rule_8,
    9: _rule_9,
    10: _rule_10,
    12: _rule_12,
    14: _rule_14,
    17: _rule_17,
}


def check_invariants() -> tuple[InvariantViolation, ...]:
    """Every way the database breaks a checkable rule; empty when all hold. Reads only."""
    # Each rule is one query over a consistent snapshot; no transaction
    # around them all, which on SQLite would take the write lock from the recorder.
    found = []
    for number, check in CHECKS.items():
        for problem, count, examples in check():
            if count:
                found.append(InvariantViolation(number, INVARIANTS[number], problem, count, tuple(examples)))
    return tuple(found)
