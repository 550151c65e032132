"""Read-side questions about the past: what was recorded, where the holes are, what used the disk,
what happened, and how the metrics looked. One module per noun:

- ``segments``: ``recordings``, ``segment_rows``, ``latest_segments``, ``coverage``, ``gaps``,
  ``segment_states``, ``read_states`` or ``read_runs`` with ``coverage_of_states`` (one read, for
  pictures)
- ``storage``: ``storage_usage``, ``segment_counts``
- ``eventlog``: ``events``
- ``health``: ``current_health``, ``health_transitions``
- ``metrics``: ``metric_values``, ``metric_samples``, ``metric_buckets``, ``metric_buckets_matching``,
  ``metric_points``
- ``streams``: ``stream_overview`` (each stream now, with its open segments)

(the modules are not named after a function they hold, so that
``stream_state.history.coverage`` is always the function).

Every function answers from an index (or from a summary the database keeps up
to date), so its cost grows with the size of the answer, not with the size of
the history: one stream's segments in an hour of ten million, one page of a
million events, a week of a 1-second metric read as 168 hourly rollups.

Functions that return rows of one model return a peewee query, so callers add
``.where()``, ``.limit()``, ``.count()`` or ``.tuples()``
(``recordings``, ``latest_segments``, ``metric_samples``). Aggregates come back
as small frozen dataclasses. Times are aware UTC datetimes; a ``stream``
argument is a ``Stream``, its id or its name.

History only reads. The writers of the summaries it reads (``refresh_rollups``,
``invalidate_rollups``, ``note_late_samples``, ``rebuild_usage``) live in
``stream_state.rollups`` and the tables in ``stream_state.models``; they are
re-exported here, with the constants, so that code written against the single
``history`` module keeps working.
"""

from __future__ import annotations

from ..models.recording import LONG_SEGMENT_MS
from ..models.rollups import ROLLUP_WATERMARK_KEY, MetricRollup, MetricRollupStale
from ..models.usage import USAGE_FILL_SQL, RecordingUsage
from ..rollups import (
    ROLLUP_CHUNK,
    ROLLUP_SETTLE,
    RollupReport,
    invalidate_rollups,
    note_late_samples,
    rebuild_usage,
    refresh_rollups,
)
from ..timeutil import DAY_MS, HOUR_MS, MINUTE_MS
from ._args import resolve_stream
from .eventlog import MAX_PAGE, EventPage, events
from .health import HealthTransition, StreamHealth, current_health, health_transitions
from .metrics import (
    MAX_BUCKETS,
    ROLLUP_WIDTHS,
    Bucket,
    BucketPoint,
    MetricPoints,
    SamplePoint,
    SeriesBuckets,
    SeriesInfo,
    metric_buckets,
    metric_buckets_matching,
    metric_points,
    metric_samples,
    metric_values,
)
from .segments import (
    COVERING_STATES,
    DEFAULT_TOLERANCE,
    Coverage,
    Gap,
    GapReason,
    SegmentRow,
    SegmentStates,
    coverage,
    coverage_of_states,
    gaps,
    latest_segments,
    read_runs,
    read_states,
    recordings,
    segment_rows,
    segment_states,
)
from .storage import UsageRow, segment_counts, storage_usage
from .streams import StreamOverview, stream_overview

# The tables history reads besides the domain models'.
HISTORY_MODELS = (RecordingUsage, MetricRollup, MetricRollupStale)

__all__ = [
    "COVERING_STATES",
    "DAY_MS",
    "DEFAULT_TOLERANCE",
    "HISTORY_MODELS",
    "HOUR_MS",
    "LONG_SEGMENT_MS",
    "MAX_BUCKETS",
    "MAX_PAGE",
    "MINUTE_MS",
    "ROLLUP_CHUNK",
    "ROLLUP_SETTLE",
    "ROLLUP_WATERMARK_KEY",
    "ROLLUP_WIDTHS",
    "USAGE_FILL_SQL",
    "Bucket",
    "BucketPoint",
    "Coverage",
    "EventPage",
    "Gap",
    "GapReason",
    "HealthTransition",
    "MetricPoints",
    "MetricRollup",
    "MetricRollupStale",
    "RecordingUsage",
    "RollupReport",
    "SamplePoint",
    "SegmentRow",
    "SegmentStates",
    "SeriesBuckets",
    "SeriesInfo",
    "StreamHealth",
    "StreamOverview",
    "UsageRow",
    "coverage",
    "coverage_of_states",
    "current_health",
    "events",
    "gaps",
    "health_transitions",
    "invalidate_rollups",
    "latest_segments",
    "metric_buckets",
    "metric_buckets_matching",
    "metric_points",
    "metric_samples",
    "metric_values",
    "note_late_samples",
    "read_runs",
    "read_states",
    "rebuild_usage",
    "recordings",
    "refresh_rollups",
    "resolve_stream",
    "segment_counts",
    "segment_rows",
    "segment_states",
    "storage_usage",
    "stream_overview",
]
