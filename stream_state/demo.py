"""``stream-state demo``: crash a small simulated recorder and watch it come back.

The parent (``run_demo``) makes a working directory and starts a child
process that behaves like a stream manager on the embedded SQLite default:
it restores, registers three cameras, and records each into real little
segment files (MPEG-TS packets, a few KB a second), one file a second,
opening the next before closing the last as splitmuxsink does. It
checkpoints, flips health (one camera stops recording for a second), and
samples metrics. The parent kills it with SIGKILL while segments are being
written, waits a moment as a supervisor would, restores as the restarted
manager and prints what came back, what was repaired, the gaps and the
storage used. No network, no setup, a few seconds.

    python -m stream_state.demo [--dir DIR] [--keep]   the whole demo
    python -m stream_state.demo --child DIR            the recorder alone (what the demo kills)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click

from . import history
from .cli_output import (
    format_duration,
    format_size,
    format_table,
    format_time,
    restored_streams_table,
    zone_name,
)
from .database import open_database
from .errors import StreamStateError
from .models import Event, MetricSample, MetricSeries, Recording, Stream, database_proxy
from .pwtypes import tuple_rows
from .redact import redact_text
from .restore import Restorer
from .states import HealthState, StreamStatus
from .timeutil import from_millis, now_millis

DB_NAME = "state.db"
MEDIA_DIR = "media"
LOG_NAME = "recorder.log"

SEGMENT_SECONDS = 1.0
TICK_SECONDS = 0.1
TS_PACKET = b"\x47" + bytes(187)  # an MPEG-TS packet: the sync byte and padding
PACKETS_PER_TICK = 4  # about 7.5 KB a second per camera
CHECKPOINT_EVERY = 3  # ticks
KILL_TICKS = 4  # ticks of recording after the kill window opens, then the child waits for its SIGKILL
RESTART_DELAY = 0.5  # how long the recorder stays dead before the "supervisor" restarts it
MIN_GAP = dt.timedelta(seconds=0.25)  # shorter holes are segment-boundary jitter
START_TIMEOUT = 60.0  # a cold start on a slow machine
RUN_TIMEOUT = 20.0
CHILD_LIFETIME = 60.0  # an orphaned recorder stops by itself

# Documentation addresses (TEST-NET-1): nothing is ever contacted. The
# passwords are there to show that they are never printed.
CAMERAS = (
    ("front-door", "rtsp://admin:demo-password@192.0.2.10:554/stream1"),
    ("garage", "rtsp://viewer:demo-password@192.0.2.11:554/h264"),
    ("lobby", "rtsp://admin:demo-password@192.0.2.12/live?token=demo-token"),
)


class DemoFailed(StreamStateError):
    """The simulated recorder did not start or behave; the message says what it printed."""


# --- the child: a tiny stream manager --------------------------------------------------------------


@dataclass
class Camera:
    stream: Stream
    directory: Path
    recording: bool = True
    waiting_for_keyframe: bool = False
    segment_started: float = 0.0
    open: list[tuple[Recording, IO[bytes] | None]] = field(default_factory=list)

    def begin(self, elapsed: float, create_file: bool = True) -> Recording:
        path = self.directory / f"{self.stream.name}-{self.stream.next_segment_index:05d}.ts"
        segment = self.stream.begin_segment(path, storage=MEDIA_DIR)  # the row first ...
        # ... then the file, unbuffered: what was written survives the SIGKILL.
        handle = open(path, "wb", buffering=0) if create_file else None  # noqa: SIM115 - closed by complete_oldest
        self.open.append((segment, handle))
        self.segment_started = elapsed
        return segment

    def write(self) -> None:
        _segment, handle = self.open[-1]
        if handle is not None:
            handle.write(TS_PACKET * PACKETS_PER_TICK)

    def checkpoint(self) -> None:
        for segment, handle in self.open:
            if handle is not None:
                segment.checkpoint(handle.tell())

    def complete_oldest(self) -> None:
        segment, handle = self.open.pop(0)
        if handle is not None:
            handle.close()
        segment.complete_segment()  # size from the file


def _say(*words: object) -> None:
    print(*words, flush=True)


def _narrate(elapsed: float, text: str) -> None:
    _say(f"{elapsed:5.1f} s  {text}")


def run_child(directory: Path) -> None:
    """Record until killed (or, if orphaned, for a minute)."""
    session_ms = now_millis()
    open_database(f"sqlite:///{directory / DB_NAME}")
    Restorer().restore()
    rng = random.Random(7)
    cameras = []
    for name, uri in CAMERAS:
        stream = Stream.register(name, uri, {"fps": 15, "segment_seconds": SEGMENT_SECONDS}, recording=True)
        (directory / MEDIA_DIR / name).mkdir(parents=True, exist_ok=True)
        cameras.append(Camera(stream, directory / MEDIA_DIR / name))
    by_name = {camera.stream.name: camera for camera in cameras}
    garage, lobby = by_name["garage"], by_name["lobby"]

    _say("ready", session_ms, now_millis())
    start = time.monotonic()
    for camera in cameras:
        camera.stream.set_status(StreamStatus.STARTING)
        camera.stream.set_status(StreamStatus.RUNNING)
        camera.stream.record_health(HealthState.HEALTHY)
        camera.begin(0.0)
    _narrate(0.0, f"{', '.join(by_name)}: running, recording {SEGMENT_SECONDS:g}-second segments")

    tick = 0
    kill_window: int | None = None  # the tick at which the kill window opened
    while time.monotonic() - start < CHILD_LIFETIME:
        tick += 1
        if kill_window is not None and tick > kill_window + KILL_TICKS:
            # Hold still until the parent's SIGKILL lands, so that the crash
            # finds the same moment on every run, however slowly a loaded
            # machine lets the parent read the line.
            _say("kill-now")
            time.sleep(CHILD_LIFETIME)
            break
        time.sleep(max(0.0, start + tick * TICK_SECONDS - time.monotonic()))
        elapsed = tick * TICK_SECONDS

        if tick == 10:
            lobby.stream.record_health(HealthState.UNHEALTHY, reason="no frames for 2 s")
            lobby.stream.set_status(StreamStatus.ERROR, reason="no frames")
            while lobby.open:
                lobby.complete_oldest()
            lobby.recording = False
            _narrate(elapsed, "lobby: unhealthy (no frames for 2 s), stopped recording")
        elif tick == 14:
            garage.stream.record_health(HealthState.DEGRADED, reason="packet loss 4%")
            _narrate(elapsed, "garage: degraded (packet loss 4%), still recording")
        elif tick == 20:
            lobby.stream.record_health(HealthState.HEALTHY, reason="frames again")
            lobby.stream.set_status(StreamStatus.STARTING)
            lobby.stream.set_status(StreamStatus.RUNNING)
            lobby.begin(elapsed)
            lobby.recording = True
            _narrate(elapsed, "lobby: healthy again, recording")
        elif tick == 24:
            garage.stream.record_health(HealthState.HEALTHY, reason="packet loss 0%")
            _narrate(elapsed, "garage: healthy again")

        for camera in cameras:
            if not camera.recording or camera.waiting_for_keyframe:
                continue
            if elapsed - camera.segment_started >= SEGMENT_SECONDS - 1e-6:
                # splitmuxsink asks for the next file before it closes the last.
                keyframe_wait = camera is garage and tick >= 30
                segment = camera.begin(elapsed, create_file=not keyframe_wait)
                if keyframe_wait:
                    camera.waiting_for_keyframe = True
                    _narrate(
                        elapsed,
                        f"garage: row of {os.path.basename(segment.path)} committed, "
                        "waiting for a keyframe before creating the file",
                    )
                else:
                    camera.write()
                camera.complete_oldest()
                if keyframe_wait:
                    _say("kill-window")
                    kill_window = tick
            else:
                camera.write()

        # None once the kill window is open: what the open segments write
        # from then on is known only from their files (restore goes by mtime).
        if tick % CHECKPOINT_EVERY == 0 and kill_window is None:
            for camera in cameras:
                camera.checkpoint()
        samples = []
        for camera in cameras:
            healthy = camera.stream.health == HealthState.HEALTHY
            fps = 0.0 if not camera.recording else rng.uniform(14.5, 15.0) if healthy else rng.uniform(9, 11)
            kbps = 0.0 if not camera.recording else rng.uniform(58, 62)
            samples += [("fps", fps, camera.stream), ("bitrate_kbps", kbps, camera.stream)]
        MetricSample.record_many(samples)


# --- the parent: run it, kill it, restore ------------------------------------------------------------


def _pump(stream: IO[str], lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


@dataclass
class _Run:
    session_ms: int  # the recorder started (its events count from here)
    recording_ms: int  # its cameras started recording (the gap window starts here)


def _log_tail(workdir: Path) -> str:
    try:
        text = (workdir / LOG_NAME).read_text(errors="replace").strip()
    except OSError:
        return ""
    return redact_text(text.splitlines()[-1]) if text else ""


def _run_and_kill(workdir: Path, echo: Callable[[str], None]) -> _Run:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with open(workdir / LOG_NAME, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "stream_state.demo", "--child", str(workdir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=workdir,
            env=env,
            text=True,
        )
    lines: queue.Queue = queue.Queue()
    pump = threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True)
    pump.start()

    def until(word: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise DemoFailed(f"the demo recorder did not get to {word!r} within {timeout:g} s") from None
            if line is None:
                child.wait()
                raise DemoFailed(
                    f"the demo recorder exited with status {child.returncode} before {word!r}: "
                    f"{_log_tail(workdir) or 'no output'}"
                )
            if line.split()[:1] == [word]:
                return line
            echo(f"  {line}")

    try:
        echo(f"Starting the recorder (pid {child.pid}): {len(CAMERAS)} cameras, one segment file a second")
        _ready, session_ms, recording_ms = until("ready", START_TIMEOUT).split()
        ready_at = time.monotonic()
        until("kill-window", RUN_TIMEOUT)
        until("kill-now", RUN_TIMEOUT)  # the other cameras kept writing their open segments meanwhile
        child.kill()  # SIGKILL: no handler, no cleanup, no last commit
        child.wait()
        killed_after = time.monotonic() - ready_at
        while (line := lines.get()) is not None:
            echo(f"  {line}")
        echo(f"  {killed_after:5.1f} s  SIGKILL: the recorder died in the middle of its segments")
        return _Run(int(session_ms), int(recording_ms))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        pump.join(timeout=5)  # it ends at the pipe's end of file
        if child.stdout is not None:
            child.stdout.close()


def _gap_reason(stream_id: int, gap: history.Gap, until: dt.datetime) -> str:
    if gap.end >= until:
        return "down: killed, then restarted"
    # The health change that stopped the recording, if one did.
    for change in history.health_transitions(
        stream_id, gap.start - dt.timedelta(seconds=0.5), gap.end, limit=1
    ):
        return f"{change.new}" + (f" ({change.reason})" if change.reason else "")
    return ""


def _report(workdir: Path, run: _Run, echo: Callable[[str], None]) -> None:
    def table(headers: list[str], rows: list[list[Any]], align: str | None = None) -> None:
        for line in format_table(headers, rows, align).splitlines():
            echo(f"  {line}")

    def clock(value: dt.datetime | None) -> str:
        return format_time(value, precise=True, date=False).rsplit(" ", 1)[0] if value else "-"

    previous = database_proxy.obj
    db = open_database(f"sqlite:///{workdir / DB_NAME}")
    try:
        state = Restorer(db).restore()
        since = from_millis(run.recording_ms)
        until = state.restored_at
        echo("")
        kind = "a crash" if state.clean_shutdown is False else "a clean stop"
        echo(f"Restored after {kind}; last sign of life {format_time(state.last_stop_at, precise=True)}.")
        echo("Streams to bring back (the manager resumes each at its next index, so no file is overwritten):")
        for line in restored_streams_table(state.streams, last_segment=False).splitlines():
            echo(f"  {line}")

        echo("")
        echo(f"Repaired {len(state.repairs)} segment(s) left open by the crash, from what is on disk:")
        table(
            ["stream", "segment", "was", "now", "size", "ends", "evidence"],
            [
                [
                    r.stream,
                    os.path.basename(r.path),
                    r.old_state,
                    r.new_state or "deleted",
                    format_size(r.size_bytes),
                    clock(r.ended_at),
                    r.evidence,
                ]
                for r in state.repairs
            ],
            align="llllr",
        )

        echo("")
        echo(
            f"Gaps between {clock(since)} and {clock(until)} ({zone_name(until)}), "
            f"{MIN_GAP.total_seconds():g} s or longer:"
        )
        rows = []
        for snapshot in state.streams:
            for gap in history.gaps(snapshot.id, since, until, tolerance=MIN_GAP, now=until):
                rows.append(
                    [
                        snapshot.name,
                        clock(gap.start),
                        clock(gap.end),
                        format_duration(gap.duration),
                        _gap_reason(snapshot.id, gap, until),
                    ]
                )
        table(["stream", "from", "to", "length", "why"], rows, align="lllr")

        echo("")
        echo("Storage used:")
        usage = sorted(history.storage_usage("stream"), key=lambda row: row.stream or "")
        table(
            ["stream", "segments", "size"],
            [[u.stream, u.segments, format_size(u.size_bytes)] for u in usage]
            + [["total", sum(u.segments for u in usage), format_size(sum(u.size_bytes for u in usage))]],
            align="lrr",
        )
        files = [p for p in (workdir / MEDIA_DIR).rglob("*.ts") if p.is_file()]
        echo(f"  on disk: {len(files)} files, {format_size(sum(p.stat().st_size for p in files))}")

        session = from_millis(run.session_ms)
        events = Counter(t for (t,) in tuple_rows(Event.select(Event.type).where(Event.ts >= session)))
        samples = MetricSample.select().where(MetricSample.ts >= session).count()
        echo("")
        echo(
            f"Events: {sum(events.values())} ("
            + ", ".join(f"{n} {event_type}" for event_type, n in events.most_common())
            + f"); metrics: {samples} samples in {MetricSeries.select().count()} series."
        )
        # The restarted manager stops cleanly, so the next start reads "clean stop".
        Restorer(db).shutdown()
    finally:
        db.close()
        database_proxy.initialize(previous)


def run_demo(
    directory: Path | None = None, *, keep: bool = False, echo: Callable[[str], None] = click.echo
) -> Path:
    """Run the whole demo; return the working directory (removed unless kept)."""
    temporary = directory is None
    # Absolute: the recorder runs in the directory and finds its database by this path.
    workdir = Path(
        tempfile.mkdtemp(prefix="stream-state-demo-") if directory is None else directory
    ).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{workdir / DB_NAME}"
    echo("stream-state demo: a simulated recorder, killed in the middle of its segments, then restored.")
    echo(f"Working in {workdir} (database {DB_NAME}, segment files under {MEDIA_DIR}/).")
    echo("")
    finished = False
    try:
        run = _run_and_kill(workdir, echo)
        echo(f"  (the supervisor waits {RESTART_DELAY:g} s, then restarts the recorder)")
        time.sleep(RESTART_DELAY)
        _report(workdir, run, echo)
        finished = True
    finally:
        echo("")
        if temporary and not keep and finished:
            shutil.rmtree(workdir, ignore_errors=True)
            echo(f"Removed {workdir}; run with --keep or --dir DIR to keep the files.")
        else:
            echo(f"Files are in {workdir}" + ("" if finished else f" (see {LOG_NAME})") + ". Look around:")
            echo(f"  stream-state --db {db_url} streams")
            echo(f"  stream-state --db {db_url} events --limit 20")
            echo(f"  stream-state --db {db_url} gaps lobby --since -10m --min-gap 250ms")
    return workdir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stream_state.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="work in this directory and keep it")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--child", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        run_child(args.child)
    else:
        run_demo(args.dir, keep=args.keep)


if __name__ == "__main__":
    main()
