"""Lost database: PostgreSQL going down and coming back, SQLite turning read-only.

PostgreSQL: the package talks to the server through ``tests/tcp_proxy.py``
(stopping the real server would break every other test using it). A
workload thread writes segments, events, metrics and health, journaling each
call that returned; the proxy is pulled for about a second, several times.
While it is out every call must raise ``DatabaseUnavailable`` (nothing else,
and without hanging); when it is back the workload must succeed again on its
own, and afterwards every journaled row must be in the database.

SQLite: a file cannot honestly be made read-only under an open connection.
Linux checks permissions when a file is opened, not on each write, and
refuses to remount a file system read-only while a file on it is open for
writing (EBUSY); only the kernel itself forces that after disk errors. So the
tests take the two forms a running manager really meets:

* the file system turned read-only between connections (a tmpfs remounted
  read-only inside an unprivileged user and mount namespace, so it works for
  root too, who ignores file modes but not a read-only mount);
* the database file made read-only (mode 0400) while the process runs: its
  open connection goes on writing, and every new connection (a new thread, a
  restart) is refused. Root ignores file modes, so when the tests run as root
  the child runs as an ordinary uid in a user namespace.

Either way each call must raise ``DatabaseUnavailable`` once, at once (no
retry loop, no busy-timeout wait), leak nothing, and work again by itself
when the file becomes writable.

STREAM_STATE_OUTAGES sets the number of PostgreSQL outages (default 3).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import peewee as pw
import pytest

from stream_state import (
    DatabaseUnavailable,
    Event,
    MetricSample,
    Recording,
    SegmentState,
    Stream,
    StreamStateError,
    open_database,
)
from stream_state.pgwatch import GRACE

from .dbdump import dump_tables
from .tcp_proxy import TcpProxy

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTAGES = int(os.environ.get("STREAM_STATE_OUTAGES", "3"))
OUTAGE_SECONDS = 1.0
CONNECT_TIMEOUT = 2
# A call may wait for a connect attempt (refused at once here, at most
# connect_timeout against a silent host); anything longer is a hang.
MAX_CALL_SECONDS = CONNECT_TIMEOUT + 3
RECOVERY_SECONDS = 15
T0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)


class _Figures:
    """Collects the figures of this module and prints them in the terminal summary."""

    lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.lines:
            terminalreporter.section("lost database: faults injected, rows lost")
            for line in self.lines:
                terminalreporter.write_line(line)


@pytest.fixture(autouse=True, scope="module")
def _figures(request):
    manager = request.config.pluginmanager
    if not manager.has_plugin("stream-state-outage-figures"):
        manager.register(_Figures(), "stream-state-outage-figures")
    yield


# --- PostgreSQL outage ---------------------------------------------------------------


@dataclass
class Call:
    op: str
    start: float
    end: float
    error: BaseException | None = None


@dataclass
class Workload:
    """One manager thread's writes, each call timed, each committed row journaled."""

    stream: Stream
    media: Path
    calls: list[Call] = field(default_factory=list)
    journal: list[tuple] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    crashed: BaseException | None = None

    @property
    def successes(self) -> int:
        return sum(1 for call in self.calls if call.error is None)

    def successes_after(self, moment: float) -> int:
        return sum(1 for call in self.calls if call.error is None and call.start > moment)

    def _call(self, fn, *args, **kwargs):
        """Call ``fn``; None if it raised a StreamStateError (recorded), anything else propagates."""
        start = time.monotonic()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.calls.append(Call(fn.__name__, start, time.monotonic(), exc))
            if not isinstance(exc, StreamStateError):
                raise
            return None
        self.calls.append(Call(fn.__name__, start, time.monotonic()))
        return result

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # recorded, and the test fails on it
            self.crashed = exc
        finally:
            with contextlib.suppress(Exception):
                Stream._meta.database.close()

    def _loop(self) -> None:
        n = 0
        step = "begin"
        segment: Recording | None = None
        while not self.stopping.is_set():
            n += 1
            at = T0 + dt.timedelta(seconds=n)
            if step == "begin":
                # A new path for each attempt: a begin whose reply was lost may
                # have committed, and its path is then taken.
                path = self.media / f"seg-{n:06d}.mp4"
                segment = self._call(self.stream.begin_segment, path, at)
                if segment is not None:
                    self.journal.append(("begin", segment.id, str(path), segment.segment_index))
                    step = "complete"
            elif step == "complete":
                assert segment is not None
                size = 1000 + segment.segment_index
                ended = segment.started_at + dt.timedelta(seconds=1)
                # Completing again after a lost reply is harmless: same values.
                if self._call(segment.complete_segment, ended, size) is not None:
                    self.journal.append(("complete", segment.id, size))
                    step = "event"
            elif step == "event":
                event = self._call(Event.record, "outage_tick", self.stream, data={"n": n})
                if event is not None:
                    self.journal.append(("event", event.id))
                    step = "metric"
            elif step == "metric":
                samples = [
                    ("outage_fps", 15.0, self.stream, {"k": "a"}, at),
                    ("outage_kbps", n, self.stream, None, at),
                ]
                if self._call(MetricSample.record_many, samples) is not None:
                    self.journal.append(("metrics", int(at.timestamp() * 1000)))
                    step = "health"
            elif self._call(self.stream.record_health, ("healthy", "degraded")[n % 2], at=at) is not None:
                step = "begin"
            if self.calls and self.calls[-1].error is not None:
                time.sleep(0.02)  # a manager would back off a little before retrying


