"""Retention: which recordings to delete, and deleting them without stalling the recorder.

The decisions are pure functions over small tuples (``plan_by_age``,
``plan_by_size``, ``plan_for_volume``), tested without a database. ``apply_retention``
feeds them from indexed queries and deletes in the crash-safe order, in
small batches with a pause between them, so a writer waiting for the lock
never waits long.

Archived recordings are never removed by age or size. Under a volume's
free-space floor, when only archived recordings are left, the policy's
``archived_when_full`` decides: ``"alarm"`` (stop and write a critical
event) or ``"delete"`` (delete archived recordings too, oldest first).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import peewee as pw

from .backends import dialect
from .errors import ValidationError
from .models import Event, Recording, Stream, database_proxy
from .models.recording import unlink_quietly
from .models.session import writer
from .pwtypes import tuple_rows
from .states import EventType, SegmentState, Severity
from .timeutil import now_millis, to_millis
from .validate import require_days

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
# Rows that retention may delete: finished, not open, not already being deleted.
DELETABLE_STATES = (
    SegmentState.COMPLETE,
    SegmentState.INTERRUPTED,
    SegmentState.FAILED,
    SegmentState.RECOVERED,
    SegmentState.MISSING,
)


# --- policy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionRule:
    """Keep at most ``max_age_days`` of recordings and at most ``max_bytes`` per stream (None: no limit)."""

    max_age_days: float | None = None
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_age_days is not None:
            require_days("max_age_days", self.max_age_days)
        if self.max_bytes is not None and (
            isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 0
        ):
            raise ValidationError("max_bytes", self.max_bytes, "must be a non-negative integer")

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> RetentionRule | None:
        """A rule from a stream's ``retention`` column; unknown keys are an error."""
        if not value:
            return None
        unknown = set(value) - {"max_age_days", "max_bytes"}
        if unknown:
            raise ValidationError(f"retention[{sorted(unknown)[0]!r}]", value, "unknown retention setting")
        return cls(value.get("max_age_days"), value.get("max_bytes"))

    def over(self, base: RetentionRule) -> RetentionRule:
        """This rule's settings, falling back to ``base`` where this one has none."""
        return RetentionRule(
            self.max_age_days if self.max_age_days is not None else base.max_age_days,
            self.max_bytes if self.max_bytes is not None else base.max_bytes,
        )


@dataclass(frozen=True)
class VolumeFloor:
    """Keep at least ``min_free_bytes`` free on the filesystem holding ``path``.

    Recordings on it are those whose path lies under ``path``.
    """

    path: str
    min_free_bytes: int


@dataclass(frozen=True)
class RetentionPolicy:
    default: RetentionRule = RetentionRule()
    per_stream: Mapping[str, RetentionRule] = field(default_factory=dict)  # by stream name
    volumes: tuple[VolumeFloor, ...] = ()
    archived_when_full: Literal["alarm", "delete"] = "alarm"
    batch_size: int = 200  # ids per DELETE: short transactions
    pause_seconds: float = 0.03  # between batches: longer than the busy handler's 25 ms sleeps

    def __post_init__(self) -> None:
        if self.archived_when_full not in ("alarm", "delete"):
            raise ValidationError(
                "archived_when_full", self.archived_when_full, "expected 'alarm' or 'delete'"
            )
        if not 1 <= self.batch_size <= 500:
            raise ValidationError("batch_size", self.batch_size, "must be between 1 and 500")

    def rule_for(self, name: str, column: Mapping[str, Any] | None) -> RetentionRule:
        """The stream's own setting, else the policy's per-stream rule, else the default."""
        rule = self.per_stream.get(name, RetentionRule()).over(self.default)
        own = RetentionRule.from_json(column)
        return own.over(rule) if own else rule


# --- the decisions, without a database -------------------------------------------------------


class Candidate(NamedTuple):
    """What the decisions need to know about one recording."""

    id: int
    ended_ms: int
    size_bytes: int
    archived: bool


