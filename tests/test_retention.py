"""Retention: the decisions as pure functions, then applied on both backends."""

from __future__ import annotations

import datetime as dt

import pytest

from stream_state import Event, Recording, Stream, ValidationError
from stream_state.retention import (
    Candidate,
    RetentionPolicy,
    RetentionRule,
    VolumeFloor,
    apply_retention,
    delete_recordings,
    plan_by_age,
    plan_by_size,
    plan_for_volume,
)
from stream_state.states import EventType, SegmentState

from .dbdump import dump_tables
from .factories import StreamFactory

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
DAY_MS = 86_400_000
NOW_MS = int(NOW.timestamp() * 1000)


def c(id_, days_ago, size=100, archived=False):
    return Candidate(id_, NOW_MS - int(days_ago * DAY_MS), size, archived)


# --- pure decisions -------------------------------------------------------------------------


def test_age_selects_only_unarchived_recordings_older_than_the_limit():
    rows = [c(1, 10), c(2, 8, archived=True), c(3, 7.5), c(4, 6.9), c(5, 1)]
    assert plan_by_age(rows, NOW_MS, 7) == [1, 3]
    assert plan_by_age(rows, NOW_MS, None) == []


def test_size_deletes_oldest_first_until_the_rest_fits():
    rows = [c(1, 5, 300), c(2, 4, 300, archived=True), c(3, 3, 300), c(4, 2, 300), c(5, 1, 300)]
    total = 4 * 300  # non-archived bytes
    assert plan_by_size(rows, total, 700) == [1, 3]
    assert plan_by_size(rows, total, 1200) == []
    assert plan_by_size(rows, total, 0) == [1, 3, 4, 5]
    # Bytes already freed by age retention count: only one more is needed.
    assert plan_by_size(rows, total, 700, skip=[1]) == [3]


def test_volume_frees_the_deficit_and_respects_the_archive_setting():
    rows = [c(1, 9, 500, archived=True), c(2, 8, 200), c(3, 7, 200), c(4, 6, 500, archived=True)]
    plan = plan_for_volume(rows, 300, "alarm")
    assert (plan.ids, plan.freed, plan.short_by, plan.blocked_by_archive) == ([2, 3], 400, 0, False)
    plan = plan_for_volume(rows, 1000, "alarm")
    assert (plan.ids, plan.short_by, plan.blocked_by_archive) == ([2, 3], 600, True)
    plan = plan_for_volume(rows, 1000, "delete")
    assert (plan.ids, plan.short_by) == ([2, 3, 1, 4], 0)
    assert plan_for_volume(rows, 0, "alarm").ids == []


def test_rules_layer_stream_column_over_policy_over_default():
    policy = RetentionPolicy(
        default=RetentionRule(max_age_days=30, max_bytes=10**12),
        per_stream={"cam-1": RetentionRule(max_age_days=7)},
    )
    assert policy.rule_for("cam-9", None) == RetentionRule(30, 10**12)
    assert policy.rule_for("cam-1", None) == RetentionRule(7, 10**12)
    assert policy.rule_for("cam-1", {"max_bytes": 5}) == RetentionRule(7, 5)
    with pytest.raises(ValidationError, match="retention\\['keep'\\]"):
        policy.rule_for("cam-1", {"keep": 3})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_age_days": 0}, "max_age_days"),
        ({"max_age_days": "7"}, "max_age_days"),
        ({"max_bytes": -1}, "max_bytes"),
    ],
)
def test_bad_rules_name_the_setting(kwargs, field):
    with pytest.raises(ValidationError) as info:
        RetentionRule(**kwargs)
    assert info.value.field == field


def test_bad_policy_settings():
    with pytest.raises(ValidationError, match="archived_when_full"):
        RetentionPolicy(archived_when_full="panic")
    with pytest.raises(ValidationError, match="batch_size"):
        RetentionPolicy(batch_size=10_000)


# --- applied to a database ------------------------------------------------------------------


def make_segments(stream, tmp_path, ages_days, size=100):
    rows = []
    for i, age in enumerate(ages_days):
        started = NOW - dt.timedelta(days=age, seconds=60)
        path = tmp_path / f"{stream.name}-{i}.mp4"
        path.write_bytes(b"\0" * size)
        segment = stream.begin_segment(path, started_at=started)
        segment.complete_segment(ended_at=started + dt.timedelta(seconds=60))
        rows.append(segment)
    return rows


