"""The ``stream-state`` command line: thin wrappers over library functions.

Each command opens the database (``--db URL``, else ``$STREAM_STATE_DATABASE_URL``,
else ``./stream_state.db``), calls one library function and prints the result:
an aligned table for people, JSON with ``--json`` for scripts. Formatting and
the parsing of times, durations and sizes live in ``stream_state.cli_output``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, cast

import click
import peewee as pw
from playhouse.pool import PooledDatabase

from . import __version__, history
from .backends import dialect, url_backend
from .check import DEFAULT_MAX_SHARE
from .check import check as check_storage
from .cli_output import (
    Progress,
    format_duration,
    format_size,
    format_table,
    format_time,
    parse_duration,
    parse_size,
    parse_time,
    restored_streams_table,
    to_json,
)
from .database import (
    URL_ENV,
    applied_migrations,
    backup_sqlite,
    code_schema_version,
    connect_database,
    open_database,
    pending_migrations,
    resolve_url,
    rollback_one,
    schema_version,
    sqlite_path,
)
from .errors import DatabaseUnavailable, StreamStateError, ValidationError
from .maintenance import backup, incremental_vacuum, integrity_check, vacuum
from .maintenance import purge as purge_old
from .models import Event, Recording, database_proxy
from .models.session import forget_process_session
from .probe import probe as probe_file
from .redact import redact_data, redact_text, redact_uri
from .restore import Restorer
from .retention import RetentionPolicy, RetentionRule, VolumeFloor, apply_retention
from .sessions import SessionInfo, end_session, list_sessions
from .states import SegmentState, Severity
from .timeutil import from_millis
from .validate import MAX_DAYS

# 0 is success and 2 a usage error (click's own code).
EXIT_FAILURE = 1
EXIT_PROBLEMS = 3
EXIT_INTERRUPTED = 130

_URL = "stream_state.url"
_VERBOSE = "stream_state.verbose"


# --- errors, logging, options shared by every command --------------------------------------------


def _one_line(text: str) -> str:
    return redact_text(re.sub(r"\s*\n\s*", " ", text).strip())


class _LibraryLog(logging.Handler):
    """Library log records on stderr, only with --verbose (otherwise the command's output says it)."""

    def __init__(self, ctx: click.Context):
        super().__init__(logging.INFO)
        self.ctx = ctx
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if self.ctx.meta.get(_VERBOSE):
            click.echo(redact_text(self.format(record)), err=True)


class StreamStateGroup(click.Group):
    """Turns failures into one line on stderr and an exit code; ``--verbose`` adds the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        logger = logging.getLogger("stream_state")
        handler = _LibraryLog(ctx)
        propagate, logger.propagate = logger.propagate, False
        level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            raise  # the reader went away (`| head`); main() leaves quietly
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            if ctx.meta.get(_VERBOSE):
                click.echo(redact_text(traceback.format_exc()).rstrip(), err=True)
            if isinstance(exc, StreamStateError):
                message = str(exc)
            else:
                message = f"unexpected {type(exc).__name__}: {exc}"
                if not ctx.meta.get(_VERBOSE):
                    message += " (run with --verbose for the traceback)"
            click.echo(f"error: {_one_line(message)}", err=True)
            ctx.exit(EXIT_FAILURE)
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate
            logger.setLevel(level)


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value:
            ctx.meta[key] = value
        return value

    return callback


_DB_HELP = (
    "Database URL: sqlite:///relative.db, sqlite:////absolute.db, a file path, or "
    f"postgresql://user:pass@host/dbname. Default: ${URL_ENV}, else ./stream_state.db."
)


def verbose_option(f: Callable) -> Callable:
    return click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        callback=_remember(_VERBOSE),
        help="Show the library's log and, on failure, the full traceback.",
    )(f)


def database_options(f: Callable) -> Callable:
    """``--db`` and ``--verbose`` on a command (they work before the command name too)."""
    f = verbose_option(f)
    return click.option("--db", metavar="URL", expose_value=False, callback=_remember(_URL), help=_DB_HELP)(f)


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")(
        f
    )


def _interactive() -> bool:
    """Progress bars only for a person at a terminal; piped output stays quiet."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def _progress(label: str, as_json: bool) -> Progress:
    return Progress(label, enabled=_interactive() and not as_json)


# --- parameter types --------------------------------------------------------------------------


class TimeType(click.ParamType):
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        try:
            return parse_time(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class DurationType(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.timedelta:
        if isinstance(value, dt.timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class VolumeFloorType(click.ParamType):
    name = "PATH:MIN_FREE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> VolumeFloor:
        if isinstance(value, VolumeFloor):
            return value
        path, sep, size = str(value).rpartition(":")
        if not sep or not path:
            self.fail(f"{value!r}: expected PATH:MIN_FREE, e.g. /srv/video:50GiB", param, ctx)
        try:
            return VolumeFloor(path, parse_size(size))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class KeepType(click.ParamType):
    name = "TYPE=DAYS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple:
        if isinstance(value, tuple):
            return value
        kind, sep, days = str(value).partition("=")
        try:
            number = float(days)
            if not sep or not kind or not 0 < number <= MAX_DAYS:
                raise ValueError
        except ValueError:
            self.fail(f"{value!r}: expected TYPE=DAYS, e.g. health_changed=365", param, ctx)
        return kind, number


class DaysType(click.ParamType):
    """A positive, finite number of days, at most MAX_DAYS (``inf`` and ``1e308`` are usage errors)."""

    name = "DAYS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of days", param, ctx)
        if not math.isfinite(number) or not 0 < number <= MAX_DAYS:
            self.fail(f"{value!r} is not a positive number of days up to {MAX_DAYS:,}", param, ctx)
        return number


TIME = TimeType()
DAYS = DaysType()
DURATION = DurationType()
SIZE = SizeType()

_TIME_HELP = "ISO 8601 (local time unless a zone is given), now, today, yesterday, or -2h, -30m, -1d."


def window_options(since_default: str | None, until_default: str | None = "now") -> Callable:
    """``--since`` and ``--until``: the time window of a history command."""

    def decorate(f: Callable) -> Callable:
        f = click.option(
            "--until",
            type=TIME,
            default=until_default,
            show_default=until_default is not None,
            help=f"End of the window (exclusive). {_TIME_HELP}",
        )(f)
        return click.option(
            "--since",
            type=TIME,
            default=since_default,
            show_default=since_default is not None,
            help=f"Start of the window. {_TIME_HELP}",
        )(f)

    return decorate


def _check_window(since: dt.datetime | None, until: dt.datetime | None) -> None:
    if since is not None and until is not None and until < since:
        raise click.BadParameter(
            f"--until ({format_time(until)}) is before --since ({format_time(since)})", param_hint="--until"
        )


# --- the database -------------------------------------------------------------------------------


def _display_url(url: str | None) -> str:
    return redact_uri(resolve_url(url))


def _existing_sqlite(url: str | None) -> None:
    """Refuse to create an empty SQLite file as a side effect of a read-only command."""
    resolved = resolve_url(url)
    if url_backend(resolved) == "sqlite":
        path = sqlite_path(resolved)
        if not path.exists():
            raise DatabaseUnavailable(
                f"no database at {path}; create it with `stream-state migrate` or pass --db URL"
            )


def _close(db: pw.Database) -> None:
    if isinstance(db, PooledDatabase):
        db.close_all()
    else:
        db.close()


# What the reporting commands map of a SQLite file (SQLite caps it at its
# build's maximum): their long reads of scattered pages, the timeline's week
# of events first, cost a third less than a read() per page. A read error then
# ends the command with SIGBUS instead of a message; the manager's own
# connections and the commands that check or change files never map.
REPORT_MMAP_SIZE = 2 * 1024**3


@contextlib.contextmanager
def _database(*, migrate: bool = False, reporting: bool = False) -> Iterator[pw.Database]:
    """Open the command's database and bind the models; afterwards put back what was bound before.

    Commands other than ``migrate`` never migrate: a query must not change the
    schema under a running manager. A schema of another version is an error
    that says to run ``stream-state migrate``. ``reporting`` commands (they
    only read) read SQLite through a memory map (``REPORT_MMAP_SIZE``).
    """
    url = click.get_current_context().meta.get(_URL)
    if not migrate:
        _existing_sqlite(url)
    previous = database_proxy.obj
    db = open_database(url, migrate=migrate, mmap_size=REPORT_MMAP_SIZE if reporting else 0)
    try:
        yield db
    finally:
        # The command's own session (if it wrote) ends cleanly with it.
        forget_process_session(db)
        _close(db)
        database_proxy.initialize(previous)


def _echo_json(value: Any) -> None:
    click.echo(to_json(value))


def _echo_table(headers: list[str], rows: list[list[Any]], align: str | None = None, empty: str = "") -> None:
    if rows:
        click.echo(format_table(headers, rows, align))
    elif empty:
        click.echo(empty)


def _pairs(pairs: list[tuple[str, Any]]) -> None:
    width = max(len(key) for key, _ in pairs)
    for key, value in pairs:
        click.echo(f"{key.ljust(width)}  {value}")


# --- the command group -----------------------------------------------------------------------------


@click.group(
    cls=StreamStateGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "-V", "--version", prog_name="stream-state")
@click.option(
    "--db",
    metavar="URL",
    envvar=URL_ENV,
    show_envvar=True,
    expose_value=False,
    callback=_remember(_URL),
    help=_DB_HELP,
)
@verbose_option
def cli() -> None:
    """Inspect and maintain the database of a stream_state video recorder.

    Every command takes --db URL (default $STREAM_STATE_DATABASE_URL, else
    ./stream_state.db) and --verbose; listing commands take --json.
    Times are shown in local time with the zone, sizes in KiB/MiB/GiB.

    \b
    Exit status:
      0    success
      1    failure (one line on stderr; --verbose adds the traceback)
      2    usage error (a bad command, option or value)
      3    the command ran and found problems: check (rows and files
           disagree), integrity (damage), retention (a free-space
           floor cannot be met)
      130  interrupted
    """


# --- migrate ---------------------------------------------------------------------------------------


@cli.command()
@click.option("--status", is_flag=True, help="Only show the schema version and pending migrations.")
@click.option(
    "--rollback", is_flag=True, help="Undo the newest applied migration (SQLite is backed up first)."
)
@click.option("--yes", is_flag=True, help="Roll back without asking.")
@json_option
@database_options
def migrate(status: bool, rollback: bool, yes: bool, as_json: bool) -> None:
    """Show the schema version, apply pending migrations, or roll back one.

    Without options every pending migration is applied in one transaction;
    an existing SQLite file is first backed up beside itself.
    """
    if status and rollback:
        raise click.UsageError("--status and --rollback exclude each other")
    url = click.get_current_context().meta.get(_URL)
    if status or rollback:
        _existing_sqlite(url)
    db = connect_database(url)
    done: list[str] = []
    backup_path = None
    try:
        pending = pending_migrations(db)
        if rollback:
            name = schema_version(db)
            if name is not None and not yes:
                click.confirm(f"Roll back {name}? Its tables and columns are dropped", abort=True)
            if dialect(db).is_sqlite and name is not None:
                backup_path = backup_sqlite(db, label=f"pre-rollback-{name}")
            done = [rollback_one(db)]
    finally:
        _close(db)
    if not status and not rollback and pending:
        with _database(migrate=True):
            done = pending
    db = connect_database(url)
    try:
        result: dict[str, Any] = {
            "database": _display_url(url),
            "action": "status" if status else "rollback" if rollback else "migrate",
            "done": done,
            "backup": str(backup_path) if backup_path else None,
            "schema": schema_version(db),
            "code": code_schema_version(),
            "applied": applied_migrations(db),
            "pending": pending_migrations(db),
        }
    finally:
        _close(db)
    if as_json:
        _echo_json(result)
        return
    pairs = [("database", result["database"]), ("schema", result["schema"] or "(empty)")]
    pairs += [("code", result["code"]), ("pending", ", ".join(result["pending"]) or "none")]
    if result["action"] == "migrate":
        pairs.append(("applied", ", ".join(done) or "nothing to do"))
    elif rollback:
        pairs.append(("rolled back", ", ".join(done)))
        if backup_path:
            pairs.append(("backup", str(backup_path)))
    _pairs(pairs)


# --- streams ---------------------------------------------------------------------------------------


@cli.command()
@click.option("--all", "include_removed", is_flag=True, help="Include removed streams.")
@json_option
@database_options
def streams(include_removed: bool, as_json: bool) -> None:
    """List streams: status, health, whether a segment is being written, last seen."""
    with _database(reporting=True):
        found = history.stream_overview(include_removed)
    if as_json:
        _echo_json({"streams": [s.as_dict() for s in found]})
        return
    _echo_table(
        ["name", "status", "health", "recording", "desired", "last seen", "uri"],
        [
            [
                s.name + (" (removed)" if s.is_removed else ""),
                s.status,
                s.health,
                "yes" if s.is_recording else "no",
                s.desired,
                format_time(s.last_seen_at),
                s.display_uri,
            ]
            for s in found
        ],
        empty="no streams",
    )


# --- recordings and gaps -------------------------------------------------------------------------


def _recording_json(r: Recording | history.SegmentRow) -> dict:
    return {
        "id": r.id,
        "segment_index": r.segment_index,
        "path": r.path,
        "storage": r.storage,
        "started_at": r.started_at,
        "ended_at": r.ended_at,
        "seconds": r.duration.total_seconds() if r.duration is not None else None,
        "size_bytes": r.size_bytes,
        "state": r.state,
        "archived": bool(r.archived),
        "checkpoint_at": r.checkpoint_at,
        # Media timing (when the segmenter gave it, it is also start and end).
        "media_started_at": r.media_started_at,
        "media_ended_at": r.media_ended_at,
        "frame_count": r.frame_count,
        "finalized": r.finalized,
        "metadata": redact_data(r.metadata) if r.metadata is not None else None,
    }


# Below this, whole seconds hide what matters (1-second segments, a GOP of
# offset, a 0.4-second hole): times and lengths are shown to the millisecond.
SHORT = dt.timedelta(minutes=1)


def _precise(lengths: list[dt.timedelta | None]) -> bool:
    return any(length is not None and length < SHORT for length in lengths)


@cli.command()
@click.argument("stream")
@window_options(since_default="-24h")
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many segments (the oldest).")
@json_option
@database_options
def recordings(stream: str, since: dt.datetime, until: dt.datetime, limit: int | None, as_json: bool) -> None:
    """List the segments of STREAM that overlap the window, oldest first."""
    _check_window(since, until)
    with _database(reporting=True):
        found = history.resolve_stream(stream)
        # Plain rows from the cursor: a listing needs no models (a third of the time).
        rows = history.segment_rows(found, since, until, limit)
    if as_json:
        _echo_json(
            {
                "stream": found.name,
                "since": since,
                "until": until,
                "recordings": [_recording_json(r) for r in rows],
            }
        )
        return
    precise = _precise([r.duration for r in rows])
    _echo_table(
        ["id", "index", "start", "end", "length", "size", "state", "path"],
        [
            [
                r.id,
                r.segment_index,
                format_time(r.started_at, precise=precise),
                format_time(r.ended_at, precise=precise) if r.ended_at is not None else "(open)",
                format_duration(r.duration, precise=precise),
                format_size(r.size_bytes),
                f"{r.state}{', archived' if r.archived else ''}",
                r.path,
            ]
            for r in rows
        ],
        align="rr   r",
        empty=f"no segments of {found.name} between {format_time(since)} and {format_time(until)}",
    )
    if rows:
        total = sum(r.size_bytes for r in rows)
        click.echo(f"\n{len(rows)} segment(s), {format_size(total)}")


@cli.command()
@click.argument("stream")
@window_options(since_default="-24h")
@click.option(
    "--min-gap",
    type=DURATION,
    default="1s",
    show_default=True,
    help="Report only holes at least this long (500ms, 10s, 5m): shorter ones are segment-boundary jitter.",
)
@json_option
@database_options
def gaps(stream: str, since: dt.datetime, until: dt.datetime, min_gap: dt.timedelta, as_json: bool) -> None:
    """List the stretches of the window in which STREAM recorded nothing usable.

    Complete, interrupted and recovered segments count as recorded, and an
    open segment up to now; failed and missing ones do not.
    """
    _check_window(since, until)
    with _database(reporting=True):
        found = history.resolve_stream(stream)
        cover = history.coverage(found, since, until, tolerance=min_gap, reasons=True)
    if as_json:
        _echo_json({"stream": found.name, **cover.as_dict()})
        return
    precise = _precise([g.duration for g in cover.gaps])
    _echo_table(
        ["from", "to", "length", "why"],
        [
            [
                format_time(g.start, precise=precise),
                format_time(g.end, precise=precise),
                format_duration(g.duration, precise=precise),
                _one_line(redact_text(g.why)),
            ]
            for g in cover.gaps
        ],
        align="llrl",
        empty=f"no gaps in {found.name} between {format_time(since)} and {format_time(until)}",
    )
    if cover.gaps:
        missing, window = format_duration(cover.missing), format_duration(cover.window)
        click.echo(
            f"\n{len(cover.gaps)} gap(s), {missing} of {window} not recorded ({cover.share:.1%} recorded)"
        )


# --- usage -------------------------------------------------------------------------------------------


class DayType(click.ParamType):
    """A UTC day: ``2026-11-20``, ``today``, ``yesterday``, or any time (``-7d``) taken as its UTC day."""

    name = "DAY"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.date:
        if isinstance(value, dt.date):
            return value
        text = str(value).strip().lower()
        today = dt.datetime.now(dt.UTC).date()
        if text in ("today", "yesterday"):
            return today if text == "today" else today - dt.timedelta(days=1)
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            pass
        try:
            return parse_time(text).date()  # parse_time answers in UTC
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


# The CLI says "volume", the library "storage": the label a segment's storage volume carries.
_USAGE_BY = {"stream": "stream", "volume": "storage", "day": "day", "state": "state"}


def _usage_key(row: history.UsageRow, by: str) -> str:
    if by == "stream":
        return row.stream or "?"
    if by == "volume":
        return row.storage or "(none)"
    if by == "day":
        return str(row.day)  # a date's ISO form
    return str(row.state)


@cli.command()
@click.option(
    "--by",
    type=click.Choice(list(_USAGE_BY)),
    default="stream",
    show_default=True,
    help="Group by stream, storage volume, UTC day of the segment's start, or segment state.",
)
@click.option("--since", type=DayType(), help="First UTC day counted: 2026-11-20, today, yesterday, -7d.")
@click.option("--until", type=DayType(), help="First UTC day no longer counted (exclusive).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw storage per day as stacked bars into this file (.svg, .png, .pdf, .html; needs --by day).",
)
@click.option(
    "--stack",
    type=click.Choice(["volume", "stream", "state"]),
    default="volume",
    show_default=True,
    help="With --out: what the bars of a day are stacked by.",
)
@json_option
@database_options
def usage(
    by: str, since: dt.date | None, until: dt.date | None, out: Path | None, stack: str, as_json: bool
) -> None:
    """Show the storage the recorded segments take, by stream, volume, day or state.

    Read from a summary the database keeps up to date, so it is instant
    however long the history. With ``--by day --out FILE`` it draws the
    days as a chart instead (needs the extra: pip install 'stream_state[plot]').
    """
    if since is not None and until is not None and until <= since:
        raise click.BadParameter(f"--until ({until}) is not after --since ({since})", param_hint="--until")
    if out is not None:
        from . import timeline

        if by != "day":
            raise click.BadParameter("the chart shows storage per day; add --by day", param_hint="--out")
        timeline.require_plot()
        with _database(reporting=True):
            written = timeline.usage_chart(stack=stack, since=since, until=until, out=out)
        click.echo(f"wrote {written}")
        return
    with _database(reporting=True):
        rows = history.storage_usage(_USAGE_BY[by], since=since, until=until)
    if by == "day":
        rows.sort(key=lambda row: row.day or dt.date.min)
    total: dict[str, Any] = {
        "segments": sum(r.segments for r in rows),
        "size_bytes": sum(r.size_bytes for r in rows),
        "seconds": sum(r.duration.total_seconds() for r in rows),
    }
    if as_json:
        _echo_json(
            {
                "by": by,
                "since": since.isoformat() if since else None,
                "until": until.isoformat() if until else None,
                "usage": [
                    {
                        "key": _usage_key(r, by),
                        "segments": r.segments,
                        "size_bytes": r.size_bytes,
                        "seconds": r.duration.total_seconds(),
                    }
                    for r in rows
                ],
                "total": total,
            }
        )
        return
    table = [
        [_usage_key(r, by), r.segments, format_size(r.size_bytes), format_duration(r.duration)] for r in rows
    ]
    if len(rows) > 1:
        table.append(
            ["total", total["segments"], format_size(total["size_bytes"]), format_duration(total["seconds"])]
        )
    _echo_table(
        ["day (UTC)" if by == "day" else by, "segments", "size", "recorded"],
        table,
        align="lrrr",
        empty="no recordings",
    )


# --- timeline ------------------------------------------------------------------------------------------


@cli.command(name="timeline")
@click.argument("streams", nargs=-1, metavar="[STREAMS]...")
@window_options(since_default="-24h")
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The picture to write: .svg, .png, .pdf, or .html (one offline file with hover details).",
)
@click.option(
    "--min-gap",
    type=DURATION,
    default="1s",
    show_default=True,
    help="Holes shorter than this are segment-boundary jitter, not holes.",
)
@click.option(
    "--fit",
    is_flag=True,
    help="Shrink the window to the part with segments or events (e.g. a short run in the last 24 h).",
)
@click.option(
    "--width", type=click.IntRange(400, 20_000), default=1600, show_default=True, help="Width in pixels."
)
@click.option("--title", help="Heading of the picture (default: streams and window).")
@click.option(
    "--ticks",
    type=click.Choice([s.value for s in Severity]),
    default="info",
    show_default=True,
    help="Events of at least this severity are ticks above the lanes (health changes are the band).",
)
@json_option
@database_options
def timeline_command(
    streams: tuple[str, ...],
    since: dt.datetime,
    until: dt.datetime,
    out: Path,
    min_gap: dt.timedelta,
    fit: bool,
    width: int,
    title: str | None,
    ticks: str,
    as_json: bool,
) -> None:
    """Draw one lane per stream of STREAMS (default: every stream): spans, holes and why, health, events.

    Segments are coloured by state (complete, open, interrupted, failed,
    archived...); a hole is hatched in the colour of its reason (down,
    unhealthy, clock problem, file missing, unknown); a thin band under each
    lane is its health; ticks above it are events; dashed lines across all
    lanes are recorder restarts and clean stops. Times are local. Needs the
    extra: pip install 'stream_state[plot]'.
    """
    from . import timeline

    _check_window(since, until)
    timeline.require_plot()  # before touching the database: say what to install
    with _database(reporting=True):
        collected = timeline.collect(
            list(streams) or None, since, until, width=width, tolerance=min_gap, fit=fit, ticks=ticks
        )
        started = time.perf_counter()
        written = timeline.render(timeline=collected, out=out, title=title)
        drawn = time.perf_counter() - started
    reasons: dict[str, int] = {}
    for _lane, hole in collected.holes:
        reasons[hole.reason] = reasons.get(hole.reason, 0) + 1
    if as_json:
        _echo_json(
            {
                "out": str(written),
                "since": from_millis(collected.since),
                "until": from_millis(collected.until),
                "streams": [lane.name for lane in collected.lanes],
                "holes": [
                    {
                        "stream": lane.name,
                        "start": from_millis(hole.start),
                        "end": from_millis(hole.end),
                        "reason": hole.reason,
                        "detail": hole.detail,
                    }
                    for lane, hole in collected.holes
                ],
                "read_seconds": collected.query_seconds,
                "draw_seconds": drawn,
            }
        )
        return
    summary = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())) or "none"
    click.echo(
        f"wrote {written}: {len(collected.lanes)} stream(s), {format_time(from_millis(collected.since))} "
        f"to {format_time(from_millis(collected.until))}; holes: {summary} "
        f"(read {collected.query_seconds:.2f} s, drawn {drawn:.2f} s)"
    )


