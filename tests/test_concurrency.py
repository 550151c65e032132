"""8 threads drive 8 streams at once: no lock errors, nothing lost."""

from __future__ import annotations

import datetime as dt
import threading

import peewee as pw

from stream_state import Event, MetricSample, Recording, SegmentState, Stream
from stream_state.states import EventType

THREADS = 8
SEGMENTS = 25
T0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)


def test_eight_threads_drive_eight_streams_without_lock_errors_or_losses(db, tmp_path):
    streams = [
        Stream.register(f"cam-{i}", f"rtsp://10.0.0.{i + 1}/s", recording=True) for i in range(THREADS)
    ]
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)
    health_cycle = ["healthy", "degraded", "healthy", "unhealthy"]

    def manager(stream: Stream) -> None:
        try:
            start.wait()
            stream.set_status("starting")
            stream.set_status("running")
            previous = None
            for i in range(SEGMENTS):
                at = T0 + dt.timedelta(seconds=10 * i)
                segment = stream.begin_segment(tmp_path / f"{stream.name}-{i}.mp4", started_at=at)
                segment.checkpoint(100 * i, at=at)
                if previous is not None:  # splitmuxsink closes N after opening N+1
                    previous.complete_segment(ended_at=at, size_bytes=1000 + i)
                previous = segment
                stream.record_health(health_cycle[i % 4], at=at)
                fps = {"name": "fps", "value": 15.0 - i % 2, "stream": stream, "labels": {"encoder": "hw"}}
                bitrate = {"name": "bitrate_kbps", "value": float(i), "stream": stream}
                MetricSample.record_many([{**fps, "at": at}, {**bitrate, "at": at}])
                Event.record("tick", stream, data={"i": i}, at=at)
            previous.complete_segment(ended_at=T0 + dt.timedelta(seconds=10 * SEGMENTS), size_bytes=7)
        except BaseException as exc:
            errors.append(exc)
        finally:
            Stream._meta.database.close()

    threads = [threading.Thread(target=manager, args=(stream,)) for stream in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert Recording.select().count() == THREADS * SEGMENTS
    assert (
        Recording.select().where(Recording.state == SegmentState.COMPLETE.value).count() == THREADS * SEGMENTS
    )
    for stream in Stream.select():
        indexes = [r.segment_index for r in Recording.for_stream(stream)]
        assert indexes == list(range(SEGMENTS)), "each stream's indexes are dense and never shared"
        assert stream.next_segment_index == SEGMENTS
        assert stream.status == "running"
    assert MetricSample.select().count() == THREADS * SEGMENTS * 2
    assert Event.select().where(Event.type == "tick").count() == THREADS * SEGMENTS
    # healthy -> degraded -> healthy -> unhealthy -> healthy ...: every step is a change.
    health_events = Event.select().where(Event.type == EventType.HEALTH_CHANGED).count()
    assert health_events == THREADS * SEGMENTS
    assert Event.select(pw.fn.COUNT(pw.fn.DISTINCT(Event.id))).scalar() == Event.select().count()
