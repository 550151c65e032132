"""Argument checks shared by the domain methods.

Each check raises ``ValidationError`` naming the argument and the value, and
runs before anything is written, so a refused call leaves the database as it
was.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import os
import re
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .errors import ValidationError
from .timeutil import MAX_MILLIS

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Unicode format controls (category Cf, Unicode 14): bidirectional overrides
# such as U+202E rewrite how a table reads, zero-width ones make two names
# look alike. Identifiers refuse them like other control characters.
_FORMAT = re.compile(
    "[\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U00013438"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]"
)


def require_text(field: str, value: Any, *, max_length: int = 1000, allow_control: bool = False) -> str:
    """A non-empty string of at most ``max_length`` characters."""
    # The common case, printable ASCII (no control, format or surrogate
    # character can be in it): two C calls instead of the checks below.
    if type(value) is str and value.isascii() and value.isprintable() and 0 < len(value) <= max_length:
        return value
    if not isinstance(value, str):
        raise ValidationError(field, value, f"expected a string, got {type(value).__name__}")
    if not value:
        raise ValidationError(field, value, "must not be empty")
    if len(value) > max_length:
        raise ValidationError(field, value[:40] + "...", f"longer than {max_length} characters")
    if "\x00" in value or (not allow_control and _CONTROL.search(value)):
        raise ValidationError(field, value, "contains control characters")
    if not allow_control and _FORMAT.search(value):
        raise ValidationError(
            field, value, "contains Unicode format characters (bidirectional or zero-width controls)"
        )
    require_utf8(field, value)
    return value


def require_utf8(field: str, value: str) -> str:
    """Refuse text that cannot be stored as UTF-8 (lone surrogates, e.g. from os.fsdecode)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = value.encode("utf-8", "backslashreplace")
        raise ValidationError(field, shown, "not valid UTF-8 text") from None
    return value


def optional_text(field: str, value: Any, *, max_length: int = 10_000) -> str | None:
    if value is None:
        return None
    return require_text(field, value, max_length=max_length, allow_control=True)


# 1,000 years: longer than any retention, and far from where datetime arithmetic overflows.
MAX_DAYS = 365_250


def require_days(field: str, value: Any) -> float:
    """A positive, finite number of days (at most ``MAX_DAYS``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(field, value, "must be a positive number of days")
    if not math.isfinite(value) or not 0 < value <= MAX_DAYS:
        raise ValidationError(field, value, f"must be a positive number of days, at most {MAX_DAYS}")
    return float(value)


def require_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(field, value, "expected True or False")
    return value


def require_count(field: str, value: Any, *, maximum: int = 2**63 - 1) -> int:
    """A non-negative integer (bools are refused: ``True`` is not a size)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, value, "expected a non-negative integer")
    if value < 0:
        raise ValidationError(field, value, "must not be negative")
    if value > maximum:
        raise ValidationError(field, value, f"larger than {maximum}")
    return value


def require_number(field: str, value: Any) -> float:
    """A finite real number (NaN and infinities are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(field, value, "expected a number")
    try:
        number = float(value)
    except OverflowError:
        raise ValidationError(field, value, "too large for a float") from None
    if not math.isfinite(number):
        raise ValidationError(field, value, "must be finite (not NaN or infinity)")
    return number


# How deep a caller's JSON may nest. The package's own events wrap a caller's
# value in a few levels of their own (data['changed'][key]['new']), so event
# data may go EVENT_JSON_HEADROOM deeper.
MAX_JSON_DEPTH = 64
EVENT_JSON_HEADROOM = 4


def require_json(field: str, value: Any, *, allow_none: bool = True, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A value that JSON represents exactly; the error names the offending key path."""
    if value is None and allow_none:
        return None
    _check_json(value, field, max_depth=max_depth)
    return value


def require_json_object(field: str, value: Any) -> dict[str, Any]:
    """A JSON object (``dict`` with string keys); ``None`` becomes ``{}``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(field, value, "expected a mapping (JSON object)")
    _check_json(value, field)
    return dict(value)


def _check_json(value: Any, path: str, depth: int = 0, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    # Errors name the offending key path (``config['cam']['fps']``) as the field.
    if depth > max_depth:
        raise ValidationError(path, "...", f"nested deeper than {max_depth} levels")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        _check_json_text(path, value)
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValidationError(path, value, "integer does not fit in 64 bits")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(path, value, "not valid JSON (NaN or infinity)")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"{path}[{_short(key)}]", key, "keys must be strings")
            _check_json_text(f"{path}[{key!r}]", key)
            _check_json(item, f"{path}[{key!r}]", depth + 1, max_depth=max_depth)
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]", depth + 1, max_depth=max_depth)
        return
    raise ValidationError(path, value, f"{type(value).__name__} is not JSON-serialisable")


E = TypeVar("E", bound=enum.Enum)


def require_choice(field: str, value: Any, enum_class: type[E]) -> E:
    """One of an enum's members, given as the member or its value."""
    try:
        return enum_class(value)
    except (ValueError, TypeError):
        allowed = ", ".join(str(member.value) for member in enum_class)
        raise ValidationError(field, value, f"expected one of: {allowed}") from None


