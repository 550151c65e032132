"""What differs between SQLite and PostgreSQL, declared once, and the database the models are bound to.

peewee puts what differs between databases in class attributes of each
database class (``param``, ``for_update``, ``returning_clause``); this module
does the same for what the package needs on top: ``SqliteDialect`` and
``PostgresDialect`` are mixed into the package's database classes (the
synchronous ones here, the asyncio ones in ``aio``), and everything else asks
``dialect(db)`` instead of testing ``isinstance(db, ...)``. ``dialect``
returns the database itself when the package opened it, and the members of
its family for a plain peewee database bound by hand (the models can be
bound to any peewee database; such a database just has no error translation
and no file checks).

The models are declared once against ``database_proxy`` and bound at run
time by ``open_database``, so the same classes serve SQLite and PostgreSQL
and importing the package opens nothing.

This is the bottom layer: it imports no model and no service.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, NoReturn
from urllib.parse import quote, urlsplit

import peewee as pw
from playhouse.pool import PooledPostgresqlDatabase

from .errors import DatabaseUnavailable, StorageFull, StreamStateError, ValidationError
from .pgwatch import Watchdog
from .pwtypes import M, exception_wrapper
from .redact import redact_uri

# peewee's own logger: it logs each statement at DEBUG (count_queries counts those lines).
_peewee_log = logging.getLogger("peewee")

log = logging.getLogger(__name__)

database_proxy = pw.DatabaseProxy()

# Rows per round trip when psycopg2 runs one statement for many rows (PostgresDialect.executemany).
PG_PAGE_SIZE = 1000

SQLITE_SCHEMES = frozenset({"sqlite", "sqlite+pool"})
POSTGRES_SCHEMES = frozenset({"postgres", "postgresql", "postgres+pool", "postgresql+pool"})


def url_backend(url: str) -> str:
    """``"sqlite"`` or ``"postgres"``: the backend a database URL (or a bare file path) names."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else "sqlite"
    if scheme in SQLITE_SCHEMES:
        return "sqlite"
    if scheme in POSTGRES_SCHEMES:
        return "postgres"
    raise ValidationError(
        "url", redact_uri(url), "unsupported scheme; use sqlite:///path.db or postgresql://host/dbname"
    )


# --- the dialects ---------------------------------------------------------------------------------


