"""The ``stream-state`` command line, through click's runner, on SQLite and PostgreSQL.

Every command is run for people (tables) and for scripts (``--json``, parsed
here); a test walks the whole group for help texts, another runs every
command against credentialed URIs and looks for the password in all output.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import click
import peewee as pw
import pytest
from click.testing import CliRunner

from stream_state import Event, MetricSample, Recording, SegmentState, Severity, Stream
from stream_state import cli as cli_module
from stream_state.cli import cli
from stream_state.cli_output import (
    Progress,
    format_duration,
    format_size,
    format_table,
    format_time,
    parse_duration,
    parse_size,
    parse_time,
    to_json,
)
from stream_state.models import Session, database_proxy
from stream_state.models.session import current_session, forget_process_session

from .factories import RecordingFactory, StreamFactory

REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET = "hunter2"
# Relative to the real clock, so that age-based commands (retention, purge)
# see these rows as old whatever day the tests run.
T0 = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
MINUTE = dt.timedelta(minutes=1)


def iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


SINCE, UNTIL = iso(T0), iso(T0 + dt.timedelta(hours=1))
WINDOW = ["--since", SINCE, "--until", UNTIL]


# --- plumbing -------------------------------------------------------------------------------------


def with_options(url: str, params: dict) -> str:
    """A CLI URL for a fixture target: PostgreSQL's search_path rides in the URL's query."""
    if "options" not in params:
        return url
    return f"{url}{'&' if '?' in url else '?'}options={quote(params['options'])}"


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    if parts.password is not None:
        return url
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname}" + (
        f":{parts.port}" if parts.port else ""
    )
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture(autouse=True)
def berlin_time(monkeypatch):
    """People read local time: make it a zone with a name and an offset."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def url(backend, db) -> str:
    """The URL of the ``db`` fixture as the CLI takes it (a password too, where trust auth ignores it)."""
    if backend.name == "sqlite":
        return f"sqlite:///{db.database}"
    return with_options(with_password(backend.pg_url, SECRET), {"options": db.connect_params["options"]})


class Runner:
    def __init__(self, url: str):
        self.url = url
        self.runner = CliRunner()

    def __call__(self, *args: object, input: str | None = None):
        argv = ["--db", self.url, *(str(a) for a in args)]
        # As in a real process, nothing is bound before the command opens its
        # database or after it closes it: a lazy query while printing fails.
        previous = database_proxy.obj
        database_proxy.initialize(None)
        try:
            return self.runner.invoke(cli, argv, input=input)
        finally:
            database_proxy.initialize(previous)

    def json(self, *args: object) -> dict:
        result = self(*args, "--json")
        assert result.exit_code in (0, 3), result.output
        return json.loads(result.stdout)


@pytest.fixture
def run(url) -> Runner:
    return Runner(url)


@pytest.fixture
def site(db, tmp_path):
    """Two cameras with credentials everywhere, segments with a hole, events, metrics, files."""
    media = tmp_path / "media"
    (media / "cam-1").mkdir(parents=True)
    (media / "cam-2").mkdir()
    cam1 = StreamFactory(
        name="cam-1",
        uri=f"rtsp://admin:{SECRET}@10.0.0.1/stream1",
        config={"password": SECRET, "backup_uri": f"rtsp://admin:{SECRET}@10.0.0.2/s"},
    )
    cam2 = StreamFactory(name="cam-2", uri=f"rtsp://viewer:{SECRET}@10.0.0.3/live?token={SECRET}")
    # cam-1: minutes 0-2 and 4-6, so 2..4 is a hole; the last file is missing on disk.
    for index, minute in enumerate([0, 1, 4, 5]):
        path = media / "cam-1" / f"cam-1-{index:05d}.ts"
        RecordingFactory(
            stream=cam1,
            path=str(path),
            storage="disk0",
            started_at=T0 + minute * MINUTE,
            ended_at=T0 + (minute + 1) * MINUTE,
            size_bytes=1000 * (index + 1),
            archived=index == 0,
        )
        if index < 3:
            path.write_bytes(b"\x47" * 1000 * (index + 1))
            os.utime(path, (T0.timestamp(), T0.timestamp()))
    orphan = media / "cam-1" / "cam-1-00099.ts"
    orphan.write_bytes(b"\x47" * 500)
    os.utime(orphan, (T0.timestamp(), T0.timestamp()))
    # cam-2 is recording: an open segment with data on disk.
    open_path = media / "cam-2" / "cam-2-00000.ts"
    cam2.begin_segment(open_path, started_at=T0 + 10 * MINUTE, storage="disk1")
    open_path.write_bytes(b"\x47" * 2048)

    cam1.record_health("degraded", reason=f"auth via rtsp://admin:{SECRET}@10.0.0.1", at=T0 + 2 * MINUTE)
    cam1.record_health("healthy", at=T0 + 4 * MINUTE)
    # Written around the model's own redaction, as a careless manager might.
    Event.create(
        ts=T0 + 3 * MINUTE,
        stream=cam1,
        type="login_failed",
        severity=Severity.ERROR,
        message=f"login to rtsp://admin:{SECRET}@10.0.0.1 failed",
        data={"password": SECRET, "uri": f"rtsp://admin:{SECRET}@10.0.0.1"},
    )
    Event.create(ts=T0 + 5 * MINUTE, type="note", message="system event")
    MetricSample.record_many(
        [
            (
                "fps",
                10.0 + i % 3,
                cam1,
                {"source": f"rtsp://a:{SECRET}@x"},
                T0 + i * 20 * dt.timedelta(seconds=1),
            )
            for i in range(12)
        ]
        + [("fps", 25.0, cam2, None, T0 + i * MINUTE) for i in range(3)]
    )
    # The manager that wrote all this has died (the CLI runs next to its
    # leftovers, as an operator's would). Its sessions' claims of the two
    # streams are not part of the history these tests read (test_sessions
    # covers them).
    forget_process_session(db, clean=False)
    Event.delete().where(Event.type == "stream_claimed").execute()
    return {"media": media, "cam1": cam1, "cam2": cam2, "orphan": orphan}


