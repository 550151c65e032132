"""Argument checks, time conversion and redaction as pure functions."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from stream_state import ValidationError
from stream_state.redact import redact_data, redact_text, redact_uri
from stream_state.timeutil import exact_utc, from_millis, to_millis
from stream_state.validate import require_json_object, require_number, require_text, require_uri


@pytest.mark.parametrize(
    "uri",
    [
        "rtsp://10.0.0.5:554/stream1",
        "rtsps://user:pass@cam.example/live",
        "http://cam/mjpeg",
        "https://cam.example/hls/index.m3u8",
        "srt://relay.example:9000?streamid=cam1",
        "srt://:9000?mode=listener",
        "udp://239.0.0.1:5000",
        "udp://:5000",
        "file:///var/media/loop.mp4",
        "file:/var/media/loop.mp4",
    ],
)
def test_good_stream_uris(uri):
    assert require_uri("uri", uri) == uri


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("", "1 to 4000"),
        ("cam-1", "needs a scheme"),
        ("rtsp://", "needs a host"),
        ("udp://", "needs a host"),
        ("rtsp:/relative", "needs a scheme"),
        ("http://cam:99999/", "well-formed"),
        ("rtsp://cam/with space", "whitespace"),
        ("rtsp://cam/\x00", "control"),
        ("file://", "needs a path"),
        (42, "expected a string"),
    ],
)
def test_bad_stream_uris_name_the_field(uri, reason):
    with pytest.raises(ValidationError, match=reason) as info:
        require_uri("uri", uri)
    assert info.value.field == "uri"


def test_a_bad_uri_error_never_shows_the_password():
    with pytest.raises(ValidationError) as info:
        require_uri("uri", "rtsp://admin:hunter2@cam:99999/")
    assert "hunter2" not in str(info.value)


def test_json_errors_name_the_offending_key():
    with pytest.raises(ValidationError, match=r"config\['encoder'\]\['roi'\]") as info:
        require_json_object("config", {"encoder": {"roi": {1, 2}}})
    assert "set is not JSON-serialisable" in str(info.value)
    with pytest.raises(ValidationError, match=r"config\['gain'\]"):
        require_json_object("config", {"gain": math.nan})
    with pytest.raises(ValidationError, match=r"config\[1\]"):
        require_json_object("config", {1: "x"})
    with pytest.raises(ValidationError, match="expected a mapping"):
        require_json_object("config", ["not", "a", "dict"])


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "1.0", None, True, 10**400])
def test_numbers_must_be_finite_reals(value):
    with pytest.raises(ValidationError, match="value="):
        require_number("value", value)


def test_naive_datetimes_are_refused_by_name():
    with pytest.raises(ValidationError, match=r"started_at=.*naive"):
        to_millis(dt.datetime(2026, 1, 1), "started_at")


@pytest.mark.parametrize(
    ("value", "exact"),
    [
        (dt.datetime(2026, 11, 26, 3, 4, 5, 678_000, tzinfo=dt.UTC), True),
        (dt.datetime(2026, 11, 26, 3, 4, 5, tzinfo=dt.timezone.utc), True),  # noqa: UP017 - the same object
        (dt.datetime(2026, 11, 26, 3, 4, 5, 678_901, tzinfo=dt.UTC), False),
        (dt.datetime(2026, 11, 26, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))), False),
        (dt.datetime(2026, 11, 26, 3, 4, 5), False),
        (None, False),
        ("2026-11-26T03:04:05Z", False),
    ],
)
def test_exact_utc_is_true_only_when_the_value_is_its_own_stored_form(value, exact):
    # The hot path keeps the caller's datetime instead of building
    # from_millis(to_millis(value)) when exact_utc says they are the same.
    assert exact_utc(value) is exact
    if exact:
        back = from_millis(to_millis(value))
        assert back == value and back.tzinfo is value.tzinfo


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("a\x01b", "control"),
        ("a\x7fb", "control"),
        ("a\u202eb", "format"),
        ("x" * 11, "longer than 10"),
        (b"bytes", "expected a string"),
    ],
)
def test_require_text_refuses_what_its_printable_ascii_shortcut_lets_by(value, reason):
    assert require_text("name", "cam-1 /rec/a.mp4 ~!", max_length=20) == "cam-1 /rec/a.mp4 ~!"
    with pytest.raises(ValidationError, match=reason) as info:
        require_text("name", value, max_length=10)
    assert info.value.field == "name"


def test_time_round_trips_at_millisecond_precision_in_any_zone():
    tz = dt.timezone(dt.timedelta(hours=5, minutes=30))
    value = dt.datetime(2026, 11, 26, 3, 4, 5, 678_901, tzinfo=tz)
    back = from_millis(to_millis(value))
    assert back == value.replace(microsecond=678_000)
    assert back.tzinfo == dt.UTC


def test_redaction():
    assert redact_uri("rtsp://admin:hunter2@cam/1") == "rtsp://admin:***@cam/1"
    assert redact_uri("rtsp://cam/1?user=a&password=hunter2") == "rtsp://cam/1?user=a&password=***"
    assert redact_uri("rtsp://cam/1") == "rtsp://cam/1"
    assert "hunter2" not in redact_text("could not open rtsp://admin:hunter2@cam/1: timeout")
    assert redact_data({"rtsp_password": "hunter2", "nested": [{"token": "t"}], "fps": 15}) == {
        "rtsp_password": "***",
        "nested": [{"token": "***"}],
        "fps": 15,
    }
