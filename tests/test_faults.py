"""Issue 13: footage deleted that should not be (paths, sizes, clocks), on both backends.

Each test is the regression test of one item: it failed on the main before
the fix and passes after. The clock steps are given explicitly (``now=``,
``at=``) or by patching ``utc_now``: the machine's clock is never touched.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

import pytest

from stream_state import Recording, SegmentState, Stream, ValidationError
from stream_state.check import check, mark_root
from stream_state.database import rollback_one, schema_version

from .dbdump import dump_tables

OLD = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _file(path: Path, size: int, when: dt.datetime = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x01" * size)
    os.utime(path, (when.timestamp() + 60, when.timestamp() + 60))
    return path


# --- 1: paths ---------------------------------------------------------------------------------


def test_paths_are_stored_absolute_and_normalised_and_relative_ones_refused(db, tmp_path, monkeypatch):
    cam = Stream.register("cam-1", "rtsp://cam/1", recording=True)
    seg = cam.begin_segment(f"{tmp_path}//disk1/./cam-1/../cam-1/0.ts", started_at=OLD)
    assert seg.path == f"{tmp_path}/disk1/cam-1/0.ts"
    assert Recording.get_by_id(seg.id).path == seg.path
    templated = cam.begin_segment(path_template=f"{tmp_path}//disk1/cam-1/{{index:04d}}.ts", started_at=OLD)
    assert templated.path == f"{tmp_path}/disk1/cam-1/0001.ts"
    monkeypatch.chdir(tmp_path)
    before = dump_tables()
    for bad in ("cam-1/2.ts", Path("cam-1/2.ts"), "./2.ts"):
        with pytest.raises(ValidationError, match="absolute path") as info:
            cam.begin_segment(bad, started_at=OLD)
        assert info.value.field == "path"
    with pytest.raises(ValidationError, match="absolute path"):
        cam.begin_segment(path_template="rec/{index}.ts", started_at=OLD)
    assert dump_tables() == before
    seg.complete_segment(ended_at=OLD + dt.timedelta(seconds=10), size_bytes=1)
    with pytest.raises(ValidationError, match="absolute path") as info:
        seg.archive("relative/archive")
    assert info.value.field == "dest_root" and not (tmp_path / "relative").exists()
    assert Recording.get_by_id(seg.id).archived is False


def test_check_with_a_trailing_slash_root_deletes_nothing_and_reports_spellings(db, tmp_path):
    """The reported loss: rows spelled /media/disk1//cam-1/x.ts, check ROOT --delete-orphans."""
    root = tmp_path / "disk1"
    cam = Stream.register("cam-1", "rtsp://cam/1", recording=True)
    rows = []
    for i in range(20):
        path = _file(root / "cam-1" / f"{i}.ts", 1000)
        seg = cam.begin_segment(path, started_at=OLD + dt.timedelta(minutes=i))
        seg.complete_segment(ended_at=OLD + dt.timedelta(minutes=i, seconds=50), size_bytes=1000)
        rows.append(seg)
    # Rows written by an older version with the root configured as ".../disk1/".
    for seg in rows[:10]:
        Recording.update(path=seg.path.replace("/disk1/", "/disk1//")).where(Recording.id == seg.id).execute()
    mark_root(root)
    report = check([str(root) + "/"], delete_orphans=True, drop_missing=True, force=True)
    assert all(Path(seg.path).exists() for seg in rows), "no file with a row was deleted"
    assert report.orphans == () and report.missing == ()
    assert len(report.spellings) == 10 and {p.action for p in report.spellings} == {"reported"}
    assert not report.clean
    fixed = check([root], fix_spellings=True)
    assert {p.action for p in fixed.spellings} == {"fixed"}
    assert check([root]).clean
    assert {r.path for r in Recording.select()} == {seg.path for seg in rows}


def test_migration_004_normalises_existing_paths(backend, tmp_path):
    db = backend.open()
    try:
        cam = Stream.register("cam-1", "rtsp://cam/1", recording=True)
        a = cam.begin_segment(tmp_path / "a.ts", started_at=OLD)
        b = cam.begin_segment(tmp_path / "b.ts", started_at=OLD)
        clash = cam.begin_segment(tmp_path / "c.ts", started_at=OLD)
        while schema_version(db) >= "004_faults":
            rollback_one(db)
        spelled = {a.id: f"{tmp_path}//a.ts", b.id: f"{tmp_path}/x/../b.ts", clash.id: f"{tmp_path}/./a.ts"}
        for rec_id, path in spelled.items():
            db.execute_sql(f"UPDATE recording SET path = {db.param} WHERE id = {db.param}", (path, rec_id))
        from stream_state.database import migrate_to_head

        migrate_to_head(db)
        paths = dict(db.execute_sql("SELECT id, path FROM recording").fetchall())
        assert paths[a.id] == f"{tmp_path}/a.ts" and paths[b.id] == f"{tmp_path}/b.ts"
        assert paths[clash.id] == f"{tmp_path}/./a.ts", "a clash is left for check to report"
    finally:
        db.close_all() if hasattr(db, "close_all") else db.close()