# --- output helpers (pure) -----------------------------------------------------------------------


NOW = dt.datetime(2026, 3, 29, 12, 0, tzinfo=dt.UTC)


def test_parse_time_relative_and_words():
    assert parse_time("now", NOW) == NOW
    assert parse_time("-2h", NOW) == NOW - dt.timedelta(hours=2)
    assert parse_time("-30m", NOW) == NOW - dt.timedelta(minutes=30)
    assert parse_time("-1d", NOW) == NOW - dt.timedelta(days=1)
    assert parse_time("-1h30m", NOW) == NOW - dt.timedelta(minutes=90)
    assert parse_time("+1w", NOW) == NOW + dt.timedelta(days=7)
    # Europe/Berlin: 12:00 UTC is 14:00 CEST; local midnight is 22:00 UTC the day before.
    assert parse_time("today", NOW) == dt.datetime(2026, 3, 28, 22, 0, tzinfo=dt.UTC)
    # The day before a DST change is 23 hours long: midnight, not now - 24 h.
    assert parse_time("yesterday", NOW) == dt.datetime(2026, 3, 27, 23, 0, tzinfo=dt.UTC)


def test_parse_time_iso_naive_is_local_and_result_is_utc():
    assert parse_time("2026-01-15T10:00") == dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)
    assert parse_time("2026-07-15 10:00") == dt.datetime(2026, 7, 15, 8, 0, tzinfo=dt.UTC)
    assert parse_time("2026-01-15") == dt.datetime(2026, 1, 14, 23, 0, tzinfo=dt.UTC)
    assert parse_time("2026-01-15T10:00:00Z") == dt.datetime(2026, 1, 15, 10, 0, tzinfo=dt.UTC)
    assert parse_time("2026-01-15T10:00+02:00") == dt.datetime(2026, 1, 15, 8, 0, tzinfo=dt.UTC)
    assert parse_time("2026-01-15T10:00Z").tzinfo is dt.UTC


@pytest.mark.parametrize("text", ["", "soon", "-2x", "-", "2026-13-01", "-h"])
def test_parse_time_refuses_nonsense(text):
    with pytest.raises(ValueError, match="not a"):
        parse_time(text, NOW)


