"""The numbered rules: written down once, cited by the code, checked on the database."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import peewee as pw
import pytest

import stream_state
from stream_state import Recording, Restorer
from stream_state.invariants import CHECKS, INVARIANTS, check_invariants
from stream_state.maintenance import integrity_check

from .factories import RecordingFactory, StreamFactory

ROOT = Path(stream_state.__file__).parent.parent
DOC = ROOT / "docs" / "invariants.md"
T0 = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)


def documented() -> dict[int, str]:
    rules = DOC.read_text().split("## The rules", 1)[1].split("## Procedures", 1)[0]
    return {
        int(number): " ".join(title.split())
        for number, title in re.findall(r"^\s*(\d+)\. \*\*(.+?)\*\*", rules, re.M | re.S)
    }


def test_the_document_and_the_code_number_the_same_rules():
    assert documented() == INVARIANTS
    assert list(INVARIANTS) == list(range(1, len(INVARIANTS) + 1))


def test_every_rule_is_cited_where_it_is_kept_or_tested():
    cited: set[int] = set()
    kept_by = [p for p in (ROOT / "stream_state").rglob("*.py") if p.name != "invariants.py"]
    for path in [*kept_by, ROOT / "tests" / "test_crash.py"]:
        for numbers in re.findall(r"invariants? (\d+(?:(?:, | and )\d+)*)", path.read_text()):
            cited.update(int(n) for n in re.findall(r"\d+", numbers))
    assert set(INVARIANTS) <= cited, f"rules no code or crash test cites: {sorted(set(INVARIANTS) - cited)}"


def test_the_checkable_rules_are_the_ones_the_document_lists_as_checked():
    table = DOC.read_text().split("## What `integrity` verifies", 1)[1]
    listed = {int(n) for n in re.findall(r"^\| (\d+) \|", table, re.M)}
    assert listed == set(CHECKS)


# --- the checker on a real database ------------------------------------------------------------


def populated():
    """A database as a running recorder leaves it: every kind of row the rules talk about."""
    cam, lobby = StreamFactory(name="cam-1"), StreamFactory(name="lobby")
    done = [RecordingFactory(stream=cam) for _ in range(3)]
    RecordingFactory(stream=lobby, state="failed")
    open_segment = cam.begin_segment("/media/cam-1/open.mp4", started_at=T0 + dt.timedelta(hours=1))
    done[0].delete_file()
    Recording.transition(done[1].id, "complete", "missing")
    gone = StreamFactory(name="gone")
    RecordingFactory(stream=gone)
    gone.remove()
    return cam, done, open_segment


def test_a_database_the_package_wrote_keeps_every_rule(db):
    populated()
    assert check_invariants() == ()
    report = integrity_check()
    assert report.ok and report.invariants == ()


def execute(db: pw.Database, sql: str, *params) -> None:
    db.execute_sql(sql.replace("?", db.param), params)


def drop_check_constraints(db: pw.Database, backend) -> None:
    if backend.name == "sqlite":
        db.execute_sql("PRAGMA ignore_check_constraints = ON")
        return
    names = db.execute_sql(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'recording'::regclass AND contype = 'c'"
    ).fetchall()
    for (name,) in names:
        db.execute_sql(f'ALTER TABLE recording DROP CONSTRAINT "{name}"')


def plant(kind: str, db: pw.Database, backend, cam, done, open_segment) -> None:
    """Break one rule behind the package's back, as a bug or a hand edit would."""
    second = done[2]
    if kind == "index reused":
        execute(db, 'DROP INDEX "recording_stream_id_segment_index"')
        execute(
            db, "UPDATE recording SET segment_index = ? WHERE id = ?", open_segment.segment_index, second.id
        )
    elif kind == "path reused":
        execute(db, 'DROP INDEX "recording_path"')
        execute(db, "UPDATE recording SET path = ? WHERE id = ?", open_segment.path, second.id)
    elif kind == "counter behind":
        execute(db, "UPDATE stream SET next_segment_index = 1 WHERE id = ?", cam.id)
    elif kind == "id counter behind":
        if backend.name == "sqlite":
            execute(db, "UPDATE sqlite_sequence SET seq = 1 WHERE name = 'recording'")
        else:
            execute(db, "SELECT setval(pg_get_serial_sequence('recording', 'id'), 1)")
    elif kind == "closed but open":
        execute(db, "UPDATE recording SET state = 'complete' WHERE id = ?", open_segment.id)
    elif kind == "recording with an end":
        execute(db, "UPDATE recording SET state = 'recording' WHERE id = ?", second.id)
    elif kind == "end before start":
        drop_check_constraints(db, backend)
        execute(db, "UPDATE recording SET ended_at = started_at - 1000 WHERE id = ?", second.id)
    elif kind == "negative size":
        drop_check_constraints(db, backend)
        execute(db, "UPDATE recording SET size_bytes = -1 WHERE id = ?", second.id)
    elif kind == "complete unfinalised":
        execute(db, "UPDATE recording SET finalized = ? WHERE id = ?", False, second.id)
    elif kind == "archiving without a plan":
        execute(db, "UPDATE recording SET state = 'archiving' WHERE id = ?", second.id)
    elif kind == "unknown state":
        execute(db, "UPDATE recording SET state = 'finished' WHERE id = ?", second.id)
    elif kind == "open segment of a removed stream":
        execute(db, "UPDATE stream SET removed_at = 1 WHERE id = ?", cam.id)
    elif kind == "owner without a session row":
        execute(db, "UPDATE stream SET owner_session_id = 999999 WHERE id = ?", cam.id)
    elif kind == "segment from a future epoch":
        execute(db, "UPDATE recording SET session_epoch = 99 WHERE id = ?", open_segment.id)
    else:
        raise AssertionError(kind)


