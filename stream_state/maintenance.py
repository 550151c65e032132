"""Upkeep that keeps a years-long recorder small and healthy without stalling it.

* ``purge_events`` / ``purge_samples``: delete old rows in batches of a few
  hundred, each its own short transaction, with a pause between batches so
  a writer waiting for the lock waits one batch at most.
* ``incremental_vacuum``, ``vacuum``, ``checkpoint_wal``, ``optimize``: give
  space back and keep the planner informed (SQLite; no-ops on PostgreSQL,
  whose autovacuum does this).
* ``backup(dest)``: a consistent copy while the recorder writes (one step of
  SQLite's online backup API, written atomically; see ``stream_state.backups``).
  PostgreSQL: use ``pg_dump`` (see ``BackupNotSupported``).
* ``integrity_check()``: ``PRAGMA integrity_check`` and foreign-key checks,
  then the numbered rules of docs/invariants.md that rows can break.
* ``Maintenance(db, policy).run_due(now)``: the one call a manager makes every
  minute; runs what is due, remembering in the database when each job last ran.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peewee as pw

from .backends import check_database_file, current_database, database_proxy, dialect
from .backups import BackupMethod
from .database import backup_sqlite
from .errors import StreamStateError, ValidationError
from .invariants import InvariantViolation, check_invariants
from .models import Event, MetricBlock, MetricSample, MetricSeries, SystemState
from .pwtypes import tuple_rows
from .retention import RetentionPolicy, apply_retention, checkpoint_passive
from .rollups import ROLLUP_SETTLE, refresh_rollups
from .states import EventType, Severity
from .timeutil import from_millis, now_millis, to_millis
from .validate import require_days

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
SCHEDULE_KEY = "maintenance_schedule"


class BackupNotSupported(StreamStateError):
    """``backup()`` on PostgreSQL: the server's own tools do it properly."""


def _check_days(field: str, days: Any) -> float:
    return require_days(field, days)


# --- purge -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeReport:
    events: int = 0
    samples: int = 0
    batches: int = 0
    seconds: float = 0.0


def purge_events(
    older_than_days: float,
    *,
    keep_types: Mapping[str, float] | None = None,
    now: dt.datetime | None = None,
    batch_size: int = 500,
    pause_seconds: float = 0.01,
    progress: Callable[[int], None] | None = None,
) -> PurgeReport:
    """Delete events older than ``older_than_days``; types in ``keep_types`` live their own number of days.

    Batches of at most ``batch_size`` ids, oldest first, each a short
    transaction, so a concurrent writer is never held up for long.
    """
    older_than_days = _check_days("older_than_days", older_than_days)
    keep_types = {t: _check_days(f"keep_types[{t!r}]", d) for t, d in (keep_types or {}).items()}
    now_ms = now_millis() if now is None else to_millis(now, "now")
    started = time.perf_counter()
    deleted = batches = 0
    # The general cutoff excludes the kept types; each kept type then gets its own cutoff.
    passes = [
        (now_ms - int(older_than_days * DAY_MS), Event.type.not_in(list(keep_types)) if keep_types else None)
    ]
    passes += [(now_ms - int(days * DAY_MS), Event.type == kind) for kind, days in keep_types.items()]
    for cutoff, condition in passes:
        while True:
            where = Event.ts < cutoff
            if condition is not None:
                where &= condition
            ids = [
                row[0]
                for row in tuple_rows(
                    Event.select(Event.id).where(where).order_by(Event.ts).limit(batch_size)
                )
            ]
            if not ids:
                break
            with current_database().atomic():
                deleted += Event.delete().where(Event.id.in_(ids)).execute()
            checkpoint_passive()
            batches += 1
            if progress:
                progress(deleted)
            if len(ids) < batch_size:
                break
            time.sleep(pause_seconds)
    return PurgeReport(events=deleted, batches=batches, seconds=time.perf_counter() - started)


