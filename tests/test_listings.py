"""The listings the command line prints, as library calls: streams now, a metric's points, a restore."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from playhouse.test_utils import count_queries

from stream_state import MetricSample, Restorer, Stream, ValidationError
from stream_state import history as h
from stream_state.cli_output import to_json

T0 = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)
SECRET = "s3cret-pw"


def test_stream_overview_counts_open_segments_and_masks_credentials(db, tmp_path):
    cam = Stream.register("cam-1", f"rtsp://admin:{SECRET}@10.0.0.1/s", {"password": SECRET}, recording=True)
    idle = Stream.register("cam-2", "rtsp://10.0.0.2/s", enabled=False)
    gone = Stream.register("cam-0", "rtsp://10.0.0.3/s")
    gone.remove()
    first = cam.begin_segment(tmp_path / "a.ts", started_at=T0)
    cam.begin_segment(tmp_path / "b.ts", started_at=T0 + dt.timedelta(seconds=1))  # the boundary overlap
    idle.begin_segment(tmp_path / "c.ts", started_at=T0).complete_segment(T0 + dt.timedelta(seconds=2), 1)
    first.complete_segment(T0 + dt.timedelta(seconds=2), 1)

    with count_queries() as counter:
        live = h.stream_overview()
    assert counter.count == 2
    assert [(s.name, s.open_segments, s.is_recording, s.desired) for s in live] == [
        ("cam-1", 1, True, "recording"),
        ("cam-2", 0, False, "stopped"),
    ]
    assert [s.name for s in h.stream_overview(include_removed=True)] == ["cam-0", "cam-1", "cam-2"]
    shown = live[0].as_dict()
    assert shown["uri"] == "rtsp://admin:***@10.0.0.1/s" and shown["next_segment_index"] == 2
    assert SECRET not in to_json(shown) + repr(live[0])
    assert live[0].uri.endswith(f"{SECRET}@10.0.0.1/s")  # the manager's copy keeps it


def _samples(cam: Stream) -> None:
    rows = []
    for i in range(6):
        at = T0 + dt.timedelta(seconds=10 * i)
        rows += [("fps", float(i), cam, {"enc": "hw"}, at), ("fps", 10.0 + i, None, None, at)]
        rows.append(("fps", 20.0 + i, cam, {"password": SECRET}, at + dt.timedelta(milliseconds=1)))
    MetricSample.record_many(rows)


def test_metric_points_merge_the_series_by_time_and_cut_at_the_limit(db):
    cam = Stream.register("cam-1", "rtsp://10.0.0.1/s")
    _samples(cam)
    until = T0 + dt.timedelta(minutes=1)
    everything = h.metric_points("fps", T0, until)
    assert len(everything.series) == 3 and len(everything.points) == 18
    assert [(p.time, p.series_id) for p in everything.points] == sorted(
        (p.time, p.series_id) for p in everything.points
    )
    # The first N of the window, whichever series they come from.
    assert h.metric_points("fps", T0, until, limit=5).points == everything.points[:5]
    own = h.metric_points("fps", T0, until, stream="cam-1", labels={"enc": "hw"})
    assert [p.value for p in own.points] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert [s.stream for s in own.series] == ["cam-1"]
    system = everything.series_info(next(p.series_id for p in everything.points if p.value == 10.0))
    assert system.stream is None

    buckets = h.metric_points("fps", T0, until, dt.timedelta(seconds=30), stream=cam, labels={"enc": "hw"})
    assert [(b.time, b.count, b.min, b.max, b.last) for b in buckets.points] == [
        (T0, 3, 0.0, 2.0, 2.0),
        (T0 + dt.timedelta(seconds=30), 3, 3.0, 5.0, 5.0),
    ]
    shown = json.loads(to_json(everything.as_dict()))
    assert shown["bucket_seconds"] == 0.0 and len(shown["points"]) == 18
    assert SECRET not in json.dumps(shown)
    assert json.loads(to_json(buckets.as_dict()))["bucket_seconds"] == 30.0
    with pytest.raises(ValidationError, match="limit"):
        h.metric_points("fps", T0, until, limit=0)
    assert h.metric_points("nothing", T0, until).series == ()


def test_a_restored_state_as_plain_data_masks_credentials(db, tmp_path):
    cam = Stream.register("cam-1", f"rtsp://admin:{SECRET}@10.0.0.1/s", {"token": SECRET}, recording=True)
    (tmp_path / "a.ts").write_bytes(b"x" * 100)
    cam.begin_segment(tmp_path / "a.ts", started_at=T0)
    # The next run (a new session label: the recording run counts as crashed).
    state = Restorer(db, session="next-run").restore(T0 + dt.timedelta(minutes=1))
    data = state.as_dict()
    assert [s["name"] for s in data["streams"]] == ["cam-1"]
    assert data["streams"][0]["session_ended"] == "crashed"
    assert data["streams"][0]["was_recording"] is True and data["streams"][0]["next_segment_index"] == 1
    assert [(r["old_state"], r["new_state"]) for r in data["repairs"]] == [("recording", "interrupted")]
    assert data["summary"] == state.summary
    assert SECRET not in to_json(data)
    assert state.streams[0].desired == "recording"


def test_coverage_as_plain_data_has_the_gaps_and_their_reasons(db, tmp_path):
    cam = Stream.register("cam-1", "rtsp://10.0.0.1/s")
    first = cam.begin_segment(tmp_path / "a.ts", started_at=T0)
    first.complete_segment(T0 + dt.timedelta(seconds=10), 1)
    cam.record_health("unhealthy", reason="no frames", at=T0 + dt.timedelta(seconds=10))
    second = cam.begin_segment(tmp_path / "b.ts", started_at=T0 + dt.timedelta(seconds=30))
    second.complete_segment(T0 + dt.timedelta(seconds=60), 1)
    cover = h.coverage(cam, T0, T0 + dt.timedelta(seconds=60), reasons=True)
    data = json.loads(to_json(cover.as_dict()))
    assert data["window_seconds"] == 60.0 and data["recorded_seconds"] == 40.0
    [gap] = data["gaps"]
    assert (gap["start"], gap["seconds"]) == ("2026-11-26T02:00:10Z", 20.0)
    assert [r["type"] for r in gap["reasons"]] == ["health_changed"] and gap["why"]
