"""The asyncio face (stream_state.aio): the same rules as the sync API, many tasks, a loop never blocked.

Every test runs its coroutine with ``asyncio.run`` inside a plain test, on
SQLite and (with ``STREAM_STATE_TEST_PG_URL``) PostgreSQL, on a database of
its own opened by ``aio.open_database_async``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import os
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import peewee as pw
import pytest

from stream_state import (
    AlreadyExists,
    DatabaseUnavailable,
    Event,
    InvalidTransition,
    MetricSample,
    MetricSeries,
    NotFound,
    Recording,
    SegmentState,
    Stream,
    StreamStateError,
    ValidationError,
    aio,
    open_database,
)
from stream_state.database import code_schema_version, schema_version
from stream_state.models import database_proxy
from stream_state.restore import Restorer
from stream_state.states import EventType

T0 = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)
URI = "rtsp://viewer:secret@10.0.0.1/stream1"
REPO_ROOT = Path(__file__).resolve().parent.parent

# Generous: a task switch plus one statement on a loaded CI machine. A
# synchronous segment cycle called from the loop blocks it for its whole
# duration; 50 streams' worth blocks it for seconds (see LagMeter's self-test).
MAX_LOOP_LAG = 0.25


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def run_async(backend, body: Callable[[aio.AsyncStateDatabase], Awaitable[Any]], **open_kwargs: Any) -> Any:
    """Open a fresh migrated database for asyncio, run ``body(db)`` in a new loop, close it."""
    url, params = backend.new_target()
    previous = database_proxy.obj
    if os.environ.get("STREAM_STATE_TEST_AIO_COALESCE") == "1":
        # Every test of this file once more with the single calls gathered into ticks
        # (tests/test_aio_coalesce.py tests what that adds).
        open_kwargs.setdefault("coalesce", True)

    async def main() -> Any:
        db = await aio.open_database_async(url, **params, **open_kwargs)
        try:
            return await body(db)
        finally:
            await aio.close_database_async(db)

    try:
        return asyncio.run(main())
    finally:
        database_proxy.initialize(previous)


class LagMeter:
    """Sleeps 5 ms again and again in the loop and keeps its worst overshoot."""

    def __init__(self, period: float = 0.005):
        self.period = period
        self.worst = 0.0
        self.ticks = 0

    async def __aenter__(self) -> LagMeter:
        async def tick() -> None:
            loop = asyncio.get_running_loop()
            while True:
                before = loop.time()
                await asyncio.sleep(self.period)
                self.worst = max(self.worst, loop.time() - before - self.period)
                self.ticks += 1

        self._task = asyncio.create_task(tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(2 * self.period)  # a ticker held up by a block reports it when it runs
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# --- packaging --------------------------------------------------------------------------


def test_stream_state_imports_without_the_async_extra_and_aio_says_what_to_install():
    probe = (
        "import sys\n"
        "for name in ('greenlet', 'aiosqlite', 'asyncpg'):\n"
        "    sys.modules[name] = None  # as if not installed\n"
        "import stream_state\n"
        "assert 'playhouse.pwasyncio' not in sys.modules\n"
        "try:\n"
        "    import stream_state.aio\n"
        "except ImportError as exc:\n"
        "    assert isinstance(exc, stream_state.StreamStateError), type(exc)\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported without greenlet')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'stream_state[async]'" in result.stdout


def test_sqlite_needs_no_async_driver_and_a_missing_one_is_named_before_connecting(tmp_path):
    """SQLite's calls run on database threads (plain sqlite3); PostgreSQL's need asyncpg, said at once."""
    probe = (
        "import asyncio, sys\n"
        "sys.modules['aiosqlite'] = None\n"
        "sys.modules['asyncpg'] = None\n"
        "from stream_state import aio\n"
        "async def main():\n"
        f"    async with aio.open_database_async({str(tmp_path / 'x.db')!r}):\n"
        "        print((await aio.register('cam-1', 'rtsp://10.0.0.1/s')).name)\n"
        "asyncio.run(main())\n"
        "try:\n"
        "    asyncio.run(aio.open_database_async('postgresql://127.0.0.1:1/nowhere'))\n"
        "except aio.AsyncSupportMissing as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    registered, missing = result.stdout.splitlines()
    assert registered == "cam-1"
    assert "asyncpg" in missing and "stream_state[async]" in missing


# --- opening ----------------------------------------------------------------------------------


def test_opening_migrates_and_the_connections_keep_the_package_settings(backend):
    async def body(db: aio.AsyncStateDatabase) -> None:
        assert await aio.read(schema_version, db) == code_schema_version()
        if backend.name == "sqlite":
            assert stat.S_IMODE(os.stat(db.database).st_mode) == 0o600, "camera passwords inside"

            def pragmas() -> dict[str, Any]:
                names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout", "cache_size")
                return {name: db.execute_sql(f"PRAGMA {name}").fetchone()[0] for name in names}

            assert await aio.read(pragmas) == {
                "journal_mode": "wal",
                "synchronous": 1,  # NORMAL
                "foreign_keys": 1,
                "busy_timeout": 30_000,
                "cache_size": -32768,
            }
            assert db._lock_type == "IMMEDIATE"

    run_async(backend, body)


def test_the_models_must_be_bound_to_an_async_database(db):
    with pytest.raises(DatabaseUnavailable, match="synchronous database"):
        asyncio.run(aio.register("cam-1", URI))


def test_async_with_opens_and_closes(tmp_path):
    previous = database_proxy.obj

    async def main() -> int:
        async with aio.open_database_async(tmp_path / "state.db") as db:
            cam = await aio.register("cam-1", URI)
            assert isinstance(aio.current_database(), aio.AsyncSqliteStateDatabase)
        assert db._pool is None, "the pool was closed"
        return cam.id

    try:
        assert asyncio.run(main()) == 1
    finally:
        database_proxy.initialize(previous)
    sync = open_database(tmp_path / "state.db")
    assert Stream.get_by_id(1).name == "cam-1"
    sync.close()


# --- the same rules -------------------------------------------------------------------------


def _sync(fn: Callable[..., Any]) -> Any:
    async def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)  # runs (and raises) when awaited, as a coroutine does

    return staticmethod(call)


class SyncFace:
    """The synchronous API under aio's names, so one script drives both faces."""

    register = _sync(Stream.register)
    by_name = _sync(Stream.by_name)
    update_config = _sync(lambda s, *a: s.update_config(*a))
    set_desired = _sync(lambda s, *a, **k: s.set_desired(*a, **k))
    set_status = _sync(lambda s, *a, **k: s.set_status(*a, **k))
    record_health = _sync(lambda s, *a, **k: s.record_health(*a, **k))
    remove = _sync(lambda s: s.remove())
    begin_segment = _sync(lambda s, *a, **k: s.begin_segment(*a, **k))
    checkpoint = _sync(lambda r, *a, **k: r.checkpoint(*a, **k))
    complete_segment = _sync(lambda r, *a, **k: r.complete_segment(*a, **k))
    fail = _sync(lambda r, *a, **k: r.fail(*a, **k))
    delete_file = _sync(lambda r: r.delete_file())
    record_event = _sync(Event.record)
    record_metric = _sync(MetricSample.record)
    record_many = _sync(MetricSample.record_many)
    restore = _sync(
        lambda now=None, *, dry_run=False, session=None: Restorer(session=session).restore(
            now, dry_run=dry_run
        )
    )
    shutdown = _sync(lambda now=None, *, session=None: Restorer(session=session).shutdown(now))


