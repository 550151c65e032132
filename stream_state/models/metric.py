"""A compact time-series store: named series and their samples.

A series is identified by (name, stream, labels); its canonical text, built by
``series_key``, is the unique ``metric_series.key``. Samples are keyed by
(series, ts in UTC milliseconds), so writing a sample for a time that already
has one replaces its value.

``MetricSample.record_many`` is the ingest path: a stream manager sampling
hundreds of streams hands it every sample of a tick (or of several ticks)
at once. It validates everything first, resolves all series with a few
set-based queries and hands the rows to the driver in one ``executemany``
(``execute_batch`` with psycopg2), so its cost per sample stays close to the
driver's own: see bench/ingest.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import logging
import math
import operator
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

import peewee as pw

from .. import codec
from ..errors import DatabaseUnavailable, NotFound, StorageFull, StreamStateError, ValidationError
from ..fields import TimestampField
from ..pwtypes import exception_wrapper, tuple_rows
from ..timeutil import from_millis, now_millis, to_millis, utc_now
from ..validate import require_count, require_number, require_text
from .base import BaseModel, WithoutRowidOnSqlite, current_database, dialect
from .session import writer
from .stream import Stream, require_stream_id

log = logging.getLogger(__name__)
# executemany bypasses peewee's execute_sql, so it is logged on peewee's SQL
# logger by hand: whoever watches that log (or counts queries with
# playhouse.test_utils.count_queries) sees the statement once, like any other.
_sql_log = logging.getLogger("peewee")

NAME_MAX_LENGTH = 200
LABEL_KEY_MAX_LENGTH = 100
LABEL_VALUE_MAX_LENGTH = 1000
MAX_LABELS = 64

# Bound parameters per statement stay far below SQLite's historical limit of
# 999 (and PostgreSQL's 65535), whatever the SQLite build.
_KEYS_PER_SELECT = 500

# The system_state row a trigger bumps on every delete from metric_series
# (migration 007): a writer's cached series ids are good while it stays put.
SERIES_DELETED_KEY = "metric_series_deleted"
# The rollup watermark's system_state key (models/rollups.py), read by the
# ingest path together with SERIES_DELETED_KEY.
ROLLUP_WATERMARK_KEY = "metric_rollups"

LabelsArg = Mapping[str, str | int] | None
StreamArg = Stream | int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One metric sample for ``MetricSample.record_many`` (tuples and mappings work too)."""

    name: str
    value: float
    stream: StreamArg = None
    labels: LabelsArg = None
    at: dt.datetime | None = None


# --- pure helpers ---------------------------------------------------------------


def canonical_labels(labels: Any, field: str = "labels") -> dict[str, str]:
    """Validate labels and return them as a new dict of str to str, sorted by key.

    Label values are text, as in Prometheus. An ``int`` value is accepted and
    stored as its decimal text (``{"channel": 1}`` is the same series as
    ``{"channel": "1"}``), because there is only one way to write an integer.
    Floats and bools are refused: ``1.0``/``"1"`` and ``True``/``"true"``
    would silently split or merge series. Empty keys and values are refused
    too: an empty label is the same as no label, and two spellings of one
    series would be two series. Label names are text without ``"`` or ``\\``.
    """
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise ValidationError(field, labels, "expected a mapping of label names to text values")
    if len(labels) > MAX_LABELS:
        raise ValidationError(field, f"<{len(labels)} labels>", f"more than {MAX_LABELS} labels")
    canonical: dict[str, str] = {}
    for key, value in labels.items():
        where = f"{field}[{key!r}]"
        require_text(where, key, max_length=LABEL_KEY_MAX_LENGTH)
        if '"' in key or "\\" in key:
            # SQLite's JSON paths cannot address such a key, so no query could find it.
            raise ValidationError(where, key, 'label names cannot contain " or \\')
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValidationError(where, value, "label values must be text (or an int, stored as text)")
        if isinstance(value, int) and value.bit_length() > 64:
            raise ValidationError(where, value, "an int label value must fit in 64 bits")
        text = value if isinstance(value, str) else str(value)
        canonical[key] = require_text(where, text, max_length=LABEL_VALUE_MAX_LENGTH)
    return {key: canonical[key] for key in sorted(canonical)}


