"""How the command line (and its demo) reads and shows things: times, durations, sizes, tables, JSON.

Named for the CLI: the library itself never prints or parses what a person types.

Pure functions (plus one small progress helper), so they are tested without a
terminal or a database. People get local times with the zone shown and
binary sizes (KiB, MiB, GiB); scripts get JSON with ISO 8601 UTC times and
plain byte counts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, TextIO

import click

if TYPE_CHECKING:
    from .restore import StreamSnapshot

# --- reading ------------------------------------------------------------------------------

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d|w)", re.IGNORECASE)
_DURATION = re.compile(r"(?:\s*\d+(?:\.\d+)?\s*(?:ms|min|s|m|h|d|w))+\s*", re.IGNORECASE)


def parse_duration(text: str) -> dt.timedelta:
    """``90s``, ``10m``, ``1h30m``, ``2d``, ``1w``, ``500ms``; a bare number is seconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        if not text or not _DURATION.fullmatch(text):
            raise ValueError(
                f"{text!r} is not a duration; use e.g. 90s, 10m, 1h30m, 2d, 1w (or a number of seconds)"
            ) from None
        seconds = sum(float(n) * _UNIT_SECONDS[unit.lower()] for n, unit in _DURATION_PART.findall(text))
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{text!r} is not a duration: it must be a non-negative number of seconds")
    try:
        return dt.timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None