# --- events --------------------------------------------------------------------------------------------


def _stream_name(event: Event) -> str | None:
    """The stream's name that ``history.events`` reads with each event (joined, not a column)."""
    return getattr(event, "stream_name", None)


def _event_json(event: Event) -> dict:
    return {
        "id": event.id,
        "ts": event.ts,
        "stream": _stream_name(event),
        "type": event.type,
        "severity": event.severity,
        "message": redact_text(event.message) if event.message else event.message,
        "data": redact_data(event.data),
    }


@cli.command()
@click.option("--stream", metavar="NAME", help="Only events of this stream.")
@click.option("--type", "event_type", metavar="TYPE", help="Only events of this type, e.g. health_changed.")
@click.option(
    "--severity",
    type=click.Choice([s.value for s in Severity]),
    help="Only events at least this severe.",
)
@window_options(since_default=None, until_default=None)
@click.option(
    "--limit",
    type=click.IntRange(1, history.MAX_PAGE),
    default=50,
    show_default=True,
    help="Events per page.",
)
@click.option("--before", metavar="CURSOR", help="Continue from the cursor an earlier page printed.")
@json_option
@database_options
def events(
    stream: str | None,
    event_type: str | None,
    severity: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int,
    before: str | None,
    as_json: bool,
) -> None:
    """List events, newest first: health and status changes, repairs, maintenance."""
    _check_window(since, until)
    with _database(reporting=True):
        page = history.events(
            stream=stream,
            type=event_type,
            min_severity=severity,
            since=since,
            until=until,
            cursor=before,
            limit=limit,
        )
    if as_json:
        _echo_json({"events": [_event_json(e) for e in page.events], "next": page.next_cursor})
        return
    _echo_table(
        ["time", "severity", "stream", "type", "message"],
        [
            [
                format_time(e.ts),
                e.severity,
                _stream_name(e) or "-",
                e.type,
                redact_text(e.message or ""),
            ]
            for e in page.events
        ],
        empty="no events",
    )
    if page.next_cursor:
        click.echo(f"\nmore: --before {page.next_cursor}")


