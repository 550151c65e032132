"""Copies of a live SQLite database that are never mistaken for good ones.

The guarantees (README, "Backups"):

* **Consistent while the recorder writes.** The copy is one snapshot: the
  whole database is copied in one step of SQLite's backup API (or with
  ``VACUUM INTO``) inside one read transaction. In WAL mode a reader never
  blocks the writer, and a one-step copy cannot be restarted by a foreign
  write the way a stepped backup is (which, on a busy recorder, never ends).
* **All or nothing under DEST's name.** The copy is written to a temporary
  file in DEST's directory (created ``O_EXCL | O_NOFOLLOW``, mode 0600),
  fsynced, renamed onto DEST, and the directory fsynced. A killed or failed
  backup leaves no file under DEST's name; a failure removes its temporary
  file and says why (``StorageFull`` for a full disk).
* **Never onto itself, never through a link.** DEST that is the database
  (same path after resolving links, same device and inode, or one of its
  ``-wal`` / ``-shm`` / ``-journal`` files) is refused; DEST that is a symbolic
  link (even a dangling one) is refused; an existing DEST is replaced only
  with ``force=True``, atomically.
* **Pre-migration backups stay bounded.** ``pre_migration_backup`` keeps the
  newest ``keep`` of them, removes partial ones (left by a killed process),
  and writes none when an identical one (same schema version, same bytes)
  already exists: a crash-looping start does not fill the disk.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from .errors import DatabaseUnavailable, StorageFull, StreamStateError, ValidationError

log = logging.getLogger(__name__)

BackupMethod = Literal["copy", "vacuum"]
METHODS: tuple[str, ...] = ("copy", "vacuum")
# Files SQLite keeps beside a database; a backup written onto one of them
# destroys the live database as surely as one written onto the file itself.
SIDE_FILES = ("-wal", "-shm", "-journal")
TMP_MARK = ".tmp-"
PRE_MIGRATION_KEEP = 3
_SQLITE_HEADER = b"SQLite format 3\x00"


class BackupError(StreamStateError):
    """A backup could not be written; nothing was left under DEST's name."""


def backup_database(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    force: bool = False,
    method: BackupMethod = "copy",
    busy_timeout: float = 30.0,
) -> Path:
    """Copy the SQLite database at ``source`` to ``dest`` with the guarantees above; return DEST."""
    if method not in METHODS:
        raise ValidationError("method", method, f"expected one of {', '.join(METHODS)}")
    source_path = Path(os.path.abspath(source))
    dest_path = Path(os.path.abspath(dest))
    _refuse_unsafe_dest(source_path, dest_path, force=force)
    for stale in _remove_stale_temporaries(dest_path):
        log.warning("removed %s, left by a backup that was killed", stale)
    with _temporary_beside(dest_path) as (tmp, _fd):
        _copy(source_path, tmp, method=method, busy_timeout=busy_timeout)
        _fsync_path(tmp)
        _refuse_unsafe_dest(source_path, dest_path, force=force)  # nothing appeared meanwhile
        os.replace(tmp, dest_path)
    _fsync_dir(dest_path.parent)
    return dest_path


def _refuse_unsafe_dest(source: Path, dest: Path, *, force: bool) -> None:
    if dest.is_symlink():
        raise ValidationError(
            "dest", str(dest), "is a symbolic link; backups never follow one: give the real path"
        )
    real_source = Path(os.path.realpath(source))
    real_dest = Path(os.path.realpath(dest))
    protected = {real_source, *(real_source.with_name(real_source.name + s) for s in SIDE_FILES)}
    protected |= {source, *(source.with_name(source.name + s) for s in SIDE_FILES)}
    if dest in protected or real_dest in protected or _same_file(dest, real_source):
        raise ValidationError(
            "dest", str(dest), f"is the database being backed up ({source}) or one of its files"
        )
    if not dest.parent.is_dir():
        raise ValidationError("dest", str(dest), f"directory {dest.parent} does not exist")
    if dest.is_dir():
        raise ValidationError("dest", str(dest), "is a directory; give a file name")
    if os.path.lexists(dest) and not force:
        raise ValidationError("dest", str(dest), "exists; pass force=True (--force) to overwrite it")


def _same_file(dest: Path, source: Path) -> bool:
    try:
        info = os.stat(dest, follow_symlinks=False)
    except OSError:
        return False
    for candidate in (source, *(source.with_name(source.name + s) for s in SIDE_FILES)):
        try:
            other = os.stat(candidate)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == (other.st_dev, other.st_ino):
            return True
    return False


