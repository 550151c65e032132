"""The segment-state gate: one compare-and-set path, and nothing writes a state around it."""

from __future__ import annotations

import ast
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee as pw
import pytest
from playhouse.test_utils import count_queries

import stream_state
from stream_state import Event, InvalidTransition, NotFound, Recording, SegmentState, ValidationError
from stream_state.errors import StreamStateError
from stream_state.models import gate
from stream_state.models.session import current_session, ownership_guard

from .factories import StreamFactory

T0 = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)
PACKAGE = Path(stream_state.__file__).parent


def segments(n: int, stream=None, *, close: bool = True) -> list[Recording]:
    stream = stream or StreamFactory()
    made = []
    for i in range(n):
        rec = stream.begin_segment(f"/media/{stream.name}/{i}.mp4", started_at=T0 + dt.timedelta(minutes=i))
        if close:
            rec.complete_segment(ended_at=T0 + dt.timedelta(minutes=i, seconds=59), size_bytes=100 + i)
        made.append(rec)
    return made


def state_of(rec_id: int) -> SegmentState | None:
    return Recording.select(Recording.state).where(Recording.id == rec_id).scalar()


# --- the compare-and-set ------------------------------------------------------------------------


def test_a_transition_moves_only_rows_in_the_from_state_and_says_which(db):
    a, b, c = segments(3)
    Recording.transition(b.id, SegmentState.COMPLETE, SegmentState.MISSING)
    moved = Recording.transition([a.id, b.id, c.id], SegmentState.COMPLETE, SegmentState.DELETING)
    assert moved.changed == (a.id, c.id) and moved.refused == (b.id,) and moved
    assert [state_of(r.id) for r in (a, b, c)] == ["deleting", "missing", "deleting"]
    again = Recording.transition(a.id, SegmentState.COMPLETE, SegmentState.DELETING)
    assert not again and again.refused == (a.id,)


def test_several_from_states_in_one_statement(db):
    a, b = segments(2)
    Recording.transition(b.id, SegmentState.COMPLETE, SegmentState.MISSING)
    with count_queries() as counter:
        moved = Recording.transition([a.id, b.id], ["complete", "missing"], SegmentState.DELETING)
    assert counter.count == 1 and moved.changed == (a.id, b.id)


def test_a_move_the_map_forbids_is_refused_before_anything_is_written(db):
    (rec,) = segments(1)
    with count_queries() as counter, pytest.raises(InvalidTransition) as info:
        Recording.transition(rec.id, SegmentState.COMPLETE, SegmentState.RECORDING)
    assert counter.count == 0
    assert (info.value.current, info.value.requested) == ("complete", "recording")
    # one forbidden pair among several from-states refuses the whole call
    with pytest.raises(InvalidTransition):
        Recording.transition(rec.id, ["complete", "deleting"], SegmentState.MISSING)
    assert state_of(rec.id) == "complete"


def test_strict_names_the_current_state_or_the_missing_row_and_writes_nothing(db):
    a, b = segments(2)
    Recording.transition(b.id, SegmentState.COMPLETE, SegmentState.MISSING)
    with pytest.raises(InvalidTransition) as info:
        Recording.transition([a.id, b.id], SegmentState.COMPLETE, SegmentState.DELETING, strict=True)
    assert info.value.current == "missing" and f"recording {b.id}" in str(info.value)
    assert state_of(a.id) == "complete", "a refused strict call leaves every row as it was"
    with pytest.raises(NotFound):
        Recording.transition(a.id + 1000, SegmentState.COMPLETE, SegmentState.DELETING, strict=True)


