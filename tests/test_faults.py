"""Issue 13: footage deleted that should not be (paths, sizes, clocks), on both backends.

Each test is the regression test of one item: it failed on the main before
the fix and passes after. The clock steps are given explicitly (``now=``,
``at=``) or by patching ``utc_now``: the machine's clock is never touched.
"""

from __future__ import annotations

import datetime as dt
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