# --- 2: sizes and empty files behind failed rows -----------------------------------------------


def test_check_compares_sizes_and_finds_empty_files_behind_failed_rows(db, tmp_path):
    root = tmp_path / "disk1"
    cam = Stream.register("cam-1", "rtsp://cam/1", recording=True)
    good = cam.begin_segment(_file(root / "cam-1" / "0.ts", 500), started_at=OLD)
    good.complete_segment(ended_at=OLD + dt.timedelta(seconds=10), size_bytes=500)
    wrong = cam.begin_segment(_file(root / "cam-1" / "1.ts", 190_987), started_at=OLD)
    wrong.complete_segment(ended_at=OLD + dt.timedelta(seconds=20), size_bytes=63_779)
    failed = cam.begin_segment(root / "cam-1" / "2.ts", started_at=OLD)
    failed.fail("camera went away", at=OLD + dt.timedelta(seconds=21))
    _file(root / "cam-1" / "2.ts", 0)
    mark_root(root)
    report = check([root])
    assert [(m.recording_id, m.row_bytes, m.file_bytes, m.action) for m in report.sizes] == [
        (wrong.id, 63_779, 190_987, "reported")
    ]
    assert [(e.recording_id, e.action) for e in report.empty_failed] == [(failed.id, "reported")]
    assert not report.clean
    repaired = check([root], fix_sizes=True, remove_empty_failed=True)
    assert repaired.count("fixed") == 1 and repaired.count("removed") == 1
    assert Recording.get_by_id(wrong.id).size_bytes == 190_987
    assert not (root / "cam-1" / "2.ts").exists()
    assert Recording.get_by_id(failed.id).state == SegmentState.FAILED
    assert check([root]).clean


def test_cli_check_reports_and_repairs_sizes(db, tmp_path, backend):
    from click.testing import CliRunner

    from stream_state.cli import cli
    from stream_state.models import database_proxy

    if backend.name != "sqlite":
        pytest.skip("the CLI half runs on the SQLite file; the library half runs on both")
    root = tmp_path / "disk1"
    cam = Stream.register("cam-1", "rtsp://cam/1", recording=True)
    seg = cam.begin_segment(_file(root / "cam-1" / "1.ts", 190_987), started_at=OLD)
    seg.complete_segment(ended_at=OLD + dt.timedelta(seconds=20), size_bytes=63_779)
    mark_root(root)
    previous = database_proxy.obj
    database_proxy.initialize(None)
    try:
        result = CliRunner().invoke(cli, ["--db", db.database, "check", str(root)])
        assert result.exit_code == 3 and "size differs" in result.output, result.output
        result = CliRunner().invoke(cli, ["--db", db.database, "check", str(root), "--fix-sizes"])
        assert result.exit_code == 0 and "fixed" in result.output, result.output
    finally:
        database_proxy.initialize(previous)
    assert Recording.get_by_id(seg.id).size_bytes == 190_987


# --- 3: the clock stepped forward ------------------------------------------------------------

T = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _segments(cam, root: Path, starts: list[dt.datetime], length=dt.timedelta(seconds=50)):
    made = []
    for start in starts:
        path = _file(root / f"{cam.name}-{len(made)}-{int(start.timestamp())}.ts", 10, start)
        seg = cam.begin_segment(path, started_at=start)
        seg.complete_segment(ended_at=start + length, size_bytes=10)
        made.append(seg)
    return made


def test_a_last_run_in_the_future_counts_as_due_and_is_logged(db, caplog):
    from stream_state.maintenance import Maintenance, UpkeepPolicy

    policy = UpkeepPolicy(intervals={"wal_checkpoint": 300, "optimize": 86400})
    upkeep = Maintenance(db, policy)
    upkeep.run_due(now=T + 40 * DAY)  # the clock was 40 days ahead
    with caplog.at_level(logging.WARNING, logger="stream_state.maintenance"):
        report = upkeep.run_due(now=T + dt.timedelta(minutes=1))  # and came back
    assert set(report.ran) == {"wal_checkpoint", "optimize"} and not report.skipped
    assert "clock stepped back" in caplog.text
    assert upkeep.last_runs()["optimize"] == int((T + dt.timedelta(minutes=1)).timestamp() * 1000)


