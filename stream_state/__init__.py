"""stream_state: the memory of a multi-stream video recorder.

Import what you need from here; importing opens nothing. Start with
``open_database()``.
"""

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
    StreamStateError,
    ValidationError,
)
from .models import MODELS, Event, MetricSample, MetricSeries, Recording, Stream
from .states import HealthState, SegmentState, Severity, StreamStatus

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "AlreadyExists",
    "DatabaseUnavailable",
    "Event",
    "HealthState",
    "InvalidTransition",
    "MetricSample",
    "MetricSeries",
    "MigrationError",
    "NotFound",
    "Recording",
    "SchemaMismatch",
    "SegmentState",
    "Severity",
    "StorageFull",
    "Stream",
    "StreamStateError",
    "StreamStatus",
    "ValidationError",
    "__version__",
    "applied_migrations",
    "backup_sqlite",
    "code_schema_version",
    "connect_database",
    "migrate_to_head",
    "open_database",
    "pending_migrations",
    "rollback_one",
    "schema_version",
]
