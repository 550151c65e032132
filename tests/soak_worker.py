"""One soak worker: a manager thread driving one stream for a bounded time, counting what it committed.

Used by ``tests/test_soak.py`` in threads of the test process and, through
this module's command line, in child processes:

    python -m tests.soak_worker --url URL --name NAME --seconds S --dir DIR [--pg-schema SCHEMA]

A child prints ``ready`` once its database is open and its stream registered,
waits for a line on stdin (the start signal), works for ``--seconds``, and
prints its counts as one JSON line. Any exception is printed and ends it
with status 1: a soak allows no error at all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from stream_state import Event, MetricSample, Recording, Stream, open_database

T0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
HEALTH = ("healthy", "degraded")
STATUS = ("starting", "running")


def register(name: str) -> Stream:
    return Stream.register(f"soak-{name}", f"rtsp://viewer:pw@10.1.0.1/{name}", {"fps": 15}, recording=True)


def run(name: str, seconds: float, media: Path) -> dict[str, Any]:
    """Write segments, checkpoints, health, status, events and metrics until the time is up.

    Every count is of calls that returned, so the database must hold exactly
    these rows. Segments overlap as with splitmuxsink: N+1 opens before N
    closes. Sample times are unique per worker (T0 + n ms), so no sample
    replaces another.
    """
    stream = register(name)
    counts = {
        "stream_id": stream.id,
        "segments_begun": 0,
        "segments_completed": 0,
        "checkpoints": 0,
        "health_changes": 0,
        "health_reports": 0,
        "status_changes": 0,
        "events": 0,
        "samples": 0,
        "batches": 0,
        "cycles": 0,
    }
    deadline = time.monotonic() + seconds
    previous: Recording | None = None
    sample_ms = 0
    n = 0
    while time.monotonic() < deadline:
        n += 1
        at = T0 + dt.timedelta(seconds=n)
        segment = stream.begin_segment(media / f"{name}-{n:06d}.mp4", started_at=at, storage="disk0")
        counts["segments_begun"] += 1
        segment.checkpoint(100 * n, at=at)
        counts["checkpoints"] += 1
        if previous is not None:
            previous.complete_segment(ended_at=at, size_bytes=1000 + n)
            counts["segments_completed"] += 1
        previous = segment
        # A change (an event), then the same state again (only last_seen_at moves).
        for _ in range(2):
            counts["health_changes"] += stream.record_health(HEALTH[n % 2], at=at)
            counts["health_reports"] += 1
        # stopped -> starting -> running -> starting (a restart) -> running ...
        counts["status_changes"] += stream.set_status(STATUS[(n - 1) % 2])
        Event.record("soak_tick", stream, data={"n": n, "worker": name}, at=at)
        counts["events"] += 1
        batch = []
        for series in ("fps", "bitrate_kbps", "dropped"):
            sample_ms += 1
            when = T0 + dt.timedelta(milliseconds=sample_ms)
            batch.append(
                {"name": series, "value": float(n), "stream": stream, "labels": {"w": name}, "at": when}
            )
        counts["samples"] += MetricSample.record_many(batch)
        counts["batches"] += 1
        if n % 10 == 0:  # a reader among the writers
            assert Recording.for_stream(stream).count() == counts["segments_begun"]
        counts["cycles"] += 1
    if previous is not None:
        previous.complete_segment(ended_at=T0 + dt.timedelta(seconds=n + 1), size_bytes=7)
        counts["segments_completed"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--pg-schema")
    args = parser.parse_args()
    extra = {"options": f"-c search_path={args.pg_schema}"} if args.pg_schema else {}
    try:
        open_database(args.url, **extra)
        register(args.name)
        print("ready", flush=True)
        sys.stdin.readline()
        counts = run(args.name, args.seconds, args.dir)
    except BaseException:
        traceback.print_exc()
        print(json.dumps({"error": traceback.format_exc()}), flush=True)
        sys.exit(1)
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
