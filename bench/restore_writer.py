"""Restore must not stall a writer: 10,000 segments to repair while another process writes.

    python bench/restore_writer.py                 # 10,000 open segments over 100 streams
    python bench/restore_writer.py --segments 2000

A database is left with ``--segments`` open segments whose files do not
exist (a crash), so restore settles each one (``failed``) and writes its
event. Meanwhile a writer process commits a small transaction every 5 ms
(``BEGIN IMMEDIATE``; insert; commit, with SQLite's busy timeout) and
records how long each took. Printed for each way of committing the repairs:
restore's time and the writer's worst and 99th-percentile wait.

The baseline, in the same run on a copy of the same database, is one
transaction for all the repairs (``REPAIR_BATCH`` as large as the run: what
restore did before issue 13). Goal: writer's worst wait <= 100 ms.
SQLite only. Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_state import Stream, open_database
from stream_state.restore import Restorer

GOAL_MS = 100
T0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)


def build(path: Path, segments: int, streams: int) -> None:
    db = open_database(path)
    cams = [
        Stream.register(f"cam-{i}", f"rtsp://10.0.0.{i % 250 + 1}/s", recording=True) for i in range(streams)
    ]
    for i in range(segments):
        cam = cams[i % streams]
        cam.begin_segment(f"/nonexistent/{cam.name}/{i}.ts", started_at=T0 + dt.timedelta(seconds=i))
    db.close()


def writer(path: str, ready, stop, waits) -> None:
    con = sqlite3.connect(path, isolation_level=None, timeout=60)
    ready.set()
    local = []
    while not stop.is_set():
        started = time.perf_counter()
        con.execute("BEGIN IMMEDIATE")
        con.execute(
            "INSERT INTO event (ts, stream_id, type, severity) VALUES (?, NULL, 'writer_tick', 'info')",
            (int(time.time() * 1000),),
        )
        con.execute("COMMIT")
        local.append(time.perf_counter() - started)
        time.sleep(0.005)
    waits.extend(local)
    con.close()


def run(path: Path, batch: int) -> tuple[float, list[float], int]:
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    waits = manager.list()
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=writer, args=(str(path), ready, stop, waits))
    db = open_database(path)
    proc.start()
    ready.wait()
    time.sleep(0.3)
    Restorer.REPAIR_BATCH = batch
    started = time.perf_counter()
    state = Restorer(db).restore(now=T0 + dt.timedelta(days=1))
    seconds = time.perf_counter() - started
    time.sleep(0.3)
    stop.set()
    proc.join()
    db.close()
    result = sorted(waits)
    manager.shutdown()
    return seconds, result, len(state.repairs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--segments", type=int, default=10_000)
    parser.add_argument("--streams", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "crashed.db"
        print(f"building {args.segments:,} open segments over {args.streams} streams ...", flush=True)
        build(source, args.segments, args.streams)
        head = ("commit", "repairs", "restore s", "worst wait", "p99 wait", "writes")
        print("{:<22} {:>8} {:>10} {:>11} {:>9} {:>7}".format(*head))
        for label, batch in (
            ("one transaction (old)", args.segments + 1),
            (f"batches of {Restorer.REPAIR_BATCH}", Restorer.REPAIR_BATCH),
        ):
            path = Path(tmp) / f"run-{batch}.db"
            shutil.copyfile(source, path)
            seconds, waits, repairs = run(path, batch)
            worst = waits[-1] * 1000 if waits else 0.0
            p99 = waits[int(len(waits) * 0.99)] * 1000 if waits else 0.0
            print(
                f"{label:<22} {repairs:>8} {seconds:>10.2f} {worst:>9.1f}ms {p99:>7.1f}ms {len(waits):>7}",
                flush=True,
            )
        print(f"goal: writer's worst wait <= {GOAL_MS} ms with batches")


if __name__ == "__main__":
    main()
