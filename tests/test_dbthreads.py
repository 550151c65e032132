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
