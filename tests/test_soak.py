"""Concurrency soak: 8 threads and 2 processes write at once for a bounded time.

Each worker (``tests/soak_worker.py``) drives its own stream like a manager
thread: overlapping segments with checkpoints, health reports, status
changes, events and metric batches, and counts every call that returned.
No call may raise (a "database is locked" surfacing to the caller fails the
test), and afterwards the database holds exactly the rows the workers
counted, stream by stream.

STREAM_STATE_SOAK_SECONDS sets how long the workers write (default 5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import peewee as pw
import pytest

from stream_state import Event, MetricSample, MetricSeries, Recording, SegmentState, Stream, open_database
from stream_state.states import EventType

from . import soak_worker

REPO_ROOT = Path(__file__).resolve().parent.parent
SECONDS = float(os.environ.get("STREAM_STATE_SOAK_SECONDS", "5"))
THREADS = 8
PROCESSES = 2


class _Figures:
    lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.lines:
            terminalreporter.section("concurrency soak: rows written, rows lost")
            for line in self.lines:
                terminalreporter.write_line(line)


@pytest.fixture(autouse=True, scope="module")
def _figures(request):
    manager = request.config.pluginmanager
    if not manager.has_plugin("stream-state-soak-figures"):
        manager.register(_Figures(), "stream-state-soak-figures")
    yield


def _start_child(url: str, schema: str | None, name: str, media: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "tests.soak_worker", "--url", url, "--name", name]
    command += ["--seconds", str(SECONDS), "--dir", str(media)]
    if schema:
        command += ["--pg-schema", schema]
    return subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_eight_threads_and_two_processes_write_for_a_while_without_an_error_or_a_lost_row(backend, tmp_path):
    url, params = backend.new_target()
    schema = params["options"].split("=", 1)[1] if params else None
    media = tmp_path / "media"
    media.mkdir()
    db = open_database(url, **params)  # migrated once, before anyone else opens it
    children: list[subprocess.Popen] = []
    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    try:
        for i in range(PROCESSES):
            children.append(_start_child(url, schema, f"proc-{i}", media))
        for child in children:
            line = child.stdout.readline()
            assert line.strip() == "ready", f"soak child did not start: {line!r} {child.stderr.read()}"

        start = threading.Barrier(THREADS + 1)

        def worker(name: str) -> None:
            try:
                start.wait()
                results[name] = soak_worker.run(name, SECONDS, media)
            except BaseException:
                errors[name] = traceback.format_exc()
            finally:
                Stream._meta.database.close()

        threads = [threading.Thread(target=worker, args=(f"thread-{i}",)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        start.wait()
        for thread in threads:
            thread.join(timeout=SECONDS + 120)
            assert not thread.is_alive(), "a soak thread hung"
        for i, child in enumerate(children):
            out, err = child.communicate(timeout=SECONDS + 120)
            name = f"proc-{i}"
            report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err}
            if child.returncode != 0 or "error" in report:
                errors[name] = report.get("error") or err
            else:
                results[name] = report
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    try:
        assert errors == {}, "no call may fail, a lock error least of all:\n" + "\n".join(errors.values())
        assert len(results) == THREADS + PROCESSES
        _check_counts(results)
    finally:
        if isinstance(db, pw.PostgresqlDatabase):
            db.close_all()
        else:
            db.close()

    calls = sum(
        r["segments_begun"] + r["segments_completed"] + r["checkpoints"] + r["health_reports"]
        + r["cycles"] * 3  # set_status, Event.record, record_many
        for r in results.values()
    )  # fmt: skip
    segments = sum(r["segments_begun"] for r in results.values())
    samples = sum(r["samples"] for r in results.values())
    events = sum(r["events"] + r["health_changes"] + r["status_changes"] + 1 for r in results.values())
    _Figures.lines.append(
        f"{backend.name} soak: {THREADS} threads + {PROCESSES} processes for {SECONDS:g} s, "
        f"{calls} write calls, 0 errors (0 lock errors); {segments} segments, {events} events, "
        f"{samples} metric samples written, all counted rows present, 0 lost, 0 extra"
    )


def _check_counts(results: dict[str, dict]) -> None:
    """Every stream holds exactly what its worker counted; the tables hold nothing else."""
    for name, counts in results.items():
        stream = Stream.get_by_id(counts["stream_id"])
        assert stream.name == f"soak-{name}"
        begun = counts["segments_begun"]
        assert begun > 0, f"{name} did no work"
        segments = list(Recording.for_stream(stream))
        assert len(segments) == begun, f"{name}: {len(segments)} segment rows, {begun} begun"
        assert counts["segments_completed"] == begun
        assert {s.state for s in segments} == {SegmentState.COMPLETE}
        assert sorted(s.segment_index for s in segments) == list(range(begun)), "indexes dense, none shared"
        assert stream.next_segment_index == begun

        def events(kind: str, stream=stream) -> int:
            return Event.select().where((Event.stream == stream) & (Event.type == kind)).count()

        assert events("soak_tick") == counts["events"], name
        assert events(EventType.HEALTH_CHANGED) == counts["health_changes"] == begun, name
        assert events(EventType.STATUS_CHANGED) == counts["status_changes"] == begun, name
        assert events(EventType.STREAM_REGISTERED) == 1, name
        assert events("stream_claimed") == 1, name  # one session per process took it once
        series = MetricSeries.select().where(MetricSeries.stream == stream)
        assert series.count() == 3, name
        assert MetricSample.select().where(MetricSample.series.in_(series)).count() == counts["samples"], name
        assert counts["samples"] == 3 * counts["batches"]

    total = len(results)
    assert Stream.select().count() == total
    assert Recording.select().count() == sum(r["segments_begun"] for r in results.values())
    assert MetricSample.select().count() == sum(r["samples"] for r in results.values())
    # + its registration and the claim of the stream by the worker's session (its first write)
    expected_events = sum(
        r["events"] + r["health_changes"] + r["status_changes"] + 2 for r in results.values()
    )
    assert Event.select().count() == expected_events
    assert Event.select(pw.fn.COUNT(pw.fn.DISTINCT(Event.id))).scalar() == expected_events