async def manager_script(face: Any, tmp_path: Path, tag: str) -> list[str]:
    """A manager's day, including its mistakes; returns the errors it met, by type and message."""
    errors: list[str] = []

    async def refused(call: Awaitable[Any]) -> None:
        try:
            await call
        except StreamStateError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        else:
            errors.append("no error")

    files = tmp_path / tag
    files.mkdir()
    cam = await face.register("cam-1", URI, {"fps": 15, "password": "p"}, recording=True)
    other = await face.register("cam-2", "rtsp://10.0.0.2/s")
    await face.restore(at(0), session="first")
    await refused(face.register("cam 3\n", URI))
    await face.update_config(cam, {"fps": 30, "password": "q"})
    await face.set_desired(other, enabled=False)
    await refused(face.set_status(cam, "running"))
    await face.set_status(cam, "starting", at=at(1))
    await face.set_status(cam, "running", reason="connected", at=at(2))
    await face.record_health(cam, "healthy", at=at(2))
    await face.record_health(cam, "healthy", at=at(3))
    await face.record_health(cam, "degraded", reason="fps dropped", data={"fps": 9}, at=at(4))
    first = await face.begin_segment(cam, files / "0.mp4", started_at=at(10), storage="disk1")
    await face.checkpoint(first, 1000, at=at(15))
    second = await face.begin_segment(cam, files / "1.mp4", started_at=at(19.9), metadata={"codec": "h264"})
    await face.complete_segment(first, ended_at=at(20), size_bytes=2000)
    await refused(face.complete_segment(first, ended_at=at(21), size_bytes=2000))
    await refused(face.begin_segment(cam, files / "1.mp4", started_at=at(21)))
    await refused(face.checkpoint(second, -1))
    await face.complete_segment(second, ended_at=at(30), size_bytes=3000, metadata={"frames": 450})
    third = await face.begin_segment(cam, files / "2.mp4", started_at=at(30))
    await face.fail(third, "encoder crashed", at=at(31))
    (files / "0.mp4").write_bytes(b"x" * 2000)
    assert await face.delete_file(first) == 2000
    await face.record_event("note", cam, message=f"reconnect to {URI}", data={"n": 1}, at=at(32))
    await refused(face.record_event("note", 999, at=at(32)))
    await face.record_metric("fps", 14.5, cam, {"encoder": "hw"}, at(33))
    batch = [("fps", 15.0, cam, {"encoder": "hw"}, at(34)), ("bitrate_kbps", 800.0, cam, None, at(34))]
    assert await face.record_many(batch) == 2
    await refused(face.record_many([("fps", float("nan"), cam)]))
    await refused(face.record_many([("fps", 1.0, 999, None, at(35))]))
    open_at_crash = await face.begin_segment(cam, files / "3.mp4", started_at=at(40))
    (files / "3.mp4").write_bytes(b"x" * 500)
    os.utime(files / "3.mp4", (at(45).timestamp(), at(45).timestamp()))
    state = await face.restore(at(60), session="second")  # as after a crash
    assert [r.recording_id for r in state.repairs] == [open_at_crash.id]
    assert state.stream("cam-1").next_segment_index == 4
    await refused(face.by_name("cam-404"))
    assert await face.remove(other) is True
    await refused(face.begin_segment(other, files / "x.mp4"))
    report = await face.shutdown(at(70), session="second")
    assert report.closed == ()
    return errors