@contextlib.contextmanager
def _temporary_beside(dest: Path) -> Iterator[tuple[Path, int]]:
    """A new private file next to ``dest``, locked while in use, removed unless renamed away."""
    tmp = dest.with_name(f".{dest.name}{TMP_MARK}{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise _storage_error(exc, f"cannot create a temporary file in {dest.parent}", dest.parent) from exc
    try:
        os.fchmod(fd, 0o600)  # whatever the umask: the copy holds camera credentials
        # Held until the copy is renamed: tells a cleaner in another process
        # that this partial file is still being written.
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp, fd
    except BaseException:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        raise
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.with_name(tmp.name + "-journal").unlink()


def _copy(source: Path, tmp: Path, *, method: str, busy_timeout: float) -> None:
    if not source.is_file():
        raise DatabaseUnavailable(f"cannot back up {source}: no such database file")
    try:
        src = sqlite3.connect(f"file:{quote(str(source))}?mode=rw", uri=True, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise DatabaseUnavailable(f"cannot open {source} to back it up: {exc}") from exc
    try:
        if method == "vacuum":
            # VACUUM INTO accepts an empty existing file: ours, created 0600.
            src.execute("VACUUM INTO ?", (str(tmp),))
        else:
            dst = sqlite3.connect(str(tmp))
            try:
                # One step: the whole copy under one read snapshot. A stepped
                # copy restarts from page 1 after every foreign write.
                src.backup(dst, pages=-1)
            finally:
                dst.close()
    except sqlite3.Error as exc:
        raise _storage_error(exc, f"backup of {source} failed", tmp.parent) from exc
    finally:
        src.close()


def _storage_error(exc: BaseException, what: str, directory: Path) -> StreamStateError:
    text = str(exc).lower()
    full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
    full = full or "disk is full" in text or "no space" in text
    if not full and "disk i/o error" in text:
        # SQLite reports ENOSPC during a copy as "disk I/O error": ask the disk.
        full = _free_bytes(directory) < 1024 * 1024
    if full:
        return StorageFull(
            f"{what}: no space left in {directory} ({exc}); nothing was kept. Free space and retry."
        )
    return BackupError(f"{what}: {exc}; nothing was kept")


def _free_bytes(directory: Path) -> int:
    try:
        info = os.statvfs(directory)
    except OSError:
        return 1 << 62
    return info.f_bavail * info.f_frsize


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    except OSError as exc:
        raise _storage_error(exc, f"cannot flush {path}", path.parent) from exc
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename is done
        pass
    finally:
        os.close(fd)


# --- backups taken before migrating ------------------------------------------------------------


def pre_migration_backup(
    source: str | os.PathLike[str], version: str, *, keep: int = PRE_MIGRATION_KEEP
) -> Path:
    """Back up ``source`` before migrating past ``version``; keep at most ``keep`` such backups.

    Returns the new backup, or the existing identical one that made a new one
    unnecessary.
    """
    source_path = Path(os.path.abspath(source))
    remove_partial_backups(source_path)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    label = f"pre-{version}"
    dest = source_path.with_name(f"{source_path.name}.{label}.{stamp}.bak")
    with _temporary_beside(dest) as (tmp, _fd):
        _copy(source_path, tmp, method="copy", busy_timeout=30.0)
        digest = _digest(tmp)
        for existing in _pre_migration_backups(source_path):
            if f".{label}." in existing.name and _digest(existing) == digest:
                log.info("database unchanged since backup %s; not backing it up again", existing)
                tmp.unlink()
                return existing
        _fsync_path(tmp)
        os.replace(tmp, dest)
    _fsync_dir(dest.parent)
    for old in _pre_migration_backups(source_path)[:-keep] if keep > 0 else []:
        log.info("removing old pre-migration backup %s (keeping %d)", old, keep)
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
    return dest


def _pre_migration_backups(source: Path) -> list[Path]:
    """Complete pre-migration backups of ``source``, oldest first (the stamp sorts by time)."""
    found = [
        p
        for p in source.parent.glob(f"{source.name}.pre-*.bak")
        if p.is_file() and not p.is_symlink() and _looks_complete(p)
    ]
    return sorted(found, key=lambda p: (p.name.rsplit(".", 2)[-2], p.name))


def remove_partial_backups(source: str | os.PathLike[str]) -> list[Path]:
    """Remove what killed backups of ``source`` left: temporary files no process is writing, and
    pre-migration backups of older versions of this package that are empty or cut short."""
    source_path = Path(os.path.abspath(source))
    removed = _remove_stale_temporaries(source_path)
    for bak in source_path.parent.glob(f"{source_path.name}.pre-*.bak"):
        # Old versions wrote straight to the final name; a file that young
        # may still be written by one of them.
        if bak.is_file() and not bak.is_symlink() and not _looks_complete(bak) and _older_than(bak, 60):
            removed.append(bak)
            for leftover in (bak, bak.with_name(bak.name + "-journal")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
    for path in removed:
        log.warning("removed partial backup %s", path)
    return removed


def _remove_stale_temporaries(dest: Path) -> list[Path]:
    """Temporary files of backups to ``dest`` (or, for a database, of its pre-migration backups)
    that no live process holds locked: what a killed backup left."""
    found = [*dest.parent.glob(f".{dest.name}{TMP_MARK}*"), *dest.parent.glob(f".{dest.name}.*{TMP_MARK}*")]
    removed = []
    for tmp in found:
        if tmp.name.endswith("-journal") or tmp.is_symlink() or not _unlocked(tmp):
            continue
        removed.append(tmp)
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return removed


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def _unlocked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the lock too
    return True


def _looks_complete(path: Path) -> bool:
    """A SQLite file whose header is whole, whose size is what the header says, and no journal beside it."""
    if path.with_name(path.name + "-journal").exists():
        return False  # a copy interrupted mid-transaction
    try:
        with open(path, "rb") as f:
            header = f.read(100)
        size = path.stat().st_size
    except OSError:
        return False
    if len(header) < 100 or not header.startswith(_SQLITE_HEADER):
        return False
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    valid_for = int.from_bytes(header[92:96], "big")
    change_counter = int.from_bytes(header[24:28], "big")
    if pages and valid_for == change_counter:
        return size == pages * page_size
    return size > 0 and page_size > 0 and size % page_size == 0


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