def plan_by_age(oldest_first: Iterable[Candidate], now_ms: int, max_age_days: float | None) -> list[int]:
    """Ids of non-archived recordings that ended before ``now - max_age``."""
    if max_age_days is None:
        return []
    cutoff = now_ms - int(max_age_days * DAY_MS)
    return [c.id for c in oldest_first if not c.archived and c.ended_ms < cutoff]


def plan_by_size(
    oldest_first: Iterable[Candidate], total_bytes: int, max_bytes: int | None, skip: Iterable[int] = ()
) -> list[int]:
    """Oldest non-archived recordings to delete so the stream's rest fits in ``max_bytes``.

    ``total_bytes`` is what the stream's non-archived recordings take now;
    ``oldest_first`` may be just its oldest part. ``skip`` holds ids already
    chosen for another reason: their bytes are gone already.
    """
    if max_bytes is None:
        return []
    skip = set(skip)
    chosen = []
    total = total_bytes
    candidates = [c for c in oldest_first if not c.archived]
    total -= sum(c.size_bytes for c in candidates if c.id in skip)
    for candidate in candidates:
        if total <= max_bytes:
            break
        if candidate.id in skip:
            continue
        chosen.append(candidate.id)
        total -= candidate.size_bytes
    return chosen


@dataclass(frozen=True)
class VolumePlan:
    ids: list[int]
    freed: int
    short_by: int  # bytes still missing after everything allowed was chosen
    blocked_by_archive: bool  # only archived recordings were left and the policy said alarm


def plan_for_volume(
    oldest_first: Sequence[Candidate],
    deficit: int,
    archived_when_full: str,
    skip: Set[int] = frozenset(),
) -> VolumePlan:
    """Oldest recordings on a volume to delete until ``deficit`` bytes are freed.

    Non-archived recordings go first; archived ones only when the policy
    says ``delete``.
    """
    chosen, freed = [], 0
    if deficit <= 0:
        return VolumePlan([], 0, 0, False)
    for candidate in oldest_first:
        if freed >= deficit:
            break
        if candidate.archived or candidate.id in skip:
            continue
        chosen.append(candidate.id)
        freed += candidate.size_bytes
    blocked = False
    if freed < deficit and any(c.archived for c in oldest_first):
        if archived_when_full == "delete":
            for candidate in oldest_first:
                if freed >= deficit:
                    break
                if candidate.archived and candidate.id not in skip:
                    chosen.append(candidate.id)
                    freed += candidate.size_bytes
        else:
            blocked = True
    return VolumePlan(chosen, freed, max(0, deficit - freed), blocked)


# --- the report -------------------------------------------------------------------------------


@dataclass
class StreamRetention:
    segments: int = 0
    bytes: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # "age"/"size"/"volume:<path>" -> segments


@dataclass
class RetentionReport:
    dry_run: bool
    streams: dict[str, StreamRetention] = field(default_factory=dict)
    alarms: list[str] = field(default_factory=list)
    deleted_files_bytes: int = 0  # bytes actually unlinked (0 in a dry run)
    # Set when the age cut-off was not taken from the clock (it ran ahead of every write).
    clock: str | None = None

    @property
    def segments(self) -> int:
        return sum(s.segments for s in self.streams.values())

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.streams.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "segments": self.segments,
            "bytes": self.bytes,
            "streams": {
                name: {"segments": s.segments, "bytes": s.bytes, "reasons": s.reasons}
                for name, s in sorted(self.streams.items())
            },
            "alarms": self.alarms,
            "clock": self.clock,
        }


# --- applying it -------------------------------------------------------------------------------