def _comparable(files: Path) -> dict[str, list[tuple]]:
    """What the script wrote, without ids, the files' directory and wall-clock times."""

    def path(value: str) -> str:
        return Path(value).name

    streams = [
        (s.name, s.uri, s.config, s.desired_enabled, s.desired_recording, str(s.status), str(s.health),
         s.last_seen_at, s.next_segment_index, s.removed_at is not None)
        for s in Stream.select().order_by(Stream.id)
    ]  # fmt: skip
    recordings = [
        (path(r.path), r.storage, r.segment_index, r.started_at, r.ended_at, r.checkpoint_at, r.size_bytes,
         str(r.state), r.metadata)
        for r in Recording.select().order_by(Recording.id)
    ]  # fmt: skip
    events = [
        (e.type, e.stream_id, str(e.severity), (e.message or "").replace(str(files), "~"),
         _without_paths(e.data))
        for e in Event.select().order_by(Event.id)
    ]  # fmt: skip
    samples = [
        (s.series.key, s.ts, s.value)
        for s in MetricSample.select(MetricSample, MetricSeries).join(MetricSeries).order_by(MetricSeries.key)
    ]
    return {"streams": streams, "recordings": recordings, "events": events, "samples": samples}


def _without_paths(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: (Path(v).name if k == "path" else _without_paths(v)) for k, v in data.items()}
    return data


def _messages_without_paths(errors: list[str], tmp_path: Path) -> list[str]:
    return [
        error.replace(str(tmp_path / "sync"), "~").replace(str(tmp_path / "async"), "~") for error in errors
    ]


def test_the_async_face_writes_exactly_what_the_sync_api_writes(backend, tmp_path):
    sync_db = backend.open()
    try:
        sync_errors = asyncio.run(manager_script(SyncFace, tmp_path, "sync"))
        sync_rows = _comparable(tmp_path / "sync")
    finally:
        sync_db.close_all() if isinstance(sync_db, pw.PostgresqlDatabase) else sync_db.close()

    async def body(db: aio.AsyncStateDatabase) -> tuple[list[str], dict[str, list[tuple]]]:
        errors = await manager_script(aio, tmp_path, "async")
        return errors, await aio.read(_comparable, tmp_path / "async")

    async_errors, async_rows = run_async(backend, body)

    assert _messages_without_paths(async_errors, tmp_path) == _messages_without_paths(sync_errors, tmp_path)
    assert [error.split(":")[0] for error in async_errors] == [
        "ValidationError",
        "InvalidTransition",
        "InvalidTransition",
        "AlreadyExists",
        "ValidationError",
        "NotFound",
        "ValidationError",
        "NotFound",
        "NotFound",
        "StreamRemoved",
    ]
    for table in ("streams", "recordings", "samples"):
        assert async_rows[table] == sync_rows[table], table
    assert [event[:3] for event in async_rows["events"]] == [event[:3] for event in sync_rows["events"]]
    assert async_rows["events"] == sync_rows["events"]


# --- what the coroutines return --------------------------------------------------------------


def test_returned_objects_need_no_bridge_and_queries_run_through_fetch(backend):
    async def body(db: aio.AsyncStateDatabase) -> None:
        cam = await aio.register("cam-1", URI)
        segment = await aio.begin_segment(cam, "/rec/a.mp4", started_at=T0)
        assert segment.stream.name == "cam-1", "no lazy load: the stream is already there"
        event = await aio.record_event("note", cam, at=T0)
        assert event.stream.name == "cam-1"
        assert (await aio.complete_segment(segment, ended_at=at(10), size_bytes=5)).state == "complete"

        rows = await aio.fetch(Recording.for_stream(cam))
        assert [row.path for row in rows] == ["/rec/a.mp4"]
        assert rows[0].stream_id == cam.id
        with pytest.raises(aio.MissingGreenletBridge):
            _ = rows[0].stream  # a lazy foreign key outside the bridge: join, or read stream_id
        joined = await aio.first(Recording.select(Recording, Stream).join(Stream))
        assert joined.stream.name == "cam-1"
        # registered, note (the session's claim of the stream aside)
        assert await aio.count(Event.select().where(Event.type != "stream_claimed")) == 2
        assert (await aio.by_name("cam-1")).id == cam.id
        with pytest.raises(NotFound):
            await aio.by_name("nope")

    run_async(backend, body)


def test_atomic_makes_several_calls_one_transaction(backend):
    async def body(db: aio.AsyncStateDatabase) -> None:
        cam = await aio.register("cam-1", URI)
        with pytest.raises(RuntimeError):
            async with aio.atomic():
                await aio.begin_segment(cam, "/rec/a.mp4", started_at=T0)
                await aio.record_event("note", cam, at=T0)
                raise RuntimeError("the manager changed its mind")
        assert await aio.count(Recording.select()) == 0
        assert await aio.count(Event.select().where(Event.type == "note")) == 0

        async with aio.atomic():
            segment = await aio.begin_segment(cam, "/rec/b.mp4", started_at=T0)
            with pytest.raises(AlreadyExists):
                await aio.begin_segment(cam, "/rec/b.mp4", started_at=T0)  # a savepoint rolls back
            async with aio.atomic():
                await aio.record_many([("fps", 15.0, cam, None, T0)])
            await aio.complete_segment(segment, ended_at=at(10), size_bytes=5)
        assert await aio.count(Recording.select().where(Recording.state == "complete")) == 1
        assert await aio.count(MetricSample.select()) == 1
        assert not db.in_transaction()

    run_async(backend, body)


