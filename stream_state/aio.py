"""The asyncio face of stream_state: database threads on SQLite, ``playhouse.pwasyncio`` on PostgreSQL.

A stream manager that runs on an event loop must never block it on a
database call: every stream it drives would stall. This module gives it the
same package, awaitable::

    from stream_state import aio

    db = await aio.open_database_async("sqlite:////var/lib/nvr/state.db")
    state = await aio.restore()
    cam = await aio.register("cam-1", "rtsp://user:pass@10.0.0.1/stream1", recording=True)
    segment = await aio.begin_segment(cam, "/rec/cam-1/00000000.mp4")
    await aio.complete_segment(segment, size_bytes=1_234_567)
    await aio.record_many([("fps", 15.0, cam)])
    await aio.close_database_async()

Nothing here re-implements a rule. Each coroutine runs the very same
synchronous domain method (``Stream.begin_segment``, ``MetricSample.record_many``,
``Restorer.restore``...), so the validation, the transactions, the events
written and the errors raised are exactly those of the synchronous API.
Where the method runs depends on the backend:

* **SQLite**: the whole call (the method, all its statements, its commit)
  is handed in one hop to a database thread that owns a plain sqlite3
  connection (``stream_state.dbthreads``), and the loop awaits one future.
  Writes go to one writer thread, in the order they come (SQLite has one
  writer at a time anyway); calls that only read go to up to
  ``pool_size - 1`` reader threads, which WAL lets read while the writer
  writes. The loop's thread does no database work at all.
* **PostgreSQL**: the method runs on pwasyncio's greenlet bridge: its code
  runs on the loop's thread, and wherever it would wait for the database it
  hands the statement to asyncpg and yields to the loop. Each call takes a
  pooled connection and gives it back when it returns, so a hundred stream
  tasks share a pool of ``pool_size`` connections.

``async with aio.open_database_async(url) as db:`` closes the threads or
the pool at the end of the block.

Things to know:

* Anything else of the package runs the same way: ``await aio.run(fn,
  *args)`` for a function that may write (maintenance, ``recording.archive``),
  ``await aio.read(fn, *args)`` for one that only reads (the ``history``
  queries), ``await aio.fetch(query)`` for the rows of a query, or
  ``await aio.fetch(history.recordings, "cam-1", since, until)`` for a
  function that builds one.
* Inside ``async with aio.atomic():`` the calls of that task share one
  connection and one transaction, across whatever else the task awaits in
  between. On SQLite the block holds the writer thread: other tasks'
  writes wait until it ends (bounded by ``acquire_timeout``), their reads go
  on and see what was committed before it. Keep such blocks short.
* On SQLite, writers in other processes still wait on the busy timeout,
  and every write transaction still begins ``IMMEDIATE``. A call whose task
  is cancelled (``asyncio.wait_for`` timing out) returns at once; on its
  thread it stops before its next statement (a statement waiting for
  another process's lock is interrupted) and its transaction rolls back.
* On SQLite, ``open_database_async(url, coalesce=True)`` writes the
  ``checkpoint``, ``record_health``, ``begin_segment``, ``complete_segment``
  and ``record_many`` calls that several tasks make at about the same time
  as one ``Tick`` (one transaction, stream_state.coalesce): each call is
  validated at once, returns once committed, and hears only its own
  refusal; a call cancelled before its tick starts never runs, one
  cancelled after may commit with the others of its tick. It pays off with
  many tasks (a task per stream, 50 streams: 1.10-1.19x the sync loop's CPU
  instead of 1.58-1.75x) and not with few (4 tasks, each awaiting its calls
  in turn: 1.55-2.05x against 1.64-1.91x), so it is not the default.
  PostgreSQL ignores it.
* The loop never waits for the database. On PostgreSQL the Python part of
  a call (validation, building SQL, reading rows) runs on the loop's
  thread, as any coroutine's code does: well under a millisecond for a
  segment or health call, more for a big metric batch or a history query
  over many rows. On SQLite it runs on the database thread (and shares the
  GIL with the loop). Maintenance that pauses between batches
  (``pause_seconds``) sleeps on the loop's thread on PostgreSQL: pass
  ``pause_seconds=0`` from here.
* Rows returned by queries load foreign keys lazily; in async code that
  raises ``MissingGreenletBridge`` (the loop's thread has no connection).
  Join what you need in the query, or read ``recording.stream_id``. Objects
  returned by the coroutines here carry what they refer to (a new segment
  has its ``stream`` set).
* The models are bound to one database per process: while the async
  database is open, call the models through this module, not from threads.

Needs the ``async`` extra: ``pip install 'stream_state[async]'`` (greenlet,
and asyncpg for PostgreSQL). ``import stream_state`` works without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import logging
import os
import shlex
import warnings
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import peewee as pw

from . import coalesce, dbthreads
from .errors import DatabaseUnavailable, OwnershipLost, StreamStateError, ValidationError
from .pgwatch import GRACE

ASYNC_EXTRA_HINT = "pip install 'stream_state[async]'"


class AsyncSupportMissing(StreamStateError, ImportError):
    """A package the asyncio face needs (greenlet, or asyncpg for PostgreSQL) is not installed."""


try:
    import greenlet  # noqa: F401  (pwasyncio needs it; say so clearly if it is missing)
    from playhouse import pwasyncio
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise AsyncSupportMissing(
        f"stream_state.aio needs greenlet ({exc}); install the async extra: {ASYNC_EXTRA_HINT}"
    ) from exc

from .backends import (  # noqa: E402  (after the dependency check, on purpose)
    PostgresDialect,
    StreamStatePostgresDatabase,
    StreamStateSqliteDatabase,
    _TranslatesDriverErrors,
    url_backend,
)
from .database import connect_database, ensure_schema, resolve_url  # noqa: E402
from .models import Event, MetricSample, Recording, Stream, database_proxy  # noqa: E402
from .models.metric import Sample  # noqa: E402
from .models.session import Session, acting_session, current_session, registered_session  # noqa: E402
from .probe import Probe  # noqa: E402
from .probe import probe as default_probe  # noqa: E402
from .pwtypes import exception_wrapper  # noqa: E402
from .restore import RestoredState, Restorer, ShutdownReport  # noqa: E402
from .states import HealthState, Severity, StreamStatus  # noqa: E402
from .tick import Tick, TickReport  # noqa: E402

log = logging.getLogger(__name__)

MissingGreenletBridge = pwasyncio.MissingGreenletBridge

T = TypeVar("T")

__all__ = [
    "AsyncPostgresStateDatabase",
    "AsyncSqliteStateDatabase",
    "AsyncStateDatabase",
    "AsyncSupportMissing",
    "MissingGreenletBridge",
    "archive",
    "atomic",
    "begin_segment",
    "by_name",
    "checkpoint",
    "close_database_async",
    "commit_tick",
    "complete_segment",
    "count",
    "current_database",
    "delete_file",
    "fail",
    "fetch",
    "first",
    "keep_alive",
    "open_database_async",
    "read",
    "record_event",
    "record_health",
    "record_many",
    "record_metric",
    "register",
    "remove",
    "restore",
    "run",
    "set_desired",
    "set_status",
    "shutdown",
    "tick",
    "update_config",
]


# --- the async databases ---------------------------------------------------------------


class _BridgeCursor(pwasyncio.DummyCursor):
    """pwasyncio's cursor plus ``executemany``, which the metric batch path hands its rows to."""

    rowcount = -1

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        # The rows changed, where the driver tells (sqlite3 sums them): a tick checks them.
        changed = pwasyncio.await_(self.conn.executemany(sql, rows))
        self.rowcount = changed if isinstance(changed, int) else -1