def purge_samples(
    older_than_days: float,
    *,
    now: dt.datetime | None = None,
    batch_size: int = 500,
    pause_seconds: float = 0.01,
    progress: Callable[[int], None] | None = None,
) -> PurgeReport:
    """Delete metric samples older than ``older_than_days``, raw and compacted (rollups are kept).

    Walks each series' own (series, ts) key range in batches: every DELETE is
    an index range of at most ``batch_size`` rows. Compacted hours
    (``metric_block``) older than the cutoff are dropped whole, one
    statement per series.
    """
    older_than_days = _check_days("older_than_days", older_than_days)
    now_ms = now_millis() if now is None else to_millis(now, "now")
    cutoff = now_ms - int(older_than_days * DAY_MS)
    started = time.perf_counter()
    deleted = batches = 0
    # A list, not a live cursor: the checkpoint between batches cannot run
    # while this connection still has a statement open.
    for series_id in [row[0] for row in tuple_rows(MetricSeries.select(MetricSeries.id))]:
        while True:
            # The ts of the batch_size-th oldest old sample bounds this batch.
            bound = (
                MetricSample.select(MetricSample.ts)
                .where((MetricSample.series == series_id) & (MetricSample.ts < cutoff))
                .order_by(MetricSample.ts)
                .offset(batch_size - 1)
                .limit(1)
                .scalar()
            )
            upper = cutoff if bound is None else min(cutoff, _ms(bound) + 1)
            with current_database().atomic():
                count = (
                    MetricSample.delete()
                    .where((MetricSample.series == series_id) & (MetricSample.ts < upper))
                    .execute()
                )
            deleted += count
            checkpoint_passive()
            if count:
                batches += 1
                if progress:
                    progress(deleted)
            if bound is None:
                break
            time.sleep(pause_seconds)
        # Compacted hours: whole blocks go at once; the hour the cutoff cuts is re-encoded.
        with current_database().atomic():
            count = MetricBlock.purge(current_database(), series_id, cutoff)
        if count:
            deleted += count
            batches += 1
            if progress:
                progress(deleted)
    return PurgeReport(samples=deleted, batches=batches, seconds=time.perf_counter() - started)