def test_age_retention_with_the_clock_40_days_ahead_keeps_what_the_evidence_calls_recent(db, tmp_path):
    from stream_state.maintenance import Maintenance, UpkeepPolicy
    from stream_state.retention import RetentionPolicy, RetentionRule

    cam = Stream.register("cam-1", "rtsp://cam/1", recording=True)
    old = _segments(cam, tmp_path, [T - 35 * DAY, T - 31 * DAY])
    recent = _segments(cam, tmp_path, [T - 10 * DAY, T - dt.timedelta(minutes=2)])  # the last ended 1 min ago
    upkeep = Maintenance(
        db,
        UpkeepPolicy(
            retention=RetentionPolicy(RetentionRule(max_age_days=30)), intervals={"retention": 3600}
        ),
    )
    report = upkeep.run_due(now=T + 40 * DAY)
    kept = {r.id for r in Recording.select()}
    assert kept == {s.id for s in recent}, "only what is old by the evidence went"
    assert not any(Path(s.path).exists() for s in old) and all(Path(s.path).exists() for s in recent)
    retention = report.ran["retention"]
    assert "ahead of the newest write" in retention["clock"] and retention["alarms"]


# --- 4: the clock from 1970 at boot, then NTP --------------------------------------------------

BOOT = dt.datetime(1970, 1, 1, 0, 5, tzinfo=dt.UTC)


def test_implausible_segments_are_flagged_never_bound_a_range_query_and_go_by_index(db, tmp_path):
    from stream_state import history
    from stream_state.history.segments import _bound_sql
    from stream_state.retention import RetentionPolicy, RetentionRule, apply_retention

    cam = Stream.register("cam-1", "rtsp://cam/1", recording=True)
    before_boot = _segments(cam, tmp_path, [T - 40 * DAY, T - 39 * DAY])  # old, believable
    booted = _segments(cam, tmp_path, [BOOT, BOOT + dt.timedelta(minutes=1)])  # newest footage, 1970 times
    across = cam.begin_segment(tmp_path / "across.ts", started_at=BOOT + dt.timedelta(minutes=2))
    _file(Path(across.path), 10)
    across.complete_segment(ended_at=T, size_bytes=10)  # NTP stepped the clock mid-segment
    after = _segments(cam, tmp_path, [T + dt.timedelta(minutes=1)])
    stored = {r.id: r.clock_suspect for r in Recording.select()}
    assert [stored[s.id] for s in booted] == ["before_2000", "before_2000"]
    assert stored[across.id] == "too_long"  # 56 years long (its start was suspect already)
    assert all(stored[s.id] is None for s in before_boot + after)
    long_one = cam.begin_segment(tmp_path / "long.ts", started_at=T + dt.timedelta(hours=1))
    long_one.complete_segment(ended_at=T + dt.timedelta(hours=30), size_bytes=1)
    assert Recording.get_by_id(long_one.id).clock_suspect == "too_long"
    # The range queries' lower bound ignores them: a 56-year segment does not widen every scan.
    p = db.param
    bound = db.execute_sql(f"SELECT {_bound_sql(p)}", (cam.id,)).fetchone()[0]
    assert bound == 120_000
    window = history.recordings(cam, T, T + dt.timedelta(minutes=10))
    assert [r.id for r in window] == [after[0].id]
    # Age retention (30 days, the clock right again): the 1970 segments were recorded after
    # the believable ones, so they go only with footage newer than them.
    report = apply_retention(RetentionPolicy(RetentionRule(max_age_days=30)), now=T + dt.timedelta(hours=31))
    remaining = {r.id for r in Recording.select()}
    assert {s.id for s in before_boot}.isdisjoint(remaining)
    assert {s.id for s in booted} <= remaining and across.id in remaining
    assert report.segments == 2


