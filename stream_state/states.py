"""The named states the models move through.

They are ``str`` enums so that they compare equal to their stored text, print
readably and serialise to JSON without help.
"""

from __future__ import annotations

import enum


class StreamStatus(enum.StrEnum):
    """What the manager last reported a stream to be doing."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    ERROR = "error"


class HealthState(enum.StrEnum):
    """How well a stream is doing, as judged by the manager's health checks."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    FAILED = "failed"


class SegmentState(enum.StrEnum):
    """The life of one segment file's row."""

    RECORDING = "recording"  # the row exists and the file is being written
    COMPLETE = "complete"  # closed normally
    INTERRUPTED = "interrupted"  # the process died while writing; kept what was on disk
    FAILED = "failed"  # nothing usable was written, or the manager gave up
    DELETING = "deleting"  # a delete is under way: the file may or may not still exist
    ARCHIVING = "archiving"  # the file is being moved to an archive root (see metadata["archive"])
    RECOVERED = "recovered"  # a file found on disk without a row, adopted by `check`
    MISSING = "missing"  # the row's file was not found by `check` (kept: the disk may come back)


class Severity(enum.StrEnum):
    """How much an event matters to an operator."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class EventType(enum.StrEnum):
    """The event types the package writes itself. Managers may use any other string."""

    STREAM_REGISTERED = "stream_registered"
    STREAM_UPDATED = "stream_updated"
    STREAM_REMOVED = "stream_removed"
    CONFIG_CHANGED = "config_changed"
    DESIRED_CHANGED = "desired_changed"
    STATUS_CHANGED = "status_changed"
    HEALTH_CHANGED = "health_changed"
    SEGMENT_FAILED = "segment_failed"
    SEGMENT_REPAIRED = "segment_repaired"
    SEGMENT_DELETED = "segment_deleted"
    SEGMENT_INDEX_SKIPPED = "segment_index_skipped"
    RESTORED = "restored"
    CLEAN_SHUTDOWN = "clean_shutdown"
    CHECK_REPAIRED = "check_repaired"
    RETENTION_APPLIED = "retention_applied"
    PURGED = "purged"


def desired_state(enabled: bool, recording: bool) -> str:
    """A stream's desired state in one word: ``recording``, ``running`` or ``stopped``."""
    if not enabled:
        return "stopped"
    return "recording" if recording else "running"