def _candidates(where: pw.Expression, order: Any) -> list[tuple[Candidate, int, str]]:
    query = (
        Recording.select(
            Recording.id,
            Recording.ended_at,
            Recording.size_bytes,
            Recording.archived,
            Recording.stream,
            Stream.name,
        )
        .join(Stream)
        .where(
            where
            & Recording.ended_at.is_null(False)
            & Recording.state.in_([s.value for s in DELETABLE_STATES])
        )
        .order_by(*order)
    )
    # Raw rows from the cursor: ended_at stays integer milliseconds instead of
    # a datetime made and unmade per row, which on a million candidates was
    # most of retention's time (and of the GIL a writer thread waits for).
    sql, params = query.sql()
    return [
        (Candidate(rec_id, ended_ms, size, bool(archived)), stream_id, name)
        for rec_id, ended_ms, size, archived, stream_id, name in database_proxy.execute_sql(sql, params)
    ]


def apply_retention(
    policy: RetentionPolicy,
    *,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    free_bytes: Callable[[str], int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RetentionReport:
    """Decide what the policy removes and (unless ``dry_run``) remove it.

    Returns per stream the segments and bytes freed and why. A real run
    writes one ``retention_applied`` event with the counts. ``free_bytes``
    measures a volume's free space (default: ``shutil.disk_usage``);
    ``progress(done, total)`` is called after each batch.
    """
    now_ms = now_millis() if now is None else to_millis(now, "now")
    free_bytes = free_bytes or (lambda path: shutil.disk_usage(path).free)
    report = RetentionReport(dry_run=dry_run)
    age_now_ms = _age_clock(now_ms, report)
    chosen: dict[int, tuple[str, str]] = {}  # recording id -> (stream name, reason)
    sizes: dict[int, int] = {}

    for stream in Stream.select(Stream.id, Stream.name, Stream.retention):
        rule = policy.rule_for(stream.name, stream.retention)
        mine = Recording.stream == stream.id
        by_age: list[int] = []
        if rule.max_age_days is not None:
            cutoff = age_now_ms - int(rule.max_age_days * DAY_MS)
            # A recording that ended before the cutoff started before it too:
            # the (stream, started_at) index bounds the scan.
            old = _candidates(mine & (Recording.started_at < cutoff), (Recording.started_at, Recording.id))
            by_age = _by_age_trusting_index(stream.id, old, age_now_ms, rule.max_age_days)
            sizes.update((c.id, c.size_bytes) for c, _s, _n in old)
            chosen.update((rec_id, (stream.name, "age")) for rec_id in by_age)
        if rule.max_bytes is not None:
            total = (
                Recording.select(pw.fn.COALESCE(pw.fn.SUM(Recording.size_bytes), 0))
                .where(mine & (Recording.archived == False))  # noqa: E712 - SQL, not Python
                .scalar()
            )
            if total - sum(sizes.get(i, 0) for i in by_age) > rule.max_bytes:
                # Oldest first by segment index, which only grows: a clock
                # that was wrong cannot put the newest footage first.
                rows = _candidates(mine, (Recording.segment_index,))
                sizes.update((c.id, c.size_bytes) for c, _s, _n in rows)
                by_size = plan_by_size((c for c, _s, _n in rows), total, rule.max_bytes, skip=by_age)
                chosen.update((rec_id, (stream.name, "size")) for rec_id in by_size)

    for floor in policy.volumes:
        root = floor.path.rstrip(os.sep) + os.sep
        rows = _candidates(
            pw.fn.SUBSTR(Recording.path, 1, len(root)) == root,
            # Segments whose time is suspect go last: their "1970" is not old.
            (Recording.clock_suspect.is_null(False), Recording.ended_at, Recording.id),
        )
        # What age and size retention free on this volume counts towards the floor.
        already = sum(c.size_bytes for c, _s, _n in rows if c.id in chosen)
        deficit = floor.min_free_bytes - free_bytes(floor.path) - already
        if deficit <= 0:
            continue
        plan = plan_for_volume(
            [c for c, _s, _n in rows], deficit, policy.archived_when_full, skip=set(chosen)
        )
        names = {c.id: name for c, _sid, name in rows}
        sizes.update((c.id, c.size_bytes) for c, _s, _n in rows)
        for rec_id in plan.ids:
            chosen[rec_id] = (names[rec_id], f"volume:{floor.path}")
        if plan.blocked_by_archive or plan.short_by:
            why = (
                "only archived recordings are left and archived_when_full='alarm'"
                if plan.blocked_by_archive
                else "nothing more can be deleted"
            )
            floor_text = f"its {floor.min_free_bytes}-byte free-space floor"
            report.alarms.append(f"{floor.path}: {plan.short_by} bytes short of {floor_text}; {why}")

    if report.clock is not None and now_ms - age_now_ms > CLOCK_AHEAD_ALARM_MS:
        report.alarms.append(report.clock)  # a critical retention event carries it
    for rec_id, (name, reason) in chosen.items():
        entry = report.streams.setdefault(name, StreamRetention())
        entry.segments += 1
        entry.bytes += sizes.get(rec_id, 0)
        entry.reasons[reason] = entry.reasons.get(reason, 0) + 1

    if not dry_run:
        report.deleted_files_bytes = delete_recordings(
            sorted(chosen),
            batch_size=policy.batch_size,
            pause_seconds=policy.pause_seconds,
            progress=progress,
        )
        _record_run(report, now_ms)
    return report


# How far past the newest recorded evidence "now" may be before the age
# cut-off stops following the clock (a recorder idle this long is normal).
EVIDENCE_SLACK_MS = 3_600_000
# How far ahead before it is an alarm (and a critical event) rather than a note.
CLOCK_AHEAD_ALARM_MS = DAY_MS


def newest_evidence_ms() -> int | None:
    """The latest time the database has seen written: an event, a believable segment's end, or an
    open one's start (each read from an index)."""
    believable = Recording.clock_suspect.is_null()
    event = Event.select(pw.fn.MAX(Event.ts)).scalar()
    ended = Recording.select(pw.fn.MAX(Recording.ended_at)).where(believable).scalar()
    started = (
        Recording.select(pw.fn.MAX(Recording.started_at))
        .where(believable & Recording.ended_at.is_null())
        .scalar()
    )
    values = [v if isinstance(v, int) else to_millis(v) for v in (ended, started, event) if v is not None]
    return max(values) if values else None


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def _age_clock(now_ms: int, report: RetentionReport) -> int:
    """``now`` for age retention: the clock, unless it is ahead of every recorded write.

    With the clock 40 days ahead (bad NTP, an RTC-less board), age
    retention would delete footage finished a minute ago. The cut-off is
    taken from ``min(now, newest evidence + 1 h)`` and the report says so.
    Events count as evidence: a running recorder writes them all the time.
    """
    newest = newest_evidence_ms()
    if newest is None or now_ms <= newest + EVIDENCE_SLACK_MS:
        return now_ms
    ahead_h = (now_ms - newest) / 3_600_000
    report.clock = (
        f"the clock ({_iso(now_ms)}) is {ahead_h:.1f} h ahead of the newest write ({_iso(newest)}); "
        "age limits count from the newest write plus 1 h instead"
    )
    log.warning("retention: %s", report.clock)
    return newest + EVIDENCE_SLACK_MS


def _by_age_trusting_index(
    stream_id: int, old: list[tuple[Candidate, int, str]], now_ms: int, max_age_days: float
) -> list[int]:
    """``plan_by_age``, except that a segment with a suspect time is judged by its index.

    Its timestamps are not evidence of age (a 1970 segment is the newest
    footage after a boot without a clock); it goes only when a believable
    segment recorded after it (a higher index) is old enough to go.
    """
    chosen = plan_by_age((c for c, _s, _n in old), now_ms, max_age_days)
    suspects: dict[int, int] = dict(
        tuple_rows(
            Recording.select(Recording.id, Recording.segment_index).where(
                (Recording.stream == stream_id) & Recording.clock_suspect.is_null(False)
            )
        )
    )
    if not suspects:
        return chosen
    cutoff = now_ms - int(max_age_days * DAY_MS)
    newest_index = (
        Recording.select(pw.fn.MAX(Recording.segment_index))
        .where(
            (Recording.stream == stream_id)
            & Recording.clock_suspect.is_null()
            & (Recording.ended_at < cutoff)
            & (Recording.archived == False)  # noqa: E712 - SQL, not Python
        )
        .scalar()
    )
    if newest_index is None:
        return [i for i in chosen if i not in suspects]
    return [i for i in chosen if i not in suspects or suspects[i] < newest_index]


def delete_recordings(
    ids: Sequence[int],
    *,
    batch_size: int = 200,
    pause_seconds: float = 0.03,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Delete recordings and their files, crash-safe, in small batches; return bytes unlinked.

    Each row is first marked ``deleting`` (committed), then its file is
    unlinked, then the row is removed, so a crash leaves only ``deleting``
    rows, which the next restore finishes. To hold the write lock once per
    batch, one short transaction removes the previous batch's rows (files
    already gone) and marks the next batch. Open segments and rows another
    process already took are skipped.

    The pause between batches is longer than the 25 ms steps of SQLite's
    busy handler, so a writer waiting for the lock always finds a gap.
    """
    db = database_proxy
    # Rows this run marks "deleting" name its session, so that a repair run
    # elsewhere leaves them alone while this process lives.
    session = writer(db)
    freed = 0
    deletable = [s.value for s in DELETABLE_STATES]
    unlinked: list[int] = []  # marked, file gone, row still to remove
    for start in range(0, len(ids) + batch_size, batch_size):
        batch = list(ids[start : start + batch_size])
        if not batch and not unlinked:
            break
        with db.atomic():
            if unlinked:
                Recording.finish_delete(unlinked)
            rows = []
            if batch:
                rows = list(
                    tuple_rows(
                        Recording.select(Recording.id, Recording.path).where(
                            Recording.id.in_(batch) & Recording.state.in_(deletable)
                        )
                    )
                )
                if rows:
                    # invariant 6: rows say "deleting" (committed) before their files go
                    marked = set(
                        Recording.transition(
                            [rec_id for rec_id, _ in rows],
                            DELETABLE_STATES,
                            SegmentState.DELETING,
                            values={"busy_session_id": session.id},
                        ).changed
                    )
                    rows = [(rec_id, path) for rec_id, path in rows if rec_id in marked]
        unlinked = []
        for rec_id, path in rows:
            try:
                freed += unlink_quietly(path)
                unlinked.append(rec_id)
            except OSError as exc:
                # The row stays "deleting"; restore retries, and the file is not forgotten.
                log.warning("could not delete %s: %s", path, exc)
        if progress and batch:
            progress(min(start + batch_size, len(ids)), len(ids))
        checkpoint_passive()
        if pause_seconds and (unlinked or start + batch_size < len(ids)):
            time.sleep(pause_seconds)
    return freed


def checkpoint_passive() -> None:
    """Copy the WAL back into the database without waiting for anyone (SQLite).

    A bulk job calls it between batches so that it pays for the WAL it
    writes: otherwise the WAL passes the auto-checkpoint threshold on some
    writer's commit, and that writer waits for the whole checkpoint.
    """
    dialect().checkpoint_passive()


def _record_run(report: RetentionReport, now_ms: int) -> None:
    # invariant 11: one event says what the run deleted
    if not report.segments and not report.alarms:
        return
    severity = Severity.CRITICAL if report.alarms else Severity.INFO
    Event.record(
        EventType.RETENTION_APPLIED,
        severity=severity,
        message=(
            f"retention deleted {report.segments} segment(s), {report.bytes} bytes"
            + (f"; ALARM: {'; '.join(report.alarms)}" if report.alarms else "")
        ),
        data=report.as_dict(),
        at=dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC),
    )
    if report.alarms:
        log.critical("retention alarm: %s", "; ".join(report.alarms))
