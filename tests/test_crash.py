"""Kill a manager-like child process with SIGKILL at random moments, then restore.

After every kill the numbered rules of docs/invariants.md must hold; each
assertion names the rule it checks. STREAM_STATE_CRASH_ITERATIONS sets the
number of kills per backend (default 20).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import peewee as pw

from stream_state import Event, MetricSample, Recording, SegmentState, Stream, open_database
from stream_state.invariants import check_invariants as broken_rules
from stream_state.models import MetricSeries
from stream_state.restore import Repair, Restorer
from stream_state.states import EventType

from .crash_workload import workload_name
from .sessionkit import end_sessions_of

REPO_ROOT = Path(__file__).resolve().parent.parent
ITERATIONS = int(os.environ.get("STREAM_STATE_CRASH_ITERATIONS", "20"))


def read_journal(path: Path) -> list[list]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    # The kill can land in the middle of a line: only whole lines were journaled.
    return [json.loads(line) for line in lines if line.endswith("]")]


def run_children_and_kill(
    url: str, schema: str | None, media: Path, journals: list[Path], seed: int
) -> list[int]:
    """One workload per journal, side by side on the database, each SIGKILLed at its own moment.

    Returns their pids.
    """
    children = []
    for n, journal in enumerate(journals):
        command = [sys.executable, "-m", "tests.crash_workload", "--url", url, "--dir", str(media)]
        command += ["--journal", str(journal), "--seed", str(seed * 10 + n), "--prefix", f"cam{n}"]
        if schema:
            command += ["--pg-schema", schema]
        children.append(
            subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    try:
        for child in children:
            line = child.stdout.readline()
            assert line.strip() == "ready", f"workload did not start: {line!r} {child.stderr.read()}"
        rng = random.Random(seed)
        for child in children:
            time.sleep(rng.uniform(0.05, 0.8 / len(children)))
            assert child.poll() is None, f"workload died by itself: {child.stderr.read()}"
            child.send_signal(signal.SIGKILL)
    finally:
        for child in children:
            child.wait(timeout=30)
            child.stdout.close()
            child.stderr.close()
    return [child.pid for child in children]


def check_invariants(
    db: pw.Database, media: Path, journal: list[list], iteration: int, repairs: tuple[Repair, ...] = ()
) -> None:
    if isinstance(db, pw.SqliteDatabase):
        assert db.execute_sql("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute_sql("PRAGMA foreign_key_check").fetchall() == []
    # invariants 2, 3, 4, 5, 8, 9, 10, 12: everything the database alone can show broken
    assert broken_rules() == (), f"rules broken after kill {iteration}"
    assert Recording.open_segments().count() == 0, "invariant 7: restore settled every open segment"
    unfinished = Recording.select().where(
        Recording.state.in_([SegmentState.DELETING.value, SegmentState.ARCHIVING.value])
    )
    assert unfinished.count() == 0, "invariant 7: no deleting or archiving row survives a restore"
    # invariant 11: every repair restore reports is written as an event
    repaired = {
        event.data["recording_id"]
        for event in Event.select().where(Event.type == EventType.SEGMENT_REPAIRED.value)
    }
    assert {r.recording_id for r in repairs} <= repaired, "invariant 11: a repair without its event"

    rows = {r.id: r for r in Recording.select()}
    deleting = {entry[1] for entry in journal if entry[0] == "deleting"}
    deleted = {entry[1] for entry in journal if entry[0] == "deleted"}
    seen_index: dict[int, set[int]] = defaultdict(set)
    for entry in journal:
        kind = entry[0]
        if kind == "begin":
            _, rec_id, stream_id, index, path = entry
            assert index not in seen_index[stream_id], (
                f"invariant 2: segment index {index} of stream {stream_id} reused"
            )
            seen_index[stream_id].add(index)
            if rec_id in deleting:
                continue  # a delete began; restore may have finished it
            assert rec_id in rows, f"invariant 1: committed segment {rec_id} ({path}) is missing"
            assert rows[rec_id].path == path and rows[rec_id].segment_index == index
        elif kind == "complete" and entry[1] not in deleting:
            row = rows[entry[1]]
            assert (row.state, row.size_bytes) == (SegmentState.COMPLETE, entry[2]), (
                "invariant 8: a completed segment keeps its end and size"
            )
        elif kind == "checkpoint" and entry[1] not in deleting:
            assert rows[entry[1]].size_bytes >= entry[2], "a restore never shrinks below a checkpoint"
        elif kind == "deleted":
            assert entry[1] not in rows, "invariant 6: a deleted segment's row is gone"
        elif kind == "event":
            assert Event.get_or_none(Event.id == entry[1]) is not None, f"committed event {entry[1]} missing"
        elif kind == "metrics":
            for stream_id, ts in entry[1]:
                found = (
                    MetricSample.select()
                    .join(MetricSeries)
                    .where((MetricSeries.stream == stream_id) & (MetricSample.ts == ts))
                    .count()
                )
                assert found == 1, f"committed metric sample of stream {stream_id} at {ts} missing"
    assert deleted <= deleting, "invariant 6: every deleted file's row said deleting first"
    accepted = [entry[1] for entry in journal if entry[0] == "relative_accepted"]
    assert not accepted, f"relative segment paths must be refused: {accepted[:3]}"

    for stream in Stream.select():
        top = Recording.select(pw.fn.MAX(Recording.segment_index)).where(Recording.stream == stream).scalar()
        assert top is None or top < stream.next_segment_index, (
            "invariant 3: next_segment_index is past every used index"
        )

    on_disk = {str(path) for path in media.iterdir()}
    paths = {row.path for row in rows.values()}
    assert on_disk <= paths, (
        f"invariants 1, 13: files without a row after kill {iteration}: {sorted(on_disk - paths)[:5]}"
    )


def wait_for_server_side_of(db: pw.Database, application_name: str, timeout: float = 30) -> None:
    """Wait until PostgreSQL has ended the killed child's backend.

    A SIGKILL can land after the child sent COMMIT: the server still commits,
    a moment later. Restoring before that would miss what the commit wrote,
    which no real restart could (the next manager starts well after).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (alive,) = db.execute_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application_name,)
        ).fetchone()
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"the killed workload's PostgreSQL backend ({application_name}) did not end")


