"""factory-boy factories for every model, on a small peewee base."""

from __future__ import annotations

import datetime as dt

import factory

from stream_state import Event, MetricSample, MetricSeries, Recording, Stream
from stream_state.models.metric import series_key
from stream_state.states import SegmentState

T0 = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)


class PeeweeFactory(factory.Factory):
    """factory-boy has no maintained peewee integration; this is all it takes."""

    class Meta:
        abstract = True

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        return model_class.create(*args, **kwargs)


class StreamFactory(PeeweeFactory):
    class Meta:
        model = Stream

    name = factory.Sequence(lambda n: f"cam-{n}")
    uri = factory.Sequence(lambda n: f"rtsp://viewer:secret{n}@10.0.0.{n % 250 + 1}/stream1")
    config = factory.LazyFunction(lambda: {"fps": 15, "codec": "h264"})


class RecordingFactory(factory.Factory):
    """A segment made the way the manager makes one: ``stream.begin_segment``, then completed or failed.

    Its index is the one the stream hands out, so the stream's
    ``next_segment_index`` always moves past it (an index is never reused);
    a ``segment_index`` cannot be chosen.
    """

    class Meta:
        model = Recording

    stream = factory.SubFactory(StreamFactory)
    path = factory.LazyAttributeSequence(lambda o, n: f"/recordings/{o.stream.name}/{n:08d}.mp4")
    storage = "main"
    started_at = factory.Sequence(lambda n: T0 + dt.timedelta(seconds=60 * n))
    ended_at = factory.LazyAttribute(lambda o: o.started_at + dt.timedelta(seconds=60))
    size_bytes = 1_000_000
    state = SegmentState.COMPLETE
    archived = False
    metadata = None

    @classmethod
    def _create(cls, model_class, *args, stream, state, ended_at, size_bytes, archived, **begin):
        if args or "segment_index" in begin:
            raise TypeError("RecordingFactory: the segment index comes from the stream (begin_segment)")
        segment = stream.begin_segment(**begin)
        if state == SegmentState.COMPLETE:
            segment.complete_segment(ended_at=ended_at, size_bytes=size_bytes)
        elif state == SegmentState.FAILED:
            segment.fail("made failed by RecordingFactory", at=ended_at)
        elif state != SegmentState.RECORDING:
            raise ValueError(f"RecordingFactory makes recording, complete or failed segments, not {state!r}")
        if archived:
            # The flag alone (archive() also moves the file, which test data may not have).
            model_class.update(archived=True).where(model_class.id == segment.id).execute()
        return model_class.get_by_id(segment.id)


class EventFactory(PeeweeFactory):
    class Meta:
        model = Event

    ts = factory.Sequence(lambda n: T0 + dt.timedelta(seconds=n))
    stream = factory.SubFactory(StreamFactory)
    type = "note"
    message = factory.Sequence(lambda n: f"event {n}")


class MetricSeriesFactory(PeeweeFactory):
    class Meta:
        model = MetricSeries

    name = "bitrate_kbps"
    stream = factory.SubFactory(StreamFactory)
    labels = factory.LazyFunction(dict)
    key = factory.LazyAttribute(lambda o: series_key(o.name, o.stream.id if o.stream else None, o.labels))


class MetricSampleFactory(PeeweeFactory):
    class Meta:
        model = MetricSample

    series = factory.SubFactory(MetricSeriesFactory)
    ts = factory.Sequence(lambda n: T0 + dt.timedelta(seconds=n))
    value = factory.Sequence(lambda n: float(n))
