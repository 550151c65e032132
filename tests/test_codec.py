"""The metric block codec: exact round trips, and the sizes that make it worth having. Pure: no database."""

from __future__ import annotations

import math
import random
import struct

import pytest

from stream_state import codec
from stream_state.errors import CorruptBlock, StreamStateError, ValidationError

T0 = 1_780_000_000_000
HOUR = 3600


@pytest.fixture(autouse=True, params=["pure", "numpy"])
def decoder(request, monkeypatch):
    """Every test on both decoders: plain Python, and numpy when it is installed."""
    if request.param == "numpy":
        pytest.importorskip("numpy")
    monkeypatch.setattr(codec, "USE_NUMPY", request.param == "numpy")
    return request.param


def bits(values: list[float]) -> list[bytes]:
    return [struct.pack("<d", v) for v in values]


def round_trip(timestamps: list[int], values: list[float]) -> bytes:
    block = codec.encode(timestamps, values)
    got_ts, got_values = codec.decode(block)
    assert got_ts == timestamps
    assert bits(got_values) == bits(values)  # the same doubles, bit for bit (-0.0, 1e-300...)
    assert codec.header(block)[:2] == (len(timestamps), timestamps[0])
    # Any window of it, edges on and between samples, empty and whole.
    rng = random.Random(len(timestamps))
    for _ in range(6):
        lo = rng.choice([timestamps[0] - 1, rng.choice(timestamps), rng.choice(timestamps) + 1])
        hi = rng.choice([lo, timestamps[-1] + 1, rng.choice(timestamps), rng.choice(timestamps) + 1])
        got_ts, got_values = codec.decode_between(block, lo, hi)
        inside = [i for i, ts in enumerate(timestamps) if lo <= ts < hi]
        assert got_ts == [timestamps[i] for i in inside]
        assert bits(got_values) == bits([values[i] for i in inside])
    return block


def regular(n: int = HOUR, step: int = 1000) -> list[int]:
    return [T0 + i * step for i in range(n)]


@pytest.mark.parametrize("seed", range(40))
def test_random_series_of_every_kind_round_trip_exactly(seed):
    rng = random.Random(seed)
    n = rng.choice([1, 2, 3, 17, 600, HOUR])
    steps = [
        rng.choice([1, 999, 1000, 1001, 60_000]) + (rng.randint(-5, 5) if seed % 3 == 0 else 0)
        for _ in range(n)
    ]
    timestamps = [T0 + rng.randrange(1000)]
    for step in steps[1:]:
        timestamps.append(timestamps[-1] + max(1, step))
    kind = seed % 6
    if kind == 0:
        values = [float(rng.randint(-(2**40), 2**40)) for _ in range(n)]
    elif kind == 1:
        values = [round(rng.uniform(-1000, 1000), rng.randint(0, 6)) for _ in range(n)]
    elif kind == 2:
        values = [rng.uniform(-1e6, 1e6) for _ in range(n)]
    elif kind == 3:
        values = [rng.choice([0.0, -0.0, 1e-300, -1e300, 2.0**60, 0.1, 5e-324]) for _ in range(n)]
    elif kind == 4:
        values = [15.0 if rng.random() > 0.05 else 14.0 for _ in range(n)]
    else:
        values = [math.inf, -math.inf, math.nan, 1.0][:n] + [1.5] * max(0, n - 4)
        # nan != nan, so compare its bits like every other value.
    round_trip(timestamps, values)


def test_short_decimals_are_scaled_ints_and_the_rest_xor():
    assert codec.scaled([1.5, 2.25, -3.0]) == (2, [150, 225, -300])
    assert codec.scaled([15.0, 14.0]) == (0, [15, 14])
    assert codec.scaled([0.1 + 0.2]) is None  # 0.30000000000000004: not a short decimal
    assert codec.scaled([-0.0]) is None  # would come back as 0.0
    assert codec.scaled([2.0**60]) is None  # beyond exact doubles
    assert codec.scaled([math.nan]) is None and codec.scaled([math.inf]) is None
    assert codec.header(codec.encode([T0], [0.1 + 0.2]))[2] == codec.MODE_XOR


def test_a_resolution_rounds_before_encoding():
    values = [80 + i * 0.123456789 for i in range(HOUR)]
    lossy = codec.encode(regular(), values, resolution=1)
    _, got = codec.decode(lossy)
    assert got == [round(v, 1) for v in values]
    assert len(lossy) < len(codec.encode(regular(), values)) / 3


def test_realistic_series_take_about_a_byte_or_two_a_sample():
    rng = random.Random(7)
    fps = [15.0 if rng.random() > 0.02 else 14.0 for _ in range(HOUR)]
    latency = [round(80 + rng.random() * 20, 1) for _ in range(HOUR)]
    jitter = [T0 + i * 1000 + rng.randint(-5, 5) for i in range(HOUR)]
    assert len(round_trip(regular(), fps)) / HOUR < 0.2
    assert len(round_trip(regular(), latency)) / HOUR < 1.5
    assert len(round_trip(jitter, latency)) / HOUR < 2.5


def test_bad_blocks_and_bad_input_are_refused():
    with pytest.raises(ValidationError, match="increasing"):
        codec.encode([T0, T0], [1.0, 2.0])
    with pytest.raises(ValidationError, match="increasing"):
        codec.encode([T0 + 1, T0], [1.0, 2.0])
    with pytest.raises(ValidationError, match="values"):
        codec.encode([T0], [1.0, 2.0])
    with pytest.raises(ValidationError, match="at least one"):
        codec.encode([], [])
    block = bytearray(codec.encode([T0], [1.0]))
    block[0] = 99
    with pytest.raises(CorruptBlock, match="version 99"):
        codec.decode(bytes(block))


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:5],  # cut inside the header
        lambda b: b[:-7],  # cut inside the compressed body
        lambda b: b[:20] + bytes(len(b) - 20),  # body zeroed
        lambda b: b[:1] + b"\x07" + b[2:],  # an unknown value encoding
        lambda b: b"\x01garbled",
    ],
)
def test_a_garbled_block_is_a_corrupt_block_error_naming_the_series(damage):
    """Never the codec's own struct or zlib error: the caller gets the package's error and the series."""
    good = codec.encode([T0 + i * 1000 for i in range(500)], [float(i % 7) for i in range(500)])
    for decode in (
        lambda b: codec.decode(b, series_id=42),
        lambda b: codec.decode_between(b, T0, T0 + 9, series_id=42),
    ):
        with pytest.raises(CorruptBlock, match="series 42") as info:
            decode(damage(good))
        assert info.value.series_id == 42 and isinstance(info.value, StreamStateError)