def test_age_retention_deletes_files_and_rows_and_reports_why(db, tmp_path):
    cam = StreamFactory(name="cam-1")
    old, mid, new = make_segments(cam, tmp_path, [10, 5, 1])
    report = apply_retention(RetentionPolicy(default=RetentionRule(max_age_days=7)), now=NOW)
    assert report.segments == 1 and report.bytes == 100
    assert report.streams["cam-1"].reasons == {"age": 1}
    assert not (tmp_path / "cam-1-0.mp4").exists() and (tmp_path / "cam-1-1.mp4").exists()
    assert [r.id for r in Recording.select().order_by(Recording.id)] == [mid.id, new.id]
    (event,) = Event.select().where(Event.type == EventType.RETENTION_APPLIED)
    assert event.data["segments"] == 1 and event.data["streams"]["cam-1"]["reasons"] == {"age": 1}
    assert old.id not in {r.id for r in Recording.select()}


def test_dry_run_returns_the_same_report_and_changes_nothing(db, tmp_path):
    cam = StreamFactory(name="cam-1")
    make_segments(cam, tmp_path, [10, 9, 5, 1])
    policy = RetentionPolicy(default=RetentionRule(max_age_days=7, max_bytes=150))
    before = dump_tables()
    dry = apply_retention(policy, now=NOW, dry_run=True)
    assert dump_tables() == before and len(list(tmp_path.glob("*.mp4"))) == 4
    real = apply_retention(policy, now=NOW)
    assert dry.as_dict() | {"dry_run": False} == real.as_dict()
    assert real.streams["cam-1"].reasons == {"age": 2, "size": 1}


def test_size_retention_per_stream_with_a_stream_override(db, tmp_path):
    cam1, cam2 = StreamFactory(name="cam-1"), StreamFactory(name="cam-2", retention={"max_bytes": 250})
    make_segments(cam1, tmp_path, [4, 3, 2, 1])
    make_segments(cam2, tmp_path, [4, 3, 2, 1])
    report = apply_retention(RetentionPolicy(default=RetentionRule(max_bytes=350)), now=NOW)
    assert report.streams["cam-1"].segments == 1  # 400 bytes -> 300, within the default 350
    assert report.streams["cam-2"].segments == 2  # its own limit: 400 -> 200, within 250
    remaining = {s.name: Recording.select().where(Recording.stream == s).count() for s in Stream.select()}
    assert remaining == {"cam-1": 3, "cam-2": 2}


def test_archived_recordings_survive_every_retention_rule(db, tmp_path):
    cam = StreamFactory(name="cam-1", retention={"max_age_days": 1, "max_bytes": 0})
    segments = make_segments(cam, tmp_path, [30, 20, 10, 5])
    for segment in segments[:2]:
        segment.archive()
    policy = RetentionPolicy(
        default=RetentionRule(max_age_days=1, max_bytes=0),
        volumes=(VolumeFloor(str(tmp_path), 10**18),),  # never enough free space
        archived_when_full="alarm",
    )
    report = apply_retention(policy, now=NOW, free_bytes=lambda path: 0)
    assert {r.id for r in Recording.select()} == {segments[0].id, segments[1].id}
    assert report.alarms and "archived" in report.alarms[0]
    (event,) = Event.select().where(Event.type == EventType.RETENTION_APPLIED)
    assert event.severity == "critical"


def test_volume_floor_deletes_oldest_first_and_can_take_archived_when_told(db, tmp_path):
    cam = StreamFactory(name="cam-1")
    segments = make_segments(cam, tmp_path, [30, 20, 10, 5], size=100)
    segments[0].archive()
    floor = VolumeFloor(str(tmp_path), 1000)
    report = apply_retention(RetentionPolicy(volumes=(floor,)), now=NOW, free_bytes=lambda path: 850)
    assert report.streams["cam-1"].reasons == {f"volume:{tmp_path}": 2}
    assert [r.id for r in Recording.select().order_by(Recording.id)] == [segments[0].id, segments[3].id]
    policy = RetentionPolicy(volumes=(floor,), archived_when_full="delete")
    apply_retention(policy, now=NOW, free_bytes=lambda path: 850)
    assert [r.id for r in Recording.select()] == []


def test_open_segments_are_never_deleted(db, tmp_path):
    cam = StreamFactory()
    live = cam.begin_segment(tmp_path / "live.mp4", started_at=NOW - dt.timedelta(days=30))
    (tmp_path / "live.mp4").write_bytes(b"x")
    apply_retention(RetentionPolicy(default=RetentionRule(max_age_days=1, max_bytes=0)), now=NOW)
    assert Recording.get_by_id(live.id).state == SegmentState.RECORDING and (tmp_path / "live.mp4").exists()


def test_delete_recordings_runs_in_batches(db, tmp_path):
    cam = StreamFactory()
    segments = make_segments(cam, tmp_path, [5] * 7, size=10)
    progress = []
    freed = delete_recordings(
        [s.id for s in segments], batch_size=3, pause_seconds=0, progress=lambda *a: progress.append(a)
    )
    assert freed == 70 and Recording.select().count() == 0
    assert progress == [(3, 7), (6, 7), (7, 7)]
