"""Compare the recording table with the files on the storage roots, both ways.

``check(roots)`` reports files with no row (orphans) and rows with no file
(missing): invariant 13, the one rule the database cannot check alone.
It changes nothing unless asked: ``adopt_orphans`` makes rows (state
``recovered``) for orphan files, ``delete_orphans`` removes them,
``mark_missing`` sets rows of missing files to ``missing`` and
``drop_missing`` deletes those rows.

It also compares what it can without reading the files (issue 13):

* paths are compared in one spelling (``validate.normalise_path``): a row
  stored as ``/media/disk1//cam-1/x.ts`` names the file
  ``/media/disk1/cam-1/x.ts``; such rows are reported in ``spellings``
  (``fix_spellings`` rewrites them) and their files are never orphans;
* a settled segment's size is compared with its file's (``sizes``;
  ``fix_sizes`` takes the file's size);
* a 0-byte file left behind a ``failed`` row is reported in
  ``empty_failed`` (``remove_empty_failed`` unlinks it; the row stays).

Guards, because the usual cause of "everything is missing" is a disk that is
not mounted, and the usual cause of "everything is an orphan" is a database
restored from an old backup:

* each root carries a marker file naming this database; an unmarked, empty
  or foreign root is reported and never repaired (``init_roots`` marks new
  roots);
* nothing younger than ``min_age`` is touched;
* a repair that would remove or mark more than ``max_share`` (default 50%)
  of one stream's recordings is refused unless ``force``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import peewee as pw

from .errors import ValidationError
from .models import Event, Recording, Stream, SystemState, database_proxy
from .models.recording import unlink_quietly
from .probe import Playability, Probe
from .pwtypes import dict_rows
from .states import EventType, SegmentState, Severity
from .timeutil import from_millis, now_millis, to_millis
from .validate import normalise_path

log = logging.getLogger(__name__)

MARKER_NAME = ".stream_state_root.json"
DEFAULT_SUFFIXES = frozenset(
    {".mp4", ".mkv", ".ts", ".m4s", ".mov", ".webm", ".avi", ".flv", ".h264", ".h265"}
)
DEFAULT_MIN_AGE = dt.timedelta(minutes=10)
DEFAULT_MAX_SHARE = 0.5

# Rows whose file is expected on disk. A failed segment may legitimately
# have no file; open and deleting rows belong to restore.
_SETTLED = (SegmentState.COMPLETE, SegmentState.INTERRUPTED, SegmentState.RECOVERED)


@dataclass(frozen=True)
class RootStatus:
    path: str
    status: str  # "ok", "marked" (marker just written), "unmarked", "empty", "foreign", "absent"
    detail: str
    files: int
    rows: int

    @property
    def repairable(self) -> bool:
        return self.status in ("ok", "marked")


@dataclass(frozen=True)
class OrphanFile:
    path: str
    size_bytes: int
    modified_at: dt.datetime
    stream: str | None  # the stream it most likely belongs to
    action: (
        str  # "reported", "adopted", "deleted", or why not: "too young", "no stream", "refused", "unplayable"
    )


@dataclass(frozen=True)
class MissingFile:
    recording_id: int
    stream: str
    path: str
    state: SegmentState
    action: str  # "reported", "marked missing", "dropped", "too young", "refused", "found again"


@dataclass(frozen=True)
class UnplayableFile:
    """A row that promises footage whose file the probe found unplayable (reported, never repaired)."""

    recording_id: int
    stream: str
    path: str
    state: SegmentState
    reason: str


@dataclass(frozen=True)
class SpellingProblem:
    """A row whose stored path is another spelling of its file's path (``//``, ``/./``, ``x/..``)."""

    recording_id: int
    stream: str
    stored: str
    normalised: str
    file_exists: bool
    action: str  # "reported", "fixed", "refused" (another row has the normalised path)


@dataclass(frozen=True)
class SizeMismatch:
    recording_id: int
    stream: str
    path: str
    row_bytes: int
    file_bytes: int
    action: str  # "reported", "fixed"


@dataclass(frozen=True)
class EmptyFailedFile:
    """A 0-byte file left behind a ``failed`` row (the segmenter never wrote to it)."""

    recording_id: int
    stream: str
    path: str
    action: str  # "reported", "removed", "too young"


