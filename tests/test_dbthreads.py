"""The database threads behind ``stream_state.aio`` on SQLite (``stream_state.dbthreads``)."""

from __future__ import annotations

import asyncio
import threading

from stream_state import dbthreads


def test_a_finished_calls_result_reaches_the_loop_while_the_thread_runs_the_next():
    """A committed call must not look unfinished while the next job on its thread waits (for a lock, say).

    The thread used to hold its outcomes back while more jobs were queued:
    a caller's timeout around a write that had committed fired, and a retry
    would have written it twice.
    """
    release = threading.Event()

    async def main() -> str:
        loop = asyncio.get_running_loop()
        workers = dbthreads.Workers("test", 1, lambda: None)
        first = dbthreads.Job(lambda: "committed", (), {}, loop)
        blocked = dbthreads.Job(release.wait, (30.0,), {}, loop)  # the next job, stuck until released
        workers.submit(first, loop)
        workers.submit(blocked, loop)
        try:
            # Without the fix this waits for `blocked`, which waits for us: the timeout
            # only turns that deadlock into a failure.
            return await asyncio.wait_for(first.future, 10.0)
        finally:
            release.set()
            await blocked.future
            workers.close()

    assert asyncio.run(main()) == "committed"


def test_an_outcome_held_back_by_a_busy_thread_reaches_the_loop_on_its_flush_timer():
    """A busy thread may skip waking the loop, but the loop's flush timer takes the outcome anyway.

    While more jobs wait, a thread leaves its outcomes without waking the
    loop (one wake-up for several calls); the loop's own timer (every
    ``FLUSH_AFTER`` while it has calls on a thread) drains them, so a call
    is seen finished even though the job after it never ends on its own.
    """
    release = threading.Event()
    seen: dict[str, object] = {}
    looked = threading.Event()

    def long_job() -> None:
        worker = dbthreads.current_worker()
        assert worker is not None
        # The first call's outcome was left without a wake-up (the thread had this job waiting).
        seen["held back"] = first.mailbox in worker.unwoken
        looked.set()
        release.wait(30.0)

    async def main() -> str:
        nonlocal first
        loop = asyncio.get_running_loop()
        workers = dbthreads.Workers("test", 1, lambda: None)
        first = dbthreads.Job(lambda: "committed", (), {}, loop)
        blocked = dbthreads.Job(long_job, (), {}, loop)
        workers.submit(first, loop)
        workers.submit(blocked, loop)
        try:
            result = await asyncio.wait_for(first.future, 10.0)  # the bound only guards a deadlock
            seen["still running"] = not blocked.future.done()
            await loop.run_in_executor(None, looked.wait, 10.0)
            return result
        finally:
            release.set()
            await blocked.future
            workers.close()

    first: dbthreads.Job
    assert asyncio.run(main()) == "committed"
    assert seen == {"held back": True, "still running": True}
