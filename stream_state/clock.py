"""Re-dating segments after the wall clock is fixed.

A board without a real-time clock boots in 1970 and records until NTP sets
the time; a bad NTP server steps the clock by weeks. The segments recorded
meanwhile carry wrong times, which the package flags (``clock_suspect``)
rather than believes. Once the operator knows the offset, ``redate`` shifts
a stream's segments by it, chosen by segment index (which only grows, so it
is right even when the times are not):

    from stream_state.clock import redate
    redate("cam-1", dt.timedelta(days=20_787, hours=3), first_index=1200, last_index=1450)

    stream-state redate cam-1 --by +20787d3h --from-index 1200 --to-index 1450

Every time column of the chosen rows moves by the same amount in one
transaction; each row's ``clock_suspect`` is judged again on its new times;
one ``segments_redated`` event records what was done.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import peewee as pw

from .errors import ValidationError
from .models import Event, Recording, Stream
from .models.recording import start_suspicion
from .pwtypes import tuple_rows
from .states import Severity
from .timeutil import MAX_MILLIS, to_millis

log = logging.getLogger(__name__)

SEGMENTS_REDATED = "segments_redated"
_TIME_COLUMNS = ("started_at", "ended_at", "checkpoint_at", "media_started_at", "media_ended_at")


@dataclass(frozen=True)
class RedateReport:
    stream: str
    shift: dt.timedelta
    segments: int
    first_index: int | None
    last_index: int | None
    still_suspect: int  # rows whose new times are still implausible


def redate(
    stream: Stream | str,
    shift: dt.timedelta,
    *,
    first_index: int | None = None,
    last_index: int | None = None,
    only_suspect: bool = False,
) -> RedateReport:
    """Move the times of ``stream``'s segments with index in [first_index, last_index] by ``shift``.

    ``only_suspect`` limits it to the rows flagged ``clock_suspect``.
    """
    if not isinstance(shift, dt.timedelta) or not shift:
        raise ValidationError("shift", shift, "expected a non-zero datetime.timedelta")
    for name, value in (("first_index", first_index), ("last_index", last_index)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValidationError(name, value, "expected a segment index (an integer >= 0)")
    if first_index is not None and last_index is not None and last_index < first_index:
        raise ValidationError("last_index", last_index, f"before first_index={first_index}")
    target = stream if isinstance(stream, Stream) else Stream.by_name(stream)
    shift_ms = shift // dt.timedelta(milliseconds=1)
    where = Recording.stream == target.id
    if first_index is not None:
        where &= Recording.segment_index >= first_index
    if last_index is not None:
        where &= Recording.segment_index <= last_index
    if only_suspect:
        where &= Recording.clock_suspect.is_null(False)
    db = Recording._meta.database
    registered = to_millis(target.created_at)
    longest_ms = Recording.max_plausible_length // dt.timedelta(milliseconds=1)
    with db.atomic():
        rows = list(
            tuple_rows(
                Recording.select(
                    Recording.id, Recording.segment_index, *(getattr(Recording, c) for c in _TIME_COLUMNS)
                ).where(where)
            )
        )
        if not rows:
            return RedateReport(target.name, shift, 0, first_index, last_index, 0)
        still = 0
        for rec_id, _index, *times in rows:
            moved: dict[str, int] = {}
            for column, value in zip(_TIME_COLUMNS, times, strict=True):
                if value is None:
                    continue
                new_ms = (value if isinstance(value, int) else to_millis(value)) + shift_ms
                if not 0 <= new_ms <= MAX_MILLIS:
                    raise ValidationError("shift", shift, f"moves segment {rec_id}'s {column} out of range")
                moved[column] = new_ms
            suspicion = start_suspicion(moved["started_at"], registered)
            if (
                suspicion is None
                and "ended_at" in moved
                and moved["ended_at"] - moved["started_at"] > longest_ms
            ):
                suspicion = "too_long"
            still += suspicion is not None
            # Times only: the state is not touched (the gate owns state changes).
            Recording.update(**moved, clock_suspect=suspicion).where(Recording.id == rec_id).execute()
        indexes = [index for _id, index, *_rest in rows]
        # An operator's repair, like update_config: not gated on the stream's owner
        # (a live manager keeps recording while its old footage is re-dated).
        Event._record(
            SEGMENTS_REDATED,
            target,
            severity=Severity.WARNING,
            message=f"{len(rows)} segment(s) of {target.name} re-dated by {shift}",
            data={
                "shift_ms": shift_ms,
                "segments": len(rows),
                "first_index": min(indexes),
                "last_index": max(indexes),
                "still_suspect": still,
            },
            gate=False,
        )
    log.warning("re-dated %d segment(s) of %s by %s", len(rows), target.name, shift)
    return RedateReport(target.name, shift, len(rows), min(indexes), max(indexes), still)


def suspect_segments(stream: Stream | str) -> pw.ModelSelect[Recording]:
    """The stream's segments whose times are flagged, by index (to choose what to re-date)."""
    target = stream if isinstance(stream, Stream) else Stream.by_name(stream)
    return (
        Recording.select()
        .where((Recording.stream == target.id) & Recording.clock_suspect.is_null(False))
        .order_by(Recording.segment_index)
    )
