"""Open the database, tune it, and bring its schema to the version of this code.

``open_database`` is the one entry point: it picks the backend from a URL,
applies the SQLite pragmas the package relies on, binds the models, and runs
pending peewee-migrate migrations (after an online backup of an existing
SQLite file).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

import peewee as pw
from peewee_migrate import Router

from .backends import (
    StreamStatePostgresDatabase,
    StreamStateSqliteDatabase,
    current_database,
    database_proxy,
    dialect,
    url_backend,
)
from .backups import BackupMethod, backup_database, pre_migration_backup
from .errors import (
    DatabaseUnavailable,
    MigrationError,
    SchemaMismatch,
    ValidationError,
)
from .pgwatch import Watchdog, split_settings
from .redact import redact_data, redact_text, redact_uri, split_userinfo

log = logging.getLogger(__name__)

URL_ENV = "STREAM_STATE_DATABASE_URL"
DEFAULT_URL = "sqlite:///stream_state.db"
MIGRATE_TABLE = "migratehistory"  # peewee-migrate's default, so `pw_migrate` agrees

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


def migrations_dir() -> Path:
    """Where the migration scripts are: inside the installed package, else the source tree."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "migrations", package_dir.parent / "migrations"):
        if (candidate / "001_initial.py").is_file():
            return candidate
    raise MigrationError(f"migration scripts not found next to {package_dir}; reinstall stream_state")


def sqlite_pragmas(synchronous: str = "NORMAL", mmap_size: int = 0) -> list[tuple[str, Any]]:
    """The pragmas set on every SQLite connection, in the order they must run."""
    mode = str(synchronous).upper()
    if mode not in SYNCHRONOUS_MODES:
        raise ValidationError("synchronous", synchronous, f"expected one of {', '.join(SYNCHRONOUS_MODES)}")
    if isinstance(mmap_size, bool) or not isinstance(mmap_size, int) or mmap_size < 0:
        raise ValidationError("mmap_size", mmap_size, "expected a number of bytes, 0 (off) or more")
    return [
        # Must precede the first CREATE TABLE to take effect without a VACUUM;
        # lets maintenance hand freed pages back to the disk in small steps.
        ("auto_vacuum", "INCREMENTAL"),
        # Readers never block the writer and the writer never blocks readers.
        ("journal_mode", "wal"),
        # NORMAL in WAL mode cannot corrupt the database; a power cut may lose
        # the last transactions. FULL syncs every commit for power-loss safety.
        ("synchronous", mode),
        ("foreign_keys", 1),
        # 32 MiB page cache per connection (negative means KiB).
        ("cache_size", -32768),
        ("temp_store", "MEMORY"),
        # Truncate the WAL back to 64 MiB after checkpoints so one burst does
        # not leave a huge file behind forever.
        ("journal_size_limit", 64 * 1024 * 1024),
        # Reads through a memory map of the file's first mmap_size bytes (SQLite
        # caps it; 2 GiB in common builds) instead of a read() and a copy per
        # page: a page-scattered read such as a week of events costs a third
        # less. Off unless asked for: a read error on a mapped file (a failing
        # disk, the file cut short by another program) is a SIGBUS that kills
        # the process, where a read() returns an error the caller can handle.
        ("mmap_size", mmap_size),
    ]


