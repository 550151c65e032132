"""Media timing (migration 005): path templates, media start/end, frame count, finalised files."""

from __future__ import annotations

import datetime as dt

import pytest
from playhouse.test_utils import count_queries

from stream_state import Recording, SegmentState, Stream, ValidationError

from .dbdump import dump_tables
from .factories import StreamFactory

T0 = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)


def seconds(n: float) -> dt.timedelta:
    return dt.timedelta(seconds=n)


def test_a_path_template_names_the_file_after_the_index_taken_in_the_same_transaction(db, tmp_path):
    stream = StreamFactory(name="cam-7")
    stream.begin_segment("/elsewhere/first.mkv")  # index 0 goes to a plain path
    template = str(tmp_path / "{stream}" / "{stream}-{index:08d}.mkv")
    rows = [stream.begin_segment(path_template=template, started_at=T0) for _ in range(3)]
    assert [r.segment_index for r in rows] == [1, 2, 3]
    assert [r.path for r in rows] == [str(tmp_path / "cam-7" / f"cam-7-{i:08d}.mkv") for i in (1, 2, 3)]
    assert [Recording.get_by_id(r.id).path for r in rows] == [r.path for r in rows]
    assert Stream.get_by_id(stream.id).next_segment_index == 4


@pytest.mark.parametrize(
    "kwargs, field, why",
    [
        ({"path_template": "/rec/{stream}.mkv"}, "path_template", "{index}"),
        ({"path_template": "/rec/{root}/{index}.mkv"}, "path_template", "root"),
        ({"path_template": "/rec/{index:q}.mkv"}, "path_template", "cannot be filled"),
        ({"path_template": 7}, "path_template", "string"),
        ({"path": "/rec/a.mkv", "path_template": "/rec/{index}.mkv"}, "path", "exactly one"),
        ({}, "path", "exactly one"),
        (
            {"path": "/rec/a.mkv", "started_at": T0, "media_started_at": T0 + seconds(1)},
            "started_at",
            "media",
        ),
        ({"path": "/rec/a.mkv", "media_started_at": dt.datetime(2026, 1, 1)}, "media_started_at", ""),
    ],
)
def test_begin_segment_refuses_bad_templates_and_media_times_and_writes_nothing(db, kwargs, field, why):
    stream = StreamFactory()
    before = dump_tables()
    with pytest.raises(ValidationError) as info:
        stream.begin_segment(**kwargs)
    assert info.value.field == field
    assert why in str(info.value)
    assert dump_tables() == before


def test_media_times_are_the_rows_times_and_are_kept_as_evidence(db, tmp_path):
    stream = StreamFactory()
    segment = stream.begin_segment(path_template=str(tmp_path / "{index}.mkv"), media_started_at=T0)
    (tmp_path / "0.mkv").write_bytes(b"x" * 10)
    assert segment.started_at == T0 and segment.media_started_at == T0
    with count_queries() as complete:
        segment.complete_segment(media_ended_at=T0 + seconds(1.234), frame_count=12, finalized=True)
    assert complete.count == 1  # still the one-statement hot path
    stored = Recording.get_by_id(segment.id)
    assert stored.state == SegmentState.COMPLETE
    assert (stored.started_at, stored.ended_at) == (T0, T0 + seconds(1.234))
    assert (stored.media_started_at, stored.media_ended_at) == (T0, T0 + seconds(1.234))
    assert (stored.frame_count, stored.finalized, stored.size_bytes) == (12, True, 10)
    assert {c: getattr(segment, c) for c in stored.__data__ if c != "stream"} == {
        c: v for c, v in stored.__data__.items() if c != "stream"
    }
    # Again with the same values: harmless.
    segment.complete_segment(
        media_ended_at=T0 + seconds(1.234), frame_count=12, finalized=True, size_bytes=10
    )


def test_media_fields_ride_along_with_new_metadata(db):
    stream = StreamFactory()
    segment = stream.begin_segment("/rec/m.mkv", started_at=T0)
    segment.complete_segment(
        media_ended_at=T0 + seconds(2), frame_count=20, finalized=True, size_bytes=5, metadata={"k": 1}
    )
    stored = Recording.get_by_id(segment.id)
    assert (stored.media_started_at, stored.media_ended_at, stored.frame_count) == (None, T0 + seconds(2), 20)
    assert stored.metadata == {"k": 1} and stored.finalized is True


def test_rows_without_media_evidence_say_so(db):
    stream = StreamFactory()
    segment = stream.begin_segment("/rec/plain.mkv", started_at=T0)
    segment.complete_segment(ended_at=T0 + seconds(1), size_bytes=1)
    stored = Recording.get_by_id(segment.id)
    assert (stored.media_started_at, stored.media_ended_at, stored.frame_count, stored.finalized) == (
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"finalized": False}, "finalized"),
        ({"finalized": "yes"}, "finalized"),
        ({"frame_count": -1}, "frame_count"),
        ({"media_ended_at": T0 - seconds(1)}, "ended_at"),
        ({"ended_at": T0 + seconds(1), "media_ended_at": T0 + seconds(2)}, "ended_at"),
    ],
)
def test_complete_refuses_an_unfinalised_file_and_bad_media_values(db, kwargs, field):
    stream = StreamFactory()
    segment = stream.begin_segment("/rec/u.mp4", started_at=T0)
    before = dump_tables()
    with pytest.raises(ValidationError) as info:
        segment.complete_segment(size_bytes=1, **kwargs)
    assert info.value.field == field
    assert dump_tables() == before


# --- gaps say why ---------------------------------------------------------------------------


def test_a_gap_carries_the_events_that_explain_it(db):
    from stream_state import HealthState, history

    stream = StreamFactory()
    first = stream.begin_segment("/rec/g0.mkv", media_started_at=T0)
    first.complete_segment(media_ended_at=T0 + seconds(1.2), size_bytes=1, finalized=True)
    stream.record_health(HealthState.HEALTHY, "frames", at=T0)  # before the hole: not a reason
    stream.record_health(HealthState.UNHEALTHY, "no frames for 1.0 s", at=T0 + seconds(2.2))
    stream.record_health(HealthState.HEALTHY, "frames again after 3.1 s", at=T0 + seconds(4.3))
    second = stream.begin_segment("/rec/g1.mkv", media_started_at=T0 + seconds(4.3))
    second.complete_segment(media_ended_at=T0 + seconds(5.3), size_bytes=1, finalized=True)
    other = StreamFactory()
    other.record_health(HealthState.FAILED, "someone else's trouble", at=T0 + seconds(3))

    (gap,) = history.gaps(stream, T0, T0 + seconds(5.3))
    assert (gap.start, gap.end) == (T0 + seconds(1.2), T0 + seconds(4.3))  # media time, to the ms
    assert [r.at for r in gap.reasons] == [T0 + seconds(2.2), T0 + seconds(4.3)]
    assert "no frames for 1.0 s" in gap.why and "someone else" not in gap.why
    assert gap.reasons[0].type == "health_changed" and gap.reasons[0].stream_id == stream.id
    # A hole nobody explained has no reasons.
    (quiet,) = history.gaps(stream, T0 + seconds(5.3), T0 + seconds(9), now=T0 + seconds(9))
    assert quiet.reasons == () and quiet.why == ""
