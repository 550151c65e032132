"""Time as the package stores it: integer UTC epoch milliseconds.

At the API every time is a timezone-aware ``datetime``. A naive datetime is
refused rather than guessed at, because a guess (local time? UTC?) silently
shifts a whole recording history by hours.
"""

from __future__ import annotations

import datetime as dt
import time

from .errors import ValidationError

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

# Anything outside these bounds is almost certainly a unit mistake (seconds
# passed as milliseconds, or the reverse) and would break range queries.
MIN_MILLIS = 0
MAX_MILLIS = 253402300799999  # 9999-12-31T23:59:59.999Z

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def now_millis() -> int:
    """The current time in UTC epoch milliseconds."""
    return time.time_ns() // 1_000_000


def utc_now() -> dt.datetime:
    """The current time as an aware UTC datetime, millisecond precision."""
    return from_millis(now_millis())


def to_millis(value: dt.datetime, field: str = "time") -> int:
    """Convert an aware datetime to UTC epoch milliseconds.

    ``field`` names the argument in the error so the caller knows which of
    several times was wrong.
    """
    if not isinstance(value, dt.datetime):
        raise ValidationError(field, value, "expected a timezone-aware datetime")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValidationError(
            field, value, "naive datetime; pass an aware one, e.g. datetime.now(timezone.utc)"
        )
    delta = value - EPOCH
    millis = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if not MIN_MILLIS <= millis <= MAX_MILLIS:
        raise ValidationError(field, value, "outside the supported range 1970..9999")
    return millis


def from_millis(millis: int) -> dt.datetime:
    """Convert UTC epoch milliseconds to an aware UTC datetime."""
    return EPOCH + dt.timedelta(milliseconds=millis)


def exact_utc(value: object) -> bool:
    """True when ``value`` is what ``from_millis(to_millis(value))`` returns: a UTC datetime in whole ms.

    Then the value itself can stand for the stored time, with no new object.
    """
    return type(value) is dt.datetime and value.tzinfo is UTC and not value.microsecond % 1000


def optional_millis(value: dt.datetime | None, field: str, default: int | None = None) -> int | None:
    """``to_millis`` that passes ``None`` through as ``default``."""
    if value is None:
        return default
    return to_millis(value, field)