@dataclass(frozen=True)
class CheckReport:
    roots: tuple[RootStatus, ...]
    orphans: tuple[OrphanFile, ...]
    missing: tuple[MissingFile, ...]
    refused: tuple[str, ...]  # why a requested repair was not done
    unplayable: tuple[UnplayableFile, ...] = ()  # only with a probe
    spellings: tuple[SpellingProblem, ...] = ()
    sizes: tuple[SizeMismatch, ...] = ()
    empty_failed: tuple[EmptyFailedFile, ...] = ()

    @property
    def clean(self) -> bool:
        """True when rows and files agree on every identified root (and every probed file plays)."""
        return (
            not self.orphans
            and not [m for m in self.missing if m.action != "found again"]
            and not self.unplayable
            and not [p for p in self.spellings if p.action != "fixed"]
            and not [m for m in self.sizes if m.action != "fixed"]
            and not [e for e in self.empty_failed if e.action != "removed"]
        )

    def count(self, action: str) -> int:
        items: tuple[OrphanFile | MissingFile | SpellingProblem | SizeMismatch | EmptyFailedFile, ...] = (
            *self.orphans, *self.missing, *self.spellings, *self.sizes, *self.empty_failed,
        )  # fmt: skip
        return sum(item.action == action for item in items)


# --- storage root identity -----------------------------------------------------------------


def read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def mark_root(root: str | os.PathLike[str]) -> Path:
    """Write this database's marker into a storage root (so it is recognised later)."""
    root = Path(root)
    marker = root / MARKER_NAME
    body = {"database_id": SystemState.database_id(), "root": str(root.resolve()), "marked_at": now_millis()}
    temporary = marker.with_suffix(".tmp")
    temporary.write_text(json.dumps(body))
    os.replace(temporary, marker)  # atomic: a crash leaves the old marker or the new one
    return marker


def _root_status(root: Path, files: int, rows: int, init: bool) -> RootStatus:
    if not root.is_dir():
        return RootStatus(str(root), "absent", "not a directory (not mounted?)", files, rows)
    marker = read_marker(root)
    database_id = SystemState.database_id()
    if marker is None:
        if files == 0:
            return RootStatus(str(root), "empty", "no marker and no files: is the disk mounted?", files, rows)
        if init:
            mark_root(root)
            return RootStatus(str(root), "marked", "marker written", files, rows)
        return RootStatus(
            str(root), "unmarked", "no marker: pass init_roots to adopt this root as ours", files, rows
        )
    if marker.get("database_id") != database_id:
        return RootStatus(
            str(root),
            "foreign",
            f"marked by another database ({marker.get('database_id')}): a swapped disk?",
            files,
            rows,
        )
    return RootStatus(str(root), "ok", "marker matches", files, rows)


# --- the check --------------------------------------------------------------------------------


