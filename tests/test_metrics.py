"""Metrics: series identity, record / record_many, and the small query helpers.

Database tests take the ``db`` fixture, so each runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import threading

import peewee as pw
import pytest
from playhouse.test_utils import count_queries

from stream_state import (
    DatabaseUnavailable,
    MetricSample,
    MetricSeries,
    NotFound,
    StorageFull,
    Stream,
    StreamStateError,
    ValidationError,
)
from stream_state.models import metric
from stream_state.models.metric import Sample, canonical_labels, series_key
from stream_state.models.session import writer
from stream_state.timeutil import to_millis

from .factories import T0, MetricSampleFactory, MetricSeriesFactory, StreamFactory

SECOND = dt.timedelta(seconds=1)


def counts() -> tuple[int, int, int]:
    return Stream.select().count(), MetricSeries.select().count(), MetricSample.select().count()


def stored(series: MetricSeries | None = None) -> list[tuple[int, int, float]]:
    """Raw (series_id, ts, value) rows as the database holds them: ts is integer milliseconds."""
    db = MetricSample._meta.database
    sql = "SELECT series_id, ts, value FROM metric_sample"
    params: tuple = ()
    if series is not None:
        sql += f" WHERE series_id = {db.param}"
        params = (series.id,)
    return [tuple(row) for row in db.execute_sql(sql + " ORDER BY series_id, ts", params).fetchall()]


# --- pure: series identity ------------------------------------------------------------


def test_series_key_is_canonical_json_of_name_stream_and_labels():
    key = series_key("fps", 3, {"zone": "north", "codec": "h264"})
    assert key == '["fps",3,{"codec":"h264","zone":"north"}]'
    assert json.loads(key) == ["fps", 3, {"codec": "h264", "zone": "north"}]


def test_series_key_ignores_label_order_and_reads_ints_as_text():
    assert series_key("fps", 1, {"b": "2", "a": "1"}) == series_key("fps", 1, {"a": "1", "b": "2"})
    assert series_key("fps", 1, {"channel": 1}) == series_key("fps", 1, {"channel": "1"})
    assert series_key("fps", None, None) == series_key("fps", None, {}) == '["fps",null,{}]'


def test_series_key_tells_apart_stream_no_stream_and_other_labels():
    keys = {
        series_key("fps", None, {}),
        series_key("fps", 1, {}),
        series_key("fps", 2, {}),
        series_key("fps", 1, {"zone": "a"}),
        series_key("fps", 1, {"zone": "b"}),
        series_key("bitrate", 1, {}),
    }
    assert len(keys) == 6


def test_series_key_keeps_unicode_readable():
    assert (
        series_key("température", None, {"salle": "cuisine é"})
        == '["température",null,{"salle":"cuisine é"}]'
    )


def test_series_key_text_cannot_be_confused_by_separators_in_values():
    # A naive "name|stream|labels" join would make these two the same series.
    assert series_key("a|1", None, {}) != series_key("a", 1, {})
    assert series_key("m", None, {"a": '1","b":"2'}) != series_key("m", None, {"a": "1", "b": "2"})


def test_canonical_labels_sorts_and_copies():
    labels = {"z": "1", "a": 2}
    canonical = canonical_labels(labels)
    assert list(canonical.items()) == [("a", "2"), ("z", "1")]
    assert labels == {"z": "1", "a": 2}


@pytest.mark.parametrize(
    ("labels", "field"),
    [
        ({"zone": {"nested": "x"}}, "labels['zone']"),
        ({"zone": ["a"]}, "labels['zone']"),
        ({"zone": None}, "labels['zone']"),
        ({"zone": True}, "labels['zone']"),
        ({"zone": 1.5}, "labels['zone']"),
        ({"zone": ""}, "labels['zone']"),
        ({"zone": "a\nb"}, "labels['zone']"),
        ({None: "x"}, "labels[None]"),
        ({1: "x"}, "labels[1]"),
        ({"": "x"}, "labels['']"),
        ({'quo"te': "x"}, "labels['quo\"te']"),
        ({"back\\slash": "x"}, "labels['back\\\\slash']"),
        ("zone=a", "labels"),
        ([("zone", "a")], "labels"),
        ({f"k{i}": "v" for i in range(65)}, "labels"),
    ],
)
def test_bad_labels_are_refused_naming_the_label(labels, field):
    with pytest.raises(ValidationError) as info:
        series_key("fps", None, labels)
    assert info.value.field == field


@pytest.mark.parametrize(("name", "stream_id"), [("", None), (None, None), ("x" * 201, None), ("fps", -1)])
def test_series_key_validates_name_and_stream(name, stream_id):
    with pytest.raises(ValidationError):
        series_key(name, stream_id, {})


def test_sample_is_a_frozen_value():
    sample = Sample("fps", 12.5)
    assert (sample.stream, sample.labels, sample.at) == (None, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sample.value = 1.0


# --- record ---------------------------------------------------------------------------


def test_record_creates_the_series_and_stores_integer_milliseconds(db):
    cam = StreamFactory()
    at = dt.datetime(2026, 11, 26, 3, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    sample = MetricSample.record("bitrate_kbps", 4100.5, stream=cam, labels={"codec": "h264"}, at=at)

    series = MetricSeries.get()
    assert (series.name, series.stream_id, series.labels) == ("bitrate_kbps", cam.id, {"codec": "h264"})
    assert series.key == series_key("bitrate_kbps", cam.id, {"codec": "h264"})
    assert series.created_at.tzinfo is not None
    assert stored() == [(series.id, to_millis(at), 4100.5)]
    assert to_millis(at) == 1_795_658_400_123  # 02:00:00.123 UTC, microseconds dropped
    assert sample.series_id == series.id
    assert sample.ts == dt.datetime(2026, 11, 26, 2, 0, 0, 123000, tzinfo=dt.UTC)
    assert sample.value == 4100.5
    assert MetricSample.get().ts == sample.ts


def test_record_defaults_to_now(db):
    before = dt.datetime.now(dt.UTC) - SECOND
    sample = MetricSample.record("uptime_s", 5)
    assert before <= sample.ts <= dt.datetime.now(dt.UTC) + SECOND
    assert isinstance(sample.value, float)
    assert stored()[0][2] == 5.0


def test_record_finds_the_series_again_whatever_the_label_order(db):
    cam = StreamFactory()
    MetricSample.record("fps", 25.0, cam, {"a": "1", "b": "2"}, at=T0)
    MetricSample.record("fps", 24.0, cam.id, {"b": "2", "a": 1}, at=T0 + SECOND)
    assert MetricSeries.select().count() == 1
    assert [row[2] for row in stored()] == [25.0, 24.0]


def test_stream_and_no_stream_are_different_series(db):
    cam, other = StreamFactory(), StreamFactory()
    MetricSample.record("fps", 1.0, None, at=T0)
    MetricSample.record("fps", 2.0, cam, at=T0)
    MetricSample.record("fps", 3.0, other, at=T0)
    MetricSample.record("fps", 4.0, cam, {"zone": "a"}, at=T0)
    assert MetricSeries.select().count() == 4
    assert {s.stream_id for s in MetricSeries.select()} == {None, cam.id, other.id}


def test_record_replaces_the_value_at_the_same_millisecond(db):
    MetricSample.record("fps", 25.0, at=T0)
    MetricSample.record("fps", 12.0, at=T0 + dt.timedelta(microseconds=400))  # same millisecond
    MetricSample.record("fps", 13.0, at=T0 + SECOND)
    assert [(ts, value) for _, ts, value in stored()] == [(to_millis(T0), 12.0), (to_millis(T0) + 1000, 13.0)]


def test_record_uses_a_series_made_by_the_factory(db):
    series = MetricSeriesFactory(name="fps", labels={"zone": "a"})
    MetricSample.record("fps", 1.0, series.stream, {"zone": "a"}, at=T0)
    assert MetricSeries.select().count() == 1
    assert stored() == [(series.id, to_millis(T0), 1.0)]


BAD_RECORD_ARGS = [
    pytest.param({"value": math.nan}, "value", id="nan"),
    pytest.param({"value": math.inf}, "value", id="inf"),
    pytest.param({"value": -math.inf}, "value", id="-inf"),
    pytest.param({"value": "1"}, "value", id="text-value"),
    pytest.param({"value": None}, "value", id="none-value"),
    pytest.param({"value": True}, "value", id="bool-value"),
    pytest.param({"value": 10**400}, "value", id="huge-int"),
    pytest.param({"name": ""}, "name", id="empty-name"),
    pytest.param({"name": None}, "name", id="none-name"),
    pytest.param({"name": "x" * 201}, "name", id="long-name"),
    pytest.param({"at": dt.datetime(2026, 11, 26, 2, 0)}, "at", id="naive-at"),
    pytest.param({"at": "2026-11-26T02:00:00Z"}, "at", id="text-at"),
    pytest.param({"at": 1_795_600_000_000}, "at", id="int-at"),
    pytest.param({"labels": {"zone": {"x": 1}}}, "labels['zone']", id="nested-label"),
    pytest.param({"labels": {None: "a"}}, "labels[None]", id="none-label-key"),
    pytest.param({"labels": {"zone": False}}, "labels['zone']", id="bool-label"),
    pytest.param({"labels": "zone=a"}, "labels", id="text-labels"),
    pytest.param({"stream": "cam-1"}, "stream", id="stream-name"),
    pytest.param({"stream": True}, "stream", id="bool-stream"),
]


@pytest.mark.parametrize(("change", "field"), BAD_RECORD_ARGS)
def test_record_refuses_bad_input_naming_the_argument_and_writes_nothing(db, change, field):
    StreamFactory()
    MetricSample.record("fps", 1.0, at=T0)
    before = counts()
    args = {"name": "fps", "value": 2.0, "stream": None, "labels": {"zone": "b"}, "at": T0 + SECOND} | change
    with pytest.raises(ValidationError) as info:
        MetricSample.record(**args)
    assert info.value.field == field
    assert field in str(info.value)
    assert counts() == before


def test_record_for_an_unknown_stream_is_not_found_and_writes_nothing(db):
    cam = StreamFactory()
    before = counts()
    with pytest.raises(NotFound) as info:
        MetricSample.record("fps", 1.0, stream=cam.id + 100, at=T0)
    assert info.value.kind == "stream"
    assert info.value.key == cam.id + 100
    assert counts() == before


def test_record_for_an_unsaved_stream_is_refused(db):
    with pytest.raises(ValidationError) as info:
        MetricSample.record("fps", 1.0, stream=Stream(name="cam-x", uri="rtsp://x"))
    assert info.value.field == "stream"


def test_a_removed_stream_still_takes_late_samples(db):
    cam = StreamFactory(removed_at=T0)
    MetricSample.record("fps", 1.0, cam, at=T0 + SECOND)
    assert MetricSeries.get().stream_id == cam.id


# --- record_many ----------------------------------------------------------------------


def test_record_many_accepts_tuples_mappings_lists_and_samples(db):
    cam = StreamFactory()
    written = MetricSample.record_many(
        [
            ("fps", 25.0),  # now, no stream, no labels
            ("fps", 24, cam),
            ["fps", 23.5, cam.id, {"zone": "a"}],
            ("fps", 22.0, cam, {"zone": "a"}, T0),
            {"name": "bitrate_kbps", "value": 4000, "stream": cam, "at": T0},
            {"name": "bitrate_kbps", "value": 1.5},
            Sample("bitrate_kbps", 4100.0, cam, at=T0 + SECOND),
        ]
    )
    assert written == 7
    assert MetricSeries.select().count() == 5
    assert MetricSample.select().count() == 7
    zone = MetricSeries.get(MetricSeries.key == series_key("fps", cam.id, {"zone": "a"}))
    assert sorted(row[2] for row in stored(zone)) == [22.0, 23.5]


def test_record_many_reads_any_iterable_once(db):
    written = MetricSample.record_many(("load", float(i), None, None, T0 + i * SECOND) for i in range(50))
    assert written == 50
    assert [row[2] for row in stored()] == [float(i) for i in range(50)]


def test_record_many_of_nothing_writes_nothing_and_asks_nothing(db):
    with count_queries() as counter:
        assert MetricSample.record_many([]) == 0
        assert MetricSample.record_many(iter(())) == 0
    assert counter.count == 0
    assert counts() == (0, 0, 0)


@pytest.mark.parametrize("samples", ["fps", {"name": "fps", "value": 1.0}, Sample("fps", 1.0)])
def test_record_many_wants_an_iterable_of_samples(db, samples):
    with pytest.raises(ValidationError) as info:
        MetricSample.record_many(samples)
    assert info.value.field == "samples"
    assert counts() == (0, 0, 0)


def test_samples_without_time_share_one_now(db):
    MetricSample.record_many([("a", 1.0), ("b", 2.0), ("c", 3.0)])
    assert len({ts for _, ts, _ in stored()}) == 1


def test_record_many_last_sample_for_a_millisecond_wins(db):
    cam = StreamFactory()
    MetricSample.record_many([("fps", 1.0, cam, None, T0), ("fps", 9.0, cam, None, T0 + 5 * SECOND)])
    MetricSample.record_many(
        [
            ("fps", 2.0, cam, None, T0),
            ("fps", 3.0, cam.id, {}, T0),  # same series, same millisecond: replaces 2.0
            ("fps", 4.0, cam, None, T0 + SECOND),
            ("fps", 5.0, cam, None, T0 + SECOND),
            ("fps", 6.0, cam, None, T0 + SECOND),
        ]
    )
    assert [(ts - to_millis(T0), value) for _, ts, value in stored()] == [(0, 3.0), (1000, 6.0), (5000, 9.0)]


def test_record_many_reuses_existing_series_and_creates_the_rest(db):
    cams = StreamFactory.create_batch(3)
    existing = MetricSeriesFactory(name="fps", stream=cams[0], labels={"zone": "a"})
    samples = [("fps", float(t), cam, {"zone": "a"}, T0 + t * SECOND) for t in range(10) for cam in cams]
    assert MetricSample.record_many(samples) == 30
    assert MetricSeries.select().count() == 3
    assert len(stored(existing)) == 10
    for series in MetricSeries.select():
        assert series.key == series_key(series.name, series.stream_id, series.labels)
        assert series.labels == {"zone": "a"}


def test_record_many_groups_samples_right_whatever_objects_they_share(db):
    # One labels dict and one time object shared by several series, in runs and
    # interleaved, with equal but distinct objects: each sample lands in its own series.
    cams = StreamFactory.create_batch(2)
    shared = {"zone": "a"}
    at = T0 + SECOND
    samples = [
        ("fps", 1.0, cams[0], shared, T0),
        ("fps", 2.0, cams[0], shared, at),
        ("fps", 3.0, cams[1], shared, at),
        ("bitrate", 4.0, cams[1], shared, at),
        ("bitrate", 5.0, cams[1], {"zone": "a"}, T0 + 2 * SECOND),
        ("bitrate", 6.0, cams[1].id, dict(shared), T0 + 2 * SECOND + dt.timedelta(microseconds=1)),
        ("fps", 7.0, None, shared, T0),
        ("fps", 8.0, None, None, None),
        ("fps", 9.0, None, None, at),
        ("fps", 10.0, cams[0], shared, T0 + 3 * SECOND),
    ]
    MetricSample.record_many(samples)
    expected: dict[str, dict[int, float]] = {}
    for name, value, stream, labels, when in samples:
        stream_id = stream.id if isinstance(stream, Stream) else stream
        ts = to_millis(when) if when is not None else None
        expected.setdefault(series_key(name, stream_id, labels), {})[ts] = value
    got: dict[str, dict[int | None, float]] = {}
    keys = {series.id: series.key for series in MetricSeries.select()}
    for series_id, ts, value in stored():
        got.setdefault(keys[series_id], {})[None if value == 8.0 else ts] = value
    assert got == expected


def test_record_many_a_labels_dict_changed_between_calls_is_read_again(db):
    labels = {"zone": "a"}
    MetricSample.record_many([("fps", 1.0, None, labels, T0)])
    labels["zone"] = "b"
    MetricSample.record_many([("fps", 2.0, None, labels, T0)])
    assert sorted(s.labels["zone"] for s in MetricSeries.select()) == ["a", "b"]


BAD_SAMPLES = [
    pytest.param(("fps", math.nan, None, None, T0), "samples[2].value", id="nan"),
    pytest.param(("fps", math.inf, None, None, T0), "samples[2].value", id="inf"),
    pytest.param(("fps", "1", None, None, T0), "samples[2].value", id="text-value"),
    pytest.param(("fps", None, None, None, T0), "samples[2].value", id="none-value"),
    pytest.param(("fps", False, None, None, T0), "samples[2].value", id="bool-value"),
    pytest.param(("", 1.0, None, None, T0), "samples[2].name", id="empty-name"),
    pytest.param(("fps", 1.0, None, None, dt.datetime(2026, 1, 1)), "samples[2].at", id="naive-at"),
    pytest.param(("fps", 1.0, None, {"zone": 1.5}, T0), "samples[2].labels['zone']", id="float-label"),
    pytest.param(("fps", 1.0, None, {("a",): "x"}, T0), "samples[2].labels[('a',)]", id="tuple-label-key"),
    pytest.param(("fps", 1.0, "cam-1", None, T0), "samples[2].stream", id="stream-name"),
    pytest.param({"name": "fps"}, "samples[2].value", id="mapping-without-value"),
    pytest.param({"name": "fps", "value": 1.0, "when": T0}, "samples[2]", id="mapping-unknown-key"),
    pytest.param(("fps",), "samples[2]", id="short-tuple"),
    pytest.param(("fps", 1.0, None, None, T0, "extra"), "samples[2]", id="long-tuple"),
    pytest.param("fps=1", "samples[2]", id="text"),
    pytest.param(None, "samples[2]", id="none"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_SAMPLES)
def test_one_bad_sample_in_a_batch_writes_nothing_and_is_named(db, bad, field):
    cam = StreamFactory()
    MetricSeriesFactory(name="fps", stream=cam)
    before = counts()
    samples = [
        ("fps", 1.0, cam, None, T0),  # existing series
        ("new_metric", 2.0, cam, {"zone": "a"}, T0),  # would create a series
        bad,
        ("fps", 3.0, cam, None, T0 + SECOND),
    ]
    with pytest.raises(ValidationError) as info:
        MetricSample.record_many(samples)
    assert info.value.field == field
    assert str(info.value).startswith(f"invalid {field}=")
    assert counts() == before


def test_error_names_the_first_bad_sample_among_many(db):
    samples = [("fps", float(i), None, None, T0 + i * SECOND) for i in range(100)]
    samples[17] = ("fps", math.nan, None, None, T0)
    samples[60] = ("fps", "x", None, None, T0)
    with pytest.raises(ValidationError) as info:
        MetricSample.record_many(samples)
    assert info.value.field == "samples[17].value"
    assert counts() == (0, 0, 0)


def test_an_unknown_stream_in_a_batch_writes_nothing(db):
    cam = StreamFactory()
    before = counts()
    with pytest.raises(NotFound) as info:
        MetricSample.record_many(
            [("fps", 1.0, cam, None, T0), ("fps", 1.0, None, None, T0), ("fps", 2.0, cam.id + 7, None, T0)]
        )
    assert (info.value.kind, info.value.key) == ("stream", cam.id + 7)
    assert counts() == before


# --- record_many of a manager's tick: the column-wise path --------------------------------
#
# A tick (every stream's series once, one ``at``, the same labels dicts and Stream
# objects as the tick before) is validated per distinct series and per column, and
# its layout is remembered between calls. Each error must still be the one the
# sample-by-sample check raises, naming the sample and the field, with nothing written.

TICK_AT = T0 + dt.timedelta(minutes=5)
TICK_NAMES = ("fps", "kbps", "dropped", "latency_ms", "cpu")
BAD_AT = 137


def tick_samples(cams, labels, at=TICK_AT, offset=0.0):
    return [
        (name, float(k) + offset, cam, labels[i], at)
        for i, cam in enumerate(cams)
        for k, name in enumerate(TICK_NAMES)
    ]


BAD_IN_A_TICK = [
    pytest.param(1, math.nan, "value", id="nan"),
    pytest.param(1, -math.inf, "value", id="minus-inf"),
    pytest.param(1, True, "value", id="bool-value"),
    pytest.param(1, "1.5", "value", id="text-value"),
    pytest.param(1, 10**400, "value", id="int-too-large-for-a-float"),
    pytest.param(4, dt.datetime(2026, 1, 1), "at", id="naive-at"),
    pytest.param(4, dt.datetime(1969, 12, 31, tzinfo=dt.UTC), "at", id="at-before-1970"),
    pytest.param(4, 1_790_000_000_000, "at", id="epoch-ms-at"),
    pytest.param(0, "", "name", id="empty-name"),
    pytest.param(0, "fps\x00", "name", id="nul-in-name"),
    pytest.param(2, True, "stream", id="bool-stream"),
    pytest.param(2, 0, "stream", id="stream-id-zero"),
    pytest.param(3, {"pipeline": 1.5}, "labels['pipeline']", id="float-label"),
    pytest.param(3, {"pipeline": True}, "labels['pipeline']", id="bool-label"),
]


@pytest.mark.parametrize(("position", "bad", "field"), BAD_IN_A_TICK)
def test_a_bad_value_in_a_remembered_tick_is_named_and_nothing_is_written(db, position, bad, field):
    cams = StreamFactory.create_batch(40)
    labels = [{"pipeline": "main"} for _ in cams]
    MetricSample.record_many(tick_samples(cams, labels))  # the layout is remembered from here
    before = counts()
    samples = tick_samples(cams, labels, TICK_AT + SECOND)
    row = list(samples[BAD_AT])
    row[position] = bad
    samples[BAD_AT] = tuple(row)
    with pytest.raises(ValidationError) as info:
        MetricSample.record_many(samples)
    assert info.value.field == f"samples[{BAD_AT}].{field}"
    assert str(info.value).startswith(f"invalid samples[{BAD_AT}].{field}=")
    assert counts() == before


def test_a_label_changed_in_place_between_ticks_is_validated_again(db):
    cams = StreamFactory.create_batch(3)
    labels = [{"pipeline": "main"} for _ in cams]
    MetricSample.record_many(tick_samples(cams, labels))
    labels[1]["pipeline"] = True  # a bool must not borrow the validation of the text it replaced
    with pytest.raises(ValidationError) as info:
        MetricSample.record_many(tick_samples(cams, labels, TICK_AT + SECOND))
    assert info.value.field == f"samples[{len(TICK_NAMES)}].labels['pipeline']"
    labels[1]["pipeline"] = 2  # valid: stored as text, a series of its own
    MetricSample.record_many(tick_samples(cams, labels, TICK_AT + SECOND))
    assert {s.labels["pipeline"] for s in MetricSeries.select()} == {"main", "2"}
    assert MetricSeries.select().count() == 4 * len(TICK_NAMES)


def test_equal_but_new_objects_in_a_tick_are_the_same_series(db):
    cams = StreamFactory.create_batch(3)
    MetricSample.record_many(tick_samples(cams, [{"pipeline": "main"} for _ in cams]))
    # Fresh Stream objects, fresh labels dicts, stream ids instead of objects: no new series.
    again = [Stream.get_by_id(cam.id) for cam in cams]
    MetricSample.record_many(tick_samples(again, [{"pipeline": "main"} for _ in cams], TICK_AT + SECOND))
    ids = [cam.id for cam in cams]
    MetricSample.record_many(tick_samples(ids, [{"pipeline": "main"} for _ in cams], TICK_AT + 2 * SECOND))
    assert MetricSeries.select().count() == 3 * len(TICK_NAMES)
    assert MetricSample.select().count() == 3 * 3 * len(TICK_NAMES)


def test_a_stream_object_pointed_at_another_stream_writes_to_that_one(db):
    cams = StreamFactory.create_batch(2)
    labels = [None, None]
    MetricSample.record_many(tick_samples(cams, labels))
    moved = cams[0]
    first_id = moved.id
    moved.id = cams[1].id  # the object now stands for the other stream
    MetricSample.record_many(tick_samples([moved, cams[1]], labels, TICK_AT + SECOND, offset=10.0))

    def rows_of(stream_id):
        query = MetricSample.select(MetricSample.ts, MetricSample.value).join(MetricSeries)
        return sorted((to_millis(s.ts), s.value) for s in query.where(MetricSeries.stream == stream_id))

    assert len(rows_of(first_id)) == len(TICK_NAMES)  # its first tick only
    # Both halves of the second tick went to the other stream's series, the later sample winning.
    later = to_millis(TICK_AT + SECOND)
    assert [v for ts, v in rows_of(cams[1].id) if ts == later] == [10.0 + k for k in range(len(TICK_NAMES))]
    assert len(rows_of(cams[1].id)) == 2 * len(TICK_NAMES)


def test_a_tick_with_int_values_and_several_times_stores_what_one_by_one_calls_store(db):
    cams = StreamFactory.create_batch(4)
    labels = [{"pipeline": "main"} for _ in cams]
    times = [TICK_AT, None, TICK_AT + SECOND, TICK_AT]
    samples = [
        (name, k * 1000 + i if k % 2 else float(k) / 3, cam, labels[i], times[(i + k) % len(times)])
        for i, cam in enumerate(cams)
        for k, name in enumerate(TICK_NAMES)
    ]
    # A series twice in the batch, at the same millisecond: the later sample wins.
    samples.append(("fps", 99.5, cams[0], labels[0], TICK_AT))
    MetricSample.record_many(samples)
    got = {(MetricSeries.get_by_id(sid).key, ts): value for sid, ts, value in stored()}
    nows = {ts for (key, ts) in got if ts not in {to_millis(TICK_AT), to_millis(TICK_AT + SECOND)}}
    assert len(nows) == 1  # the samples without a time share one "now"
    (now,) = nows
    expected: dict[tuple[str, int], float] = {}
    for name, value, cam, lab, when in samples:
        ts = now if when is None else to_millis(when)
        expected[(series_key(name, cam.id, lab), ts)] = float(value)
    assert got == expected
    assert all(type(value) is float for _, _, value in stored())


def test_remembered_layouts_stay_within_their_bounds(db, monkeypatch):
    monkeypatch.setattr(metric, "_LAYOUTS", {})
    monkeypatch.setattr(metric, "_layout_positions", [0])
    monkeypatch.setattr(metric, "_LAYOUT_POSITIONS_MAX", 3 * len(TICK_NAMES))
    cams = StreamFactory.create_batch(5)
    for i, cam in enumerate(cams):  # a Tick per stream: a layout each
        MetricSample.record_many(tick_samples([cam], [None], TICK_AT + i * SECOND))
        MetricSample.record_many(tick_samples([cam], [None], TICK_AT + i * SECOND))  # the same one again
    assert len(metric._LAYOUTS) == 3 and metric._layout_positions == [3 * len(TICK_NAMES)]
    assert MetricSample.select().count() == 5 * len(TICK_NAMES)


def test_finite_values_whose_sum_overflows_are_accepted(db):
    MetricSample.record_many([("big", 1e308, None, None, T0), ("big2", 1e308, None, None, T0)])
    assert [value for _, _, value in stored()] == [1e308, 1e308]


def test_a_late_tick_marks_its_hours_stale_and_a_live_one_does_not(db):
    from stream_state.models.rollups import MetricRollupStale
    from stream_state.rollups import refresh_rollups

    cams = StreamFactory.create_batch(2)
    labels = [None, None]
    MetricSample.record_many(tick_samples(cams, labels, TICK_AT))
    refresh_rollups(TICK_AT + dt.timedelta(hours=3))
    MetricSample.record_many(tick_samples(cams, labels, TICK_AT + dt.timedelta(hours=4)))
    assert MetricRollupStale.select().count() == 0
    MetricSample.record_many(tick_samples(cams, labels, TICK_AT + SECOND))  # late: below the watermark
    hour = to_millis(TICK_AT) // 3_600_000 * 3_600_000
    marks = {(row.series_id, row.hour_start) for row in MetricRollupStale.select()}
    assert marks == {(s.id, hour) for s in MetricSeries.select()}


def test_record_many_query_count_does_not_grow_with_the_samples(db, monkeypatch):
    cams = StreamFactory.create_batch(2)
    for cam in cams:  # a process's first write on a stream claims it: not counted here
        writer().claim(cam)

    def batch(n: int, offset: int) -> list[tuple]:
        return [("fps", float(i), cams[i % 2], {"zone": "a"}, T0 + (offset + i) * SECOND) for i in range(n)]

    calls: list[int] = []
    original = metric._executemany

    def counting(db_, sql, rows, count):
        calls.append(count)
        return original(db_, sql, rows, count)

    monkeypatch.setattr(metric, "_executemany", counting)
    with count_queries() as small_new:
        MetricSample.record_many(batch(10, 0))
    with count_queries() as large_new:
        MetricSample.record_many([(f"m{i % 3}", *row[1:]) for i, row in enumerate(batch(3000, 10))])
    new_calls = list(calls)
    calls.clear()
    with count_queries() as small:
        MetricSample.record_many(batch(10, 5000))
    with count_queries() as large:
        MetricSample.record_many(batch(3000, 6000))

    assert small.count == large.count
    assert small_new.count == large_new.count
    # Existing series: one executemany, whatever the size; on PostgreSQL a
    # big batch is one INSERT ... SELECT FROM unnest(...) instead (one statement too).
    unnest = isinstance(db, pw.PostgresqlDatabase)
    assert calls == ([10] if unnest else [10, 3000])
    # New series: the SELECT, a stream check, the series insert, a SELECT of
    # the new ids and the samples; each executemany is one call.
    assert new_calls == ([2, 10, 6] if unnest else [2, 10, 6, 3000])
    assert MetricSample.select().count() == 6020


def test_a_failed_write_rolls_back_the_series_it_created(db, monkeypatch):
    cam = StreamFactory()
    before = counts()
    original = metric._executemany

    def fail_on_samples(db_, sql, rows, count):
        if "metric_sample" in sql:
            raise pw.OperationalError("disk I/O error")
        return original(db_, sql, rows, count)

    monkeypatch.setattr(metric, "_executemany", fail_on_samples)
    with pytest.raises(DatabaseUnavailable) as info:
        MetricSample.record_many([("fps", 1.0, cam, None, T0), ("bitrate", 2.0, None, None, T0)])
    assert isinstance(info.value.__cause__, pw.OperationalError)
    assert "disk I/O error" in str(info.value)
    assert counts() == before


def test_a_full_disk_is_storage_full(db, monkeypatch):
    def full(*args):
        raise pw.OperationalError("database or disk is full")

    monkeypatch.setattr(metric, "_executemany", full)
    with pytest.raises(StorageFull) as info:
        MetricSample.record("fps", 1.0, at=T0)
    assert isinstance(info.value, StreamStateError)
    assert counts() == (0, 0, 0)


def test_record_many_inside_a_caller_transaction_rolls_back_with_it(db):
    with pytest.raises(RuntimeError), db.atomic():
        MetricSample.record_many([("fps", 1.0, None, None, T0)])
        assert counts() == (0, 1, 1)
        raise RuntimeError("caller gives up")
    assert counts() == (0, 0, 0)


def test_concurrent_writers_create_a_series_once(db):
    threads_n, per_thread = 4, 50
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            barrier.wait()
            for chunk in range(5):
                MetricSample.record_many(
                    [
                        ("shared", float(n), None, {"zone": "a"}, T0 + (n * 1000 + chunk * 10 + i) * SECOND)
                        for i in range(per_thread // 5)
                    ]
                    + [(f"own-{n}", 1.0, None, None, T0 + chunk * SECOND)]
                )
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert MetricSeries.select().count() == 1 + threads_n
    shared = MetricSeries.get(MetricSeries.name == "shared")
    assert len(stored(shared)) == threads_n * per_thread


# --- queries --------------------------------------------------------------------------


def test_matching_selects_by_name_stream_and_a_subset_of_labels(db):
    cam, other = StreamFactory(), StreamFactory()
    a = MetricSeriesFactory(name="fps", stream=cam, labels={"zone": "a", "codec": "h264"})
    b = MetricSeriesFactory(name="fps", stream=other, labels={"zone": "a"})
    c = MetricSeriesFactory(name="fps", stream=None, labels={"zone": "b"})
    MetricSeriesFactory(name="bitrate", stream=cam, labels={"zone": "a"})

    assert list(MetricSeries.matching("fps")) == [a, b, c]
    assert list(MetricSeries.matching("fps", labels={"zone": "a"})) == [a, b]
    assert list(MetricSeries.matching("fps", cam, {"zone": "a"})) == [a]
    assert list(MetricSeries.matching("fps", other.id)) == [b]
    assert list(MetricSeries.matching("fps", labels={"zone": "a", "codec": "h264"})) == [a]
    assert list(MetricSeries.matching("fps", labels={"codec": "h265"})) == []
    assert list(MetricSeries.matching("fps").where(MetricSeries.stream.is_null())) == [c]
    assert MetricSeries.matching("fps", labels={"zone": "a"}).count() == 2


def test_matching_compares_int_labels_as_text_and_odd_keys_safely(db):
    odd = {"a.b": "1", "it's": "y", "[0]": "z", "$x y": "\\\"'"}
    series = MetricSeriesFactory(name="fps", stream=None, labels=canonical_labels(odd | {"channel": 2}))
    assert list(MetricSeries.matching("fps", labels={"channel": 2})) == [series]
    assert list(MetricSeries.matching("fps", labels=odd)) == [series]
    assert list(MetricSeries.matching("fps", labels={"a": "1"})) == []


def test_matching_validates_its_arguments(db):
    with pytest.raises(ValidationError):
        MetricSeries.matching("")
    with pytest.raises(ValidationError) as info:
        MetricSeries.matching("fps", labels={"zone": None})
    assert info.value.field == "labels['zone']"


def test_for_series_is_ordered_and_half_open(db):
    series = MetricSeriesFactory()
    other = MetricSeriesFactory(name="other")
    for t in (3, 1, 2, 0, 4):
        MetricSampleFactory(series=series, ts=T0 + t * SECOND, value=float(t))
    MetricSampleFactory(series=other, ts=T0 + 2 * SECOND, value=99.0)

    assert [s.value for s in MetricSample.for_series(series)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [s.value for s in MetricSample.for_series(series.id, since=T0 + SECOND)] == [1.0, 2.0, 3.0, 4.0]
    window = MetricSample.for_series(series, since=T0 + SECOND, until=T0 + 3 * SECOND)
    assert [s.value for s in window] == [1.0, 2.0]
    assert [s.ts for s in window] == [T0 + SECOND, T0 + 2 * SECOND]
    assert MetricSample.for_series(series, until=T0 + 3 * SECOND).count() == 3
    assert [s.value for s in MetricSample.for_series(series).limit(2)] == [0.0, 1.0]


def test_for_series_takes_a_series_query(db):
    cam = StreamFactory()
    MetricSample.record_many(
        [
            ("fps", 1.0, cam, {"zone": "a"}, T0),
            ("fps", 2.0, cam, {"zone": "b"}, T0 + SECOND),
            ("fps", 3.0, cam, {"zone": "a"}, T0 + 2 * SECOND),
            ("bitrate", 4.0, cam, {"zone": "a"}, T0),
        ]
    )
    assert [s.value for s in MetricSample.for_series(MetricSeries.matching("fps"))] == [1.0, 2.0, 3.0]
    zone_a = MetricSeries.matching("fps", labels={"zone": "a"})
    assert [s.value for s in MetricSample.for_series(zone_a, since=T0 + SECOND)] == [3.0]


def test_for_series_validates_times(db):
    series = MetricSeriesFactory()
    with pytest.raises(ValidationError) as info:
        MetricSample.for_series(series, since=dt.datetime(2026, 1, 1))
    assert info.value.field == "since"
    with pytest.raises(ValidationError) as info:
        MetricSample.for_series(series, since=T0, until=T0 - SECOND)
    assert info.value.field == "until"
    with pytest.raises(ValidationError) as info:
        MetricSample.for_series("fps")
    assert info.value.field == "series"


def test_factories_build_consistent_series(db):
    sample = MetricSampleFactory()
    series = sample.series
    assert series.key == series_key(series.name, series.stream_id, series.labels)
    assert MetricSeries.get_by_id(series.id).labels == {}