def test_values_ride_in_the_same_statement_and_the_state_is_not_one_of_them(db):
    (rec,) = segments(1, close=False)
    ended = T0 + dt.timedelta(seconds=30)
    with count_queries() as counter:
        Recording.transition(
            rec.id,
            SegmentState.RECORDING,
            SegmentState.INTERRUPTED,
            values={"ended_at": ended, "size_bytes": 7, "metadata": {"why": "test", "n": [1, 2]}},
        )
    assert counter.count == 1
    row = Recording.get_by_id(rec.id)
    assert (row.state, row.ended_at, row.size_bytes, row.metadata) == (
        "interrupted",
        ended,
        7,
        {"why": "test", "n": [1, 2]},
    )
    with pytest.raises(ValidationError) as info:
        Recording.transition(rec.id, "interrupted", "deleting", values={"state": "complete"})
    assert info.value.field == "values"


def test_bad_ids_and_states_are_validation_errors(db):
    with pytest.raises(ValidationError):
        Recording.transition("7", "complete", "deleting")
    with pytest.raises(ValidationError):
        Recording.transition([1, True], "complete", "deleting")
    with pytest.raises(ValidationError):
        Recording.transition(1, "finished", "deleting")
    with pytest.raises(ValidationError):
        Recording.transition(1, [], "deleting")
    assert Recording.transition([], "complete", "deleting").changed == ()


def test_the_event_is_written_with_the_change_and_only_when_something_changed(db):
    (rec,) = segments(1)

    def note(moved):
        return [Event.build("gate_test", rec.stream_id, data={"ids": list(moved.changed)})]

    Recording.transition(rec.id, "complete", "missing", event=note)
    Recording.transition(rec.id, "complete", "missing", event=note)  # refused: no second event
    assert [e.data for e in Event.select().where(Event.type == "gate_test")] == [{"ids": [rec.id]}]

    def broken(moved):
        raise RuntimeError("event could not be built")

    with pytest.raises(RuntimeError):
        Recording.transition(rec.id, "missing", "deleting", event=broken)
    assert state_of(rec.id) == "missing", "the change and its event commit together or not at all"


def test_batched_events_are_written_together_at_the_end_with_their_changes(db):
    a, b, c = segments(3)

    def note(moved):
        return [Event.build("gate_test", a.stream_id, data={"id": moved.changed[0]})]

    with count_queries() as counter, gate.batched_events(db):
        for rec in (a, b):
            Recording.transition(rec.id, "complete", "missing", event=note)
        Recording.transition(a.id, "complete", "missing", event=note)  # refused: no event
        assert Event.select().where(Event.type == "gate_test").count() == 0, "not yet written"
    inserts = [q for q in counter.get_queries() if q.msg[0].startswith('INSERT INTO "event"')]
    assert len(inserts) == 1
    assert [e.data["id"] for e in Event.select().where(Event.type == "gate_test").order_by(Event.id)] == [
        a.id,
        b.id,
    ]
    with pytest.raises(RuntimeError), gate.batched_events(db):
        Recording.transition(c.id, "complete", "missing", event=note)
        raise RuntimeError("the caller fails before the batch ends")
    assert state_of(c.id) == "complete", "the changes and their events commit together or not at all"
    assert Event.select().where(Event.type == "gate_test").count() == 2


def test_a_row_is_removed_only_from_deleting(db):
    a, b = segments(2)
    Recording.transition(a.id, "complete", "deleting")
    gone = Recording.finish_delete([a.id, b.id])
    assert gone.changed == (a.id,) and gone.refused == (b.id,) and gone.to is None
    assert state_of(a.id) is None and state_of(b.id) == "complete"
    with pytest.raises(InvalidTransition):
        gate.change(Recording, b.id, SegmentState.COMPLETE, None)
    with pytest.raises(InvalidTransition) as info:
        Recording.finish_delete(b.id, strict=True)
    assert info.value.current == "complete" and info.value.requested == "removed"


def test_a_row_starts_only_in_a_birth_state(db):
    stream = StreamFactory()
    with pytest.raises(InvalidTransition):
        Recording.create_segment(
            SegmentState.COMPLETE, stream=stream, path="/x.mp4", segment_index=0, started_at=T0, ended_at=T0
        )
    assert Recording.select().count() == 0


# --- the drop-in for ownership (the sessions issue) -----------------------------------------------


