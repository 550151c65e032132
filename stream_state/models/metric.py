"""A compact time-series store: named series and their samples."""

from __future__ import annotations

import peewee as pw

from ..fields import TimestampField
from ..timeutil import utc_now
from .base import BaseModel
from .stream import Stream


class MetricSeries(BaseModel):
    id = pw.AutoField()
    # Canonical text of (name, stream, labels). Unique even when stream is
    # NULL, which a composite unique index would not be (NULLs are distinct).
    key = pw.TextField(unique=True)
    name = pw.TextField(index=True)
    stream = pw.ForeignKeyField(Stream, null=True, backref="metric_series", on_delete="RESTRICT")
    labels = pw.JSONField(default=dict)
    created_at = TimestampField(default=utc_now)

    class Meta:
        table_name = "metric_series"


class MetricSample(BaseModel):
    # Keyed by (series, ts): one value per series and millisecond, and on
    # SQLite a WITHOUT ROWID table (set by the migration) at ~19 bytes a sample.
    series = pw.ForeignKeyField(MetricSeries, backref="samples", on_delete="CASCADE", index=False)
    ts = TimestampField()
    value = pw.DoubleField()

    class Meta:
        table_name = "metric_sample"
        primary_key = pw.CompositeKey("series", "ts")
