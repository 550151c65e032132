"""Is a segment file playable? A cheap structural look at Matroska and MP4/MOV files.

``probe(path) -> Playability`` answers for the formats recorders write:

* **MP4 / MOV** (``ftyp`` first): playable only with a ``moov`` atom, the index
  the muxer writes when it finalises the file (``qtmux``/``mp4mux`` write it
  last). Without it no player opens the file; the duration is ``mvhd``'s.
* **Matroska / WebM** (EBML header first): a file cut short is still
  playable up to its last complete block; it counts as finalised when the
  muxer wrote its ``Cues`` (``matroskamux`` does at the end). The duration
  is read from the blocks' timecodes, so it is the media actually there.
* Anything else: GStreamer's discoverer answers when it is installed
  (``[gstreamer]`` extra); otherwise the format is unknown and callers keep
  their old size-based judgement.

Reading is bounded: box and element headers only, seeking over payloads.
Restore, ``Restorer.shutdown()`` and ``check`` take any callable with the
same signature (``probe=``), so a manager can plug in its own (ffprobe, say).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime as dt
import os
import struct
import sys
from collections.abc import Callable
from typing import BinaryIO

MATROSKA = "matroska"
MP4 = "mp4"


@dataclasses.dataclass(frozen=True)
class Playability:
    """What a probe found in a file."""

    playable: bool | None  # None: the probe cannot tell (unknown format)
    finalized: bool | None  # the muxer finished the file (index / cues written)
    duration: dt.timedelta | None  # playable media, when known
    container: str | None  # "matroska", "mp4", or what the discoverer named
    reason: str  # how it was judged, or why it is not playable

    @property
    def known(self) -> bool:
        return self.playable is not None


Probe = Callable[[str], Playability]

UNKNOWN = Playability(None, None, None, None, "format not recognised")


def probe(path: str | os.PathLike[str]) -> Playability:
    """The default probe: structural for Matroska and MP4/MOV, the discoverer for the rest."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) == 0:
                return Playability(False, False, None, None, "file empty")
            handle.seek(0)
            if head[:4] == b"\x1a\x45\xdf\xa3":
                return _matroska(handle, os.fstat(handle.fileno()).st_size)
            if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
                return _mp4(handle, os.fstat(handle.fileno()).st_size)
    except FileNotFoundError:
        return Playability(False, False, None, None, "file missing")
    except OSError as exc:
        return Playability(False, None, None, None, f"cannot read the file ({exc.strerror})")
    return discover(path) or UNKNOWN


# --- MP4 / MOV ----------------------------------------------------------------------------------


def _mp4(handle: BinaryIO, size: int) -> Playability:
    offset = 0
    duration: dt.timedelta | None = None
    moov = False
    truncated = None
    while offset + 8 <= size:
        handle.seek(offset)
        header = handle.read(16)
        box_size, kind = struct.unpack(">I4s", header[:8])
        header_len = 8
        if box_size == 1:
            if len(header) < 16:
                break
            (box_size,) = struct.unpack(">Q", header[8:16])
            header_len = 16
        elif box_size == 0:
            box_size = size - offset  # to the end of the file
        if box_size < header_len:
            truncated = f"corrupt box {kind!r} at byte {offset}"
            break
        if offset + box_size > size:
            truncated = f"box {kind.decode('latin-1')} runs past the end of the file"
        if kind == b"moov":
            moov = True
            duration = _mvhd_duration(handle, offset + header_len, min(offset + box_size, size))
        offset += box_size
    if not moov:
        return Playability(False, False, None, MP4, "no moov atom: the muxer never finalised it")
    if truncated:
        return Playability(False, False, duration, MP4, truncated)
    return Playability(True, True, duration, MP4, "moov atom present")


def _mvhd_duration(handle: BinaryIO, start: int, end: int) -> dt.timedelta | None:
    offset = start
    while offset + 8 <= end:
        handle.seek(offset)
        box_size, kind = struct.unpack(">I4s", handle.read(8))
        if box_size < 8:
            return None
        if kind == b"mvhd":
            body = handle.read(32)
            if not body:
                return None
            if body[0] == 1:
                timescale, duration = struct.unpack(">IQ", body[20:32])
            else:
                timescale, duration = struct.unpack(">II", body[12:20])
            return dt.timedelta(seconds=duration / timescale) if timescale else None
        offset += box_size
    return None


# --- Matroska --------------------------------------------------------------------------------------

