"""The timeline of 1,000 streams over 7 days: how long reading and drawing take.

    python bench/timeline.py                          # 1,000 streams x 7 days of 1-minute segments
    python bench/timeline.py --streams 100            # smaller
    python bench/timeline.py --segment-seconds 10 --days 1

The database comes from ``bench/dataset.py`` (built once, cached): back-to-back
segments with a hole now and then, a few failed and interrupted ones, open
ones at the end, and health, status and other events. A week of 1-minute
segments for 1,000 streams is 10,080,000 rows, the size of the other
benchmarks' database; 10-second segments over a week would be 60 million.

What it prints, all measured in this one run:

* the runs summary (``summarize_runs``, Maintenance's ``runs`` job) made
  from scratch: what a manager's maintenance does once over a week of
  segments (afterwards, every 10 minutes, only the hours that settled);
  ``--no-runs`` measures the timeline without it (every hour read as rows);
* the baseline: the history query the timeline cannot do without,
  ``history.coverage`` (what ``stream-state gaps`` runs) for every stream
  over the window, alone;
* ``timeline.collect()``: everything the picture shows (segments, holes
  with reasons, health, events), and its ratio to the baseline;
* drawing the collected timeline as PNG, SVG and HTML, each with its ratio
  to ``collect()`` (the figure is built once per format);
* the sizes of the files and how many spans the merge left of the segments.

The database is opened as ``stream-state timeline`` opens it, read through
a memory map; ``--no-mmap`` opens it as a manager's own connection is (a
manager's web page calling ``timeline.collect``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset import T0, mark_runs_stale, recordings_db

from stream_state import Stream, open_database
from stream_state import history as h
from stream_state import timeline as tl
from stream_state.cli import REPORT_MMAP_SIZE
from stream_state.segment_runs import summarize_runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--segment-seconds", type=float, default=60)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--width", type=int, default=tl.DEFAULT_WIDTH)
    parser.add_argument("--out", type=Path, help="keep the pictures in this directory")
    parser.add_argument(
        "--no-runs", action="store_true", help="every hour stale: collect reads rows, as before the summary"
    )
    parser.add_argument(
        "--formats", default="png,svg,html", help="which pictures to draw (default: png,svg,html)"
    )
    parser.add_argument(
        "--no-mmap",
        action="store_true",
        help="open the database as a manager does (no memory map), not as `stream-state timeline` does",
    )
    args = parser.parse_args(argv)

    segment_ms = round(args.segment_seconds * 1000)
    per_stream = round(args.days * 86_400_000 / segment_ms)
    path = recordings_db(
        streams=args.streams,
        recordings=per_stream * args.streams,
        events=args.events,
        segment_ms=segment_ms,
    )
    mmap_size = 0 if args.no_mmap else REPORT_MMAP_SIZE
    db = open_database(f"sqlite:///{path}", backup_before_migrate=False, mmap_size=mmap_size)
    since = T0
    until = T0 + dt.timedelta(days=args.days)
    streams = list(Stream.select().order_by(Stream.name))
    print(
        f"{len(streams):,} streams x {args.days:g} days, {per_stream * len(streams):,} segments of "
        f"~{args.segment_seconds:g} s; picture {args.width} px wide; "
        f"{'no memory map' if args.no_mmap else 'memory-mapped, as the CLI reads'} ({path.name})"
    )

    # Both measurements on a warm page cache: the file read once (it fits in
    # memory), then one untimed pass of the baseline.
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass
    # Every hour stale, then (unless --no-runs) summarized from scratch.
    mark_runs_stale(db)
    if not args.no_runs:
        started, cpu = time.perf_counter(), time.process_time()
        report = summarize_runs(until + dt.timedelta(hours=2))
        print(
            f"runs      summarize_runs, every hour:         {time.perf_counter() - started:6.2f} s "
            f"(CPU {time.process_time() - cpu:.1f} s, {report.hours:,} stream-hours of "
            f"{report.segments:,} segments; once: then only the hours that settle)"
        )
    for stream in streams:
        h.coverage(stream, since, until, now=until)
    tl.require_plot()
    tl.to_bytes(tl.Timeline(0, 1000, 1.0, 800, (), ()), "png")  # imports and fonts, once

    started, cpu = time.perf_counter(), time.process_time()
    gaps = sum(len(h.coverage(stream, since, until, now=until).gaps) for stream in streams)
    baseline = time.perf_counter() - started
    print(
        f"baseline  history.coverage for every stream: {baseline:6.2f} s "
        f"(CPU {time.process_time() - cpu:.1f} s, {gaps:,} gaps)"
    )

    started, cpu = time.perf_counter(), time.process_time()
    collected = tl.collect(since=since, until=until, width=args.width, now=until)
    read, read_cpu = time.perf_counter() - started, time.process_time() - cpu
    spans = sum(len(lane.spans) for lane in collected.lanes)
    segments = sum(s.segments for lane in collected.lanes for s in lane.spans)
    holes = collected.holes
    reasons: dict[str, int] = {}
    for _lane, hole in holes:
        reasons[hole.reason] = reasons.get(hole.reason, 0) + 1
    ticks = sum(len(lane.ticks) for lane in collected.lanes)
    print(
        f"collect   segments, holes, health, events:    {read:6.2f} s = {read / baseline:.2f}x the baseline "
        f"(CPU {read_cpu:.1f} s) "
        f"({segments:,} segments -> {spans:,} spans, {len(holes):,} holes {reasons}, {ticks:,} ticks)"
    )

    out_dir = args.out or Path(tempfile.mkdtemp(prefix="stream-state-timeline-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for fmt in args.formats.split(","):
        target = out_dir / f"timeline.{fmt}"
        started, cpu = time.perf_counter(), time.process_time()
        tl.render(timeline=collected, out=target)
        drawn, drawn_cpu = time.perf_counter() - started, time.process_time() - cpu
        size = target.stat().st_size / 2**20
        print(
            f"draw      {fmt:4}                                {drawn:6.2f} s = {drawn / read:.2f}x collect "
            f"(CPU {drawn_cpu:.1f} s, {size:.1f} MiB)"
        )
        if fmt == "png":
            print(f"read + PNG: {read + drawn:.1f} s, CPU {read_cpu + drawn_cpu:.1f} s")
        if args.out is None:
            target.unlink()
    if args.out is None:
        out_dir.rmdir()
    db.close()


if __name__ == "__main__":
    main()
