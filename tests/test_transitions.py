"""The transition maps as pure decisions: no database."""

from __future__ import annotations

import itertools

import pytest

from stream_state import HealthState, InvalidTransition, SegmentState, Severity, StreamStatus
from stream_state.transitions import (
    SEGMENT_TRANSITIONS,
    STATUS_TRANSITIONS,
    check_segment_transition,
    health_severity,
    status_change,
)


def test_every_status_has_an_entry_in_the_map():
    assert set(STATUS_TRANSITIONS) == set(StreamStatus)
    assert set(SEGMENT_TRANSITIONS) == set(SegmentState)


def test_an_unchanged_status_is_no_change():
    for status in StreamStatus:
        assert status_change(status, status) is False


@pytest.mark.parametrize(
    ("current", "requested"),
    [
        ("stopped", "starting"),
        ("starting", "running"),
        ("running", "stopping"),
        ("stopping", "stopped"),
        ("running", "error"),
        ("error", "starting"),
        ("running", "starting"),  # a restart after a crash or a reconnect
    ],
)
def test_the_normal_life_of_a_stream_is_allowed(current, requested):
    assert status_change(StreamStatus(current), StreamStatus(requested)) is True


@pytest.mark.parametrize(
    ("current", "requested"),
    [
        ("stopped", "running"),  # must pass through starting
        ("stopped", "stopping"),
        ("stopping", "running"),
        ("stopping", "starting"),
        ("error", "running"),
    ],
)
def test_refused_moves_name_both_statuses(current, requested):
    with pytest.raises(InvalidTransition) as info:
        status_change(StreamStatus(current), StreamStatus(requested))
    assert info.value.current == current and info.value.requested == requested
    assert f"from {current} to {requested}" in str(info.value)


def test_every_status_can_reach_stopped():
    """No status is a dead end: the manager can always bring a stream to rest."""
    for status in StreamStatus:
        reachable, frontier = {status}, {status}
        while frontier:
            frontier = {n for s in frontier for n in STATUS_TRANSITIONS[s]} - reachable
            reachable |= frontier
        assert StreamStatus.STOPPED in reachable


def test_an_open_segment_ends_exactly_one_way_and_only_from_recording():
    enders = {SegmentState.COMPLETE, SegmentState.FAILED, SegmentState.INTERRUPTED}
    for current, requested in itertools.product(SegmentState, enders):
        if current == SegmentState.ARCHIVING and requested != SegmentState.FAILED:
            continue  # an archive move returns the row to the state it came from
        if current == SegmentState.RECORDING:
            check_segment_transition(current, requested)
        else:
            with pytest.raises(InvalidTransition):
                check_segment_transition(current, requested)


def test_every_finished_segment_can_be_deleted_and_nothing_comes_back_from_deleting():
    for state in SegmentState:
        if state not in (SegmentState.RECORDING, SegmentState.DELETING, SegmentState.ARCHIVING):
            check_segment_transition(state, SegmentState.DELETING)
    for state in SegmentState:
        with pytest.raises(InvalidTransition):
            check_segment_transition(SegmentState.DELETING, state)


def test_health_changes_get_louder_as_health_gets_worse():
    order = [HealthState.HEALTHY, HealthState.DEGRADED, HealthState.UNHEALTHY, HealthState.FAILED]
    ranks = list(Severity)
    severities = [ranks.index(health_severity(state)) for state in order]
    assert severities == sorted(severities) and len(set(severities)) == len(severities)