def test_a_streams_segments_are_re_dated_after_a_clock_fix_from_python_and_the_cli(db, tmp_path, backend):
    from stream_state.clock import redate, suspect_segments

    cam = Stream.register("cam-1", "rtsp://cam/1", recording=True)
    booted = _segments(cam, tmp_path, [BOOT, BOOT + dt.timedelta(minutes=1)])
    shift = T - BOOT
    assert [s.id for s in suspect_segments(cam)] == [s.id for s in booted]
    report = redate("cam-1", shift, first_index=booted[0].segment_index, last_index=booted[1].segment_index)
    assert (report.segments, report.still_suspect) == (2, 0)
    moved = Recording.get_by_id(booted[1].id)
    assert moved.started_at == T + dt.timedelta(minutes=1) and moved.clock_suspect is None
    assert moved.ended_at == T + dt.timedelta(minutes=1, seconds=50)
    assert list(suspect_segments(cam)) == []
    with pytest.raises(ValidationError):
        redate("cam-1", dt.timedelta(0))
    if backend.name == "sqlite":
        from click.testing import CliRunner

        from stream_state.cli import cli
        from stream_state.models import database_proxy

        previous = database_proxy.obj
        database_proxy.initialize(None)
        try:
            args = ["--db", db.database, "redate", "cam-1", "--by", "-1h", "--from-index", "1", "--json"]
            result = CliRunner().invoke(cli, args)
        finally:
            database_proxy.initialize(previous)
        assert result.exit_code == 0, result.output
        assert '"segments": 1' in result.output
        assert Recording.get_by_id(booted[1].id).started_at == T - dt.timedelta(minutes=59)


# --- 5: the clock stepped back a little -----------------------------------------------------------


def test_a_defaulted_now_before_the_start_is_clamped_and_noted(db, tmp_path, monkeypatch):
    import stream_state.models.recording as recording_module

    cam = Stream.register("cam-1", "rtsp://cam/1", recording=True)
    seg = cam.begin_segment(_file(tmp_path / "a.ts", 1234), started_at=T)
    monkeypatch.setattr(recording_module, "utc_now", lambda: T - dt.timedelta(seconds=2))  # NTP stepped back
    seg.checkpoint(1000)
    stored = Recording.get_by_id(seg.id)
    assert stored.checkpoint_at == T and stored.size_bytes == 1000
    assert "checkpoint_at" in stored.metadata["clock_clamped"]
    seg.complete_segment()
    stored = Recording.get_by_id(seg.id)
    assert stored.state == SegmentState.COMPLETE and stored.ended_at == T and stored.size_bytes == 1234
    assert set(stored.metadata["clock_clamped"]) == {"checkpoint_at", "ended_at"}
    # What the caller passed explicitly is still refused, naming it.
    other = cam.begin_segment(tmp_path / "b.ts", started_at=T)
    with pytest.raises(ValidationError) as info:
        other.complete_segment(ended_at=T - dt.timedelta(seconds=2), size_bytes=1)
    assert info.value.field == "ended_at"
    with pytest.raises(ValidationError) as info:
        other.checkpoint(1, at=T - dt.timedelta(seconds=1))
    assert info.value.field == "at"


# --- 15: restore commits in batches and finishes what a killed run left ---------------------------


def test_restore_repairs_in_batches_and_a_run_killed_halfway_finishes_next_time(db, tmp_path, monkeypatch):
    from stream_state import Event
    from stream_state.models import Session
    from stream_state.restore import Restorer

    from .sessionkit import expire

    cam = Stream.register("cam-1", "rtsp://cam/1", recording=True)
    recorder = Session.open(register=False)  # the manager that will crash
    with recorder.acting():
        for i in range(35):
            cam.begin_segment(_file(tmp_path / f"{i}.ts", 100, T), started_at=T + dt.timedelta(seconds=i))
    expire(
        db, recorder
    )  # its lease runs out: restore repairs only what dead sessions left (invariants 7, 15)
    monkeypatch.setattr(Restorer, "REPAIR_BATCH", 10)
    real = Restorer._commit_batch
    batches = []

    def killed_after_two(self, repairs, now_ms, kind):
        if len(batches) == 2:
            raise KeyboardInterrupt("killed")  # the process dies between two batches
        batches.append(len(repairs))
        real(self, repairs, now_ms, kind)

    monkeypatch.setattr(Restorer, "_commit_batch", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        Restorer(db).restore(now=T + DAY)
    assert batches == [10, 10]
    assert Recording.select().where(Recording.ended_at.is_null()).count() == 15
    monkeypatch.setattr(Restorer, "_commit_batch", real)
    state = Restorer(db).restore(now=T + DAY)
    assert len(state.repairs) == 15
    assert Recording.select().where(Recording.ended_at.is_null()).count() == 0
    assert Event.select().where(Event.type == "segment_repaired").count() == 35, "one event per repair"
