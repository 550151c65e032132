"""``open_database_async(url, coalesce=True)``: single aio calls of many tasks written as one Tick.

On SQLite the calls a ``Tick`` takes (checkpoint, record_health,
begin/complete_segment, record_many) made by several tasks at about the same
time are written by one job in one transaction (stream_state.coalesce). What
a caller relies on is that of the single call: a returned call is committed
(invariant 1 for a begun segment), its own refusal is its own, its task's
calls keep their order. On PostgreSQL ``coalesce`` changes nothing; the same
tests run there and hold by the per-call path.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from stream_state import (
    InvalidTransition,
    MetricSample,
    Recording,
    SegmentState,
    Stream,
    Tick,
    ValidationError,
    aio,
)
from tests.test_aio import T0, at, run_async


def coalesced(backend: Any, body: Any) -> Any:
    return run_async(backend, body, coalesce=True)


async def cams(n: int) -> list[Stream]:
    return [await aio.register(f"cam-{i}", f"rtsp://10.0.0.{i + 1}/s") for i in range(n)]


def test_gathered_calls_return_once_committed_and_share_one_transaction(backend, monkeypatch):
    commits: list[int] = []
    real_commit = Tick.commit

    def counting(tick: Tick) -> Any:
        commits.append(len(tick))
        return real_commit(tick)

    monkeypatch.setattr(Tick, "commit", counting)

    async def body(db: aio.AsyncStateDatabase) -> None:
        streams = await cams(10)
        segments = await asyncio.gather(
            *(aio.begin_segment(s, f"/rec/{s.name}/0.mp4", started_at=T0) for s in streams)
        )
        # A returned begin is a committed row (invariant 1): it has its id and index,
        # and a reader thread (which sees only commits) finds it.
        assert all(isinstance(r, Recording) and r.id and r.segment_index == 0 for r in segments)
        assert await aio.count(Recording.select()) == 10
        changed = await asyncio.gather(
            *(aio.checkpoint(r, 1000 + i, at=at(1)) for i, r in enumerate(segments)),
            *(aio.record_health(s, "healthy", at=at(1)) for s in streams),
            *(aio.record_many([("fps", 15.0, s, None, at(1))]) for s in streams),
        )
        assert changed[10:20] == [True] * 10, "each caller hears its own health change"
        assert changed[20:] == [1] * 10
        assert await aio.count(MetricSample.select()) == 10
        sizes = dict(await aio.fetch(Recording.select(Recording.id, Recording.size_bytes).tuples()))
        assert [sizes[r.id] for r in segments] == [1000 + i for i in range(10)]
        assert segments[3].size_bytes == 1003, "the caller's object shows what was written"
        assert await aio.record_health(streams[0], "healthy", at=at(2)) is False
        done = await aio.complete_segment(segments[0], ended_at=at(3), size_bytes=5)
        assert done is segments[0] and done.state == SegmentState.COMPLETE
        if backend.name == "sqlite":
            assert 10 in commits, "ten tasks' begins in one turn of the loop: one tick"
            assert len(commits) <= 6
        else:
            assert commits == [], "PostgreSQL keeps its per-call path"

    coalesced(backend, body)


def test_a_refused_call_raises_to_its_caller_only_and_the_others_commit(backend):
    async def body(db: aio.AsyncStateDatabase) -> None:
        a, b, c = await cams(3)
        closed = await aio.begin_segment(a, "/rec/a.mp4", started_at=T0)
        await aio.complete_segment(closed, ended_at=at(1), size_bytes=1)
        open_b = await aio.begin_segment(b, "/rec/b.mp4", started_at=T0)
        results = await asyncio.gather(
            aio.checkpoint(closed, 50, at=at(2)),
            aio.checkpoint(open_b, 60, at=at(2)),
            aio.begin_segment(c, "/rec/b.mp4", started_at=at(2)),  # the path is b's: refused
            aio.begin_segment(c, "/rec/c.mp4", started_at=at(2)),
            aio.record_health(c, "degraded", at=at(2)),
            return_exceptions=True,
        )
        assert isinstance(results[0], InvalidTransition), results[0]
        assert "not open" in str(results[0])
        assert results[1] is None
        assert not isinstance(results[2], Recording), "a path already used is refused"
        assert isinstance(results[3], Recording) and results[3].path.endswith("c.mp4")
        assert results[4] is True
        rows = dict(await aio.fetch(Recording.select(Recording.path, Recording.size_bytes).tuples()))
        assert rows["/rec/b.mp4"] == 60, "the others of the tick committed"
        assert rows["/rec/a.mp4"] == 1, "the refused checkpoint wrote nothing"
        assert "/rec/c.mp4" in rows
        fresh = await aio.first(Stream.select().where(Stream.id == c.id))
        assert fresh.health == "degraded"

    coalesced(backend, body)


def test_bad_input_raises_at_once_to_its_caller_and_the_others_are_written(backend):
    async def body(db: aio.AsyncStateDatabase) -> None:
        a, b = await cams(2)
        sa = await aio.begin_segment(a, "/rec/a.mp4", started_at=T0)
        sb = await aio.begin_segment(b, "/rec/b.mp4", started_at=T0)
        before = sb.size_bytes
        good = asyncio.ensure_future(aio.checkpoint(sa, 10, at=at(1)))
        bad = asyncio.ensure_future(aio.checkpoint(sb, -5, at=at(1)))
        worse = asyncio.ensure_future(aio.record_many([("fps", "fast", b, None, at(1))]))
        await asyncio.gather(good, bad, worse, return_exceptions=True)
        assert good.result() is None
        assert isinstance(bad.exception(), ValidationError)
        assert (bad.exception().field, bad.exception().value) == ("size_bytes", -5)
        assert isinstance(worse.exception(), ValidationError)
        assert "fast" in str(worse.exception())
        rows = dict(await aio.fetch(Recording.select(Recording.path, Recording.size_bytes).tuples()))
        assert rows == {"/rec/a.mp4": 10, "/rec/b.mp4": before}

    coalesced(backend, body)


def test_a_completion_without_a_size_reads_the_files_size_off_the_loop(backend, tmp_path, monkeypatch):
    """The file's size is a stat, which a hung network mount turns into minutes: never on the loop
    (a gathered call validates there, and PostgreSQL's calls run there)."""
    threads: list[threading.Thread] = []
    real_size = Recording._size_on_disk

    def size_on_disk(self: Recording, default: int | None = None) -> int:
        threads.append(threading.current_thread())
        return real_size(self, default)

    monkeypatch.setattr(Recording, "_size_on_disk", size_on_disk)
    media = tmp_path / "a.mp4"
    media.write_bytes(b"x" * 1234)

    async def body(db: aio.AsyncStateDatabase) -> None:
        (cam,) = await cams(1)
        segment = await aio.begin_segment(cam, str(media), started_at=T0)
        done = await aio.complete_segment(segment, ended_at=at(2))
        assert done.size_bytes == 1234
        assert threads and threading.current_thread() not in threads
        gone = await aio.begin_segment(cam, str(tmp_path / "gone.mp4"), started_at=at(2))
        with pytest.raises(ValidationError, match="cannot be read") as refused:
            await aio.complete_segment(gone, ended_at=at(4))
        assert refused.value.field == "size_bytes"
        rows = dict(await aio.fetch(Recording.select(Recording.path, Recording.state).tuples()))
        assert rows == {str(media): SegmentState.COMPLETE.value, str(tmp_path / "gone.mp4"): "recording"}

    coalesced(backend, body)


def test_closing_writes_the_calls_already_made_and_leaves_no_thread_behind(backend):
    """A call gathered but not yet handed to the writer is a queued call: close writes it first,
    and no writer thread is started again behind the close."""

    def database_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("stream_state-sqlite-")]

    async def body(db: aio.AsyncStateDatabase) -> None:
        (cam,) = await cams(1)
        segment = await aio.begin_segment(cam, "/rec/a.mp4", started_at=T0)
        pending = asyncio.ensure_future(aio.checkpoint(segment, 4321, at=at(1)))
        await asyncio.sleep(0)  # the call has joined the pending tick; its tick has not started
        await aio.close_database_async(db)
        assert pending.done() and pending.exception() is None
        assert database_threads() == []
        # The models stay bound: a later call opens a new pool, and finds the write.
        assert await aio.fetch(Recording.select(Recording.size_bytes).tuples()) == [(4321,)]

    coalesced(backend, body)


