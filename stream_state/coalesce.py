"""SQLite from asyncio: the single calls of many tasks, gathered into one ``Tick`` on the writer thread.

``open_database_async(url, coalesce=True)`` on SQLite. Each of
``aio.checkpoint``, ``aio.record_health``, ``aio.complete_segment``,
``aio.begin_segment`` and ``aio.record_many`` then joins a shared pending
``Tick`` (stream_state.tick) instead of being a job of its own: the calls the
tasks make in one turn of the loop, and those made while the previous
gathered tick runs on the writer thread, are written by one job, in one
transaction, with one executemany per statement type and the segment rolls
set-based. Each caller then gets its own outcome:

1. A call is validated when it is made, by ``Tick``'s own methods: bad input
   raises to its caller at once (``ValidationError`` naming the argument)
   and never reaches the others.
2. Its ``await`` returns only once the transaction holding its write
   committed: a returned result means committed (invariant 1: a begun
   segment's row is committed before its ``Recording`` is handed out).
3. A call the database refuses (``InvalidTransition``, ``NotFound``,
   ``OwnershipLost`` for a stream another session owns, a refused roll) goes
   to that caller only: the tick is rolled back and the others are written
   at once as the next tick (``TickFailed.remaining``), on the same job. An
   error that is not one call's (disk full, this session's lease lost) goes
   to every call of the tick still to be written.
4. A task's calls keep their order: its next call is made only once its
   previous one returned, i.e. committed.
5. Cancellation: a call cancelled before its tick is handed to the writer
   thread is dropped from it and never runs; one cancelled after may still
   commit with the others of its tick (its caller just does not hear of
   it). A tick whose callers all gave up is nobody's: it stops before its
   next statement and rolls back, as a cancelled single call does.
6. Closing (``close_database_async``) first writes the calls already made,
   as it runs the calls already queued, then ends the threads.

Calls of a task inside ``aio.atomic()`` keep their per-call path (they belong
to its transaction), and so does every other call (``Event.record`` returns
the event's id, which a tick does not read back; reads; maintenance).
A gathered tick waits, as any write does, for another task's ``atomic()``
block to end.

Why: a call handed to the writer thread on its own costs about 100 µs of
hand-off and asyncio machinery, plus its own implicit commit; a tick pays
one hand-off and one commit for all of them, and the tick path costs less
CPU per call than the sync loop of single calls (README, "asyncio single
calls").
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any, Protocol

from . import dbthreads
from .errors import TickFailed
from .tick import Tick


class _Writer(Protocol):
    """What the gathering needs of aio's SQLite database (this module sits below aio)."""

    _writer: asyncio.Lock
    _settling: set[dbthreads.Job]

    def _threads(self) -> Any: ...

    def _submit(
        self,
        loop: asyncio.AbstractEventLoop,
        workers: dbthreads.Workers,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> asyncio.Future[Any]: ...

    async def _wait_for_writer(self) -> None: ...


__all__ = ["Coalescer"]

# What a caller gets back once its tick committed, by the kind of its call.
CHECKPOINT, HEALTH, COMPLETE, BEGIN, SAMPLES = range(5)


class _Call:
    __slots__ = ("future", "kind", "value")

    def __init__(self, future: asyncio.Future[Any], kind: int, value: Any):
        self.future = future
        self.kind = kind
        self.value = value  # the Recording (complete), PendingSegment (begin), count (samples)


class Coalescer:
    """The pending tick of one async SQLite database, filled by the loop's tasks, written by its writer."""

    def __init__(self, db: _Writer):
        self._db = db
        self._tick: Tick | None = None
        self._calls: list[_Call] = []
        self._scheduled = False  # a flush is queued on the loop
        self._running = False  # a gathered tick is on (or waiting for) the writer thread
        self._idle: list[asyncio.Future[None]] = []  # drain()'s waiters: nothing pending or running

    async def drain(self) -> None:
        """Until every call made so far is written or refused (``close_pool`` ends no thread under them).

        A call joins the pending tick and returns to its task before the
        tick is handed to the writer thread; a close in between would
        otherwise end the threads first, and the tick start new ones behind
        it, left running after the close.
        """
        if self._calls or self._running or self._scheduled:
            waiter = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            await waiter

    def add(self, kind: int, gather: Callable[[Tick], Any]) -> asyncio.Future[Any]:
        """Validate a call into the pending tick (``gather(tick)`` raises to the caller); its future."""
        loop = asyncio.get_running_loop()
        tick = self._tick
        if tick is None:
            tick = self._tick = Tick()
            self._calls = []
        # Tick's methods validate before they take a place: a refused call adds nothing.
        before = len(tick)
        value = gather(tick)
        future = loop.create_future()
        if len(tick) == before:  # nothing to write (an empty record_many): done now
            future.set_result(value)
            return future
        self._calls.append(_Call(future, kind, value))
        self._schedule(loop)
        return future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        # One turn of the loop gathers; while a tick runs, its successor keeps gathering.
        if not self._scheduled and not self._running and self._calls:
            self._scheduled = True
            loop.call_soon(self._flush, loop)
        elif not self._scheduled and not self._running and self._idle:
            waiters, self._idle = self._idle, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        if self._db._writer.locked():
            # Another task's atomic() block holds the writer: the tick waits, as any write does.
            self._running = True
            loop.create_task(self._start_after_writer(loop))
        else:
            self._start(loop)

    async def _start_after_writer(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            await self._db._wait_for_writer()
        except BaseException as exc:
            # Not handed over: every call waiting in the tick hears why (DatabaseUnavailable).
            _, calls = self._take()
            self._running = False
            for call in calls:
                if not call.future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        call.future.cancel()
                    else:
                        call.future.set_exception(exc)
            self._schedule(loop)
            if not isinstance(exc, Exception):
                raise
            return
        # No await from here on: queued on the writer before any other task runs.
        self._start(loop)

    def _take(self) -> tuple[Tick | None, list[_Call]]:
        tick, calls = self._tick, self._calls
        self._tick, self._calls = None, []
        return tick, calls

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        tick, calls = self._take()
        live = [i for i, call in enumerate(calls) if not call.future.cancelled()]
        if tick is None or not live:
            self._running = False
            self._schedule(loop)
            return
        if len(live) < len(calls):
            # Cancelled before its tick started: dropped, never runs.
            tick = tick._keeping(live)
            calls = [calls[i] for i in live]
        self._running = True
        writer = self._db._threads().writer
        # Cancellable only by this code: when every caller of the tick gave up, it is nobody's,
        # and stops at its next statement (rolled back) as a cancelled single call does.
        # In an empty context: the tick is no one caller's (none of them acts as a session of
        # its own: aio leaves those calls on their per-call path).
        done = contextvars.Context().run(self._db._submit, loop, writer, _commit, (tick, len(calls)), {})
        job: dbthreads.Job = done._job  # type: ignore[attr-defined]
        settling = self._db._settling
        given_up = [0]

        def cancelled(future: asyncio.Future[Any]) -> None:
            if not future.cancelled() or done.done():
                return
            given_up[0] += 1
            if given_up[0] == len(calls):
                done.cancel()  # settling until it has stopped (JobFuture.cancel)
            else:
                # The others' writes go on, this one's with them (it may commit): settling
                # until the tick ended, as a cancelled single call is (close_pool waits on it).
                settling.add(job)

        for call in calls:
            call.future.add_done_callback(cancelled)
        done.add_done_callback(lambda finished: self._finish(loop, finished, calls, job))

    def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        done: asyncio.Future[Any],
        calls: list[_Call],
        job: dbthreads.Job,
    ) -> None:
        self._running = False
        if done.cancelled():  # every caller gave up: settling until it stopped (JobFuture.cancel)
            self._schedule(loop)
            return
        self._db._settling.discard(job)
        try:
            errors, changed = done.result()
        except BaseException as exc:  # the job itself failed (its thread closed): every call hears it
            errors, changed = dict.fromkeys(range(len(calls)), exc), set()
        for position, call in enumerate(calls):
            future = call.future
            if future.done():  # cancelled after its tick started: it may have committed
                continue
            error = errors.get(position)
            if error is not None:
                future.set_exception(error)
            elif call.kind == HEALTH:
                future.set_result(position in changed)
            elif call.kind == BEGIN:
                future.set_result(call.value.recording)
            else:
                future.set_result(call.value)
        self._schedule(loop)


def _commit(tick: Tick, calls: int) -> tuple[dict[int, BaseException], set[int]]:
    """On the writer thread: commit the tick, retrying without refused calls; each call's outcome.

    Returns the error of each call that was not written (by its position in
    the gathered tick) and the positions of the health reports that changed
    a stream's state.
    """
    positions = list(range(calls))  # the gathered position of each call of ``tick``
    errors: dict[int, BaseException] = {}
    while positions:
        try:
            report = tick.commit()
        except TickFailed as failed:
            # Those calls were refused: their callers hear why; the rest is the next tick.
            dropped = {failure.index for failure in failed.failures}
            for failure in failed.failures:
                errors[positions[failure.index]] = failure.error
            positions = [p for i, p in enumerate(positions) if i not in dropped]
            tick = failed.remaining
            continue
        except Exception as exc:
            # Not one call's error (the database, this session's lease): all still unwritten hear it.
            for position in positions:
                errors[position] = exc
            return errors, set()
        return errors, {positions[i] for i in report.health_changed_calls}
    return errors, set()
