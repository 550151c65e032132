"""A backup must finish while the recorder writes, and must not stall it.

    python bench/backup.py             # a 300 MiB database
    python bench/backup.py --mb 50     # quicker

A writer process commits one segment row every 50 ms (a busy recorder) and
records how long each commit took. Meanwhile the database is backed up three
ways, each timed:

* stepped: SQLite's online backup API, 1,024 pages a step with a pause
  between steps (what ``backup()`` did before issue 13). A foreign write
  restarts it from page 1, so on a busy recorder it may never finish; it
  is given up after ``--stepped-limit`` seconds.
* copy: the same API in one step (``backup(method="copy")``, the default).
* vacuum: ``VACUUM INTO`` (``backup(method="vacuum")``): a compacted copy.

Printed per method: the backup's time, its ratio to a plain file copy of the
same database (the baseline, measured in the same run: ``shutil.copyfile``,
which is not consistent but is the speed of the disk), and the writer's worst
and 99th-percentile commit wait while it ran.

SQLite only. Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_state import open_database
from stream_state.maintenance import backup

WRITE_EVERY = 0.05


def build(path: Path, mb: int) -> None:
    db = open_database(path)
    db.close()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=wal")
    con.execute(
        "INSERT INTO stream (name, uri, config, desired_enabled, desired_recording, status, health,"
        " next_segment_index, created_at, updated_at) VALUES ('cam-1', 'rtsp://cam/1', '{}', 1, 1,"
        " 'recording', 'healthy', 0, 0, 0)"
    )
    payload = "x" * 900
    row = 0
    while path.stat().st_size < mb * 1024 * 1024:
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO recording (stream_id, path, storage, segment_index, started_at, ended_at,"
            " size_bytes, state, archived, metadata) VALUES (1, ?, 'disk1', ?, ?, ?, 1000, 'complete', 0, ?)",
            [
                (f"/media/cam-1/{i}.ts", i, i * 1000, i * 1000 + 999, f'{{"p": "{payload}"}}')
                for i in range(row, row + 20000)
            ],
        )
        con.execute("COMMIT")
        row += 20000
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def writer(path: str, ready, stop, waits) -> None:
    con = sqlite3.connect(path, isolation_level=None, timeout=60)
    con.execute("PRAGMA synchronous=NORMAL")
    index = con.execute("SELECT max(segment_index) + 1 FROM recording").fetchone()[0]
    ready.set()
    local = []
    while not stop.is_set():
        started = time.perf_counter()
        con.execute("BEGIN IMMEDIATE")
        con.execute(
            "INSERT INTO recording (stream_id, path, storage, segment_index, started_at, size_bytes, state,"
            " archived, metadata) VALUES (1, ?, 'disk1', ?, ?, 0, 'recording', 0, '{}')",
            (f"/media/cam-1/w{index}.ts", index, index),
        )
        con.execute("COMMIT")
        local.append(time.perf_counter() - started)
        index += 1
        time.sleep(WRITE_EVERY)
    waits.extend(local)
    con.close()


def stepped(path: Path, dest: Path, limit: float) -> bool:
    src = sqlite3.connect(path)
    dst = sqlite3.connect(dest)
    deadline = time.perf_counter() + limit
    finished = True

    def progress(status, remaining, total):
        nonlocal finished
        if time.perf_counter() > deadline:
            finished = False
            raise TimeoutError

    try:
        src.backup(dst, pages=1024, progress=progress, sleep=0.005)
    except TimeoutError:
        pass
    finally:
        dst.close()
        src.close()
    return finished


def measure(name: str, path: Path, run) -> tuple[float, list[float], bool]:
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    waits = manager.list()
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=writer, args=(str(path), ready, stop, waits))
    proc.start()
    ready.wait()
    time.sleep(0.5)
    started = time.perf_counter()
    finished = run()
    seconds = time.perf_counter() - started
    time.sleep(0.3)
    stop.set()
    proc.join()
    result = list(waits)
    manager.shutdown()
    return seconds, result, finished


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=300)
    parser.add_argument("--stepped-limit", type=float, default=60.0)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        path = work / "live.db"
        print(f"building a {args.mb} MiB database ...", flush=True)
        build(path, args.mb)
        size = path.stat().st_size
        # The baseline copy runs before this process opens the database: closing
        # a descriptor of the file drops every POSIX lock the process holds on
        # it, and a connection that lost its locks lets another process delete
        # the WAL under it (SQLite's "how to corrupt" list, 2.2).
        started = time.perf_counter()
        shutil.copyfile(path, work / "plain.db")
        baseline = time.perf_counter() - started
        os.unlink(work / "plain.db")
        open_database(path)  # binds the models for backup()
        print(
            f"database {size / 2**20:.0f} MiB; baseline (plain file copy, not consistent): {baseline:.2f} s"
        )
        print(f"writer commits a row every {WRITE_EVERY * 1000:.0f} ms")
        head = ("method", "finished", "seconds", "x copy", "worst wait", "p99 wait", "commits")
        print("{:<8} {:>8} {:>8} {:>7} {:>11} {:>9} {:>8}".format(*head))
        runs = {
            "copy": lambda: bool(backup(work / "copy.db", method="copy")),
            "vacuum": lambda: bool(backup(work / "vacuum.db", method="vacuum")),
            "stepped": lambda: stepped(path, work / "stepped.db", args.stepped_limit),
        }
        for name, run in runs.items():
            try:
                seconds, waits, finished = measure(name, path, run)
            except Exception as exc:  # report it and go on with the other methods
                con = sqlite3.connect(path)
                health = con.execute("PRAGMA quick_check").fetchone()[0]
                con.close()
                print(f"{name:<8} FAILED: {exc} (the database's quick_check now: {health})", flush=True)
                continue
            waits.sort()
            worst = waits[-1] * 1000 if waits else 0.0
            p99 = waits[int(len(waits) * 0.99)] * 1000 if waits else 0.0
            print(
                f"{name:<8} {'yes' if finished else 'NO':>8} {seconds:>8.2f} {seconds / baseline:>7.1f} "
                f"{worst:>9.1f}ms {p99:>7.1f}ms {len(waits):>8}",
                flush=True,
            )
            for leftover in work.glob(f"{name}.db*"):
                leftover.unlink()


if __name__ == "__main__":
    main()