def check(
    storage_roots: Iterable[str | os.PathLike[str]],
    *,
    adopt_orphans: bool = False,
    delete_orphans: bool = False,
    mark_missing: bool = False,
    drop_missing: bool = False,
    min_age: dt.timedelta = DEFAULT_MIN_AGE,
    max_share: float = DEFAULT_MAX_SHARE,
    force: bool = False,
    init_roots: bool = False,
    suffixes: Iterable[str] = DEFAULT_SUFFIXES,
    now: dt.datetime | None = None,
    probe: Probe | None = None,
    fix_spellings: bool = False,
    fix_sizes: bool = False,
    remove_empty_failed: bool = False,
) -> CheckReport:
    """Compare rows and files under ``storage_roots``; repair only what is asked.

    With a ``probe`` (``stream_state.probe.probe``, or the manager's own)
    every file is also opened: a complete, interrupted or recovered row whose
    file does not play is reported in ``unplayable``, and an adopted orphan
    is dated from what plays (its media's length back from its mtime), and an
    orphan that does not play is not adopted (action ``unplayable``): a row
    must not promise footage. Reads every file's structure, so it is opt-in.
    """
    if adopt_orphans and delete_orphans:
        raise ValidationError("delete_orphans", True, "choose adopt_orphans or delete_orphans, not both")
    if mark_missing and drop_missing:
        raise ValidationError("drop_missing", True, "choose mark_missing or drop_missing, not both")
    if not 0 < max_share <= 1:
        raise ValidationError("max_share", max_share, "must be in (0, 1]")
    now_ms = now_millis() if now is None else to_millis(now, "now")
    cutoff_ms = now_ms - int(min_age.total_seconds() * 1000)
    suffixes = frozenset(s.lower() for s in suffixes)
    roots = [Path(normalise_path(os.path.abspath(root))) for root in storage_roots]
    if not roots:
        raise ValidationError("storage_roots", [], "give at least one storage root")

    statuses, orphans, missing, refused, unplayable = [], [], [], [], []
    spellings: list[SpellingProblem] = []
    sizes: list[SizeMismatch] = []
    empty_failed: list[EmptyFailedFile] = []
    for root in roots:
        files = _scan(root, suffixes)
        # Rows keyed by their path's one spelling: a file is compared with the
        # row that names it however the row spells it.
        stored = _rows_under(root)
        rows = {normalise_path(path): row for path, row in stored.items()}
        status = _root_status(root, len(files), len(rows), init_roots)
        statuses.append(status)
        wants_repair = adopt_orphans or delete_orphans or mark_missing or drop_missing
        if not status.repairable and wants_repair:
            refused.append(f"{root}: {status.status}: {status.detail}")
        if status.status in ("absent", "empty", "foreign"):
            continue  # nothing on it can be trusted to say anything about our rows
        repair = status.repairable
        spellings += _handle_spellings(stored, files, fix_spellings and repair)
        sizes += _handle_sizes(files, rows, fix_sizes and repair)
        empty_failed += _handle_empty_failed(files, rows, cutoff_ms, remove_empty_failed and repair)
        orphan_found, missing_found = _compare(files, rows, root)
        orphans += _handle_orphans(
            orphan_found, rows, cutoff_ms, adopt_orphans and repair, delete_orphans and repair,
            max_share, force, refused, probe,
        )  # fmt: skip
        if probe is not None:
            unplayable += _unplayable(files, rows, probe)
        missing += _handle_missing(
            missing_found, rows, cutoff_ms, mark_missing and repair, drop_missing and repair,
            max_share, force, refused,
        )  # fmt: skip
    report = CheckReport(
        tuple(statuses), tuple(orphans), tuple(missing), tuple(refused), tuple(unplayable),
        tuple(spellings), tuple(sizes), tuple(empty_failed),
    )  # fmt: skip
    _record(report, now_ms)
    return report


def _scan(root: Path, suffixes: frozenset[str]) -> dict[str, os.stat_result]:
    found: dict[str, os.stat_result] = {}
    if not root.is_dir():
        return found
    for directory, _dirs, names in os.walk(root):
        for name in names:
            if name == MARKER_NAME or Path(name).suffix.lower() not in suffixes:
                continue
            path = os.path.join(directory, name)
            try:
                found[path] = os.stat(path)
            except OSError:
                continue  # vanished while we looked
    return found


def _rows_under(root: Path) -> dict[str, dict]:
    prefix = str(root).rstrip(os.sep) + os.sep
    query = (
        Recording.select(
            Recording.id,
            Recording.stream,
            Stream.name.alias("stream_name"),
            Recording.path,
            Recording.state,
            Recording.ended_at,
            Recording.started_at,
            Recording.size_bytes,
        )
        .join(Stream)
        # substr() rather than LIKE: paths may contain % and _.
        .where(pw.fn.SUBSTR(Recording.path, 1, len(prefix)) == prefix)
    )
    return {row["path"]: row for row in dict_rows(query)}


def _compare(files: dict[str, os.stat_result], rows: dict[str, dict], root: Path) -> tuple[list, list]:
    orphans = [(path, info) for path, info in sorted(files.items()) if path not in rows]
    missing = [
        row
        for path, row in sorted(rows.items())
        if path not in files and row["state"] in (*_SETTLED, SegmentState.MISSING)
    ]
    found_again = [
        rows[path] for path in files if path in rows and rows[path]["state"] == SegmentState.MISSING
    ]
    return orphans, missing + [dict(row, found_again=True) for row in found_again]


def _handle_spellings(
    stored: dict[str, dict], files: dict[str, os.stat_result], fix: bool
) -> list[SpellingProblem]:
    found = []
    taken = set(stored)
    for path, row in sorted(stored.items()):
        normal = normalise_path(path)
        if normal == path:
            continue
        action = "reported"
        if fix:
            if normal in taken:
                action = "refused"  # another row already has that spelling: an operator decides
            else:
                Recording.update(path=normal).where(
                    (Recording.id == row["id"]) & (Recording.path == path)
                ).execute()
                taken.discard(path)
                taken.add(normal)
                row["path"] = normal
                action = "fixed"
        found.append(SpellingProblem(row["id"], row["stream_name"], path, normal, normal in files, action))
    return found


