"""SplitmuxRecorder: what it costs GStreamer's streaming thread per segment, healthy and stalled.

    python bench/gst.py                         # SQLite, 300 segments healthy, 12 stalled
    python bench/gst.py --pg postgresql://postgres@127.0.0.1:5432/test

Needs GStreamer and its Python bindings (the [gstreamer] extra; see the
README). One real pipeline per run: ``videotestsrc`` (not live, so segments
come as fast as the machine makes them) -> ``jpegenc`` -> ``splitmuxsink``
with ``matroskamux``, a new file every 100 ms of media. What is timed is the
time spent inside the callbacks on GStreamer's streaming thread, per segment:
``format-location-full`` (naming the file) plus the ``fragment-closed``
message handler; the recorder's per-frame pad probe is timed apart, per frame.

Three ways to name the files, in the same process and on the same database:

* **bare**: the callback returns ``dir/<n>.mkv`` from a counter; no database at
  all. The floor: what any ``format-location-full`` handler costs from Python.
* **naive**: the plumbing managers wrote by hand: ``stream.begin_segment``
  inside the callback, ``complete_segment`` in the message handler, both on
  the streaming thread. A callback from a thread Python did not create gets a
  fresh thread state each time, so peewee's thread-local connection does not
  survive from one callback to the next: unless the callback closes it (as
  here), every call opens a new connection and leaks the last (on PostgreSQL
  the pool runs dry within a few dozen segments).
* **recorder**: ``SplitmuxRecorder`` (database work on its writer thread; the
  callback waits for the row at most ``callback_budget``).

"Stalled" holds the database's write lock from another connection for the
whole run (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: the stream's row ``FOR
UPDATE``), as a database that stopped answering writes would. A naive call
waits as long as the database lets a writer wait, then fails: SQLite's busy
timeout, 1 s here; PostgreSQL's lock_timeout, 10 s (the package's default).
The recorder's rows are checked afterwards: every file has its row, under its
index's name. Figures: median and worst per segment, and the ratio to bare.
Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import peewee as pw

from stream_state import Recording, Stream, open_database
from stream_state.gst import GST_MISSING, SplitmuxRecorder, require_gstreamer

FRAGMENT_NS = 100_000_000  # 100 ms of media per file
FPS = 20


def pipeline(Gst: Any, segments: int) -> Any:
    frames = segments * FPS * FRAGMENT_NS // 1_000_000_000
    return Gst.parse_launch(
        f"videotestsrc num-buffers={frames} ! video/x-raw,width=64,height=48,framerate={FPS}/1 ! jpegenc "
        f"! splitmuxsink name=sink muxer-factory=matroskamux max-size-time={FRAGMENT_NS}"
    )


def run_pipeline(Gst: Any, pipe: Any, timeout: float) -> None:
    pipe.set_state(Gst.State.PLAYING)
    message = pipe.get_bus().timed_pop_filtered(
        int(timeout * Gst.SECOND), Gst.MessageType.EOS | Gst.MessageType.ERROR
    )
    if message is None or message.type == Gst.MessageType.ERROR:
        raise SystemExit(f"pipeline did not finish: {message.parse_error() if message else 'timeout'}")
    pipe.set_state(Gst.State.NULL)


def bare(Gst: Any, directory: Path, segments: int) -> list[float]:
    pipe = pipeline(Gst, segments)
    sink = pipe.get_by_name("sink")
    costs: list[float] = []

    def location(splitmux: Any, fragment_id: int, sample: Any) -> str:
        began = time.perf_counter()
        path = str(directory / f"bare-{fragment_id:08d}.mkv")
        costs.append(time.perf_counter() - began)
        return path

    sink.connect("format-location-full", location)
    run_pipeline(Gst, pipe, 120)
    return costs


def naive(
    Gst: Any, db: pw.Database, directory: Path, stream: Stream, segments: int
) -> tuple[list[float], int]:
    pipe = pipeline(Gst, segments)
    sink = pipe.get_by_name("sink")
    costs: list[float] = []
    rows: dict[str, Recording] = {}
    errors = 0

    def location(splitmux: Any, fragment_id: int, sample: Any) -> str:
        nonlocal errors
        began = time.perf_counter()
        path = str(directory / f"naive-{uuid.uuid4().hex[:8]}.mkv")
        try:
            rows[path] = stream.begin_segment(path)
        except Exception:
            errors += 1
        finally:
            # The callback's thread state dies when it returns: hand the
            # connection back now, or every callback leaks one (a pool runs dry).
            db.close()
        costs.append(time.perf_counter() - began)
        return path

    def closed(bus: Any, message: Any) -> None:
        nonlocal errors
        structure = message.get_structure()
        if structure is None or structure.get_name() != "splitmuxsink-fragment-closed":
            return
        began = time.perf_counter()
        row = rows.get(structure.get_string("location"))
        if row is not None:
            try:
                row.complete_segment(size_bytes=0)
            except Exception:
                errors += 1
            finally:
                db.close()
        costs[-1] += time.perf_counter() - began

    bus = pipe.get_bus()
    bus.enable_sync_message_emission()
    bus.connect("sync-message::element", closed)
    sink.connect("format-location-full", location)
    run_pipeline(Gst, pipe, 600)
    return costs, errors


def recorder(
    Gst: Any, directory: Path, stream: Stream, segments: int, frame_costs: list[float]
) -> tuple[list[float], SplitmuxRecorder]:
    pipe = pipeline(Gst, segments)
    sink = pipe.get_by_name("sink")
    rec = SplitmuxRecorder(stream, sink, "{root}/{stream}-{index:08d}.mkv", root=directory, stall_after=None)
    probe = rec._on_buffer

    def timed_probe(pad: Any, info: Any) -> Any:  # the per-frame pad probe, timed
        began = time.perf_counter()
        result = probe(pad, info)
        frame_costs.append(time.perf_counter() - began)
        return result

    rec._on_buffer = timed_probe  # type: ignore[method-assign]
    rec.start()
    run_pipeline(Gst, pipe, 600)
    rec.flush(timeout=60)
    costs = [a + b for a, b in zip(rec.times.location, rec.times.closed, strict=False)]
    return costs, rec


def hold_lock(db: pw.Database, stream: Stream, release: threading.Event) -> threading.Thread:
    ready = threading.Event()

    def hold() -> None:
        if isinstance(db, pw.SqliteDatabase):
            other: Any = sqlite3.connect(db.database, timeout=30)
            other.execute("BEGIN IMMEDIATE")
        else:
            import psycopg2

            other = psycopg2.connect(dbname=db.database, **db.connect_params)
            other.cursor().execute('SELECT 1 FROM "stream" WHERE "id" = %s FOR UPDATE', (stream.id,))
        ready.set()
        release.wait()
        other.rollback()
        other.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    ready.wait(10)
    return thread


def row(label: str, costs: list[float], floor: float) -> str:
    median = statistics.median(costs) * 1000
    worst = max(costs) * 1000
    return f"{label:<28} {len(costs):>5} {median:>10.3f} {worst:>10.3f} {median / floor:>10.1f}x"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg", metavar="URL", help="PostgreSQL URL (a scratch schema is used)")
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument("--stalled-segments", type=int, default=12)
    args = parser.parse_args()
    if GST_MISSING:
        raise SystemExit(GST_MISSING)
    Gst = require_gstreamer()
    work = Path(tempfile.mkdtemp(prefix="bench-gst-"))
    schema = None
    if args.pg:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = open_database(args.pg, migrate=False)
        admin.execute_sql(f'CREATE SCHEMA "{schema}"')
        admin.close()
        db = open_database(args.pg, options=f"-c search_path={schema}")
        backend = "PostgreSQL"
    else:
        db = open_database(f"sqlite:///{work / 'bench.db'}", busy_timeout=1.0)
        backend = "SQLite"
    print(f"{backend}, GStreamer {Gst.version_string()}, Python {sys.version.split()[0]}")
    print(f"{args.segments} segments of {FRAGMENT_NS / 1e6:.0f} ms healthy, {args.stalled_segments} stalled")
    try:
        stream = Stream.register("bench", "videotestsrc://local/1", recording=True)
        floor_costs = bare(Gst, work, args.segments)
        floor = statistics.median(floor_costs) * 1000
        naive_costs, naive_errors = naive(Gst, db, work, stream, args.segments)
        frame_costs: list[float] = []
        rec_costs, rec = recorder(Gst, work, stream, args.segments, frame_costs)
        rec.close()
        print()
        header = ("streaming thread, per segment", "n", "median ms", "worst ms", "vs bare")
        print(f"{header[0]:<28} {header[1]:>5} {header[2]:>10} {header[3]:>10} {header[4]:>11}")
        print(row("bare (no database)", floor_costs, floor))
        print(row("naive, healthy", naive_costs, floor))
        print(row("recorder, healthy", rec_costs, floor))
        print(
            f"{'recorder, per frame (probe)':<28} {len(frame_costs):>5} "
            f"{statistics.median(frame_costs) * 1000:>10.3f} {max(frame_costs) * 1000:>10.3f}"
        )

        release = threading.Event()
        holder = hold_lock(db, stream, release)
        naive_stalled, stalled_errors = naive(Gst, db, work, stream, args.stalled_segments)
        before = Recording.select().count()
        pipe_costs, stalled_rec = recorder_stalled(Gst, work, stream, args.stalled_segments, release)
        holder.join()
        print(row("naive, database stalled", naive_stalled, floor) + f"  ({stalled_errors} calls failed)")
        print(
            row("recorder, database stalled", pipe_costs, floor)
            + f"  ({stalled_rec.times.pending_names} named provisionally)"
        )
        written = Recording.select().count() - before
        template_names = sum(
            1
            for r in Recording.select().order_by(Recording.id.desc()).limit(written)
            if os.path.basename(r.path) == f"bench-{r.segment_index:08d}.mkv"
        )
        print(
            f"\nafter the stall: {written} rows written for the recorder's "
            f"{len(stalled_rec.times.location)} files, {template_names} under their index's name; "
            f"callback budget {stalled_rec.callback_budget * 1000:.0f} ms"
        )
        if naive_errors:
            print(f"(the naive healthy run had {naive_errors} failed calls)")
    finally:
        db.close()
        if schema:
            admin = open_database(args.pg, migrate=False)
            admin.execute_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            admin.close()


def recorder_stalled(
    Gst: Any, directory: Path, stream: Stream, segments: int, release: threading.Event
) -> tuple[list[float], SplitmuxRecorder]:
    """The recorder with the lock held for the whole pipeline; released, then drained."""
    pipe = pipeline(Gst, segments)
    sink = pipe.get_by_name("sink")
    rec = SplitmuxRecorder(
        stream, sink, "{root}/{stream}-{index:08d}.mkv", root=directory, stall_after=None, retry_delay=0.05
    )
    rec.start()
    run_pipeline(Gst, pipe, 600)
    release.set()
    rec.flush(timeout=60)
    rec.close()
    costs = [a + b for a, b in zip(rec.times.location, rec.times.closed, strict=False)]
    return costs, rec


if __name__ == "__main__":
    main()