class _PostgresConnection(pwasyncio.AsyncPostgresqlConnection):
    """One round trip per statement, through asyncpg's statement cache.

    pwasyncio prepares every statement afresh (a Parse/Describe round trip,
    then Bind/Execute); asyncpg's own execute path parses a statement once
    per connection and reports the command status that peewee's rowcount
    needs.
    """

    cancelled = False

    async def _execute(self, sql: str, params: Any = None) -> pwasyncio.CursorAdapter:
        try:
            return await self._execute_once(sql, params)
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def settle(self) -> None:
        """After a cancellation: roll back a transaction the cancelled call left open."""
        # asyncpg finishes (or cancels on the server) the interrupted query first.
        if self.conn is not None and not self.conn.is_closed() and self.conn.is_in_transaction():
            await self.conn.execute("ROLLBACK")
            log.warning("rolled back the transaction a cancelled call left open")
        self.cancelled = False

    async def _execute_once(self, sql: str, params: Any = None) -> pwasyncio.CursorAdapter:
        if not _ASYNCPG_STATUS_EXECUTE:  # an asyncpg whose internals moved: pwasyncio's way
            return await super()._execute(sql, params)
        if params:
            sql = self._translate_placeholders(sql)
        records, status, _ = await self.conn._execute(sql, params or (), 0, None, return_status=True)
        description = [(key,) for key in records[0].keys()] if records else []  # noqa: SIM118 (a Record)
        tail = (status.decode() if isinstance(status, bytes) else str(status or "")).rsplit(" ", 1)
        rowcount = int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else len(records)
        return pwasyncio.CursorAdapter(records, rowcount=rowcount, description=description)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._acquire_lock()
        try:
            # asyncpg pipelines the whole batch in one round trip.
            rows = list(rows)
            if rows and any(isinstance(value, _JSON_NODES) for value in rows[0]):
                # A tick's events carry JSONField nodes (see aexecute_sql): asyncpg wants text.
                rows = [[_json_text(v) if isinstance(v, _JSON_NODES) else v for v in row] for row in rows]
            await self.conn.executemany(self._translate_placeholders(sql), rows)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self._lock.release()


def _asyncpg_status_execute() -> bool:
    """Whether asyncpg's internal ``Connection._execute`` takes ``return_status`` (0.2x to 0.3x do)."""
    try:
        parameters = inspect.signature(pwasyncio.asyncpg.Connection._execute).parameters
    except (AttributeError, TypeError, ValueError):
        return False
    return "return_status" in parameters


_ASYNCPG_STATUS_EXECUTE = pwasyncio.asyncpg is not None and _asyncpg_status_execute()


class AsyncStateDatabase:
    """An async database of this module: what its coroutines need of one.

    ``await db.call(fn, *args)`` runs a synchronous function of the package
    without blocking the loop; ``db.aatomic()`` is ``aio.atomic()``;
    ``await db.close_pool()`` ends its connections. SQLite runs calls on
    database threads (``AsyncSqliteStateDatabase``), PostgreSQL on
    pwasyncio's greenlet bridge (``AsyncPostgresStateDatabase``).
    """

    display_url: str = ""
    # Only SQLite serialises writers in the loop (it has one writer anyway).
    serialise_writes: bool = False
    # The process's session is renewed by a task on the loop (``keep_alive``
    # below), never by a thread: on PostgreSQL a thread cannot use the
    # greenlet bridge, and on SQLite a thread would write past the writer queue.
    session_keep_alive = "task"

    if TYPE_CHECKING:  # each database class has its own (the PostgreSQL one's come from pwasyncio too)

        def call(
            self, fn: Callable[..., T], *args: Any, _write: bool = True, **kwargs: Any
        ) -> Awaitable[T]: ...

        def aatomic(self) -> contextlib.AbstractAsyncContextManager[None]: ...

        async def close_pool(self) -> None: ...


@dataclass
class _Threads:
    """The threads of an ``AsyncSqliteStateDatabase``: one writer, and readers (if the pool allows)."""

    writer: dbthreads.Workers
    readers: dbthreads.Workers | None

    def close(self) -> None:
        self.writer.close()
        if self.readers is not None:
            self.readers.close()

    def wait_closed(self) -> None:
        self.writer.wait_closed()
        if self.readers is not None:
            self.readers.wait_closed()


# Statements a cancelled call may still run: they end its transaction.
_TRANSACTION_END = ("ROLLBACK", "RELEASE", "COMMIT", "rollback", "release", "commit")


