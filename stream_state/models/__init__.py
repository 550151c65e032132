"""The domain models, one module per aggregate."""

from .base import BaseModel, database_proxy
from .event import Event
from .metric import MetricSample, MetricSeries
from .recording import Recording
from .stream import Stream
from .system import SystemState

# In dependency order: create in this order, drop in reverse.
MODELS = (Stream, Recording, Event, MetricSeries, MetricSample, SystemState)

__all__ = [
    "MODELS",
    "BaseModel",
    "Event",
    "MetricSample",
    "MetricSeries",
    "Recording",
    "Stream",
    "SystemState",
    "database_proxy",
]
