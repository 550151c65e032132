"""Database threads: run a whole synchronous call on a thread that owns a connection, for asyncio.

``stream_state.aio`` uses them on SQLite. Each call (a domain method with
all its statements and its commit) is one *job*: the event loop hands it to
a thread in one hop and awaits one future, instead of crossing to a driver
thread and back for every statement. A thread keeps its own connection (a
peewee database keeps one per thread), so a job runs plain synchronous
peewee code.

``Workers(n)`` is a group of at most ``n`` threads started on demand. Jobs
go to the thread that went idle last (its connection has the freshest page
cache); when all are busy they wait in a first-in, first-out backlog. A
group of one runs its jobs strictly in the order they were submitted, which
is what a single SQLite writer needs.

Cancellation: ``job.cancel()`` (the awaiting task was cancelled) drops a job
that has not started; a running one is told through ``current_job()`` (the
database checks it before each statement and raises ``CallCancelled``, so
its transaction rolls back) and through the ``interrupt`` callable of the
thread (``sqlite3.Connection.interrupt`` aborts a statement that waits on
another process's lock). A job past its last statement just finishes.

This is the base layer: it imports no model and no service.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE = 0, 1, 2


class CallCancelled(BaseException):
    """Raised inside a job whose caller was cancelled: the call stops before its next statement.

    A ``BaseException``, like ``asyncio.CancelledError``: code that handles
    ``Exception`` must not carry on with a call nobody waits for.
    """


class Job:
    """One synchronous call, run on a worker thread, its outcome set on an asyncio future."""

    __slots__ = ("args", "cancellable", "cancelled", "context", "fn", "future", "kwargs", "mailbox",
                 "on_settled", "settling", "state", "worker")  # fmt: skip

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        *,
        cancellable: bool = True,
        settling: set[Job] | None = None,
    ):
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        # The caller's context variables (the acting session) go with the call.
        self.context = contextvars.copy_context()
        self.mailbox = _mailbox(loop)
        self.future: asyncio.Future[Any] = JobFuture(self, loop)
        self.state = QUEUED
        self.cancelled = False
        self.cancellable = cancellable
        self.worker: Worker | None = None
        # Where a job cancelled while it runs stays until it has ended (the caller's set).
        self.settling = settling
        # Called on the loop when a job cancelled while running has finished.
        self.on_settled: Callable[[Job], None] | None = None

    def cancel(self) -> bool:
        """The caller gave up: drop the job, or stop it at its next statement. True if it still runs.

        A job made with ``cancellable=False`` runs to its end regardless.
        """
        with _STATE:
            if self.state == DONE:
                return False
            if not self.cancellable:
                return True
            self.cancelled = True
            worker = self.worker
            if self.state == RUNNING and worker is not None and worker.interrupt is not None:
                # Under the lock: this job still holds the thread, the next one cannot have started.
                worker.interrupt()
            return self.state == RUNNING

    def check(self) -> None:
        """Raise ``CallCancelled`` if the caller gave up (called by the database before a statement)."""
        if self.cancelled:
            raise CallCancelled("the awaiting task was cancelled")


class JobFuture(asyncio.Future[Any]):
    """A job's future: cancelling it (as ``Task.cancel`` does to what the task awaits) cancels the job."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop):
        super().__init__(loop=loop)
        self._job = job

    def cancel(self, msg: Any = None) -> bool:
        job = self._job
        if not self.done() and job.cancel() and job.settling is not None:
            # It runs on, to its next statement: settled when it ends.
            job.settling.add(job)
            job.on_settled = job.settling.discard
        return super().cancel(msg=msg)


# Guards every job's state changes (start, end, cancel); each is held for a moment.
_STATE = threading.Lock()
_local = threading.local()


def current_job() -> Job | None:
    """The job the calling thread runs, if it is a worker thread."""
    return getattr(_local, "job", None)


def current_worker() -> Worker | None:
    """The worker thread the caller runs on, or None (the loop's thread, any other thread)."""
    return getattr(_local, "worker", None)


