"""``SplitmuxRecorder``: GStreamer's ``splitmuxsink`` wired to the package (extra ``[gstreamer]``).

One recorder per ``splitmuxsink``. It replaces the plumbing every manager
used to write:

* **A row before its file, the index in the name.** ``format-location-full``
  asks for fragment N's location; the recorder has ``Stream.begin_segment
  (path_template=...)`` take the index and commit the row, and returns the
  row's path, so the index in the file name always equals the row's
  ``segment_index``. ``start-index`` is set from the stream's counter.
* **Overlapping fragments.** splitmuxsink asks for fragment N+1's location
  before it closes fragment N; rows are found by location, so any order works.
* **Media time.** A pad probe notes each frame's running time; the first
  frame of a fragment and the end of its last are mapped to wall clock with
  the pipeline's clock and base time, and become the row's ``started_at`` /
  ``ended_at`` (``media_started_at`` / ``media_ended_at``), with the frame
  count and ``finalized=True`` once the muxer closed the file. A stalled
  source therefore shows as a hole between rows; the recorder also asks for
  a new file after a stall (``split-now``) so the hole falls between files,
  and, with ``report_stalls``, records the stall as a health change: the
  reason ``history.gaps`` gives for the hole.
* **Checkpoints** of open segments' sizes every ``checkpoint_interval``.
* **A clean stop.** ``drain(timeout)`` sends EOS to splitmuxsink's own sink
  pads (an EOS sent to the pipeline is swallowed by a stalled source) and
  returns once the muxer finalised the last file and its row is complete.

**The streaming thread is never held for long.** Every database write runs
on the recorder's own writer thread. ``format-location-full`` waits for the
new row at most ``callback_budget`` seconds (default 0.25 s); the other
callbacks only enqueue. When the database is slow or down, the fragment is
recorded under a provisional name (``<stream>-pending-<id>-<n>.<ext>`` in the
template's directory) and the writer keeps retrying; when the row is finally
committed, the file is renamed to the row's path (the index in the name again
equals the row's). Footage is never dropped for want of a database. A crash
before the row is written leaves a file without a row, which ``check
--adopt-orphans`` adopts; a crash between the row and the rename leaves a
``recording`` row whose file is missing (restore fails it, with its event) and
the provisional file, which ``check`` adopts.

Threads: GStreamer calls the recorder on its streaming threads; the recorder
needs no GLib main loop of its own (it listens with a synchronous bus
handler). From an asyncio manager (``stream_state.aio``) pass
``run=run_on_loop(asyncio.get_running_loop())`` and the ``start_index`` from
``await aio.restore()``: the writer thread then makes its calls through
``aio.run`` on the loop (the models are bound to the async database there),
and ``drain``/``close`` are awaited with ``asyncio.to_thread`` because they
wait for writes that need the loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import itertools
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import peewee as pw

from .errors import DatabaseUnavailable, StreamStateError, ValidationError
from .models import Recording, Stream
from .models.stream import require_path_template
from .probe import gcc_unwinder_first
from .states import HealthState

# Before PyGObject loads libgstreamer (and, with it, libunwind) into the global
# symbol scope, or C++ extensions imported later abort on their first exception.
gcc_unwinder_first()
try:  # the [gstreamer] extra: Debian's python3-gi + gir1.2-gstreamer-1.0
    import gi  # PyGObject ships no stubs: setup.cfg [mypy-gi.*]

    gi.require_version("Gst", "1.0")
    from gi.repository import Gst
except (ImportError, ValueError) as exc:  # pragma: no cover - exercised where GStreamer is missing
    Gst = None
    GST_MISSING: str | None = f"GStreamer's Python bindings are not installed ({exc})"
else:
    GST_MISSING = None

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{root}/{stream}/{stream}-{index:08d}.mkv"
# Errors worth retrying: the database is unreachable, locked or restarting.
RETRYABLE: tuple[type[BaseException], ...] = (DatabaseUnavailable, pw.OperationalError, pw.InterfaceError)
# A checkpoint or a stall report that fails is logged and skipped, never retried.
_SKIPPABLE: tuple[type[BaseException], ...] = (StreamStateError, *RETRYABLE)
_NS_PER_MS = 1_000_000


def require_gstreamer() -> Any:
    """The ``Gst`` module, initialised; ``RuntimeError`` naming what to install otherwise."""
    if Gst is None:
        raise RuntimeError(
            f"{GST_MISSING}: install gstreamer1.0-tools, gstreamer1.0-plugins-base/-good, python3-gi and "
            "gir1.2-gstreamer-1.0, and use a Python that sees them (see the README's GStreamer section)"
        )
    if not Gst.is_initialized():
        Gst.init(None)
    return Gst


@dataclasses.dataclass
class Fragment:
    """One file splitmuxsink writes: its location, its row once committed, its media."""

    number: int  # splitmuxsink's fragment id
    location: str  # what splitmuxsink was told (a provisional name while the row is pending)
    start_rt: int  # running time of the first frame, ns
    media_started_at: dt.datetime
    row: Recording | None = None
    closed: bool = False
    failed: str | None = None


@dataclasses.dataclass(frozen=True)
class DrainResult:
    """What ``drain`` achieved within its timeout."""

    finalized: bool  # the muxer closed every fragment it had open
    written: bool  # every row is written (the writer's queue is empty)
    open_locations: tuple[str, ...]  # fragments the muxer did not close
    seconds: float


TIMES_KEPT = 10_000


@dataclasses.dataclass
class CallbackTimes:
    """Seconds spent on the streaming thread per call (the last TIMES_KEPT), for benchmarks."""

    location: collections.deque[float] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=TIMES_KEPT)
    )
    closed: collections.deque[float] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=TIMES_KEPT)
    )
    pending_names: int = 0  # fragments named provisionally because the database was slow


class SplitmuxRecorder:
    """Record one stream through a ``splitmuxsink``, keeping rows and files in step.

    ``path_template`` is a ``str.format`` template with ``{root}``, ``{stream}``,
    ``{stream_id}`` and ``{index}``; the file's extension should match the
    muxer. Call ``start()`` before the pipeline goes to PLAYING (it sets
    ``start-index``), ``drain()`` at a clean stop, ``close()`` last.
    """

    def __init__(
        self,
        stream: Stream,
        splitmuxsink: Any,
        path_template: str = DEFAULT_TEMPLATE,
        *,
        root: str | os.PathLike[str] = ".",
        storage: str | None = None,
        checkpoint_interval: float = 10.0,
        callback_budget: float = 0.25,
        stall_after: float | None = 2.0,
        report_stalls: bool = True,
        split_after_stall: bool = True,
        retry_delay: float = 0.2,
        wall_clock: Callable[[], int] = time.time_ns,
        run: Callable[..., Any] | None = None,
    ):
        require_gstreamer()
        if not isinstance(stream, Stream):
            raise ValidationError("stream", stream, "expected a Stream (Stream.by_name(...))")
        if splitmuxsink is None or splitmuxsink.get_factory().get_name() != "splitmuxsink":
            raise ValidationError("splitmuxsink", splitmuxsink, "expected a splitmuxsink element")
        for name, value in (
            ("checkpoint_interval", checkpoint_interval),
            ("callback_budget", callback_budget),
        ):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValidationError(name, value, "expected a positive number of seconds")
        root_text = os.path.abspath(os.fspath(root))
        filled = (
            path_template.replace("{root}", root_text) if isinstance(path_template, str) else path_template
        )
        self.template = require_path_template(filled, stream.name, stream.id)
        self.stream = stream
        self.sink = splitmuxsink
        self.storage = storage
        self.checkpoint_interval = float(checkpoint_interval)
        self.callback_budget = float(callback_budget)
        self.stall_after = stall_after
        self.report_stalls = report_stalls
        self.split_after_stall = split_after_stall
        self.retry_delay = retry_delay
        self._wall_ns = wall_clock
        # How the writer thread calls the models: directly, or through an
        # asyncio manager's loop (run_on_loop) when the database is aio's.
        self._run_db: Callable[..., Any] = run or _call_directly
        self._direct = run is None
        self.times = CallbackTimes()
        self._lock = threading.Lock()
        # By the location splitmuxsink knows; a fragment leaves once its row is complete.
        self._fragments: dict[str, Fragment] = {}
        self._named = 0  # fragments named so far
        self._frames: collections.deque[tuple[int, int]] = collections.deque()  # (rt, end) ns
        self._last_frame_wall: float | None = None
        self._last_frame_end_rt: int | None = None
        self._stalled_since: float | None = None
        self._eos_seen = False
        self._last_closed = False  # the fragment EOS closes, the last one, is closed
        self._jobs: queue.Queue[tuple[str, Any, concurrent.futures.Future[Any]]] = queue.Queue()
        self._busy = 0  # jobs taken but not finished
        self._idle = threading.Condition(self._lock)
        self._pending_names = itertools.count()
        self._pending_tag = uuid.uuid4().hex[:8]
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._handlers: list[tuple[Any, int]] = []
        self._probes: list[tuple[Any, int]] = []
        self._pipeline: Any = None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, start_index: int | None = None) -> SplitmuxRecorder:
        """Connect to splitmuxsink and start the writer thread; call before PLAYING.

        ``start_index`` defaults to the stream's next segment index (what
        ``Restorer.restore()`` returns as ``next_segment_index``).
        """
        if self._writer is not None:
            return self
        if start_index is None:
            if not self._direct:
                raise ValidationError(
                    "start_index", None, "give it (the restored stream's next_segment_index) when run= is set"
                )
            start_index = Stream.select(Stream.next_segment_index).where(Stream.id == self.stream.id).scalar()
        self._pipeline = self._top_pipeline()
        bus = self._pipeline.get_bus()
        if bus is None:
            raise ValidationError(
                "splitmuxsink", self.sink.get_name(), "add it to its pipeline before start()"
            )
        self.sink.set_property("start-index", int(start_index))
        self._handlers.append((self.sink, self.sink.connect("format-location-full", self._on_location)))
        bus.enable_sync_message_emission()
        self._handlers.append((bus, bus.connect("sync-message::element", self._on_element_message)))
        self._handlers.append((self.sink, self.sink.connect("pad-added", self._on_pad_added)))
        iterator = self.sink.iterate_sink_pads()
        while True:
            result, pad = iterator.next()
            if result != Gst.IteratorResult.OK:
                break
            self._on_pad_added(self.sink, pad)
        self._writer = threading.Thread(
            target=self._write_loop, name=f"recorder-{self.stream.name}", daemon=True
        )
        self._writer.start()
        return self

    def drain(self, timeout: float = 10.0) -> DrainResult:
        """End cleanly: EOS into splitmuxsink, then wait until the last file is finalised and written.

        Returns within ``timeout`` seconds either way; what is still open
        then is left for ``Restorer.shutdown()`` (which probes the file).
        """
        began = time.monotonic()
        deadline = began + timeout
        iterator = self.sink.iterate_sink_pads()
        pads = []
        while True:
            result, pad = iterator.next()
            if result != Gst.IteratorResult.OK:
                break
            pads.append(pad)
        for pad in pads:
            pad.send_event(Gst.Event.new_eos())
        with self._idle:
            while time.monotonic() < deadline:
                unclosed = [f.location for f in self._fragments.values() if not f.closed]
                # With async-finalize the last file may not even be asked for
                # yet when the others are closed: wait for the close EOS causes.
                last = self._last_closed or not self._named
                if last and not unclosed and self._jobs.empty() and not self._busy:
                    break
                self._idle.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            unclosed = [f.location for f in self._fragments.values() if not f.closed]
            finalized = not unclosed and (self._last_closed or not self._named)
            written = self._jobs.empty() and not self._busy
        return DrainResult(finalized, written, tuple(unclosed), time.monotonic() - began)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued database write is done; False if ``timeout`` ran out first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while not (self._jobs.empty() and not self._busy):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(0.05, remaining))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect from GStreamer and stop the writer (after its queue, or after ``timeout``)."""
        for obj, handler in self._handlers:
            obj.disconnect(handler)
        self._handlers.clear()
        for pad, probe in self._probes:
            pad.remove_probe(probe)
        self._probes.clear()
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout)
            self._writer = None

    @property
    def fragments(self) -> list[Fragment]:
        """The files splitmuxsink is writing, or has closed but whose row is not complete yet."""
        with self._lock:
            return sorted(self._fragments.values(), key=lambda f: f.number)

    # --- GStreamer's threads: short, never a database call -------------------------------------------

    def _on_location(self, sink: Any, fragment_id: int, sample: Any) -> str:
        began = time.perf_counter()
        buffer, segment = sample.get_buffer(), sample.get_segment()
        if buffer is not None and buffer.pts != Gst.CLOCK_TIME_NONE:
            start_rt = segment.to_running_time(Gst.Format.TIME, buffer.pts)
        else:  # no first frame to go by (caps not negotiated yet): the current running time
            start_rt = self._running_time_now()
        media_started_at = self._to_wall(start_rt)
        future = self._submit("begin", media_started_at)
        try:
            row = future.result(timeout=self.callback_budget)
        except concurrent.futures.TimeoutError:
            row = None
        except Exception as exc:  # refused for good (stream removed...): keep the footage anyway
            log.error("segment row for %s not written: %s", self.stream.name, exc)
            row = None
        if row is not None:
            location = row.path
        else:
            location = self._pending_location(fragment_id)
            self.times.pending_names += 1
        fragment = Fragment(fragment_id, location, start_rt, media_started_at, row=row)
        with self._lock:
            self._fragments[location] = fragment
            self._named += 1
        if row is None:
            # Runs on the writer thread right after the row is committed,
            # before any later job (this fragment's completion among them).
            future.add_done_callback(lambda done: self._adopt(fragment, done))
        self.times.location.append(time.perf_counter() - began)
        return location

    def _on_element_message(self, bus: Any, message: Any) -> None:
        structure = message.get_structure()
        if structure is None or structure.get_name() != "splitmuxsink-fragment-closed":
            return
        if message.src is not self.sink and not self._inside_sink(message.src):
            return
        began = time.perf_counter()
        location = structure.get_string("location")
        _, end_rt = structure.get_uint64("running-time")
        with self._lock:
            fragment = self._fragments.get(location)
            if fragment is not None:
                fragment.closed = True  # the muxer finalised it; the row follows on the writer
            frames = 0
            last_end = None
            # A fragment closed by a split ends where the next one starts (its
            # first frame excluded). The last fragment, closed by EOS, is given
            # its last frame's start instead: after EOS, a close that no seen
            # frame lies beyond takes every frame left.
            # With async-finalize the closes need not come in order: at a
            # drain, the last file (closed by EOS) is often closed before the
            # one before it, whose muxer is still finishing. A fragment
            # therefore takes only frames from its own first frame on while an
            # earlier fragment is still open, and never a later fragment's.
            start_rt = fragment.start_rt if fragment is not None else None
            others = [f.start_rt for f in self._fragments.values() if f is not fragment]
            lower = start_rt if start_rt is not None and any(rt < start_rt for rt in others) else None
            later_starts = [rt for rt in others if start_rt is not None and rt > start_rt]
            take_all = self._eos_seen and not later_starts and not any(rt > end_rt for rt, _ in self._frames)
            upper = None if take_all else min([end_rt, *later_starts])
            kept: collections.deque[tuple[int, int]] = collections.deque()
            for rt, frame_end in self._frames:
                if (lower is not None and rt < lower) or (upper is not None and rt >= upper):
                    kept.append((rt, frame_end))
                    continue
                frames += 1
                last_end = frame_end if last_end is None else max(last_end, frame_end)
            self._frames = kept
            if take_all:
                self._last_closed = True
                self._idle.notify_all()
        if fragment is None:
            log.warning("splitmuxsink closed %s, which this recorder did not name", location)
            return
        media_end = self._to_wall(last_end if last_end is not None else end_rt)
        self._submit("complete", (fragment, media_end, frames))
        self.times.closed.append(time.perf_counter() - began)

    def _on_pad_added(self, element: Any, pad: Any) -> None:
        if pad.get_direction() != Gst.PadDirection.SINK or self._probes:
            return  # frames are counted on the first (video) input only
        mask = Gst.PadProbeType.BUFFER | Gst.PadProbeType.EVENT_DOWNSTREAM
        self._probes.append((pad, pad.add_probe(mask, self._on_buffer)))

    def _on_buffer(self, pad: Any, info: Any) -> Any:
        if info.type & Gst.PadProbeType.EVENT_DOWNSTREAM:
            if info.get_event().type == Gst.EventType.EOS:
                self._eos_seen = True
            return Gst.PadProbeReturn.OK
        buffer = info.get_buffer()
        event = pad.get_sticky_event(Gst.EventType.SEGMENT, 0)
        if buffer is None or event is None or buffer.pts == Gst.CLOCK_TIME_NONE:
            return Gst.PadProbeReturn.OK
        rt = event.parse_segment().to_running_time(Gst.Format.TIME, buffer.pts)
        duration = buffer.duration if buffer.duration != Gst.CLOCK_TIME_NONE else 0
        previous_end = self._last_frame_end_rt
        with self._lock:
            self._frames.append((rt, rt + duration))
            self._last_frame_end_rt = rt + duration
            self._last_frame_wall = time.monotonic()
        if (
            self.split_after_stall
            and self.stall_after is not None
            and previous_end is not None
            and rt - previous_end > self.stall_after * Gst.SECOND
        ):
            # The hole must fall between files, or a row would cover it: the
            # frames before it stay in this file, this one starts the next.
            # (split-now would also move the last frame before the hole,
            # still queued inside splitmuxsink, into the new file.)
            self.sink.emit("split-at-running-time", rt)
        return Gst.PadProbeReturn.OK

    def _to_wall(self, running_time: int) -> dt.datetime:
        """Running time -> wall clock: pipeline clock + base time, read beside the system clock."""
        pipeline = self._pipeline
        clock = pipeline.get_clock() if pipeline is not None else None
        wall_ns = self._wall_ns()
        if clock is None:
            return dt.datetime.fromtimestamp(wall_ns / 1e9, dt.UTC)
        behind_ns = clock.get_time() - (pipeline.get_base_time() + running_time)
        millis = (wall_ns - behind_ns) // _NS_PER_MS
        return dt.datetime.fromtimestamp(millis / 1000, dt.UTC)

    def _running_time_now(self) -> int:
        pipeline = self._pipeline
        clock = pipeline.get_clock() if pipeline is not None else None
        return 0 if clock is None else max(0, clock.get_time() - pipeline.get_base_time())

    def _pending_location(self, fragment_id: int) -> str:
        sample_path = self.template.format(stream=self.stream.name, stream_id=self.stream.id, index=0)
        directory = os.path.dirname(sample_path)
        extension = os.path.splitext(sample_path)[1]
        name = f"{self.stream.name}-pending-{self._pending_tag}-{next(self._pending_names)}{extension}"
        os.makedirs(directory, exist_ok=True)
        return os.path.join(directory, name)

    def _top_pipeline(self) -> Any:
        element = self.sink
        while element.get_parent() is not None:
            element = element.get_parent()
        return element

    def _inside_sink(self, source: Any) -> bool:
        parent = source.get_parent() if source is not None else None
        while parent is not None:
            if parent is self.sink:
                return True
            parent = parent.get_parent()
        return False

    # --- the writer thread: every database call, retried while the database is away --------------------

    def _submit(self, kind: str, payload: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((kind, payload, future))
        return future

    def _write_loop(self) -> None:
        try:
            self._write_until_stopped()
        finally:
            # This thread's connection goes back (to the pool, on PostgreSQL).
            if self._direct:
                with contextlib.suppress(Exception):
                    Recording._meta.database.close()

    def _write_until_stopped(self) -> None:
        next_checkpoint = time.monotonic() + self.checkpoint_interval
        while not (self._stop.is_set() and self._jobs.empty()):
            try:
                kind, payload, future = self._jobs.get(timeout=0.1)
            except queue.Empty:
                now = time.monotonic()
                if now >= next_checkpoint:
                    next_checkpoint = now + self.checkpoint_interval
                    self._checkpoint()
                self._watch_stall(now)
                continue
            with self._lock:
                self._busy += 1
            try:
                result = self._retrying(kind, self._run, payload)
                future.set_result(result)
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                with self._lock:
                    self._busy -= 1
                    self._idle.notify_all()

    def _retrying(self, kind: str, action: Callable[[str, Any], Any], payload: Any) -> Any:
        delay = self.retry_delay
        while True:
            try:
                return action(kind, payload)
            except RETRYABLE as exc:
                if self._stop.is_set():
                    raise
                log.warning("recorder %s: %s waits for the database (%s)", self.stream.name, kind, exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _run(self, kind: str, payload: Any) -> Any:
        if kind == "begin":
            row = self._run_db(
                self.stream.begin_segment,
                path_template=self.template,
                storage=self.storage,
                media_started_at=payload,
            )
            os.makedirs(os.path.dirname(row.path) or ".", exist_ok=True)
            return row
        if kind == "complete":
            fragment, media_end, frames = payload
            return self._complete(fragment, media_end, frames)
        raise AssertionError(kind)

    def _adopt(self, fragment: Fragment, done: concurrent.futures.Future[Any]) -> None:
        """A fragment named provisionally got its row late: give the file the row's name."""
        if done.exception() is not None:
            fragment.failed = str(done.exception())
            log.error("fragment %s kept without a row: %s", fragment.location, fragment.failed)
            return
        row = done.result()
        _rename_quietly(fragment.location, row.path)
        fragment.row = row
        log.info("fragment %s takes its row's name %s", fragment.location, row.path)

    def _complete(self, fragment: Fragment, media_end: dt.datetime, frames: int) -> None:
        try:
            self._complete_row(fragment, media_end, frames)
        finally:
            with self._lock:
                self._fragments.pop(fragment.location, None)

    def _complete_row(self, fragment: Fragment, media_end: dt.datetime, frames: int) -> None:
        row = fragment.row
        if row is None:
            return  # never got a row: the file stays for check to adopt
        if fragment.location != row.path:
            # Renamed before splitmuxsink had created the file: rename again now it is closed.
            _rename_quietly(fragment.location, row.path)
        media_end = max(media_end, row.started_at)
        self._run_db(
            row.complete_segment,
            media_ended_at=media_end,
            frame_count=frames,
            finalized=True,
            size_bytes=_size(row.path),
        )

    def _checkpoint(self) -> None:
        with self._lock:
            open_rows = [f.row for f in self._fragments.values() if not f.closed and f.row is not None]
        for row in open_rows:
            try:
                self._run_db(row.checkpoint, _size(row.path))
            except _SKIPPABLE as exc:
                log.info("checkpoint of %s skipped: %s", row.path, exc)

    def _watch_stall(self, now: float) -> None:
        if self.stall_after is None or self._last_frame_wall is None:
            return
        silent = now - self._last_frame_wall
        try:
            if self._stalled_since is None and silent >= self.stall_after:
                self._stalled_since = self._last_frame_wall
                if self.report_stalls:
                    self._run_db(
                        self.stream.record_health, HealthState.UNHEALTHY, f"no frames for {silent:.1f} s"
                    )
            elif self._stalled_since is not None and silent < self.stall_after:
                lasted = now - self._stalled_since
                self._stalled_since = None
                if self.report_stalls:
                    self._run_db(
                        self.stream.record_health, HealthState.HEALTHY, f"frames again after {lasted:.1f} s"
                    )
        except _SKIPPABLE as exc:
            log.warning("stall of %s not recorded: %s", self.stream.name, exc)


def _call_directly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def run_on_loop(loop: asyncio.AbstractEventLoop, timeout: float | None = None) -> Callable[..., Any]:
    """A ``run=`` for a manager on ``stream_state.aio``: the writer's calls go through ``aio.run``.

    The recorder's writer thread then waits for the loop (never the
    streaming thread); the loop never waits for the database. Call
    ``drain`` and ``close`` with ``await asyncio.to_thread(...)``: they wait
    for writes that need the loop.
    """
    from . import aio

    def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(aio.run(fn, *args, **kwargs), loop).result(timeout)

    return call


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _rename_quietly(source: str, dest: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # not created yet, or already renamed
        os.rename(source, dest)