# --- metrics ---------------------------------------------------------------------------------------


def _labels_text(labels: dict[str, str]) -> str:
    return redact_text(",".join(f"{k}={v}" for k, v in labels.items())) or "-"


def _number(value: float) -> str:
    return f"{value:.6g}"


class LabelType(click.ParamType):
    name = "KEY=VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple:
        if isinstance(value, tuple):
            return value
        key, sep, text = str(value).partition("=")
        if not sep or not key:
            self.fail(f"{value!r}: expected KEY=VALUE", param, ctx)
        return key, text


@cli.command()
@click.argument("name")
@click.option("--stream", "stream_name", metavar="NAME", help="Only this stream's series.")
@click.option(
    "--label", "labels", type=LabelType(), multiple=True, help="Only series with this label (repeatable)."
)
@window_options(since_default="-1h")
@click.option(
    "--bucket",
    type=DURATION,
    default="1m",
    show_default=True,
    help="Aggregate samples per bucket (count, min, avg, max, last); 0 shows the raw samples.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=1000, show_default=True, help="At most this many rows."
)
@json_option
@database_options
def metrics(
    name: str,
    stream_name: str | None,
    labels: tuple[tuple[str, str], ...],
    since: dt.datetime,
    until: dt.datetime,
    bucket: dt.timedelta,
    limit: int,
    as_json: bool,
) -> None:
    """Show metric NAME over the window, per bucket or as raw samples.

    Buckets are aligned on multiples of their width since the epoch (an
    hour starts on the hour, UTC) and come from rollups where they can.
    """
    _check_window(since, until)
    raw = bucket.total_seconds() <= 0
    with _database(reporting=True):
        found = history.metric_points(
            name, since, until, None if raw else bucket, stream=stream_name, labels=dict(labels), limit=limit
        )
    if as_json:
        _echo_json(found.as_dict())
        return
    if not found.series:
        click.echo(f"no series named {name}" + (f" for {stream_name}" if stream_name else ""))
        return

    def who(series_id: int) -> list[str]:
        info = found.series_info(series_id)
        return [info.stream or "-", _labels_text(redact_data(info.labels))]

    if raw:
        _echo_table(
            ["time", "stream", "labels", "value"],
            [
                [format_time(p.time, precise=True), *who(p.series_id), _number(p.value)]
                for p in found.points
                if isinstance(p, history.SamplePoint)
            ],
            align="lllr",
            empty="no samples in the window",
        )
        return
    _echo_table(
        ["time", "stream", "labels", "n", "min", "avg", "max", "last"],
        [
            [format_time(p.time), *who(p.series_id), p.count]
            + [_number(v) for v in (p.min, p.avg, p.max, p.last)]
            for p in found.points
            if isinstance(p, history.BucketPoint)
        ],
        align="lllrrrrr",
        empty="no samples in the window",
    )