def require_uri(field: str, value: Any) -> str:
    """A stream URI: a scheme and a host (``rtsp://cam/1``), or a path for ``file:``.

    Errors show the URI with its password masked.
    """
    from .redact import redact_uri, split_userinfo

    if not isinstance(value, str):
        raise ValidationError(field, value, f"expected a string, got {type(value).__name__}")
    shown = redact_uri(value)
    if not value or len(value) > 4000:
        raise ValidationError(field, shown, "must be 1 to 4000 characters")
    if _CONTROL.search(value) or any(ch.isspace() for ch in value):
        raise ValidationError(field, shown, "contains whitespace or control characters")
    require_utf8(field, shown)
    # The host is what follows the userinfo, which ends at the last "@":
    # a password may hold "#", "?" or "/", which urlsplit would cut at.
    _userinfo, without_userinfo = split_userinfo(value)
    try:
        parts = urlsplit(without_userinfo)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ValidationError(field, shown, f"not a well-formed URI ({exc})") from None
    if (
        not parts.scheme
        or not _SCHEME.fullmatch(parts.scheme)
        or ("://" not in value and parts.scheme != "file")
    ):
        raise ValidationError(
            field, shown, "needs a scheme such as rtsp://, http://, srt://, udp:// or file:"
        )
    if parts.scheme.lower() == "file":
        if not parts.path or parts.path == "/":
            raise ValidationError(field, shown, "a file: URI needs a path")
    elif not parts.hostname and not (parts.scheme.lower() in _LISTENER_SCHEMES and parts.port):
        raise ValidationError(field, shown, f"a {parts.scheme}: URI needs a host")
    return value


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# Receivers that listen on every interface are written without a host
# (``udp://:5000``, ``srt://:9000?mode=listener``); they still need a port.
_LISTENER_SCHEMES = frozenset({"udp", "rtp", "srt", "tcp"})


def _check_json_text(path: str, text: str) -> None:
    # PostgreSQL's jsonb refuses NUL; refusing it on both backends keeps them alike.
    if "\x00" in text:
        raise ValidationError(path, text, "contains a NUL character")
    require_utf8(path, text)


def _short(value: Any) -> str:
    shown = repr(value) if not isinstance(value, int) or value.bit_length() < 256 else "<huge int>"
    return shown if len(shown) <= 60 else shown[:60] + "..."


# Stream ids are 32-bit on PostgreSQL (SERIAL).
MAX_STREAM_ID = 2**31 - 1


def require_duration_ms(field: str, value: Any, *, positive: bool) -> int:
    """A ``timedelta`` of whole milliseconds (positive, or at least not negative), in milliseconds."""
    if not isinstance(value, dt.timedelta):
        raise ValidationError(field, value, "expected a datetime.timedelta")
    if value % dt.timedelta(milliseconds=1):
        raise ValidationError(field, value, "must be a whole number of milliseconds")
    millis = value // dt.timedelta(milliseconds=1)
    if millis < 0 or (positive and millis == 0):
        raise ValidationError(field, value, "must be positive" if positive else "must not be negative")
    if millis > MAX_MILLIS:
        raise ValidationError(field, value, "too long")
    return millis


def normalise_path(path: str) -> str:
    """One spelling per file: ``normpath`` (no ``//``, ``/./``, ``x/..``), and one leading slash.

    ``normpath`` keeps a leading ``//`` (POSIX leaves its meaning open); on
    Linux it is the root like ``/``.
    """
    normal = os.path.normpath(path)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    return normal


def require_segment_path(field: str, value: Any) -> str:
    """An absolute file path, returned normalised (``normalise_path``).

    Relative paths are refused: retention, restore or check run from another
    working directory would act on another directory's files.
    """
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    text = require_text(field, value, max_length=4096)
    if not os.path.isabs(text):
        raise ValidationError(
            field,
            text,
            "must be an absolute path (a relative one would name other files when retention, "
            "restore or check run from another directory)",
        )
    return normalise_path(text)
