"""Metric blocks: bytes per sample and encode/decode speed of ``stream_state.codec``.

    python bench/blocks.py                 # an hour of the manager's 10 series per stream, 20 streams

The series are those of bench/manager.py (a camera's fps, bitrate, dropped
frames, latency, decode time, queue depth, jitter, lost packets, keyframe
interval and CPU, rounded as a pipeline reports them), one sample a second
for an hour each, plus two harder cases: the same with 5 ms of jitter on the
tick times, and noisy doubles that are not short decimals (the worst case,
which a per-series resolution turns back into scaled ints).

For each: bytes per sample of the encoded block (header included, the row
around it not: about 60 bytes per series-hour, 0.02 a sample), encode and
decode rates, and the same encoder written with numpy, to decide whether the
package needs numpy (it does not, if the pure-Python one is close); decoding
both with the codec's plain-Python path and with its numpy one (used when
numpy is installed).
Every block is decoded and compared bit for bit. Today's row per sample
costs about 19 bytes (bench/ingest.py).

Then the store: a SQLite database (``open_database``) with 7 days of one
sample a second of a rounded, noisy series (604,800 samples) written by
``record_many``, rolled up and compacted by ``Maintenance``'s jobs: bytes per
sample on disk (``dbstat``: the sample, block and rollup tables, before and
after), and ``metric_buckets`` over 7 days in 1-hour buckets, aligned and
with ends on minutes, with ends anywhere, and a live chart's "last 7 days"
(ending in two hours of raw head written after compaction), each moving
from run to run so that its edges fall anywhere in their hours; against
the same answer from raw samples before compaction (the live window: a
brute force in Python), with and without numpy (the goal: <= 1 ms), and
with ``source="raw"`` (no rollups: whole hours from the blocks' stored
summaries, the blocks an end cuts decoded). Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import statistics
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from manager import values as manager_values

from stream_state import codec

T0 = 1_780_000_000_000
T0_MS = 1_793_491_200_000  # the store's first hour, 2026-11-01 UTC
HOUR = 3600
GOAL_BYTES = 2.5


def manager_series(streams: int, jitter: int, rng: random.Random) -> list[tuple[list[int], list[float]]]:
    """The 10 series per stream of bench/manager.py over one hour."""
    out = []
    for i in range(streams):
        stamps = [T0 + t * 1000 + (rng.randint(-jitter, jitter) if jitter else 0) for t in range(HOUR)]
        columns: list[list[float]] = [[] for _ in range(10)]
        for t in range(HOUR):
            for column, value in zip(columns, manager_values(t, i), strict=True):
                column.append(value)
        out.extend((stamps, column) for column in columns)
    return out


def rounded_noise(streams: int, jitter: int, rng: random.Random) -> list[tuple[list[int], list[float]]]:
    """Values that do not repeat: latency-like noise rounded to 0.1, and a random-walk bitrate."""
    out = []
    for _ in range(streams):
        stamps = [T0 + t * 1000 + (rng.randint(-jitter, jitter) if jitter else 0) for t in range(HOUR)]
        out.append((stamps, [round(80 + rng.random() * 20, 1) for _ in range(HOUR)]))
        walk, level = [], 4000.0
        for _ in range(HOUR):
            level = max(0.0, level + rng.randint(-30, 30))
            walk.append(level)
        out.append((stamps, walk))
    return out


def noisy(streams: int, rng: random.Random) -> list[tuple[list[int], list[float]]]:
    stamps = [T0 + t * 1000 for t in range(HOUR)]
    return [(stamps, [80 + rng.gauss(0, 3) for _ in range(HOUR)]) for _ in range(streams * 2)]


def numpy_encode(stamps: list[int], values: list[float]) -> bytes:
    """The codec's format, encoded with numpy (for the comparison only)."""
    import numpy as np

    ts = np.asarray(stamps, dtype=np.int64)
    dods = np.diff(ts)
    dods = np.concatenate((dods[:1], np.diff(dods)))
    v = np.asarray(values, dtype=np.float64)
    mode, decimals = codec.MODE_XOR, 0
    column = None
    for k in range(codec.MAX_DECIMALS + 1):
        q = np.round(v * 10**k)
        if (
            np.array_equal(q / 10**k, v)
            and np.all(np.abs(q) < 2**53)
            and not np.any(np.signbit(v) & (v == 0))
        ):
            ints = q.astype(np.int64)
            column = np.concatenate((ints[:1], np.diff(ints)))
            mode, decimals = codec.MODE_SCALED, k
            break

    def pack(x: np.ndarray) -> tuple[int, bytes]:
        z = ((x << 1) ^ (x >> 63)).astype(np.uint64)
        top = int(z.max()) if z.size else 0
        width = 1 if top < 2**8 else 2 if top < 2**16 else 4 if top < 2**32 else 8
        narrow = z.astype({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[width])
        return width, narrow.view(np.uint8).reshape(-1, width).T.tobytes()

    time_width, time_bytes = pack(dods)
    if column is not None:
        value_width, value_bytes = pack(column)
    else:
        bits = v.view(np.uint64)
        xors = np.concatenate((bits[:1], bits[1:] ^ bits[:-1]))
        value_width, value_bytes = 8, xors.view(np.uint8).reshape(-1, 8).T.tobytes()
    head = codec._HEADER.pack(codec.VERSION, mode, decimals, len(stamps), stamps[0], time_width, value_width,
                              len(time_bytes))  # fmt: skip
    return head + zlib.compress(time_bytes + value_bytes, codec._ZLIB_LEVEL)


def measure(name: str, series: list[tuple[list[int], list[float]]], resolution: int | None = None) -> dict:
    samples = sum(len(s) for s, _ in series)
    start = time.process_time()
    blocks = [codec.encode(s, v, resolution) for s, v in series]
    encode_s = time.process_time() - start
    decode_s = {}
    for use_numpy in (False, True):  # the codec's plain-Python decoder, and its numpy one
        codec.USE_NUMPY = use_numpy
        start = time.process_time()
        decoded = [codec.decode(b) for b in blocks]
        decode_s[use_numpy] = time.process_time() - start
        for (s, v), (s2, v2) in zip(series, decoded, strict=True):
            assert s2 == s
            expected = v if resolution is None else [round(x, resolution) for x in v]
            assert [struct.pack("<d", x) for x in v2] == [struct.pack("<d", x) for x in expected], name
    codec.USE_NUMPY = True
    for (s, v), block in zip(series, blocks, strict=True):
        if resolution is None:
            assert numpy_encode(s, v) == block, f"numpy and pure Python disagree on {name}"
    numpy_s = None
    if resolution is None:
        start = time.process_time()
        for s, v in series:
            numpy_encode(s, v)
        numpy_s = time.process_time() - start
    per_block = [len(b) / len(s) for b, (s, _) in zip(blocks, series, strict=True)]
    return {
        "name": name,
        "bytes": sum(len(b) for b in blocks) / samples,
        "worst": max(per_block),
        "median": statistics.median(per_block),
        "encode": samples / encode_s / 1e6,
        "decode": samples / decode_s[False] / 1e6,
        "numpy decode": samples / decode_s[True] / 1e6,
        "numpy": None if numpy_s is None else samples / numpy_s / 1e6,
    }


def store(days: int) -> None:
    import datetime as dt
    import tempfile

    from stream_state import MetricSample, MetricSeries, Stream, open_database
    from stream_state import history as h
    from stream_state.compaction import compact_samples
    from stream_state.rollups import refresh_rollups
    from stream_state.timeutil import to_millis

    rng = random.Random(7)
    t0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    with tempfile.TemporaryDirectory(prefix="bench-blocks-") as tmp:
        db = open_database(f"{tmp}/store.db")
        cam = Stream.register("cam-1", "rtsp://h/1")
        seconds = days * 86400
        level = 80.0
        written: dict[int, float] = {}  # ts ms -> value, for the brute-force check of the live window

        def write(first_s: int, last_s: int) -> None:
            nonlocal level
            for start in range(first_s, last_s, 3600):
                batch = []
                for t in range(start, start + 3600):
                    level = min(120.0, max(40.0, level + rng.choice((-0.1, 0.0, 0.1))))
                    jitter = rng.randint(-5, 5)
                    at = t0 + dt.timedelta(seconds=t, milliseconds=jitter)
                    value = round(level + rng.random() * 2, 1)
                    batch.append(("latency_ms", value, cam, None, at))
                    written[T0_MS + t * 1000 + jitter] = value
                MetricSample.record_many(batch)

        write(0, seconds)
        end = t0 + dt.timedelta(seconds=seconds)
        refresh_rollups(until=end)
        db.execute_sql("VACUUM")

        def sizes() -> dict[str, int]:
            rows = db.execute_sql(
                "SELECT name, SUM(pgsize) FROM dbstat WHERE name LIKE 'metric_%' GROUP BY name"
            ).fetchall()
            return {name: int(size) for name, size in rows}

        def timed(fn: Callable[[int], object], runs: int = 200) -> tuple[float, float]:
            """Median wall and CPU ms of ``fn(run)`` (a shared machine's wall time includes waiting)."""
            walls, cpus = [], []
            for run in range(runs):
                start_t, start_c = time.perf_counter(), time.process_time()
                fn(run)
                cpus.append(time.process_time() - start_c)
                walls.append(time.perf_counter() - start_t)
            return statistics.median(walls) * 1000, statistics.median(cpus) * 1000

        series = MetricSeries.get()
        minute = dt.timedelta(minutes=1)
        # Aligned; ends on minutes (the minute rollups take them); ends anywhere, as a chart's
        # "last 7 days" has: a sub-minute edge inside a compacted hour decodes that block, and
        # the cost depends on where in the hour it falls, so each run moves the window by
        # 37.123 s (within 40 minutes): the edges visit every part of their hours.
        windows: dict[str, Callable[[int], tuple[dt.datetime, dt.datetime]]] = {
            "aligned": lambda run: (t0, end),
            "minute ends": lambda run: (t0 + (17 + run % 26) * minute, end - (43 - run % 26) * minute),
            "ms ends": lambda run: (
                t0 + (run * dt.timedelta(seconds=37.123)) % (40 * minute) + dt.timedelta(seconds=1.456),
                end - 41 * minute + (run * dt.timedelta(seconds=37.123)) % (40 * minute),
            ),
        }
        hour = dt.timedelta(hours=1)
        before = sizes()
        checked = range(0, 200, 7)
        want = {
            (k, run): h.metric_buckets(series, *w(run), hour, source="raw")
            for k, w in windows.items()
            for run in checked
        }

        def query(w: Callable[[int], tuple[dt.datetime, dt.datetime]], source: str = "auto") -> Callable:
            return lambda run: h.metric_buckets(series, *w(run), hour, source=source)

        t_before = {k: timed(query(w)) for k, w in windows.items()}
        # The reference: the raw computation, every raw row aggregated by the database.
        t_reference = timed(query(windows["aligned"], "raw"), runs=3)
        report = compact_samples(end + dt.timedelta(hours=2))
        db.execute_sql("VACUUM")
        after = sizes()
        for k, w in windows.items():
            for run in checked:
                a = want[(k, run)]
                for b in (query(w)(run), query(w, "raw")(run)):
                    assert [(x.start, x.count, x.min, x.max, x.last) for x in a] == [
                        (x.start, x.count, x.min, x.max, x.last) for x in b
                    ], k
                    assert all(
                        abs(x.sum - y.sum) < 1e-6 * max(1.0, abs(x.sum)) for x, y in zip(a, b, strict=True)
                    )
        # A live chart's "last 7 days": two more hours written (the raw head, rolled up to
        # two minutes before its end), the window ending in them and moving across an hour, so
        # that its start cuts a compacted block anywhere in its hour.
        write(seconds, seconds + 7200)
        refresh_rollups(until=end + dt.timedelta(hours=2, minutes=-2))
        windows["last 7 days"] = lambda run: (
            end
            + 60 * minute
            + (run * dt.timedelta(seconds=37.123)) % (57 * minute)
            - dt.timedelta(days=days),
            end + 60 * minute + (run * dt.timedelta(seconds=37.123)) % (57 * minute),
        )
        stamps = sorted(written)
        for run in checked:
            lo, hi = (to_millis(x) for x in windows["last 7 days"](run))
            got = [
                (to_millis(x.start), x.count, x.min, x.max, x.last)
                for x in query(windows["last 7 days"])(run)
            ]
            brute = []
            for bucket in range(lo // 3_600_000 * 3_600_000, hi, 3_600_000):
                inside = stamps[
                    bisect.bisect_left(stamps, max(lo, bucket)) : bisect.bisect_left(
                        stamps, min(hi, bucket + 3_600_000)
                    )
                ]
                if inside:
                    values = [written[ts] for ts in inside]
                    brute.append((bucket, len(values), min(values), max(values), values[-1]))
            assert got == brute, run
        t_before["last 7 days"] = (math.nan, math.nan)
        t_after = {k: timed(query(w)) for k, w in windows.items()}
        codec.USE_NUMPY = False  # the cut blocks decoded in plain Python
        t_pure = {k: timed(query(w)) for k, w in windows.items()}
        codec.USE_NUMPY = True
        # Without the rollups: whole hours from the blocks' summaries, the cut blocks decoded.
        t_raw = {k: timed(query(w, "raw")) for k, w in windows.items()}
        db.close()
    n = seconds
    print(f"\nthe store: {days} days of one rounded, noisy sample a second (5 ms jitter), {n:,} samples")
    print(f"  compacted {report.samples:,} samples into {report.blocks} blocks")
    for label, size in (("before (raw rows)", before), ("after (blocks)", after)):
        per = {k: v / n for k, v in size.items()}
        shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items()))
        samples_only = (size.get("metric_sample", 0) + size.get("metric_block", 0)) / n
        print(
            f"  {label:<18} {samples_only:6.2f} B/sample for the samples (goal <= {GOAL_BYTES}); "
            f"tables: {shown}"
        )
    print(
        "  7 days in 1-hour buckets, ms of wall (CPU), medians of 200 (goal <= 1 ms); "
        "answers identical to the raw ones:"
    )
    print(
        f"    {'window':<12} {'raw rows + rollups':>19} {'blocks + rollups':>17} {'(no numpy)':>13} "
        f"{'blocks only':>14}"
    )

    def shown(t: tuple[float, float], width: int) -> str:
        return ("-" if math.isnan(t[0]) else f"{t[0]:.2f} ({t[1]:.2f})").rjust(width)

    for k in windows:
        print(
            f"    {k:<12} {shown(t_before[k], 19)} {shown(t_after[k], 17)} {shown(t_pure[k], 13)} "
            f"{shown(t_raw[k], 14)}"
        )
    print(f"    the raw computation (source='raw' over the raw rows, aligned): {t_reference[0]:.0f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--days", type=int, default=7, help="days of one sample a second for the store part")
    parser.add_argument("--no-store", action="store_true", help="only the codec figures")
    args = parser.parse_args(argv)
    rng = random.Random(16)
    codec._numpy()  # imported once here, not inside the first timing
    rows = [
        measure("manager series, regular ticks", manager_series(args.streams, 0, rng)),
        measure("manager series, 5 ms jitter", manager_series(args.streams, 5, rng)),
        measure("rounded noise + random walk", rounded_noise(args.streams, 0, rng)),
        measure("rounded noise + random walk, jitter", rounded_noise(args.streams, 5, rng)),
        measure("noisy doubles (not short decimals)", noisy(args.streams, rng)),
        measure("noisy doubles, resolution=1", noisy(args.streams, rng), resolution=1),
    ]
    print(
        f"\none block per series-hour ({HOUR} samples), {args.streams} streams; rates in M samples/s of CPU"
    )
    header = (
        f"{'series':<36} {'B/sample':>8} {'median':>7} {'worst':>6} {'goal':>6} "
        f"{'encode':>7} {'decode':>7} {'numpy enc':>9} {'numpy dec':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        goal = f"<={GOAL_BYTES}" if row["name"].startswith(("manager", "rounded")) else ""
        numpy_rate = f"{row['numpy']:9.2f}" if row["numpy"] is not None else f"{'':>9}"
        print(
            f"{row['name']:<36} {row['bytes']:8.2f} {row['median']:7.2f} {row['worst']:6.2f} {goal:>6} "
            f"{row['encode']:7.2f} {row['decode']:7.2f} {numpy_rate} {row['numpy decode']:9.2f}"
        )
    if not args.no_store:
        store(args.days)


if __name__ == "__main__":
    main()