class _RedactSqlParameters(logging.Filter):
    """Mask credentials in the parameters peewee logs with each query (at DEBUG).

    The stream URIs and configs that carry camera passwords are parameters of
    the package's own INSERTs and UPDATEs; an operator who turns on SQL
    logging must not find them in the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, tuple) and len(record.msg) == 2 and record.msg[1]:
            sql, params = record.msg
            record.msg = (sql, [_redact_parameter(value) for value in params])
        return True


def _redact_parameter(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_redact_parameter(item) for item in value]
    if not isinstance(value, str):
        return value
    if value[:1] in "{[":
        try:
            return json.dumps(redact_data(json.loads(value)))
        except ValueError:
            pass
    return redact_text(value)


_SQL_LOG_FILTER = _RedactSqlParameters()


def _protect_sql_log() -> None:
    logger = logging.getLogger("peewee")
    if _SQL_LOG_FILTER not in logger.filters:
        logger.addFilter(_SQL_LOG_FILTER)


def resolve_url(url: str | os.PathLike[str] | None) -> str:
    """The URL to open: the argument, else $STREAM_STATE_DATABASE_URL, else the default file."""
    if url is None:
        url = os.environ.get(URL_ENV) or DEFAULT_URL
    return os.fspath(url)


def open_database(
    url: str | os.PathLike[str] | None = None,
    *,
    migrate: bool = True,
    synchronous: str = "NORMAL",
    busy_timeout: float = 30.0,
    backup_before_migrate: bool = True,
    max_connections: int = 32,
    mmap_size: int = 0,
    **connect_params: Any,
) -> pw.Database:
    """Open (creating if needed) the database at ``url`` and bind the models to it.

    ``url`` is ``sqlite:///relative.db``, ``sqlite:////absolute.db``, a bare
    file path, or ``postgresql://user:pass@host/dbname``. With ``migrate``
    the schema is brought to this code's version; without it a schema of
    another version raises ``SchemaMismatch``.

    ``busy_timeout`` (seconds) is how long a SQLite writer waits for the lock
    before giving up; every write transaction starts IMMEDIATE so that
    concurrent writers queue on it instead of failing.

    ``mmap_size`` (SQLite; PostgreSQL ignores it, as it does ``synchronous``):
    bytes of the file read through a memory map, 0 (the default) for none.
    Long reads get faster (reading the timeline of a week, a quarter); a read error on
    the mapped file then kills the process with SIGBUS instead of raising,
    so it suits a reporting process better than the recorder.
    """
    db = connect_database(
        url,
        synchronous=synchronous,
        busy_timeout=busy_timeout,
        max_connections=max_connections,
        mmap_size=mmap_size,
        **connect_params,
    )
    try:
        ensure_schema(db, migrate=migrate, backup_before_migrate=backup_before_migrate)
    except BaseException:
        # The pool's connections and the watchdog's thread too (PostgreSQL):
        # a caller retrying a refused open must not pile them up.
        if isinstance(db, StreamStatePostgresDatabase):
            db.close_all()
        else:
            db.close()
        raise
    database_proxy.initialize(db)
    return db


def connect_database(
    url: str | os.PathLike[str] | None = None,
    *,
    synchronous: str = "NORMAL",
    busy_timeout: float = 30.0,
    max_connections: int = 32,
    mmap_size: int = 0,
    **connect_params: Any,
) -> pw.Database:
    """Connect to ``url`` with the package's settings, leaving the schema alone.

    For tools that inspect or migrate the schema themselves; everything else
    wants ``open_database``. The models are not bound.
    """
    url = resolve_url(url)
    _protect_sql_log()
    db: pw.Database
    if url_backend(url) == "sqlite":
        db = _open_sqlite(
            url, synchronous=synchronous, busy_timeout=busy_timeout, mmap_size=mmap_size, **connect_params
        )
    else:
        db = _open_postgres(url, max_connections=max_connections, **connect_params)
    db.connect(reuse_if_open=True)
    return db


def _split_sqlite_url(url: str) -> SplitResult:
    """``urlsplit`` for a SQLite URL, where "#" is part of the file's name.

    A file path has no fragment: ``sqlite:////data/cam#2.db`` names
    ``/data/cam#2.db``, and cutting at the "#" would silently open (and
    create) ``/data/cam`` instead.
    """
    return urlsplit(url.replace("#", "%23"))


def sqlite_path(url: str) -> Path:
    """The file a SQLite URL (or bare path) names; ``ValidationError`` for in-memory or hosted URLs."""
    if "://" not in url:
        return Path(url)
    parts = _split_sqlite_url(url)
    # sqlite:///rel.db -> "rel.db"; sqlite:////abs.db -> "/abs.db"
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if parts.netloc:
        raise ValidationError(
            "url",
            redact_uri(url),
            "a SQLite URL has no host: use sqlite:///relative.db or sqlite:////absolute.db",
        )
    if not path or path == ":memory:":
        raise ValidationError(
            "url", redact_uri(url), "an in-memory database is not shared between threads; use a file path"
        )
    return Path(path)


def _open_sqlite(
    url: str, *, synchronous: str, busy_timeout: float, mmap_size: int, **connect_params: Any
) -> pw.Database:
    path = sqlite_path(url)
    query = dict(parse_qsl(_split_sqlite_url(url).query)) if "://" in url else {}
    synchronous = query.pop("synchronous", synchronous)
    if "mmap_size" in query:
        text = query.pop("mmap_size")
        if not text.isdigit():
            raise ValidationError("mmap_size", text, "expected a number of bytes, 0 (off) or more")
        mmap_size = int(text)
    if query:
        raise ValidationError(
            "url", redact_uri(url), f"unknown SQLite URL options: {', '.join(sorted(query))}"
        )
    pragmas = sqlite_pragmas(synchronous, mmap_size)
    if path.is_dir():
        raise ValidationError("url", str(path), "is a directory, not a database file")
    if busy_timeout <= 0:
        raise ValidationError("busy_timeout", busy_timeout, "must be a positive number of seconds")
    _create_private_file(path)
    return StreamStateSqliteDatabase(
        str(path),
        pragmas=pragmas,
        timeout=busy_timeout,
        # A transaction that reads and then writes must hold the write lock
        # from its start: a deferred one fails with "database is locked" when
        # another writer got in between, whatever the busy timeout.
        lock_type="IMMEDIATE",
        # UPDATE ... RETURNING takes the next segment index in one statement
        # on both backends (SQLite 3.35+).
        returning_clause=True,
        **connect_params,
    )


def _create_private_file(path: Path) -> None:
    """Create a new database file readable by its owner only: it holds camera credentials."""
    if not path.parent.is_dir():
        raise DatabaseUnavailable(
            f"cannot create SQLite database {path}: directory {path.parent} does not exist"
        )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _tighten_existing(path)
        return
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot create SQLite database {path}: {exc.strerror}") from exc
    # The umask may only narrow the mode, but be explicit: a process with an
    # odd umask must still get exactly 0600. SQLite gives the -wal and -shm
    # files the database file's mode.
    os.fchmod(fd, 0o600)
    os.close(fd)


def _tighten_existing(path: Path) -> None:
    """An existing database (say, pre-created by `touch` or tmpfiles.d) and its -wal/-shm become 0600.

    SQLite gives new -wal and -shm files the database file's mode, so a
    0644 database would hand its camera passwords to every local user.
    """
    for target in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))):
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot check the mode of %s: %s", target, exc.strerror)
            continue
        if mode & 0o077:
            try:
                os.chmod(target, mode & 0o700)
            except OSError as exc:
                log.warning(
                    "%s is readable by other users (mode %o) and cannot be made private: %s; "
                    "it holds camera credentials",
                    target,
                    mode,
                    exc.strerror,
                )


def _open_postgres(url: str, *, max_connections: int, **connect_params: Any) -> pw.Database:
    # The userinfo ends at the last "@": a password may hold "#", "?", "/" or
    # "@", which urlsplit would take for a fragment, a query or a path.
    userinfo, without_userinfo = split_userinfo(url)
    try:
        parts = urlsplit(without_userinfo)
        port = parts.port
    except ValueError as exc:
        raise ValidationError("url", redact_uri(url), f"not a well-formed URL ({exc})") from None
    params: dict[str, Any] = {k: v for k, v in parse_qsl(parts.query)}
    if userinfo is not None:
        user, has_password, password = userinfo.partition(":")
        if user:
            params["user"] = unquote(user)
        if has_password and password:
            params["password"] = unquote(password)
    if parts.hostname:
        params["host"] = parts.hostname
    if port:
        params["port"] = port
    params.update(connect_params)
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ValidationError("url", redact_uri(url), "no database name; use postgresql://host/dbname")
    # Timeouts with defaults (pgwatch): connecting, dead peers, runaway
    # statements, lock waits, and a server that stopped answering.
    params, server, client = split_settings(params)
    display_url = redact_uri(url)
    watchdog = Watchdog(
        {"dbname": database, **params},
        unresponsive_after=client["unresponsive_after"],
        probe_timeout=client["probe_timeout"],
        statement_timeout_ms=server["statement_timeout"],
        display_url=display_url,
    )
    return StreamStatePostgresDatabase(
        database,
        display_url=display_url,
        watchdog=watchdog,
        max_connections=max_connections,
        # Drop connections idle for 5 minutes so a restarted server or a
        # NAT timeout does not leave dead sockets in the pool.
        stale_timeout=300,
        **params,
    )


# --- schema version ---------------------------------------------------------


def _router(db: pw.Database) -> Router:
    return Router(
        db,
        migrate_dir=migrations_dir(),
        migrate_table=MIGRATE_TABLE,
        logger=logging.getLogger("stream_state.migrations"),
    )


def code_schema_version() -> str:
    """The newest migration this code ships, e.g. ``001_initial``."""
    return _router_todo()[-1]


def _router_todo() -> list[str]:
    return sorted(p.stem for p in migrations_dir().iterdir() if Router.filemask.match(p.name))


def applied_migrations(db: pw.Database) -> list[str]:
    """Migrations recorded in the database, oldest first, without creating anything."""
    if not db.table_exists(MIGRATE_TABLE):
        return []
    cursor = db.execute_sql(f'SELECT name FROM "{MIGRATE_TABLE}" ORDER BY id')
    return [name for (name,) in cursor.fetchall()]


def schema_version(db: pw.Database | None = None) -> str | None:
    """The newest migration applied to ``db`` (default: the open database), or None."""
    applied = applied_migrations(db or current_database())
    return applied[-1] if applied else None


def pending_migrations(db: pw.Database) -> list[str]:
    applied = set(applied_migrations(db))
    return [name for name in _router_todo() if name not in applied]


def _check_not_ahead(db: pw.Database) -> None:
    known = set(_router_todo())
    unknown = [name for name in applied_migrations(db) if name not in known]
    if unknown:
        raise SchemaMismatch(
            schema_version(db),
            code_schema_version(),
            f"the database has migrations this code does not know ({', '.join(unknown)}); "
            "upgrade stream_state",
        )


@contextlib.contextmanager
def _migration_lock(db: pw.Database) -> Iterator[None]:
    """One transaction for all pending migrations, serialised across processes.

    A second process opening the same database at the same time waits here,
    then finds nothing left to do.
    """
    watchdog = getattr(db, "watchdog", None)
    with watchdog.unbounded() if watchdog is not None else contextlib.nullcontext(), db.atomic():
        lock = dialect(db).migration_lock_sql
        if lock is not None:
            # A migration may wait for another process's and may run long:
            # the everyday statement and lock timeouts do not apply to it.
            for setting in dialect(db).unbounded_transaction_sql:
                db.execute_sql(setting)
            db.execute_sql(lock)
        yield


def ensure_schema(db: pw.Database, *, migrate: bool, backup_before_migrate: bool) -> None:
    """Migrate ``db`` to head (backing up SQLite first), or with ``migrate=False`` refuse any mismatch."""
    _check_not_ahead(db)
    pending = pending_migrations(db)
    if not pending:
        return
    if not migrate:
        raise SchemaMismatch(
            schema_version(db),
            code_schema_version(),
            f"pending migrations: {', '.join(pending)}; open with migrate=True or run `stream-state migrate`",
        )
    if backup_before_migrate and dialect(db).is_sqlite and db.get_tables():
        backup_path = pre_migration_backup(db.database, pending[0])
        log.info("backed up %s to %s before migrating", db.database, backup_path)
    migrate_to_head(db)


def migrate_to_head(db: pw.Database) -> list[str]:
    """Apply every pending migration in one transaction; return their names."""
    try:
        with _migration_lock(db):
            _check_not_ahead(db)
            if not pending_migrations(db):
                return []
            return _router(db).run()
    except (pw.DatabaseError, OSError, SyntaxError) as exc:
        raise MigrationError(
            f"migrating to {code_schema_version()} failed and was rolled back: {exc}"
        ) from exc


def rollback_one(db: pw.Database) -> str:
    """Undo the newest applied migration; return its name."""
    name = schema_version(db)
    if name is None:
        raise MigrationError("nothing to roll back: no migration has been applied")
    _check_not_ahead(db)
    try:
        with _migration_lock(db):
            _router(db).rollback()
    except (pw.DatabaseError, OSError) as exc:
        raise MigrationError(f"rolling back {name} failed and was undone: {exc}") from exc
    return name


# --- backup -------------------------------------------------------------------


def backup_sqlite(
    db: pw.Database,
    dest: str | os.PathLike[str] | None = None,
    *,
    label: str = "backup",
    force: bool = False,
    method: BackupMethod = "copy",
) -> Path:
    """Copy a live SQLite database: one consistent snapshot, written atomically, 0600.

    Without ``dest`` the copy goes beside the database, named by ``label`` and
    the time. The guarantees are in ``stream_state.backups``.
    """
    source = Path(db.database)
    if dest is None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        dest = source.with_name(f"{source.name}.{label}.{stamp}.bak")
    busy_timeout = float(getattr(db, "_timeout", 30.0))
    return backup_database(source, dest, force=force, method=method, busy_timeout=busy_timeout)