def _handle_sizes(files: dict[str, os.stat_result], rows: dict[str, dict], fix: bool) -> list[SizeMismatch]:
    found = []
    for path, row in sorted(rows.items()):
        info = files.get(path)
        if info is None or row["state"] not in _SETTLED or row["size_bytes"] == info.st_size:
            continue
        action = "reported"
        if fix:
            Recording.update(size_bytes=info.st_size).where(
                (Recording.id == row["id"]) & (Recording.size_bytes == row["size_bytes"])
            ).execute()
            action = "fixed"
        found.append(
            SizeMismatch(row["id"], row["stream_name"], path, row["size_bytes"], info.st_size, action)
        )
    return found


def _handle_empty_failed(
    files: dict[str, os.stat_result], rows: dict[str, dict], cutoff_ms: int, remove: bool
) -> list[EmptyFailedFile]:
    found = []
    for path, row in sorted(rows.items()):
        info = files.get(path)
        if info is None or row["state"] != SegmentState.FAILED or info.st_size != 0:
            continue
        action = "reported"
        if remove:
            if info.st_mtime_ns // 1_000_000 > cutoff_ms:
                action = "too young"
            else:
                unlink_quietly(path)
                action = "removed"
        found.append(EmptyFailedFile(row["id"], row["stream_name"], path, action))
    return found


def _guess_stream(path: str, rows: dict[str, dict], streams: list[tuple[str, int]]) -> tuple[str, int] | None:
    """The stream an orphan most likely belongs to: its neighbours' stream, else its file name's."""
    directory = os.path.dirname(path)
    neighbours = Counter(
        (row["stream_name"], row["stream"]) for p, row in rows.items() if os.path.dirname(p) == directory
    )
    if neighbours:
        return neighbours.most_common(1)[0][0]
    name = os.path.basename(path)
    for stream_name, stream_id in sorted(streams, key=lambda s: -len(s[0])):
        if name.startswith(stream_name) and (
            len(name) == len(stream_name) or not name[len(stream_name)].isalnum()
        ):
            return stream_name, stream_id
    return None


def _unplayable(
    files: dict[str, os.stat_result], rows: dict[str, dict], probe: Probe
) -> list[UnplayableFile]:
    found = []
    for path, row in sorted(rows.items()):
        if path not in files or row["state"] not in _SETTLED:
            continue
        result = probe(path)
        if result.playable is False:
            found.append(
                UnplayableFile(row["id"], row["stream_name"], path, SegmentState(row["state"]), result.reason)
            )
    return found


def _handle_orphans(
    orphans, rows, cutoff_ms, adopt, delete, max_share, force, refused, probe=None
) -> list[OrphanFile]:
    streams = [
        (s.name, s.id) for s in Stream.select(Stream.name, Stream.id).where(Stream.removed_at.is_null())
    ]
    guesses = {path: _guess_stream(path, rows, streams) for path, _info in orphans}
    delete_refused = False
    if delete and not force:
        # Deleting most of a stream's files because the index does not know
        # them usually means the index is old (a restored backup), not the files.
        per_stream = Counter(guess[0] if guess else None for guess in guesses.values())
        known = Counter(row["stream_name"] for row in rows.values())
        for stream_name, count in per_stream.items():
            if count / (count + known.get(stream_name, 0)) > max_share:
                refused.append(
                    f"deleting {count} orphan file(s) of {stream_name or 'unknown streams'} is more than "
                    f"{max_share:.0%} of its recordings; pass force to do it anyway"
                )
                delete, delete_refused = False, True
    result = []
    for path, info in orphans:
        mtime_ms = info.st_mtime_ns // 1_000_000
        guess = guesses[path]
        action = "refused" if delete_refused else "reported"
        if adopt or delete:
            if mtime_ms > cutoff_ms:
                action = "too young"
            elif delete:
                unlink_quietly(path)
                action = "deleted"
            elif guess is None:
                action = "no stream"
            else:
                playable = probe(path) if probe is not None else None
                if playable is not None and playable.playable is False:
                    # A row must not promise footage; the file stays for an operator.
                    action = "unplayable"
                else:
                    _adopt(path, guess[1], info.st_size, mtime_ms, playable)
                    action = "adopted"
        result.append(
            OrphanFile(path, info.st_size, from_millis(mtime_ms), guess[0] if guess else None, action)
        )
    return result


