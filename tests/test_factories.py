"""The test factories make data the package itself could have written."""

from __future__ import annotations

import pytest

from stream_state.models import Recording, Stream
from stream_state.states import SegmentState

from .factories import RecordingFactory, StreamFactory


def test_recording_factory_takes_the_index_from_the_stream_and_advances_it(db):
    stream = StreamFactory()
    made = [
        RecordingFactory(stream=stream),
        RecordingFactory(stream=stream, state=SegmentState.RECORDING),
        RecordingFactory(stream=stream, state=SegmentState.FAILED),
        RecordingFactory(stream=stream, archived=True),
    ]
    assert [r.segment_index for r in made] == [0, 1, 2, 3]
    assert Stream.get_by_id(stream.id).next_segment_index == 4
    assert [r.state for r in made] == ["complete", "recording", "failed", "complete"]
    assert [r.archived for r in made] == [False, False, False, True]
    # Every stream's counter is past every index it handed out.
    other = RecordingFactory()
    assert Stream.get_by_id(other.stream_id).next_segment_index == other.segment_index + 1


def test_recording_factory_refuses_a_chosen_index(db):
    with pytest.raises(TypeError, match="index comes from the stream"):
        RecordingFactory(segment_index=7)
    assert Recording.select().count() == 0