# --- restore ---------------------------------------------------------------------------------------


def _stop_text(clean: bool | None, at: dt.datetime | None) -> str:
    if clean is None:
        return "first start (never restored before)"
    kind = "clean stop" if clean else "crash (no clean shutdown recorded)"
    return f"{kind}, last sign of life {format_time(at, precise=True)}" if at else kind


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only show what a restore would do; change nothing.")
@click.option("--yes", is_flag=True, help="Restore without asking.")
@json_option
@database_options
def restore(dry_run: bool, yes: bool, as_json: bool) -> None:
    """Show (with --dry-run) or do what a restarting manager's restore does.

    Lists the streams to bring back (desired state, whether each was
    recording, the next segment index, which session had it and how that
    session ended) and the repairs: segments left open by dead sessions
    (crashed, expired, stopped) reconciled with their files, their
    unfinished deletes and archive moves finished, their streams' statuses
    reset. What a live manager is doing is never touched, so it is safe
    while managers run; a manager calls the library itself.
    """
    if not dry_run and not yes:
        click.confirm(
            "A real restore repairs what dead sessions left (live managers are left alone). Go on",
            abort=True,
        )
    with _database() as db:
        state = Restorer(db).restore(dry_run=dry_run)
    if as_json:
        _echo_json({"dry_run": dry_run, **state.as_dict()})
        return
    click.echo(f"last stop: {_stop_text(state.clean_shutdown, state.last_stop_at)}\n")
    click.echo(restored_streams_table(state.streams) if state.streams else "no streams to restore")
    click.echo()
    if not state.repairs:
        click.echo("nothing to repair")
    else:
        click.echo(("would repair" if dry_run else "repaired") + f" {len(state.repairs)} segment(s):")
        _echo_table(
            ["stream", "id", "path", "was", "now", "size", "evidence"],
            [
                [
                    r.stream,
                    r.recording_id,
                    r.path,
                    r.old_state,
                    r.new_state or "deleted",
                    format_size(r.size_bytes),
                    r.evidence,
                ]
                for r in state.repairs
            ],
            align="lr   r",
        )
    if dry_run:
        click.echo("\ndry run: nothing was changed")