def _adopt(path: str, stream_id: int, size: int, mtime_ms: int, playable: Playability | None = None) -> None:
    with database_proxy.atomic():
        claimed = (
            Stream.update(next_segment_index=Stream.next_segment_index + 1)
            .where(Stream.id == stream_id)
            .returning(Stream.next_segment_index)
            .execute()
        )
        # invariants 2, 3: a fresh index from the stream's counter, as begin_segment takes one
        index = next(iter(claimed)).next_segment_index - 1
        # Its mtime is when it ended; when it started is unknown unless a
        # probe measured its media.
        started_ms = mtime_ms
        metadata: dict[str, object] = {"recovered_by": "check", "started_at_unknown": True}
        if playable is not None and playable.known:
            metadata["probe"] = playable.reason
            if playable.duration is not None:
                started_ms = mtime_ms - playable.duration // dt.timedelta(milliseconds=1)
                metadata["started_at_unknown"] = False
        Recording.create_segment(
            SegmentState.RECOVERED,
            stream=stream_id,
            path=path,
            segment_index=index,
            started_at=started_ms,
            ended_at=mtime_ms,
            size_bytes=size,
            metadata=metadata,
            **({} if playable is None or playable.finalized is None else {"finalized": playable.finalized}),
        )


def _handle_missing(missing, rows, cutoff_ms, mark, drop, max_share, force, refused) -> list[MissingFile]:
    result = []
    if (mark or drop) and not force:
        per_stream = Counter(row["stream_name"] for row in missing if not row.get("found_again"))
        totals = Counter(row["stream_name"] for row in rows.values())
        over = {name for name, count in per_stream.items() if count / totals[name] > max_share}
        for name in sorted(over):
            refused.append(
                f"{per_stream[name]} of {totals[name]} recordings of {name} have no file (more than "
                f"{max_share:.0%}): is a disk missing? pass force to repair anyway"
            )
    else:
        over = set()
    for row in missing:
        action = "reported"
        if row.get("found_again"):
            action = "found again"
            if mark or drop:
                _set_state(row["id"], SegmentState.MISSING, SegmentState.RECOVERED)
        elif mark or drop:
            ended = row["ended_at"] or row["started_at"]
            ended_ms = ended if isinstance(ended, int) else to_millis(ended)
            if row["stream_name"] in over:
                action = "refused"
            elif ended_ms > cutoff_ms:
                action = "too young"
            elif drop:
                _drop(row["id"], SegmentState(row["state"]))
                action = "dropped"
            elif row["state"] != SegmentState.MISSING:
                _set_state(row["id"], SegmentState(row["state"]), SegmentState.MISSING)
                action = "marked missing"
        result.append(
            MissingFile(row["id"], row["stream_name"], row["path"], SegmentState(row["state"]), action)
        )
    return result


def _set_state(recording_id: int, old: SegmentState, new: SegmentState) -> None:
    Recording.transition(recording_id, old, new)


def _drop(recording_id: int, old: SegmentState) -> None:
    """Forget a row whose file is gone: through ``deleting``, like every removal (invariant 6)."""
    with database_proxy.atomic():
        if Recording.transition(recording_id, old, SegmentState.DELETING):
            Recording.finish_delete(recording_id)


def _record(report: CheckReport, now_ms: int) -> None:
    # invariant 11: what check changed is written down (one event per run)
    counts = {
        action: report.count(action)
        for action in ("adopted", "deleted", "marked missing", "dropped", "found again", "fixed", "removed")
        if report.count(action)
    }
    if not counts and not report.refused:
        return
    Event.record(
        EventType.CHECK_REPAIRED,
        severity=Severity.WARNING,
        message="check: " + ", ".join(f"{n} {action}" for action, n in counts.items())
        if counts
        else "check refused",
        data={"counts": counts, "refused": list(report.refused), "roots": [r.path for r in report.roots]},
        at=from_millis(now_ms),
    )
    log.warning("check repaired %s; refused: %s", counts, report.refused)
