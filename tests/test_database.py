"""open_database: URLs, pragmas, file mode, schema versions, backups, threads."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import stat
import threading
import time
from pathlib import Path

import peewee as pw
import pytest

import stream_state
from stream_state import (
    DatabaseUnavailable,
    Event,
    SchemaMismatch,
    Stream,
    ValidationError,
    open_database,
)
from stream_state.database import code_schema_version, migrations_dir, rollback_one, schema_version

from .factories import StreamFactory


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_default_database_is_a_file_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STREAM_STATE_DATABASE_URL", raising=False)
    db = open_database()
    try:
        assert Path(db.database) == Path("stream_state.db")
        assert (tmp_path / "stream_state.db").is_file()
        assert schema_version(db) == code_schema_version()
    finally:
        db.close()


def test_url_comes_from_the_environment_when_not_given(tmp_path, monkeypatch):
    target = tmp_path / "from-env.db"
    monkeypatch.setenv("STREAM_STATE_DATABASE_URL", f"sqlite:///{target}")
    db = open_database()
    try:
        assert Path(db.database) == target
    finally:
        db.close()


def test_a_bare_path_opens_a_sqlite_file(tmp_path):
    db = open_database(tmp_path / "plain.db")
    try:
        assert isinstance(db, pw.SqliteDatabase)
        assert "stream" in db.get_tables()
    finally:
        db.close()


@pytest.mark.parametrize("suffix", ["", "?synchronous=full"])
def test_a_hash_in_a_sqlite_url_is_part_of_the_file_name(tmp_path, suffix):
    """``sqlite:////data/cam#2.db`` once opened (and created) ``/data/cam``: a file path has no fragment."""
    db = open_database(f"sqlite:///{tmp_path}/cam#2.db{suffix}")
    try:
        assert "stream" in db.get_tables()
        assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == ["cam#2.db"]
        assert not (tmp_path / "cam").exists()
    finally:
        db.close()


def test_new_sqlite_file_and_its_wal_are_private(tmp_path):
    old_umask = os.umask(0o022)
    try:
        db = open_database(tmp_path / "private.db")
    finally:
        os.umask(old_umask)
    try:
        StreamFactory(uri="rtsp://admin:hunter2@cam/1")
        assert _mode(tmp_path / "private.db") == 0o600
        for suffix in ("-wal", "-shm"):
            side = tmp_path / f"private.db{suffix}"
            assert side.exists(), f"{side} should exist while the database is open in WAL mode"
            assert _mode(side) == 0o600
    finally:
        db.close()


def test_sqlite_pragmas(tmp_path):
    db = open_database(tmp_path / "p.db")
    try:

        def pragma(name):
            return db.execute_sql(f"PRAGMA {name}").fetchone()[0]

        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 1  # NORMAL
        assert pragma("foreign_keys") == 1
        assert pragma("auto_vacuum") == 2  # INCREMENTAL, set before the first table
        assert pragma("journal_size_limit") == 64 * 1024 * 1024
        assert pragma("busy_timeout") == 30_000
        assert pragma("cache_size") == -32768
        assert pragma("mmap_size") == 0  # off: a read error must raise, not SIGBUS the recorder
    finally:
        db.close()