class Worker(threading.Thread):
    """One thread of a ``Workers`` group."""

    def __init__(self, group: Workers, number: int):
        super().__init__(name=f"{group.name}-{number}", daemon=True)
        self.group = group
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        # Mailboxes this thread left outcomes in without waking their loop.
        self.unwoken: set[_Mailbox] = set()
        # Set by the database when this thread opens its connection: aborts the running statement.
        self.interrupt: Callable[[], None] | None = None

    def run(self) -> None:
        _local.worker = self
        group = self.group
        job = self.inbox.get()
        try:
            while job is not None:
                self._run(job)
                job = group._next(self)
        finally:
            _local.worker = None
            self.wake_loops()
            try:
                group.on_exit()  # closes this thread's connection
            except Exception:
                log.warning("closing a database thread's connection failed", exc_info=True)
            group._exited(self)

    def _run(self, job: Job) -> None:
        with _STATE:
            if job.cancelled:
                job.state = DONE
                return
            job.state = RUNNING
            job.worker = self
        _local.job = job
        outcome: tuple[bool, Any]
        try:
            outcome = (True, job.context.run(job.fn, *job.args, **job.kwargs))
        except BaseException as exc:  # handed to the caller, whatever it is
            outcome = (False, exc)
        finally:
            _local.job = None
            with _STATE:
                job.state = DONE
        # While more jobs wait for this thread, the loop is not woken for each
        # outcome: it gets them all at once when the thread runs dry (or
        # every few), one wake-up instead of one per call. But the next job
        # may wait seconds for another process's lock, and a committed call
        # must not look unfinished for that long (a caller's timeout would
        # retry a write that is done): the loop's own flush timer
        # (_Mailbox.flush, armed while it has calls on a thread) takes what
        # waits at most FLUSH_AFTER later.
        if not job.mailbox.post(job, outcome, wake=not self.group._backlog):
            self.unwoken.add(job.mailbox)

    def wake_loops(self) -> None:
        """Before the thread goes idle: wake the loops it left outcomes for (the jobs after were dropped)."""
        while self.unwoken:
            self.unwoken.pop().wake()


# Outcomes a busy thread lets wait before it wakes the loop anyway.
WAKE_AFTER = 8
# The longest an outcome a busy thread did not wake the loop for waits (seconds): the
# period of the loop's flush timer while it has calls on database threads.
FLUSH_AFTER = 0.005


class _Mailbox:
    """Outcomes on their way back to one event loop: one wake-up for all that arrive before it runs.

    Waking a loop costs a write to its self-pipe and a turn of its
    selector; while the loop has not yet run the drain, later outcomes
    just join the queue. A busy thread may leave outcomes without waking
    the loop at all: the loop then takes them on its flush timer, which
    runs every FLUSH_AFTER while any group it submitted to has work (a
    timer in the loop's own selector: no thread is woken for it).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = weakref.ref(loop)
        self.outcomes: collections.deque[tuple[Job, tuple[bool, Any]]] = collections.deque()
        self.scheduled = False
        # The flush timer (set and cleared on the loop) and the groups it watches.
        self.timer: asyncio.TimerHandle | None = None
        self.groups: set[Workers] = set()

    def arm(self, loop: asyncio.AbstractEventLoop, group: Workers) -> None:
        """On the loop, as it submits to ``group``: flush until the group has no work left."""
        self.groups.add(group)
        if self.timer is None:
            self.timer = loop.call_later(FLUSH_AFTER, self.flush, loop)

    def flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop, every FLUSH_AFTER: take what busy threads left; again while they have work."""
        if self.outcomes:
            self.drain()
        # Read without the groups' locks: a thread that goes idle wakes the loop itself
        # for what it left (Worker.wake_loops), so a stale "idle" loses nothing. The
        # timer stays set meanwhile: a busy thread that sees it set may leave an outcome.
        busy = {g for g in self.groups if g._backlog or len(g._idle) < len(g._threads)}
        self.groups = busy
        if busy and not loop.is_closed():
            self.timer = loop.call_later(FLUSH_AFTER, self.flush, loop)
        else:
            self.timer = None

    def post(self, job: Job, outcome: tuple[bool, Any], wake: bool = True) -> bool:
        """From a worker thread: hand the outcome over; wake the loop if ``wake`` (or enough wait).

        Without ``wake``, only while the loop's flush timer runs. False when
        the loop was not woken: the thread must call ``wake()`` before it
        goes idle.
        """
        self.outcomes.append((job, outcome))
        if not (wake or len(self.outcomes) >= WAKE_AFTER) and self.timer is not None:
            return False
        self.wake()
        return True

    def wake(self) -> None:
        """Make the loop drain the outcomes, unless it is already going to (or has)."""
        if self.scheduled or not self.outcomes:
            return
        # Appended before the flag is read, and the drain clears the flag
        # before it takes: an outcome is always taken by a drain.
        self.scheduled = True
        loop = self.loop()
        try:
            if loop is None:
                raise RuntimeError("the event loop is gone")
            loop.call_soon_threadsafe(self.drain)
        except RuntimeError:  # the loop was closed meanwhile: nobody waits for this any more
            self.scheduled = False
            self.outcomes.clear()
            log.debug("a database call finished after its event loop closed")

    def drain(self) -> None:
        self.scheduled = False
        outcomes = self.outcomes
        while outcomes:
            _settle(*outcomes.popleft())


_MAILBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = weakref.WeakKeyDictionary()


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    last = _LAST_MAILBOX[0]
    if last is not None and last.loop() is loop:
        return last
    mailbox = _MAILBOXES.get(loop)
    if mailbox is None:
        mailbox = _MAILBOXES[loop] = _Mailbox(loop)
    _LAST_MAILBOX[0] = mailbox
    return mailbox


# The mailbox asked for last: a process usually has one loop.
_LAST_MAILBOX: list[_Mailbox | None] = [None]


def _settle(job: Job, outcome: tuple[bool, Any]) -> None:
    future = job.future
    if not future.done():
        ok, value = outcome
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    if job.on_settled is not None:
        job.on_settled(job)


class Workers:
    """At most ``size`` threads, started on demand, that run submitted jobs."""

    def __init__(self, name: str, size: int, on_exit: Callable[[], None]):
        self.name = name
        self.size = size
        self.on_exit = on_exit
        self._lock = threading.Lock()
        self._idle: list[Worker] = []  # last idle on top
        self._backlog: collections.deque[Job] = collections.deque()
        self._threads: list[Worker] = []
        self._started = 0
        self._closing = False
        self._dispatch_pending = False
        self._all_exited = threading.Event()
        self._all_exited.set()
        self.pid = os.getpid()
        _ALL.add(self)

    def submit(self, job: Job, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Queue ``job``; with ``loop`` (the caller's, running), threads are woken when it turns.

        The tasks a loop resumes in one turn often submit a call each:
        handing them over at the end of the turn wakes a thread once, and
        not while the loop still holds the GIL to resume the other tasks.
        """
        with self._lock:
            if self._closing:
                raise RuntimeError(f"{self.name} is closed")
            self._backlog.append(job)
            if loop is not None:
                job.mailbox.arm(loop, self)
            if self._dispatch_pending:
                return
            if loop is None:
                self._dispatch_locked()
                return
            self._dispatch_pending = True
        loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        with self._lock:
            self._dispatch_pending = False
            self._dispatch_locked()

    def _dispatch_locked(self) -> None:
        backlog = self._backlog
        while backlog and self._idle:
            self._idle.pop().inbox.put(backlog.popleft())
        while backlog and len(self._threads) < self.size:
            self._started += 1
            worker = Worker(self, self._started)
            self._threads.append(worker)
            self._all_exited.clear()
            worker.inbox.put(backlog.popleft())
            worker.start()

    def _next(self, worker: Worker) -> Job | None:
        with self._lock:
            if self._backlog:
                return self._backlog.popleft()
            if self._closing:
                return None
            self._idle.append(worker)
        worker.wake_loops()
        return worker.inbox.get()

    def _exited(self, worker: Worker) -> None:
        with self._lock:
            if worker in self._threads:
                self._threads.remove(worker)
            if not self._threads:
                self._all_exited.set()

    def close(self) -> None:
        """Stop taking jobs; each thread ends (closing its connection) once the backlog is done."""
        with self._lock:
            self._dispatch_locked()  # what was submitted still runs
            self._closing = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.inbox.put(None)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until every thread has ended (call it from a thread, not the loop)."""
        return self._all_exited.wait(timeout)

    @property
    def closed(self) -> bool:
        return self._closing


_ALL: weakref.WeakSet[Workers] = weakref.WeakSet()


def _forget_threads_after_fork() -> None:
    # A forked child has none of its parent's threads: its groups start their own.
    global _STATE
    _STATE = threading.Lock()
    for group in list(_ALL):
        group._lock = threading.Lock()
        group._idle, group._threads = [], []
        group._backlog.clear()
        group._dispatch_pending = False
        group._all_exited = threading.Event()
        group._all_exited.set()
        group.pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads_after_fork)