PLANTED = {
    "index reused": (2, "same segment index"),
    "path reused": (2, "same path"),
    "counter behind": (3, "next_segment_index"),
    "id counter behind": (4, "id counter"),
    "closed but open": (5, "open row (no end) that is not recording"),
    "recording with an end": (5, "recording row with an end"),
    "end before start": (8, "end before the start"),
    "negative size": (8, "negative size"),
    "complete unfinalised": (8, "did not finalise"),
    "archiving without a plan": (9, "without its move's plan"),
    "unknown state": (10, "does not know"),
    "open segment of a removed stream": (12, "removed stream"),
    "owner without a session row": (14, "session that has no row"),
    "segment from a future epoch": (14, "has not reached"),
}


@pytest.mark.parametrize("kind", list(PLANTED))
def test_a_planted_violation_is_reported_by_its_number(db, backend, kind):
    cam, done, open_segment = populated()
    plant(kind, db, backend, cam, done, open_segment)
    number, problem = PLANTED[kind]
    found = check_invariants()
    assert [(v.invariant, problem in v.problem) for v in found] == [(number, True)], found
    (violation,) = found
    assert violation.rule == INVARIANTS[number] and violation.count >= 1 and violation.examples
    assert str(violation).startswith(f"invariant {number}: ")
    report = integrity_check()
    assert not report.ok and report.invariants == found


def test_examples_are_capped_and_the_count_is_not(db):
    cam = StreamFactory()
    rows = [RecordingFactory(stream=cam) for _ in range(8)]
    db.execute_sql(f"UPDATE recording SET state = 'finished' WHERE stream_id = {cam.id}")
    (violation,) = check_invariants()
    assert violation.count == len(rows) and len(violation.examples) == 5
    assert "and 3 more" in str(violation)


def test_restore_leaves_nothing_for_the_checker(db, tmp_path):
    cam = StreamFactory()
    kept = tmp_path / "kept.mp4"
    kept.write_bytes(b"x" * 100)
    cam.begin_segment(kept, started_at=T0)
    cam.begin_segment(tmp_path / "never-written.mp4", started_at=T0)
    Restorer(db, session="test").restore(now=T0 + dt.timedelta(minutes=5))
    assert check_invariants() == ()