def test_parse_duration():
    assert parse_duration("90") == dt.timedelta(seconds=90)
    assert parse_duration("1.5") == dt.timedelta(seconds=1.5)
    assert parse_duration("500ms") == dt.timedelta(milliseconds=500)
    assert parse_duration("10m") == dt.timedelta(minutes=10)
    assert parse_duration("1h30m") == dt.timedelta(minutes=90)
    assert parse_duration("2d") == dt.timedelta(days=2)
    assert parse_duration("0") == dt.timedelta(0)
    for bad in ("", "ten", "-5", "5 parsecs", "nan", "inf"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_parse_size_binary_and_decimal():
    assert parse_size("500") == 500
    assert parse_size("500B") == 500
    assert parse_size("64KiB") == 64 * 1024
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("10G") == 10 * 2**30  # as df -h means it
    assert parse_size("10GB") == 10 * 10**9  # as a disk's label means it
    assert parse_size("2 tib") == 2 * 2**40
    for bad in ("", "lots", "5 XB", "1iB", "-5"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_format_size_and_duration():
    assert [format_size(n) for n in (None, 0, 1023, 1024, 1536, 5 * 2**20, 3 * 2**30)] == [
        "-",
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "5.0 MiB",
        "3.00 GiB",
    ]
    assert [format_duration(s) for s in (None, 0.44, 59, 61, 3600, 3661, 90000)] == [
        "-",
        "0.4 s",
        "59 s",
        "1 min 1 s",
        "1 h",
        "1 h 1 min",
        "1 d 1 h",
    ]
    assert format_duration(dt.timedelta(minutes=3)) == "3 min"


def test_format_time_is_local_with_its_zone():
    assert format_time(dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)) == "2026-01-15 10:00:00 CET"
    assert format_time(dt.datetime(2026, 7, 15, 9, 0, 0, 250000, tzinfo=dt.UTC), precise=True) == (
        "2026-07-15 11:00:00.250 CEST"
    )
    assert format_time(dt.datetime(2026, 7, 15, 9, 0, tzinfo=dt.UTC), date=False) == "11:00:00 CEST"
    assert format_time(None) == "-"


def test_format_table_aligns_columns():
    text = format_table(["name", "size"], [["a", "1 B"], ["longer", "10.0 KiB"]], align="lr")
    assert text.splitlines() == ["NAME        SIZE", "a            1 B", "longer  10.0 KiB"]


def test_to_json_speaks_utc_and_plain_values():
    value = {
        "t": dt.datetime(2026, 1, 15, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        "state": SegmentState.COMPLETE,
        "d": dt.timedelta(seconds=1.5),
        "p": Path("/x"),
    }
    assert json.loads(to_json(value)) == {
        "t": "2026-01-15T09:00:00Z",
        "state": "complete",
        "d": 1.5,
        "p": "/x",
    }


def test_progress_draws_only_when_enabled():
    quiet = io.StringIO()
    with Progress("deleting", enabled=False, file=quiet) as progress:
        progress(1, 2)
        progress(5)
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    with Progress("deleted", enabled=True, file=shown) as progress:
        progress(5)
        progress(9)
    assert shown.getvalue() == "\rdeleted 5\rdeleted 9\n"
    bar = io.StringIO()  # not a terminal: click writes the label once
    with Progress("deleting", enabled=True, file=bar) as progress:
        progress(1, 4)
        progress(4, 4)
    assert "deleting" in bar.getvalue()


# --- help ------------------------------------------------------------------------------------------


def test_every_command_and_option_has_help():
    def walk(command: click.Command, path: str) -> None:
        assert (command.help or "").strip(), f"{path} has no help text"
        for param in command.params:
            if isinstance(param, click.Option):
                assert (param.help or "").strip(), f"{path} {param.opts[0]} has no help text"
            else:  # arguments have no help of their own: the command's text names them
                assert param.name.upper() in command.help, f"{path} does not explain {param.name.upper()}"
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(cli, "stream-state")
    expected = {
        "migrate",
        "streams",
        "recordings",
        "gaps",
        "usage",
        "events",
        "metrics",
        "restore",
        "check",
        "retention",
        "purge",
        "sessions",
        "vacuum",
        "backup",
        "integrity",
        "demo",
        "timeline",
        "redate",
    }
    assert set(cli.commands) == expected
    runner = CliRunner()
    for name in expected:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, name


def test_group_help_documents_the_exit_codes():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for line in (
        "0    success",
        "1    failure",
        "2    usage error",
        "3    the command ran and found problems",
    ):
        assert line in result.output


def test_python_dash_m_runs_the_command():
    result = subprocess.run(
        [sys.executable, "-m", "stream_state", "--version"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0 and "stream-state, version" in result.stdout


# --- errors ---------------------------------------------------------------------------------------


def test_a_failure_is_one_line_on_stderr_with_exit_1(tmp_path):
    result = CliRunner().invoke(cli, ["streams", "--db", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: no database at ")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "none.db").exists(), "a read-only command must not create the file"


def test_verbose_adds_the_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["--verbose", "streams", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: no database at ")
    after = CliRunner().invoke(cli, ["streams", "-v", "--db", str(tmp_path / "none.db")])
    assert "Traceback" in after.stderr  # after the command name too


def test_usage_errors_exit_2(run, site):
    for args in (
        ["gaps", "cam-1", "--since", "whenever"],
        ["nonsense"],
        ["usage", "--by", "week"],
        ["gaps", "cam-1", "--since", "-1h", "--until", "-2h"],
        ["purge"],
    ):
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "Error:" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, option",
    [
        (["recordings", "cam-1", "--since", "-99999999d"], "--since"),
        (["gaps", "cam-1", "--since", "-1h", "--until", "+99999999d"], "--until"),
        (["retention", "--max-age-days", "inf"], "--max-age-days"),
        (["retention", "--max-age-days", "1e308"], "--max-age-days"),
        (["purge", "--events-days", "1e308"], "--events-days"),
        (["purge", "--samples-days", "nan"], "--samples-days"),
        (["purge", "--events-days", "1", "--keep-type", "x=inf"], "--keep-type"),
    ],
)
def test_out_of_range_numbers_are_usage_errors_naming_the_option(run, site, args, option):
    """Issue 13, item 16: these ended in "unexpected OverflowError"."""
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert option in result.stderr and "unexpected" not in result.output


def test_a_directory_as_the_database_is_not_a_database_file(tmp_path):
    for url in (str(tmp_path), f"sqlite:///{tmp_path}"):
        result = CliRunner().invoke(cli, ["--db", url, "streams"])
        assert result.exit_code == 1
        assert "is a directory, not a database file" in result.stderr
        assert "restore a backup" not in result.output


def test_an_unexpected_error_says_so_and_exit_1(run, site, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(cli_module, "integrity_check", broken)
    result = run("integrity")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: unexpected RuntimeError: disk on fire second line (run with --verbose for the traceback)\n"
    )
    assert "Traceback" in run("integrity", "--verbose").stderr


def test_not_found_is_a_failure(run, site):
    result = run("recordings", "cam-9")
    assert (result.exit_code, result.stderr) == (1, "error: stream 'cam-9' not found\n")


# --- the database option --------------------------------------------------------------------------


def test_db_from_the_environment_and_command_level_option_wins(site, url, tmp_path, monkeypatch):
    runner = CliRunner()
    monkeypatch.setenv("STREAM_STATE_DATABASE_URL", url)
    assert "cam-1" in runner.invoke(cli, ["streams"]).stdout
    wrong = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("STREAM_STATE_DATABASE_URL", wrong)
    assert "cam-1" in runner.invoke(cli, ["streams", "--db", url]).stdout
    # An explicit group option beats the environment, and a command option beats both.
    assert "cam-1" in runner.invoke(cli, ["--db", url, "streams"]).stdout
    assert runner.invoke(cli, ["--db", url, "streams", "--db", wrong]).exit_code == 1


def test_the_callers_binding_is_left_as_it_was(url, site, db):
    assert CliRunner().invoke(cli, ["--db", url, "streams"]).exit_code == 0
    assert database_proxy.obj is db
    assert Stream.select().count() == 2  # the models still talk to the fixture's database


# --- migrate --------------------------------------------------------------------------------------


def test_migrate_status_apply_and_rollback(backend):
    target, params = backend.new_target()
    run = Runner(with_options(target, params))
    if backend.name == "sqlite":
        assert run("migrate", "--status").exit_code == 1  # no file yet: nothing is created
    result = run("migrate")
    assert result.exit_code == 0, result.output
    assert "applied   001_initial" in result.stdout
    status = run.json("migrate", "--status")
    assert status["pending"] == [] and status["schema"] == status["code"] == status["applied"][-1]
    assert status["action"] == "status" and status["done"] == []

    newest = status["schema"]
    refused = run("migrate", "--rollback", input="n\n")
    assert refused.exit_code == 1 and f"Roll back {newest}?" in refused.stdout
    rolled = run.json("migrate", "--rollback", "--yes")
    assert rolled["done"] == [newest] and rolled["pending"] == [newest]
    if backend.name == "sqlite":
        assert Path(rolled["backup"]).is_file() and f"pre-rollback-{newest}" in rolled["backup"]
    again = run.json("migrate")
    assert again["done"] == [newest] and again["pending"] == []


def test_a_query_never_migrates(backend):
    target, params = backend.new_target()
    run = Runner(with_options(target, params))
    assert run("migrate").exit_code == 0
    run("migrate", "--rollback", "--yes")
    result = run("streams")
    assert result.exit_code == 1 and "run `stream-state migrate`" in result.stderr


# --- streams, recordings, gaps, usage -----------------------------------------------------------------


def test_streams(run, site):
    result = run("streams")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "HEALTH", "RECORDING", "DESIRED", "LAST", "SEEN", "URI"]
    cam1, cam2 = lines[1].split(), lines[2].split()
    assert cam1[:5] == ["cam-1", "stopped", "healthy", "no", "running"]
    assert cam1[-1] == "rtsp://admin:***@10.0.0.1/stream1" and cam1[-2] in ("CET", "CEST")
    assert cam2[:5] == ["cam-2", "stopped", "unknown", "yes", "running"] and cam2[5] == "-"

    data = run.json("streams")["streams"]
    assert [(s["name"], s["recording"], s["open_segments"]) for s in data] == [
        ("cam-1", False, 0),
        ("cam-2", True, 1),
    ]
    assert data[0]["config"] == {"password": "***", "backup_uri": "rtsp://admin:***@10.0.0.2/s"}
    assert data[0]["last_seen_at"] == iso(T0 + 4 * MINUTE)


def test_streams_lists_removed_ones_with_all(run, site):
    cam1 = site["cam1"]
    cam1.remove()
    assert "cam-1" not in run("streams").stdout
    assert "cam-1 (removed)" in run("streams", "--all").stdout
    # A removed stream's history stays queryable by name.
    assert len(run.json("recordings", "cam-1", *WINDOW)["recordings"]) == 4


def test_recordings(run, site):
    result = run("recordings", "cam-1", *WINDOW)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "INDEX", "START", "END"]
    assert "complete, archived" in lines[1] and "1000 B" in lines[1] and "1 min" in lines[1]
    assert format_time(T0) in lines[1]
    assert lines[-1] == "4 segment(s), 9.8 KiB"
    data = run.json("recordings", "cam-1", *WINDOW)
    assert data["stream"] == "cam-1" and data["since"] == SINCE
    assert [r["segment_index"] for r in data["recordings"]] == [0, 1, 2, 3]
    assert data["recordings"][0]["seconds"] == 60 and data["recordings"][0]["archived"] is True
    # The window picks the overlapping segments; an open one shows as open.
    part = run.json(
        "recordings",
        "cam-1",
        "--since",
        iso(T0 + 90 * dt.timedelta(seconds=1)),
        "--until",
        iso(T0 + 4 * MINUTE + dt.timedelta(seconds=1)),
    )
    assert [r["segment_index"] for r in part["recordings"]] == [1, 2]
    assert "(open)" in run("recordings", "cam-2", *WINDOW).stdout
    assert len(run.json("recordings", "cam-1", *WINDOW, "--limit", "2")["recordings"]) == 2
    empty = run("recordings", "cam-1", "--since", iso(T0 - dt.timedelta(hours=2)), "--until", iso(T0))
    assert empty.stdout.startswith("no segments of cam-1 between")


def test_reports_read_sqlite_through_a_memory_map_and_checks_never_do(run, site, backend, monkeypatch):
    """gaps, timeline and the other reports map the file (a week of events reads a third faster);
    check and integrity read it plainly, so a failing disk is a message, not a SIGBUS."""
    import stream_state.cli as cli_module

    mapped: dict[str, int] = {}
    real_open = cli_module.open_database

    def open_database(url, **kwargs):
        db = real_open(url, **kwargs)
        if backend.name == "sqlite":
            mapped[command] = db.execute_sql("PRAGMA mmap_size").fetchone()[0]
        else:
            mapped[command] = kwargs["mmap_size"]
        return db

    monkeypatch.setattr(cli_module, "open_database", open_database)
    for command, args in [
        ("gaps", ["cam-1", "--since", SINCE]),
        ("events", []),
        ("streams", []),
        ("check", [site["media"]]),
        ("integrity", []),
    ]:
        result = run(command, *args)
        assert command in mapped, result.output
    # SQLite caps the size at its build's maximum (2 GiB - 64 KiB in common builds).
    for command in ("gaps", "events", "streams"):
        assert 0 < mapped[command] <= cli_module.REPORT_MMAP_SIZE, command
    assert mapped["check"] == mapped["integrity"] == 0


def test_gaps(run, site):
    until = iso(T0 + 8 * MINUTE)
    result = run("gaps", "cam-1", "--since", SINCE, "--until", until)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["FROM", "TO", "LENGTH", "WHY"]
    assert " 2 min " in lines[1]
    assert format_time(T0 + 2 * MINUTE) in lines[1] and format_time(T0 + 4 * MINUTE) in lines[1]
    # Why: the health changes inside the hole, credentials masked.
    assert (
        "unknown -> degraded (auth via rtsp://admin:***@10.0.0.1); cam-1: degraded -> healthy" in lines[1]
        and SECRET not in result.stdout
    )
    assert lines[-1] == "2 gap(s), 4 min of 8 min not recorded (50.0% recorded)"
    data = run.json("gaps", "cam-1", "--since", SINCE, "--until", until)
    assert [(g["start"], g["end"], g["seconds"]) for g in data["gaps"]] == [
        (iso(T0 + 2 * MINUTE), iso(T0 + 4 * MINUTE), 120),
        (iso(T0 + 6 * MINUTE), until, 120),
    ]
    reasons = data["gaps"][0]["reasons"]
    assert [(r["at"], r["type"]) for r in reasons] == [
        (iso(T0 + 2 * MINUTE), "health_changed"),
        (iso(T0 + 4 * MINUTE), "health_changed"),
    ]
    assert data["gaps"][1]["reasons"] == [] and data["gaps"][1]["why"] == ""
    # A hole shorter than --min-gap is boundary jitter, not a gap.
    assert run.json("gaps", "cam-1", "--since", SINCE, "--until", until, "--min-gap", "3m")["gaps"] == []
    # An open segment covers up to now.
    assert run.json("gaps", "cam-2", "--since", iso(T0 + 10 * MINUTE), "--until", "now")["gaps"] == []
    assert run("gaps", "cam-2", "--since", iso(T0 + 10 * MINUTE)).stdout.startswith("no gaps in cam-2")


def test_short_segments_show_milliseconds_and_json_has_their_media_timing(run, db):
    cam = StreamFactory(name="cam-ms")
    start = T0 + dt.timedelta(milliseconds=123)
    first = cam.begin_segment("/rec/ms-0.mkv", media_started_at=start, metadata={"codec": "mjpeg"})
    first.complete_segment(
        media_ended_at=start + dt.timedelta(milliseconds=1234), frame_count=12, finalized=True, size_bytes=9
    )
    second = cam.begin_segment("/rec/ms-1.mkv", media_started_at=start + dt.timedelta(milliseconds=1634))
    second.complete_segment(media_ended_at=start + dt.timedelta(milliseconds=2634), size_bytes=9)
    window = ("--since", iso(T0), "--until", iso(T0 + dt.timedelta(seconds=3)))
    table = run("recordings", "cam-ms", *window).stdout
    assert format_time(start, precise=True) in table and "1.234 s" in table
    holes = run("gaps", "cam-ms", *window, "--min-gap", "300ms").stdout
    assert "0.400 s" in holes and format_time(start + dt.timedelta(milliseconds=1234), precise=True) in holes
    data = run.json("recordings", "cam-ms", *window)["recordings"][0]
    assert data["media_started_at"] == iso(start) and data["started_at"] == iso(start)
    assert data["media_ended_at"] == iso(start + dt.timedelta(milliseconds=1234))
    assert (data["frame_count"], data["finalized"], data["metadata"]) == (12, True, {"codec": "mjpeg"})
    assert data["seconds"] == 1.234


def test_check_probe_reports_a_complete_row_whose_file_does_not_play(run, db, tmp_path):
    from .test_probe import mp4

    cam = StreamFactory(name="cam-probe")
    root = tmp_path / "probe-root"
    root.mkdir()
    broken = root / "cam-probe-0.mp4"
    broken.write_bytes(mp4(moov=False))
    size = broken.stat().st_size  # the row agrees with its file: only playability is wrong
    cam.begin_segment(broken, started_at=T0).complete_segment(ended_at=T0 + MINUTE, size_bytes=size)
    plain = run("check", root, "--init-roots")
    assert plain.exit_code == 0 and "does not play" not in plain.stdout  # files are not opened by default
    probed = run("check", root, "--probe")
    assert probed.exit_code == 3, probed.output
    assert "1 row(s) whose file does not play" in probed.stdout and "no moov atom" in probed.stdout
    data = run.json("check", root, "--probe")
    assert [(u["path"], u["state"]) for u in data["unplayable"]] == [(str(broken), "complete")]


def test_usage_by_stream_volume_day_and_state(run, site):
    result = run("usage")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["STREAM", "SEGMENTS", "SIZE", "RECORDED"]
    assert lines[1].split() == ["cam-1", "4", "9.8", "KiB", "4", "min"]
    assert lines[-1].split() == ["total", "5", "9.8", "KiB", "4", "min"]
    data = run.json("usage")
    assert [(u["key"], u["segments"], u["size_bytes"], u["seconds"]) for u in data["usage"]] == [
        ("cam-1", 4, 10000, 240),
        ("cam-2", 1, 0, 0),  # an open segment counts no time yet
    ]
    assert data["total"] == {"segments": 5, "size_bytes": 10000, "seconds": 240}
    volumes = run.json("usage", "--by", "volume")["usage"]
    assert [(u["key"], u["segments"]) for u in volumes] == [("disk0", 4), ("disk1", 1)]
    days = run.json("usage", "--by", "day")["usage"]
    assert [(u["key"], u["segments"]) for u in days] == [(T0.date().isoformat(), 5)]
    assert run("usage", "--by", "day").stdout.startswith("DAY (UTC)")
    states = run.json("usage", "--by", "state")["usage"]
    assert {u["key"]: u["segments"] for u in states} == {"complete": 4, "recording": 1}
    day = T0.date()
    assert run.json("usage", "--since", day.isoformat())["total"]["segments"] == 5
    assert run.json("usage", "--until", day.isoformat())["usage"] == []
    assert run("usage", "--since", (day + dt.timedelta(days=1)).isoformat()).stdout == "no recordings\n"
    assert run("usage", "--since", day.isoformat(), "--until", day.isoformat()).exit_code == 2
    assert run("usage", "--since", "-1d").exit_code == 0


# --- events and metrics -------------------------------------------------------------------------------


def test_events(run, site):
    result = run("events")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TIME", "SEVERITY", "STREAM", "TYPE", "MESSAGE"]
    assert "note" in lines[1] and " - " in lines[1]  # the newest: a system event
    assert "login to rtsp://admin:***@10.0.0.1 failed" in result.stdout
    data = run.json("events")
    assert [e["type"] for e in data["events"]] == ["note", "health_changed", "login_failed", "health_changed"]
    login = data["events"][2]
    assert login["data"] == {"password": "***", "uri": "rtsp://admin:***@10.0.0.1"}
    assert login["stream"] == "cam-1" and login["severity"] == "error" and data["next"] is None

    assert [e["type"] for e in run.json("events", "--severity", "warning")["events"]] == [
        "login_failed",
        "health_changed",
    ]
    assert [e["type"] for e in run.json("events", "--type", "login_failed")["events"]] == ["login_failed"]
    assert all(e["stream"] == "cam-1" for e in run.json("events", "--stream", "cam-1")["events"])
    window = run.json("events", "--since", iso(T0 + 3 * MINUTE), "--until", iso(T0 + 5 * MINUTE))
    assert [e["type"] for e in window["events"]] == ["health_changed", "login_failed"]


def test_events_pages_with_a_cursor(run, site):
    first = run.json("events", "--limit", "3")
    assert len(first["events"]) == 3 and first["next"]
    rest = run.json("events", "--limit", "3", "--before", first["next"])
    assert [e["type"] for e in rest["events"]] == ["health_changed"] and rest["next"] is None
    human = run("events", "--limit", "3")
    assert human.stdout.rstrip().endswith(f"more: --before {first['next']}")
    refused = run("events", "--before", "yesterday")
    assert refused.exit_code == 1 and "cursor" in refused.stderr


def test_metrics(run, site):
    result = run("metrics", "fps", *WINDOW, "--stream", "cam-1")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TIME", "STREAM", "LABELS", "N", "MIN", "AVG", "MAX", "LAST"]
    assert lines[1].split()[3:] == ["cam-1", "source=rtsp://a:***@x", "3", "10", "11", "12", "12"]
    data = run.json("metrics", "fps", *WINDOW)
    assert data["bucket_seconds"] == 60 and len(data["series"]) == 2
    assert {s["stream"] for s in data["series"]} == {"cam-1", "cam-2"}
    cam1_points = [p for p in data["points"] if p["series_id"] == data["series"][0]["id"]]
    assert [p["count"] for p in cam1_points] == [3, 3, 3, 3] and cam1_points[0]["time"] == SINCE
    hourly = run.json("metrics", "fps", *WINDOW, "--bucket", "1h", "--stream", "cam-1")["points"]
    assert [(p["count"], p["min"], p["max"], p["avg"]) for p in hourly] == [(12, 10.0, 12.0, 11.0)]

    raw = run.json("metrics", "fps", *WINDOW, "--bucket", "0", "--stream", "cam-2")["points"]
    assert [p["value"] for p in raw] == [25.0, 25.0, 25.0] and raw[0]["time"] == SINCE
    assert "VALUE" in run("metrics", "fps", *WINDOW, "--bucket", "0").stdout
    labelled = run.json("metrics", "fps", *WINDOW, "--label", f"source=rtsp://a:{SECRET}@x")
    assert len(labelled["series"]) == 1
    assert run("metrics", "nothing", *WINDOW).stdout == "no series named nothing\n"


# --- restore ---------------------------------------------------------------------------------------


def test_restore_dry_run_changes_nothing(run, site):
    result = run("restore", "--dry-run")
    assert result.exit_code == 0
    out = result.stdout
    assert out.startswith("last stop: first start")
    assert "rtsp://viewer:***@10.0.0.3/live?token=***" in out
    assert "would repair 1 segment(s):" in out and "interrupted" in out and "file mtime" in out
    assert out.rstrip().endswith("dry run: nothing was changed")
    assert Recording.open_segments().count() == 1

    data = run.json("restore", "--dry-run")
    assert data["dry_run"] is True and data["clean_shutdown"] is None
    cam2 = next(s for s in data["streams"] if s["name"] == "cam-2")
    assert (cam2["was_recording"], cam2["next_segment_index"], cam2["uri"]) == (
        True,
        1,
        "rtsp://viewer:***@10.0.0.3/live?token=***",
    )
    assert [(r["stream"], r["old_state"], r["new_state"], r["size_bytes"]) for r in data["repairs"]] == [
        ("cam-2", "recording", "interrupted", 2048)
    ]
    assert Recording.open_segments().count() == 1


def test_restore_for_real_asks_first(run, site):
    assert run("restore", input="n\n").exit_code == 1
    assert Recording.open_segments().count() == 1
    result = run("restore", input="y\n")
    assert result.exit_code == 0 and "repaired 1 segment(s):" in result.stdout
    assert Recording.open_segments().count() == 0
    assert run.json("restore", "--yes")["repairs"] == []


# --- check -----------------------------------------------------------------------------------------


def test_check_reports_and_repairs_on_request(run, site):
    media = site["media"]
    unmarked = run("check", media)
    assert unmarked.exit_code == 3 and "unmarked" in unmarked.stdout

    result = run("check", media, "--init-roots")
    assert result.exit_code == 3
    assert "1 file(s) without a row:" in result.stdout and "cam-1-00099.ts" in result.stdout
    assert "1 row(s) without a file:" in result.stdout and "cam-1-00003.ts" in result.stdout
    assert result.stdout.rstrip().endswith("2 problem(s) left")

    data = run.json("check", media)
    assert data["roots"][0]["status"] == "ok" and data["problems"] == 2
    assert [(o["stream"], o["action"]) for o in data["orphans"]] == [("cam-1", "reported")]
    assert [(m["stream"], m["action"]) for m in data["missing"]] == [("cam-1", "reported")]

    assert run("check", media, "--adopt-orphans", "--delete-orphans").exit_code == 2
    fixed = run.json("check", media, "--adopt-orphans", "--mark-missing", "--min-age", "0")
    assert [o["action"] for o in fixed["orphans"]] == ["adopted"]
    assert [m["action"] for m in fixed["missing"]] == ["marked missing"]
    assert fixed["problems"] == 0
    clean = run("check", media)
    assert clean.exit_code == 0, clean.output
    assert Recording.select().where(Recording.state == SegmentState.RECOVERED.value).count() == 1


def test_check_reports_an_absent_root(run, site, tmp_path):
    result = run.json("check", tmp_path / "not-mounted", "--mark-missing")
    assert result["roots"][0]["status"] == "absent" and result["refused"]


# --- retention, purge, vacuum, backup, integrity -------------------------------------------------------


def test_retention_dry_run_then_apply(run, site, monkeypatch):
    result = run("retention", "--max-age-days", "0.01")
    assert result.exit_code == 0
    assert "cam-1" in result.stdout and "age 3" in result.stdout  # the archived one is kept
    assert "would delete 3 segment(s), 8.8 KiB" in result.stdout
    assert "run with --apply" in result.stdout
    assert Recording.select().count() == 5
    assert "deleting segments" not in result.stderr  # not a terminal: no progress bar

    monkeypatch.setattr(cli_module, "_interactive", lambda: True)
    applied = run("retention", "--apply", "--max-age-days", "0.01")
    assert applied.exit_code == 0 and "deleted 3 segment(s)" in applied.stdout
    assert "deleting segments" in applied.stderr
    assert Recording.select().count() == 2
    assert not (site["media"] / "cam-1" / "cam-1-00001.ts").exists()
    data = run.json("retention", "--max-bytes", "1KiB")
    assert data["dry_run"] is True and data["segments"] == 0  # the archived one never counts


def test_retention_alarm_exits_3(run, site):
    media = site["media"]
    data = run.json("retention", "--volume", f"{media}:1000TiB")
    assert data["alarms"] and data["segments"] == 3
    result = run("retention", "--volume", f"{media}:1000TiB")
    assert result.exit_code == 3 and "ALARM:" in result.stdout
    assert run("retention", "--volume", "no-colon").exit_code == 2
    assert run("retention", "--max-bytes", "lots").exit_code == 2


def test_purge(run, site):
    result = run("purge", "--events-days", "0.01", "--samples-days", "0.01")
    assert result.exit_code == 0
    assert result.stdout.startswith("deleted 4 event(s) and 15 metric sample(s)")
    assert [e.type for e in Event.select()] == ["purged"], "only the purge's own audit event is left"
    assert MetricSample.select().count() == 0
    data = run.json("purge", "--events-days", "1", "--keep-type", "note=30")
    assert data["events"] == 0 and data["samples"] == 0
    assert run("purge", "--keep-type", "note=30").exit_code == 2
    assert run("purge", "--events-days", "1", "--keep-type", "note").exit_code == 2


def test_vacuum(run, site, backend):
    incremental = run("vacuum")
    full = run("vacuum", "--full")
    assert incremental.exit_code == 0 and full.exit_code == 0
    if backend.name == "sqlite":
        assert incremental.stdout.startswith("returned ")
    else:
        assert incremental.stdout.startswith("nothing to do: PostgreSQL")
    assert full.stdout.startswith("VACUUM done")
    assert run.json("vacuum")["full"] is False
    assert run.json("vacuum", "--full")["full"] is True


def test_backup(run, site, backend, tmp_path):
    dest = tmp_path / "copy.db"
    result = run("backup", dest)
    if backend.name == "postgres":
        assert result.exit_code == 1 and "pg_dump" in result.stderr and result.stderr.count("\n") == 1
        return
    assert result.exit_code == 0 and str(dest) in result.stdout
    assert dest.stat().st_mode & 0o777 == 0o600
    copy = pw.SqliteDatabase(str(dest))
    assert copy.execute_sql("SELECT count(*) FROM recording").fetchone() == (5,)
    copy.close()
    assert run("backup", dest).exit_code == 2  # refuses to overwrite
    data = run.json("backup", dest, "--force")
    assert data["backup"] == str(dest) and data["size_bytes"] == dest.stat().st_size


def test_integrity(run, site, backend, db):
    assert run("integrity").stdout == "ok\n"
    assert run.json("integrity") == {
        "ok": True,
        "problems": [],
        "foreign_key_violations": [],
        "invariants": [],
    }
    if backend.name != "sqlite":
        return
    db.execute_sql("PRAGMA foreign_keys = OFF")
    db.execute_sql("UPDATE recording SET stream_id = 999 WHERE segment_index = 1")
    db.execute_sql("PRAGMA foreign_keys = ON")
    result = run("integrity")
    assert result.exit_code == 3 and "NOT OK" in result.stdout and "recording" in result.stdout
    assert run.json("integrity")["foreign_key_violations"][0][0] == "recording"


def test_integrity_reports_a_broken_rule_by_its_number(run, site, db):
    # A hand edit behind the package's back: the counter set back below used indexes.
    db.execute_sql("UPDATE stream SET next_segment_index = 0 WHERE name = 'cam-1'")
    result = run("integrity")
    assert result.exit_code == 3
    assert "invariant 3 broken (`next_segment_index` is greater than every index" in result.stdout
    assert "a segment index not below its stream's next_segment_index: 4" in result.stdout
    assert "recording " in result.stdout and "(cam-1 #0, complete," in result.stdout
    assert result.stdout.rstrip().endswith("docs/invariants.md); nothing was changed")
    data = run.json("integrity")
    assert data["ok"] is False and [v["invariant"] for v in data["invariants"]] == [3]
    assert data["invariants"][0]["count"] == 4 and len(data["invariants"][0]["examples"]) == 4


# --- credentials ---------------------------------------------------------------------------------------


def test_no_command_ever_prints_a_credential(run, site, backend, tmp_path):
    media = site["media"]
    commands = [
        ["migrate", "--status"],
        ["migrate"],
        ["streams", "--all"],
        ["recordings", "cam-1", *WINDOW],
        ["recordings", "cam-2", *WINDOW],
        ["gaps", "cam-1", *WINDOW],
        ["usage"],
        ["usage", "--by", "volume"],
        ["usage", "--by", "day"],
        ["events", "--limit", "100"],
        ["metrics", "fps", *WINDOW],
        ["metrics", "fps", *WINDOW, "--bucket", "0"],
        ["restore", "--dry-run"],
        ["check", media, "--init-roots"],
        ["retention", "--max-age-days", "1000"],
        ["integrity"],
        ["vacuum"],
        ["purge", "--events-days", "1000", "--samples-days", "1000"],
        ["backup", tmp_path / "backup.db", "--force"],
    ]
    for args in commands:
        for extra in ([], ["--json"], ["--verbose"]):
            result = run(*args, *extra)
            assert result.exit_code in (0, 1, 3), (args, extra, result.output)
            assert SECRET not in result.output, (args, extra, result.output)
            if extra == ["--json"] and result.exit_code != 1:
                json.loads(result.stdout)
    # A database that cannot be reached is named, without its password.
    broken = with_password("postgresql://postgres@127.0.0.1:1/nothing", SECRET)
    result = CliRunner().invoke(cli, ["--db", broken, "streams"])
    assert result.exit_code == 1 and "postgres:***@127.0.0.1:1" in result.stderr
    assert SECRET not in result.output
    assert SECRET not in CliRunner().invoke(cli, ["--db", broken, "-v", "migrate"]).output


# --- sessions --------------------------------------------------------------------------------------


def test_sessions_lists_live_and_ended_sessions_and_ends_one(run, db):
    stream = StreamFactory(name="cam-s")
    stream.record_health("healthy")  # this process's session takes the stream
    me = current_session(db)
    listed = {s["id"]: s for s in run.json("sessions")}
    assert listed[me.id]["alive"] and listed[me.id]["streams"] == 1 and listed[me.id]["lease_left"] > 0
    assert listed[me.id]["pid"] == os.getpid()
    table = run("sessions").stdout
    assert table.splitlines()[0].split()[:4] == ["ID", "NODE", "HOST", "PID"] and "alive" in table
    # An operator who killed a node declares it dead instead of waiting out its lease.
    other = Session.open(node="node-x", register=False)
    ended = run("sessions", "--end", str(other.id))
    assert ended.exit_code == 0 and f"session {other.id} declared dead" in ended.stdout
    assert run("sessions", "--end", str(other.id)).stdout.startswith(f"session {other.id} had already ended")
    assert other.id not in {s["id"] for s in run.json("sessions", "--live")}
    assert run("sessions", "--end", "999999").exit_code == 1
