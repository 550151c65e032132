"""The one gate every change of a segment's state passes through (invariant 10).

A segment's row moves between states (``recording`` -> ``complete``,
``complete`` -> ``deleting`` -> removed, ...) only here. Each move is a
compare-and-set: one ``UPDATE ... SET state = to WHERE id IN (...) AND state
IN (from...)`` (or ``DELETE`` for the end of a ``deleting`` row), after the
transition map (``transitions.SEGMENT_TRANSITIONS``) allowed every
``from -> to`` pair. A row another process moved in the meantime simply does
not match; the result says which ids changed and which were refused, and
``strict=True`` turns a refusal into the error that explains it. The events
that go with a change are written in the same transaction, only for rows
that really changed.

``change_each`` is the batched form for rows that each set their own
values (a manager's tick closes a tenth of its segments at once): one
``UPDATE ... FROM`` a table of the rows (``unnest`` of arrays on PostgreSQL,
``VALUES`` on SQLite), the same compare-and-set, with a per-row guard
(``EachGuard``) for each segment's own stream epoch.

Extra conditions drop in as a ``Guard``: a SQL fragment ANDed into the same
statement (so the check and the write cannot be separated by another
writer) plus the error to raise for rows it refused. The sessions issue's
ownership check (owner session + fencing epoch) is meant to be one.

The statements are spelled once per shape (backend placeholder, target
state, columns set, number of ids) from the model's ``_meta`` and cached, not
built by peewee per call: ``complete_segment`` runs through here for every
segment file of every stream (bench/segments.py measures it).
``tests/test_gate.py`` fails if any module writes a segment's state
anywhere else.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, cast

import peewee as pw

from ..errors import InvalidTransition, NotFound, StreamStateError, ValidationError
from ..states import SegmentState
from ..transitions import SEGMENT_INITIAL, check_segment_removal, check_segment_transition
from .statements import prepared


@dataclass(frozen=True)
class Transition:
    """What one pass through the gate did.

    ``to`` is None when the rows were removed (the end of a ``deleting`` row).
    """

    from_: tuple[SegmentState, ...]
    to: SegmentState | None
    requested: tuple[int, ...]
    changed: tuple[int, ...]

    @property
    def refused(self) -> tuple[int, ...]:
        """The ids asked for that did not change (not in a ``from_`` state, gone, or refused by a guard)."""
        changed = set(self.changed)
        return tuple(i for i in self.requested if i not in changed)

    def __bool__(self) -> bool:
        return bool(self.changed)


class Guard(Protocol):
    """An extra condition a row must meet for the gate to change it.

    ``where(db)`` returns a SQL fragment over the recording table in
    ``db``'s placeholder style and its parameters (ANDed into the gate's
    statement); ``why_refused(ids)`` says why rows that exist and were in a
    ``from_`` state were still refused (None when the guard did not refuse
    them), for ``strict`` calls to raise.
    """

    def where(self, db: pw.Database) -> tuple[str, Sequence[Any]]: ...

    def why_refused(self, ids: Sequence[int]) -> StreamStateError | None: ...


EventsFor = Callable[[Transition], Iterable[pw.Model]]


def _ids(ids: int | Iterable[int]) -> tuple[int, ...]:
    if isinstance(ids, int) and not isinstance(ids, bool):
        return (ids,)
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise ValidationError("ids", ids, "expected a recording id or an iterable of ids")
    given = list(ids)
    for value in given:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValidationError("ids", value, "expected integer recording ids")
    return tuple(dict.fromkeys(given))  # in order, once each


def _states(states: SegmentState | str | Iterable[SegmentState | str]) -> tuple[SegmentState, ...]:
    if type(states) is SegmentState:  # the common case, cheaply
        return (states,)
    if isinstance(states, str):
        states = (states,)
    try:
        found = tuple(dict.fromkeys(SegmentState(s) for s in states))
    except (TypeError, ValueError) as exc:
        raise ValidationError("from_", states, f"expected segment states ({exc})") from exc
    if not found:
        raise ValidationError("from_", states, "give at least one state to move from")
    return found


# The stored text of each state, looked up rather than read through the enum's descriptor.
_VALUE = {state: state.value for state in SegmentState}


def _pk(model: type[pw.Model]) -> pw.Field:
    return cast(pw.Field, model._meta.primary_key)


def _quote(db: pw.Database, name: str) -> str:
    return name.join(db.quote)


@dataclass(frozen=True)
class _Shape:
    """One shape of change: its statement, and the fields whose values it takes (JSON or not)."""

    sql: str
    fields: tuple[tuple[pw.Field, bool], ...]


@lru_cache(maxsize=256)
def _shape(
    model: type[pw.Model],
    param: str,
    quote: str,
    removing: bool,
    columns: tuple[str, ...],
    n_ids: int,
    n_from: int,
) -> _Shape:
    fields = tuple((f := model._meta.fields[c], isinstance(f, pw.JSONField)) for c in columns)
    return _Shape(_spelled(model, param, quote, removing, columns, n_ids, n_from), fields)


def _spelled(
    model: type[pw.Model],
    param: str,
    quote: str,
    removing: bool,
    columns: tuple[str, ...],
    n_ids: int,
    n_from: int,
) -> str:
    """The statement of one shape: ids and states as parameters, the guard appended by the caller."""
    meta = model._meta

    def q(name: str) -> str:
        return name.join(quote)

    table = q(meta.table_name)
    id_column = q(_pk(model).column_name)
    state_column = q(meta.fields["state"].column_name)
    ids = f"{id_column} = {param}" if n_ids == 1 else f"{id_column} IN ({', '.join([param] * n_ids)})"
    states = (
        f"{state_column} = {param}" if n_from == 1 else f"{state_column} IN ({', '.join([param] * n_from)})"
    )
    if removing:
        return f"DELETE FROM {table} WHERE {ids} AND {states}"
    sets = ", ".join(f"{q(meta.fields[c].column_name)} = {param}" for c in ("state", *columns))
    return f"UPDATE {table} SET {sets} WHERE {ids} AND {states}"


def statement(
    model: type[pw.Model],
    db: pw.Database,
    to: SegmentState | None,
    columns: Sequence[str] = (),
    n_ids: int = 1,
    n_from: int = 1,
) -> str:
    """The SQL text the gate runs for one shape of change (the benchmark's baseline runs it too)."""
    return _spelled(model, db.param, db.quote, to is None, tuple(columns), n_ids, n_from)


def change(
    model: type[pw.Model],
    ids: int | Iterable[int],
    from_: SegmentState | str | Iterable[SegmentState | str],
    to: SegmentState | str | None,
    *,
    values: Mapping[str, Any] | None = None,
    event: EventsFor | None = None,
    guard: Guard | None = None,
    strict: bool = False,
) -> Transition:
    """Move the rows ``ids`` that are in a ``from_`` state to ``to`` (None: remove them).

    ``values`` sets other columns in the same statement (by field name).
    ``event(transition)`` returns unsaved events to write, in the same
    transaction, when at least one row changed. With ``strict`` a row that
    did not change raises (``NotFound``, ``InvalidTransition`` naming its
    current state, or the guard's error) and nothing is written.
    """
    # This runs for every segment of every stream (complete_segment): the
    # common case (enum states, one id) takes the short ways.
    froms = _states(from_)
    target = to if to is None or type(to) is SegmentState else SegmentState(to)
    for state in froms:
        if target is None:
            check_segment_removal(state)
        else:
            check_segment_transition(state, target)
    wanted = (ids,) if type(ids) is int else _ids(ids)
    if not wanted:
        return Transition(froms, target, (), ())
    hot = prepared(model._meta.database)
    db = hot.db
    columns = tuple(values) if values else ()
    if "state" in columns:
        raise ValidationError("values", "state", "the state is the gate's to set: pass it as `to`")
    shape = _shape(model, db.param, db.quote, target is None, columns, len(wanted), len(froms))
    sql = shape.sql
    params: list[Any] = []
    if target is not None:
        params.append(_VALUE[target])
        for name, (field, is_json) in zip(columns, shape.fields, strict=True):
            value = values[name]  # type: ignore[index]
            params.append(
                hot.dialect.json_param(cast(pw.JSONField, field), value) if is_json else field.db_value(value)
            )
    params += wanted
    params += [_VALUE[state] for state in froms]
    if guard is not None:
        fragment, extra = guard.where(db)
        sql = _guarded(sql, fragment)
        params += extra
    if event is None and not strict:
        return Transition(froms, target, wanted, _run(db, sql, params, wanted, model))
    with db.atomic():
        result = Transition(froms, target, wanted, _run(db, sql, params, wanted, model))
        if strict and result.refused:
            raise _why_refused(model, result, guard)  # leaves the transaction: nothing stays written
        if result.changed and event is not None:
            events = list(event(result))
            pending = _PENDING.get()
            if pending is not None:
                pending += events  # written by batched_events(), still in this transaction
            elif events:
                type(events[0]).bulk_create(events, batch_size=200)
    return result


@lru_cache(maxsize=256)
def _guarded(sql: str, fragment: str) -> str:
    """A shape's statement with a guard's fragment ANDed in: the same text each time, one cached statement."""
    return f"{sql} AND ({fragment})"


class EachGuard(Protocol):
    """A ``Guard`` for ``change_each``, whose condition takes values that differ from row to row.

    ``columns`` names (and types, in SQL) the values each row brings
    (``row_values(id)``, in that order): the epoch of the segment's stream
    for the ownership check of sessions. ``where_each(db, row)`` returns the
    SQL fragment, in which ``row(name)`` spells the current row's value, and
    the parameters of its other placeholders, in order.
    """

    columns: tuple[tuple[str, str], ...]

    def row_values(self, row_id: int) -> tuple[Any, ...]: ...

    def where_each(self, db: pw.Database, row: Callable[[str], str]) -> tuple[str, Sequence[Any]]: ...

    def why_refused(self, ids: Sequence[int]) -> StreamStateError | None: ...


# The SQL type of a column's values passed as an array (PostgreSQL's unnest).
_SQL_TYPES = {"BIGINT": "bigint", "INT": "integer", "SMALLINT": "smallint", "BOOL": "boolean", "TEXT": "text"}


def change_each(
    model: type[pw.Model],
    rows: Sequence[tuple[int, Sequence[Any]]],
    columns: Sequence[str],
    from_: SegmentState | str | Iterable[SegmentState | str],
    to: SegmentState | str,
    *,
    event: EventsFor | None = None,
    guard: EachGuard | None = None,
) -> Transition:
    """``change`` for many rows that each set ``columns`` to values of their own, in one statement.

    ``rows`` are ``(id, values)``, the values in ``columns`` order. The same
    compare-and-set as ``change`` (the transition map checked first, only a
    row in a ``from_`` state matches, ``guard`` in the same statement), spelled
    ``UPDATE ... SET column = v.column FROM <the rows> AS v``: one statement
    per tick instead of one per segment (a manager's tick closes a tenth of
    its segments; on PostgreSQL each statement is a round trip). Refused rows
    are reported in ``refused``, never raised: the caller asks each one why.
    """
    froms = _states(from_)
    target = to if type(to) is SegmentState else SegmentState(to)
    for state in froms:
        check_segment_transition(state, target)
    columns = tuple(columns)
    if "state" in columns:
        raise ValidationError("columns", "state", "the state is the gate's to set: pass it as `to`")
    meta_fields = model._meta.fields
    types: list[tuple[str, str]] = [("id", "bigint")]
    fields: list[pw.Field] = []
    for name in columns:
        field = meta_fields.get(name)
        sql_type = None if field is None else _SQL_TYPES.get(field.field_type)
        if sql_type is None:
            raise ValidationError(
                "columns", name, "not a column change_each sets (JSON changes one row at a time)"
            )
        fields.append(field)
        types.append((f"c_{name}", sql_type))
    if guard is not None:
        types += [(f"g_{name}", sql_type) for name, sql_type in guard.columns]
    wanted = _ids([row_id for row_id, _values in rows])
    if len(wanted) != len(rows):
        raise ValidationError("rows", rows, "each row once: a row changes once per statement")
    if not wanted:
        return Transition(froms, target, (), ())
    db = model._meta.database
    table_rows = []
    for row_id, values in rows:
        if len(values) != len(columns):
            raise ValidationError("rows", values, f"expected {len(columns)} values ({', '.join(columns)})")
        converted = [field.db_value(value) for field, value in zip(fields, values, strict=True)]
        table_rows.append((row_id, *converted, *(guard.row_values(row_id) if guard is not None else ())))
    d = prepared(db).dialect
    changed: set[int] = set()
    with db.atomic() if event is not None else contextlib.nullcontext():
        for chunk in pw.chunked(table_rows, d.max_table_rows):
            sql = _each_statement(model, d, db.param, columns, tuple(types), len(chunk), len(froms))
            params: list[Any] = [_VALUE[target], *d.rows_params(chunk, len(types))]
            params += [_VALUE[state] for state in froms]
            if guard is not None:
                fragment, extra = guard.where_each(db, lambda name: f'v."g_{name}"')
                sql = f"{sql} AND ({fragment})"
                params += extra
            returning = (
                f"{sql} RETURNING {_quote(db, model._meta.table_name)}.{_quote(db, _pk(model).column_name)}"
            )
            changed.update(row[0] for row in db.execute_sql(returning, params).fetchall())
        result = Transition(froms, target, wanted, tuple(i for i in wanted if i in changed))
        if result.changed and event is not None:
            events = list(event(result))
            pending = _PENDING.get()
            if pending is not None:
                pending += events
            elif events:
                type(events[0]).bulk_create(events, batch_size=200)
    return result


@lru_cache(maxsize=64)
def _each_statement(
    model: type[pw.Model],
    d: Any,
    param: str,
    columns: tuple[str, ...],
    types: tuple[tuple[str, str], ...],
    count: int,
    n_from: int,
) -> str:
    """``change_each``'s statement for one shape, the guard appended by the caller."""
    meta = model._meta
    table = f'"{meta.table_name}"'
    sets = ", ".join(
        [f'"{meta.fields["state"].column_name}" = {param}']
        + [f'"{meta.fields[c].column_name}" = v."c_{c}"' for c in columns]
    )
    state = f'{table}."{meta.fields["state"].column_name}"'
    states = f"{state} = {param}" if n_from == 1 else f"{state} IN ({', '.join([param] * n_from)})"
    return (
        f"UPDATE {table} SET {sets} FROM {d.rows_table(types, count)} "
        f'WHERE {table}."{_pk(model).column_name}" = v."id" AND {states}'
    )


# Events of gate calls inside batched_events(), not yet written.
_PENDING: contextvars.ContextVar[list[pw.Model] | None] = contextvars.ContextVar("gate_pending", default=None)


@contextlib.contextmanager
def batched_events(db: pw.Database) -> Iterator[None]:
    """One transaction in which the gate's events are written together, at the end.

    For a caller that moves many rows one by one (restore settling a
    thousand open segments): one INSERT per 200 events instead of one per
    change. The changes and their events still commit together, or not at all.
    """
    if _PENDING.get() is not None:  # already batching: the outer block writes
        yield
        return
    pending: list[pw.Model] = []
    token = _PENDING.set(pending)
    try:
        with db.atomic():
            yield
            if pending:
                type(pending[0]).bulk_create(pending, batch_size=200)
    finally:
        _PENDING.reset(token)


def _run(
    db: pw.Database, sql: str, params: list[Any], wanted: tuple[int, ...], model: type[pw.Model]
) -> tuple[int, ...]:
    if len(wanted) == 1:
        # One row: the row count says it all, and the statement stays the
        # plain UPDATE the hot path has always run.
        return wanted if db.execute_sql(sql, params).rowcount else ()
    returning = f"{sql} RETURNING {_quote(db, _pk(model).column_name)}"
    changed = {row[0] for row in db.execute_sql(returning, params).fetchall()}
    return tuple(i for i in wanted if i in changed)


def _why_refused(model: type[pw.Model], result: Transition, guard: Guard | None) -> StreamStateError:
    refused = result.refused
    pk = _pk(model)
    state_field = model._meta.fields["state"]
    rows = cast(Iterable[tuple[int, Any]], model.select(pk, state_field).where(pk.in_(refused)).tuples())
    current = dict(rows)
    for rec_id in refused:
        if rec_id not in current:
            return NotFound("recording", rec_id)
    wrong = [i for i in refused if current[i] not in result.from_]
    if not wrong and guard is not None:
        reason = guard.why_refused(refused)
        if reason is not None:
            return reason
    rec_id = (wrong or refused)[0]
    requested = "removed" if result.to is None else result.to
    expected = ", ".join(result.from_)
    return InvalidTransition("segment", current[rec_id], requested, f"recording {rec_id} is not {expected}")


def create(model: type[pw.Model], state: SegmentState, **columns: Any) -> pw.Model:
    """Insert a segment's row in one of the states a row may start in (``SEGMENT_INITIAL``).

    ``begin_segment`` inserts its ``recording`` rows with its own prepared
    statement (models/statements.py); every other new row comes through here.
    """
    state = SegmentState(state)
    if state not in SEGMENT_INITIAL:
        raise InvalidTransition(
            "segment", "new", state, f"a row starts as one of {', '.join(SEGMENT_INITIAL)}"
        )
    return model.create(state=state, **columns)
