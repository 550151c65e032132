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
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import peewee as pw
from peewee_migrate import Router
from playhouse.pool import PooledPostgresqlDatabase

from .errors import (
    DatabaseUnavailable,
    MigrationError,
    SchemaMismatch,
    StorageFull,
    StreamStateError,
    ValidationError,
)
from .models.base import database_proxy
from .redact import redact_data, redact_text, redact_uri

log = logging.getLogger(__name__)

URL_ENV = "STREAM_STATE_DATABASE_URL"
DEFAULT_URL = "sqlite:///stream_state.db"
MIGRATE_TABLE = "migratehistory"  # peewee-migrate's default, so `pw_migrate` agrees

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgres+pool", "postgresql+pool"}
_SQLITE_SCHEMES = {"sqlite", "sqlite+pool"}


def migrations_dir() -> Path:
    """Where the migration scripts are: inside the installed package, else the source tree."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "migrations", package_dir.parent / "migrations"):
        if (candidate / "001_initial.py").is_file():
            return candidate
    raise MigrationError(f"migration scripts not found next to {package_dir}; reinstall stream_state")


def sqlite_pragmas(synchronous: str = "NORMAL") -> list[tuple[str, Any]]:
    """The pragmas set on every SQLite connection, in the order they must run."""
    mode = str(synchronous).upper()
    if mode not in SYNCHRONOUS_MODES:
        raise ValidationError("synchronous", synchronous, f"expected one of {', '.join(SYNCHRONOUS_MODES)}")
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
    ]


# SQLite's words for a full disk or a database that hit max_page_count.
_SQLITE_FULL = ("database or disk is full",)
# ... and for a database that cannot be used at all right now.
_SQLITE_UNAVAILABLE = (
    "disk i/o error",
    "attempt to write a readonly database",
    "unable to open database file",
    "database disk image is malformed",
    "file is not a database",
    "database is locked",
    "no such table",
)
_SQLITE_CORRUPT = ("database disk image is malformed", "file is not a database")


class _TranslatesDriverErrors:
    """Turn the driver's "cannot work right now" errors into the package's own.

    Integrity errors and programming errors pass through unchanged (the
    domain methods turn those into precise errors themselves); a full disk
    becomes ``StorageFull`` and a lost, read-only or damaged database
    ``DatabaseUnavailable``, each with a message that says what to do.
    """

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        try:
            return super().execute_sql(sql, params)  # type: ignore[misc]
        except pw.PeeweeException as exc:
            self._raise_translated(exc)

    def begin(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().begin(*args, **kwargs)  # type: ignore[misc]
        except pw.PeeweeException as exc:
            self._raise_translated(exc)

    def commit(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().commit(*args, **kwargs)  # type: ignore[misc]
        except pw.PeeweeException as exc:
            self._raise_translated(exc)

    def rollback(self, *args: Any, **kwargs: Any) -> None:
        if self.is_closed():  # type: ignore[attr-defined]
            # The connection died (and the server rolled back with it); the
            # error that killed it is the one the caller must see.
            return
        try:
            super().rollback(*args, **kwargs)  # type: ignore[misc]
        except pw.PeeweeException as exc:
            if "no transaction is active" in str(exc):
                # SQLite already rolled back on its own (it does on a full
                # disk): the goal is reached, and the error that caused it is
                # the one the caller must see.
                return
            self._raise_translated(exc)

    def _raise_translated(self, exc: pw.PeeweeException) -> NoReturn:
        translated = self.translate_error(exc)
        if translated is None:
            raise exc
        raise translated from exc

    def translate_error(self, exc: BaseException) -> StreamStateError | None:
        raise NotImplementedError

    def verify_file(self) -> None:
        """Raise ``DatabaseUnavailable`` if the database file vanished or was replaced (SQLite only)."""


class StreamStateSqliteDatabase(_TranslatesDriverErrors, pw.SqliteDatabase):
    """SQLite with driver errors turned into the package's errors.

    Connections open the file read-write without creating it: a database
    file deleted under a running process must be an error, not a fresh empty
    database that silently takes the next writes.
    """

    _identity: tuple[int, int] | None = None

    def _connect(self) -> sqlite3.Connection:
        self.verify_file()
        self._refuse_read_only()
        target = f"file:{quote(os.path.abspath(self.database))}?mode=rw"
        try:
            conn = sqlite3.connect(
                target, uri=True, timeout=self._timeout, isolation_level=None, **self.connect_params
            )
        except sqlite3.DatabaseError as exc:
            raise DatabaseUnavailable(
                f"cannot open SQLite database {self.database}: {exc}. If the file is damaged, "
                "restore a backup or run `stream-state integrity`."
            ) from exc
        try:
            self._add_conn_hooks(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise DatabaseUnavailable(
                f"cannot use SQLite database {self.database}: {exc}. If the file is damaged, "
                "restore a backup or run `stream-state integrity`."
            ) from exc
        except BaseException:
            conn.close()
            raise
        if self._identity is None:
            self._identity = self._file_identity()
        return conn

    def _refuse_read_only(self) -> None:
        # SQLite would open a read-only file read-only without a word, fail
        # later, and (while another connection of this process holds the
        # file's locks) keep the descriptor of every refused attempt open.
        path = os.path.abspath(self.database)
        for target, what in ((path, "file"), (os.path.dirname(path), "directory")):
            if os.path.exists(target) and not os.access(target, os.W_OK):
                raise DatabaseUnavailable(
                    f"SQLite database {self.database} is read-only (its {what} {target} cannot be written, "
                    "or its file system is mounted read-only); the data is intact: make it writable again"
                )

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.database)
        except FileNotFoundError:
            return None
        return info.st_dev, info.st_ino

    def verify_file(self) -> None:
        if self._identity is None:
            return
        now = self._file_identity()
        if now is None:
            raise DatabaseUnavailable(
                f"SQLite database {self.database} was deleted while in use; writes since then are lost "
                "when the process exits. Stop the manager and restore a backup."
            )
        if now != self._identity:
            raise DatabaseUnavailable(
                f"SQLite database {self.database} was replaced by another file while in use; "
                "restart the process to open the new one."
            )

    def translate_error(self, exc: BaseException) -> StreamStateError | None:
        if isinstance(exc, (pw.IntegrityError, pw.ProgrammingError)):
            return None
        text = str(exc).lower()
        if any(words in text for words in _SQLITE_FULL):
            return StorageFull(
                f"SQLite database {self.database} is full ({exc}); nothing of this write was kept. "
                "Free disk space (or run retention and purge), then retry."
            )
        if any(words in text for words in _SQLITE_CORRUPT):
            return DatabaseUnavailable(
                f"SQLite database {self.database} is damaged ({exc}): restore a backup, or run "
                "`stream-state integrity` to see what is wrong."
            )
        if any(words in text for words in _SQLITE_UNAVAILABLE):
            return DatabaseUnavailable(f"SQLite database {self.database} cannot be used: {exc}")
        return None


class StreamStatePostgresDatabase(_TranslatesDriverErrors, PooledPostgresqlDatabase):
    """Pooled PostgreSQL with driver errors turned into the package's errors."""

    def __init__(self, *args: Any, display_url: str = "", **kwargs: Any):
        self.display_url = display_url
        super().__init__(*args, **kwargs)

    def _connect(self) -> Any:
        try:
            return super()._connect()
        except Exception as exc:  # psycopg2.OperationalError and friends
            raise DatabaseUnavailable(f"cannot connect to {self.display_url}: {exc}".strip()) from exc

    def translate_error(self, exc: BaseException) -> StreamStateError | None:
        original = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
        if getattr(original, "pgcode", None) == "53100":  # disk_full
            return StorageFull(f"PostgreSQL at {self.display_url} is out of disk space: {original}")
        if isinstance(exc, (pw.OperationalError, pw.InterfaceError)) and self._connection_lost():
            return DatabaseUnavailable(
                f"lost the connection to {self.display_url} ({str(original).strip()}); "
                "the next call reconnects when the server is back"
            )
        return None

    def _connection_lost(self) -> bool:
        conn = self._state.conn
        if conn is None or not getattr(conn, "closed", 0):
            return False
        # Drop the dead connection now so this thread's next call takes a
        # fresh one from the pool instead of failing on it forever.
        if not self.in_transaction():
            try:
                self.close()
            except Exception:  # it is dead already
                self._state.reset()
        return True


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
    """
    db = connect_database(
        url,
        synchronous=synchronous,
        busy_timeout=busy_timeout,
        max_connections=max_connections,
        **connect_params,
    )
    try:
        ensure_schema(db, migrate=migrate, backup_before_migrate=backup_before_migrate)
    except BaseException:
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
    **connect_params: Any,
) -> pw.Database:
    """Connect to ``url`` with the package's settings, leaving the schema alone.

    For tools that inspect or migrate the schema themselves; everything else
    wants ``open_database``. The models are not bound.
    """
    url = resolve_url(url)
    _protect_sql_log()
    scheme = urlsplit(url).scheme.lower() if "://" in url else "sqlite"
    if scheme in _SQLITE_SCHEMES:
        db = _open_sqlite(url, synchronous=synchronous, busy_timeout=busy_timeout, **connect_params)
    elif scheme in _POSTGRES_SCHEMES:
        db = _open_postgres(url, max_connections=max_connections, **connect_params)
    else:
        raise ValidationError(
            "url", redact_uri(url), "unsupported scheme; use sqlite:///path.db or postgresql://host/dbname"
        )
    db.connect(reuse_if_open=True)
    return db


def sqlite_path(url: str) -> Path:
    """The file a SQLite URL (or bare path) names; ``ValidationError`` for in-memory or hosted URLs."""
    if "://" not in url:
        return Path(url)
    parts = urlsplit(url)
    # sqlite:///rel.db -> "rel.db"; sqlite:////abs.db -> "/abs.db"
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if parts.netloc:
        raise ValidationError(
            "url", url, "a SQLite URL has no host: use sqlite:///relative.db or sqlite:////absolute.db"
        )
    if not path or path == ":memory:":
        raise ValidationError(
            "url", url, "an in-memory database is not shared between threads; use a file path"
        )
    return Path(path)


def _open_sqlite(url: str, *, synchronous: str, busy_timeout: float, **connect_params: Any) -> pw.Database:
    path = sqlite_path(url)
    query = dict(parse_qsl(urlsplit(url).query)) if "://" in url else {}
    synchronous = query.pop("synchronous", synchronous)
    if query:
        raise ValidationError("url", url, f"unknown SQLite URL options: {', '.join(sorted(query))}")
    pragmas = sqlite_pragmas(synchronous)
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
        return
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot create SQLite database {path}: {exc.strerror}") from exc
    # The umask may only narrow the mode, but be explicit: a process with an
    # odd umask must still get exactly 0600. SQLite gives the -wal and -shm
    # files the database file's mode.
    os.fchmod(fd, 0o600)
    os.close(fd)


def _open_postgres(url: str, *, max_connections: int, **connect_params: Any) -> pw.Database:
    parts = urlsplit(url)
    params: dict[str, Any] = {k: v for k, v in parse_qsl(parts.query)}
    if parts.username:
        params["user"] = unquote(parts.username)
    if parts.password:
        params["password"] = unquote(parts.password)
    if parts.hostname:
        params["host"] = parts.hostname
    if parts.port:
        params["port"] = parts.port
    params.update(connect_params)
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ValidationError("url", redact_uri(url), "no database name; use postgresql://host/dbname")
    return StreamStatePostgresDatabase(
        database,
        display_url=redact_uri(url),
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
    applied = applied_migrations(db or database_proxy.obj)
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
    with db.atomic():  # SQLite: BEGIN IMMEDIATE takes the write lock at once
        if isinstance(db, pw.PostgresqlDatabase):
            db.execute_sql("SELECT pg_advisory_xact_lock(hashtext('stream_state.migrate'))")
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
    if backup_before_migrate and isinstance(db, pw.SqliteDatabase) and db.get_tables():
        backup_path = backup_sqlite(db, label=f"pre-{pending[0]}")
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
    db: pw.SqliteDatabase, dest: str | os.PathLike[str] | None = None, *, label: str = "backup"
) -> Path:
    """Copy a live SQLite database with the online backup API.

    Consistent even while other connections write (unlike copying the file
    while a WAL is live). The copy is created 0600 like the original.
    """
    source = Path(db.database)
    if dest is None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        dest = source.with_name(f"{source.name}.{label}.{stamp}.bak")
    dest = Path(dest)
    _create_private_file(dest)
    try:
        src = sqlite3.connect(str(source), timeout=30)
        try:
            dst = sqlite3.connect(str(dest))
            try:
                src.backup(dst, pages=1024)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise DatabaseUnavailable(f"backup of {source} to {dest} failed: {exc}") from exc
    return dest