def _key_text(name: str, stream_id: int | None, labels: dict[str, str]) -> str:
    return json.dumps([name, stream_id, labels], sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def series_key(name: str, stream_id: int | None, labels: LabelsArg = None) -> str:
    """The canonical text of a series identity: ``metric_series.key``.

    Same name, stream and labels (in any order, ints or their text) give the
    same key, so the unique index on ``key`` makes a series exist once. A
    NULL stream is part of the text too, which a composite unique index
    could not express (NULLs are distinct in SQL).
    """
    name = require_text("name", name, max_length=NAME_MAX_LENGTH)
    if stream_id is not None:
        require_count("stream_id", stream_id)
    return _key_text(name, stream_id, canonical_labels(labels))


def _stream_id(stream: Any, field: str) -> int | None:
    return require_stream_id(field, stream)


_TUPLE_FIELDS = ("name", "value", "stream", "labels", "at")
_UNSEEN: list[Any] = []  # a sentinel no argument can be
_ALLOWED_KEYS = frozenset(_TUPLE_FIELDS)


def _unpack(item: Any) -> tuple[Any, Any, Any, Any, Any]:
    """(name, value, stream, labels, at) from any accepted form of a sample."""
    if isinstance(item, Sample):
        return item.name, item.value, item.stream, item.labels, item.at
    if isinstance(item, Mapping):
        unknown = set(item) - _ALLOWED_KEYS
        if unknown:
            raise ValidationError(
                "sample", sorted(map(str, unknown)), f"unknown keys; expected {', '.join(_TUPLE_FIELDS)}"
            )
        for required in ("name", "value"):
            if required not in item:
                raise ValidationError(required, None, "missing")
        return item["name"], item["value"], item.get("stream"), item.get("labels"), item.get("at")
    if isinstance(item, (tuple, list)) and 2 <= len(item) <= 5:
        padded = (*item, None, None, None)
        return padded[0], padded[1], padded[2], padded[3], padded[4]
    raise ValidationError(
        "sample", item, "expected a Sample, a mapping or a tuple (name, value[, stream[, labels[, at]]])"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Series:
    """One distinct series of a batch, validated."""

    key: str
    name: str
    stream_id: int | None
    labels: dict[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class _Batch:
    """The validated samples of one call (no object per sample), in one of two forms.

    ``series`` holds each distinct series once, in the order first seen.
    Columns (``flats`` is None), when each series has one sample (a
    manager's tick): sample i is of series i, ``stamps`` is one time for
    every sample or one per sample (epoch ms), ``values`` the floats.
    Grouped (a backfill, or a series sampled twice): ``flats[i]`` holds
    series i's samples as [ts, value, ts, value, ...], in the order given.
    """

    series: Sequence[_Series]
    keys: Sequence[str]
    stream_ids: frozenset[int | None]
    count: int
    stamps: int | Sequence[int] = 0
    values: Sequence[float] = ()
    flats: Sequence[list[float]] | None = None

    def __len__(self) -> int:
        return self.count


def _columns(series: Sequence[_Series], stamps: int | Sequence[int], values: Sequence[float]) -> _Batch:
    keys = [s.key for s in series]
    return _Batch(series, keys, frozenset(s.stream_id for s in series), len(values), stamps, values)


def _grouped(series: Sequence[_Series], flats: Sequence[list[float]]) -> _Batch:
    keys = [s.key for s in series]
    count = sum(map(len, flats)) // 2
    return _Batch(series, keys, frozenset(s.stream_id for s in series), count, flats=flats)


# Series identities validated before, by content: a manager names the same
# few thousand (name, stream, labels) every tick, and validating them again
# (labels, key text) cost more than writing the sample. Only plain str names,
# str label keys and values and int (or Stream) stream ids are remembered,
# and looked up only for such arguments, so values that compare equal across
# types (True == 1 == 1.0) can never borrow another's validation.
_IDENTITIES: dict[tuple[Any, ...], tuple[str, int | None, dict[str, str], str]] = {}
_IDENTITIES_MAX = 100_000


def _identity(name: Any, stream: Any, labels: Any) -> tuple[str, int | None, dict[str, str], str]:
    """(name, stream id, canonical labels, key text) of a series, validated."""
    memo: tuple[Any, ...] | None = None
    if type(name) is str and (labels is None or type(labels) is dict):
        kind = type(stream)
        if stream is None or kind is int:
            sid = stream
        elif isinstance(stream, Stream):
            sid = stream.id
        else:
            sid = _UNSEEN
        if (sid is not _UNSEEN and sid is not None) or stream is None:
            memo = (name, sid, () if labels is None else tuple(labels.items()))
            try:
                known = _IDENTITIES.get(memo)
            except TypeError:  # an unhashable label value: validation will refuse it
                known = memo = None
            if known is not None:
                return known
    valid_name = require_text("name", name, max_length=NAME_MAX_LENGTH)
    stream_id = _stream_id(stream, "stream")
    canonical = canonical_labels(labels)
    found = (valid_name, stream_id, canonical, _key_text(valid_name, stream_id, canonical))
    if memo is not None and all(type(k) is str and type(v) is str for k, v in memo[2]):
        if len(_IDENTITIES) >= _IDENTITIES_MAX:
            _IDENTITIES.clear()
        _IDENTITIES[memo] = found
    return found


def _prepare(items: Sequence[Any], single: bool) -> _Batch:
    """Validate every sample before anything touches the database; return them as a ``_Batch``.

    The common call (plain 5-tuples, float or int values, one ``at`` per
    tick, the same series objects as a call before) takes ``_fast_batch``:
    names, streams and labels checked once per distinct series (and, for a
    layout seen before, only for changes since), values and times checked
    for the whole column at once. Anything it is not sure of, including
    every invalid sample, goes through ``_checked_batch``, one sample at a
    time, which raises the error naming the first bad sample and field.
    """
    if not single:
        batch = _fast_batch(items)
        if batch is not None:
            return batch
    return _checked_batch(items, single)


_TUPLE_ONLY = frozenset({tuple})
_FIVE_ONLY = frozenset({5})
_ZIP_MAX = 5_000
_FIELD_GETTERS = tuple(operator.itemgetter(i) for i in range(5))
_STR_ONLY = frozenset({str})
_FLOAT_ONLY = frozenset({float})
_NONE = type(None)
_TIMES = frozenset({dt.datetime, _NONE})
_LABEL_TYPES = frozenset({dict, _NONE})


def _fast_batch(items: Sequence[Any]) -> _Batch | None:
    """The batch, or None when any sample needs a closer look (``_checked_batch``).

    Values: finite iff their sum is (a NaN or an infinity makes the sum so;
    finite values whose sum overflows take the slow path, which accepts
    them). Times: one ``at`` object for every sample, or a few distinct
    ones, each converted once.
    """
    if set(map(type, items)) != _TUPLE_ONLY:
        return None
    columns: tuple[tuple[Any, ...], ...]
    if len(items) <= _ZIP_MAX:
        try:
            columns = tuple(zip(*items, strict=True))
        except ValueError:  # tuples of different lengths
            return None
        if len(columns) != 5:
            return None
    else:
        # zip(*items) slows down per item with hundreds of thousands of iterators.
        if set(map(len, items)) != _FIVE_ONLY:
            return None
        columns = tuple(tuple(map(getter, items)) for getter in _FIELD_GETTERS)
    names, values, streams, labelss, ats = columns
    value_types = set(map(type, values))
    if value_types != _FLOAT_ONLY:
        # ints (and float subclasses) are stored as floats, as require_number does; bool is refused.
        if bool in value_types or not all(issubclass(kind, (int, float)) for kind in value_types):
            return None
        try:
            values = tuple(map(float, values))
        except (OverflowError, TypeError, ValueError):
            return None
    if not math.isfinite(sum(values)):
        return None
    if not set(map(type, ats)) <= _TIMES:
        return None
    stamps: int | list[int]
    first = ats[0]
    now: int | None = None
    if ats.count(first) == len(ats):
        if first is None:
            stamps = now_millis()
        else:
            try:
                stamps = to_millis(first, "at")
            except ValidationError:
                return None
    else:
        distinct: dict[Any, int] = dict.fromkeys(ats, 0)
        for at in distinct:
            if at is None:
                if now is None:
                    now = now_millis()  # one clock reading per batch: the samples of one call are one tick
                distinct[at] = now
            else:
                try:
                    distinct[at] = to_millis(at, "at")
                except ValidationError:
                    return None
        stamps = list(map(distinct.__getitem__, ats))
    return _by_layout(names, streams, labelss, stamps, values)


@dataclasses.dataclass(frozen=True, slots=True)
class _Layout:
    """The series of each position of a call, as validated for these very arguments.

    Only for calls with one sample per series (a manager's tick): kept for
    the next call that passes equal names, streams and labels in the same
    order. Equal, compared as tuples: the same objects compare equal at
    once, and other objects only when they are the same series (names and
    label dicts are plain text, checked before a layout is kept or used; a
    Stream equals another of the same id; stream ids compare as exact ints,
    so True never passes for 1). A label dict changed in place since, or a
    Stream whose id changed, makes the layout invalid: each is compared
    with a copy taken when validated.
    """

    names: tuple[str, ...]
    streams: tuple[Any, ...]
    labelss: tuple[dict[str, str] | None, ...]
    series: tuple[_Series, ...]
    keys: tuple[str, ...]
    stream_ids: frozenset[int | None]
    # Each distinct labels dict and a copy of it; each distinct Stream and its id.
    labels_given: tuple[dict[str, str], ...]
    labels_copies: tuple[dict[str, str], ...]
    streams_given: tuple[Stream, ...]
    streams_ids: tuple[int, ...]

    def matches(self, streams: tuple[Any, ...], labelss: tuple[Any, ...]) -> bool:
        # Tuple comparisons, in C; the copies are other objects, so compared by content.
        return (
            streams == self.streams
            and labelss == self.labelss
            and self.labels_given == self.labels_copies
            and tuple(map(_STREAM_ID, self.streams_given)) == self.streams_ids
        )


# Layouts by (names, the first stream, the first labels), the first two by
# id when they are objects: the layout holds them, so no other object can
# take their id while it exists.
_LAYOUTS: dict[tuple[Any, ...], _Layout] = {}
# A manager with a Tick per stream has one layout per stream: room for
# thousands, and for 200,000 samples in all (a few hundred bytes each, with
# their series), the oldest layouts going first.
_LAYOUTS_MAX = 20_000
_LAYOUT_POSITIONS_MAX = 200_000
# A bigger call is a backfill, not a tick that comes again: not worth holding on to.
_LAYOUT_MAX_SAMPLES = 100_000
_LAYOUTS_LOCK = threading.Lock()
_layout_positions = [0]  # samples in the kept layouts, under the lock
_STREAMS = frozenset({Stream, int, _NONE})
_STREAM_ID = operator.attrgetter("id")


def _by_layout(
    names: tuple[Any, ...],
    streams: tuple[Any, ...],
    labelss: tuple[Any, ...],
    stamps: int | Sequence[int],
    values: Sequence[float],
) -> _Batch | None:
    """The batch, its series validated once per distinct series; None to take the slow path."""
    if set(map(type, names)) != _STR_ONLY or not set(map(type, labelss)) <= _LABEL_TYPES:
        return None
    if not set(map(type, streams)) <= _STREAMS:
        return None  # bools, Stream subclasses, anything else: validated one by one
    first = streams[0]
    lookup = (names, first if type(first) is not Stream else id(first), id(labelss[0]))
    layout = _LAYOUTS.get(lookup)
    if layout is not None and layout.matches(streams, labelss):
        return _Batch(layout.series, layout.keys, layout.stream_ids, len(values), stamps, values)
    try:
        return _new_layout(lookup, names, streams, labelss, stamps, values)
    except ValidationError:
        return None


def _series_adder(
    series: list[_Series],
    flats: list[list[float]],
    index_by_key: dict[str, int],
    name: Any,
    stream: Any,
    labels: Any,
) -> tuple[Any, int | None]:
    """Validate one (name, stream, labels): (the append of its series' flat [ts, value, ...] list, stream id).

    A series seen before under another spelling (equal labels in a new
    dict, a stream id for a Stream) shares its list.
    """
    valid_name, stream_id, canonical, key = _identity(name, stream, labels)
    index = index_by_key.get(key)
    if index is None:
        index = index_by_key[key] = len(series)
        series.append(_Series(key, valid_name, stream_id, canonical))
        flats.append([])
    return flats[index].append, stream_id


def _new_layout(
    lookup: tuple[Any, ...],
    names: tuple[str, ...],
    streams: tuple[Any, ...],
    labelss: tuple[Any, ...],
    stamps: int | Sequence[int],
    values: Sequence[float],
) -> _Batch:
    """Validate each distinct (name, stream, labels) once, grouping the samples as it goes.

    One sample per series: the batch in columns, and its layout kept (when
    its labels are plain text) for the calls to come. Otherwise grouped.
    """
    series: list[_Series] = []
    index_by_key: dict[str, int] = {}
    # Keyed by object ids: every object seen stays referenced by the
    # columns until the batch is done, so no id can be reused meanwhile.
    adder_by_objects: dict[tuple[str, int, int], Any] = {}
    flats: list[list[float]] = []
    labels_seen: dict[int, tuple[dict[str, str], dict[str, str]]] = {}
    streams_seen: dict[int, tuple[Stream, int]] = {}
    reusable = True
    times = itertools.repeat(stamps) if isinstance(stamps, int) else stamps
    for name, stream, labels, at, number in zip(names, streams, labelss, times, values, strict=False):
        objects = (name, id(stream), id(labels))
        add = adder_by_objects.get(objects)
        if add is None:
            add, stream_id = _series_adder(series, flats, index_by_key, name, stream, labels)
            adder_by_objects[objects] = add
            if labels is not None and id(labels) not in labels_seen:
                # Only text labels are remembered: 1 == True would let a bool borrow an int's validation.
                reusable = reusable and all(type(k) is str and type(v) is str for k, v in labels.items())
                labels_seen[id(labels)] = (labels, dict(labels))
            if type(stream) is Stream and stream_id is not None:
                streams_seen.setdefault(id(stream), (stream, stream_id))
        add(at)
        add(number)
    if len(series) < len(values):
        return _grouped(series, flats)
    batch = _columns(series, stamps, values)
    if reusable and len(names) <= _LAYOUT_MAX_SAMPLES:
        layout = _Layout(
            names,
            streams,
            labelss,
            tuple(series),
            tuple(batch.keys),
            batch.stream_ids,
            tuple(given for given, _ in labels_seen.values()),
            tuple(copy for _, copy in labels_seen.values()),
            tuple(stream for stream, _ in streams_seen.values()),
            tuple(stream_id for _, stream_id in streams_seen.values()),
        )
        _keep(lookup, layout)
    return batch


def _keep(lookup: tuple[Any, ...], layout: _Layout) -> None:
    """Remember a layout, forgetting the oldest ones beyond the bounds."""
    size = len(layout.names)
    with _LAYOUTS_LOCK:
        replaced = _LAYOUTS.pop(lookup, None)
        if replaced is not None:
            _layout_positions[0] -= len(replaced.names)
        while _LAYOUTS and (
            len(_LAYOUTS) >= _LAYOUTS_MAX or _layout_positions[0] + size > _LAYOUT_POSITIONS_MAX
        ):
            _layout_positions[0] -= len(_LAYOUTS.pop(next(iter(_LAYOUTS))).names)
        _LAYOUTS[lookup] = layout
        _layout_positions[0] += size


def _checked_batch(items: Sequence[Any], single: bool) -> _Batch:
    """Validate the samples one by one (any form); the error names the first bad sample and field.

    Errors name plain arguments (``value``); for ``record_many`` they are
    renamed after the fact (``samples[17].value``), which costs nothing per
    sample.
    """
    series: list[_Series] = []
    index_by_key: dict[str, int] = {}
    flats: list[list[float]] = []
    # Keyed by object ids: every object seen stays referenced by ``items``
    # until the batch is done, so no id can be reused for another meanwhile.
    adder_by_identity: dict[tuple[int, int, int], Any] = {}
    millis_by_time: dict[dt.datetime, int] = {}
    now: int | None = None
    item: Any = None
    try:
        for item in items:
            if type(item) is tuple and len(item) == 5:
                name, value, stream, labels, at = item
            else:
                name, value, stream, labels, at = _unpack(item)
            identity = (id(name), id(stream), id(labels))
            add = adder_by_identity.get(identity)
            if add is None:
                add = adder_by_identity[identity] = _series_adder(
                    series, flats, index_by_key, name, stream, labels
                )[0]
            # x - x is 0.0 for every finite float and NaN for NaN and infinities.
            if type(value) is not float or value - value != 0.0:
                value = require_number("value", value)
            if at is None:
                if now is None:
                    # One clock reading per batch: the samples of one call are one tick.
                    now = now_millis()
                ts = now
            elif type(at) is dt.datetime:
                cached = millis_by_time.get(at)
                if cached is None:
                    cached = millis_by_time[at] = to_millis(at, "at")
                ts = cached
            else:
                ts = to_millis(at, "at")
            add(ts)
            add(value)
    except ValidationError as exc:
        if single:
            raise
        index = next(i for i, candidate in enumerate(items) if candidate is item)
        field = f"samples[{index}]" if exc.field == "sample" else f"samples[{index}].{exc.field}"
        raise ValidationError(field, exc.value, exc.reason) from None
    return _grouped(series, flats)


def _merge(batches: Sequence[_Batch]) -> _Batch:
    """One batch of the samples of several (a tick's calls), each series once, in call order."""
    series: list[_Series] = []
    index_by_key: dict[str, int] = {}
    flats: list[list[float]] = []
    for batch in batches:
        local: list[int] = []
        for spec in batch.series:
            index = index_by_key.get(spec.key)
            if index is None:
                index = index_by_key[spec.key] = len(series)
                series.append(spec)
                flats.append([])
            local.append(index)
        if batch.flats is not None:
            for index, flat in zip(local, batch.flats, strict=True):
                flats[index].extend(flat)
        else:
            stamps = batch.stamps
            times = itertools.repeat(stamps) if isinstance(stamps, int) else stamps
            for index, at, number in zip(local, times, batch.values, strict=False):
                into = flats[index]
                into.append(at)
                into.append(number)
    return _grouped(series, flats)


def _series_rows(series_id: int, flat: list[float]) -> Iterator[tuple[int, float, float]]:
    """(series_id, ts, value) of a series' [ts, value, ts, value, ...], built in C."""
    samples = iter(flat)
    return zip(itertools.repeat(series_id), samples, samples, strict=False)


def _ranges(ids: Sequence[int], stamps: int | Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """(series id, first ts, last ts) of each series of a batch; consumed only for late samples."""
    if isinstance(stamps, int):
        for series_id in dict.fromkeys(ids):
            yield series_id, stamps, stamps
        return
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for series_id, ts in zip(ids, stamps, strict=True):
        if ts < first.get(series_id, ts + 1):
            first[series_id] = ts
        if ts > last.get(series_id, ts - 1):
            last[series_id] = ts
    for series_id, ts in first.items():
        yield series_id, ts, last[series_id]


# --- database helpers -----------------------------------------------------------


class SeriesIds:
    """The ids of series known to be committed in one database, by key text.

    A manager writes the same thousand series every tick; looking each up by
    its key text cost more than writing its sample. Entries are added only
    after the transaction that found or created them committed at the top
    level (an id from a rolled-back transaction would be handed out again),
    and the whole cache is dropped when the deletion counter moved: SQLite
    reuses the largest id after a delete, so a stale entry could name another
    series. Series created by another process are simply not in it yet.
    """

    __slots__ = ("deletions", "ids", "lock")

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.deletions: Any = _UNSEEN
        self.lock = threading.Lock()

    def check(self, db: pw.Database, marker: Any = _UNSEEN) -> bool:
        """Read the deletion counter (in the caller's transaction); False if caching is off.

        ``marker``: the counter's value, when the caller read it already.
        """
        if marker is _UNSEEN:
            row = db.execute_sql(
                f'SELECT "value" FROM "system_state" WHERE "key" = {db.param}', (SERIES_DELETED_KEY,)
            ).fetchone()
            marker = None if row is None else row[0]
        with self.lock:
            if marker != self.deletions:
                self.ids.clear()
                self.deletions = marker
        return marker is not None

    def learn(self, found: Mapping[str, int], db: pw.Database) -> None:
        """Remember ids once their transaction committed at the top level."""
        if found and not db.in_transaction():
            with self.lock:
                self.ids.update(found)

    def forget(self) -> None:
        with self.lock:
            self.ids.clear()
            self.deletions = _UNSEEN


_series_ids: weakref.WeakKeyDictionary[pw.Database, SeriesIds] = weakref.WeakKeyDictionary()
_series_ids_lock = threading.Lock()


def series_id_cache(db: pw.Database) -> SeriesIds:
    """The series-id cache of ``db`` (one per database object, shared by its threads)."""
    cache = _series_ids.get(db)
    if cache is None:
        with _series_ids_lock:
            cache = _series_ids.setdefault(db, SeriesIds())
    return cache


def _wrap_database_error(db: pw.Database, exc: pw.PeeweeException, doing: str) -> StreamStateError:
    """Turn a driver error into the package's error with the same meaning.

    The database's own translation comes first, so these errors read like
    every other; the raw cursor that runs ``executemany`` bypasses it.
    """
    translated = dialect(db).translate_error(exc)
    if translated is not None:
        return translated
    text = str(exc)
    lowered = text.lower()
    # SQLite: "database or disk is full"; PostgreSQL: "could not extend file ...: No space left on device".
    if "is full" in lowered or "no space left" in lowered or "could not extend file" in lowered:
        return StorageFull(f"{doing} failed, the storage is full: {text}")
    return DatabaseUnavailable(f"{doing} failed and was rolled back: {text}")


def _executemany(db: pw.Database, sql: str, rows: Iterable[Sequence[Any]], count: int) -> None:
    """Run one statement for every row, in as few driver calls as the driver allows.

    sqlite3's ``executemany`` steps one prepared statement through the rows
    in C. psycopg2's ``executemany`` is a round trip per row; its
    ``execute_batch`` sends the very same statements, ``page_size`` of them
    per round trip, which on a local server is several times faster. A
    multi-row VALUES would be faster still, but ``ON CONFLICT DO UPDATE``
    cannot touch one row twice in a statement, and a batch may carry two
    samples for the same (series, ts): statements run in order, so the last
    one wins.
    """
    if _sql_log.isEnabledFor(logging.DEBUG):
        _sql_log.debug((sql, (f"<executemany: {count} rows>",)))
    with exception_wrapper:
        dialect(db).executemany(db.cursor(), sql, rows)


# Below this many samples psycopg2's execute_batch is as fast and simpler to read in logs.
_UNNEST_FROM = 50


def _insert_unnest(
    db: pw.Database,
    table: str,
    columns: tuple[str, str, str],
    ids: Sequence[int],
    stamps: Sequence[int],
    values: Sequence[float],
    may_repeat: bool,
) -> None:
    """PostgreSQL: every sample in one ``INSERT ... SELECT FROM unnest(...)``, one array per column.

    One statement and one round trip instead of a statement per sample: the
    server parses and plans once (bench/manager.py: several times less server
    CPU than ``execute_batch`` for a tick of thousands of samples). ``ON
    CONFLICT DO UPDATE`` cannot touch a row twice in one statement, so a
    batch that carries two samples for one (series, ms) keeps the last, as
    the statement-per-sample path does (``may_repeat``: a series occurs more
    than once in the batch).
    """
    if may_repeat:
        last = dict(zip(zip(ids, stamps, strict=True), values, strict=True))
        if len(last) < len(values):
            ids = [series_id for series_id, _ in last]
            stamps = [ts for _, ts in last]
            values = list(last.values())
    s, t, v = columns
    db.execute_sql(
        f'INSERT INTO "{table}" ("{s}", "{t}", "{v}") '
        "SELECT * FROM unnest(%s::integer[], %s::bigint[], %s::double precision[]) "
        f'ON CONFLICT ("{s}", "{t}") DO UPDATE SET "{v}" = excluded."{v}"',
        (list(ids), list(stamps), list(values)),
    )


# --- models -----------------------------------------------------------------------


class MetricSeries(BaseModel):
    id = pw.AutoField()
    # Canonical text of (name, stream, labels). Unique even when stream is
    # NULL, which a composite unique index would not be (NULLs are distinct).
    key = pw.TextField(unique=True)
    name = pw.TextField(index=True)
    stream = pw.ForeignKeyField(Stream, null=True, backref="metric_series", on_delete="RESTRICT")
    stream_id: int | None  # the foreign key's column, set by peewee
    labels = pw.JSONField(default=dict)
    created_at = TimestampField(default=utc_now)
    # Decimals kept when the series' hours are compacted into blocks (NULL:
    # every value exactly). A lossy choice made per series: noisy doubles
    # take about 7 bytes a sample exactly, about 1 rounded (bench/blocks.py).
    resolution = pw.SmallIntegerField(null=True)

    class Meta:
        table_name = "metric_series"

    def __str__(self) -> str:
        return self.key

    @classmethod
    def existing_id(cls, series: Any, field: str = "series") -> int:
        """The id of a saved ``MetricSeries`` or of an existing series id; ``NotFound`` otherwise."""
        if isinstance(series, MetricSeries):
            if series.id is None:
                raise ValidationError(field, series, "the series has not been saved")
            return series.id
        if isinstance(series, bool) or not isinstance(series, int):
            raise ValidationError(field, series, "expected a MetricSeries or a series id")
        require_count(field, series)
        if not cls.select().where(cls.id == series).exists():
            raise NotFound("metric series", series)
        return series

    def set_resolution(self, decimals: int | None) -> None:
        """Keep ``decimals`` decimals of this series' values when its hours are compacted (None: exact).

        The raw head keeps the values as written until ``compact_samples``
        encodes their hour; from then on a value reads back rounded, e.g.
        83.52719 as 83.5 with ``decimals=1``.
        """
        if decimals is not None:
            decimals = require_count("decimals", decimals, maximum=codec.MAX_DECIMALS)
        type(self).update(resolution=decimals).where(type(self).id == self.id).execute()
        self.resolution = decimals

    @classmethod
    def matching(
        cls, name: str, stream: StreamArg = None, labels: LabelsArg = None
    ) -> pw.ModelSelect[MetricSeries]:
        """Series called ``name`` that carry at least ``labels`` (a subset match).

        ``stream=None`` matches every stream and none; add
        ``.where(MetricSeries.stream.is_null())`` for the system-wide series
        only. The result is a query: add ``.where()``, ``.count()``, or pass
        it to ``MetricSample.for_series``.
        """
        name = require_text("name", name, max_length=NAME_MAX_LENGTH)
        query = cls.select().where(cls.name == name)
        stream_id = _stream_id(stream, "stream")
        if stream_id is not None:
            query = query.where(cls.stream == stream_id)
        for key, value in canonical_labels(labels).items():
            # ->> on SQLite and #>> on PostgreSQL: the same text comparison on both.
            query = query.where(cls.labels[key].as_text() == value)
        return query.order_by(cls.id)

    @classmethod
    def _resolve(
        cls,
        db: pw.Database,
        series: Sequence[_Series],
        keys: Sequence[str],
        learned: dict[str, int],
        deletions: Any = _UNSEEN,
    ) -> list[int]:
        """The id of every series in ``series`` (whose keys are ``keys``), creating the missing ones.

        Run in a transaction. Ids come from the database's ``SeriesIds`` cache
        when it is valid; the ids read or created here go into ``learned``,
        for the caller to add to the cache once the transaction committed.
        The statements are written by hand because they run on every batch:
        for 1,000 series peewee's query builder took 18 ms for the lookup and
        130 ms for the insert, these take 4 ms and 24 ms.
        """
        cache = series_id_cache(db)
        known = cache.ids if cache.check(db, deletions) else {}
        cached = list(map(known.get, keys))
        if None not in cached:
            return cached  # type: ignore[return-value]  # no None in it
        ids = {key: found for key, found in zip(keys, cached, strict=True) if found is not None}
        unknown = [key for key in keys if key not in ids]
        looked_up = cls._ids_by_key(db, unknown)
        ids.update(looked_up)
        learned.update(looked_up)
        missing = [spec for spec in series if spec.key not in ids]
        if not missing:
            return [ids[key] for key in keys]
        cls._check_streams(missing)
        # Sorted, so two writers creating overlapping series take the key
        # locks in the same order and cannot deadlock on PostgreSQL.
        missing.sort(key=lambda spec: spec.key)
        created_at = now_millis()
        p = db.param
        # SQLite: json() stores the text as peewee's JSONField does;
        # PostgreSQL: a text literal is cast to the jsonb column on insert.
        labels = dialect(db).json_placeholder(p)
        columns = '"key", "name", "stream_id", "labels", "created_at"'
        # Another writer may create the same series between the SELECT above
        # and this INSERT (a concurrent PostgreSQL transaction): DO NOTHING
        # keeps its row and the SELECT below picks its id up.
        sql = (
            f'INSERT INTO "{cls._meta.table_name}" ({columns}) VALUES ({p}, {p}, {p}, {labels}, {p}) '
            'ON CONFLICT ("key") DO NOTHING'
        )
        rows = [
            (spec.key, spec.name, spec.stream_id, json.dumps(spec.labels, ensure_ascii=False), created_at)
            for spec in missing
        ]
        try:
            _executemany(db, sql, rows, len(rows))
        except pw.IntegrityError as exc:
            # A stream was deleted after _check_streams: only possible
            # without SQLite's write lock, on PostgreSQL.
            stream_ids = sorted({spec.stream_id for spec in missing if spec.stream_id is not None})
            raise NotFound("stream", stream_ids[0] if len(stream_ids) == 1 else stream_ids) from exc
        created = cls._ids_by_key(db, [spec.key for spec in missing])
        ids.update(created)
        learned.update(created)
        lost = [spec.key for spec in missing if spec.key not in ids]
        if lost:
            raise DatabaseUnavailable(
                f"metric series {lost[0]!r} was neither created nor found: deleted by a concurrent purge?"
            )
        log.debug("created %d metric series", len(missing))
        return [ids[key] for key in keys]

    @classmethod
    def _ids_by_key(cls, db: pw.Database, keys: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for start in range(0, len(keys), _KEYS_PER_SELECT):
            chunk = keys[start : start + _KEYS_PER_SELECT]
            marks = ", ".join([db.param] * len(chunk))
            sql = f'SELECT "key", "id" FROM "{cls._meta.table_name}" WHERE "key" IN ({marks})'
            found.update(db.execute_sql(sql, chunk).fetchall())
        return found

    @staticmethod
    def _check_streams(specs: list[_Series]) -> None:
        """Refuse series of unknown streams with NotFound, before anything is written.

        The foreign key would refuse them too, but by then we could not say
        which stream was wrong. A removed (soft-deleted) stream still exists:
        samples that were buffered when it was removed are kept.
        """
        wanted = list(dict.fromkeys(spec.stream_id for spec in specs if spec.stream_id is not None))
        existing: set[int] = set()
        for chunk in pw.chunked(wanted, _KEYS_PER_SELECT):
            existing.update(
                sid for (sid,) in tuple_rows(Stream.select(Stream.id).where(Stream.id.in_(chunk)))
            )
        for stream_id in wanted:
            if stream_id not in existing:
                raise NotFound("stream", stream_id)


class MetricSample(BaseModel):
    # Keyed by (series, ts): one value per series and millisecond. On SQLite a
    # WITHOUT ROWID table: after VACUUM about 23 bytes a
    # sample when values have a fraction (an 8-byte REAL) and about 17 when
    # they are integral (SQLite stores those as small integers).
    series = pw.ForeignKeyField(MetricSeries, backref="samples", on_delete="CASCADE", index=False)
    ts = TimestampField()
    value = pw.DoubleField()

    class Meta:
        table_name = "metric_sample"
        primary_key = pw.CompositeKey("series", "ts")
        model_metadata_class = WithoutRowidOnSqlite

    @classmethod
    def record(
        cls,
        name: str,
        value: float,
        stream: StreamArg = None,
        labels: LabelsArg = None,
        at: dt.datetime | None = None,
    ) -> MetricSample:
        """Write one sample (``at`` defaults to now) and return it.

        The series (name, stream, labels) is created on first use. A sample
        already stored for the same series and millisecond is replaced. For
        more than a handful of samples use ``record_many``: one call per
        sample costs a transaction (a commit) each.
        """
        batch = _prepare([(name, value, stream, labels, at)], single=True)
        (series_id,) = cls._write([batch])
        assert batch.flats is not None  # checked one by one: grouped
        ts, number = batch.flats[0]
        return cls(series=series_id, ts=from_millis(int(ts)), value=number)

    @classmethod
    def record_many(cls, samples: Iterable[Sample | Mapping[str, Any] | Sequence[Any]]) -> int:
        """Write many samples in one transaction; return how many were written.

        Each sample is a ``Sample``, a mapping with keys ``name``, ``value``
        and optionally ``stream``, ``labels``, ``at``, or a tuple
        ``(name, value[, stream[, labels[, at]]])``. Samples without ``at``
        get one shared "now". Everything is validated first: one bad sample
        raises ``ValidationError`` naming it (``samples[17].value``) and
        nothing is written; an unknown stream raises ``NotFound``. A later
        sample for the same series and millisecond wins, within the batch
        and against what is stored.

        The samples are read into a list first, and label dicts are not
        copied: do not change them from another thread during the call.
        Fastest as a manager's tick: 5-tuples, one labels dict per series
        (or per stream) kept from tick to tick, one ``at`` per tick.
        """
        if isinstance(samples, (str, bytes, Mapping, Sample)):
            # One sample (or a string) is iterable too, but never what was meant.
            raise ValidationError("samples", samples, "expected an iterable of samples")
        if isinstance(samples, (str, bytes, Mapping)) or not isinstance(samples, Iterable):
            raise ValidationError("samples", samples, "expected an iterable of samples")
        items = samples if isinstance(samples, list) else list(samples)
        if not items:
            return 0
        cls._write([_prepare(items, single=False)])
        return len(items)

    @classmethod
    def _write(cls, batches: list[_Batch]) -> list[int]:
        """Resolve the series and write the samples in one transaction; return the series ids.

        The ids are those of ``_merge(batches)``'s series (for one batch, its own).
        """
        db = current_database()
        count = sum(map(len, batches))
        # Samples attributed to streams are manager writes: gated on this
        # process's session owning each of those streams (one statement).
        stream_ids = sorted({sid for b in batches for sid in b.stream_ids if sid is not None})
        session = writer(db) if stream_ids else None
        for attempt in range(2):
            learned: dict[str, int] = {}
            try:
                # BEGIN IMMEDIATE on SQLite: the series lookup and the writes see
                # one state of the database.
                with (
                    db.atomic(),
                    session.gate(stream_ids) if session is not None else contextlib.nullcontext(),
                ):
                    series_ids = cls._write_batches(db, batches, learned)
            except pw.IntegrityError as exc:
                # A series vanished between its lookup and the insert: a
                # concurrent delete on PostgreSQL, or a cached id that a
                # delete made stale. Once more, with the cache dropped.
                series_id_cache(db).forget()
                if attempt == 0 and not db.in_transaction():
                    continue
                keys = [key for b in batches for key in b.keys]
                raise NotFound("metric series", keys[:3]) from exc
            except pw.PeeweeException as exc:
                raise _wrap_database_error(db, exc, f"writing {count} metric samples") from exc
            series_id_cache(db).learn(learned, db)
            log.debug("wrote %d metric samples", count)
            return series_ids
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _write_batches(cls, db: pw.Database, batches: list[_Batch], learned: dict[str, int]) -> list[int]:
        """The body of ``_write``, inside the caller's transaction (a tick's, or its own).

        Returns the ids of ``_merge(batches)``'s series. The series ids read
        or created go into ``learned``, for the caller to hand to
        ``SeriesIds.learn`` after the commit.
        """
        batch = batches[0] if len(batches) == 1 else _merge(batches)
        # Imported here: the rollup models refer to MetricSeries.
        from .rollups import MetricRollupStale, read_watermark, watermark_value

        if dialect(db).is_sqlite:
            # The deletion counter and the rollup watermark in one statement
            # (SQLite's write lock is held already: nothing to lock).
            p = db.param
            state = dict(
                db.execute_sql(
                    f'SELECT "key", "value" FROM "system_state" WHERE "key" IN ({p}, {p})',
                    (SERIES_DELETED_KEY, ROLLUP_WATERMARK_KEY),
                ).fetchall()
            )
            deletions = state.get(SERIES_DELETED_KEY)
            watermark = watermark_value(state.get(ROLLUP_WATERMARK_KEY))
        else:
            deletions = _UNSEEN  # read by _resolve; the watermark share-locked (note_late_samples)
            watermark = read_watermark(db, share=True)
        series_ids = MetricSeries._resolve(db, batch.series, batch.keys, learned, deletions)
        stamps: int | Sequence[int] = batch.stamps
        values: Sequence[float] = batch.values
        # Rows in series id order, each series' samples in the order given
        # (the last of two samples for one millisecond wins): SQLite then
        # fills its (series, ts) b-tree in key order instead of hopping
        # across every series' leaf on each tick, and concurrent PostgreSQL
        # writers lock rows in one order.
        table = cls._meta.table_name
        columns = (cls.series.column_name, cls.ts.column_name, cls.value.column_name)
        unnest = not dialect(db).is_sqlite and len(batch) >= _UNNEST_FROM
        rows: Iterable[Sequence[Any]]
        if batch.flats is None:
            # One sample per series (a tick). A manager's series are usually
            # in id order already (created in the order it names them).
            ids = series_ids
            if ids != sorted(ids):
                order = sorted(range(len(ids)), key=ids.__getitem__)
                ids = list(map(ids.__getitem__, order))
                values = list(map(values.__getitem__, order))
                if not isinstance(stamps, int):
                    stamps = list(map(stamps.__getitem__, order))
            if unnest:
                every = [stamps] * len(ids) if isinstance(stamps, int) else stamps
                _insert_unnest(db, table, columns, ids, every, values, False)
            times = itertools.repeat(stamps) if isinstance(stamps, int) else stamps
            # strict=False: ``times`` may be an endless repeat of the one time.
            rows = zip(ids, times, values, strict=False)
            earliest = stamps if isinstance(stamps, int) else min(stamps)
            ranges = _ranges(ids, stamps)
        else:
            # Grouped per series already: in id order, each series' rows
            # zipped from its flat list (in C, no list of rows in between).
            flats = batch.flats
            order = sorted(range(len(flats)), key=series_ids.__getitem__)
            if unnest:
                runs = (itertools.repeat(series_ids[i], len(flats[i]) // 2) for i in order)
                ids = list(itertools.chain.from_iterable(runs))
                flat = list(itertools.chain.from_iterable(flats[i] for i in order))
                _insert_unnest(db, table, columns, ids, cast(list[int], flat[0::2]), flat[1::2], True)
            rows = itertools.chain.from_iterable(_series_rows(series_ids[i], flats[i]) for i in order)
            earliest = None
            ranges = (
                (series_ids[i], int(min(flats[i][0::2])), int(max(flats[i][0::2]))) for i in range(len(flats))
            )
        if not unnest:
            s, t, v = columns
            param = db.param
            sql = (
                f'INSERT INTO "{table}" ("{s}", "{t}", "{v}") VALUES ({param}, {param}, {param}) '
                f'ON CONFLICT ("{s}", "{t}") DO UPDATE SET "{v}" = excluded."{v}"'
            )
            _executemany(db, sql, rows, len(batch))
        # Samples written behind the rollup watermark (late, or replacing old
        # values) mark their hours for re-aggregation, in the same
        # transaction, so rollups never go stale silently. The ranges per
        # series are worked out only when there is a watermark and (for a
        # tick) the batch reaches below it, which a live recorder's never does.
        MetricRollupStale.note_late_samples_below(watermark, ranges, earliest)
        return series_ids

    @classmethod
    def for_series(
        cls,
        series: MetricSeries | int | pw.Select,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> pw.ModelSelect[MetricSample]:
        """Samples of one series (or of every series a query selects), oldest first.

        ``since`` is inclusive and ``until`` exclusive, so consecutive windows
        never count a sample twice. ``series`` may be a ``MetricSeries``, its
        id, or a query such as ``MetricSeries.matching("fps")``.
        """
        order: tuple[Any, ...]
        if isinstance(series, pw.Select):
            condition = cls.series.in_(series.select(MetricSeries.id).order_by())
            order = (cls.ts, cls.series)
        else:
            if isinstance(series, MetricSeries):
                series = series.id
            series_id = require_count("series", series)
            condition = cls.series == series_id
            order = (cls.ts,)
        query = cls.select().where(condition)
        since_ms = None if since is None else to_millis(since, "since")
        until_ms = None if until is None else to_millis(until, "until")
        if since is not None and since_ms is not None and until_ms is not None and until_ms < since_ms:
            raise ValidationError("until", until, f"before since={since.isoformat()}")
        if since_ms is not None:
            query = query.where(cls.ts >= since_ms)
        if until_ms is not None:
            query = query.where(cls.ts < until_ms)
        return query.order_by(*order)