def test_atomic_holds_across_other_awaits_its_reads_see_its_writes_and_others_see_only_commits(backend):
    """A task's atomic() block stays one transaction while the task awaits something else.

    On SQLite the block holds the writer (its calls run on the writer thread,
    inside the transaction): other tasks' reads go on and see only what was
    committed, their writes wait until the block ends and land after it.
    """

    async def body(db: aio.AsyncStateDatabase) -> None:
        cam = await aio.register("cam-1", URI)
        other = await aio.register("cam-2", URI.replace("10.0.0.1", "10.0.0.2"))
        # The process's session and its claims, committed first: on PostgreSQL a
        # session opened inside the block would stay invisible to the other task.
        await aio.record_health(cam, "healthy", at=T0)
        await aio.record_health(other, "healthy", at=T0)
        inside, outside_done = asyncio.Event(), asyncio.Event()
        order: list[str] = []

        async def holder() -> None:
            async with aio.atomic():
                await aio.begin_segment(cam, "/rec/a.mp4", started_at=T0)
                assert await aio.count(Recording.select()) == 1, "the block reads its own write"
                inside.set()
                await outside_done.wait()  # another task runs meanwhile
                await aio.record_event("note", cam, message="in the block", at=T0)
                order.append("block ends")
            order.append("block committed")

        async def outsider() -> None:
            await inside.wait()
            assert await aio.count(Recording.select()) == 0, "uncommitted rows stay invisible"
            write = asyncio.ensure_future(aio.record_event("note", other, message="outside", at=T0))
            await asyncio.sleep(0.05)
            if backend.name == "sqlite":
                assert not write.done(), "a write waits while another task's block holds the writer"
            outside_done.set()
            await write
            order.append("outside written")

        await asyncio.gather(holder(), outsider())
        if backend.name == "sqlite":
            assert order == ["block ends", "block committed", "outside written"]
            notes = await aio.fetch(Event.select().where(Event.type == "note").order_by(Event.id))
            assert [e.message for e in notes] == ["in the block", "outside"]
        assert await aio.count(Recording.select()) == 1

    run_async(backend, body)


def test_a_write_waits_for_an_atomic_block_at_most_acquire_timeout(backend):
    if backend.name != "sqlite":
        pytest.skip("SQLite's one writer: PostgreSQL's writers do not wait for each other's blocks")

    async def body(db: aio.AsyncStateDatabase) -> None:
        cam = await aio.register("cam-1", URI)
        inside, release = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with aio.atomic():
                await aio.record_health(cam, "degraded", at=T0)
                inside.set()
                await release.wait()

        task = asyncio.ensure_future(holder())
        await inside.wait()
        with pytest.raises(DatabaseUnavailable, match=r"atomic\(\) block held the writer"):
            await aio.record_event("note", cam, at=T0)
        release.set()
        await task
        assert await aio.count(Event.select().where(Event.type == "note")) == 0
        assert (await aio.by_name("cam-1")).health == "degraded"

    run_async(backend, body, acquire_timeout=0.2)


def test_a_call_cancelled_while_it_waits_for_the_writer_thread_never_runs(backend):
    if backend.name != "sqlite":
        pytest.skip("the SQLite writer thread's queue")

    async def body(db: aio.AsyncStateDatabase) -> None:
        cam = await aio.register("cam-1", URI)
        busy = asyncio.ensure_future(aio.run(time.sleep, 0.3))  # holds the writer thread
        queued = asyncio.ensure_future(aio.begin_segment(cam, "/rec/never.mp4", started_at=T0))
        await asyncio.sleep(0)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        await busy
        assert await aio.count(Recording.select()) == 0
        segment = await aio.begin_segment(cam, "/rec/next.mp4", started_at=T0)
        assert segment.segment_index == 0

    run_async(backend, body)


def test_an_acting_session_follows_the_task_into_its_calls(backend):
    """Session.acting() in a task: the calls it awaits write through that session (a context variable)."""
    from stream_state.models.session import Session

    async def body(db: aio.AsyncStateDatabase) -> None:
        cam = await aio.register("cam-1", URI)
        mine = await aio.run(lambda: Session.open(label="acting", register=False))

        async def manager() -> None:
            with mine.acting():
                await aio.begin_segment(cam, "/rec/a.mp4", started_at=T0)

        await asyncio.gather(manager(), aio.record_event("note", None, at=T0))
        owner = await aio.read(lambda: Stream.get_by_id(cam.id).owner_session_id)
        assert owner == mine.id
        await aio.run(mine.close)

    run_async(backend, body)


# --- many tasks -------------------------------------------------------------------------------

STREAMS = 50
SEGMENTS = 8


async def drive(stream: Stream, tmp_path: Path, segments: int = SEGMENTS) -> None:
    """One stream's manager task: what tests/test_concurrency.py does in a thread, awaited."""
    await aio.set_status(stream, "starting")
    await aio.set_status(stream, "running")
    health_cycle = ["healthy", "degraded", "healthy", "unhealthy"]
    previous = None
    for i in range(segments):
        when = at(10 * i)
        segment = await aio.begin_segment(stream, tmp_path / f"{stream.name}-{i}.mp4", started_at=when)
        await aio.checkpoint(segment, 100 * i, at=when)
        if previous is not None:  # splitmuxsink closes N after opening N+1
            await aio.complete_segment(previous, ended_at=when, size_bytes=1000 + i)
        previous = segment
        await aio.record_health(stream, health_cycle[i % 4], at=when)
        fps = {
            "name": "fps",
            "value": 15.0 - i % 2,
            "stream": stream,
            "labels": {"encoder": "hw"},
            "at": when,
        }
        await aio.record_many(
            [fps, {"name": "bitrate_kbps", "value": float(i), "stream": stream, "at": when}]
        )
        await aio.record_event("tick", stream, data={"i": i}, at=when)
    assert previous is not None
    await aio.complete_segment(previous, ended_at=at(10 * segments), size_bytes=7)


