"""The test harness itself: the per-backend summary counts what really ran on each backend."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

TESTS = """
import pytest

@pytest.mark.parametrize("word", ["postgres", "sqlite-postgres-x"])
def test_with_postgres_in_its_id(word):
    pass

def test_on_each_backend(backend):
    pass

def test_with_db(db):
    pass
"""


def summary(result: pytest.RunResult) -> list[str]:
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if "tests per database backend" in line)
    return [line for line in lines[start + 1 :] if line.startswith(("sqlite:", "postgres:"))]


def test_backend_summary_counts_by_the_fixture_not_by_test_ids(pytester, monkeypatch):
    monkeypatch.delenv("STREAM_STATE_TEST_PG_URL", raising=False)
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_ids=TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, skipped=2)
    # Before: "postgres: 2 passed" from the ids that merely contain the word.
    assert summary(result) == ["sqlite: 2 passed", "postgres: 2 skipped"]


def test_backend_summary_counts_an_unreachable_postgres_as_errors(pytester, monkeypatch):
    monkeypatch.setenv("STREAM_STATE_TEST_PG_URL", "postgresql://nobody@127.0.0.1:1/none")
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_ids=TESTS.replace("def test_on_each_backend(backend):\n    pass\n", ""))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    assert summary(result) == ["sqlite: 1 passed", "postgres: 1 error"]
