"""stream_state: the memory of a multi-stream video recorder.

Import what you need from here; importing opens nothing. Start with
``open_database()``.
"""

from .check import CheckReport, check, mark_root
from .database import (
    applied_migrations,
    backup_sqlite,
    code_schema_version,
    connect_database,
    migrate_to_head,
    open_database,
    pending_migrations,
    rollback_one,
    schema_version,
)
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
    ValidationError,
)
from .maintenance import (
    BackupNotSupported,
    Maintenance,
    UpkeepPolicy,
    backup,
    checkpoint_wal,
    incremental_vacuum,
    integrity_check,
    optimize,
    purge_events,
    purge_samples,
    vacuum,
)
from .models import MODELS, Event, MetricSample, MetricSeries, Recording, Stream
from .models.metric import Sample, series_key
from .restore import RestoredState, Restorer, StreamSnapshot
from .retention import RetentionPolicy, RetentionRule, VolumeFloor, apply_retention
from .states import EventType, HealthState, SegmentState, Severity, StreamStatus

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "AlreadyExists",
    "BackupNotSupported",
    "CheckReport",
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
    "UpkeepPolicy",
    "ValidationError",
    "VolumeFloor",
    "__version__",
    "applied_migrations",
    "apply_retention",
    "backup",
    "backup_sqlite",
    "check",
    "checkpoint_wal",
    "code_schema_version",
    "connect_database",
    "incremental_vacuum",
    "integrity_check",
    "mark_root",
    "migrate_to_head",
    "open_database",
    "optimize",
    "pending_migrations",
    "purge_events",
    "purge_samples",
    "rollback_one",
    "schema_version",
    "series_key",
    "vacuum",
]