def test_fifty_streams_in_one_loop_write_at_once_and_nothing_is_lost(backend, tmp_path):
    async def body(db: aio.AsyncStateDatabase) -> None:
        streams = [await aio.register(f"cam-{i}", f"rtsp://10.0.0.{i + 1}/s") for i in range(STREAMS)]
        results = await asyncio.gather(*(drive(s, tmp_path) for s in streams), return_exceptions=True)
        assert [r for r in results if r is not None] == [], "no task failed (no 'database is locked')"

        def check() -> None:
            assert Recording.select().count() == STREAMS * SEGMENTS
            assert Recording.select().where(Recording.state == SegmentState.COMPLETE.value).count() == (
                STREAMS * SEGMENTS
            )
            for stream in Stream.select():
                indexes = [r.segment_index for r in Recording.for_stream(stream)]
                assert indexes == list(range(SEGMENTS)), "each stream's indexes are dense, never shared"
                assert (stream.next_segment_index, stream.status) == (SEGMENTS, "running")
            assert MetricSample.select().count() == STREAMS * SEGMENTS * 2
            assert Event.select().where(Event.type == "tick").count() == STREAMS * SEGMENTS
            health = Event.select().where(Event.type == EventType.HEALTH_CHANGED).count()
            assert health == STREAMS * SEGMENTS, "healthy -> degraded -> healthy -> unhealthy: all changes"

        await aio.read(check)

    run_async(backend, body)


def test_more_tasks_than_pooled_connections_share_the_pool(backend):
    async def body(db: aio.AsyncStateDatabase) -> None:
        streams = [await aio.register(f"cam-{i}", URI.replace("10.0.0.1", f"10.0.1.{i}")) for i in range(20)]

        async def segments(stream: Stream) -> None:
            for i in range(3):
                segment = await aio.begin_segment(stream, f"/rec/{stream.name}/{i}.mp4", started_at=at(i))
                await asyncio.sleep(0.01)  # a long-lived task, idle between calls
                await aio.complete_segment(segment, ended_at=at(i + 1), size_bytes=1)

        await asyncio.gather(*(segments(s) for s in streams))
        assert await aio.count(Recording.select().where(Recording.state == "complete")) == 60

    run_async(backend, body, pool_size=2, acquire_timeout=20)


# --- the loop stays responsive ------------------------------------------------------------------


def test_the_lag_meter_sees_a_blocked_loop():
    """The meter the next test relies on fails when the loop is blocked as long as the bound."""

    async def main() -> float:
        async with LagMeter() as meter:
            await asyncio.sleep(0.02)
            time.sleep(MAX_LOOP_LAG + 0.05)  # what a blocking database call does to the loop
        return meter.worst

    assert asyncio.run(main()) > MAX_LOOP_LAG


def test_the_event_loop_is_never_blocked_long_while_fifty_tasks_write(backend, tmp_path):
    async def body(db: aio.AsyncStateDatabase) -> tuple[float, int, float]:
        streams = [await aio.register(f"cam-{i}", f"rtsp://10.0.0.{i + 1}/s") for i in range(STREAMS)]
        started = time.perf_counter()
        async with LagMeter() as meter:
            await asyncio.gather(*(drive(s, tmp_path, segments=4) for s in streams))
        elapsed = time.perf_counter() - started
        assert await aio.count(Recording.select()) == STREAMS * 4
        return meter.worst, meter.ticks, elapsed

    worst, ticks, elapsed = run_async(backend, body)
    # Called synchronously from the loop, these ~1,600 database calls would
    # hold it for the whole run (longer than the bound): the ticker would not
    # run at all until they were done. A machine busy with other work
    # stretches the run and its lags alike, so a lag that is a small part of
    # the run passes too: blocked, the lag would be about the whole run.
    bound = max(MAX_LOOP_LAG, elapsed / 8)
    assert worst < bound, f"the loop was blocked for {worst * 1000:.0f} ms of a {elapsed:.1f} s run"
    assert ticks >= elapsed / 0.05, "the ticker kept running throughout"


# --- the same errors for faults ----------------------------------------------------------------


def test_a_database_file_deleted_under_the_loop_is_a_clear_error(backend, tmp_path):
    if backend.name != "sqlite":
        pytest.skip("a SQLite file fault")

    async def body(db: aio.AsyncStateDatabase) -> None:
        cam = await aio.register("cam-1", URI)
        os.unlink(db.database)
        with pytest.raises(DatabaseUnavailable, match="deleted while in use"):
            await aio.begin_segment(cam, tmp_path / "x.mp4")
        with pytest.raises(DatabaseUnavailable, match="deleted while in use"):
            await aio.restore()

    run_async(backend, body)


def test_a_lost_postgres_connection_is_database_unavailable_then_recovers(backend):
    if backend.name != "postgres":
        pytest.skip("a PostgreSQL connection fault")

    def terminate(pid: int) -> None:
        from playhouse.db_url import parse

        killer = pw.PostgresqlDatabase(None)
        killer.init(**parse(backend.pg_url))
        with killer.connection_context():
            killer.execute_sql("SELECT pg_terminate_backend(%s)", (pid,))

    async def body(db: aio.AsyncStateDatabase) -> None:
        cam = await aio.register("cam-1", URI)
        with pytest.raises(DatabaseUnavailable, match="lost the connection"):
            async with aio.atomic():  # holds one connection, which the server then drops
                pid = await aio.read(lambda: db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])
                terminate(pid)
                await aio.record_health(cam, "healthy")
        assert await aio.record_health(cam, "healthy") is True, "the next call reconnects by itself"
        assert (await aio.by_name("cam-1")).health == "healthy"

    run_async(backend, body)


