"""Upkeep must never stall the recorder: purge and retention against a live writer.

    python bench/maintenance.py                 # 1,000,000 events and 1,000,000 recordings
    python bench/maintenance.py --rows 200000   # quicker

For each job a writer thread inserts one event every 5 ms through the
package (``Event.record``, as the manager does) and records how long each
insert took; the job runs meanwhile. Printed per job: rows deleted, the
job's throughput, and the writer's worst and 99th-percentile wait. The
baseline, in the same run on the same data, is one big DELETE of the same
rows, which is what a naive purge does: the writer's worst wait then is the
whole DELETE.

Then: bytes given back by incremental vacuum after the purge, and the
longest time one vacuum step held the write lock.

SQLite only (PostgreSQL's MVCC lets writers proceed during a DELETE).
Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_state import Event, Stream, open_database
from stream_state.maintenance import incremental_vacuum, purge_events
from stream_state.retention import RetentionPolicy, RetentionRule, apply_retention

GOAL_WAIT_MS = 100
NOW = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
NOW_MS = int(NOW.timestamp() * 1000)
DAY_MS = 86_400_000


class Writer(threading.Thread):
    """Inserts an event every 5 ms and keeps how long each insert took."""

    def __init__(self, stream_id: int):
        super().__init__(daemon=True)
        self.stream_id = stream_id
        self.waits: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            Event.record("writer_tick", self.stream_id)
            self.waits.append(time.perf_counter() - started)
            time.sleep(0.005)
        Event._meta.database.close()

    def summary(self) -> tuple[float, float, int]:
        ordered = sorted(self.waits)
        p99 = ordered[int(len(ordered) * 0.99) - 1] if ordered else 0.0
        return max(ordered, default=0.0) * 1000, p99 * 1000, len(ordered)


def fill_events(path: Path, stream_id: int, rows: int) -> None:
    """``rows`` expired events (older than 90 days), written with raw sqlite3 for speed."""
    conn = sqlite3.connect(path)
    old = NOW_MS - 200 * DAY_MS
    conn.executemany(
        "INSERT INTO event (ts, stream_id, type, severity, message, data) "
        "VALUES (?, ?, 'tick', 'info', ?, ?)",
        ((old + i, stream_id, f"event {i}", '{"n":1}') for i in range(rows)),
    )
    conn.commit()
    conn.close()


def fill_recordings(path: Path, stream_id: int, rows: int) -> None:
    """``rows`` complete recordings older than 30 days (their files do not exist: the DB side is measured)."""
    conn = sqlite3.connect(path)
    old = NOW_MS - 60 * DAY_MS
    conn.executemany(
        "INSERT INTO recording (stream_id, path, storage, segment_index, started_at, ended_at, size_bytes, "
        "state, archived) VALUES (?, ?, 'disk0', ?, ?, ?, 1000, 'complete', 0)",
        (
            (stream_id, f"/nonexistent/bench/{i:09d}.mp4", i, old + i * 10, old + i * 10 + 9)
            for i in range(rows)
        ),
    )
    conn.execute("UPDATE stream SET next_segment_index = ? WHERE id = ?", (rows, stream_id))
    conn.commit()
    conn.close()


def with_writer(stream_id: int, job: Callable[[], int]) -> tuple[int, float, tuple[float, float, int]]:
    writer = Writer(stream_id)
    writer.start()
    time.sleep(0.2)  # let the writer settle
    started = time.perf_counter()
    deleted = job()
    elapsed = time.perf_counter() - started
    time.sleep(0.1)
    writer.stop.set()
    writer.join()
    return deleted, elapsed, writer.summary()


def fresh_db(directory: Path, name: str) -> tuple[Path, int]:
    path = directory / name
    open_database(path)
    stream = Stream.register("cam-bench", "rtsp://10.0.0.1/main")
    return path, stream.id


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    rows = args.rows
    lines = []
    with tempfile.TemporaryDirectory(prefix="stream-state-bench-") as tmp:
        directory = Path(tmp)

        # Purge of expired events, batched, against a live writer.
        path, stream_id = fresh_db(directory, "purge.db")
        fill_events(path, stream_id, rows)
        deleted, elapsed, (worst, p99, inserts) = with_writer(
            stream_id, lambda: purge_events(90, now=NOW).events
        )
        lines.append(("purge events (batched)", deleted, elapsed, worst, p99, inserts))
        vacuum = incremental_vacuum()

        # Baseline: the same rows in one DELETE.
        path, stream_id = fresh_db(directory, "purge-naive.db")
        fill_events(path, stream_id, rows)
        db = Event._meta.database

        def one_delete() -> int:
            with db.atomic():
                return (
                    Event.delete().where((Event.ts < NOW_MS - 90 * DAY_MS) & (Event.type == "tick")).execute()
                )

        deleted, elapsed, (worst, p99, inserts) = with_writer(stream_id, one_delete)
        lines.append(("purge events (one DELETE)", deleted, elapsed, worst, p99, inserts))

        # Age retention over old recordings, batched and crash-safe.
        path, stream_id = fresh_db(directory, "retention.db")
        fill_recordings(path, stream_id, rows)
        policy = RetentionPolicy(default=RetentionRule(max_age_days=30))
        deleted, elapsed, (worst, p99, inserts) = with_writer(
            stream_id, lambda: apply_retention(policy, now=NOW).segments
        )
        lines.append(("age retention (batched)", deleted, elapsed, worst, p99, inserts))

    header = ("job", "rows", "seconds", "rows/s", "writer worst ms", "p99 ms", "goal")
    print("{:28} {:>10} {:>8} {:>9} {:>16} {:>7} {:>7}".format(*header))
    for name, count, seconds, worst, p99, _inserts in lines:
        goal = f"<= {GOAL_WAIT_MS}" if "batched" in name else "-"
        met = "" if "batched" not in name else (" yes" if worst <= GOAL_WAIT_MS else " NO")
        rate = count / seconds
        print(
            f"{name:28} {count:>10,} {seconds:>8.1f} {rate:>9,.0f} {worst:>16.1f} {p99:>7.1f} {goal:>7}{met}"
        )
    batched, naive = lines[0], lines[1]
    print(f"\nworst writer wait, batched purge vs one DELETE: {batched[3]:.1f} ms vs {naive[3]:.1f} ms "
          f"({naive[3] / max(batched[3], 0.001):.0f}x shorter)")  # fmt: skip
    mib = vacuum.bytes_freed / 2**20
    print(
        f"incremental vacuum after the purge: {mib:,.1f} MiB given back in {vacuum.steps} steps; "
        f"longest step held the write lock {vacuum.longest_step_seconds * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