# --- sessions --------------------------------------------------------------------------------------


def _lease_text(info: SessionInfo) -> str:
    if not info.alive:
        return "-"
    return f"{info.lease_left:.1f}s"


@cli.command()
@click.option("--live", "live_only", is_flag=True, help="Only sessions that are alive now.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Newest N sessions.")
@click.option(
    "--end",
    "end_id",
    type=int,
    metavar="ID",
    help="Declare session ID dead now (its process is known to be gone) instead of waiting out its lease.",
)
@json_option
@database_options
def sessions(live_only: bool, limit: int, end_id: int | None, as_json: bool) -> None:
    """List manager sessions: node, host, pid, start, lease left, streams owned, how each ended.

    A session is one manager process. Its lease is judged by the database's
    clock; one whose lease ran out, or whose process is gone (SQLite, same
    host), is dead and its streams can be taken by any live session.
    """
    with _database() as db:
        if end_id is not None:
            ended = end_session(db, end_id)
            if not as_json:
                click.echo(f"session {end_id} " + ("declared dead" if ended else "had already ended"))
        found = list_sessions(db, include_ended=not live_only, limit=limit)
    if as_json:
        _echo_json([info.as_json() for info in found])
        return
    _echo_table(
        ["id", "node", "host", "pid", "started", "lease left", "streams", "ended"],
        [
            [
                info.id,
                info.node,
                info.host,
                info.pid,
                format_time(info.started_at),
                _lease_text(info),
                info.streams,
                info.ended or "alive",
            ]
            for info in found
        ],
        align="rllrlrrl",
        empty="no sessions",
    )