def test_validation_errors_leave_nothing_written(backend):
    async def body(db: aio.AsyncStateDatabase) -> None:
        cam = await aio.register("cam-1", URI)
        before = await aio.count(Event.select())
        with pytest.raises(ValidationError) as info:
            await aio.begin_segment(cam, "/rec/a.mp4", started_at=dt.datetime(2026, 1, 1))
        assert info.value.field == "started_at"
        with pytest.raises(InvalidTransition):
            await aio.set_status(cam, "running")  # not before "starting"
        assert await aio.count(Event.select()) == before
        assert await aio.count(Recording.select()) == 0

    run_async(backend, body)


def test_maintenance_runs_through_the_bridge_with_sqlite_scripts(backend):
    """Maintenance calls sqlite3's executescript on ``db.connection()``; the async connection has it."""
    from stream_state import maintenance

    async def body(db: aio.AsyncStateDatabase) -> None:
        cam = await aio.register("cam-1", URI)

        def fill() -> None:
            with db.atomic():
                for i in range(300):
                    Event.record("filler", cam, message="x" * 2000, data={"i": i}, at=T0)

        await aio.run(fill)
        await aio.run(lambda: Event.delete().where(Event.type == "filler").execute())
        report = await aio.run(maintenance.incremental_vacuum, pause_seconds=0)
        if backend.name == "sqlite":
            assert report.pages_freed > 100
        await aio.run(maintenance.vacuum)
        assert (await aio.read(maintenance.integrity_check)).ok

    run_async(backend, body)


# --- the verbs are the model methods' names -------------------------------------------------------

# aio verb -> the method it runs. Instance methods take the object first.
VERBS: dict[str, Any] = {
    "register": Stream.register,
    "by_name": Stream.by_name,
    "update_config": Stream.update_config,
    "set_desired": Stream.set_desired,
    "set_status": Stream.set_status,
    "record_health": Stream.record_health,
    "remove": Stream.remove,
    "begin_segment": Stream.begin_segment,
    "checkpoint": Recording.checkpoint,
    "complete_segment": Recording.complete_segment,
    "fail": Recording.fail,
    "delete_file": Recording.delete_file,
    "archive": Recording.archive,
    "record_event": Event.record,  # Event.record and MetricSample.record share a name
    "record_metric": MetricSample.record,
    "record_many": MetricSample.record_many,
    "restore": Restorer.restore,
    "shutdown": Restorer.shutdown,
}
SHARED_NAMES = {"record_event", "record_metric"}
# Methods without a verb of their own: query factories (``aio.fetch(Recording.for_stream(cam))``),
# batch jobs (``aio.run(Recording.archive_completed, ...)``) and the segment-state gate that the
# services (restore, check, retention) go through, which a manager does not call.
NO_VERB = {
    Recording.transition,
    Recording.transition_each,  # the gate's batched form: a tick's completions (aio.tick)
    Recording.finish_delete,
    Recording.create_segment,
    Stream.active,
    Recording.open_segments,
    Recording.for_stream,
    Recording.archive_completed,
    Event.build,
    MetricSample.for_series,
    MetricSeries.matching,
    MetricSeries.existing_id,
    MetricSeries.set_resolution,  # a setting, not a manager's call: aio.run(series.set_resolution, 1)
    Restorer.take_over,  # claim_streams' repairs at a takeover (stream_state.sessions), not a manager's call
}
BRIDGE = {
    "open_database_async",
    "close_database_async",
    "current_database",
    "run",
    "read",
    "fetch",
    "first",
    "count",
    "atomic",
    "tick",  # gathers stream_state.Tick calls (no database) and commits them: the bridge of Tick.commit
    "commit_tick",
    "keep_alive",  # the session's lease, renewed by a task on the loop
}


def _methods(cls: type) -> dict[str, Any]:
    return {
        name: getattr(cls, name)
        for name, member in vars(cls).items()
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, classmethod))
    }


def _parameters(fn: Any, *, drop_first: bool) -> list[tuple[str, Any, Any]]:
    params = list(inspect.signature(fn).parameters.values())
    return [(p.name, p.kind, p.default) for p in params[1 if drop_first else 0 :]]


def test_every_aio_function_is_a_verb_or_part_of_the_bridge():
    functions = {name for name in aio.__all__ if inspect.isfunction(getattr(aio, name))}
    assert functions == set(VERBS) | BRIDGE
    assert all(inspect.iscoroutinefunction(getattr(aio, name)) for name in VERBS)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_an_aio_verb_has_its_methods_name_and_parameters(verb):
    method = VERBS[verb]
    owner = method.__qualname__.split(".")[0]
    if verb in SHARED_NAMES:
        assert verb == f"{method.__name__}_{ {'Event': 'event', 'MetricSample': 'metric'}[owner] }"
    else:
        assert verb == method.__name__
    is_instance_method = inspect.isfunction(method)  # a classmethod comes bound to its class
    expected = _parameters(method, drop_first=is_instance_method and owner != "Restorer")
    if owner == "Restorer":
        # Restorer's own keyword arguments (not the database: aio has one) come along.
        expected = expected[1:]  # self
        expected += [p for p in _parameters(Restorer.__init__, drop_first=True) if p[0] != "db"]
    got = _parameters(getattr(aio, verb), drop_first=is_instance_method and owner != "Restorer")
    assert got == expected