@pytest.mark.parametrize("how", ["argument", "url"])
def test_synchronous_full_is_selectable(tmp_path, how):
    path = tmp_path / "full.db"
    db = (
        open_database(path, synchronous="FULL")
        if how == "argument"
        else open_database(f"sqlite:///{path}?synchronous=full")
    )
    try:
        assert db.execute_sql("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        db.close()


@pytest.mark.parametrize("how", ["argument", "url"])
def test_reads_through_a_memory_map_when_asked(tmp_path, how):
    path = tmp_path / "mapped.db"
    size = 64 * 1024 * 1024
    db = (
        open_database(path, mmap_size=size)
        if how == "argument"
        else open_database(f"sqlite:///{path}?mmap_size={size}")
    )
    try:
        StreamFactory()
        assert db.execute_sql("PRAGMA mmap_size").fetchone()[0] == size
        assert Stream.select().count() == 1
    finally:
        db.close()


@pytest.mark.parametrize("size", [-1, 1.5, True, "lots"])
def test_a_bad_mmap_size_is_refused_naming_it(tmp_path, size):
    with pytest.raises(ValidationError, match="mmap_size") as info:
        open_database(tmp_path / "m.db", mmap_size=size)
    assert info.value.field == "mmap_size"
    with pytest.raises(ValidationError, match="mmap_size"):
        open_database(f"sqlite:///{tmp_path}/m.db?mmap_size=-1")


@pytest.mark.parametrize(
    ("url", "field_in_message"),
    [
        ("mysql://localhost/x", "unsupported scheme"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite://host/x.db", "no host"),
        ("postgresql://user:pw@localhost/", "no database name"),
    ],
)
def test_bad_urls_are_validation_errors(url, field_in_message):
    with pytest.raises(ValidationError, match=field_in_message) as info:
        open_database(url)
    assert info.value.field == "url"
    assert "pw@" not in str(info.value), "a password in a URL must never be shown"


def test_bad_synchronous_mode_names_the_argument(tmp_path):
    with pytest.raises(ValidationError, match="synchronous='SOMETIMES'"):
        open_database(tmp_path / "x.db", synchronous="SOMETIMES")


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DatabaseUnavailable, match="does not exist"):
        open_database(tmp_path / "nowhere" / "x.db")


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(DatabaseUnavailable, match="restore a backup") as info:
        open_database(junk)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


def test_unreachable_postgres_is_database_unavailable():
    with pytest.raises(DatabaseUnavailable, match=re.escape("127.0.0.1:1")) as info:
        open_database("postgresql://someone:topsecret@127.0.0.1:1/nothing", connect_timeout=2)
    assert "topsecret" not in str(info.value)


# --- schema versions ------------------------------------------------------------


def test_migrate_false_on_an_empty_database_names_both_versions(backend):
    with pytest.raises(SchemaMismatch) as info:
        backend.open(migrate=False)
    assert info.value.database_version is None
    assert info.value.code_version == code_schema_version()
    assert "empty database" in str(info.value) and code_schema_version() in str(info.value)


def test_a_refused_open_leaves_no_postgres_connection_or_watchdog_behind(backend):
    # A manager retrying open_database while the schema is wrong must not
    # use up the server's connections one refused attempt at a time.
    if backend.name != "postgres":
        pytest.skip("the connection pool and its watchdog are PostgreSQL's")
    url, params = backend.new_target()
    tag = f"refused-open-{os.getpid()}-{threading.get_ident()}"
    watchdogs = sum(t.name == "pg-watchdog" for t in threading.enumerate())
    for _ in range(3):
        with pytest.raises(SchemaMismatch):
            open_database(url, migrate=False, application_name=tag, **params)
    probe = open_database(url, **params)
    try:
        for _ in range(50):  # a closed backend leaves pg_stat_activity a moment later
            (left,) = probe.execute_sql(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = %s", (tag,)
            ).fetchone()
            if not left:
                break
            time.sleep(0.1)
    finally:
        probe.close_all()
    assert left == 0, f"{left} connection(s) of refused opens still open"
    # A stopped watchdog notices within a tick; on a loaded machine its thread
    # may take a few ticks more to be scheduled and end.
    for _ in range(50):
        if sum(t.name == "pg-watchdog" for t in threading.enumerate()) <= watchdogs:
            break
        time.sleep(0.1)
    assert sum(t.name == "pg-watchdog" for t in threading.enumerate()) <= watchdogs


def test_migrate_false_on_a_current_database_opens_it(backend, tmp_path):
    url, params = backend.new_target()
    open_database(url, **params).close()
    db = open_database(url, migrate=False, **params)
    try:
        assert schema_version(db) == code_schema_version()
    finally:
        db.close()


def test_a_database_ahead_of_the_code_is_refused(backend):
    url, params = backend.new_target()
    db = open_database(url, **params)
    db.execute_sql(
        "INSERT INTO migratehistory (name, migrated_at) VALUES ('999_from_the_future', '2030-01-01')"
    )
    db.close()
    for migrate in (True, False):
        with pytest.raises(SchemaMismatch, match="999_from_the_future") as info:
            open_database(url, migrate=migrate, **params)
        assert info.value.database_version == "999_from_the_future"
        assert info.value.code_version == code_schema_version()


def test_migrate_false_on_a_database_behind_names_both_versions(backend):
    url, params = backend.new_target()
    db = open_database(url, **params)
    rolled_back = rollback_one(db)
    db.close()
    with pytest.raises(SchemaMismatch) as info:
        open_database(url, migrate=False, **params)
    assert rolled_back in str(info.value)


# --- backup before migrating ---------------------------------------------------------

SECOND_MIGRATION = """
import peewee as pw


def migrate(migrator, database, *, fake=False):
    migrator.sql("CREATE TABLE test_extra (id INTEGER PRIMARY KEY)")


def rollback(migrator, database, *, fake=False):
    migrator.sql("DROP TABLE test_extra")
"""


@pytest.fixture
def two_migrations(tmp_path, monkeypatch):
    """A migrations directory with the real 001 plus a test-only 002."""
    one = tmp_path / "migrations-at-001"
    one.mkdir()
    shutil.copy(migrations_dir() / "001_initial.py", one)
    two = tmp_path / "migrations-at-002"
    shutil.copytree(one, two)
    (two / "002_test_extra.py").write_text(SECOND_MIGRATION)
    return one, two


def _backups(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.bak"))


def test_pending_migration_on_an_existing_file_takes_an_online_backup_first(
    tmp_path, monkeypatch, two_migrations
):
    at_001, at_002 = two_migrations
    path = tmp_path / "live.db"
    monkeypatch.setattr("stream_state.database.migrations_dir", lambda: at_001)
    db = open_database(path)
    # Rows of the schema at 001 (the models have grown columns since).
    for n in range(3):
        db.execute_sql(
            "INSERT INTO stream (name, uri, config, desired_enabled, desired_recording, status, health,"
            f" next_segment_index, created_at, updated_at) VALUES ('cam-{n}', 'rtsp://x/1', '{{}}', 1, 0,"
            " 'stopped', 'unknown', 0, 0, 0)"
        )
    # Another process is mid-flight: its committed rows sit in the WAL, not yet
    # checkpointed into the main file, so a plain file copy would miss them.
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute(
        "INSERT INTO stream (name, uri, config, desired_enabled, desired_recording, status, health,"
        " next_segment_index, created_at, updated_at) VALUES ('in-wal', 'rtsp://x/1', '{}', 1, 0,"
        " 'stopped', 'unknown', 0, 0, 0)"
    )
    db.close()
    assert _backups(tmp_path) == []

    monkeypatch.setattr("stream_state.database.migrations_dir", lambda: at_002)
    db = open_database(path)
    writer.close()
    try:
        assert schema_version(db) == "002_test_extra"
        backups = _backups(tmp_path)
        assert len(backups) == 1 and "pre-002_test_extra" in backups[0].name
        assert _mode(backups[0]) == 0o600
        copy = sqlite3.connect(backups[0])
        names = {name for (name,) in copy.execute("SELECT name FROM stream")}
        versions = [name for (name,) in copy.execute("SELECT name FROM migratehistory")]
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        copy.close()
        assert "in-wal" in names and len(names) == 4
        assert versions == ["001_initial"], "the backup is the database as it was before migrating"
    finally:
        db.close()


def test_a_new_database_is_not_backed_up(tmp_path):
    open_database(tmp_path / "fresh.db").close()
    open_database(tmp_path / "fresh.db").close()
    assert _backups(tmp_path) == []


def test_a_failing_migration_leaves_the_database_as_it_was(tmp_path, monkeypatch, two_migrations):
    at_001, at_002 = two_migrations
    (at_002 / "002_test_extra.py").write_text(
        SECOND_MIGRATION.replace(
            '"CREATE TABLE test_extra (id INTEGER PRIMARY KEY)"', '"CREATE TABLE stream (x)"'
        )
    )
    path = tmp_path / "fail.db"
    monkeypatch.setattr("stream_state.database.migrations_dir", lambda: at_001)
    open_database(path).close()
    monkeypatch.setattr("stream_state.database.migrations_dir", lambda: at_002)
    with pytest.raises(stream_state.MigrationError, match="rolled back"):
        open_database(path)
    monkeypatch.setattr("stream_state.database.migrations_dir", lambda: at_001)
    db = open_database(path, migrate=False)
    try:
        assert schema_version(db) == "001_initial"
    finally:
        db.close()


# --- threads -----------------------------------------------------------------------


def test_a_new_threads_first_connection_does_not_wait_for_another_writer(tmp_path):
    """Setting auto_vacuum waits for the write lock even when unchanged: a thread's first read failed
    with "database is locked" while another connection held a write transaction."""
    db = open_database(tmp_path / "state.db", busy_timeout=0.2)
    try:
        cam = Stream.register("cam-1", "rtsp://10.0.0.1/s")
        seen: list[object] = []

        def read_in_a_new_thread() -> None:
            try:
                seen.append(Stream.select().where(Stream.id == cam.id).count())
            except BaseException as exc:
                seen.append(exc)
            finally:
                db.close()

        with db.atomic():  # this thread's write transaction, held open
            cam.set_desired(recording=True)
            reader = threading.Thread(target=read_in_a_new_thread)
            reader.start()
            reader.join()
        assert seen == [1]
        assert db.execute_sql("PRAGMA auto_vacuum").fetchone() == (2,)  # a new file still gets INCREMENTAL
    finally:
        db.close()


def test_eight_threads_writing_at_once_never_see_a_lock_error(db):
    """Read-then-write transactions from 8 threads: all succeed, nothing lost."""
    streams = StreamFactory.create_batch(8)
    rounds = 40
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(stream_id: int) -> None:
        try:
            start.wait()
            for i in range(rounds):
                with db.atomic():
                    # Read, then write, inside one transaction: the pattern that
                    # fails with "database is locked" unless it begins IMMEDIATE.
                    seen = Event.select().where(Event.stream == stream_id).count()
                    Event.create(stream=stream_id, type="tick", data={"seen": seen, "i": i})
                    Stream.update(next_segment_index=Stream.next_segment_index + 1).where(
                        Stream.id == stream_id
                    ).execute()
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=work, args=(s.id,)) for s in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Event.select().count() == 8 * rounds
    for stream in Stream.select():
        assert stream.next_segment_index == rounds
        seen = [e.data["seen"] for e in Event.select().where(Event.stream == stream).order_by(Event.id)]
        assert seen == list(range(rounds)), "each transaction saw the previous one's write"
