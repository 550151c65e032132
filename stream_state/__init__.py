"""stream_state: the memory of a multi-stream video recorder.

The top level holds what a stream manager uses every day: the models and
their states, ``open_database``, the ``Restorer`` it asks after a restart,
the ``Maintenance`` it runs every minute (with its policies), and the errors
it may catch. Importing opens nothing. Start with ``open_database()``.

Everything else is imported from its own module:

- ``stream_state.history``: read-only questions about the past (recordings,
  gaps, storage used, events, health, metrics)
- ``stream_state.database``: migrations and schema versions
  (``migrate_to_head``, ``schema_version``, ``pending_migrations``...)
- ``stream_state.maintenance``, ``stream_state.retention``: each job alone
  (``purge_events``, ``vacuum``, ``backup``, ``apply_retention``...)
- ``stream_state.check``: rows against the files on disk (``check``, ``mark_root``)
- ``stream_state.rollups``: the summaries history reads (``refresh_rollups``)
- ``stream_state.sessions``: several managers on one database (``Session`` is
  ``stream_state.models.Session``; ``claim_streams``, ``list_sessions``, ``end_session``;
  the error, ``stream_state.errors.OwnershipLost``)
- ``stream_state.aio``: the same package for asyncio
"""

from .database import connect_database, open_database
from .errors import (
    AlreadyExists,
    DatabaseUnavailable,
    InvalidTransition,
    MigrationError,
    NotFound,
    SchemaMismatch,
    StorageFull,
    StreamRemoved,
    StreamStateError,
    TickFailed,
    ValidationError,
)
from .maintenance import BackupNotSupported, Maintenance, UpkeepPolicy
from .models import MODELS, Event, MetricSample, MetricSeries, Recording, Stream
from .models.metric import Sample
from .restore import RestoredState, Restorer, StreamSnapshot
from .retention import RetentionPolicy, RetentionRule, VolumeFloor
from .states import EventType, HealthState, SegmentState, Severity, StreamStatus
from .tick import Tick

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "AlreadyExists",
    "BackupNotSupported",
    "DatabaseUnavailable",
    "Event",
    "EventType",
    "HealthState",
    "InvalidTransition",
    "Maintenance",
    "MetricSample",
    "MetricSeries",
    "MigrationError",
    "NotFound",
    "Recording",
    "RestoredState",
    "Restorer",
    "RetentionPolicy",
    "RetentionRule",
    "Sample",
    "SchemaMismatch",
    "SegmentState",
    "Severity",
    "StorageFull",
    "Stream",
    "StreamRemoved",
    "StreamSnapshot",
    "StreamStateError",
    "StreamStatus",
    "Tick",
    "TickFailed",
    "UpkeepPolicy",
    "ValidationError",
    "VolumeFloor",
    "__version__",
    "connect_database",
    "open_database",
]
