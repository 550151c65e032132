"""What a timeline shows (lanes of spans, holes, health, ticks) and the pure decisions about it.

``merge_spans`` and ``merge_states`` decide which segments share a pixel,
``merge_ticks`` which events share a tick, ``explain_hole`` why a hole is
there; none of them reads the database or draws.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import os
from collections.abc import Iterable, Sequence
from typing import Any, cast

from ..states import EventType, HealthState, SegmentState, Severity
from .zones import clock_text

# Layout in pixels at DPI: a lane's height shrinks with the number of lanes
# so that 1,000 streams stay a picture (about 10 px each), not a poster.
DPI = 100
DEFAULT_WIDTH = 1600
LABEL_PX = 170
RIGHT_PX = 30
HEADER_PX = 110
FOOTER_PX = 150

TICK_PX = 3  # events closer than this many pixels share a tick (a tick is about 1 px wide)
MAX_TOLD = 5  # event messages quoted in a hole's detail
DOWN_SLACK_MS = 1_000  # evidence this close to a hole's ends still explains it
HOLE_REASONS = ("down", "unhealthy", "clock problem", "file missing", "unknown")
SEVERITY_RANK = {severity.value: rank for rank, severity in enumerate(Severity)}
_NOT_COVERING = {SegmentState.FAILED.value, SegmentState.MISSING.value, SegmentState.DELETING.value}
_BAD_HEALTH = {HealthState.UNHEALTHY.value, HealthState.FAILED.value}


# --- what the picture shows ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """One segment row as the timeline reads it (times in epoch ms; ``end`` of an open one: now)."""

    index: int
    start: int
    end: int
    state: str  # a display state: a SegmentState value, "open" or "archived"
    size_bytes: int
    path: str


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    """Segments of one display state merged where they are closer than a pixel."""

    start: int
    end: int
    state: str
    segments: int
    size_bytes: int
    first_path: str
    last_path: str


@dataclasses.dataclass(frozen=True, slots=True)
class Hole:
    """A gap of ``history.coverage`` with why it is there.

    ``reason`` is one of HOLE_REASONS (the first that applies, in that
    order); ``detail`` says what showed it, every finding, for people.
    """

    start: int
    end: int
    reason: str
    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class HealthPiece:
    start: int
    end: int
    health: str
    reason: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Tick:
    """Events of a lane that fall in one pixel: the most severe one shows, ``count`` says how many."""

    at: int
    type: str
    severity: str
    message: str
    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class Marker:
    """A system event drawn across every lane: a restore (after a crash or a clean stop) or a shutdown."""

    at: int
    kind: str  # "crash", "restart" or "shutdown"
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class Lane:
    stream_id: int
    name: str
    start: int  # the part of the window the stream existed in
    end: int
    spans: tuple[Span, ...]
    holes: tuple[Hole, ...]
    health: tuple[HealthPiece, ...]
    ticks: tuple[Tick, ...]
    recorded_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Timeline:
    since: int
    until: int
    pixel_ms: float
    width: int
    lanes: tuple[Lane, ...]
    markers: tuple[Marker, ...]
    query_seconds: float = 0.0  # how long collect() took

    @property
    def holes(self) -> list[tuple[Lane, Hole]]:
        return [(lane, hole) for lane in self.lanes for hole in lane.holes]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Display names of segment states; None is how read_states reads "complete".
_SHOWN: dict[str | None, str] = {SegmentState.RECORDING.value: "open", None: SegmentState.COMPLETE.value}
_COMPLETE = SegmentState.COMPLETE.value


def shown_state(state: str | None) -> str:
    return _SHOWN.get(state) or cast(str, state)


def display_state(state: str, archived: bool, open_: bool) -> str:
    if open_:
        return "open"
    if archived and state == _COMPLETE:
        return "archived"
    return _SHOWN.get(state, state)


# --- pure decisions ------------------------------------------------------------------------------------


def merge_spans(segments: Sequence[Segment], pixel_ms: float) -> list[Span]:
    """Merge segments (sorted by start) of one display state that are less than a pixel apart.

    A segment of another state in between ends the span, so a failed
    segment keeps its own rectangle however narrow (the drawing gives every
    span at least a pixel).
    """
    spans: list[Span] = []
    current: list[Any] | None = None  # start, end, state, count, size, first, last
    for seg in segments:
        if current is not None and seg.state == current[2] and seg.start - current[1] < pixel_ms:
            current[1] = max(current[1], seg.end)
            current[3] += 1
            current[4] += seg.size_bytes
            current[6] = seg.path
            continue
        if current is not None:
            spans.append(Span(*current))
        current = [seg.start, seg.end, seg.state, 1, seg.size_bytes, seg.path, seg.path]
    if current is not None:
        spans.append(Span(*current))
    return spans


def merge_states(rows: Iterable[tuple[int, int, str | None, int]], pixel_ms: float) -> list[Span]:
    """``merge_spans`` for (start, end, state, segments) entries read from the index: no sizes, no paths.

    An entry is a segment (segments 1) or a run of them (``history.read_runs``);
    a state of None is "complete". A tight loop over plain tuples: a week of
    1,000 streams is ten million rows where no hour is summarized.
    """
    spans: list[Span] = []
    cur_start = cur_end = count = 0
    cur_state: Any = _NO_STATE
    for start, end, state, segments in rows:
        if state == cur_state and start - cur_end < pixel_ms:
            if end > cur_end:
                cur_end = end
            count += segments
            continue
        if count:
            spans.append(Span(cur_start, cur_end, _SHOWN.get(cur_state, cur_state), count, 0, "", ""))
        cur_start, cur_end, cur_state, count = start, end, state, segments
    if count:
        spans.append(Span(cur_start, cur_end, _SHOWN.get(cur_state, cur_state), count, 0, "", ""))
    return spans


_NO_STATE = object()  # before the first row: equal to no state, None included


@dataclasses.dataclass(frozen=True, slots=True)
class SystemEvent:
    at: int
    type: str
    clean: bool | None


@dataclasses.dataclass(frozen=True, slots=True)
class StatusChange:
    at: int
    new: str
    reason: str | None


def explain_hole(
    start: int,
    end: int,
    *,
    segments: Sequence[Segment],
    health: Sequence[HealthPiece],
    system: Sequence[SystemEvent],
    statuses: Sequence[StatusChange] = (),
    clock_events: Sequence[tuple[int, str]] = (),
    zone: dt.tzinfo | None = None,
    told: Sequence[str] = (),
) -> Hole:
    """Why nothing was recorded in [start, end): the evidence in the window, in the order of HOLE_REASONS.

    * down: the recorder started again after a crash (a ``restored`` event
      that found no clean stop) or stopped cleanly inside the hole, or the
      stream's status went to ``stopped``;
    * unhealthy: the stream's health was unhealthy or failed at the hole's
      start or turned so inside it;
    * clock problem: segments numbered between the ones around the hole
      carry times outside it (a clock that stepped; 1970 at boot), or a
      clock event falls in it;
    * file missing: a segment in the hole has no usable file (failed,
      missing, being deleted);
    * unknown: none of these; nothing in the database says why.

    ``told``: the messages of the events ``history.gaps`` finds in the hole
    (``Gap.reasons``), added to the detail as they were written.

    ``system``, ``statuses``, ``clock_events`` and ``health`` are in time
    order (``health``: pieces end to end, as ``collect`` makes them): only
    the part near the hole is looked at, so a lane's dozen holes do not
    each walk its week of health changes.
    """
    findings: dict[str, list[str]] = {reason: [] for reason in HOLE_REASONS}

    def clock(ms: int) -> str:
        return clock_text(ms, zone)

    lo, hi = start - DOWN_SLACK_MS, end + DOWN_SLACK_MS
    system = system[bisect.bisect_left(system, lo, key=_at) : bisect.bisect_right(system, hi, key=_at)]
    statuses = statuses[
        bisect.bisect_left(statuses, lo, key=_at) : bisect.bisect_left(statuses, end, key=_at)
    ]
    clock_events = clock_events[
        bisect.bisect_left(clock_events, lo, key=_first) : bisect.bisect_right(clock_events, end, key=_first)
    ]
    # The piece in force at the hole's start, and those starting before its end.
    health = health[
        max(0, bisect.bisect_right(health, start, key=_start) - 1) : bisect.bisect_left(
            health, end, key=_start
        )
    ]
    for event in system:
        if start - DOWN_SLACK_MS <= event.at <= end + DOWN_SLACK_MS:
            if event.type == EventType.RESTORED.value and event.clean is False:
                findings["down"].append(f"the recorder crashed (restarted {clock(event.at)})")
            elif event.type == EventType.RESTORED.value and event.clean is True:
                findings["down"].append(f"the recorder was stopped (restarted {clock(event.at)})")
            elif event.type == EventType.CLEAN_SHUTDOWN.value:
                findings["down"].append(f"the recorder stopped cleanly at {clock(event.at)}")
    for change in statuses:
        if start - DOWN_SLACK_MS <= change.at < end and change.new == "stopped":
            findings["down"].append(
                f"stream stopped at {clock(change.at)}" + (f" ({change.reason})" if change.reason else "")
            )
    for piece in health:
        if piece.health in _BAD_HEALTH and piece.start < end and piece.end > start:
            findings["unhealthy"].append(
                f"{piece.health} from {clock(piece.start)}" + (f" ({piece.reason})" if piece.reason else "")
            )
    numbered = [s for s in segments if s.index >= 0]  # read from the index alone: no number
    before = [s for s in numbered if s.end <= start + 1 and s.state not in _NOT_COVERING]
    after = [s for s in numbered if s.start >= end - 1 and s.state not in _NOT_COVERING]
    if before and after:
        low = max(before, key=lambda s: s.end).index
        high = min(after, key=lambda s: s.start).index
        misplaced = [s for s in numbered if low < s.index < high and (s.end <= start or s.start >= end)]
        if misplaced:
            first = min(misplaced, key=lambda s: s.index)
            findings["clock problem"].append(
                f"{len(misplaced)} segment(s) numbered between {low} and {high} are dated elsewhere "
                f"(#{first.index} at {clock_text(first.start, zone, date=True)})"
            )
    for at, message in clock_events:
        if start - DOWN_SLACK_MS <= at <= end:
            findings["clock problem"].append(message)
    for seg in segments:
        if seg.state in _NOT_COVERING and seg.start < end and seg.end >= start - DOWN_SLACK_MS:
            findings["file missing"].append(f"{os.path.basename(seg.path) or 'a segment'} {seg.state}")
    found = [reason for reason in HOLE_REASONS if findings[reason]]
    # What the events in the hole said, as history.gaps tells it.
    said = ""
    if told:
        said = (
            "; events: "
            + " | ".join(told[:MAX_TOLD])
            + (f" (+{len(told) - MAX_TOLD} more)" if len(told) > MAX_TOLD else "")
        )
    if not found:
        return Hole(start, end, "unknown", "unknown: no event or segment in the database explains it" + said)
    detail = "; ".join(f"{reason}: {', '.join(_dedupe(findings[reason]))}" for reason in found)
    return Hole(start, end, found[0], detail + said)


def _at(item: SystemEvent | StatusChange) -> int:
    return item.at


def _first(item: tuple[int, str]) -> int:
    return item[0]


def _start(item: HealthPiece) -> int:
    return item.start


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def merge_ticks(events: Iterable[Tick], pixel_ms: float) -> list[Tick]:
    """One tick per ``pixel_ms``: the most severe event (the first of equals), with the count."""
    return merge_tick_rows(((t.at, t.type, t.severity, t.message, t.count) for t in events), pixel_ms)


def merge_tick_rows(rows: Iterable[tuple[int, str, str, str, int]], pixel_ms: float) -> list[Tick]:
    """``merge_ticks`` of (at, type, severity, message, count) rows: a Tick made only for each one shown."""
    merged: dict[int, list[Any]] = {}  # key -> [rank, row, count]
    rank_of = SEVERITY_RANK.get
    for row in rows:
        at = row[0]
        key = int(at // pixel_ms) if pixel_ms > 0 else at
        rank = rank_of(row[2], 0)
        found = merged.get(key)
        if found is None:
            merged[key] = [rank, row, row[4]]
            continue
        found[2] += row[4]
        if rank > found[0]:
            found[0], found[1] = rank, row
    return [
        Tick(row[0], row[1], row[2], row[3], count)
        for _rank, row, count in sorted(merged.values(), key=lambda item: item[1][0])
    ]