def test_every_model_method_has_an_aio_verb_or_is_left_to_the_bridge():
    methods = {
        f"{cls.__name__}.{name}": fn
        for cls in (Stream, Recording, Event, MetricSample, MetricSeries, Restorer)
        for name, fn in _methods(cls).items()
    }
    covered = set(VERBS.values()) | NO_VERB
    missing = sorted(name for name, fn in methods.items() if fn not in covered)
    assert missing == [], "add an aio verb of the same name (or list it in NO_VERB): " + ", ".join(missing)


def test_the_names_of_before_still_work_and_warn():
    for old, new in {
        "get_stream": "by_name",
        "remove_stream": "remove",
        "fail_segment": "fail",
        "delete_segment": "delete_file",
        "record_metrics": "record_many",
    }.items():
        with pytest.warns(DeprecationWarning, match=f"aio.{new}"):
            assert getattr(aio, old) is getattr(aio, new)
    with pytest.raises(AttributeError):
        aio.no_such_verb  # noqa: B018


# --- cancellation (issue 13, item 12) ------------------------------------------------------------


def _open_transactions(db: aio.AsyncStateDatabase, sqlite_connections: list[Any]) -> list[Any]:
    """Connections that sit inside a transaction between calls (none may)."""
    if backend_is_sqlite(db):
        return [c for c in sqlite_connections if _sqlite_in_transaction(c)]
    pool = db._pool
    if pool is None:
        return []
    return [h for h in pool._holders if h._con is not None and h._con.is_in_transaction()]


def _sqlite_in_transaction(conn: Any) -> bool:
    try:
        return bool(conn.in_transaction)
    except Exception:  # closed with its thread
        return False


def backend_is_sqlite(db: aio.AsyncStateDatabase) -> bool:
    return isinstance(db, aio.AsyncSqliteStateDatabase)


async def _segment_cycle(cam: Stream, path: str, i: int) -> None:
    segment = await aio.begin_segment(cam, path, started_at=at(10 * i))
    await aio.checkpoint(segment, 100, at=at(10 * i + 5))
    await aio.complete_segment(segment, ended_at=at(10 * i + 9), size_bytes=1000)


def test_a_cancelled_call_rolls_back_and_returns_a_clean_connection_at_every_statement(backend, monkeypatch):
    """A cancellation at any statement of a segment cycle leaves no transaction open, no lock held,
    and the next call works; the cycle is all there or not there at all (per transaction).

    PostgreSQL: the task is cancelled while asyncpg has the statement. SQLite
    (a call runs whole on a database thread): the cancellation arrives while
    the thread runs the statement, as it does when ``asyncio.wait_for`` times
    out; the statement is interrupted, or the call stops before its next one.
    """
    plan: dict[str, Any] = {"cancel_at": -1, "seen": 0, "task": None}
    sqlite_connections: list[Any] = []

    def cancel_now() -> None:
        loop = plan["loop"]
        loop.call_soon_threadsafe(plan["task"].cancel)

    if backend.name == "sqlite":
        from stream_state import dbthreads

        real_connect = aio.AsyncSqliteStateDatabase._connect

        def traced(statement: str) -> None:  # runs on the database thread as each statement starts
            plan["seen"] += 1
            if plan["seen"] == plan["cancel_at"]:
                job = dbthreads.current_job()
                assert job is not None
                # What the loop does when the awaiting task is cancelled, at this very statement.
                job.cancel()
                cancel_now()

        def connect(self: Any) -> Any:
            conn = real_connect(self)
            conn.set_trace_callback(traced)
            sqlite_connections.append(conn)
            return conn

        monkeypatch.setattr(aio.AsyncSqliteStateDatabase, "_connect", connect)
    else:
        real = aio._PostgresConnection._execute

        async def execute(self, sql, params=None):
            plan["seen"] += 1
            if plan["seen"] == plan["cancel_at"]:
                # Cancelled while the driver has the statement: what asyncio.wait_for does on a timeout.
                asyncio.current_task().cancel()
            return await real(self, sql, params)

        monkeypatch.setattr(aio._PostgresConnection, "_execute", execute)

    async def body(db: aio.AsyncStateDatabase) -> None:
        cam = await aio.register("cam-1", URI)
        # The first write of the process opens its session and takes the stream: not a cycle's statements.
        await _segment_cycle(cam, "/rec/warm-up.mp4", 5000)
        plan["seen"] = 0
        await _segment_cycle(cam, "/rec/probe.mp4", 0)
        statements = plan["seen"]
        assert statements >= 6  # begin, checkpoint and complete each run a transaction
        plan["loop"] = asyncio.get_running_loop()
        for k in range(1, statements + 1):
            plan["seen"], plan["cancel_at"] = 0, k
            task = asyncio.ensure_future(_segment_cycle(cam, f"/rec/{k}.mp4", k))
            plan["task"] = task
            with pytest.raises(asyncio.CancelledError):
                await task
            plan["cancel_at"] = -1
            while db._settling:
                await asyncio.sleep(0.01)
            assert _open_transactions(db, sqlite_connections) == [], (
                f"cancelled at statement {k} of {statements}"
            )
            if backend.name == "sqlite":
                other = __import__("sqlite3").connect(db.database, timeout=0, isolation_level=None)
                other.execute("BEGIN IMMEDIATE")  # nobody holds the write lock
                other.execute("ROLLBACK")
                other.close()
            # The next cycle works on whatever connection the pool hands out.
            await _segment_cycle(cam, f"/rec/after-{k}.mp4", 1000 + k)

        def consistent() -> None:
            rows = list(Recording.select().where(Recording.stream == cam.id))
            stream = Stream.get_by_id(cam.id)
            assert stream.next_segment_index == len(rows), "index taken and row written together"
            for row in rows:
                if row.state == SegmentState.COMPLETE:
                    assert row.ended_at is not None and row.size_bytes == 1000
                else:
                    assert row.state == SegmentState.RECORDING and row.ended_at is None
            assert {f"/rec/after-{k}.mp4" for k in range(1, statements + 1)} <= {r.path for r in rows}

        await aio.read(consistent)

    run_async(backend, body)