def test_a_tasks_calls_keep_their_order_among_other_tasks(backend):
    async def one_stream(stream: Stream, rounds: int) -> list[int]:
        indexes = []
        for i in range(rounds):
            segment = await aio.begin_segment(stream, f"/rec/{stream.name}/{i}.mp4", started_at=at(10 * i))
            indexes.append(segment.segment_index)
            for k in range(3):
                await aio.checkpoint(segment, 100 * i + k, at=at(10 * i + k))
            await aio.record_health(stream, "healthy" if i % 2 else "degraded", at=at(10 * i + 5))
            await aio.complete_segment(segment, ended_at=at(10 * i + 9), size_bytes=100 * i + 7)
        return indexes

    async def body(db: aio.AsyncStateDatabase) -> None:
        streams = await cams(8)
        results = await asyncio.gather(*(one_stream(s, 5) for s in streams))
        assert results == [list(range(5))] * 8
        columns = (Recording.segment_index, Recording.size_bytes, Recording.state)
        rows = await aio.fetch(Recording.select(*columns))
        assert len(rows) == 40
        for row in rows:
            # The completion came after the checkpoints: had a later call committed first,
            # a checkpoint would have been refused (segment not open) or its size kept.
            assert (row.size_bytes, row.state) == (100 * row.segment_index + 7, SegmentState.COMPLETE)

    coalesced(backend, body)


