"""A manager-like workload for the crash tests, run as a child process and killed with SIGKILL.

It restores like a real manager, then records several streams into real
files forever: segments begun, grown, checkpointed, completed (two open at a
time, as splitmuxsink does), old segments deleted, health flips, events and
metric batches. Among them, what a real recorder meets (issue 13): a
relative path, which must be refused, and the wall clock stepping (2 s
back or forward, 40 days ahead, a 1970 boot, then right again), which the
package's own "now" follows (``stream_state.timeutil`` reads a skewed clock).
After each call that committed, it appends a line to a journal; the parent
checks that everything journaled survived the kill.

    python -m tests.crash_workload --url URL --dir DIR --journal FILE --seed N [--pg-schema S] [--prefix P]

Each run has its own session; two runs with different prefixes record side by
side on one database, and each one's restore leaves the other's work alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import time
import types
from pathlib import Path

import stream_state.timeutil
from stream_state import (
    Event,
    HealthState,
    MetricSample,
    Recording,
    SegmentState,
    Stream,
    ValidationError,
    open_database,
)
from stream_state.restore import Restorer

STREAMS = 4
HEALTH = [HealthState.HEALTHY, HealthState.HEALTHY, HealthState.DEGRADED, HealthState.UNHEALTHY]
# Clock steps, as offsets from the true time (None: the 1970 boot of a board without an RTC).
CLOCK_STEPS = {
    "back 2 s": dt.timedelta(seconds=-2),
    "ahead 2 s": dt.timedelta(seconds=2),
    "ahead 40 days": dt.timedelta(days=40),
    "1970 boot": None,
    "right": dt.timedelta(0),
}


class SkewedClock:
    """What the package reads as the time (``stream_state.timeutil.time``), stepped on demand."""

    def __init__(self) -> None:
        self.offset_ns = 0

    def step(self, offset: dt.timedelta | None) -> None:
        if offset is None:  # 1970, a few minutes after the epoch, as a fresh boot
            self.offset_ns = 300 * 10**9 - time.time_ns()
        else:
            self.offset_ns = offset // dt.timedelta(microseconds=1) * 1000

    def time_ns(self) -> int:
        return time.time_ns() + self.offset_ns


def workload_name(seed: int) -> str:
    return f"crash-workload-{seed}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--journal", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pg-schema")
    parser.add_argument("--prefix", default="cam", help="stream names; two workloads on one file use two")
    args = parser.parse_args()

    # The application name lets the parent wait until the server has finished
    # this process's last transaction (tests/test_crash.py).
    extra = (
        {"options": f"-c search_path={args.pg_schema}", "application_name": workload_name(args.seed)}
        if args.pg_schema
        else {}
    )
    open_database(args.url, **extra)
    Restorer().restore()
    rng = random.Random(args.seed)
    # Line-buffered: each line reaches the kernel at once and survives SIGKILL.
    journal = args.journal.open("a", buffering=1)

    def note(*fields: object) -> None:
        journal.write(json.dumps(fields) + "\n")

    streams = [
        Stream.register(
            f"{args.prefix}-{i}",
            f"rtsp://viewer:s3cret{i}@10.0.0.{i + 1}/stream1",
            {"fps": 15},
            recording=True,
        )
        for i in range(STREAMS)
    ]
    open_files: dict[int, list[tuple[Recording, int]]] = {stream.id: [] for stream in streams}
    clock = SkewedClock()
    stream_state.timeutil.time = types.SimpleNamespace(time_ns=clock.time_ns)  # type: ignore[attr-defined]
    print("ready", flush=True)

    while True:
        stream = rng.choice(streams)
        live = open_files[stream.id]
        roll = rng.random()
        if roll < 0.2 and len(live) < 2:
            path = args.dir / f"{stream.name}-{os.getpid()}-{rng.getrandbits(40):010x}.mp4"
            segment = stream.begin_segment(path, storage="disk0")
            note("begin", segment.id, stream.id, segment.segment_index, str(path))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            live.append((segment, fd))
        elif roll < 0.45 and live:
            segment, fd = live[-1]
            os.write(fd, os.urandom(rng.randint(100, 4000)))
            size = os.fstat(fd).st_size
            segment.checkpoint(size)
            note("checkpoint", segment.id, size)
        elif roll < 0.6 and live:
            segment, fd = live.pop(0)
            os.write(fd, os.urandom(rng.randint(1, 2000)))
            os.close(fd)
            segment.complete_segment()
            note("complete", segment.id, segment.size_bytes)
        elif roll < 0.68:
            old = (
                Recording.select()
                .where((Recording.stream == stream) & (Recording.state == SegmentState.COMPLETE.value))
                .order_by(Recording.started_at)
                .first()
            )
            if old is not None:
                note("deleting", old.id)
                old.delete_file()
                note("deleted", old.id)
        elif roll < 0.8:
            state = rng.choice(HEALTH)
            if stream.record_health(state, reason="workload"):
                note("health", stream.id, str(state))
        elif roll < 0.82:
            label = rng.choice(list(CLOCK_STEPS))
            clock.step(CLOCK_STEPS[label])
            note("clock", label)
        elif roll < 0.84:
            relative = f"{stream.name}-{rng.getrandbits(20)}.mp4"
            try:
                stream.begin_segment(relative, storage="disk0")
            except ValidationError:
                note("refused", relative)
            else:
                note("relative_accepted", relative)  # the parent fails on this
        elif roll < 0.9:
            now = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=rng.randint(0, 10**6))
            batch = [
                {"name": "bitrate_kbps", "value": rng.uniform(1000, 5000), "stream": s, "at": now}
                for s in streams
            ]
            written = MetricSample.record_many(batch)
            note("metrics", [[s.id, int(now.timestamp() * 1000)] for s in streams], written)
        else:
            event = Event.record(
                "workload_tick", stream, message=f"tick via {stream.uri}", data={"n": rng.random()}
            )
            note("event", event.id)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