def parse_time(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """A point in time from the command line, as an aware UTC datetime.

    ``now``, ``today`` and ``yesterday`` (local midnight), relative times
    ``-2h``, ``-30m``, ``-1d``, ``-1h30m`` (``+`` for the future), or ISO 8601
    (``2026-11-26``, ``2026-11-26T14:00``, ``2026-11-26 14:00:05+01:00``,
    ``...Z``). A time without a zone is local time.
    """
    now = dt.datetime.now(dt.UTC) if now is None else now
    word = text.strip().lower()
    if word == "now":
        return now
    if word in ("today", "yesterday"):
        midnight = now.astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
        if word == "yesterday":
            # Through the date, not 24 hours, so a DST change cannot land on 23:00.
            midnight = (midnight.replace(tzinfo=None) - dt.timedelta(days=1)).astimezone()
        return midnight.astimezone(dt.UTC)
    if word[:1] in ("+", "-") and not _looks_iso(word):
        try:
            offset = parse_duration(word[1:])
        except ValueError:
            raise ValueError(f"{text!r} is not a relative time; use e.g. -2h, -30m, -1d, -1h30m") from None
        try:
            return now - offset if word[0] == "-" else now + offset
        except OverflowError:
            raise ValueError(f"{text!r} is out of range: before year 1 or after year 9999") from None
    try:
        parsed = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time; use ISO 8601 (2026-11-26T14:00, local time unless a zone is "
            "given), now, today, yesterday, or a relative time such as -2h, -30m, -1d"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # a naive time is the user's local time
    return parsed.astimezone(dt.UTC)


def _looks_iso(word: str) -> bool:
    return bool(re.match(r"[+-]?\d{4}-\d{2}", word))


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``500``, ``64KiB``, ``1.5GiB``, ``10G`` (binary) or ``10GB`` (decimal)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size; use e.g. 500MiB, 20GiB, 2TiB, 10GB or a number of bytes")
    number, prefix, binary, unit_b = match.groups()
    power = "kmgtp".find(prefix.lower()) + 1 if prefix else 0
    # "10G" and "10GiB" are binary, as in df -h; "10GB" is decimal, as on a disk's label.
    base = 1000 if (prefix and unit_b and not binary) else 1024
    if binary and not prefix:
        raise ValueError(f"{text!r} is not a size; use e.g. 500MiB, 20GiB")
    return int(float(number) * base**power)


# --- showing ------------------------------------------------------------------------------


def format_size(size: int | None) -> str:
    """``0 B``, ``512 B``, ``1.5 KiB``, ``12.3 MiB``, ``1.50 GiB``."""
    if size is None:
        return "-"
    if abs(size) < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if abs(value) < 1024 or unit == "PiB":
            break
    return f"{value:.2f} {unit}" if unit in ("GiB", "TiB", "PiB") else f"{value:.1f} {unit}"


def local(value: dt.datetime) -> dt.datetime:
    """An aware datetime in the local zone (the one the user reads)."""
    return value.astimezone()


def format_time(value: dt.datetime | None, *, precise: bool = False, date: bool = True) -> str:
    """Local time with its zone: ``2026-11-26 15:04:05 CET`` (``.123`` with ``precise``)."""
    if value is None:
        return "-"
    shown = local(value)
    text = shown.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")
    if precise:
        text += f".{shown.microsecond // 1000:03d}"
    return f"{text} {shown.strftime('%Z') or shown.strftime('%z')}"


def zone_name(when: dt.datetime | None = None) -> str:
    shown = local(when or dt.datetime.now(dt.UTC))
    return shown.strftime("%Z") or shown.strftime("%z")


def format_duration(value: dt.timedelta | float | None, *, precise: bool = False) -> str:
    """``0.4 s``, ``59 s``, ``3 min 4 s``, ``2 h 5 min``, ``3 d 4 h`` (``1.234 s`` with ``precise``)."""
    if value is None:
        return "-"
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    if precise and seconds < 60:
        return f"{seconds:.3f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """An aligned text table; ``align`` holds ``l`` or ``r`` per column (default: left)."""
    body = [["" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    align = (align or "").ljust(len(headers), "l")[: len(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(w) if a == "r" else cell.ljust(w)
            for cell, w, a in zip(cells, widths, align, strict=True)
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line([h.upper() for h in headers]), *(line(row) for row in body)])


def restored_streams_table(streams: Sequence[StreamSnapshot], *, last_segment: bool = True) -> str:
    """The streams a restore brings back, as ``stream-state restore`` and the demo show them."""
    headers = ["stream", "uri", "desired", "was recording", "next index", "health"]
    if last_segment:
        headers.append("last segment")
    rows = [
        [s.name, s.display_uri, s.desired, "yes" if s.was_recording else "no", s.next_segment_index, s.health]
        + ([s.last_segment_path or "-"] if last_segment else [])
        for s in streams
    ]
    return format_table(headers, rows, "llllr")


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot show {type(value).__name__} as JSON")


def to_json(value: Any) -> str:
    """Indented JSON; times as ISO 8601 UTC (``...Z``), sizes as bytes, enums as their value."""
    return json.dumps(value, indent=2, default=_json_default, ensure_ascii=False)


# --- progress -------------------------------------------------------------------------------


class Progress:
    """A progress bar for a library ``progress`` callback, drawn only when ``enabled``.

    Call it as ``progress(done, total)`` (a bar) or ``progress(done)`` (a
    running count, when the total is unknown). Use it as a context manager so
    the line is finished at the end.
    """

    def __init__(self, label: str, enabled: bool, file: TextIO | None = None):
        self.label = label
        self.enabled = enabled
        self.file = file or sys.stderr
        self._stack = ExitStack()
        self._bar: Any = None
        self._counted = False

    def __call__(self, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        if total is None:
            self.file.write(f"\r{self.label} {done:,}")
            self.file.flush()
            self._counted = True
            return
        if self._bar is None:
            self._bar = self._stack.enter_context(
                click.progressbar(length=total, label=self.label, file=self.file, show_pos=True)
            )
        self._bar.update(done - self._bar.pos)

    def busy(self) -> None:
        """Say that a step without progress reports is running (finished by the end of the block)."""
        if self.enabled:
            self.file.write(f"{self.label} ...")
            self.file.flush()
            self._counted = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        if self._counted:
            self.file.write("\n")
            self.file.flush()