class AsyncSqliteStateDatabase(AsyncStateDatabase, StreamStateSqliteDatabase):
    """SQLite for asyncio: each call runs whole on a database thread with a plain sqlite3 connection.

    The synchronous database of the package (same pragmas, IMMEDIATE write
    transactions, errors, file checks), whose connections live on threads
    of its own: one writer thread (SQLite has one writer at a time), and up
    to ``pool_size - 1`` reader threads for calls that only read (WAL lets
    them read while the writer writes). A call is one hand-off to a thread
    and one future back, however many statements it runs. The loop's
    thread has no connection: a lazy foreign key read there raises
    ``MissingGreenletBridge`` instead of blocking the loop.
    """

    serialise_writes = True

    def __init__(
        self,
        database: str,
        *,
        pool_size: int = 10,
        acquire_timeout: float | None = None,
        coalesce_calls: bool = False,
        **kwargs: Any,
    ):
        super().__init__(database, **kwargs)
        self.display_url = str(database)
        self._pool_size = pool_size
        self._acquire_timeout = acquire_timeout
        self._pool: _Threads | None = None
        # Calls cancelled while they ran on a thread, until they end there.
        self._settling: set[dbthreads.Job] = set()
        # Held by a task inside ``aio.atomic()`` across its awaits: other
        # tasks' writes wait for it; plain calls go straight to the writer
        # thread, which runs them in the order they came.
        self._writer = asyncio.Lock()
        self._writer_task: asyncio.Task[Any] | None = None
        # open_database_async(coalesce=True): the single calls a Tick takes join one shared tick.
        self._coalescer: coalesce.Coalescer | None = coalesce.Coalescer(self) if coalesce_calls else None

    # --- the threads and their connections ---

    def _threads(self) -> _Threads:
        pool = self._pool
        if pool is None or pool.writer.closed:
            name = f"stream_state-sqlite-{id(self):x}"
            readers = self._pool_size - 1
            pool = self._pool = _Threads(
                dbthreads.Workers(f"{name}-writer", 1, self._close_thread_connection),
                dbthreads.Workers(f"{name}-reader", readers, self._close_thread_connection)
                if readers > 0
                else None,
            )
        return pool

    def _connect(self) -> Any:
        worker = dbthreads.current_worker()
        if worker is None:
            raise MissingGreenletBridge(
                f"SQLite database {self.database} serves asyncio: its connections live on its own "
                "threads. Call through stream_state.aio (aio.read, aio.fetch), and join what a query's "
                "rows refer to instead of loading a foreign key lazily (or read its *_id)."
            )
        conn = super()._connect()
        # Lets a cancelled call abort a statement that waits for another process's lock.
        worker.interrupt = conn.interrupt
        return conn

    def _close_thread_connection(self) -> None:
        """At a thread's end: close its connection (rolling back anything left open)."""
        # peewee's connection state, one per thread.
        state = self._state  # type: ignore[attr-defined]
        if state.closed:
            return
        conn = state.conn
        state.reset()
        conn.close()

    # --- statements: a cancelled call stops before its next one ---

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        job = dbthreads.current_job()
        if job is not None and job.cancelled and not sql.lstrip().startswith(_TRANSACTION_END):
            job.check()
        try:
            return super().execute_sql(sql, params)
        except pw.PeeweeException as exc:
            if job is not None and job.cancelled and not sql.lstrip().startswith(_TRANSACTION_END):
                raise dbthreads.CallCancelled("interrupted: the awaiting task was cancelled") from exc
            raise

    def begin(self, *args: Any, **kwargs: Any) -> None:
        job = dbthreads.current_job()
        if job is not None:
            job.check()
        try:
            super().begin(*args, **kwargs)
        except BaseException as exc:
            self._end_stray_transaction()
            if isinstance(exc, pw.PeeweeException) and job is not None and job.cancelled:
                raise dbthreads.CallCancelled("interrupted: the awaiting task was cancelled") from exc
            raise

    def _end_stray_transaction(self) -> None:
        """Roll back a transaction SQLite opened for a ``begin()`` that then failed (interrupted, say).

        Peewee enters no ``atomic()`` block whose ``begin()`` raised, so
        nothing else would end it: the thread's connection would take its
        next call into that transaction, holding the write lock meanwhile.
        """
        conn = self._state.conn  # type: ignore[attr-defined]
        if conn is None or not getattr(conn, "in_transaction", False) or self.transaction_depth() > 0:
            return
        try:
            conn.rollback()
        except Exception:  # a connection that cannot roll back cannot be trusted: close it
            log.warning("could not roll back after a failed BEGIN; closing the connection", exc_info=True)
            with contextlib.suppress(Exception):
                self.close()

    def executemany(self, cursor: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        job = dbthreads.current_job()
        if job is not None:
            job.check()
        try:
            super().executemany(cursor, sql, rows)
        except pw.PeeweeException as exc:
            if job is not None and job.cancelled:
                raise dbthreads.CallCancelled("interrupted: the awaiting task was cancelled") from exc
            raise

    # --- calls ---

    def call(self, fn: Callable[..., T], *args: Any, _write: bool = True, **kwargs: Any) -> Awaitable[T]:
        """Run the synchronous ``fn(*args, **kwargs)`` whole on a database thread; await its result.

        Writes (and every call of a task inside ``atomic()``) go to the
        writer thread, in the order they come; a write waits only while
        another task's ``atomic()`` block holds the writer. Reads go to a
        reader thread. Not a coroutine: the usual case hands back the
        call's future itself (every call pays for each layer it passes).
        """
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool is None or pool.writer.closed:
            pool = self._threads()
        task = asyncio.current_task(loop)
        if task is not None and task is self._writer_task:
            workers = pool.writer
        elif _write or pool.readers is None:
            if self._writer.locked():
                return self._call_after_writer(fn, args, kwargs)
            workers = pool.writer
        else:
            workers = pool.readers
        return self._submit(loop, workers, fn, args, kwargs)

    async def _call_after_writer(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        await self._wait_for_writer()
        # No await from here on: the call is queued before any other task runs.
        writer = self._threads().writer
        return await self._submit(asyncio.get_running_loop(), writer, fn, args, kwargs)

    def _submit(
        self,
        loop: asyncio.AbstractEventLoop,
        workers: dbthreads.Workers,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        cancellable: bool = True,
    ) -> asyncio.Future[Any]:
        job = dbthreads.Job(fn, args, kwargs, loop, cancellable=cancellable, settling=self._settling)
        workers.submit(job, loop)
        return job.future

    async def _acquire_writer(self) -> None:
        """Take the writer once no other task's ``atomic()`` block holds it; at most acquire_timeout."""
        timeout = self._acquire_timeout
        try:
            async with asyncio.timeout(timeout):
                await self._writer.acquire()
        except TimeoutError as exc:
            raise DatabaseUnavailable(
                f"SQLite database {self.display_url}: another task's aio.atomic() block held the writer "
                f"for more than {timeout} s; keep atomic blocks short or raise acquire_timeout"
            ) from exc

    async def _wait_for_writer(self) -> None:
        """Wait while another task's ``atomic()`` block holds the writer (bounded by acquire_timeout)."""
        await self._acquire_writer()
        # Handed on at once: the call is queued on the writer thread before
        # any other task runs, so it comes before the next block's BEGIN.
        self._writer.release()

    @contextlib.asynccontextmanager
    async def aatomic(self) -> AsyncIterator[None]:
        """One transaction around several calls of this task (nested blocks are savepoints).

        The task holds the writer for the whole block, across whatever else
        it awaits: its calls (reads too, which must see its writes) run on
        the writer thread inside the transaction, other tasks' writes wait,
        other tasks' reads go on in reader threads and see what was
        committed before. The block's end (commit, or rollback if it
        raised) runs even if the task is cancelled meanwhile.
        """
        task = asyncio.current_task()
        if task is not None and task is self._writer_task:  # nested: a savepoint on the same thread
            async with self._block():
                yield
            return
        await self._acquire_writer()
        self._writer_task = task
        try:
            async with self._block():
                yield
        finally:
            self._writer_task = None
            self._writer.release()

    @contextlib.asynccontextmanager
    async def _block(self) -> AsyncIterator[None]:
        writer = self._threads().writer
        block = self.atomic()
        entered: list[bool] = []

        def enter() -> None:
            block.__enter__()
            entered.append(True)

        def end(exc_type: Any, exc: Any, tb: Any) -> None:
            if entered:  # a BEGIN that never ran (refused, or cancelled before it) has nothing to end
                block.__exit__(exc_type, exc, tb)

        loop = asyncio.get_running_loop()
        try:
            await self._submit(loop, writer, enter, (), {})
        except BaseException as exc:
            # Cancelled while the BEGIN ran: it may have begun, and nobody
            # would end it. Ended right behind it (the writer runs in order).
            undo = self._submit(loop, writer, end, (type(exc), exc, None), {}, cancellable=False)
            undo.add_done_callback(_retrieve)
            raise
        try:
            yield
        except BaseException as exc:
            await self._submit(loop, writer, end, (type(exc), exc, exc.__traceback__), {}, cancellable=False)
            raise
        else:
            await self._submit(loop, writer, end, (None, None, None), {}, cancellable=False)

    async def close_pool(self) -> None:
        """End the threads once their queued calls ran; each closes its connection."""
        if self._coalescer is not None:
            # Calls gathered but not yet handed to the writer are queued calls too.
            await self._coalescer.drain()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.close()
        await asyncio.get_running_loop().run_in_executor(None, pool.wait_closed)
        self._settling.clear()


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of a job nobody awaits as seen (asyncio would log it otherwise)."""
    if not future.cancelled():
        future.exception()


class _BridgedDatabase(AsyncStateDatabase, _TranslatesDriverErrors):
    """What the PostgreSQL async database adds to pwasyncio's: the package's errors, pooled calls.

    Calls run on pwasyncio's greenlet bridge: the method's code runs on the
    loop's thread, and each statement is awaited on asyncpg.
    """

    def _setup_state(self) -> None:
        self._settling: set[asyncio.Future[None]] = set()

    def cursor(self, named_cursor: Any = None) -> _BridgeCursor:
        return _BridgeCursor(pwasyncio.await_(self.aconnect()))  # type: ignore[attr-defined]

    async def _acquire_conn_async(self) -> Any:
        # pwasyncio's version wraps both steps in asyncio.wait_for, which on
        # Python 3.11 starts a task each time; this runs on every call.
        timeout = self._acquire_timeout  # type: ignore[attr-defined]
        try:
            async with asyncio.timeout(timeout):
                pool = self._pool or await self._ensure_pool()  # type: ignore[attr-defined]
                with exception_wrapper:
                    conn = await self._pool_acquire(pool)  # type: ignore[attr-defined]
        except TimeoutError as exc:
            raise DatabaseUnavailable(
                f"no connection to {self.display_url} became free within {timeout} s "
                f"(pool_size={self._pool_size}); raise pool_size or acquire_timeout"  # type: ignore[attr-defined]
            ) from exc
        except StreamStateError:
            raise
        except Exception as exc:
            raise DatabaseUnavailable(f"cannot connect to {self.display_url}: {exc}".strip()) from exc
        conn._pool = pool  # pwasyncio checks it on release
        return conn

    async def call(self, fn: Callable[..., T], *args: Any, _write: bool = True, **kwargs: Any) -> T:
        """Run the synchronous ``fn(*args, **kwargs)`` on the greenlet bridge, then free the connection.

        The connection goes back to the pool unless the calling task is
        inside ``atomic()``: pwasyncio ties a connection to a task until the
        task ends, which would let a few long-lived stream tasks hold every
        connection of the pool.
        """
        try:
            return await self.run(fn, *args, **kwargs)  # type: ignore[attr-defined]
        finally:
            await self._release_if_idle()

    async def _release_conn(self, conn: Any) -> None:
        """Give ``conn`` back to the pool; after a cancellation, only once it is clean.

        A call cancelled mid-statement (``asyncio.wait_for`` timing out) may
        leave the driver finishing a ``BEGIN`` that peewee never saw succeed:
        pooled as it is, the connection would fail its next call with
        "there is already a transaction in progress". The settling runs as a task of its own: the cancelled
        call returns at once (the statement may wait out the busy timeout
        first, and a cancellation must not), a second cancellation cannot
        stop it halfway, and the connection rejoins the pool when it is clean.
        """
        if not getattr(conn, "cancelled", False):
            await super()._release_conn(conn)  # type: ignore[misc]
            return
        task = asyncio.ensure_future(self._settle_and_release(conn))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def close_pool(self) -> None:
        while self._settling:  # connections still being cleaned after a cancellation
            await asyncio.gather(*list(self._settling), return_exceptions=True)
        await super().close_pool()

    async def _settle_and_release(self, conn: Any) -> None:
        try:
            await conn.settle()
        except Exception:
            log.warning("could not clean a connection after a cancelled call; closing it", exc_info=True)
            with contextlib.suppress(Exception):
                await conn.close()
            conn.cancelled = False
        await super()._release_conn(conn)  # type: ignore[misc]

    async def _release_if_idle(self) -> None:
        if not self.in_transaction():  # type: ignore[attr-defined]
            try:
                await self.aclose()  # type: ignore[attr-defined]
            except Exception:  # a dead connection: the pool replaces it
                log.debug("releasing a connection failed", exc_info=True)
                self._state.reset()  # type: ignore[attr-defined]

    @contextlib.asynccontextmanager
    async def aatomic(self) -> AsyncIterator[None]:
        """One transaction around several calls of this task (nested blocks are savepoints).

        Not ``atomic()``: the synchronous code run on the bridge uses that
        one as a plain ``with`` block.
        """
        block = self.atomic()  # type: ignore[attr-defined]
        await self.run(block.__enter__)  # type: ignore[attr-defined]
        try:
            yield
        except BaseException as exc:
            await self.run(block.__exit__, type(exc), exc, exc.__traceback__)  # type: ignore[attr-defined]
            raise
        else:
            await self.run(block.__exit__, None, None, None)  # type: ignore[attr-defined]
        finally:
            await self._release_if_idle()


class AsyncPostgresStateDatabase(_BridgedDatabase, PostgresDialect, pwasyncio.AsyncPostgresqlDatabase):
    """asyncpg with the package's errors and peewee's plain SQL transactions.

    pwasyncio runs PostgreSQL transactions as asyncpg transaction objects,
    but the models open theirs through the ``DatabaseProxy`` with plain
    ``BEGIN``; asyncpg refuses one of its own inside a plain one. Plain SQL
    for all of them keeps nesting (savepoints) working whichever opens first.
    """

    def __init__(self, database: str, *, display_url: str = "", **kwargs: Any):
        super().__init__(database, **kwargs)
        self.display_url = display_url or database
        self._setup_state()

    def atomic(self, *args: Any, **kwargs: Any) -> Any:
        return pwasyncio.async_atomic(self, *args, **kwargs)

    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        return pwasyncio.async_transaction(self, *args, **kwargs)

    def savepoint(self) -> Any:
        return pwasyncio.async_savepoint(self)

    async def aexecute_sql(self, sql: str, params: Any = None) -> Any:
        if params and any(isinstance(value, _JSON_NODES) for value in params):
            # A JSONField value is a peewee node, which the hand-written hot
            # path statements pass straight to the driver: asyncpg wants text.
            params = [_json_text(value) if isinstance(value, _JSON_NODES) else value for value in params]
        try:
            return await super().aexecute_sql(sql, params)
        except TimeoutError as exc:  # asyncpg's command_timeout: the server stopped answering
            raise DatabaseUnavailable(
                f"PostgreSQL at {self.display_url} did not answer within the command timeout; "
                "the next call reconnects"
            ) from exc

    async def _pool_acquire(self, pool: Any) -> _PostgresConnection:
        return _PostgresConnection(await pool.acquire())  # the caller bounds the wait

    async def _create_pool_async(self) -> Any:
        if pwasyncio.asyncpg is None:
            raise AsyncSupportMissing(f"PostgreSQL from asyncio needs asyncpg; install {ASYNC_EXTRA_HINT}")
        return await super()._create_pool_async()

    def _connection_lost(self) -> bool:
        # aconnect() replaces a stale connection, so the next call recovers by itself.
        conn = self._state.conn
        return conn is not None and conn.stale()


_JSON_NODES: tuple[type, ...] = (pwasyncio.Json,)


def _json_text(value: Any) -> str:
    return value.dumps(value.value)


async def _reset_nothing(connection: Any) -> None:
    """asyncpg's pool reset without its round trip per release.

    The default runs ``RESET ALL; UNLISTEN *; ...`` every time a connection
    goes back, and this module gives one back after every call. The package
    sets no session state; asyncpg still rolls back an open transaction.
    """


# --- opening ---------------------------------------------------------------------------


@dataclass
class _Target:
    kind: str
    database: str
    display_url: str
    params: dict[str, Any] = field(default_factory=dict)
    identity: tuple[int, int] | None = None


def _migrate_and_describe(
    url: str | os.PathLike[str] | None,
    *,
    migrate: bool,
    synchronous: str,
    busy_timeout: float,
    backup_before_migrate: bool,
    connect_params: dict[str, Any],
) -> _Target:
    """Open a synchronous connection, bring the schema up to date, and say how to reach the database.

    peewee-migrate is synchronous, so the schema work happens here (in a
    worker thread), with exactly the checks and backup of ``open_database``;
    the URL is parsed once, by ``connect_database``.
    """
    sync = connect_database(url, synchronous=synchronous, busy_timeout=busy_timeout, **connect_params)
    try:
        ensure_schema(sync, migrate=migrate, backup_before_migrate=backup_before_migrate)
        if isinstance(sync, StreamStateSqliteDatabase):
            return _Target(
                "sqlite",
                sync.database,
                sync.database,
                {
                    # auto_vacuum is set only on a file without it (_set_pragmas):
                    # a reader thread's connection opened during another task's
                    # atomic() block does not wait for the block to end.
                    "pragmas": sync._pragmas,
                    "timeout": sync._timeout,
                    "lock_type": "IMMEDIATE",
                    "returning_clause": True,
                    **sync.connect_params,
                },
                identity=sync._file_identity(),
            )
        assert isinstance(sync, StreamStatePostgresDatabase)
        return _Target(
            "postgres",
            sync.database,
            sync.display_url,
            _asyncpg_params(sync.connect_params, sync.display_url),
        )
    finally:
        if isinstance(sync, StreamStatePostgresDatabase):
            sync.close_all()
        else:
            sync.close()


# libpq connection parameters (as open_database takes them) that asyncpg takes as they are;
# _asyncpg_params translates a few others.
_ASYNCPG_SAME = ("user", "password", "host", "port", "passfile")


def _asyncpg_params(params: Mapping[str, Any], display_url: str) -> dict[str, Any]:
    translated: dict[str, Any] = {}
    settings: dict[str, str] = {}
    unknown = []
    for key, value in params.items():
        if key in _ASYNCPG_SAME:
            translated[key] = int(value) if key == "port" else value
        elif key == "options":
            settings.update(_libpq_options(str(value), display_url))
        elif key == "application_name":
            settings["application_name"] = str(value)
        elif key == "sslmode":
            translated["ssl"] = str(value)
        elif key == "connect_timeout":
            translated["timeout"] = float(value)
        elif key in _LIBPQ_TCP:
            pass  # asyncpg has no such settings; command_timeout bounds a silent server instead
        else:
            unknown.append(key)
    if unknown:
        raise ValidationError(
            "url",
            display_url,
            f"connection options the async driver (asyncpg) does not take: {', '.join(sorted(unknown))}",
        )
    if settings:
        translated["server_settings"] = settings
        statement_ms = settings.get("statement_timeout", "")
        if statement_ms.isdigit() and int(statement_ms):
            # A server that stops answering: the client gives up a little after
            # the server would have cancelled the statement itself.
            translated["command_timeout"] = int(statement_ms) / 1000 + GRACE
    return translated


_LIBPQ_TCP = frozenset(
    {"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout"}
)


def _libpq_options(options: str, display_url: str) -> dict[str, str]:
    """``-c search_path=x -c statement_timeout=5s`` as asyncpg's server_settings."""
    settings = {}
    words = iter(shlex.split(options))
    for word in words:
        if word == "-c":
            word = next(words, "")
        elif word.startswith("-c") or word.startswith("--"):
            word = word[2:]
        else:
            raise ValidationError("options", options, f"expected -c name=value settings (for {display_url})")
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise ValidationError("options", options, "expected -c name=value settings")
        settings[name.replace("-", "_")] = value
    return settings


async def _open(
    url: str | os.PathLike[str] | None,
    *,
    migrate: bool,
    synchronous: str,
    busy_timeout: float,
    backup_before_migrate: bool,
    pool_size: int,
    acquire_timeout: float | None,
    coalesce_calls: bool,
    connect_params: dict[str, Any],
) -> AsyncStateDatabase:
    if pool_size < 1:
        raise ValidationError("pool_size", pool_size, "must be at least 1")
    if url_backend(resolve_url(url)) == "postgres" and pwasyncio.asyncpg is None:
        # Before any connection: SQLite needs no async driver (its calls run on threads).
        raise AsyncSupportMissing(f"PostgreSQL from asyncio needs asyncpg; install {ASYNC_EXTRA_HINT}")
    target = await asyncio.to_thread(
        _migrate_and_describe,
        url,
        migrate=migrate,
        synchronous=synchronous,
        busy_timeout=busy_timeout,
        backup_before_migrate=backup_before_migrate,
        connect_params=connect_params,
    )
    db: AsyncStateDatabase
    if target.kind == "sqlite":
        sqlite_db = AsyncSqliteStateDatabase(
            target.database,
            pool_size=pool_size,
            # How long a write may wait for another task's atomic() block: as long as SQLite would.
            acquire_timeout=acquire_timeout or max(busy_timeout, 10.0),
            coalesce_calls=coalesce_calls,
            **target.params,
        )
        sqlite_db._identity = target.identity
        db = sqlite_db
        # Fail here, not at the first call, if the file cannot be opened.
        try:
            await sqlite_db.call(sqlite_db.connect, reuse_if_open=True)
        except BaseException:
            await sqlite_db.close_pool()
            raise
    else:
        pg_db = AsyncPostgresStateDatabase(
            target.database,
            display_url=target.display_url,
            pool_size=pool_size,
            acquire_timeout=acquire_timeout or 30.0,
            reset=_reset_nothing,
            pool_min_size=pool_size,
            **target.params,
        )
        db = pg_db
        # Fail here, not at the first call, if the pool cannot be made.
        try:
            await pg_db.aconnect()
            await pg_db.aclose()
        except BaseException:
            await pg_db.close_pool()
            raise
    database_proxy.initialize(db)
    log.info("opened %s for asyncio (pool of %d)", target.display_url, pool_size)
    return db


class _Opening(Coroutine[Any, Any, AsyncStateDatabase]):
    """The coroutine ``open_database_async`` returns, which also works as ``async with``.

    ``await`` it, hand it to ``asyncio.run``, or write
    ``async with open_database_async(url) as db:`` to close the pool at the end.
    """

    def __init__(self, opening: Coroutine[Any, Any, AsyncStateDatabase]):
        self._opening = opening
        self._db: AsyncStateDatabase | None = None

    def __await__(self) -> Generator[Any, None, AsyncStateDatabase]:
        return self._opening.__await__()

    def send(self, value: Any) -> Any:
        return self._opening.send(value)

    def throw(self, *args: Any) -> Any:
        return self._opening.throw(*args)

    def close(self) -> None:
        self._opening.close()

    async def __aenter__(self) -> AsyncStateDatabase:
        self._db = await self._opening
        return self._db

    async def __aexit__(self, *exc_info: object) -> None:
        if self._db is not None:
            await close_database_async(self._db)


def open_database_async(
    url: str | os.PathLike[str] | None = None,
    *,
    migrate: bool = True,
    synchronous: str = "NORMAL",
    busy_timeout: float = 30.0,
    backup_before_migrate: bool = True,
    pool_size: int = 10,
    acquire_timeout: float | None = None,
    coalesce: bool = False,
    **connect_params: Any,
) -> _Opening:
    """Open the database at ``url`` for asyncio and bind the models to it.

    The URL and options are those of ``open_database`` (the schema is
    migrated, with a backup of an existing SQLite file first, by a
    synchronous connection in a worker thread, so the loop keeps running).
    On PostgreSQL ``pool_size`` connections serve every task, and a call
    waits at most ``acquire_timeout`` seconds (default 30) for one before
    ``DatabaseUnavailable``. On SQLite one writer thread and up to
    ``pool_size - 1`` reader threads each keep a connection, and a write
    waits at most ``acquire_timeout`` seconds (default: the busy timeout)
    while another task's ``atomic()`` block holds the writer.

    ``coalesce=True`` (SQLite; PostgreSQL ignores it): ``checkpoint``,
    ``record_health``, ``begin_segment``, ``complete_segment`` and
    ``record_many`` made by several tasks at about the same time are
    written together as one ``Tick``, one transaction (stream_state.coalesce):
    each still returns only once its write committed, and a refused call
    raises to its caller only. A call cancelled before its tick starts
    never runs; one cancelled after may commit.

    ``db = await open_database_async(url)`` ... ``await close_database_async()``,
    or ``async with open_database_async(url) as db:``.
    """
    return _Opening(
        _open(
            url,
            migrate=migrate,
            synchronous=synchronous,
            busy_timeout=busy_timeout,
            backup_before_migrate=backup_before_migrate,
            pool_size=pool_size,
            acquire_timeout=acquire_timeout,
            coalesce_calls=coalesce,
            connect_params=connect_params,
        )
    )


def current_database() -> AsyncStateDatabase:
    """The async database the models are bound to; ``DatabaseUnavailable`` if there is none."""
    db = database_proxy.obj
    if isinstance(db, AsyncStateDatabase):
        return db
    if db is None:
        raise DatabaseUnavailable("no database is open; call `await stream_state.aio.open_database_async()`")
    raise DatabaseUnavailable(
        f"the models are bound to a synchronous database ({type(db).__name__}); "
        "call `await stream_state.aio.open_database_async()` to use them from asyncio"
    )


async def close_database_async(db: AsyncStateDatabase | None = None) -> None:
    """Close every pooled connection of ``db`` (default: the open one).

    Call it when no task uses the database any more. The models stay bound:
    a later call opens a new pool.
    """
    db = db or current_database()
    for task in list(_KEEPERS.values()):
        task.cancel()
    _KEEPERS.clear()
    await db.close_pool()


# --- the generic bridge ------------------------------------------------------------------


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, any synchronous function of the package, without blocking the loop.

    For example ``await aio.run(recording.archive, "/archive")`` or
    ``await aio.run(maintenance.purge_events, 30, pause_seconds=0)``. On
    SQLite it queues with the other writers; use ``read`` for functions that
    only read.
    """
    try:
        return await current_database().call(fn, *args, **kwargs)
    finally:
        _keep_process_session_alive()


def _gathering() -> coalesce.Coalescer | None:
    """The pending tick a call joins (``coalesce=True`` on SQLite), unless its task is inside atomic()."""
    db = current_database()
    gathering = getattr(db, "_coalescer", None)
    if gathering is None:
        return None
    task = asyncio.current_task()
    if task is not None and task is db._writer_task:  # type: ignore[attr-defined]
        return None  # its calls belong to its own transaction
    if acting_session() is not None:
        return None  # a task's Session.acting() writes through its own session, not the tick's
    return gathering


async def _gathered(gathering: coalesce.Coalescer, kind: int, gather: Callable[[Tick], Any]) -> Any:
    """Join the pending tick; return once it committed (or raise this call's own error)."""
    try:
        return await gathering.add(kind, gather)
    finally:
        _keep_process_session_alive()


# --- the session's lease ---------------------------------------------------------------------

_KEEPERS: dict[int, asyncio.Task[None]] = {}


def _keep_process_session_alive() -> None:
    """Once this process's session exists (opened by its first write), a task renews it."""
    db = database_proxy.obj
    kept = _KEPT[0]
    if (
        kept is not None
        and kept[0] is db
        and not kept[2].done()
        and not kept[1].is_dead
        and acting_session() is None
        and registered_session(db) is kept[1]
    ):
        return  # after every call: the usual case costs a few attribute reads
    try:
        session = current_session(db, open=False)
    except OwnershipLost:
        return  # the manager's own session died: its next write says so
    if session is None or session.is_dead:
        return
    task = _KEEPERS.get(session.id)
    if task is None or task.done():
        task = keep_alive(session)
    if registered_session(db) is session:
        _KEPT[0] = (db, session, task)


# The process session last found kept alive: (database, session, its keeper task).
_KEPT: list[tuple[Any, Session, asyncio.Task[None]] | None] = [None]


def keep_alive(session: Session | None = None, interval: float | None = None) -> asyncio.Task[None]:
    """A task that renews ``session``'s lease (default: this process's) every ``interval`` (ttl / 3) s.

    Started by itself for this process's session; call it for a session
    opened with ``Session.open(register=False)``. The task ends when the
    session is closed or found dead (``session.is_dead``; the manager must
    then stop its pipelines and open a new session).
    """
    target = session if session is not None else current_session(database_proxy.obj)
    assert target is not None
    existing = _KEEPERS.get(target.id)
    if existing is not None and not existing.done():
        return existing
    task = asyncio.get_running_loop().create_task(
        _renew_forever(target, interval or max(0.05, target.ttl / 3)),
        name=f"stream_state-session-{target.id}",
    )
    _KEEPERS[target.id] = task
    return task


async def _renew_forever(session: Session, interval: float) -> None:
    while not session.is_dead:
        await asyncio.sleep(interval)
        if session.is_dead:
            return
        try:
            await current_database().call(session.renew)
        except OwnershipLost as exc:
            log.error("session %s is dead: %s", session.id, exc)
            return
        except StreamStateError as exc:  # the database is away: try again next interval
            log.warning("renewing session %s failed: %s", session.id, exc)


async def read(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Like ``run``, for functions that only read: they do not queue behind SQLite writers.

    ``await aio.read(history.gaps, cam, since, until)``.
    """
    return await current_database().call(fn, *args, _write=False, **kwargs)


async def fetch(query: pw.SelectBase | Callable[..., Iterable[T]], *args: Any, **kwargs: Any) -> list[Any]:
    """The rows of a query, as a list: ``await aio.fetch(Recording.for_stream(cam).limit(10))``.

    Also takes a function that returns a query (or any iterable) with its
    arguments, for query factories that read while they build the query:
    ``await aio.fetch(history.recordings, "cam-1", since, until)``.
    """
    if isinstance(query, pw.SelectBase):
        if args or kwargs:
            raise TypeError("fetch(query) takes no arguments; pass a function to call with them")
        return await read(list, query)
    return await read(lambda: list(query(*args, **kwargs)))


async def first(query: pw.SelectBase) -> Any:
    """The first row of a query, or None."""
    return await read(query.first)


async def count(query: pw.SelectBase) -> int:
    """How many rows a query selects."""
    return await read(query.count)


def atomic() -> contextlib.AbstractAsyncContextManager[None]:
    """``async with aio.atomic():`` makes the calls of this task inside one transaction.

    Commits when the block ends, rolls everything back if it raises. Keep
    the block short: on SQLite it holds the write lock (other tasks' writes
    wait), on PostgreSQL a connection and row locks.
    """
    return current_database().aatomic()


# --- the verbs: one per model method, under the method's own name ---------------------------
#
# ``aio.fail(segment, ...)`` is ``segment.fail(...)``, ``aio.by_name(name)`` is
# ``Stream.by_name(name)``: same name, same parameters (after the object the
# method belongs to), same result. Only ``Event.record`` and
# ``MetricSample.record`` share a name; here they are ``record_event`` and
# ``record_metric``. tests/test_aio.py checks the parity both ways.


# --- streams -------------------------------------------------------------------------------


async def register(name: str, uri: str, config: dict[str, Any] | None = None, **desired: bool) -> Stream:
    """``Stream.register``: create the stream ``name`` or update the live one; return it."""
    return await run(Stream.register, name, uri, config, **desired)


async def by_name(name: str) -> Stream:
    """``Stream.by_name``: the live stream called ``name``; ``NotFound`` if there is none."""
    return await read(Stream.by_name, name)


async def update_config(stream: Stream, config: dict[str, Any]) -> bool:
    """``stream.update_config``: replace the config; False when nothing changed."""
    return await run(stream.update_config, config)


async def set_desired(stream: Stream, enabled: bool | None = None, recording: bool | None = None) -> bool:
    """``stream.set_desired``: what the manager should bring back after a restart."""
    return await run(stream.set_desired, enabled, recording)


async def set_status(
    stream: Stream, status: StreamStatus | str, reason: str | None = None, at: dt.datetime | None = None
) -> bool:
    """``stream.set_status``: False when unchanged, ``InvalidTransition`` when not allowed."""
    return await run(stream.set_status, status, reason, at)


async def record_health(
    stream: Stream,
    state: HealthState | str,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> bool:
    """``stream.record_health``: True when the health changed (an event was written)."""
    gathering = _gathering()
    if gathering is not None:
        return await _gathered(
            gathering, coalesce.HEALTH, lambda tick: tick.record_health(stream, state, reason, data, at)
        )
    return await run(stream.record_health, state, reason, data, at)


async def remove(stream: Stream) -> bool:
    """``stream.remove``: soft-delete; False if it was already removed."""
    return await run(stream.remove)


# --- segments -------------------------------------------------------------------------------


async def begin_segment(
    stream: Stream,
    path: str | os.PathLike[str] | None = None,
    started_at: dt.datetime | None = None,
    storage: str | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    path_template: str | None = None,
    media_started_at: dt.datetime | None = None,
) -> Recording:
    """``stream.begin_segment``: commit the new segment's row (and its index) before opening the file."""
    options = {
        "storage": storage,
        "metadata": metadata,
        "path_template": path_template,
        "media_started_at": media_started_at,
    }
    gathering = _gathering()
    if gathering is not None:
        return await _gathered(
            gathering, coalesce.BEGIN, lambda tick: tick.begin_segment(stream, path, started_at, **options)
        )
    return await run(stream.begin_segment, path, started_at, **options)


async def checkpoint(segment: Recording, size_bytes: int, at: dt.datetime | None = None) -> None:
    """``segment.checkpoint``: record the progress of an open segment."""
    gathering = _gathering()
    if gathering is not None:
        await _gathered(gathering, coalesce.CHECKPOINT, lambda tick: tick.checkpoint(segment, size_bytes, at))
        return
    await run(segment.checkpoint, size_bytes, at)


async def complete_segment(
    segment: Recording,
    ended_at: dt.datetime | None = None,
    size_bytes: int | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    media_ended_at: dt.datetime | None = None,
    frame_count: int | None = None,
    finalized: bool | None = None,
) -> Recording:
    """``segment.complete_segment``: close it with its end time and size (default: the file's)."""
    media = {"media_ended_at": media_ended_at, "frame_count": frame_count, "finalized": finalized}
    if size_bytes is None and isinstance(segment, Recording):
        # The file's size, read off the loop: a gathered call validates on the
        # loop's thread and PostgreSQL's calls run there too, and a stat on a
        # hung network mount would stop every task.
        size_bytes = await asyncio.to_thread(segment._size_on_disk)
    gathering = _gathering()
    if gathering is not None:

        def gather(tick: Tick) -> Recording:
            tick.complete_segment(segment, ended_at, size_bytes, metadata, **media)
            return segment

        return await _gathered(gathering, coalesce.COMPLETE, gather)
    return await run(segment.complete_segment, ended_at, size_bytes, metadata, **media)


async def fail(segment: Recording, reason: str, at: dt.datetime | None = None) -> Recording:
    """``segment.fail``: give up on an open segment, with a ``segment_failed`` event."""
    return await run(segment.fail, reason, at)


async def delete_file(segment: Recording) -> int:
    """``segment.delete_file``: crash-safe delete of the file and its row; the bytes freed."""
    return await run(segment.delete_file)


async def archive(
    segment: Recording, dest_root: str | os.PathLike[str] | None = None, storage: str | None = None
) -> Recording:
    """``segment.archive``: move a complete segment's file under ``dest_root`` and flag it archived."""
    return await run(segment.archive, dest_root, storage)


# --- events and metrics -----------------------------------------------------------------------


async def record_event(
    type: str,
    stream: Stream | int | None = None,
    severity: Severity | str = Severity.INFO,
    message: str | None = None,
    data: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> Event:
    """``Event.record``: write one event (credentials masked) and return it."""
    return await run(Event.record, type, stream, severity, message, data, at)


async def record_metric(
    name: str,
    value: float,
    stream: Stream | int | None = None,
    labels: Mapping[str, str | int] | None = None,
    at: dt.datetime | None = None,
) -> MetricSample:
    """``MetricSample.record``: one sample. Prefer ``record_many`` for a tick's worth."""
    return await run(MetricSample.record, name, value, stream, labels, at)


async def record_many(samples: Iterable[Sample | Mapping[str, Any] | Sequence[Any]]) -> int:
    """``MetricSample.record_many``: many samples in one transaction; how many were written."""
    gathering = _gathering()
    if gathering is not None:
        return await _gathered(gathering, coalesce.SAMPLES, lambda tick: tick.record_many(samples))
    return await run(MetricSample.record_many, samples)


# --- one commit per tick --------------------------------------------------------------------


async def commit_tick(tick: Tick) -> TickReport:
    """``tick.commit()``: write a tick gathered with ``stream_state.Tick()`` in one transaction.

    Gathering the calls (``tick.checkpoint(...)``, ``tick.record_many(...)``)
    touches no database, so it needs no ``await``; only the commit does.
    """
    return await run(tick.commit)


@contextlib.asynccontextmanager
async def tick() -> AsyncIterator[Tick]:
    """``async with aio.tick() as tick:`` gathers a tick and commits it at the end of the block.

    A block that raises writes nothing; a refused call raises ``TickFailed``
    (see ``stream_state.tick``).
    """
    gathered = Tick()
    yield gathered
    await commit_tick(gathered)


# --- restart --------------------------------------------------------------------------------


async def restore(
    now: dt.datetime | None = None,
    *,
    dry_run: bool = False,
    session: str | None = None,
    probe: Probe | None = default_probe,
) -> RestoredState:
    """``Restorer(session=, probe=).restore()``: repair what the last run left half done."""
    return await run(lambda: Restorer(session=session, probe=probe).restore(now, dry_run=dry_run))


async def shutdown(
    now: dt.datetime | None = None, *, session: str | None = None, probe: Probe | None = default_probe
) -> ShutdownReport:
    """``Restorer(session=, probe=).shutdown()``: record a clean stop, closing any segment left open."""
    return await run(lambda: Restorer(session=session, probe=probe).shutdown(now))


# --- the names of before (issue 12): deprecated, for code written against them ------------------

_RENAMED = {
    "get_stream": "by_name",
    "remove_stream": "remove",
    "fail_segment": "fail",
    "delete_segment": "delete_file",
    "record_metrics": "record_many",
}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        new = _RENAMED[name]
        warnings.warn(
            f"stream_state.aio.{name} is now aio.{new}, the name of the model method it runs",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
