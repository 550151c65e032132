"""A database behind its disk (an older backup restored) never overwrites a file it names: invariant 16.

After an operator restores last week's backup, the stream's counter is back
where it was then, while the segment files recorded since are still on disk.
The next ``begin_segment`` must neither hand out one of their names (the
recorder would truncate or rename over the footage) nor lose track of what it
skipped.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

from stream_state import Event, Recording, Restorer, Stream, open_database
from stream_state.maintenance import backup
from stream_state.states import EventType

from .sessionkit import end_sessions_of

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _record(cam: Stream, template: str, count: int, start: int = 0) -> list[Path]:
    """``count`` segments through the template, each written and completed as a recorder would."""
    paths = []
    for n in range(count):
        at = T0 + dt.timedelta(seconds=10 * (start + n))
        seg = cam.begin_segment(path_template=template, started_at=at)
        path = Path(seg.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"footage of {path.name}".encode())
        seg.complete_segment(ended_at=at + dt.timedelta(seconds=10), size_bytes=path.stat().st_size)
        paths.append(path)
    return paths


def test_a_template_skips_indexes_whose_files_exist_without_a_row(db, tmp_path):
    cam = Stream.register("cam-1", "rtsp://cam/1", recording=True)
    template = f"{tmp_path}/cam-1/{{index:05d}}.ts"
    # the disk is ahead: files 0..2 exist (recorded after the backup the database came from)
    for index in range(3):
        (tmp_path / "cam-1").mkdir(exist_ok=True)
        (tmp_path / "cam-1" / f"{index:05d}.ts").write_bytes(b"footage")

    seg = cam.begin_segment(path_template=template, started_at=T0)

    assert seg.segment_index == 3 and seg.path == f"{tmp_path}/cam-1/00003.ts"
    assert Stream.get_by_id(cam.id).next_segment_index == 4  # invariant 3: past every index skipped
    for index in range(3):  # invariant 16: nothing on disk was touched
        assert (tmp_path / "cam-1" / f"{index:05d}.ts").read_bytes() == b"footage"
    skipped = Event.select().where(Event.type == EventType.SEGMENT_INDEX_SKIPPED).get()
    assert skipped.stream_id == cam.id and skipped.severity.value == "warning"
    assert (skipped.data["first"], skipped.data["last"], skipped.data["next"]) == (0, 2, 3)
    assert "older than the disk" in skipped.message
    # the next one carries on from there, without skipping or another event
    assert cam.begin_segment(path_template=template, started_at=T0).segment_index == 4
    assert Event.select().where(Event.type == EventType.SEGMENT_INDEX_SKIPPED).count() == 1


def test_a_dangling_symlink_at_the_templated_name_is_skipped_too(db, tmp_path):
    """A link left where the next file goes would send the recording elsewhere: it counts as a file."""
    cam = Stream.register("cam-1", "rtsp://cam/1", recording=True)
    (tmp_path / "00000.ts").symlink_to(tmp_path / "nowhere.ts")
    seg = cam.begin_segment(path_template=f"{tmp_path}/{{index:05d}}.ts", started_at=T0)
    assert seg.segment_index == 1 and (tmp_path / "00000.ts").is_symlink()


def test_a_template_that_finds_no_file_costs_no_event_and_no_skip(db, tmp_path):
    cam = Stream.register("cam-1", "rtsp://cam/1", recording=True)
    rows = [cam.begin_segment(path_template=f"{tmp_path}/{{index}}.ts", started_at=T0) for _ in range(3)]
    assert [r.segment_index for r in rows] == [0, 1, 2]
    assert not Event.select().where(Event.type == EventType.SEGMENT_INDEX_SKIPPED).exists()


def test_restoring_an_older_backup_loses_no_footage(tmp_path):
    """The reported case end to end, on a SQLite file: backup, record on, restore the backup, record."""
    path = tmp_path / "state.db"
    template = f"{tmp_path}/rec/cam-1/{{index:05d}}.ts"
    db = open_database(path)
    cam = Stream.register("cam-1", "rtsp://cam/1", recording=True)
    _record(cam, template, 3)
    backup(tmp_path / "monday.db")
    later = _record(cam, template, 4, start=3)  # indexes 3..6, not in Monday's backup
    contents = {p: p.read_bytes() for p in later}
    db.close()

    shutil.copyfile(tmp_path / "monday.db", path)  # the operator restores Monday's backup
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = open_database(path)
    try:
        # Monday's manager is long gone (here it is this process: say so, as its operator would)
        end_sessions_of(db, [os.getpid()])
        state = Restorer().restore()
        assert [s.next_segment_index for s in state.streams] == [3]  # the database is behind the disk
        cam = Stream.by_name("cam-1")
        seg = cam.begin_segment(path_template=template, started_at=T0 + dt.timedelta(hours=1))
        assert seg.segment_index == 7 and not Path(seg.path).exists()
        assert {p: p.read_bytes() for p in later} == contents  # invariant 16: every later file intact
        assert Recording.select().where(Recording.stream == cam.id).count() == 4
    finally:
        db.close()
