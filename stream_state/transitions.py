"""Which state changes are allowed: pure decisions, tested without a database."""

from __future__ import annotations

from .errors import InvalidTransition
from .states import HealthState, SegmentState, Severity, StreamStatus

# What the manager may report after each status. Going back to STARTING from
# RUNNING or ERROR is a restart (reconnect, or after a crash); a stream must
# pass through STARTING before it runs again.
STATUS_TRANSITIONS: dict[StreamStatus, frozenset[StreamStatus]] = {
    StreamStatus.STOPPED: frozenset({StreamStatus.STARTING, StreamStatus.ERROR}),
    StreamStatus.STARTING: frozenset(
        {StreamStatus.RUNNING, StreamStatus.STOPPING, StreamStatus.STOPPED, StreamStatus.ERROR}
    ),
    StreamStatus.RUNNING: frozenset(
        {StreamStatus.STOPPING, StreamStatus.STOPPED, StreamStatus.ERROR, StreamStatus.STARTING}
    ),
    StreamStatus.STOPPING: frozenset({StreamStatus.STOPPED, StreamStatus.ERROR}),
    StreamStatus.ERROR: frozenset({StreamStatus.STARTING, StreamStatus.STOPPING, StreamStatus.STOPPED}),
}

# A finished segment with a file may be deleted, found missing, or archived.
_FINISHED_MOVES = frozenset({SegmentState.DELETING, SegmentState.MISSING, SegmentState.ARCHIVING})

# Where a segment's row may go next. A RECORDING row ends exactly one way;
# every finished row may later be deleted (retention, check); DELETING ends
# when the row is removed.
SEGMENT_TRANSITIONS: dict[SegmentState, frozenset[SegmentState]] = {
    SegmentState.RECORDING: frozenset({SegmentState.COMPLETE, SegmentState.FAILED, SegmentState.INTERRUPTED}),
    SegmentState.COMPLETE: _FINISHED_MOVES,
    SegmentState.INTERRUPTED: _FINISHED_MOVES,
    SegmentState.FAILED: frozenset({SegmentState.DELETING}),
    SegmentState.RECOVERED: _FINISHED_MOVES,
    # A move to the archive ends by returning to the state it came from
    # (recorded in metadata["archive"]), or as missing if both copies vanished.
    SegmentState.ARCHIVING: frozenset(
        {SegmentState.COMPLETE, SegmentState.INTERRUPTED, SegmentState.RECOVERED, SegmentState.MISSING}
    ),
    # A missing file may turn up again (a disk remounted): `check` then
    # adopts it back as RECOVERED.
    SegmentState.MISSING: frozenset({SegmentState.DELETING, SegmentState.RECOVERED}),
    SegmentState.DELETING: frozenset(),
}

# The states a row is born in: ``recording`` (begin_segment: the row before
# its file) and ``recovered`` (check adopting a file that had no row).
SEGMENT_INITIAL = frozenset({SegmentState.RECORDING, SegmentState.RECOVERED})

# A row is removed only from ``deleting``, so a crash between the row's
# change and the file's unlink always leaves a row that says so (invariant 6).
SEGMENT_REMOVABLE = frozenset({SegmentState.DELETING})

# Health is an observation, so any state may follow any other; what matters
# is how loudly a change is reported.
HEALTH_SEVERITY: dict[HealthState, Severity] = {
    HealthState.UNKNOWN: Severity.INFO,
    HealthState.HEALTHY: Severity.INFO,
    HealthState.DEGRADED: Severity.WARNING,
    HealthState.UNHEALTHY: Severity.ERROR,
    HealthState.FAILED: Severity.CRITICAL,
}

REPORTABLE_HEALTH = frozenset(HEALTH_SEVERITY) - {HealthState.UNKNOWN}


def status_change(current: StreamStatus, requested: StreamStatus) -> bool:
    """True when the status must change, False when it is unchanged.

    Raises ``InvalidTransition`` naming both statuses when the move is refused.
    """
    if current == requested:
        return False
    if requested not in STATUS_TRANSITIONS.get(current, frozenset()):
        allowed = ", ".join(sorted(STATUS_TRANSITIONS.get(current, ())))
        raise InvalidTransition("stream status", current, requested, f"allowed from {current}: {allowed}")
    return True


def check_segment_transition(current: SegmentState, requested: SegmentState) -> None:
    """Raise ``InvalidTransition`` unless a segment may move from ``current`` to ``requested``."""
    if requested not in SEGMENT_TRANSITIONS.get(current, frozenset()):
        raise InvalidTransition("segment", current, requested)


def check_segment_removal(current: SegmentState) -> None:
    """Raise ``InvalidTransition`` unless a segment's row may be removed from ``current``."""
    if current not in SEGMENT_REMOVABLE:
        raise InvalidTransition("segment", current, "removed", "only a deleting row is removed")


def health_severity(state: HealthState) -> Severity:
    """How loudly a change into ``state`` is reported."""
    return HEALTH_SEVERITY[state]