def _traceback(exc: BaseException | None) -> str:
    return "".join(traceback.format_exception(exc)) if exc is not None else "-"


def _through_proxy(url: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _wait_for(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def test_postgres_outage_is_database_unavailable_then_recovers_and_loses_nothing(backend, tmp_path):
    if backend.name != "postgres":
        pytest.skip("a PostgreSQL server outage (SQLite has no server to lose)")
    url, params = backend.new_target()
    target = urlsplit(url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    proxy.start()
    proxied_url = _through_proxy(url, proxy.port)
    db = open_database(proxied_url, connect_timeout=CONNECT_TIMEOUT, **params)
    workload = None
    thread = None
    windows: list[tuple[float, float]] = []
    recovery: list[float] = []
    try:
        stream = Stream.register("cam-outage", "rtsp://10.0.0.1/s", recording=True)
        workload = Workload(stream, tmp_path)
        thread = threading.Thread(target=workload.run, name="outage-workload")
        thread.start()
        for _ in range(OUTAGES):
            before = workload.successes
            _wait_for(lambda b=before: workload.successes >= b + 20 or workload.crashed, 20, "the workload")
            assert workload.crashed is None, f"the workload crashed: {_traceback(workload.crashed)}"
            down = time.monotonic()
            proxy.stop()
            cut_at = time.monotonic()
            time.sleep(OUTAGE_SECONDS)
            proxy.start()
            up = time.monotonic()
            windows.append((down, up))
            recovery.append(
                _wait_for(
                    lambda u=up: workload.successes_after(u) > 5 or workload.crashed,
                    RECOVERY_SECONDS,
                    "the workload to recover by itself",
                )
            )
            assert workload.crashed is None, f"the workload crashed: {_traceback(workload.crashed)}"
            failed_inside = [c for c in workload.calls if c.error is not None and cut_at <= c.start <= up]
            assert failed_inside, "calls made while the server was away failed"
    finally:
        if workload is not None:
            workload.stopping.set()
        if thread is not None:
            thread.join(timeout=30)
        proxy.close()
        db.close_all()

    assert thread is not None and not thread.is_alive(), "the workload returned"
    assert workload.crashed is None, f"only StreamStateError may come out: {_traceback(workload.crashed)}"
    failures = [call for call in workload.calls if call.error is not None]
    wrong = [(c.op, repr(c.error)) for c in failures if not isinstance(c.error, DatabaseUnavailable)]
    assert wrong == [], "every failure during an outage is DatabaseUnavailable"
    outside = [
        (c.op, str(c.error))
        for c in failures
        if not any(c.end >= down and c.start <= up for down, up in windows)
    ]
    assert outside == [], "no call failed while the server was reachable"
    succeeded_inside = [
        c.op
        for c in workload.calls
        if c.error is None and any(down + 0.05 < c.start and c.end < up for down, up in windows)
    ]
    assert succeeded_inside == [], "nothing succeeded while the server was away"
    slowest = max(call.end - call.start for call in workload.calls)
    assert slowest < MAX_CALL_SECONDS, f"a call hung for {slowest:.1f} s"
    for call in failures:
        message = str(call.error)
        assert f"127.0.0.1:{proxy.port}" in message, f"the error names the server: {message}"
        assert "lost the connection" in message or "cannot connect" in message, message

    lost = _journal_rows_missing(url, params, workload.journal)
    assert lost == [], f"committed rows lost: {lost[:5]}"

    _Figures.lines.append(
        f"postgres outage: {len(windows)} outages of {OUTAGE_SECONDS:.1f} s injected, "
        f"{proxy.cut} live connections cut, {len(workload.calls)} calls "
        f"({len(failures)} DatabaseUnavailable, all inside an outage, 0 unexpected), "
        f"recovered by itself in {max(recovery):.2f} s at worst, slowest call {slowest:.2f} s, "
        f"{len(workload.journal)} committed rows journaled, {len(lost)} lost"
    )


def _journal_rows_missing(url: str, params: dict, journal: list[tuple]) -> list[tuple]:
    """Every journaled row, read back over a direct connection (not through the proxy)."""
    db = open_database(url, migrate=False, **params)
    try:
        missing = []
        for entry in journal:
            kind = entry[0]
            if kind == "begin":
                row = Recording.get_or_none(Recording.id == entry[1])
                if row is None or (row.path, row.segment_index) != (entry[2], entry[3]):
                    missing.append(entry)
            elif kind == "complete":
                row = Recording.get_or_none(Recording.id == entry[1])
                if row is None or (row.state, row.size_bytes) != (SegmentState.COMPLETE, entry[2]):
                    missing.append(entry)
            elif kind == "event":
                if Event.get_or_none(Event.id == entry[1]) is None:
                    missing.append(entry)
            elif kind == "metrics":
                found = MetricSample.select().where(MetricSample.ts == entry[1]).count()
                if found != 2:
                    missing.append(entry)
        return missing
    finally:
        db.close_all()


# --- SQLite turning read-only ------------------------------------------------------------

CALLS_WHILE_READ_ONLY = 40


def _unshare(*args: str) -> list[str] | None:
    """An ``unshare`` command prefix that works here, or None."""
    tool = shutil.which("unshare")
    if tool is None:
        return None
    probe = subprocess.run([tool, *args, "true"], capture_output=True, timeout=30)
    return [tool, *args] if probe.returncode == 0 else None


def _run_child(prefix: list[str], function: str, directory: Path) -> dict:
    code = f"from tests.test_pg_outage import {function}; {function}({str(directory)!r})"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [*prefix, sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"the child failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _open_fds() -> int:
    gc.collect()  # a descriptor only an unreachable object holds is not a leak
    return len(os.listdir("/proc/self/fd"))


def _attempts(stream: Stream, media: Path, count: int) -> list[dict]:
    """``count`` write calls against a read-only database: what each raised and how long it took."""
    calls = [
        lambda i: stream.begin_segment(media / f"ro-{i}.mp4"),
        lambda i: stream.record_health(("healthy", "degraded")[i % 2]),
        lambda i: Event.record("ro_tick", stream, data={"i": i}),
        lambda i: MetricSample.record("ro_fps", float(i), stream=stream),
        lambda i: stream.update_config({"fps": i}),
        lambda i: Recording.select().count(),
    ]
    outcomes = []
    for i in range(count):
        start = time.monotonic()
        try:
            calls[i % len(calls)](i)
            error = None
        except BaseException as exc:
            error = exc
        outcomes.append(
            {
                "call": i % len(calls),
                "error": type(error).__name__ if error else None,
                "message": str(error) if error else None,
                "seconds": time.monotonic() - start,
            }
        )
    return outcomes


def child_read_only_filesystem(directory: str) -> None:
    """Runs as root of a fresh user and mount namespace: a tmpfs that turns read-only."""
    mount = Path(directory)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "stream-state-test", str(mount)], check=True)
    path = mount / "state.db"
    db = open_database(path)
    cam = Stream.register("cam-1", "rtsp://10.0.0.1/s")
    committed = [
        cam.begin_segment(mount / f"seg-{i}.mp4").complete_segment(size_bytes=i).id for i in range(5)
    ]
    db.close()  # between connections: a remount is refused while a file is open for writing
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    fds = _open_fds()
    outcomes = _attempts(cam, mount, CALLS_WHILE_READ_ONLY)
    try:
        open_database(path)  # a restarted manager
        reopened = None
    except BaseException as exc:
        reopened = {"error": type(exc).__name__, "message": str(exc)}
    fds_after = _open_fds()
    subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
    recovered = cam.begin_segment(mount / "after.mp4")
    kept = [r.id for r in Recording.select().where(Recording.id.in_(committed))]
    print(
        json.dumps(
            {
                "path": str(path),
                "outcomes": outcomes,
                "reopened": reopened,
                "fds": [fds, fds_after],
                "recovered": recovered.id is not None,
                "committed": committed,
                "kept": kept,
            }
        )
    )


def child_read_only_file(directory: str) -> None:
    """Runs as an ordinary uid: the database file is made read-only (0400) while the process runs."""
    media = Path(directory)
    path = media / "state.db"
    db = open_database(path)
    cam = Stream.register("cam-1", "rtsp://10.0.0.1/s")
    committed = [
        cam.begin_segment(media / f"seg-{i}.mp4").complete_segment(size_bytes=i).id for i in range(5)
    ]
    os.chmod(path, 0o400)
    # This thread's connection was opened before: permissions are checked at
    # open, so it goes on writing (nothing is lost, nothing to report).
    committed.append(cam.begin_segment(media / "still-open.mp4").id)
    fds = _open_fds()
    result: dict = {}

    def new_thread() -> None:
        # A manager's worker thread opens its own connection: read-only now.
        try:
            result["outcomes"] = _attempts(cam, media, CALLS_WHILE_READ_ONLY)
        finally:
            db.close()

    worker = threading.Thread(target=new_thread)
    worker.start()
    worker.join()
    try:
        open_database(path)  # a restarted manager
        reopened = None
    except BaseException as exc:
        reopened = {"error": type(exc).__name__, "message": str(exc)}
    fds_after = _open_fds()
    os.chmod(path, 0o600)
    recovered: dict = {}

    def after() -> None:
        try:
            recovered["id"] = cam.begin_segment(media / "after.mp4").id
        finally:
            db.close()

    worker = threading.Thread(target=after)
    worker.start()
    worker.join()
    kept = [r.id for r in Recording.select().where(Recording.id.in_(committed))]
    print(
        json.dumps(
            {
                "path": str(path),
                "outcomes": result["outcomes"],
                "reopened": reopened,
                "fds": [fds, fds_after],
                "recovered": "id" in recovered,
                "committed": committed,
                "kept": kept,
            }
        )
    )


def _check_read_only_report(report: dict, what: str) -> None:
    outcomes = report["outcomes"]
    assert len(outcomes) == CALLS_WHILE_READ_ONLY
    wrong = [o for o in outcomes if o["error"] != "DatabaseUnavailable"]
    assert wrong == [], f"every call on the read-only database raises DatabaseUnavailable: {wrong[:3]}"
    assert all(report["path"] in o["message"] for o in outcomes), "the error names the database file"
    slowest = max(o["seconds"] for o in outcomes)
    # busy_timeout is 30 s: a call that waited or retried would show here.
    assert slowest < 1.0, f"a failing call took {slowest:.2f} s: it should fail at once"
    assert report["reopened"] is not None, "opening the read-only database again is refused"
    assert report["reopened"]["error"] == "DatabaseUnavailable", report["reopened"]
    assert report["recovered"], "writable again: the next call works without reopening anything"
    assert report["kept"] == report["committed"], "every committed row is still there"
    fds, fds_after = report["fds"]
    _Figures.lines.append(
        f"sqlite {what}: {len(outcomes)} calls, each one DatabaseUnavailable at once "
        f"(slowest {slowest * 1000:.1f} ms), {fds_after - fds} fds left open, recovered by itself, "
        f"{len(report['committed'])} committed rows kept, 0 lost"
    )


@pytest.fixture(scope="module")
def read_only_file_system(tmp_path_factory) -> dict:
    prefix = _unshare("--user", "--map-root-user", "--mount")
    if prefix is None:
        pytest.skip("needs unprivileged user and mount namespaces (unshare -rm) to mount a tmpfs")
    mount = tmp_path_factory.mktemp("read-only-fs")
    return _run_child(prefix, "child_read_only_filesystem", mount)


@pytest.fixture(scope="module")
def read_only_file(tmp_path_factory) -> dict:
    if os.geteuid() != 0:
        prefix: list[str] | None = []
    else:
        # Root writes through any file mode: run the child as an ordinary uid.
        prefix = _unshare("--user", "--map-user=1000", "--map-group=1000")
        if prefix is None:
            pytest.skip("running as root, and no user namespace to run the child as an ordinary uid")
    return _run_child(prefix, "child_read_only_file", tmp_path_factory.mktemp("read-only-file"))


def test_sqlite_on_a_file_system_turned_read_only_fails_clearly_and_recovers(read_only_file_system):
    _check_read_only_report(read_only_file_system, "file system remounted read-only")
    fds, fds_after = read_only_file_system["fds"]
    assert fds_after == fds, (
        f"{CALLS_WHILE_READ_ONLY} failing calls leaked {fds_after - fds} file descriptors"
    )


def test_sqlite_file_made_read_only_under_a_running_process_fails_clearly_and_recovers(read_only_file):
    _check_read_only_report(read_only_file, "file made read-only (0400) under a running process")


def test_refused_connects_to_a_read_only_file_leave_no_file_descriptor_behind(read_only_file):
    fds, fds_after = read_only_file["fds"]
    assert fds_after == fds, f"{CALLS_WHILE_READ_ONLY} failing calls left {fds_after - fds} descriptors open"


def test_a_read_only_sqlite_database_is_reported_as_read_only(read_only_file_system, read_only_file):
    for report in (read_only_file_system, read_only_file):
        for message in [o["message"] for o in report["outcomes"]] + [report["reopened"]["message"]]:
            assert "read-only" in message or "readonly" in message, message
            assert "damaged" not in message, message


def test_postgres_proxy_outage_needs_no_manual_reconnect_for_a_pooled_idle_connection(backend, tmp_path):
    """A connection idle in the pool when the server went away is replaced, not handed out dead forever."""
    if backend.name != "postgres":
        pytest.skip("a PostgreSQL server outage")
    url, params = backend.new_target()
    target = urlsplit(url)
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        db = open_database(_through_proxy(url, proxy.port), connect_timeout=CONNECT_TIMEOUT, **params)
        try:
            cam = Stream.register("cam-1", "rtsp://10.0.0.1/s")
            db.close()  # back to the pool, idle
            proxy.stop()
            with pytest.raises(DatabaseUnavailable):
                cam.record_health("healthy")
            proxy.start()
            errors = 0
            for _ in range(5):
                try:
                    assert cam.record_health("degraded") in (True, False)
                    break
                except DatabaseUnavailable:
                    errors += 1
            else:
                raise AssertionError("still failing after 5 calls with the server back")
            assert errors <= 1, "at most the one call that found the dead pooled connection fails"
            assert Stream.get_by_id(cam.id).health == "degraded"
        finally:
            db.close_all()


def _commit_after_losing_the_server(db, monkeypatch) -> None:
    """Make the next COMMIT of this thread's connection meet a server that has just gone away."""
    real_commit = db.commit
    pid = db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    killer = pw.PostgresqlDatabase(
        db.database, **{k: v for k, v in db.connect_params.items() if k != "options"}
    )

    def commit(*args, **kwargs):
        monkeypatch.setattr(db, "commit", real_commit)
        with killer:
            killer.execute_sql("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(db, "commit", commit)


COMMITTING_CALLS = {
    "set_status": lambda cam, media: cam.set_status("starting"),
    "begin_segment": lambda cam, media: cam.begin_segment(media / "lost-at-commit.mp4"),
    "update_config": lambda cam, media: cam.update_config({"fps": 30}),
    "record_health": lambda cam, media: cam.record_health("degraded"),
    "record_many": lambda cam, media: MetricSample.record_many([("fps", 1.0, cam), ("kbps", 2.0, cam)]),
}
_COMMIT_CASES = sorted(COMMITTING_CALLS)


@pytest.mark.parametrize("call", _COMMIT_CASES)
def test_a_connection_lost_at_commit_is_database_unavailable(backend, tmp_path, monkeypatch, call):
    if backend.name != "postgres":
        pytest.skip("a lost PostgreSQL connection")
    db = backend.open()
    try:
        cam = Stream.register("cam-1", "rtsp://10.0.0.1/s", {"fps": 15})
        before = dump_tables()
        _commit_after_losing_the_server(db, monkeypatch)
        with pytest.raises(DatabaseUnavailable, match="lost the connection") as info:
            COMMITTING_CALLS[call](cam, tmp_path)
        assert db.display_url in str(info.value), "the error names the server"
        assert dump_tables() == before, "nothing of the lost transaction was kept"
        assert COMMITTING_CALLS[call](cam, tmp_path), "the next call reconnects by itself"
    finally:
        db.close_all()


# --- a frozen server (issue 13, item 13) ----------------------------------------------------------

# What the README promises with the default settings: unresponsive_after (4 s) +
# probe_timeout (3 s) + one watchdog tick, or connect_timeout (4 s) for a new connection.
FROZEN_BOUND_SECONDS = 10


def _timed(fn):
    started = time.monotonic()
    try:
        fn()
    except StreamStateError as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def test_a_frozen_postgres_server_is_database_unavailable_within_the_bound_then_recovers(backend, tmp_path):
    """The server keeps its connections open but answers nothing: no call hangs past the bound,
    no raw driver error escapes, and the pool works again when the server answers."""
    if backend.name != "postgres":
        pytest.skip("a frozen PostgreSQL server")
    url, params = backend.new_target()
    target = urlsplit(url)
    figures = []
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        db = open_database(_through_proxy(url, proxy.port), **params)  # the package's defaults
        try:
            cam = Stream.register("cam-1", "rtsp://10.0.0.1/s", recording=True)
            first = cam.begin_segment(tmp_path / "0.mp4")
            proxy.freeze()
            # A statement on a pooled connection: the watchdog finds the server silent.
            seconds, error = _timed(lambda: cam.begin_segment(tmp_path / "1.mp4"))
            assert isinstance(error, DatabaseUnavailable), error
            assert seconds <= FROZEN_BOUND_SECONDS, seconds
            figures.append(f"statement {seconds:.1f} s")
            # A new connection to the frozen server: connect_timeout.
            seconds, error = _timed(lambda: cam.record_health("healthy"))
            assert isinstance(error, DatabaseUnavailable), error
            assert seconds <= FROZEN_BOUND_SECONDS, seconds
            figures.append(f"new connection {seconds:.1f} s")
            proxy.thaw()
            recovered = None
            for _ in range(3):
                try:
                    second = cam.begin_segment(tmp_path / "2.mp4")
                    recovered = second
                    break
                except DatabaseUnavailable:
                    continue
            assert recovered is not None, "the pool works again once the server answers"
            first.complete_segment(size_bytes=10)
            paths = {r.path for r in Recording.select().where(Recording.stream == cam.id)}
            assert str(tmp_path / "0.mp4") in paths and str(tmp_path / "2.mp4") in paths
            assert db.watchdog.cut >= 1
        finally:
            proxy.thaw()
            db.close_all()
    _Figures.lines.append("frozen PostgreSQL server -> DatabaseUnavailable after " + ", ".join(figures))


def test_postgres_timeouts_are_settable_and_never_a_raw_driver_error(backend):
    if backend.name != "postgres":
        pytest.skip("PostgreSQL's statement_timeout and lock_timeout")
    url, params = backend.new_target()
    db = open_database(f"{url}?statement_timeout=300&connect_timeout=3", lock_timeout=200, **params)
    try:
        assert db.execute_sql("SHOW statement_timeout").fetchone() == ("300ms",)
        assert db.execute_sql("SHOW lock_timeout").fetchone() == ("200ms",)
        assert db.connect_params["connect_timeout"] == "3" and db.connect_params["keepalives"] == 1
        with pytest.raises(DatabaseUnavailable, match="statement_timeout"):
            db.execute_sql("SELECT pg_sleep(2)")
        cam = Stream.register("cam-1", "rtsp://10.0.0.1/s")
        holder = pw.PostgresqlDatabase(db.database, **db.connect_params)
        with holder.atomic():
            holder.execute_sql("SELECT id FROM stream WHERE id = %s FOR UPDATE", (cam.id,))
            with pytest.raises(DatabaseUnavailable, match="lock_timeout"):
                cam.set_desired(recording=True)
        holder.close()
        assert cam.set_desired(recording=True) is True  # works once the lock is free
    finally:
        db.close_all()
    with pytest.raises(stream_state_errors().ValidationError, match="statement_timeout"):
        open_database(url, statement_timeout="soon", **params)


def test_a_transaction_left_idle_by_a_frozen_client_is_ended_and_its_locks_freed(backend):
    """A node frozen inside a transaction (a paused VM, a stopped process) kept its rows locked
    until it woke, so no other node could take its streams over. The server now ends a
    transaction whose client sent nothing for idle_in_transaction_session_timeout (1 min by
    default); the frozen node hears of it, when it wakes, as a lost connection."""
    if backend.name != "postgres":
        pytest.skip("PostgreSQL's idle_in_transaction_session_timeout")
    from stream_state.database import _migration_lock, connect_database

    url, params = backend.new_target()
    db = open_database(url, lock_timeout=5000, **params)
    assert db.execute_sql("SHOW idle_in_transaction_session_timeout").fetchone() == ("1min",)
    frozen = connect_database(url, idle_in_transaction_session_timeout=300, **params)
    try:
        cam = Stream.register("cam-1", "rtsp://10.0.0.1/s")
        with (
            pytest.raises(DatabaseUnavailable, match="idle_in_transaction_session_timeout"),
            frozen.atomic(),
        ):
            frozen.execute_sql("SELECT id FROM stream WHERE id = %s FOR UPDATE", (cam.id,))
            # Frozen from here: another node's write waits for the row, and gets it
            # when the server ends the idle transaction (not lock_timeout's error).
            assert cam.set_desired(recording=True) is True
            frozen.execute_sql("SELECT 1")  # the frozen node wakes up
        assert frozen.execute_sql("SELECT 2").fetchone() == (2,)  # its next call reconnects
        # A migration may idle between statements (Python work in a data migration): unbounded.
        with _migration_lock(frozen):
            time.sleep(0.6)
            assert frozen.execute_sql("SELECT 3").fetchone() == (3,)
    finally:
        frozen.close_all()
        db.close_all()


def test_timeouts_given_in_libpq_options_stand_and_bound_the_watchdog(backend):
    """``options=-c lock_timeout=...`` used to be overridden by the package's default appended after it."""
    if backend.name != "postgres":
        pytest.skip("PostgreSQL's statement_timeout and lock_timeout")
    url, params = backend.new_target()
    schema = params.pop("options")  # the test's own search_path, kept
    db = open_database(url, options=f"{schema} -c lock_timeout=1500 --statement_timeout=2min", **params)
    try:
        assert db.execute_sql("SHOW lock_timeout").fetchone() == ("1500ms",)
        assert db.execute_sql("SHOW statement_timeout").fetchone() == ("2min",)
        assert db.watchdog.hard_limit == 120 + GRACE  # the caller's statement_timeout, not the default
    finally:
        db.close_all()
    # an explicit argument still wins over the options string
    db = open_database(url, options=f"{schema} -c lock_timeout=1500", lock_timeout=700, **params)
    try:
        assert db.execute_sql("SHOW lock_timeout").fetchone() == ("700ms",)
    finally:
        db.close_all()
    with pytest.raises(stream_state_errors().ValidationError, match="lock_timeout=soon") as info:
        open_database(url, options=f"{schema} -c lock_timeout=soon", **params)
    assert info.value.field == "options"


def test_a_slow_statement_on_an_answering_server_is_not_probed_every_tick(backend, monkeypatch):
    # Each probe is a new server connection (a backend process): while the
    # server keeps answering, a long statement must not cost one every 0.25 s.
    if backend.name != "postgres":
        pytest.skip("the PostgreSQL watchdog")
    from stream_state import pgwatch

    probes = []
    answers = pgwatch.Watchdog._server_answers

    def counted(self):
        probes.append(time.monotonic())
        return answers(self)

    monkeypatch.setattr(pgwatch.Watchdog, "_server_answers", counted)
    url, params = backend.new_target()
    db = open_database(url, unresponsive_after=1, **params)
    try:
        started = time.monotonic()
        db.execute_sql("SELECT pg_sleep(4)")  # slow, not stuck: left to statement_timeout
        assert time.monotonic() - started >= 4 and db.watchdog.cut == 0
    finally:
        db.close_all()
    # Over the threshold for 3 s: once a second at most (12 probes when every tick asked).
    assert 1 <= len(probes) <= 4, len(probes)


@pytest.mark.parametrize("off", [{"unresponsive_after": 0}, {"probe_timeout": 0}])
def test_either_client_setting_at_zero_turns_the_watchdog_off(backend, off):
    if backend.name != "postgres":
        pytest.skip("the PostgreSQL watchdog")
    url, params = backend.new_target()
    settings = {"unresponsive_after": 0.5, "probe_timeout": 1, **off}
    db = open_database(url, **settings, **params)
    try:
        db.execute_sql("SELECT pg_sleep(1.5)")  # slow on a healthy server: never cut
        assert db.watchdog.cut == 0
    finally:
        db.close_all()


def stream_state_errors():
    import stream_state.errors

    return stream_state.errors
