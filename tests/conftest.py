"""The ``db`` fixture: every database test runs on SQLite and on PostgreSQL.

SQLite always runs, on a real file in ``tmp_path``. PostgreSQL runs when
``STREAM_STATE_TEST_PG_URL`` is set, each test in a schema of its own that is
dropped afterwards; without the variable that half is skipped with a reason,
and with it set but the server unreachable the tests fail (CI must not pass
by skipping).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee as pw
import pytest

from stream_state import open_database
from stream_state.database import connect_database
from stream_state.models.session import forget_process_session

pytest_plugins = ["pytester"]  # tests/test_conftest.py runs pytest on this file

PG_URL_ENV = "STREAM_STATE_TEST_PG_URL"
BACKENDS = ("sqlite", "postgres")


@dataclass
class Backend:
    """How to open (another) database of one backend inside one test."""

    name: str
    tmp_path: Path
    pg_url: str | None = None
    _schemas: list[str] | None = None

    def new_target(self) -> tuple[str, dict[str, Any]]:
        """A fresh, empty database: (url, extra connect params)."""
        if self.name == "sqlite":
            return f"sqlite:///{self.tmp_path / f'db-{uuid.uuid4().hex[:8]}.db'}", {}
        schema = f"test_{uuid.uuid4().hex[:12]}"
        with _pg_admin(self.pg_url) as admin:
            admin.execute_sql(f'CREATE SCHEMA "{schema}"')
        assert self._schemas is not None
        self._schemas.append(schema)
        return self.pg_url, {"options": f"-c search_path={schema}"}

    def open(self, **kwargs: Any) -> pw.Database:
        url, params = self.new_target()
        return open_database(url, **params, **kwargs)

    def connect(self) -> pw.Database:
        url, params = self.new_target()
        return connect_database(url, **params)

    def cleanup(self) -> None:
        if self.name == "postgres" and self._schemas:
            with _pg_admin(self.pg_url) as admin:
                for schema in self._schemas:
                    admin.execute_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class _pg_admin:
    def __init__(self, url: str | None):
        self.db = pw.PostgresqlDatabase(None)
        from playhouse.db_url import parse

        self.db.init(**parse(url))

    def __enter__(self) -> pw.PostgresqlDatabase:
        self.db.connect()
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()


@pytest.fixture(params=BACKENDS, ids=lambda name: f"{name}")
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "postgres":
        pg_url = os.environ.get(PG_URL_ENV)
        if not pg_url:
            pytest.skip(f"PostgreSQL half skipped: set {PG_URL_ENV}=postgresql://host/dbname to run it")
        found = Backend("postgres", tmp_path, pg_url, [])
    else:
        found = Backend("sqlite", tmp_path)
    try:
        yield found
    finally:
        found.cleanup()


@pytest.fixture
def db(backend: Backend) -> Iterator[pw.Database]:
    """A migrated, empty database with the models bound to it."""
    database = backend.open()
    try:
        yield database
    finally:
        # The process's session of this database (opened by the first
        # write) ends cleanly with the test, and its keep-alive thread too.
        forget_process_session(database)
        if isinstance(database, pw.PostgresqlDatabase):
            database.close_all()
        else:
            database.close()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # `pytest -k database` selects every test that touches a database.
    for item in items:
        if {"db", "backend"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.database)


_OUTCOMES: dict[tuple[str, str], int] = {}
# Whether a test's call passed, for fixtures that check figures at teardown
# (the property tests' accepted calls) and have nothing to add to a failure.
CALL_PASSED = pytest.StashKey[bool]()


def backend_of(item: pytest.Item) -> str | None:
    """The value of the ``backend`` fixture a test ran with (``db`` depends on it), or None."""
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("backend") if callspec is not None else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[CALL_PASSED] = report.passed
    # Count each backend's results so CI's output shows the PostgreSQL half ran:
    # by the fixture's value, not by the test id, in which "postgres" may be any word.
    name = backend_of(item)
    # As pytest's own summary does: the call's outcome, plus an error for a
    # failed setup or teardown, plus a skip in setup (no PostgreSQL URL).
    counted = report.when == "call" or not report.passed
    if name is not None and counted:
        outcome = "error" if report.when != "call" and report.failed else report.outcome
        _OUTCOMES[(name, outcome)] = _OUTCOMES.get((name, outcome), 0) + 1
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _OUTCOMES:
        return
    terminalreporter.section("tests per database backend")
    for name in BACKENDS:
        counts = {outcome: n for (backend, outcome), n in sorted(_OUTCOMES.items()) if backend == name}
        shown = ", ".join(f"{n} {outcome}" for outcome, n in counts.items()) or "none"
        terminalreporter.write_line(f"{name}: {shown}")
