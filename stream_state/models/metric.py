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
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

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


@dataclasses.dataclass(slots=True)
class _SeriesSpec:
    """One distinct series of a batch and its samples, flat: [ts, value, ts, value, ...]."""

    key: str
    name: str
    stream_id: int | None
    labels: dict[str, str]
    samples: list[int | float] = dataclasses.field(default_factory=list)

    def rows(self, series_id: int) -> Iterator[tuple[int, int | float, int | float]]:
        """(series_id, ts, value) for each sample, in the order given, built in C."""
        flat = iter(self.samples)
        return zip(itertools.repeat(series_id), flat, flat)


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


def _prepare(items: Sequence[Any], single: bool) -> list[_SeriesSpec]:
    """Validate every sample before anything touches the database; group them by series.

    This loop is the whole Python cost of ingest, so the common case takes a
    short path: a float value is checked inline, and series identities and
    timestamps are remembered for the batch, because callers reuse one labels
    dict per series and one ``at`` per tick. The identity memo is keyed by
    object ids; every object it has seen stays referenced until the batch is
    done, so no id can be reused for another object meanwhile.

    Errors name plain arguments (``value``); for ``record_many`` they are
    renamed after the fact (``samples[17].value``), which costs nothing per
    sample.
    """
    specs: list[_SeriesSpec] = []
    spec_by_key: dict[str, _SeriesSpec] = {}
    adder_by_identity: dict[tuple[int, int, int], Callable[[int | float], None]] = {}
    pinned: list[tuple[Any, Any, Any]] = []
    millis_by_time: dict[dt.datetime, int] = {}
    now: int | None = None
    datetime_type = dt.datetime
    item: Any = None
    # The previous sample's series and time: consecutive samples often share
    # one (a series' history) or the other (a tick across every series).
    last_name: Any = _UNSEEN
    last_stream: Any = _UNSEEN
    last_labels: Any = _UNSEEN
    last_at: Any = _UNSEEN
    add: Callable[[int | float], None] | None = None
    ts = 0
    try:
        for item in items:
            if type(item) is tuple and len(item) == 5:
                name, value, stream, labels, at = item
            else:
                name, value, stream, labels, at = _unpack(item)

            if labels is not last_labels or name is not last_name or stream is not last_stream:
                add = adder_by_identity.get((id(name), id(stream), id(labels)))
                last_name, last_stream, last_labels = name, stream, labels
            if add is None:
                valid_name, stream_id, canonical, key = _identity(name, stream, labels)
                spec = spec_by_key.get(key)
                if spec is None:
                    spec = spec_by_key[key] = _SeriesSpec(key, valid_name, stream_id, canonical)
                    specs.append(spec)
                add = adder_by_identity[(id(name), id(stream), id(labels))] = spec.samples.append
                pinned.append((name, stream, labels))

            # x - x is 0.0 for every finite float and NaN for NaN and infinities.
            if type(value) is not float or value - value != 0.0:
                value = require_number("value", value)

            if at is last_at:
                pass
            elif at is None:
                if now is None:
                    # One clock reading per batch: the samples of one call are one tick.
                    now = now_millis()
                ts = now
                last_at = at
            elif type(at) is datetime_type:
                cached = millis_by_time.get(at)
                if cached is None:
                    cached = millis_by_time[at] = to_millis(at, "at")
                ts = cached
                last_at = at
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
    return specs


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

    def check(self, db: pw.Database) -> bool:
        """Read the deletion counter (in the caller's transaction); False if caching is off."""
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
    db: pw.Database, table: str, columns: tuple[str, str, str], series: list[tuple[int, list[int | float]]]
) -> None:
    """PostgreSQL: every sample in one ``INSERT ... SELECT FROM unnest(...)``, one array per column.

    One statement and one round trip instead of a statement per sample: the
    server parses and plans once (bench/manager.py: several times less server
    CPU than ``execute_batch`` for a tick of thousands of samples). ``ON
    CONFLICT DO UPDATE`` cannot touch a row twice in one statement, so a
    batch that carries two samples for one (series, ms) keeps the last, as
    the statement-per-sample path does.
    """
    ids: list[int] = []
    stamps: list[int | float] = []
    values: list[int | float] = []
    for series_id, flat in series:
        stamp, value = flat[0::2], flat[1::2]
        if len(stamp) > 1 and len(set(stamp)) < len(stamp):
            last = dict(zip(stamp, value, strict=True))
            stamp, value = list(last), list(last.values())
        ids.extend(itertools.repeat(series_id, len(stamp)))
        stamps.extend(stamp)
        values.extend(value)
    s, t, v = columns
    db.execute_sql(
        f'INSERT INTO "{table}" ("{s}", "{t}", "{v}") '
        "SELECT * FROM unnest(%s::integer[], %s::bigint[], %s::double precision[]) "
        f'ON CONFLICT ("{s}", "{t}") DO UPDATE SET "{v}" = excluded."{v}"',
        (ids, stamps, values),
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
    def _resolve(cls, db: pw.Database, specs: list[_SeriesSpec], learned: dict[str, int]) -> list[int]:
        """The id of every series in ``specs``, creating the missing ones. Run in a transaction.

        Ids come from the database's ``SeriesIds`` cache when it is valid;
        the ids read or created here go into ``learned``, for the caller to
        add to the cache once the transaction committed. The statements are
        written by hand because they run on every batch: for 1,000 series
        peewee's query builder took 18 ms for the lookup and 130 ms for the
        insert, these take 4 ms and 24 ms.
        """
        cache = series_id_cache(db)
        known = cache.ids if cache.check(db) else {}
        ids: dict[str, int] = {}
        unknown: list[str] = []
        for spec in specs:
            found = known.get(spec.key)
            if found is None:
                unknown.append(spec.key)
            else:
                ids[spec.key] = found
        if not unknown:
            return [ids[spec.key] for spec in specs]
        looked_up = cls._ids_by_key(db, unknown)
        ids.update(looked_up)
        learned.update(looked_up)
        missing = [spec for spec in specs if spec.key not in ids]
        if not missing:
            return [ids[spec.key] for spec in specs]
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
        return [ids[spec.key] for spec in specs]

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
    def _check_streams(specs: list[_SeriesSpec]) -> None:
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
        (spec,) = _prepare([(name, value, stream, labels, at)], single=True)
        (series_id,) = cls._write([spec])
        ts, number = spec.samples
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
        """
        if isinstance(samples, (str, bytes, Mapping, Sample)):
            # One sample (or a string) is iterable too, but never what was meant.
            raise ValidationError("samples", samples, "expected an iterable of samples")
        if isinstance(samples, (str, bytes, Mapping)) or not isinstance(samples, Iterable):
            raise ValidationError("samples", samples, "expected an iterable of samples")
        items = samples if isinstance(samples, list) else list(samples)
        if not items:
            return 0
        specs = _prepare(items, single=False)
        cls._write(specs)
        return len(items)

    @classmethod
    def _write(cls, specs: list[_SeriesSpec]) -> list[int]:
        """Resolve the series and write their samples in one transaction; return the series ids."""
        db = current_database()
        count = sum(len(spec.samples) for spec in specs) // 2
        # Samples attributed to streams are manager writes: gated on this
        # process's session owning each of those streams (one statement).
        stream_ids = [spec.stream_id for spec in specs if spec.stream_id is not None]
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
                    series_ids = cls._write_specs(db, specs, learned)
            except pw.IntegrityError as exc:
                # A series vanished between its lookup and the insert: a
                # concurrent delete on PostgreSQL, or a cached id that a
                # delete made stale. Once more, with the cache dropped.
                series_id_cache(db).forget()
                if attempt == 0 and not db.in_transaction():
                    continue
                raise NotFound("metric series", [spec.key for spec in specs][:3]) from exc
            except pw.PeeweeException as exc:
                raise _wrap_database_error(db, exc, f"writing {count} metric samples") from exc
            series_id_cache(db).learn(learned, db)
            log.debug("wrote %d metric samples to %d series", count, len(specs))
            return series_ids
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _write_specs(cls, db: pw.Database, specs: list[_SeriesSpec], learned: dict[str, int]) -> list[int]:
        """The body of ``_write``, inside the caller's transaction (a tick's, or its own).

        The series ids read or created go into ``learned``, for the caller to
        hand to ``SeriesIds.learn`` after the commit.
        """
        param = db.param
        table = cls._meta.table_name
        series, ts, value = (cls.series.column_name, cls.ts.column_name, cls.value.column_name)
        sql = (
            f'INSERT INTO "{table}" ("{series}", "{ts}", "{value}") VALUES ({param}, {param}, {param}) '
            f'ON CONFLICT ("{series}", "{ts}") DO UPDATE SET "{value}" = excluded."{value}"'
        )
        count = sum(len(spec.samples) for spec in specs) // 2
        series_ids = MetricSeries._resolve(db, specs, learned)
        # Series in id order, each one's samples in the order given
        # (so the last of two samples for one millisecond wins):
        # SQLite then fills its (series, ts) b-tree in key order
        # instead of hopping across every series' leaf on each tick,
        # and concurrent PostgreSQL writers lock rows in one order.
        order = sorted(range(len(specs)), key=series_ids.__getitem__)
        if not dialect(db).is_sqlite and count >= _UNNEST_FROM:
            _insert_unnest(db, table, (series, ts, value), [(series_ids[i], specs[i].samples) for i in order])
        else:
            rows = itertools.chain.from_iterable(specs[i].rows(series_ids[i]) for i in order)
            _executemany(db, sql, rows, count)
        # Samples written behind the rollup watermark (late, or
        # replacing old values) mark their hours for re-aggregation,
        # in the same transaction, so rollups never go stale silently.
        # Imported here: the rollup models refer to MetricSeries.
        from .rollups import MetricRollupStale

        MetricRollupStale.note_late_samples(
            (series_ids[i], int(min(specs[i].samples[0::2])), int(max(specs[i].samples[0::2])))
            for i in range(len(specs))
        )
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
