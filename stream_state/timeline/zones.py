"""Time for people: the operator's zone, its name under the axis, clock times in hover texts."""

from __future__ import annotations

import datetime as dt
import os
import zoneinfo

from ..timeutil import from_millis


def local_zone() -> dt.tzinfo:
    """The zone the operator reads: $TZ, else /etc/localtime's name, else the current UTC offset.

    A named zone (not a fixed offset) keeps the axis right across a
    daylight-saving change inside the window.
    """
    names = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.readlink("/etc/localtime")
        names.append(target.split("zoneinfo/", 1)[-1])
    except OSError:
        pass
    for name in names:
        if name:
            try:
                return zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
                continue
    return dt.datetime.now().astimezone().tzinfo or dt.UTC


def zone_label(zone: dt.tzinfo, at_ms: int) -> str:
    """``Europe/Berlin (CET, UTC+01:00)``, or ``UTC``."""
    when = from_millis(at_ms).astimezone(zone)
    offset = when.strftime("%z")
    offset = f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"
    key = getattr(zone, "key", None)
    abbreviation = when.tzname() or offset
    if key in ("UTC", "Etc/UTC") or (key is None and offset in ("UTC+00:00", "UTC")):
        return "UTC"
    return f"{key} ({abbreviation}, {offset})" if key else f"{abbreviation} ({offset})"


def clock_text(ms: int, zone: dt.tzinfo | None, date: bool = False) -> str:
    when = from_millis(ms).astimezone(zone or local_zone())
    text = when.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")
    return f"{text}.{when.microsecond // 1000:03d}"