def test_state_restoration_survives_sigkill_at_random_moments(backend, tmp_path):
    url, params = backend.new_target()
    schema = params["options"].split("=", 1)[1] if params else None
    media = tmp_path / "media"
    media.mkdir()
    # Two recorder processes on one SQLite file (each one's start-up restore
    # must leave the other's live work alone); one on PostgreSQL.
    journal_paths = [tmp_path / f"journal-{n}.jsonl" for n in range(2 if backend.name == "sqlite" else 1)]
    seed0 = random.randrange(1_000_000)
    for iteration in range(ITERATIONS):
        pids = run_children_and_kill(url, schema, media, journal_paths, seed0 + iteration)
        db = open_database(url, **params)
        try:
            if isinstance(db, pw.PostgresqlDatabase):
                # the one PostgreSQL workload runs with seed (seed0 + iteration) * 10 (run_children_and_kill)
                wait_for_server_side_of(db, workload_name((seed0 + iteration) * 10))
            if backend.name == "postgres":
                end_sessions_of(db, pids)
            first = Restorer(db, session=f"parent-{iteration}").restore()
            journal = [entry for path in journal_paths for entry in read_journal(path)]
            check_invariants(db, media, journal, iteration, first.repairs)
            again = Restorer(db, session=f"parent-{iteration}").restore()
            assert again.repairs == () and again.streams == first.streams, (
                "restore twice gives the same state"
            )
            # Another restart: nothing left to repair. (was_recording now
            # describes the parent's run, in which nothing recorded.)
            fresh = Restorer(db, session=f"parent-{iteration}-b").restore()
            assert fresh.repairs == ()
            assert [replace(s, was_recording=False) for s in fresh.streams] == [
                replace(s, was_recording=False) for s in first.streams
            ]
            assert first.clean_shutdown is False, "a killed run is reported as a crash"
        finally:
            if isinstance(db, pw.PostgresqlDatabase):
                db.close_all()
            else:
                db.close()
    for path in journal_paths:
        assert any(entry[0] == "complete" for entry in read_journal(path)), f"{path.name}: no real work"
    kinds = {entry[0] for path in journal_paths for entry in read_journal(path)}
    assert {"clock", "refused"} <= kinds, "the workload stepped the clock and tried a relative path"