def test_a_begin_that_fails_after_sqlite_opened_the_transaction_leaves_none_open(backend, monkeypatch):
    """A BEGIN that raises once SQLite has opened its transaction (an interrupt landing inside it):
    peewee enters no block for it, so the database rolls it back; the write lock is free at once
    and the thread's next call starts clean (a flaky cancellation run left a transaction open)."""
    if backend.name != "sqlite":
        pytest.skip("SQLite's BEGIN on a database thread; asyncpg's transactions are covered above")
    import sqlite3

    real_begin = pw.SqliteDatabase.begin
    failing = {"left": 0}

    def begin_then_fail(self: Any, *args: Any, **kwargs: Any) -> None:
        real_begin(self, *args, **kwargs)
        if failing["left"]:
            failing["left"] -= 1
            assert self._state.conn.in_transaction  # what the fix has to undo
            raise pw.OperationalError("interrupted")

    monkeypatch.setattr(pw.SqliteDatabase, "begin", begin_then_fail)

    async def body(db: aio.AsyncStateDatabase) -> None:
        cam = await aio.register("cam-1", URI)
        failing["left"] = 1
        # The driver's error (with coalesce: the tick's DatabaseUnavailable around it).
        with pytest.raises((pw.OperationalError, StreamStateError), match="interrupted"):
            await aio.begin_segment(cam, "/rec/refused.mp4", started_at=T0)
        other = sqlite3.connect(db.database, timeout=0, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the write lock is free: nobody kept the transaction
        other.execute("ROLLBACK")
        other.close()
        segment = await aio.begin_segment(cam, "/rec/next.mp4", started_at=T0)
        assert segment.segment_index == 0
        assert [r.path for r in await aio.read(lambda: list(Recording.select()))] == ["/rec/next.mp4"]

    run_async(backend, body)


def test_a_timed_out_begin_segment_while_another_process_writes_does_not_keep_the_lock(backend, tmp_path):
    """The reported case: wait_for(begin_segment, 0.3) times out behind another writer."""
    if backend.name != "sqlite":
        pytest.skip("SQLite's single write lock; PostgreSQL is covered by the cancellation test")

    async def body(db: aio.AsyncStateDatabase) -> None:
        import sqlite3

        cam = await aio.register("cam-1", URI)
        other = sqlite3.connect(db.database, timeout=5, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(aio.begin_segment(cam, tmp_path / "a.mp4", started_at=T0), 0.3)
        assert time.perf_counter() - started < 2, "a cancellation returns at once"
        other.execute("ROLLBACK")
        for _ in range(100):
            if not db._settling:
                break
            await asyncio.sleep(0.02)
        other.execute("BEGIN IMMEDIATE")  # would wait out the busy timeout with the lock leaked
        other.execute("ROLLBACK")
        segment = await aio.begin_segment(cam, tmp_path / "b.mp4", started_at=T0)
        assert segment.segment_index == 0 and await aio.count(Recording.select()) == 1

    run_async(backend, body, busy_timeout=3)


def test_a_tick_is_gathered_in_the_loop_and_committed_through_the_bridge(backend):
    import stream_state

    async def body(db: aio.AsyncStateDatabase) -> None:
        cam = await aio.register("cam-1", URI)
        segment = await aio.begin_segment(cam, "/rec/a.mp4", started_at=T0)
        async with aio.tick() as tick:
            tick.checkpoint(segment, 10, at=at(1))
            tick.record_health(cam, "degraded", at=at(1))
            tick.record_many([("fps", 1.0, cam, None, at(1)), ("kbps", 2.0, cam, None, at(1))])
        assert await aio.count(MetricSample.select()) == 2
        (row,) = await aio.fetch(Recording.select())
        assert row.size_bytes == 10 and cam.health == "degraded"
        await aio.complete_segment(segment, ended_at=at(2), size_bytes=11)
        stale = stream_state.Tick()
        stale.checkpoint(segment, 12, at=at(3))
        stale.record_many([("fps", 3.0, cam, None, at(3))])
        with pytest.raises(stream_state.TickFailed) as caught:
            await aio.commit_tick(stale)
        assert await aio.count(MetricSample.select()) == 2
        report = await aio.commit_tick(caught.value.remaining)
        assert report.samples == 1 and await aio.count(MetricSample.select()) == 3

    run_async(backend, body)


def test_a_tick_with_events_commits_through_the_async_drivers(backend):
    import stream_state

    async def body(db: aio.AsyncStateDatabase) -> None:
        cam = await aio.register("cam-1", URI)
        tick = stream_state.Tick()
        tick.event("motion", cam, message="zone 1", data={"zone": 1, "score": 0.5}, at=at(1))
        tick.event("motion", cam, data={"zone": 2}, at=at(2))
        await aio.commit_tick(tick)
        events = await aio.fetch(Event.select().where(Event.type == "motion").order_by(Event.id))
        assert [e.data for e in events] == [{"zone": 1, "score": 0.5}, {"zone": 2}]

    run_async(backend, body)