def purge(
    *,
    events_days: float | None = None,
    samples_days: float | None = None,
    keep_types: Mapping[str, float] | None = None,
    now: dt.datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> PurgeReport:
    """Purge old events and/or raw samples and write one ``purged`` event with the counts.

    ``progress`` gets the running total of rows deleted.
    """
    if events_days is None and samples_days is None:
        raise ValidationError("events_days/samples_days", None, "give at least one of them")
    events = samples = PurgeReport()
    if events_days is not None:
        events = purge_events(events_days, keep_types=keep_types, now=now, progress=progress)
    if samples_days is not None:
        done = events.events
        samples = purge_samples(
            samples_days, now=now, progress=(lambda n: progress(done + n)) if progress else None
        )
    report = PurgeReport(
        events=events.events,
        samples=samples.samples,
        batches=events.batches + samples.batches,
        seconds=events.seconds + samples.seconds,
    )
    if report.events or report.samples:
        Event.record(
            EventType.PURGED,
            severity=Severity.INFO,
            message=f"purged {report.events} event(s) and {report.samples} metric sample(s)",
            data={"events": report.events, "samples": report.samples},
            at=now,
        )
    return report


def _ms(value: Any) -> int:
    return value if isinstance(value, int) else to_millis(value)


# --- space and planner ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VacuumReport:
    pages_freed: int
    bytes_freed: int
    steps: int
    longest_step_seconds: float  # how long one step held the write lock


def _pragma(name: str) -> Any:
    return current_database().execute_sql(f"PRAGMA {name}").fetchone()[0]


def incremental_vacuum(
    max_pages: int | None = None, *, pages_per_step: int = 1000, pause_seconds: float = 0.01
) -> VacuumReport:
    """Give free pages back to the filesystem, ``pages_per_step`` at a time (SQLite)."""
    if not dialect().is_sqlite:
        return VacuumReport(0, 0, 0, 0.0)
    page_size = _pragma("page_size")
    free_before = _pragma("freelist_count")
    target = free_before if max_pages is None else min(max_pages, free_before)
    freed = steps = 0
    longest = 0.0
    # The pragma returns a row per page and stops after the first fetch when
    # run as a query; executescript runs it to completion.
    raw = current_database().connection()
    while freed < target:
        step = min(pages_per_step, target - freed)
        started = time.perf_counter()
        raw.executescript(f"PRAGMA incremental_vacuum({step});")
        longest = max(longest, time.perf_counter() - started)
        now_free = _pragma("freelist_count")
        done = free_before - now_free - freed
        if done <= 0:
            break
        freed += done
        steps += 1
        time.sleep(pause_seconds)
    return VacuumReport(freed, freed * page_size, steps, longest)


def vacuum() -> int:
    """A full VACUUM (SQLite; blocks writers while it runs). Returns bytes saved."""
    if not dialect().is_sqlite:
        current_database().execute_sql("VACUUM")
        return 0
    before = _pragma("page_count") * _pragma("page_size")
    current_database().connection().executescript("VACUUM;")
    return before - _pragma("page_count") * _pragma("page_size")


def wal_size() -> int:
    if not dialect().is_sqlite:
        return 0
    try:
        return os.path.getsize(current_database().database + "-wal")
    except OSError:
        return 0


def checkpoint_wal(min_bytes: int = 0) -> bool:
    """Checkpoint and truncate the WAL when it is at least ``min_bytes``; True if it ran fully."""
    if not dialect().is_sqlite or wal_size() < min_bytes:
        return False
    busy, _log, _done = current_database().execute_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return busy == 0


def optimize() -> None:
    """Refresh the planner's statistics (``PRAGMA optimize`` / ``ANALYZE``)."""
    if dialect().is_sqlite:
        current_database().execute_sql("PRAGMA optimize")
    else:
        current_database().execute_sql("ANALYZE")


# --- backup and integrity ----------------------------------------------------------------------------


def backup(dest: str | os.PathLike[str], *, force: bool = False, method: BackupMethod = "copy") -> Path:
    """A consistent copy of a live SQLite database at ``dest`` (0600), taken while writers continue.

    Written to a temporary file and renamed onto ``dest``, so ``dest`` is
    either the whole copy or untouched; an existing ``dest`` is replaced only
    with ``force``; ``dest`` may not be the database itself or a symbolic
    link. ``method="vacuum"`` writes a compacted copy (``VACUUM INTO``).
    """
    db = current_database()
    if not dialect(db).is_sqlite:
        raise BackupNotSupported(
            "backup() copies SQLite files; for PostgreSQL use `pg_dump -Fc DBNAME > backup.dump` "
            "(or continuous archiving with pg_basebackup) and restore with pg_restore"
        )
    return backup_sqlite(db, dest, force=force, method=method)


@dataclass(frozen=True)
class IntegrityReport:
    ok: bool
    problems: tuple[str, ...]
    foreign_key_violations: tuple[tuple, ...] = ()
    # The package's own rules (docs/invariants.md) that rows break, by number.
    invariants: tuple[InvariantViolation, ...] = ()


def integrity_check() -> IntegrityReport:
    """The backend's own checks, then the package's numbered rules (docs/invariants.md).

    On SQLite ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check``;
    PostgreSQL enforces its constraints itself. On both, every rule that the
    database alone can show broken (``check_invariants()``).
    """
    db = current_database()
    problems: tuple[str, ...] = ()
    violations: tuple[tuple, ...] = ()
    if dialect(db).is_sqlite:
        problems = tuple(
            row[0] for row in db.execute_sql("PRAGMA integrity_check").fetchall() if row[0] != "ok"
        )
        violations = tuple(tuple(row) for row in db.execute_sql("PRAGMA foreign_key_check").fetchall())
    # A damaged file answers queries wrongly or not at all: damage first.
    broken = () if problems else check_invariants()
    return IntegrityReport(not problems and not violations and not broken, problems, violations, broken)


# --- the scheduler ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpkeepPolicy:
    """What ``Maintenance.run_due`` does and how often (intervals in seconds)."""

    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    event_days: float | None = 90
    event_keep_types: Mapping[str, float] = field(default_factory=dict)
    sample_days: float | None = 14
    wal_checkpoint_bytes: int = 64 * 1024 * 1024
    intervals: Mapping[str, float] = field(
        default_factory=lambda: {
            "rollups": 300,
            "compact": 3600,
            "runs": 600,
            "retention": 3600,
            "purge": 86400,
            "incremental_vacuum": 600,
            "wal_checkpoint": 300,
            "optimize": 86400,
        }
    )


@dataclass
class RunReport:
    ran: dict[str, Any] = field(default_factory=dict)  # job -> its result
    skipped: dict[str, float] = field(default_factory=dict)  # job -> seconds until due
    failed: dict[str, str] = field(default_factory=dict)


class Maintenance:
    """Runs the upkeep jobs that are due; call ``run_due()`` every minute.

    When each job last ran is kept in the database (``system_state``), so a
    restart neither repeats a job that just ran nor skips one that was due.
    A job that fails is retried at the next call and does not stop the others.
    """

    # compact after rollups: it only takes hours the rollups already cover.
    # runs: the timeline's summary of the hours that settled since its last run.
    JOBS = (
        "rollups",
        "compact",
        "runs",
        "retention",
        "purge",
        "incremental_vacuum",
        "wal_checkpoint",
        "optimize",
    )

    def __init__(self, db: pw.Database | None = None, policy: UpkeepPolicy | None = None):
        if db is not None and database_proxy.obj is not db:
            database_proxy.initialize(db)
        self.policy = policy or UpkeepPolicy()
        unknown = set(self.policy.intervals) - set(self.JOBS)
        if unknown:
            raise ValidationError("intervals", sorted(unknown), f"unknown job; jobs are {self.JOBS}")

    def last_runs(self) -> dict[str, int]:
        return dict(SystemState.read(SCHEDULE_KEY) or {})

    def run_due(self, now: dt.datetime | None = None) -> RunReport:
        now_ms = now_millis() if now is None else to_millis(now, "now")
        check_database_file(current_database())  # a deleted database file is reported every minute, loudly
        report = RunReport()
        for job in self.JOBS:
            interval = self.policy.intervals.get(job)
            if interval is None:
                continue
            last = self.last_runs().get(job)
            if last is not None and last > now_ms:
                # The clock stepped back (or ran ahead when the job last ran):
                # a last run "in the future" would skip the job until the clock
                # caught up, for days, while the disk fills. It is due now.
                log.warning(
                    "maintenance job %s last ran at %s, after now (%s): the clock stepped back; "
                    "running it now",
                    job,
                    from_millis(last).isoformat(),
                    from_millis(now_ms).isoformat(),
                )
            elif last is not None and now_ms - last < interval * 1000:
                report.skipped[job] = (last + interval * 1000 - now_ms) / 1000
                continue
            try:
                report.ran[job] = getattr(self, f"_run_{job}")(now_ms)
            except Exception as exc:  # one failing job must not stop the others
                log.exception("maintenance job %s failed", job)
                report.failed[job] = str(exc)
                continue
            runs = self.last_runs()
            runs[job] = now_ms
            SystemState.write(SCHEDULE_KEY, runs)
        return report

    def _run_rollups(self, now_ms: int) -> dict:
        report = refresh_rollups(until=from_millis(now_ms) - ROLLUP_SETTLE)
        return dataclasses.asdict(report)

    def _run_compact(self, now_ms: int) -> dict:
        from .compaction import compact_samples

        return dataclasses.asdict(compact_samples(from_millis(now_ms)))

    def _run_runs(self, now_ms: int) -> dict:
        from .segment_runs import summarize_runs

        return dataclasses.asdict(summarize_runs(from_millis(now_ms)))

    def _run_retention(self, now_ms: int) -> dict:
        return apply_retention(self.policy.retention, now=from_millis(now_ms)).as_dict()

    def _run_purge(self, now_ms: int) -> dict:
        if not self.policy.event_days and not self.policy.sample_days:
            return {"events": 0, "samples": 0}
        report = purge(
            events_days=self.policy.event_days or None,
            samples_days=self.policy.sample_days or None,
            keep_types=self.policy.event_keep_types,
            now=from_millis(now_ms),
        )
        return {"events": report.events, "samples": report.samples}

    def _run_incremental_vacuum(self, now_ms: int) -> dict:
        result = incremental_vacuum()
        return {"bytes_freed": result.bytes_freed, "steps": result.steps}

    def _run_wal_checkpoint(self, now_ms: int) -> bool:
        return checkpoint_wal(self.policy.wal_checkpoint_bytes)

    def _run_optimize(self, now_ms: int) -> bool:
        optimize()
        return True
