"""The structural probe: MP4 needs its moov atom; Matroska is playable up to its last complete frame."""

from __future__ import annotations

import datetime as dt
import struct

import pytest

from stream_state.probe import MATROSKA, MP4, probe


def box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def mvhd(timescale: int, duration: int) -> bytes:
    return box(b"mvhd", bytes(4) + struct.pack(">IIII", 0, 0, timescale, duration) + bytes(80))


def mp4(*, moov: bool, duration_s: float = 2.5) -> bytes:
    parts = [box(b"ftyp", b"isom\x00\x00\x02\x00isom"), box(b"mdat", b"\x00" * 1000)]
    if moov:
        parts.append(box(b"moov", mvhd(1000, int(duration_s * 1000))))
    return b"".join(parts)


def ebml_size(n: int) -> bytes:
    return bytes([0x10]) + n.to_bytes(3, "big")  # 4-byte vint


def element(ident: int, body: bytes) -> bytes:
    return ident.to_bytes((ident.bit_length() + 7) // 8, "big") + ebml_size(len(body)) + body


def simple_block(relative_ms: int) -> bytes:
    return element(0xA3, b"\x81" + struct.pack(">h", relative_ms) + b"\x80" + b"\xff" * 50)


def mkv(frames: int, *, cues: bool, frame_ms: int = 100, cut: int = 0) -> bytes:
    header = element(0x1A45DFA3, element(0x4282, b"matroska"))
    info = element(0x1549A966, element(0x2AD7B1, (1_000_000).to_bytes(3, "big")))
    clusters = b""
    for start in range(0, frames, 10):
        blocks = b"".join(simple_block((i - start) * frame_ms) for i in range(start, min(frames, start + 10)))
        clusters += element(0x1F43B675, element(0xE7, (5000 + start * frame_ms).to_bytes(4, "big")) + blocks)
    tail = element(0x1C53BB6B, b"\x00" * 8) if cues else b""
    # Live muxing writes the Segment with an unknown size (all ones).
    data = header + (0x18538067).to_bytes(4, "big") + b"\x01" + b"\xff" * 7 + info + clusters + tail
    return data[: len(data) - cut] if cut else data


@pytest.mark.parametrize("name", ["a.mp4", "a.mov", "no-extension"])
def test_an_mp4_without_moov_is_not_playable_whatever_its_name(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(mp4(moov=False))
    found = probe(path)
    assert (found.playable, found.finalized, found.container) == (False, False, MP4)
    assert "moov" in found.reason


def test_an_mp4_with_moov_is_finalised_with_the_mvhd_duration(tmp_path):
    path = tmp_path / "b.mp4"
    path.write_bytes(mp4(moov=True, duration_s=2.5))
    found = probe(path)
    assert (found.playable, found.finalized, found.duration) == (True, True, dt.timedelta(seconds=2.5))


def test_an_mp4_cut_inside_its_mdat_is_not_playable(tmp_path):
    path = tmp_path / "c.mp4"
    data = box(b"ftyp", b"isom") + box(b"moov", mvhd(1000, 500)) + box(b"mdat", b"\x00" * 1000)
    path.write_bytes(data[:-100])
    found = probe(path)
    assert found.playable is False and "past the end" in found.reason


def test_a_finalised_matroska_file_has_cues_and_the_duration_of_its_frames(tmp_path):
    path = tmp_path / "a.mkv"
    path.write_bytes(mkv(25, cues=True))
    found = probe(path)
    assert (found.playable, found.finalized, found.container) == (True, True, MATROSKA)
    assert found.duration == dt.timedelta(seconds=2.5)  # 25 frames of 100 ms


@pytest.mark.parametrize("cut", [0, 30])
def test_an_interrupted_matroska_file_is_playable_up_to_its_last_complete_frame(tmp_path, cut):
    path = tmp_path / "b.mkv"
    path.write_bytes(mkv(23, cues=False, cut=cut))
    found = probe(path)
    assert (found.playable, found.finalized) == (True, False)
    frames = 23 if cut == 0 else 22  # the cut takes the last block
    assert found.duration == dt.timedelta(milliseconds=100 * frames)
    assert f"{frames} readable frame" in found.reason


def test_a_matroska_file_without_a_frame_is_not_playable(tmp_path):
    path = tmp_path / "c.mkv"
    path.write_bytes(mkv(0, cues=False))
    assert probe(path).playable is False


def test_missing_empty_and_unknown_files(tmp_path, monkeypatch):
    monkeypatch.setattr("stream_state.probe.discover", lambda path: None)  # as without GStreamer
    assert probe(tmp_path / "nope.mkv").reason == "file missing"
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert probe(tmp_path / "empty.mp4").playable is False
    (tmp_path / "junk.ts").write_bytes(b"not a video at all")
    unknown = probe(tmp_path / "junk.ts")
    assert unknown.playable is None and not unknown.known


# --- restore and shutdown judge open segments by what plays ------------------------------------

T0 = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)
T0_MS = int(T0.timestamp() * 1000)


def decide(playability, *, clean=False):
    from stream_state.restore import decide_open_segment

    return decide_open_segment(
        started_ms=T0_MS,
        checkpoint_ms=T0_MS + 1000,
        checkpoint_size=10,
        file_size=5000,
        file_mtime_ms=T0_MS + 9000,
        now_ms=T0_MS + 60_000,
        clean=clean,
        playability=playability,
    )


@pytest.mark.parametrize("clean", [False, True])
def test_decision_an_unplayable_file_fails_even_at_a_clean_stop(clean):
    from stream_state.probe import Playability
    from stream_state.states import SegmentState

    decision = decide(Playability(False, False, None, MP4, "no moov atom"), clean=clean)
    assert decision.state == SegmentState.FAILED and decision.finalized is False
    assert decision.evidence == "not playable: no moov atom" and decision.size_bytes == 5000


@pytest.mark.parametrize("clean", [False, True])
def test_decision_an_unfinalised_playable_file_is_interrupted_and_ends_with_its_media(clean):
    from stream_state.probe import Playability
    from stream_state.states import SegmentState

    decision = decide(Playability(True, False, dt.timedelta(seconds=1.28), MATROSKA, "cut"), clean=clean)
    assert decision.state == SegmentState.INTERRUPTED  # never complete, even at a clean stop
    assert decision.ended_ms == T0_MS + 1280 and decision.evidence.startswith("1.280 s of playable media")


def test_decision_a_finalised_file_is_complete_and_an_unknown_one_keeps_the_old_judgement():
    from stream_state.probe import UNKNOWN, Playability
    from stream_state.states import SegmentState

    whole = decide(Playability(True, True, dt.timedelta(seconds=2), MP4, "moov atom present"))
    assert (whole.state, whole.ended_ms, whole.finalized) == (SegmentState.COMPLETE, T0_MS + 2000, True)
    unknown = decide(UNKNOWN)
    assert (unknown.state, unknown.ended_ms, unknown.evidence) == (
        SegmentState.INTERRUPTED,
        T0_MS + 9000,
        "file mtime",
    )
    assert decide(UNKNOWN, clean=True).state == SegmentState.COMPLETE


def test_restore_fails_an_unfinalised_mp4_and_keeps_an_interrupted_matroska_with_its_media(db, tmp_path):
    from stream_state import Recording, Restorer, SegmentState

    from .factories import StreamFactory

    stream = StreamFactory()
    template = str(tmp_path / "{index}")
    mp4_row = stream.begin_segment(path_template=template + ".mp4", media_started_at=T0)
    mkv_row = stream.begin_segment(path_template=template + ".mkv", media_started_at=T0)
    (tmp_path / "0.mp4").write_bytes(mp4(moov=False))
    (tmp_path / "1.mkv").write_bytes(mkv(17, cues=False))
    # The next run (a new session label: the recording run counts as crashed).
    state = Restorer(db, session="next-run").restore(now=T0 + dt.timedelta(minutes=1))
    by_path = {r.path: r for r in state.repairs}
    assert by_path[mp4_row.path].new_state == SegmentState.FAILED
    assert "moov" in by_path[mp4_row.path].evidence
    failed, interrupted = Recording.get_by_id(mp4_row.id), Recording.get_by_id(mkv_row.id)
    assert (failed.state, failed.finalized) == (SegmentState.FAILED, False)
    assert (interrupted.state, interrupted.finalized) == (SegmentState.INTERRUPTED, False)
    assert interrupted.ended_at - interrupted.started_at == dt.timedelta(seconds=1.7)
    assert (tmp_path / "0.mp4").exists()  # kept for an operator's recovery tools


def test_shutdown_never_completes_a_file_its_muxer_did_not_finalise(db, tmp_path):
    from stream_state import Recording, Restorer, SegmentState

    from .factories import StreamFactory

    stream = StreamFactory()
    rows = [stream.begin_segment(tmp_path / name, started_at=T0) for name in ("a.mp4", "b.mkv", "c.mkv")]
    (tmp_path / "a.mp4").write_bytes(mp4(moov=False))
    (tmp_path / "b.mkv").write_bytes(mkv(9, cues=False))
    (tmp_path / "c.mkv").write_bytes(mkv(9, cues=True))
    Restorer(db).shutdown(now=T0 + dt.timedelta(minutes=1))
    states = [Recording.get_by_id(r.id).state for r in rows]
    assert states == [SegmentState.FAILED, SegmentState.INTERRUPTED, SegmentState.COMPLETE]


def test_check_with_a_probe_reports_rows_that_do_not_play_and_adopts_only_what_plays(db, tmp_path):
    import os

    from stream_state import Recording, SegmentState
    from stream_state.check import check
    from stream_state.probe import probe as default_probe

    from .factories import StreamFactory

    stream = StreamFactory(name="cam-9")
    root = tmp_path / "root"
    (root / "cam-9").mkdir(parents=True)
    broken = root / "cam-9" / "cam-9-0.mp4"
    broken.write_bytes(mp4(moov=False))
    row = stream.begin_segment(broken, started_at=T0)
    row.complete_segment(ended_at=T0 + dt.timedelta(seconds=2), size_bytes=len(mp4(moov=False)))
    good_orphan, bad_orphan = root / "cam-9" / "cam-9-7.mkv", root / "cam-9" / "cam-9-8.mp4"
    good_orphan.write_bytes(mkv(15, cues=True))
    bad_orphan.write_bytes(mp4(moov=False))
    ended = T0 + dt.timedelta(minutes=5)
    for path in (good_orphan, bad_orphan):
        os.utime(path, (ended.timestamp(), ended.timestamp()))

    plain = check([root], init_roots=True, now=T0 + dt.timedelta(hours=1))
    assert plain.unplayable == ()  # without a probe no file is opened
    report = check([root], adopt_orphans=True, now=T0 + dt.timedelta(hours=1), probe=default_probe)
    (unplayable,) = report.unplayable
    assert (unplayable.recording_id, unplayable.state) == (row.id, SegmentState.COMPLETE)
    assert "moov" in unplayable.reason and not report.clean
    actions = {os.path.basename(o.path): o.action for o in report.orphans}
    assert actions == {"cam-9-7.mkv": "adopted", "cam-9-8.mp4": "unplayable"}
    adopted = Recording.get(Recording.path == str(good_orphan))
    assert adopted.state == SegmentState.RECOVERED and adopted.finalized is True
    assert (adopted.started_at, adopted.ended_at) == (ended - dt.timedelta(seconds=1.5), ended)
    assert not Recording.select().where(Recording.path == str(bad_orphan)).exists()