def test_atomic_blocks_keep_their_own_transaction_and_others_wait_for_them(backend):
    async def body(db: aio.AsyncStateDatabase) -> None:
        a, b = await cams(2)
        sb = await aio.begin_segment(b, "/rec/b.mp4", started_at=T0)
        with pytest.raises(RuntimeError):
            async with aio.atomic():
                await aio.begin_segment(a, "/rec/a.mp4", started_at=T0)
                other = asyncio.ensure_future(aio.checkpoint(sb, 42, at=at(1)))
                await asyncio.sleep(0.05)
                if backend.name == "sqlite":
                    # Another task's gathered call waits for the block (which holds the writer).
                    assert not other.done()
                raise RuntimeError("the manager changed its mind")
        await other
        rows = dict(await aio.fetch(Recording.select(Recording.path, Recording.size_bytes).tuples()))
        assert rows == {"/rec/b.mp4": 42}, "the block's begin rolled back, the other call committed"

    coalesced(backend, body)


def test_a_call_cancelled_before_its_tick_starts_never_runs(backend):
    if backend.name != "sqlite":
        pytest.skip("the SQLite writer thread's gathered ticks")

    async def body(db: aio.AsyncStateDatabase) -> None:
        a, b, c = await cams(3)
        busy = asyncio.ensure_future(aio.run(time.sleep, 0.3))  # holds the writer thread
        await asyncio.sleep(0)
        first = asyncio.ensure_future(aio.begin_segment(a, "/rec/a.mp4", started_at=T0))
        partner = asyncio.ensure_future(aio.record_health(c, "degraded", at=at(1)))
        await asyncio.sleep(0.01)  # their tick is handed to the writer (behind the sleep)
        second = asyncio.ensure_future(aio.begin_segment(b, "/rec/b.mp4", started_at=T0))
        await asyncio.sleep(0.01)  # gathered for the next tick, which waits for the first
        second.cancel()
        first.cancel()  # too late: its tick started, and its partner keeps it: it commits
        for task in (first, second):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert await partner is True
        await busy
        while db._settling:
            await asyncio.sleep(0.01)
        paths = [p for (p,) in await aio.fetch(Recording.select(Recording.path).tuples())]
        assert paths == ["/rec/a.mp4"], "the first committed with its tick, the second never ran"

        # The only caller of a tick gives up: the tick is nobody's and stops, as a single call does.
        busy = asyncio.ensure_future(aio.run(time.sleep, 0.2))
        await asyncio.sleep(0)
        lone = asyncio.ensure_future(aio.begin_segment(b, "/rec/b-lone.mp4", started_at=T0))
        await asyncio.sleep(0.01)
        lone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lone
        await busy
        while db._settling:
            await asyncio.sleep(0.01)
        # The cancelled begins took no index either.
        again = await aio.begin_segment(b, "/rec/b.mp4", started_at=at(1))
        assert again.segment_index == 0
        assert await aio.count(Recording.select()) == 2

    coalesced(backend, body)


def test_a_task_acting_as_its_own_session_writes_through_it_beside_gathered_calls(backend):
    """Session.acting() follows the task (a context variable): its calls are not another task's tick."""
    from stream_state.models.session import Session

    async def body(db: aio.AsyncStateDatabase) -> None:
        mine_cam, other_cam = await cams(2)
        mine = await aio.run(lambda: Session.open(label="acting", register=False))

        async def manager() -> None:
            with mine.acting():
                await aio.begin_segment(mine_cam, "/rec/mine.mp4", started_at=T0)

        results = await asyncio.gather(
            aio.begin_segment(other_cam, "/rec/other.mp4", started_at=T0),
            manager(),
            aio.record_health(other_cam, "degraded", at=at(1)),
        )
        assert results[2] is True
        owners = dict(await aio.fetch(Stream.select(Stream.name, Stream.owner_session_id).tuples()))
        assert owners["cam-0"] == mine.id
        assert owners["cam-1"] not in (None, mine.id), "the gathered calls wrote as the process's session"
        await aio.run(mine.close)

    coalesced(backend, body)
