"""``stream-state demo``: a real child process, a real SIGKILL, a real restore."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest
from click.testing import CliRunner

from stream_state import Event, Recording, SegmentState, Stream, open_database
from stream_state.cli import cli
from stream_state.restore import Restorer
from stream_state.states import EventType


def section(output: str, heading: str) -> list[str]:
    """The table rows under the line starting with ``heading``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 2 :]:  # skip the heading and the table's header
        if not line.strip():
            break
        rows.append(line.split())
    return rows


@pytest.mark.skipif(sys.platform == "win32", reason="the demo kills its recorder with SIGKILL")
def test_demo_kills_a_recorder_mid_segment_and_restores_it(tmp_path):
    workdir = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--dir", str(workdir)])
    assert result.exit_code == 0, result.output
    out = result.stdout

    assert "SIGKILL: the recorder died in the middle of its segments" in out
    assert "Restored after a crash" in out
    assert "demo-password" not in result.output and "demo-token" not in result.output
    assert "rtsp://admin:***@192.0.2.10:554/stream1" in out

    streams = {row[0]: row for row in section(out, "Streams to bring back")}
    assert set(streams) == {"front-door", "garage", "lobby"}
    assert all(row[2:4] == ["recording", "yes"] for row in streams.values())

    repairs = {row[0]: row for row in section(out, "Repaired 3 segment(s)")}
    assert repairs["front-door"][2:4] == ["recording", "interrupted"] and repairs["front-door"][-2:] == [
        "file",
        "mtime",
    ]
    assert repairs["lobby"][3] == "interrupted"
    assert repairs["garage"][3] == "failed" and repairs["garage"][-2:] == ["file", "missing"]

    gaps = section(out, "Gaps between")
    assert [row[0] for row in gaps if "unhealthy" in row] == ["lobby"]
    assert {row[0] for row in gaps if row[-4:] == ["down:", "killed,", "then", "restarted"]} == {
        "front-door",
        "garage",
        "lobby",
    }
    usage = {row[0]: row for row in section(out, "Storage used")}
    assert usage["total"][1] == "11"
    assert f"Files are in {workdir}" in out

    db = open_database(f"sqlite:///{workdir / 'state.db'}", migrate=False)
    try:
        assert Recording.open_segments().count() == 0, "no segment is left recording"
        rows = list(Recording.select(Recording, Stream.name).join(Stream).order_by(Recording.id))
        by_state = {}
        for row in rows:
            by_state.setdefault(row.state, []).append(row)
        assert sorted(r.stream.name for r in by_state[SegmentState.INTERRUPTED]) == ["front-door", "lobby"]
        assert [r.stream.name for r in by_state[SegmentState.FAILED]] == ["garage"]
        assert not os.path.exists(by_state[SegmentState.FAILED][0].path)
        for row in by_state[SegmentState.INTERRUPTED] + by_state[SegmentState.COMPLETE]:
            assert row.size_bytes == os.path.getsize(row.path) > 0, row.path
            assert row.ended_at >= row.started_at
        assert Event.select().where(Event.type == EventType.SEGMENT_REPAIRED.value).count() == 3
        for stream in Stream.select():
            indexes = [r.segment_index for r in rows if r.stream.name == stream.name]
            assert sorted(indexes) == list(range(len(indexes)))
            assert stream.next_segment_index == len(indexes)
        # The restarted manager stopped cleanly: the next start sees no crash.
        assert Restorer(db, session="next").restore(dry_run=True).clean_shutdown is True
    finally:
        db.close()


@pytest.mark.skipif(sys.platform == "win32", reason="the demo kills its recorder with SIGKILL")
def test_demo_removes_its_temporary_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().splitlines()[-1].startswith(f"Removed {tmp_path}")
    assert list(tmp_path.iterdir()) == []


def test_demo_says_in_one_line_when_the_recorder_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")
    result = CliRunner().invoke(cli, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr == "error: the demo recorder exited with status 1 before 'ready': no output\n"
    assert f"Files are in {tmp_path} (see recorder.log)" in result.stdout