class NotThisStream(StreamStateError):
    pass


@dataclass(frozen=True)
class StreamGuard:
    """A stand-in for the owner check: only rows of one stream may change."""

    stream_id: int

    def where(self, db: pw.Database) -> tuple[str, Sequence[Any]]:
        return f'"stream_id" = {db.param}', (self.stream_id,)

    def why_refused(self, ids: Sequence[int]) -> StreamStateError | None:
        return NotThisStream(f"recordings {list(ids)} are not of stream {self.stream_id}")


def test_a_guard_adds_its_condition_to_the_same_statement_and_its_refusal_raises(db):
    mine, theirs = segments(1)[0], segments(1)[0]
    guard = StreamGuard(mine.stream_id)
    with count_queries() as counter:
        moved = Recording.transition([mine.id, theirs.id], "complete", "deleting", guard=guard)
    assert counter.count == 1 and moved.changed == (mine.id,) and moved.refused == (theirs.id,)
    with pytest.raises(NotThisStream):
        Recording.transition(theirs.id, "complete", "deleting", guard=guard, strict=True)
    assert state_of(theirs.id) == "complete"
    # a wrong state is still reported as such, not blamed on the guard
    with pytest.raises(InvalidTransition):
        Recording.transition(mine.id, "complete", "missing", guard=guard, strict=True)


# --- the batched form: many rows, each with its own values, one statement -------------------------


@dataclass
class EpochGuard:
    """A per-row guard for the tests: each row names the stream it must belong to."""

    streams: dict[int, int]  # recording id -> stream id
    columns: tuple[tuple[str, str], ...] = (("stream", "bigint"),)

    def row_values(self, row_id: int) -> tuple[Any, ...]:
        return (self.streams[row_id],)

    def where_each(self, db: pw.Database, row: Any) -> tuple[str, Sequence[Any]]:
        return f'"recording"."stream_id" = {row("stream")} AND "recording"."size_bytes" >= {db.param}', (0,)

    def why_refused(self, ids: Sequence[int]) -> StreamStateError | None:
        return None


def test_transition_each_sets_each_rows_own_values_in_one_statement(db):
    a, b, c = segments(3, close=False)
    failed_at = T0 + dt.timedelta(hours=1)
    Recording.transition(b.id, SegmentState.RECORDING, SegmentState.FAILED, values={"ended_at": failed_at})
    ends = {r.id: T0 + dt.timedelta(minutes=10 + i) for i, r in enumerate((a, b, c))}
    with count_queries() as counter:
        moved = Recording.transition_each(
            [(r.id, (ends[r.id], 10 + i, True)) for i, r in enumerate((a, b, c))],
            ("ended_at", "size_bytes", "finalized"),
            SegmentState.RECORDING,
            SegmentState.COMPLETE,
        )
    assert counter.count == 1
    assert moved.changed == (a.id, c.id) and moved.refused == (b.id,)
    got = {r.id: (r.state, r.ended_at, r.size_bytes, r.finalized) for r in Recording.select()}
    assert got[a.id] == ("complete", ends[a.id], 10, True) and got[c.id] == ("complete", ends[c.id], 12, True)
    assert got[b.id] == ("failed", failed_at, 0, None)  # refused: untouched


def test_transition_each_checks_the_map_the_columns_and_each_row_once(db):
    (rec,) = segments(1)
    with count_queries() as counter, pytest.raises(InvalidTransition):
        Recording.transition_each(
            [(rec.id, (T0,))], ("ended_at",), SegmentState.COMPLETE, SegmentState.RECORDING
        )
    assert counter.count == 0
    for columns, values, field in (
        (("state",), ("failed",), "columns"),
        (("metadata",), ({"a": 1},), "columns"),  # JSON: one row at a time
        (("size_bytes",), (1, 2), "rows"),
    ):
        with pytest.raises(ValidationError) as info:
            Recording.transition_each([(rec.id, values)], columns, "complete", "missing")
        assert info.value.field == field
    with pytest.raises(ValidationError):
        Recording.transition_each([(rec.id, (1,)), (rec.id, (2,))], ("size_bytes",), "complete", "missing")
    assert Recording.transition_each([], ("size_bytes",), "complete", "missing").changed == ()
    assert state_of(rec.id) == "complete"


