"""Backups (issue 13, items 6-10): never onto the database, never partial under DEST's name,
never through a link, private, and bounded before migrations. SQLite only: PostgreSQL is
backed up with pg_dump (test_maintenance checks the refusal)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import stream_state.backups as backup_module
from stream_state import StorageFull, ValidationError, open_database
from stream_state.backups import pre_migration_backup, remove_partial_backups
from stream_state.cli import cli
from stream_state.database import migrations_dir
from stream_state.maintenance import backup

from .factories import StreamFactory


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)


def _rows(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT count(*) FROM stream").fetchone()[0]
    finally:
        con.close()


@pytest.fixture
def live(tmp_path):
    path = tmp_path / "live.db"
    db = open_database(path)
    StreamFactory.create_batch(3)
    yield path
    db.close()


# --- 6: never onto itself -------------------------------------------------------------------------


def test_backup_refuses_the_database_itself_under_any_spelling(live, tmp_path):
    os.link(live, tmp_path / "hardlink.db")
    spellings = [
        live,
        tmp_path / "sub" / ".." / "live.db",
        Path(str(live) + "-wal"),
        Path(str(live) + "-shm"),
        tmp_path / "hardlink.db",
    ]
    (tmp_path / "sub").mkdir()
    size = live.stat().st_size
    for dest in spellings:
        with pytest.raises(ValidationError, match="database being backed up") as info:
            backup(dest, force=True)
        assert info.value.field == "dest"
    assert live.stat().st_size == size and _rows(live) == 3


def test_cli_backup_onto_the_database_is_a_usage_error_and_keeps_it(live):
    result = CliRunner().invoke(cli, ["backup", str(live), "--force", "--db", str(live)])
    assert result.exit_code == 2, result.output
    assert "database being backed up" in result.output
    assert _rows(live) == 3


# --- 7: all or nothing under DEST's name ----------------------------------------------------------

_KILLED_BACKUP = textwrap.dedent(
    """
    import sys, time
    import stream_state.backups as b
    real = b._copy
    def slow(source, tmp, **kw):
        real(source, tmp, **kw)
        print("copied", flush=True)
        time.sleep(60)
    b._copy = slow
    b.backup_database(sys.argv[1], sys.argv[2])
    """
)


def test_a_killed_backup_leaves_nothing_under_dest_and_a_retry_works(live, tmp_path):
    dest = tmp_path / "copy.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_BACKUP, str(live), str(dest)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "copied"
        leftovers = [p for p in tmp_path.iterdir() if backup_module.TMP_MARK in p.name]
        assert leftovers and not dest.exists()
        assert remove_partial_backups(dest.with_name("copy.db")) == []  # still being written: kept
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    assert not dest.exists(), "a killed backup must not leave a file under DEST's name"
    assert backup(dest) == dest  # the retry is not refused
    assert _rows(dest) == 3 and _mode(dest) == 0o600
    assert not leftovers[0].exists(), "the retry removed what the killed backup left"
    assert not any(backup_module.TMP_MARK in p.name for p in tmp_path.iterdir())


def test_a_failed_backup_removes_its_temporary_file_and_says_why(live, tmp_path, monkeypatch):
    def full(source, tmp, **kw):
        tmp.write_bytes(b"SQLite format 3\x00" + b"\x00" * 5000)
        raise backup_module._storage_error(
            sqlite3.OperationalError("database or disk is full"), "backup failed", tmp.parent
        )

    monkeypatch.setattr(backup_module, "_copy", full)
    with pytest.raises(StorageFull, match="no space left"):
        backup(tmp_path / "copy.db")
    assert sorted(p.name for p in tmp_path.iterdir() if "copy" in p.name) == []


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_storage_full_and_leaves_nothing(live, small_disk):
    con = sqlite3.connect(live)
    con.execute("CREATE TABLE ballast (x)")
    con.executemany("INSERT INTO ballast VALUES (?)", [(os.urandom(1000),) for _ in range(1000)])
    con.commit()
    con.close()
    with pytest.raises(StorageFull, match="no space left"):
        backup(small_disk / "copy.db")
    assert list(small_disk.iterdir()) == []


# --- 9: links, modes, overwriting -----------------------------------------------------------------


def test_a_symlink_dest_is_never_followed_even_dangling(live, tmp_path):
    target = tmp_path / "elsewhere.db"
    link = tmp_path / "link.db"
    link.symlink_to(target)
    for force in (False, True):
        with pytest.raises(ValidationError, match="symbolic link"):
            backup(link, force=force)
    assert not target.exists() and link.is_symlink()


def test_an_existing_dest_is_replaced_only_with_force_atomically_and_becomes_private(live, tmp_path):
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE precious (x)")
    con.commit()
    con.close()
    os.chmod(other, 0o644)
    with pytest.raises(ValidationError, match="exists; pass force"):
        backup(other)
    assert sqlite3.connect(other).execute("SELECT count(*) FROM precious").fetchone() == (0,)
    inode = other.stat().st_ino
    backup(other, force=True)
    assert _rows(other) == 3 and _mode(other) == 0o600
    assert other.stat().st_ino != inode, "replaced by rename, not rewritten in place"


def test_open_database_tightens_a_precreated_file_and_its_wal_and_shm(tmp_path):
    path = tmp_path / "touched.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    db = open_database(path)
    StreamFactory()
    db.close()
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        side.touch()
        os.chmod(side, 0o644)
    os.chmod(path, 0o644)
    db = open_database(path)
    try:
        for target in (path, Path(str(path) + "-wal"), Path(str(path) + "-shm")):
            if target.exists():
                assert _mode(target) == 0o600, target
    finally:
        db.close()


@pytest.mark.parametrize("method", ["copy", "vacuum"])
def test_both_methods_make_a_consistent_private_copy(live, tmp_path, method):
    dest = backup(tmp_path / f"{method}.db", method=method)
    assert _rows(dest) == 3 and _mode(dest) == 0o600
    assert sqlite3.connect(dest).execute("PRAGMA integrity_check").fetchone() == ("ok",)


# --- 10: pre-migration backups stay bounded -------------------------------------------------------


def _pre(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.glob("live.db.pre-*.bak"))


def test_pre_migration_backups_skip_identical_keep_three_and_drop_partials(live, tmp_path):
    first = pre_migration_backup(live, "009_x")
    for _ in range(4):  # a crash loop: the database did not change
        assert pre_migration_backup(live, "009_x") == first
    assert _pre(tmp_path) == [first.name]
    made = [first]
    for _ in range(4):
        StreamFactory()
        made.append(pre_migration_backup(live, "009_x"))
    assert _pre(tmp_path) == sorted(p.name for p in made[-3:])
    assert _rows(made[-1]) == 3 + 4
    # What killed processes of older versions left: a 0-byte file and a cut-short copy.
    empty = tmp_path / "live.db.pre-009_x.20200101T000000000000Z.bak"
    empty.touch()
    short = tmp_path / "live.db.pre-009_x.20200102T000000000000Z.bak"
    short.write_bytes(made[-1].read_bytes()[:4096])
    old = time.time() - 3600
    for path in (empty, short):
        os.utime(path, (old, old))
    stale_tmp = tmp_path / f".live.db.pre-009_x.x.bak{backup_module.TMP_MARK}dead"
    stale_tmp.write_bytes(b"partial")
    StreamFactory()
    pre_migration_backup(live, "009_x")
    assert not empty.exists() and not short.exists() and not stale_tmp.exists()
    assert len(_pre(tmp_path)) == 3


def test_a_crash_looping_migration_writes_one_backup(tmp_path, monkeypatch):
    at_001 = tmp_path / "m1"
    at_001.mkdir()
    shutil.copy(migrations_dir() / "001_initial.py", at_001)
    at_002 = tmp_path / "m2"
    shutil.copytree(at_001, at_002)
    (at_002 / "002_boom.py").write_text(
        "def migrate(migrator, database, *, fake=False):\n    raise RuntimeError('killed')\n\n"
        "def rollback(migrator, database, *, fake=False):\n    pass\n"
    )
    path = tmp_path / "live.db"
    monkeypatch.setattr("stream_state.database.migrations_dir", lambda: at_001)
    open_database(path).close()
    monkeypatch.setattr("stream_state.database.migrations_dir", lambda: at_002)
    for _ in range(5):
        with pytest.raises(Exception, match="killed"):
            open_database(path)
    assert len(_pre(tmp_path)) == 1