class Dialect:
    """The members every backend declares; see ``SqliteDialect`` and ``PostgresDialect``."""

    is_sqlite: ClassVar[bool]
    # The SQL function that returns the larger of its arguments.
    greatest: ClassVar[str]
    # Appended to a SELECT that must keep the rows it read from being changed
    # until the transaction ends ("" where transactions already hold the lock).
    share_lock: ClassVar[str]
    # Keyed tables without a rowid (SQLite's WITHOUT ROWID); see models.base.
    without_rowid: ClassVar[bool]
    # A primary key that never hands out an id twice needs AUTOINCREMENT.
    needs_autoincrement: ClassVar[bool]
    # Run at the start of the migration transaction to serialise migrating processes.
    migration_lock_sql: ClassVar[str | None]
    # Run in a transaction that may wait and run long (migrations): lifts the everyday timeouts.
    unbounded_transaction_sql: ClassVar[tuple[str, ...]] = ()
    # The database's "now" in epoch milliseconds, as SQL: session leases are
    # judged by it, never by a caller's clock (models/session.py).
    clock_ms_sql: ClassVar[str]
    # Every process that uses the database runs on this host, so a session
    # whose pid (and process start time) is gone is dead at once.
    judges_pids: ClassVar[bool]

    # The most rows ``rows_table`` spells in one statement (SQLite counts its parameters).
    max_table_rows: ClassVar[int]

    def index_hint(self, index: str) -> str:
        """A clause after a table name that makes the planner use ``index`` ("" where there is none)."""
        return ""

    def rows_table(self, columns: Sequence[tuple[str, str]], count: int, alias: str = "v") -> str:
        """A table of ``count`` rows passed as parameters, for one set-based statement over many rows.

        ``columns`` are (name, SQL type) pairs; the table is named ``alias``
        (``UPDATE t SET ... FROM <it> WHERE t.id = v.id``, ``INSERT ... SELECT
        ... FROM <it>``). Its parameters are ``rows_params(rows)``.
        """
        raise NotImplementedError

    def rows_params(self, rows: Sequence[Sequence[Any]], width: int) -> list[Any]:
        """The parameters of ``rows_table`` for ``rows`` (each ``width`` values, in column order)."""
        raise NotImplementedError

    def json_placeholder(self, placeholder: str) -> str:
        """The placeholder of a JSON value passed as compact text (``json_param``)."""
        return placeholder

    def json_param(self, field: pw.JSONField, value: object) -> object:
        """A JSON value as a plain driver parameter, for hand-written statements."""
        raise NotImplementedError

    def executemany(self, cursor: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run ``sql`` once per row on ``cursor``, in as few driver calls as the driver allows."""
        cursor.executemany(sql, rows)

    def checkpoint_passive(self) -> None:
        """Copy the WAL back into the database without waiting for anyone (SQLite; elsewhere nothing)."""

    def translate_error(self, exc: BaseException) -> StreamStateError | None:
        """The package's error for a driver error that means "cannot work right now", else None."""
        return None

    def verify_file(self) -> None:
        """Raise ``DatabaseUnavailable`` if the database file vanished or was replaced (SQLite only)."""


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


class SqliteDialect(Dialect):
    """SQLite's members; mixed into the synchronous and the asyncio SQLite database classes.

    ``verify_file`` and ``translate_error`` use the database's ``database``
    (the file path) and ``_identity`` (the file's (device, inode) when the
    first connection opened it).
    """

    database: Any
    _identity: tuple[int, int] | None = None

    is_sqlite = True
    greatest = "MAX"
    share_lock = ""  # transactions begin IMMEDIATE: they hold the write lock already
    without_rowid = True
    needs_autoincrement = True  # SQLite reuses the largest rowid after that row is deleted
    migration_lock_sql = None  # BEGIN IMMEDIATE takes the write lock at once
    # The one host's clock ('now' is fixed for the duration of a statement).
    clock_ms_sql = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    judges_pids = True  # a SQLite file is shared by the processes of one host

    max_table_rows = 500  # 500 rows of up to 60 columns stay below SQLite's 32,766 parameters

    def index_hint(self, index: str) -> str:
        return f' INDEXED BY "{index}"'

    def rows_table(self, columns: Sequence[tuple[str, str]], count: int, alias: str = "v") -> str:
        # VALUES names its columns column1, column2, ...: renamed by a SELECT around it.
        names = ", ".join(f'column{i} AS "{name}"' for i, (name, _type) in enumerate(columns, 1))
        row = "(" + ", ".join("?" * len(columns)) + ")"
        return f"(SELECT {names} FROM (VALUES {', '.join([row] * count)})) AS {alias}"

    def rows_params(self, rows: Sequence[Sequence[Any]], width: int) -> list[Any]:
        return [value for row in rows for value in row]

    def json_placeholder(self, placeholder: str) -> str:
        # json() stores the text as peewee's JSONField does.
        return f"json({placeholder})"

    def json_param(self, field: pw.JSONField, value: object) -> object:
        # The field's own ``db_value`` wraps the value in ``json(?)`` (an SQL
        # function, not a parameter); compact text is what that function stores.
        if value is None:
            return None
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    def checkpoint_passive(self) -> None:
        # A bulk job calls it between batches so that it pays for the WAL it
        # writes: otherwise the WAL passes the auto-checkpoint threshold on
        # some writer's commit, and that writer waits for the whole checkpoint.
        try:
            self.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[attr-defined]
        except pw.OperationalError as exc:
            # Only an optimisation: a statement still open on this connection
            # (a caller iterating a query) makes SQLite refuse it for now.
            log.debug("passive checkpoint skipped: %s", exc)

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


_LOST = "lost the connection to"  # how translate_error's lost connections begin


class PostgresDialect(Dialect):
    """PostgreSQL's members; mixed into the synchronous and the asyncio PostgreSQL database classes.

    ``translate_error`` uses the database's ``display_url`` and
    ``_connection_lost()``, which each driver answers in its own way.
    """

    display_url: str = ""

    is_sqlite = False
    greatest = "GREATEST"
    share_lock = " FOR SHARE"
    without_rowid = False
    needs_autoincrement = False  # sequences never go back
    migration_lock_sql = "SELECT pg_advisory_xact_lock(hashtext('stream_state.migrate'))"
    unbounded_transaction_sql = (
        "SET LOCAL statement_timeout = 0",
        "SET LOCAL lock_timeout = 0",
        "SET LOCAL idle_in_transaction_session_timeout = 0",
    )
    # clock_timestamp(), not now(): the time the statement runs, not when its transaction began.
    clock_ms_sql = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
    judges_pids = False  # nodes on other hosts (or in other pid namespaces) share it
    max_table_rows = 100_000  # one array per column, whatever the rows

    def rows_table(self, columns: Sequence[tuple[str, str]], count: int, alias: str = "v") -> str:
        # One array parameter per column: the statement's text is the same
        # whatever the number of rows (one plan, asyncpg's statement cache).
        arrays = ", ".join(f"%s::{sql_type}[]" for _name, sql_type in columns)
        names = ", ".join(f'"{name}"' for name, _type in columns)
        return f"unnest({arrays}) AS {alias}({names})"

    def rows_params(self, rows: Sequence[Sequence[Any]], width: int) -> list[Any]:
        return [[row[i] for row in rows] for i in range(width)]

    def json_param(self, field: pw.JSONField, value: object) -> object:
        # The field's wrapper is already a driver adapter (jsonb).
        if value is None:
            return None
        return field.db_value(value)

    def executemany(self, cursor: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        # psycopg2's executemany is a round trip per row; its execute_batch
        # sends the very same statements, PG_PAGE_SIZE of them per round trip.
        try:
            from psycopg2.extensions import cursor as psycopg2_cursor
            from psycopg2.extras import execute_batch
        except ImportError:  # another driver: its own executemany
            psycopg2_cursor = None
        if psycopg2_cursor is not None and isinstance(cursor, psycopg2_cursor):
            execute_batch(cursor, sql, rows, page_size=PG_PAGE_SIZE)
        else:
            cursor.executemany(sql, rows)

    def translate_error(self, exc: BaseException) -> StreamStateError | None:
        original = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
        cause = exc.__cause__ or exc.__context__
        if original is exc and isinstance(cause, Exception):
            original = cause  # peewee 4 keeps the driver's error as the cause
        # pgcode: psycopg2; sqlstate: asyncpg.
        code = getattr(original, "pgcode", None) or getattr(original, "sqlstate", None)
        if code == "53100":  # disk_full
            return StorageFull(f"PostgreSQL at {self.display_url} is out of disk space: {original}")
        if code == "57014":  # query_canceled: statement_timeout (the package cancels nothing else)
            return DatabaseUnavailable(
                f"PostgreSQL at {self.display_url} did not finish the statement within its "
                f"statement_timeout ({str(original).strip()}); nothing of it was kept"
            )
        if code == "55P03":  # lock_not_available: lock_timeout
            return DatabaseUnavailable(
                f"PostgreSQL at {self.display_url}: waited lock_timeout for a lock another transaction "
                f"holds ({str(original).strip()}); nothing of this call was kept, retry"
            )
        if isinstance(exc, (pw.OperationalError, pw.InterfaceError)) and self._connection_lost():
            found = _loss_being_handled(exc) if isinstance(exc, pw.InterfaceError) else None
            if found is not None:
                # The rollback after the loss found the connection closed ("already
                # closed": an InterfaceError, where a new loss is an OperationalError):
                # the loss itself is what the caller needs to hear.
                return DatabaseUnavailable(str(found))
            # The server says nothing the client reads when it ends an idle
            # transaction: its socket just closes, as in an outage.
            idle = (
                " (inside a transaction: the server also ends one whose client sent nothing for "
                "idle_in_transaction_session_timeout)"
                if self._lost_inside_transaction()
                else ""
            )
            return DatabaseUnavailable(
                f"{_LOST} {self.display_url} ({str(original).strip()}){idle}; "
                "the next call reconnects when the server is back"
            )
        return None

    def _lost_inside_transaction(self) -> bool:
        in_transaction = getattr(self, "in_transaction", None)
        return bool(in_transaction()) if callable(in_transaction) else False

    def _connection_lost(self) -> bool:
        return False


def _loss_being_handled(exc: BaseException) -> DatabaseUnavailable | None:
    """The lost connection whose handling (a rollback) raised ``exc``, if any."""
    seen = exc.__context__
    for _ in range(8):  # a short chain: driver error, peewee's, ours
        if seen is None:
            return None
        if isinstance(seen, DatabaseUnavailable) and str(seen).startswith(_LOST):
            return seen
        seen = seen.__context__
    return None


class _PlainDatabase:
    """A peewee database the package did not open, bound by hand: its family's members, on it."""

    def __init__(self, db: pw.Database):
        self._db = db
        self.database = db.database
        self.display_url = str(db.database)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def verify_file(self) -> None:
        pass  # the package never saw it open

    def translate_error(self, exc: BaseException) -> StreamStateError | None:
        return None


class _PlainSqlite(_PlainDatabase, SqliteDialect):
    pass


class _PlainPostgres(_PlainDatabase, PostgresDialect):
    pass


def dialect(db: pw.Database | None = None) -> Dialect:
    """The backend members of ``db`` (default: the database the models are bound to).

    The package's own databases are their own dialect; a plain peewee
    database gets the members of its family.
    """
    if db is None or (isinstance(db, pw.DatabaseProxy) and db.obj is None):
        db = current_database()  # raises: nothing is bound
    elif isinstance(db, pw.DatabaseProxy):
        db = db.obj
    if isinstance(db, Dialect):
        return db
    if isinstance(db, pw.SqliteDatabase):
        return _PlainSqlite(db)
    return _PlainPostgres(db)


# --- the database the models are bound to ---------------------------------------------------------


def current_database() -> pw.Database:
    """The database ``open_database`` bound the models to; ``DatabaseUnavailable`` if none is."""
    if database_proxy.obj is None:
        raise DatabaseUnavailable("no database is open; call stream_state.open_database() first")
    return database_proxy.obj


def locked(query: pw.ModelSelect[M]) -> pw.ModelSelect[M]:
    """``SELECT ... FOR UPDATE`` where the backend has it.

    PostgreSQL needs the row lock for read-then-write transactions; SQLite has
    no FOR UPDATE and needs none, because its transactions begin IMMEDIATE
    and so already hold the database's write lock.
    """
    return query.for_update() if query.model._meta.database.for_update else query


def check_database_file(db: pw.Database) -> None:
    """Raise ``DatabaseUnavailable`` if ``db``'s SQLite file vanished or was replaced.

    Every database this package opens can tell; a plain peewee database bound
    by hand cannot, and is let through.
    """
    dialect(db).verify_file()


# --- the synchronous databases ----------------------------------------------------------------------


class _TranslatesDriverErrors:
    """Turn the driver's "cannot work right now" errors into the package's own.

    Integrity errors and programming errors pass through unchanged (the
    domain methods turn those into precise errors themselves); a full disk
    becomes ``StorageFull`` and a lost, read-only or damaged database
    ``DatabaseUnavailable``, each with a message that says what to do (the
    dialect's ``translate_error``).
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

    def executemany(self, cursor: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        # A cursor's executemany bypasses execute_sql: its errors are turned
        # into peewee's here, then into the package's like every other.
        try:
            with exception_wrapper:
                super().executemany(cursor, sql, rows)  # type: ignore[misc]
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
        translated = self.translate_error(exc)  # type: ignore[attr-defined]
        if translated is None:
            raise exc
        raise translated from exc


# PRAGMA auto_vacuum reads back a number.
_AUTO_VACUUM_MODES = {"NONE": 0, "FULL": 1, "INCREMENTAL": 2}


class StreamStateSqliteDatabase(_TranslatesDriverErrors, SqliteDialect, pw.SqliteDatabase):
    """SQLite with driver errors turned into the package's errors.

    Connections open the file read-write without creating it: a database
    file deleted under a running process must be an error, not a fresh empty
    database that silently takes the next writes.
    """

    _identity: tuple[int, int] | None = None
    # pw.SqliteDatabase's own, set in its __init__, missing from peewee's types.
    _timeout: float
    _pragmas: list[tuple[str, Any]]
    _add_conn_hooks: Callable[[sqlite3.Connection], None]

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        # peewee's Database.execute_sql and _execute_cursor and the error
        # translation above, in one frame: every statement passes here, a
        # manager sends a few per stream per second, and the frames cost as
        # much Python as the hot path's own work. Same log line (which
        # count_queries reads), same cursor, same errors; peewee's query
        # hooks, when any are set, keep peewee's own path.
        if self.query_hooks:
            return super().execute_sql(sql, params)
        if _peewee_log.isEnabledFor(logging.DEBUG):
            _peewee_log.debug((sql, params))
        try:
            with exception_wrapper:
                cursor = self.cursor()
                cursor.execute(sql, params or ())
        except pw.PeeweeException as exc:
            self._raise_translated(exc)
        return cursor

    def _set_pragmas(self, conn: sqlite3.Connection) -> None:
        # Setting auto_vacuum, even to the value it has, waits for the write
        # lock: a new thread's (or the operator's CLI's) first connection
        # would wait for another connection's write transaction to end, and
        # fail with "database is locked" after the busy timeout. It only
        # matters before the first table is created, so it is set only when
        # the file does not have it yet.
        cursor = conn.cursor()
        try:
            for pragma, value in self._pragmas:
                if pragma == "auto_vacuum":
                    wanted = _AUTO_VACUUM_MODES.get(str(value).upper(), value)
                    if cursor.execute("PRAGMA auto_vacuum").fetchone()[0] == wanted:
                        continue
                cursor.execute(f"PRAGMA {pragma} = {value};")
        finally:
            cursor.close()

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


class StreamStatePostgresDatabase(_TranslatesDriverErrors, PostgresDialect, PooledPostgresqlDatabase):
    """Pooled PostgreSQL with driver errors turned into the package's errors."""

    def __init__(self, *args: Any, display_url: str = "", watchdog: Watchdog | None = None, **kwargs: Any):
        self.display_url = display_url
        # Bounds every statement's wait on a server that stopped answering (pgwatch).
        self.watchdog = watchdog
        super().__init__(*args, **kwargs)

    def _connect(self) -> Any:
        try:
            return super()._connect()
        except Exception as exc:  # psycopg2.OperationalError and friends
            raise DatabaseUnavailable(f"cannot connect to {self.display_url}: {exc}".strip()) from exc

    @contextlib.contextmanager
    def _watched(self) -> Iterator[None]:
        if self.watchdog is None:
            yield
            return
        if self.is_closed():
            self.connect()  # what the statement would do first; bounded by connect_timeout
        with self.watchdog.watch(self._state.conn):
            yield

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        with self._watched():
            return super().execute_sql(sql, params)

    def begin(self, *args: Any, **kwargs: Any) -> None:
        with self._watched():
            super().begin(*args, **kwargs)

    def commit(self, *args: Any, **kwargs: Any) -> None:
        with self._watched():
            super().commit(*args, **kwargs)

    def rollback(self, *args: Any, **kwargs: Any) -> None:
        if self.is_closed():
            super().rollback(*args, **kwargs)
            return
        with self._watched():
            super().rollback(*args, **kwargs)

    def executemany(self, cursor: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._watched():
            super().executemany(cursor, sql, rows)

    def close_all(self) -> None:
        if self.watchdog is not None:
            self.watchdog.close()
        super().close_all()

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
