"""check(): rows against files on the storage roots, with guards before any repair."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from stream_state import Event, Recording, SegmentState, ValidationError
from stream_state.check import MARKER_NAME, check, mark_root
from stream_state.states import EventType

from .dbdump import dump_tables
from .factories import StreamFactory

OLD = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def segment_file(stream, root, name: str, size: int = 100, *, row: bool = True, when: dt.datetime = OLD):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00" * size)
    os.utime(path, (when.timestamp() + 60, when.timestamp() + 60))
    if row:
        segment = stream.begin_segment(path, started_at=when)
        segment.complete_segment(ended_at=when + dt.timedelta(seconds=60))
        return segment
    return path


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "disk1"
    root.mkdir()
    return root


def test_state_restoration_check_reports_both_ways_and_changes_nothing(db, root):
    cam = StreamFactory(name="cam-1")
    kept = [segment_file(cam, root / "cam-1", f"{i}.mp4") for i in range(4)]
    orphan = segment_file(cam, root / "cam-1", "lost.mp4", 321, row=False)
    os.unlink(kept[0].path)
    mark_root(root)
    before = dump_tables()
    report = check([root])
    assert [(o.path, o.size_bytes, o.stream, o.action) for o in report.orphans] == [
        (str(orphan), 321, "cam-1", "reported")
    ]
    assert [(m.recording_id, m.action) for m in report.missing] == [(kept[0].id, "reported")]
    assert report.roots[0].status == "ok" and not report.clean
    assert dump_tables() == before


def test_state_restoration_check_adopts_orphans_and_marks_missing_rows(db, root):
    cam = StreamFactory(name="cam-1")
    rows = [segment_file(cam, root / "cam-1", f"{i}.mp4") for i in range(4)]
    orphan = segment_file(cam, root / "cam-1", "lost.mp4", 321, row=False)
    os.unlink(rows[0].path)
    mark_root(root)
    report = check([root], adopt_orphans=True, mark_missing=True)
    assert report.count("adopted") == 1 and report.count("marked missing") == 1
    adopted = Recording.get(Recording.path == str(orphan))
    assert (adopted.state, adopted.size_bytes, adopted.stream_id) == (SegmentState.RECOVERED, 321, cam.id)
    assert adopted.segment_index == 4, "an adopted file takes a fresh index"
    assert Recording.get_by_id(rows[0].id).state == SegmentState.MISSING
    (event,) = Event.select().where(Event.type == EventType.CHECK_REPAIRED)
    assert event.data["counts"] == {"adopted": 1, "marked missing": 1}
    assert check([root]).clean is False  # the missing row is still reported
    # The disk comes back with the file: the row is recovered.
    Path(rows[0].path).write_bytes(b"x")
    again = check([root], mark_missing=True)
    assert again.count("found again") == 1
    assert Recording.get_by_id(rows[0].id).state == SegmentState.RECOVERED


def test_state_restoration_check_deletes_orphans_only_when_asked_and_old_enough(db, root):
    cam = StreamFactory(name="cam-1")
    for i in range(4):
        segment_file(cam, root / "cam-1", f"{i}.mp4")
    old = segment_file(cam, root / "cam-1", "old-orphan.mp4", row=False)
    young = segment_file(cam, root / "cam-1", "young.mp4", row=False, when=dt.datetime.now(dt.UTC))
    mark_root(root)
    report = check([root], delete_orphans=True)
    actions = {o.path: o.action for o in report.orphans}
    assert actions == {str(old): "deleted", str(young): "too young"}
    assert not old.exists() and young.exists()


def test_state_restoration_check_refuses_to_wipe_the_index_when_a_disk_is_not_mounted(db, root):
    cam = StreamFactory(name="cam-1")
    rows = [segment_file(cam, root / "cam-1", f"{i}.mp4") for i in range(6)]
    mark_root(root)
    # The disk is unmounted: the mount point is there but empty.
    for row in rows:
        os.unlink(row.path)
    os.unlink(root / MARKER_NAME)
    before = dump_tables()
    report = check([root], mark_missing=True)
    assert report.roots[0].status == "empty"
    assert report.refused and "mounted" in report.refused[0]
    assert dump_tables()["recording"] == before["recording"]


def test_state_restoration_check_refuses_a_majority_delete_unless_forced(db, root):
    cam = StreamFactory(name="cam-1")
    rows = [segment_file(cam, root / "cam-1", f"{i}.mp4") for i in range(4)]
    mark_root(root)
    for row in rows[:3]:  # 75% gone: more than the 50% threshold
        os.unlink(row.path)
    report = check([root], drop_missing=True)
    assert report.count("refused") == 3 and Recording.select().count() == 4
    assert "more than 50%" in report.refused[0]
    forced = check([root], drop_missing=True, force=True)
    assert forced.count("dropped") == 3 and Recording.select().count() == 1


def test_state_restoration_check_recognises_a_swapped_disk(db, root):
    cam = StreamFactory(name="cam-1")
    rows = [segment_file(cam, root / "cam-1", f"{i}.mp4") for i in range(3)]
    for row in rows:
        os.unlink(row.path)
    # Another installation's disk is mounted here instead.
    (root / MARKER_NAME).write_text(json.dumps({"database_id": "someone-else"}))
    segment_file(cam, root / "other", "theirs.mp4", row=False)
    before = dump_tables()
    report = check([root], drop_missing=True, delete_orphans=True, force=True)
    assert report.roots[0].status == "foreign" and report.refused
    assert report.missing == () and report.orphans == ()
    assert dump_tables()["recording"] == before["recording"]
    assert (root / "other" / "theirs.mp4").exists()


def test_state_restoration_check_unmarked_root_needs_init(db, root):
    cam = StreamFactory(name="cam-1")
    segment_file(cam, root / "cam-1", "0.mp4")
    orphan = segment_file(cam, root / "cam-1", "x.mp4", row=False)
    report = check([root], adopt_orphans=True)
    assert report.roots[0].status == "unmarked" and report.count("adopted") == 0
    report = check([root], adopt_orphans=True, init_roots=True)
    assert report.roots[0].status == "marked" and report.count("adopted") == 1
    assert (root / MARKER_NAME).exists() and Recording.get_or_none(Recording.path == str(orphan))


def test_state_restoration_check_refuses_contradictory_flags(db, root):
    with pytest.raises(ValidationError, match="delete_orphans"):
        check([root], adopt_orphans=True, delete_orphans=True)
    with pytest.raises(ValidationError, match="storage_roots"):
        check([])
