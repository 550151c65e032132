"""Archiving: a flag that retention respects, and a crash-safe move to an archive root."""

from __future__ import annotations

import datetime as dt
import errno
import os

import pytest

from stream_state import AlreadyExists, InvalidTransition, Recording, SegmentState, ValidationError
from stream_state.models.recording import move_file
from stream_state.restore import Restorer

from .factories import StreamFactory

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def finished(stream, path, size=50, start=T0):
    path.parent.mkdir(parents=True, exist_ok=True)
    segment = stream.begin_segment(path, started_at=start)
    path.write_bytes(b"v" * size)
    return segment.complete_segment(ended_at=start + dt.timedelta(seconds=60))


def test_archive_marks_a_finished_recording(db, tmp_path):
    segment = finished(StreamFactory(), tmp_path / "a.mp4")
    segment.archive()
    stored = Recording.get_by_id(segment.id)
    assert (
        stored.archived and stored.state == SegmentState.COMPLETE and stored.path == str(tmp_path / "a.mp4")
    )


def test_an_open_segment_cannot_be_archived(db, tmp_path):
    segment = StreamFactory().begin_segment(tmp_path / "live.mp4")
    with pytest.raises(InvalidTransition):
        segment.archive()
    with pytest.raises(InvalidTransition):
        segment.archive(tmp_path / "archive")


def test_archive_moves_the_file_and_the_row_follows(db, tmp_path):
    cam = StreamFactory(name="cam-1")
    segment = finished(cam, tmp_path / "live" / "a.mp4", size=77)
    segment.archive(tmp_path / "archive", storage="cold")
    dest = tmp_path / "archive" / "cam-1" / "a.mp4"
    stored = Recording.get_by_id(segment.id)
    assert (stored.path, stored.storage, stored.archived, stored.state) == (
        str(dest),
        "cold",
        True,
        "complete",
    )
    assert dest.read_bytes() == b"v" * 77 and not (tmp_path / "live" / "a.mp4").exists()
    assert "archive" not in (stored.metadata or {})


def test_archive_across_filesystems_copies_syncs_and_renames(tmp_path, monkeypatch):
    source = tmp_path / "a.mp4"
    source.write_bytes(b"data")
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 1:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    move_file(str(source), str(tmp_path / "arch" / "a.mp4"))
    assert (tmp_path / "arch" / "a.mp4").read_bytes() == b"data" and not source.exists()
    assert calls[1] == (str(tmp_path / "arch" / "a.mp4.part"), str(tmp_path / "arch" / "a.mp4"))


def test_archive_refuses_to_overwrite(db, tmp_path):
    cam = StreamFactory(name="cam-1")
    segment = finished(cam, tmp_path / "a.mp4")
    (tmp_path / "archive" / "cam-1").mkdir(parents=True)
    (tmp_path / "archive" / "cam-1" / "a.mp4").write_bytes(b"someone else's")
    with pytest.raises(AlreadyExists):
        segment.archive(tmp_path / "archive")
    assert Recording.get_by_id(segment.id).state == SegmentState.COMPLETE


def test_archive_completed_selects_finished_old_unarchived(db, tmp_path):
    cam, other = StreamFactory(), StreamFactory()
    old = finished(cam, tmp_path / "old.mp4", start=T0)
    recent = finished(cam, tmp_path / "recent.mp4", start=T0 + dt.timedelta(days=9))
    other_old = finished(other, tmp_path / "other.mp4", start=T0)
    cam.begin_segment(tmp_path / "open.mp4", started_at=T0)
    now = T0 + dt.timedelta(days=10)
    assert Recording.archive_completed(older_than=dt.timedelta(days=7), stream=cam, now=now) == 1
    assert Recording.get_by_id(old.id).archived and not Recording.get_by_id(recent.id).archived
    assert not Recording.get_by_id(other_old.id).archived
    assert Recording.archive_completed(older_than=dt.timedelta(days=7), now=now) == 1
    with pytest.raises(ValidationError, match="older_than"):
        Recording.archive_completed(older_than=7)


# --- a crash in the middle of a move ----------------------------------------------------------


def crash_mid_archive(segment, dest_root, *, moved: bool):
    """Leave the row 'archiving' as a crash would: before or after the file moved."""
    plan = {"from": segment.path, "to": str(dest_root / "cam-1" / os.path.basename(segment.path)),
            "previous_state": "complete", "storage": "cold"}  # fmt: skip
    Recording.update(state=SegmentState.ARCHIVING, metadata={"archive": plan}).where(
        Recording.id == segment.id
    ).execute()
    os.makedirs(os.path.dirname(plan["to"]), exist_ok=True)
    if moved:
        os.rename(plan["from"], plan["to"])
    else:
        with open(plan["to"] + ".part", "wb") as handle:
            handle.write(b"half")
    return plan


def test_state_restoration_finishes_an_archive_move_whose_file_arrived(db, tmp_path):
    segment = finished(StreamFactory(name="cam-1"), tmp_path / "a.mp4")
    plan = crash_mid_archive(segment, tmp_path / "archive", moved=True)
    state = Restorer(db, session="after").restore()
    stored = Recording.get_by_id(segment.id)
    assert (stored.path, stored.state, stored.archived, stored.storage) == (
        plan["to"],
        "complete",
        True,
        "cold",
    )
    assert [r.evidence for r in state.repairs] == ["archived copy complete; move finished"]


def test_state_restoration_undoes_an_archive_move_that_did_not_finish(db, tmp_path):
    segment = finished(StreamFactory(name="cam-1"), tmp_path / "a.mp4")
    plan = crash_mid_archive(segment, tmp_path / "archive", moved=False)
    Restorer(db, session="after").restore()
    stored = Recording.get_by_id(segment.id)
    assert (stored.path, stored.state, stored.archived) == (str(tmp_path / "a.mp4"), "complete", False)
    assert not os.path.exists(plan["to"] + ".part") and (tmp_path / "a.mp4").exists()


def test_delete_file_on_an_object_loaded_before_the_move_deletes_the_moved_file(db, tmp_path):
    # The row's path is what counts, not the path an older copy of the row held.
    segment = finished(StreamFactory(name="cam-1"), tmp_path / "media" / "a.mp4", size=70)
    stale = Recording.get_by_id(segment.id)
    Recording.get_by_id(segment.id).archive(tmp_path / "archive")
    moved = tmp_path / "archive" / "cam-1" / "a.mp4"
    assert moved.exists()
    assert stale.delete_file() == 70
    assert not moved.exists() and not Recording.select().where(Recording.id == segment.id).exists()
    assert stale.path == str(moved)