# --- check -----------------------------------------------------------------------------------------

# Outcomes that leave nothing for an operator to do.
_ORPHAN_SETTLED = ("adopted", "deleted")
_MISSING_SETTLED = ("marked missing", "dropped", "found again")


def _check_problems(report: Any) -> int:
    roots = sum(1 for root in report.roots if not root.repairable)
    orphans = sum(1 for o in report.orphans if o.action not in _ORPHAN_SETTLED)
    missing = sum(
        1
        for m in report.missing
        # A row already marked missing was dealt with by an earlier --mark-missing.
        if m.action not in _MISSING_SETTLED
        and not (m.state == SegmentState.MISSING and m.action == "reported")
    )
    others = (
        sum(1 for p in report.spellings if p.action != "fixed")
        + sum(1 for m in report.sizes if m.action != "fixed")
        + sum(1 for e in report.empty_failed if e.action != "removed")
    )
    return roots + orphans + missing + len(report.refused) + len(report.unplayable) + others


@cli.command(name="check")
@click.argument("root", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--adopt-orphans", is_flag=True, help="Give each file without a row a row (state recovered).")
@click.option("--delete-orphans", is_flag=True, help="Delete the files that have no row.")
@click.option("--mark-missing", is_flag=True, help="Set rows whose file is gone to state missing (kept).")
@click.option("--drop-missing", is_flag=True, help="Delete the rows whose file is gone.")
@click.option(
    "--force",
    is_flag=True,
    help="Repair even when it touches more than --max-share of a stream (normally refused: an "
    "unmounted disk looks just like that).",
)
@click.option("--init-roots", is_flag=True, help="Mark unmarked roots as this database's storage.")
@click.option(
    "--fix-spellings",
    is_flag=True,
    help="Rewrite rows whose path is another spelling of their file's (//, /./, x/..).",
)
@click.option("--fix-sizes", is_flag=True, help="Give settled rows the size their file has.")
@click.option(
    "--remove-empty-failed", is_flag=True, help="Delete 0-byte files left behind failed rows (rows stay)."
)
@click.option(
    "--probe",
    "use_probe",
    is_flag=True,
    help="Also open every file (Matroska, MP4/MOV structure; GStreamer's discoverer for others): "
    "report rows whose file does not play, date adopted orphans from their media, never adopt one "
    "that does not play.",
)
@click.option(
    "--min-age",
    type=DURATION,
    default="10m",
    show_default=True,
    help="Never touch files or rows younger than this.",
)
@click.option(
    "--max-share",
    type=click.FloatRange(0, 1, min_open=True),
    default=DEFAULT_MAX_SHARE,
    show_default=True,
    help="Largest share of a stream's recordings a repair may touch without --force.",
)
@json_option
@database_options
def check_command(
    root: tuple[Path, ...],
    adopt_orphans: bool,
    delete_orphans: bool,
    mark_missing: bool,
    drop_missing: bool,
    force: bool,
    init_roots: bool,
    min_age: dt.timedelta,
    max_share: float,
    use_probe: bool,
    fix_spellings: bool,
    fix_sizes: bool,
    remove_empty_failed: bool,
    as_json: bool,
) -> None:
    """Compare the recording rows with the files under each storage ROOT.

    Reports files without a row (orphans) and rows without a file
    (missing); repairs only what the flags ask for. Each root carries a
    marker naming this database, so a foreign, empty or unmounted root is
    reported and never repaired. Exits with 3 when problems remain.
    """
    if adopt_orphans and delete_orphans:
        raise click.UsageError("--adopt-orphans and --delete-orphans exclude each other")
    if mark_missing and drop_missing:
        raise click.UsageError("--mark-missing and --drop-missing exclude each other")
    with _database():
        report = check_storage(
            root,
            adopt_orphans=adopt_orphans,
            delete_orphans=delete_orphans,
            mark_missing=mark_missing,
            drop_missing=drop_missing,
            min_age=min_age,
            max_share=max_share,
            force=force,
            init_roots=init_roots,
            probe=probe_file if use_probe else None,
            fix_spellings=fix_spellings,
            fix_sizes=fix_sizes,
            remove_empty_failed=remove_empty_failed,
        )
    problems = _check_problems(report)
    if as_json:
        _echo_json(
            {
                "roots": report.roots,
                "orphans": report.orphans,
                "missing": report.missing,
                "refused": report.refused,
                "unplayable": report.unplayable,
                "spellings": report.spellings,
                "sizes": report.sizes,
                "empty_failed": report.empty_failed,
                "problems": problems,
            }
        )
    else:
        _echo_table(
            ["root", "status", "files", "rows", "detail"],
            [[r.path, r.status, r.files, r.rows, r.detail] for r in report.roots],
            align="llrr",
        )
        if report.orphans:
            click.echo(f"\n{len(report.orphans)} file(s) without a row:")
            _echo_table(
                ["path", "size", "modified", "stream", "action"],
                [
                    [o.path, format_size(o.size_bytes), format_time(o.modified_at), o.stream or "?", o.action]
                    for o in report.orphans
                ],
                align="lr",
            )
        if report.missing:
            click.echo(f"\n{len(report.missing)} row(s) without a file:")
            _echo_table(
                ["id", "stream", "path", "state", "action"],
                [[m.recording_id, m.stream, m.path, m.state, m.action] for m in report.missing],
                align="r",
            )
        if report.unplayable:
            click.echo(f"\n{len(report.unplayable)} row(s) whose file does not play:")
            _echo_table(
                ["id", "stream", "path", "state", "why"],
                [[u.recording_id, u.stream, u.path, u.state, u.reason] for u in report.unplayable],
                align="r",
            )
        if report.spellings:
            click.echo(f"\n{len(report.spellings)} row(s) spelling their file's path another way:")
            _echo_table(
                ["id", "stream", "stored", "file", "action"],
                [[p.recording_id, p.stream, p.stored, p.normalised, p.action] for p in report.spellings],
                align="r",
            )
        if report.sizes:
            click.echo(f"\n{len(report.sizes)} row(s) whose size differs from the file's:")
            _echo_table(
                ["id", "stream", "path", "row", "file", "action"],
                [
                    [m.recording_id, m.stream, m.path, format_size(m.row_bytes), format_size(m.file_bytes),
                     m.action]
                    for m in report.sizes
                ],
                align="rllrr",
            )  # fmt: skip
        if report.empty_failed:
            click.echo(f"\n{len(report.empty_failed)} empty file(s) behind failed rows:")
            _echo_table(
                ["id", "stream", "path", "action"],
                [[e.recording_id, e.stream, e.path, e.action] for e in report.empty_failed],
                align="r",
            )
        for reason in report.refused:
            click.echo(f"\nrefused: {reason}")
        click.echo(f"\n{problems} problem(s) left" if problems else "\nrows and files agree")
    if problems:
        click.get_current_context().exit(EXIT_PROBLEMS)


# --- retention, purge, vacuum, backup, integrity ----------------------------------------------------


@cli.command()
@click.option(
    "--dry-run/--apply", default=True, help="Only show what would be deleted (the default), or delete it."
)
@click.option(
    "--max-age-days",
    type=DAYS,
    help="Delete recordings that ended more than this many days ago.",
)
@click.option(
    "--max-bytes", type=SIZE, help="Keep at most this much per stream, e.g. 500GiB (oldest go first)."
)
@click.option(
    "--volume",
    "volumes",
    type=VolumeFloorType(),
    multiple=True,
    help="Keep at least MIN_FREE free on the filesystem of PATH, e.g. /srv/video:50GiB (repeatable).",
)
@click.option(
    "--archived-when-full",
    type=click.Choice(["alarm", "delete"]),
    default="alarm",
    show_default=True,
    help="When only archived recordings are left under a volume's floor: raise an alarm, or delete them too.",
)
@json_option
@database_options
def retention(
    dry_run: bool,
    max_age_days: float | None,
    max_bytes: int | None,
    volumes: tuple[VolumeFloor, ...],
    archived_when_full: str,
    as_json: bool,
) -> None:
    """Show (default) or apply what a retention policy deletes.

    Limits given here apply to every stream; a stream's own retention
    setting in the database overrides them. Archived recordings are kept by
    age and size limits. Exits with 3 when a volume's floor cannot be met.
    """
    policy = RetentionPolicy(
        default=RetentionRule(max_age_days, max_bytes),
        volumes=volumes,
        archived_when_full=cast(Literal["alarm", "delete"], archived_when_full),
    )
    with _database(), _progress("deleting segments", as_json) as progress:
        report = apply_retention(policy, dry_run=dry_run, progress=progress)
    if as_json:
        _echo_json({**report.as_dict(), "deleted_files_bytes": report.deleted_files_bytes})
    else:
        _echo_table(
            ["stream", "segments", "size", "why"],
            [
                [
                    name,
                    s.segments,
                    format_size(s.bytes),
                    ", ".join(f"{reason} {n}" for reason, n in sorted(s.reasons.items())),
                ]
                for name, s in sorted(report.streams.items())
            ],
            align="lrr",
            empty="nothing to delete",
        )
        if report.segments:
            verb = "would delete" if dry_run else "deleted"
            click.echo(f"\n{verb} {report.segments} segment(s), {format_size(report.bytes)}")
        for alarm in report.alarms:
            click.echo(f"ALARM: {alarm}")
        if dry_run and report.segments:
            click.echo("dry run: nothing was deleted; run with --apply to delete")
    if report.alarms:
        click.get_current_context().exit(EXIT_PROBLEMS)


@cli.command()
@click.option(
    "--events-days",
    type=DAYS,
    help="Delete events older than this many days.",
)
@click.option(
    "--samples-days",
    type=DAYS,
    help="Delete raw metric samples older than this many days.",
)
@click.option(
    "--keep-type",
    "keep_types",
    type=KeepType(),
    multiple=True,
    help="Keep events of TYPE for DAYS instead, e.g. health_changed=365 (repeatable).",
)
@json_option
@database_options
def purge(
    events_days: float | None,
    samples_days: float | None,
    keep_types: tuple[tuple[str, float], ...],
    as_json: bool,
) -> None:
    """Delete old events and metric samples, in small batches that never stall the recorder."""
    if events_days is None and samples_days is None:
        raise click.UsageError("give --events-days, --samples-days or both")
    if keep_types and events_days is None:
        raise click.UsageError("--keep-type needs --events-days")
    with _database(), _progress("rows deleted:", as_json) as progress:
        report = purge_old(
            events_days=events_days, samples_days=samples_days, keep_types=dict(keep_types), progress=progress
        )
    result = dataclasses.asdict(report)
    if as_json:
        _echo_json(result)
        return
    click.echo(
        f"deleted {result['events']:,} event(s) and {result['samples']:,} metric sample(s) "
        f"in {result['batches']} batch(es), {format_duration(result['seconds'])}"
    )


@cli.command(name="vacuum")
@click.option(
    "--full",
    is_flag=True,
    help="Rebuild the whole file with VACUUM (blocks writers while it runs) instead of returning free "
    "pages in small steps.",
)
@json_option
@database_options
def vacuum_command(full: bool, as_json: bool) -> None:
    """Give free space back to the filesystem (SQLite; PostgreSQL's autovacuum does this itself)."""
    with _database() as db, _progress("vacuuming", as_json) as progress:
        progress.busy()
        postgres = not dialect(db).is_sqlite
        if full:
            result = {"full": True, "bytes_freed": vacuum()}
        else:
            report = incremental_vacuum()
            result = {"full": False, **dataclasses.asdict(report)}
    if as_json:
        _echo_json(result)
    elif postgres and not full:
        click.echo("nothing to do: PostgreSQL's autovacuum returns free space itself (--full runs VACUUM)")
    elif full:
        click.echo(f"VACUUM done, {format_size(result['bytes_freed'])} smaller")
    else:
        click.echo(
            f"returned {result['pages_freed']:,} free page(s), {format_size(result['bytes_freed'])}, "
            f"in {result['steps']} step(s) (longest {result['longest_step_seconds'] * 1000:.0f} ms)"
        )


@cli.command()
@click.argument("stream")
@click.option(
    "--by",
    "shift",
    required=True,
    help="How far to move the times: +20787d3h forward, -40d back (units ms, s, m, h, d, w).",
)
@click.option(
    "--from-index", type=click.IntRange(min=0), help="First segment index to move (default: first)."
)
@click.option("--to-index", type=click.IntRange(min=0), help="Last index to move (default: last).")
@click.option("--only-suspect", is_flag=True, help="Move only the segments whose times are flagged.")
@json_option
@database_options
def redate(
    stream: str, shift: str, from_index: int | None, to_index: int | None, only_suspect: bool, as_json: bool
) -> None:
    """Move the times of STREAM's segments after the wall clock was fixed.

    Segments are chosen by index, which only grows, so the choice is right even
    when their times are not; see the flagged ones with `recordings` or
    stream_state.clock.suspect_segments.
    """
    from .clock import redate as redate_segments

    sign = -1 if shift.strip().startswith("-") else 1
    try:
        delta = sign * parse_duration(shift.strip().lstrip("+-"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--by") from None
    if not delta:
        raise click.BadParameter("must not be zero", param_hint="--by")
    with _database():
        report = redate_segments(
            stream, delta, first_index=from_index, last_index=to_index, only_suspect=only_suspect
        )
    if as_json:
        _echo_json(dataclasses.asdict(report))
    else:
        click.echo(
            f"re-dated {report.segments} segment(s) of {report.stream} by {format_duration(abs(delta))} "
            f"{'forward' if sign > 0 else 'back'}"
            + (f"; {report.still_suspect} still implausible" if report.still_suspect else "")
        )


@cli.command(name="backup")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace DEST if it exists (atomically: never a half copy).")
@click.option(
    "--method",
    type=click.Choice(["copy", "vacuum"]),
    default="copy",
    show_default=True,
    help="copy: page copy in one step; vacuum: a compacted copy (VACUUM INTO), slower.",
)
@json_option
@database_options
def backup_command(dest: Path, force: bool, method: str, as_json: bool) -> None:
    """Copy the live SQLite database to DEST, consistently, while the recorder writes.

    DEST is written under a temporary name and renamed when complete, so it is
    never a partial copy. DEST may not be the database itself or a symbolic link.
    PostgreSQL databases are backed up with pg_dump instead.
    """
    if os.path.lexists(dest) and not force:
        raise click.BadParameter(f"{dest} exists; pass --force to overwrite it", param_hint="DEST")
    url = click.get_current_context().meta.get(_URL)
    with _database(), _progress("backing up", as_json) as progress:
        progress.busy()
        try:
            written = backup(dest, force=force, method=method)  # type: ignore[arg-type]
        except ValidationError as exc:
            if exc.field != "dest":
                raise
            raise click.BadParameter(f"{exc.value}: {exc.reason}", param_hint="DEST") from None
    size = written.stat().st_size
    if as_json:
        _echo_json({"database": _display_url(url), "backup": str(written), "size_bytes": size})
    else:
        click.echo(f"backed up {_display_url(url)} to {written} ({format_size(size)})")


@cli.command()
@json_option
@database_options
def integrity(as_json: bool) -> None:
    """Check the database for damage, broken references and broken rules; exits with 3 if any.

    The rules are numbered in docs/invariants.md; each one broken is reported
    by its number with a few example rows.
    """
    with _database():
        report = integrity_check()
    if as_json:
        _echo_json(
            {
                "ok": report.ok,
                "problems": report.problems,
                "foreign_key_violations": [list(v) for v in report.foreign_key_violations],
                "invariants": [v.as_dict() for v in report.invariants],
            }
        )
    else:
        for problem in report.problems:
            click.echo(f"damage: {problem}")
        if report.foreign_key_violations:
            click.echo("rows pointing at nothing (table, rowid, parent table, constraint):")
            _echo_table(["table", "rowid", "parent", "fk"], [list(v) for v in report.foreign_key_violations])
        for violation in report.invariants:
            click.echo(f"invariant {violation.invariant} broken ({violation.rule})")
            click.echo(f"  {violation.problem}: {violation.count}")
            for example in violation.examples:
                click.echo(f"    {example}")
        if report.ok:
            click.echo("ok")
        elif report.problems or report.foreign_key_violations:
            click.echo("NOT OK: restore a backup, or see the SQLite docs on recovery")
        else:
            click.echo(
                "NOT OK: rows break the numbered rules above (docs/invariants.md); nothing was changed"
            )
    if not report.ok:
        click.get_current_context().exit(EXIT_PROBLEMS)


# --- demo ------------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Work in this directory and keep it (default: a temporary directory, removed at the end).",
)
@click.option("--keep", is_flag=True, help="Keep the temporary directory and print where it is.")
@verbose_option
def demo(directory: Path | None, keep: bool) -> None:
    """Crash a small simulated recorder with SIGKILL and watch it come back.

    Needs no setup and no network and takes a few seconds: a child process
    registers three cameras on an embedded SQLite database, writes real
    little segment files, flips health and samples metrics, and is killed
    in the middle of a segment. Then the restore runs and the command shows
    what came back, what was repaired, the gaps and the storage used.
    """
    from .demo import run_demo

    run_demo(directory, keep=keep)


def main() -> None:
    """Entry point of the console script and of ``python -m stream_state``."""
    try:
        cli(prog_name="stream-state")
    except BrokenPipeError:
        # The reader of our output went away (`stream-state events | head`):
        # not an error worth a traceback. Point stdout at nothing so the
        # interpreter's final flush does not complain again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_FAILURE)


__all__ = ["cli", "main"]