def test_transition_each_takes_a_per_row_guard_in_the_same_statement(db):
    mine, theirs = segments(1, close=False)[0], segments(1, close=False)[0]
    guard = EpochGuard({mine.id: mine.stream_id, theirs.id: mine.stream_id})  # theirs is not of that stream
    with count_queries() as counter:
        moved = Recording.transition_each(
            [(mine.id, (T0 + dt.timedelta(hours=1),)), (theirs.id, (T0 + dt.timedelta(hours=1),))],
            ("ended_at",),
            "recording",
            "interrupted",
            guard=guard,
        )
    assert counter.count == 1 and moved.changed == (mine.id,) and moved.refused == (theirs.id,)
    assert (state_of(mine.id), state_of(theirs.id)) == ("interrupted", "recording")


# --- the hot path stays one prepared statement ----------------------------------------------------


def test_complete_segment_runs_exactly_the_gates_statement(db):
    (rec,) = segments(1, close=False)
    with count_queries() as counter:
        rec.complete_segment(ended_at=T0 + dt.timedelta(seconds=10), size_bytes=5)
    # ... with the ownership guard of sessions (issue 14) in the same statement
    guard, _ = ownership_guard(current_session(db), rec.stream_id, 1).where(db)
    expected = gate.statement(Recording, db, SegmentState.COMPLETE, ("ended_at", "size_bytes"))
    assert [q.msg[0] for q in counter.get_queries()] == [f"{expected} AND ({guard})"]
    assert expected.startswith('UPDATE "recording" SET "state" = ')


# --- nothing writes a segment's state around the gate ---------------------------------------------

# Calls that write the columns given to them.
_WRITERS = {
    "update",
    "create",
    "insert",
    "insert_many",
    "replace",
    "replace_many",
    "bulk_create",
    "bulk_update",
    "get_or_create",
    "set_by_id",
}
# The recording table and its state column, spelled out or interpolated in
# an f-string from something named after them ({recording}, {col(Recording, "state")}).
_TABLE = r'(?:"?recording"?(?!\w)|\{[^{}]*\brecording\b[^{}]*\})'
_STATE = r'(?:"?\bstate\b"?|\{[^{}]*\bstate\b[^{}]*\})'
_UPDATE_SQL = re.compile(rf"\bUPDATE\s+{_TABLE}\s+SET\b.*?{_STATE}\s*=", re.I | re.S)
_INSERT_SQL = re.compile(rf"\bINSERT\s+INTO\s+{_TABLE}\s*\((?P<columns>[^)]*)\)(?P<rest>.*)", re.I | re.S)
# Only the gate's own module writes a state; the hot-path INSERT of
# begin_segment may spell the one birth state of a new segment.
_GATE = PACKAGE / "models" / "gate.py"
# Event.record saves an Event; nothing else may call save() (it writes every dirty field).
_SAVE_ALLOWED = {("models/event.py", "_record")}  # Event.record writes through _record


def _is_state_key(node: ast.AST | None) -> bool:
    if isinstance(node, ast.Constant):
        return node.value == "state"
    return isinstance(node, ast.Attribute) and node.attr == "state"


def _sql_writes_state(text: str) -> bool:
    if _UPDATE_SQL.search(text):
        return True
    insert = _INSERT_SQL.search(text)
    if insert and re.search(_STATE, insert.group("columns"), re.I):
        # the birth of an open segment spells its one allowed state
        return not re.search(r"'(recording|\{[^{}]*RECORDING[^{}]*\})'", insert.group("rest"))
    return False


