"""Purge, vacuum, backup, integrity and the run_due scheduler."""

from __future__ import annotations

import datetime as dt
import sqlite3
import stat

import peewee as pw
import pytest

from stream_state import Event, MetricSample, ValidationError
from stream_state.maintenance import (
    BackupNotSupported,
    Maintenance,
    UpkeepPolicy,
    backup,
    checkpoint_wal,
    incremental_vacuum,
    integrity_check,
    optimize,
    purge_events,
    purge_samples,
)
from stream_state.retention import RetentionPolicy, RetentionRule
from stream_state.states import EventType

from .factories import StreamFactory

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def days_ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


def test_purge_events_keeps_configured_types_longer(db):
    cam = StreamFactory()
    for age in (100, 95, 50, 10):
        Event.record("tick", cam, at=days_ago(age))
        Event.record("health_changed", cam, at=days_ago(age))
    report = purge_events(30, keep_types={"health_changed": 90}, now=NOW, batch_size=2, pause_seconds=0)
    assert report.events == 3 + 2
    left = sorted(
        (e.type, (NOW - e.ts).days)
        for e in Event.select().where(Event.type.not_in(["stream_registered", "stream_claimed"]))
    )
    assert left == [("health_changed", 10), ("health_changed", 50), ("tick", 10)]
    assert report.batches >= 3, "deleted in batches"


def test_purge_samples_deletes_only_old_raw_samples(db):
    cam = StreamFactory()
    per_stream = [
        {"name": "fps", "value": 1.0, "stream": cam, "at": days_ago(d)} for d in (40, 30, 20, 15, 5, 1)
    ]
    system = [{"name": "bitrate", "value": 2.0, "at": days_ago(d)} for d in (40, 2)]
    MetricSample.record_many(per_stream + system)
    report = purge_samples(14, now=NOW, batch_size=2, pause_seconds=0)
    assert report.samples == 5
    assert MetricSample.select().count() == 3


@pytest.mark.parametrize("bad", [0, -1, "7", None, True])
def test_purge_refuses_bad_ages(db, bad):
    with pytest.raises(ValidationError, match="older_than_days"):
        purge_events(bad)
    with pytest.raises(ValidationError, match="older_than_days"):
        purge_samples(bad)


def test_incremental_vacuum_gives_space_back(db):
    if not isinstance(db, pw.SqliteDatabase):
        assert incremental_vacuum().pages_freed == 0  # PostgreSQL's autovacuum does this
        return
    cam = StreamFactory()
    with db.atomic():
        for i in range(3000):
            Event.record("bulk", cam, message="x" * 500, data={"i": i})
    Event.delete().where(Event.type == "bulk").execute()
    free_before = db.execute_sql("PRAGMA freelist_count").fetchone()[0]
    assert free_before > 100
    report = incremental_vacuum(pages_per_step=100, pause_seconds=0)
    assert report.pages_freed == free_before and report.steps >= 2
    assert db.execute_sql("PRAGMA freelist_count").fetchone()[0] == 0
    assert report.bytes_freed == free_before * db.execute_sql("PRAGMA page_size").fetchone()[0]


def test_wal_checkpoint_and_optimize_run(db):
    StreamFactory()
    optimize()
    if isinstance(db, pw.SqliteDatabase):
        assert checkpoint_wal(0) is True
        assert checkpoint_wal(10**12) is False  # WAL not that big: nothing to do
    else:
        assert checkpoint_wal(0) is False


def test_backup_is_a_consistent_private_copy(db, tmp_path):
    cam = StreamFactory(name="cam-1")
    cam.record_health("healthy")
    if not isinstance(db, pw.SqliteDatabase):
        with pytest.raises(BackupNotSupported, match="pg_dump"):
            backup(tmp_path / "copy.db")
        return
    dest = backup(tmp_path / "copy.db")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    copy = sqlite3.connect(dest)
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert copy.execute("SELECT name, health FROM stream").fetchall() == [("cam-1", "healthy")]
    copy.close()


def test_integrity_check_reports_ok_and_finds_broken_references(db):
    StreamFactory()
    assert integrity_check().ok
    if isinstance(db, pw.SqliteDatabase):
        raw = sqlite3.connect(db.database)  # foreign_keys is off on a bare connection
        raw.execute("INSERT INTO event (ts, stream_id, type, severity) VALUES (0, 4242, 'x', 'info')")
        raw.commit()
        raw.close()
        report = integrity_check()
        assert not report.ok and report.foreign_key_violations


def test_run_due_runs_each_job_on_its_own_schedule_and_remembers_across_restarts(db):
    cam = StreamFactory()
    Event.record("tick", cam, at=days_ago(200))
    policy = UpkeepPolicy(retention=RetentionPolicy(default=RetentionRule(max_age_days=30)), event_days=90)
    first = Maintenance(db, policy).run_due(NOW)
    assert set(first.ran) == set(Maintenance.JOBS) and not first.failed
    assert first.ran["purge"]["events"] == 1
    assert Event.select().where(Event.type == EventType.PURGED).count() == 1

    # A restart a minute later: a new Maintenance object, nothing is due yet.
    later = Maintenance(db, policy).run_due(NOW + dt.timedelta(minutes=1))
    assert later.ran == {} and set(later.skipped) == set(Maintenance.JOBS)
    # Six minutes on, only the 5-minute jobs are due.
    six = Maintenance(db, policy).run_due(NOW + dt.timedelta(minutes=6))
    assert set(six.ran) == {"rollups", "wal_checkpoint"}
    day = Maintenance(db, policy).run_due(NOW + dt.timedelta(days=1, minutes=1))
    assert set(day.ran) == set(Maintenance.JOBS)


def test_a_failing_job_is_retried_and_does_not_stop_the_others(db, monkeypatch):
    def boom(self, now_ms):
        raise OSError("disk on fire")

    monkeypatch.setattr(Maintenance, "_run_optimize", boom)
    report = Maintenance(db).run_due(NOW)
    assert report.failed == {"optimize": "disk on fire"} and "purge" in report.ran
    monkeypatch.undo()
    again = Maintenance(db).run_due(NOW + dt.timedelta(minutes=1))
    assert set(again.ran) == {"optimize"}


def test_unknown_job_in_the_schedule_is_refused(db):
    with pytest.raises(ValidationError, match="intervals"):
        Maintenance(db, UpkeepPolicy(intervals={"defrag": 60}))
