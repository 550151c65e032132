"""Compact, exact encoding of one metric series' samples (a block, e.g. one hour).

A manager samples each series about once a second at nearly regular times,
and most metrics are rounded numbers (15 fps, 4,210 kbit/s, 83.5 ms). Stored
one row per sample that costs about 19 bytes a sample; encoded here it costs
1-2 (bench/blocks.py). The encoding, the same idea as Gorilla's and
Prometheus' chunks, in plain Python on the standard library:

* timestamps (epoch ms, strictly increasing): the first, then the
  delta-of-deltas as 32-bit ints (zero for a perfectly regular series, a few
  units of jitter otherwise);
* values: when every value is a decimal with at most ``MAX_DECIMALS``
  decimals (``v == q / 10**k`` exactly, for ints ``q``), the scaled ints'
  deltas as 64-bit ints; otherwise the XOR of each double's bits with the
  previous one's (equal neighbours give zero, close ones leading zero bytes);
* each column's bytes shuffled (all first bytes, then all second bytes, ...)
  so that zlib sees the long runs of zero bytes, then one zlib stream.

Decoding gives back exactly the same ints and the same float bits (``-0.0``
and values that are not short decimals take the XOR path). The standard
library's ``array``, slicing, ``zlib`` and ``itertools.accumulate`` do the
per-sample work in C, so numpy is not needed: encoding runs at about 1-3
million samples a second, decoding at 5-9 million (bench/blocks.py).
Decoding uses numpy when it can be imported (it is not a dependency):
about twice as fast for a whole block, and a query whose window edge cuts a
block late in its hour pays about 0.1 ms for it instead of up to 0.3 ms
(``decode_between``). Both paths give the same bits (tests run both).

Pure functions, no database: the block store (``models/blocks.py``) and its
tests build on them.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import operator
import struct
import zlib
from array import array
from collections.abc import Sequence
from typing import Any

from .errors import CorruptBlock, ValidationError

VERSION = 1
MODE_SCALED = 0
MODE_XOR = 1
MAX_DECIMALS = 6
# Scaled ints stay exact as doubles below 2**53.
_EXACT = 2**53
# version, mode, decimals, count, first timestamp, width of the time column, of the value column,
# bytes of the time column
_HEADER = struct.Struct("<BBBIqBBI")
_ZLIB_LEVEL = 6


def _pack(numbers: Sequence[int]) -> tuple[int, bytes]:
    """Signed ints zigzagged (small magnitudes, small numbers) in the narrowest width, bytes shuffled."""
    zigzag = [(v << 1) ^ (v >> 63) for v in numbers]
    top = max(zigzag, default=0)
    width = 1 if top < 2**8 else 2 if top < 2**16 else 4 if top < 2**32 else 8
    data = array(_TYPECODES[width], zigzag).tobytes()
    return width, data if width == 1 else b"".join(data[j::width] for j in range(width))


def _unpack(data: bytes | bytearray | memoryview, width: int, count: int | None = None) -> list[int]:
    """The signed ints of a column ``_pack`` wrote; only the first ``count`` when given."""
    n = len(data) // width
    if count is None or count > n:
        count = n
    numbers = array(_TYPECODES[width], _unshuffle(data, width, count))
    if width <= 2:
        # A table lookup per number runs in C (map): about 3x the comprehension's speed,
        # and widths 1-2 are the common case (regular ticks, rounded values).
        return list(map(_unzigzag_table(width).__getitem__, numbers))
    return [(z >> 1) ^ -(z & 1) for z in numbers]


@functools.cache
def _unzigzag_table(width: int) -> list[int]:
    """Every zigzagged number of ``width`` bytes (1 or 2) decoded; built on first use."""
    return [(z >> 1) ^ -(z & 1) for z in range(256**width)]


_TYPECODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
for _code in _TYPECODES.values():
    assert array(_code).itemsize in _TYPECODES  # the platform's widths are the usual ones


def scaled(values: Sequence[float], resolution: int | None = None) -> tuple[int, list[int]] | None:
    """(decimals, ints) with ``values[i] == ints[i] / 10**decimals`` exactly, or None.

    ``resolution`` (0-6) rounds to that many decimals first: a lossy choice a
    series can make (``set_resolution``), trading noise nobody reads for
    about 1 byte a sample instead of 7.
    """
    if resolution is not None:
        factor = 10**resolution
        ints = [round(v * factor) for v in values]
        if all(abs(q) < _EXACT for q in ints):
            return resolution, ints
        return None
    for decimals in range(MAX_DECIMALS + 1):
        factor = 10**decimals
        try:
            ints = [round(v * factor) for v in values]
        except (OverflowError, ValueError):  # inf or nan
            return None
        # Division is what decoding does; == compares the exact doubles.
        if all(q / factor == v for q, v in zip(ints, values, strict=True)):
            if any(abs(q) >= _EXACT for q in ints) or any(
                v == 0 and math.copysign(1.0, v) < 0 for v in values
            ):
                return None
            return decimals, ints
    return None


def encode(timestamps: Sequence[int], values: Sequence[float], resolution: int | None = None) -> bytes:
    """One block: ``timestamps`` (strictly increasing epoch ms) and their ``values``."""
    n = len(timestamps)
    if n != len(values):
        raise ValidationError("values", len(values), f"expected {n} values, one per timestamp")
    if n == 0:
        raise ValidationError("timestamps", timestamps, "a block holds at least one sample")
    deltas = [b - a for a, b in zip(timestamps, itertools.islice(timestamps, 1, None), strict=False)]
    if any(d <= 0 for d in deltas):
        raise ValidationError("timestamps", "...", "must be strictly increasing")
    dods = deltas[:1]
    dods.extend(b - a for a, b in zip(deltas, itertools.islice(deltas, 1, None), strict=False))
    found = scaled(values, resolution)
    if found is not None:
        mode, decimals, ints = MODE_SCALED, found[0], found[1]
        column = ints[:1]
        column.extend(b - a for a, b in zip(ints, itertools.islice(ints, 1, None), strict=False))
        value_width, value_bytes = _pack(column)
    else:
        mode, decimals, value_width = MODE_XOR, 0, 8
        bits = array("Q", array("d", values).tobytes())
        xors = array("Q", bits[:1])
        xors.extend(a ^ b for a, b in zip(bits, itertools.islice(bits, 1, None), strict=False))
        data = xors.tobytes()
        value_bytes = b"".join(data[j::8] for j in range(8))
    time_width, time_bytes = _pack(dods)
    head = _HEADER.pack(VERSION, mode, decimals, n, timestamps[0], time_width, value_width, len(time_bytes))
    return head + zlib.compress(time_bytes + value_bytes, _ZLIB_LEVEL)


def decode(block: bytes | memoryview, *, series_id: int | None = None) -> tuple[list[int], list[float]]:
    """(timestamps, values) of a block written by ``encode``, exactly.

    A block that cannot be decoded raises ``CorruptBlock`` naming
    ``series_id`` (when given), never the codec's own struct or zlib error.
    """
    return _decode_checked(block, None, None, series_id)


def decode_between(
    block: bytes | memoryview, lo: int, hi: int, *, series_id: int | None = None
) -> tuple[list[int], list[float]]:
    """(timestamps, values) of the samples of a block with ``lo <= timestamp < hi``, exactly.

    The whole block is decompressed, but timestamps and values are built
    only up to the last one asked for (timestamps a chunk past it), and
    values turned into floats only in the range: an edge of a query window
    that cuts a block early in its hour pays for that part, not the hour.
    """
    return _decode_checked(block, lo, hi, series_id)


def _decode_checked(
    block: bytes | memoryview, lo: int | None, hi: int | None, series_id: int | None
) -> tuple[list[int], list[float]]:
    try:
        return _decode(block, lo, hi)
    except CorruptBlock as exc:
        raise CorruptBlock(exc.reason, series_id) from None
    except (zlib.error, struct.error, ValueError, IndexError, OverflowError, TypeError) as exc:
        # A garbled payload fails somewhere in the decoding: say what it is, not where.
        raise CorruptBlock(f"{type(exc).__name__}: {exc}", series_id) from exc


def _decode(block: bytes | memoryview, lo: int | None, hi: int | None) -> tuple[list[int], list[float]]:
    version, mode, decimals, _count, first, time_width, value_width, split = _HEADER.unpack_from(block)
    if version != VERSION:
        raise CorruptBlock(f"block version {version}, this code reads {VERSION}")
    body = memoryview(zlib.decompress(memoryview(block)[_HEADER.size :]))
    np = _numpy() if USE_NUMPY else None
    if np is not None and mode in (MODE_SCALED, MODE_XOR):
        return _decode_numpy(np, body, mode, decimals, first, time_width, value_width, split, lo, hi)
    timestamps = _timestamps(body[:split], time_width, first, hi)
    start, end = 0, len(timestamps)
    if lo is not None and hi is not None:
        start = bisect.bisect_left(timestamps, lo)
        end = bisect.bisect_left(timestamps, hi, start)
        if start >= end:
            return [], []
        timestamps = timestamps[start:end]
    values: list[float]
    if mode == MODE_SCALED:
        ints = list(itertools.accumulate(_unpack(body[split:], value_width, end)))
        del ints[:start]
        factor = 10**decimals
        values = [q / factor for q in ints] if decimals else [float(q) for q in ints]
    elif mode == MODE_XOR:
        xors = array("Q", _unshuffle(body[split:], 8, end))
        bits = array("Q", itertools.accumulate(xors, operator.xor))
        values = array("d", bits[start:].tobytes()).tolist()
    else:
        raise CorruptBlock(f"unknown value encoding {mode}")
    return timestamps, values


# Decode with numpy when it can be imported (it is not a dependency): 3-10x the
# pure-Python speed, which matters for a query whose window edge cuts a block.
# Both give the same ints and the same float bits (tests run both).
USE_NUMPY = True
_np_module: Any = None


def _numpy() -> Any:
    """numpy, imported on first use (not at import time), or None when it is not installed."""
    global _np_module
    if _np_module is None:
        try:
            import numpy
        except ImportError:
            _np_module = False
        else:
            _np_module = numpy
    return _np_module or None


def _decode_numpy(
    np: Any,
    body: memoryview,
    mode: int,
    decimals: int,
    first: int,
    time_width: int,
    value_width: int,
    split: int,
    lo: int | None,
    hi: int | None,
) -> tuple[list[int], list[float]]:
    """``_decode``'s work on numpy arrays: the same numbers, exactly."""

    def column(data: memoryview, width: int, count: int | None = None) -> Any:
        # Shuffled planes (all first bytes, then all second bytes...) back to little-endian uints.
        planes = np.frombuffer(data, dtype=np.uint8).reshape(width, len(data) // width)[:, :count]
        items = np.empty((planes.shape[1], width), dtype=np.uint8)
        for j in range(width):
            items[:, j] = planes[j]
        return items.view(f"<u{width}").ravel().astype(np.uint64)

    def signed(z: Any) -> Any:
        return ((z >> np.uint64(1)) ^ (np.uint64(0) - (z & np.uint64(1)))).view(np.int64)

    dods = signed(column(body[:split], time_width))
    stamps = np.empty(len(dods) + 1, dtype=np.int64)
    stamps[0] = first
    np.cumsum(np.cumsum(dods), out=stamps[1:])
    stamps[1:] += first
    start, end = 0, len(stamps)
    if lo is not None and hi is not None:
        start = int(np.searchsorted(stamps, lo, "left"))
        end = int(np.searchsorted(stamps, hi, "left"))
        if start >= end:
            return [], []
    if mode == MODE_SCALED:
        ints = np.cumsum(signed(column(body[split:], value_width, end)))[start:]
        # |ints| < 2**53 and 10**decimals are exact doubles: IEEE division rounds
        # the exact quotient, as Python's int / int does.
        values = (ints / float(10**decimals)) if decimals else ints.astype(np.float64)
    else:
        values = np.bitwise_xor.accumulate(column(body[split:], 8, end))[start:].view(np.float64)
    return stamps[start:end].tolist(), values.tolist()


# Timestamps are decoded this many at a time, so that a window's end stops the work.
_CHUNK = 512


def _timestamps(column: memoryview, width: int, first: int, hi: int | None) -> list[int]:
    """The timestamps of a block's time column, all of them or up to the first at or past ``hi``."""
    numbers = array(_TYPECODES[width], _unshuffle(column, width, len(column) // width))
    table = _unzigzag_table(width) if width <= 2 else None
    stamps = [first]
    delta = 0
    for at in range(0, len(numbers), _CHUNK):
        chunk = numbers[at : at + _CHUNK]
        dods = list(map(table.__getitem__, chunk)) if table else [(z >> 1) ^ -(z & 1) for z in chunk]
        deltas = list(itertools.accumulate(dods, initial=delta))
        delta = deltas[-1]
        last = stamps.pop()
        stamps.extend(itertools.accumulate(itertools.islice(deltas, 1, None), initial=last))
        if hi is not None and stamps[-1] >= hi:
            break
    return stamps


def _unshuffle(data: bytes | bytearray | memoryview, width: int, count: int) -> bytearray:
    """The first ``count`` items of ``width`` bytes of a shuffled column, back in item order (bytes)."""
    n = len(data) // width
    if width == 1:
        return bytearray(data[:count])
    out = bytearray(count * width)
    for j in range(width):
        out[j::width] = data[j * n : j * n + count]
    return out


def header(block: bytes | memoryview) -> tuple[int, int, int]:
    """(count, first timestamp, mode) without decoding the block."""
    _version, mode, _decimals, n, first, *_widths = _HEADER.unpack_from(block)
    return n, first, mode