_SEGMENT = 0x18538067
_CLUSTER = 0x1F43B675
_CUES = 0x1C53BB6B
_INFO = 0x1549A966
_TIMECODE_SCALE = 0x2AD7B1
_CLUSTER_TIMECODE = 0xE7
_SIMPLE_BLOCK = 0xA3
_BLOCK_GROUP = 0xA0
_BLOCK = 0xA1
_BLOCK_DURATION = 0x9B
_UNKNOWN = -1
# Top-level children of a Segment: where an unknown-size cluster ends.
_TOP_LEVEL = {0x114D9B74, _INFO, 0x1654AE6B, _CUES, 0x1941A469, 0x1043A770, 0x1254C367, _CLUSTER}


def _vint(handle: BinaryIO, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer: (value, bytes read); None at the end of the data."""
    first = handle.read(1)
    if not first:
        return None
    byte = first[0]
    length = 1
    mask = 0x80
    while length <= 8 and not byte & mask:
        mask >>= 1
        length += 1
    if length > 8:
        raise ValueError("invalid EBML length")
    rest = handle.read(length - 1)
    if len(rest) < length - 1:
        return None
    value = byte if keep_marker else byte & (mask - 1)
    all_ones = value == mask - 1 and all(b == 0xFF for b in rest)
    for b in rest:
        value = (value << 8) | b
    if not keep_marker and all_ones:
        return _UNKNOWN, length
    return value, length


def _element(handle: BinaryIO) -> tuple[int, int, int] | None:
    """(id, size or _UNKNOWN, header length) of the element at the current position."""
    ident = _vint(handle, keep_marker=True)
    if ident is None:
        return None
    size = _vint(handle, keep_marker=False)
    if size is None:
        return None
    return ident[0], size[0], ident[1] + size[1]


def _matroska(handle: BinaryIO, file_size: int) -> Playability:
    try:
        return _read_matroska(handle, file_size)
    except (ValueError, struct.error) as exc:
        return Playability(False, False, None, MATROSKA, f"unreadable Matroska structure ({exc})")


def _read_matroska(handle: BinaryIO, file_size: int) -> Playability:
    header = _element(handle)
    if header is None or header[1] == _UNKNOWN:
        return Playability(False, False, None, MATROSKA, "truncated EBML header")
    handle.seek(header[2] + header[1])
    segment = _element(handle)
    if segment is None or segment[0] != _SEGMENT:
        return Playability(False, False, None, MATROSKA, "no Segment element")
    segment_start = handle.tell()
    segment_end = file_size if segment[1] == _UNKNOWN else min(file_size, segment_start + segment[1])
    scale_ns = 1_000_000
    cues = False
    first_ns: int | None = None
    last_end_ns: int | None = None
    frame_gap_ns = 0
    blocks = 0
    position = segment_start
    while position < segment_end:
        handle.seek(position)
        found = _element(handle)
        if found is None:
            break
        ident, size, header_len = found
        body = position + header_len
        if ident == _CLUSTER:
            end = segment_end if size == _UNKNOWN else min(segment_end, body + size)
            stamps, end, cut = _cluster(handle, body, end, scale_ns)
            for stamp_ns, duration_ns in stamps:
                blocks += 1
                if first_ns is None or stamp_ns < first_ns:
                    first_ns = stamp_ns
                if last_end_ns is not None and stamp_ns > last_end_ns - duration_ns:
                    frame_gap_ns = stamp_ns - (last_end_ns - duration_ns)
                block_end = stamp_ns + (duration_ns or frame_gap_ns)
                last_end_ns = block_end if last_end_ns is None else max(last_end_ns, block_end)
            if cut:
                break
            position = end
            continue
        if size == _UNKNOWN:
            break
        if ident == _INFO:
            scale_ns = _timecode_scale(handle, body, body + size) or scale_ns
        elif ident == _CUES and body + size <= file_size:
            cues = True
        position = body + size
    if not blocks or first_ns is None or last_end_ns is None:
        return Playability(False, False, None, MATROSKA, "no complete frame in the file")
    duration = dt.timedelta(microseconds=(last_end_ns - first_ns) / 1000)
    if cues:
        return Playability(True, True, duration, MATROSKA, "Matroska with cues")
    return Playability(True, False, duration, MATROSKA, f"interrupted Matroska: {blocks} readable frame(s)")


def _timecode_scale(handle: BinaryIO, start: int, end: int) -> int | None:
    position = start
    while position < end:
        handle.seek(position)
        found = _element(handle)
        if found is None or found[1] == _UNKNOWN:
            return None
        ident, size, header_len = found
        if ident == _TIMECODE_SCALE:
            return int.from_bytes(handle.read(size), "big") or None
        position += header_len + size
    return None


def _cluster(
    handle: BinaryIO, start: int, end: int, scale_ns: int
) -> tuple[list[tuple[int, int]], int, bool]:
    """Complete blocks as (time ns, duration ns), where the cluster ends, and whether it was cut short."""
    cluster_tc = 0
    stamps: list[tuple[int, int]] = []
    position = start
    while position < end:
        handle.seek(position)
        found = _element(handle)
        if found is None:
            break
        ident, size, header_len = found
        if ident in _TOP_LEVEL:  # an unknown-size cluster ends where the next top-level element starts
            return stamps, position, False
        if size == _UNKNOWN or position + header_len + size > end:
            return stamps, position, True  # the rest of the cluster is not there
        body = position + header_len
        if ident == _CLUSTER_TIMECODE:
            cluster_tc = int.from_bytes(handle.read(size), "big")
        elif ident == _SIMPLE_BLOCK:
            stamps.append(((cluster_tc + _block_offset(handle)) * scale_ns, 0))
        elif ident == _BLOCK_GROUP:
            stamps.extend(_block_group(handle, body, body + size, cluster_tc, scale_ns))
        position = body + size
    return stamps, position, position < end


def _block_offset(handle: BinaryIO) -> int:
    track = _vint(handle, keep_marker=False)
    if track is None:
        raise ValueError("truncated block")
    (relative,) = struct.unpack(">h", handle.read(2))
    return int(relative)


def _block_group(
    handle: BinaryIO, start: int, end: int, cluster_tc: int, scale_ns: int
) -> list[tuple[int, int]]:
    stamp = None
    duration = 0
    position = start
    while position < end:
        handle.seek(position)
        found = _element(handle)
        if found is None or found[1] == _UNKNOWN:
            break
        ident, size, header_len = found
        if ident == _BLOCK:
            stamp = (cluster_tc + _block_offset(handle)) * scale_ns
        elif ident == _BLOCK_DURATION:
            duration = int.from_bytes(handle.read(size), "big") * scale_ns
        position += header_len + size
    return [] if stamp is None else [(stamp, duration)]


# --- GStreamer's discoverer, when installed ------------------------------------------------------

_gcc_unwinder: ctypes.CDLL | None = None


def gcc_unwinder_first() -> None:
    """Make libgcc_s the process's C++ unwinder before PyGObject loads GStreamer; call before ``import gi``.

    Debian's libgstreamer-1.0 links libunwind.so.8, which defines the same
    ``_Unwind_*`` functions as libgcc_s, and PyGObject opens the libraries
    of a typelib with RTLD_GLOBAL. From then on every C++ extension module
    loaded later (matplotlib's ft2font, numpy, kiwisolver...) binds
    ``_Unwind_Resume`` to libunwind, while a libstdc++ loaded before GStreamer
    (by greenlet, say) already bound ``_Unwind_RaiseException`` to libgcc_s:
    the first C++ exception thrown then (pybind11's AttributeError inside
    ``from matplotlib.ft2font import ...``) is raised by one unwinder and
    resumed by the other, and the process aborts (or segfaults). With
    libgcc_s in the global scope first, every later module binds to it.
    Harmless where libgcc_s is absent or already global; idempotent.
    """
    global _gcc_unwinder
    if _gcc_unwinder is not None or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):  # not a GNU toolchain's system (musl...): nothing to prefer
        _gcc_unwinder = ctypes.CDLL("libgcc_s.so.1", mode=os.RTLD_GLOBAL | os.RTLD_NOW)


def discover(path: str, timeout: float = 5.0) -> Playability | None:
    """Ask GStreamer's discoverer; None when GStreamer's Python bindings are not installed."""
    gcc_unwinder_first()  # before GStreamer's libunwind goes global: see there
    try:
        import gi  # PyGObject ships no stubs: setup.cfg [mypy-gi.*]

        gi.require_version("Gst", "1.0")
        gi.require_version("GstPbutils", "1.0")
        from gi.repository import Gst, GstPbutils
    except (ImportError, ValueError):
        return None
    if not Gst.is_initialized():
        Gst.init(None)
    discoverer = GstPbutils.Discoverer.new(int(timeout * Gst.SECOND))
    try:
        info = discoverer.discover_uri(Gst.filename_to_uri(os.path.abspath(path)))
    except Exception as exc:  # GLib.Error: not a media file, cannot be decoded
        # Not even recognised as media: that is "cannot tell", not "broken video".
        return Playability(None, None, None, None, f"discoverer: {getattr(exc, 'message', exc)}")
    if info.get_result() != GstPbutils.DiscovererResult.OK:
        return Playability(None, None, None, None, f"discoverer: {info.get_result().value_nick}")
    nanoseconds = info.get_duration()
    caps = info.get_stream_info().get_caps() if info.get_stream_info() else None
    container = caps.get_structure(0).get_name() if caps is not None and caps.get_size() else None
    duration = dt.timedelta(microseconds=nanoseconds / 1000) if nanoseconds else None
    return Playability(True, None, duration, container, "discoverer opened it")