def state_writes(source: str, filename: str) -> list[str]:
    """Where ``source`` writes a segment's state (file:line what)."""
    found = []
    tree = ast.parse(source, filename)
    functions: dict[ast.AST, str] = {}
    in_fstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                functions.setdefault(inner, node.name)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name in _WRITERS:
                if any(k.arg == "state" for k in node.keywords):
                    found.append(f"{where} {name}(state=...)")
                for arg in [*node.args, *(k.value for k in node.keywords if k.arg is None)]:
                    for inner in ast.walk(arg):  # a dict, or dicts in a list of rows
                        if isinstance(inner, ast.Dict) and any(_is_state_key(k) for k in inner.keys):
                            found.append(f"{where} {name}({{state: ...}})")
            elif name == "save" and (filename, functions.get(node)) not in _SAVE_ALLOWED:
                found.append(f"{where} save() writes whatever is dirty, the state included")
        elif isinstance(node, ast.JoinedStr):
            # an f-string is read whole, each placeholder as {its expression}
            text = "".join(
                v.value if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}"  # type: ignore[attr-defined]
                for v in node.values
            )
            in_fstrings.update(id(v) for v in node.values)
            if _sql_writes_state(text):
                found.append(f"{where} SQL writes the state: {text[:60]!r}")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in in_fstrings
            and _sql_writes_state(node.value)
        ):
            found.append(f"{where} SQL writes the state: {node.value[:60]!r}")
    return found


def test_no_module_writes_a_segment_state_outside_the_gate():
    offenders = []
    scanned = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == _GATE:
            continue
        scanned += 1
        offenders += state_writes(path.read_text(), str(path.relative_to(PACKAGE)))
    assert scanned > 20
    assert offenders == [], "segment states are written only by Recording.transition (models/gate.py)"


@pytest.mark.parametrize(
    "snippet",
    [
        "Recording.update(state=SegmentState.MISSING).where(Recording.id == 1).execute()",
        "cls.update({Recording.state: 'failed'}).execute()",
        "Recording.update(**{'state': 'failed'}).execute()",
        "Recording.create(stream=1, path='p', state=SegmentState.RECOVERED)",
        "Recording.insert_many([{'state': 'complete'}]).execute()",
        "row.state = 'failed'\nrow.save()",
        'db.execute_sql(\'UPDATE "recording" SET "ended_at" = ?, "state" = ? WHERE id = ?\')',
        "db.execute_sql(f'UPDATE recording SET state = {p} WHERE id = {p}')",
        "db.execute_sql('INSERT INTO recording (path, state) VALUES (?, ?)')",
        'sql = f"UPDATE {recording} SET {state} = {p}, {ended_at} = {p} WHERE {recording_id} = {p}"',
        "sql = f'UPDATE {Recording._meta.table_name} SET {col(Recording, \"state\")} = {p}'",
        "sql = f'INSERT INTO {recording} ({state}, {path}) VALUES ({p}, {p})'",
    ],
)
def test_the_scan_catches_each_way_of_writing_a_state(snippet):
    assert state_writes(snippet, "snippet.py"), snippet


def test_the_scan_lets_other_tables_and_the_birth_of_a_segment_pass():
    harmless = [
        'db.execute_sql(\'UPDATE "recording_usage" SET "state" = ?\')',
        "Stream.update(status='running').execute()",
        'db.execute_sql(\'INSERT INTO "recording" ("path", "state") VALUES (?, \\\'recording\\\')\')',
        "SegmentSnapshot(state=SegmentState.RECORDING)",
        'sql = f"UPDATE {stream} SET {next_index} = {next_index} + 1 WHERE {stream_id} = {p}"',
        "sql = f\"INSERT INTO {recording} ({inserted}) VALUES ({p}, 0, '{SegmentState.RECORDING.value}')\"",
    ]
    for snippet in harmless:
        assert state_writes(snippet, "snippet.py") == [], snippet
    # and the gate itself is what the scan would catch if it were anywhere else
    assert state_writes(_GATE.read_text(), "gate.py")
