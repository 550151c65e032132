"""The domain models, one module per aggregate."""

from .base import BaseModel, database_proxy
from .blocks import MetricBlock
from .event import Event
from .metric import MetricSample, MetricSeries
from .recording import Recording
from .rollups import MetricRollup, MetricRollupStale
from .runs import SegmentRuns
from .session import Session
from .stream import Stream
from .system import SystemState
from .usage import RecordingUsage

# Every table, in dependency order: create in this order, drop in reverse.
MODELS = (
    Stream,
    Recording,
    RecordingUsage,
    SegmentRuns,
    Event,
    MetricSeries,
    MetricSample,
    MetricBlock,
    MetricRollup,
    MetricRollupStale,
    SystemState,
    Session,
)

__all__ = [
    "MODELS",
    "BaseModel",
    "Event",
    "MetricBlock",
    "MetricRollup",
    "MetricRollupStale",
    "MetricSample",
    "MetricSeries",
    "Recording",
    "RecordingUsage",
    "SegmentRuns",
    "Session",
    "Stream",
    "SystemState",
    "database_proxy",
]
