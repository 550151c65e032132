"""What differs between the backends is declared once, by the database classes (stream_state.backends)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import peewee as pw
import pytest

from stream_state import ValidationError
from stream_state.backends import (
    PostgresDialect,
    SqliteDialect,
    check_database_file,
    current_database,
    database_proxy,
    dialect,
    url_backend,
)
from stream_state.errors import DatabaseUnavailable
from stream_state.models import MetricRollup, MetricSample, Recording

from .test_layers import MODULES, layer_of

PACKAGE = Path(__file__).resolve().parent.parent / "stream_state"
# The base layer: no model, no service (the layers are declared once, in tests/test_layers.py).
BASE_MODULES = tuple(sorted(name for name in MODULES if layer_of(name) == "base"))


def test_only_the_backends_module_asks_which_backend_a_database_is():
    # peewee's own classes; aio tells its own two database classes apart to describe an async target.
    asks = re.compile(r"isinstance\([^)]*pw\.(Sqlite|Postgresql)Database\b|getattr\(\w+, \"obj\"")
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "backends.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if asks.search(line)
    ]
    assert found == []


@pytest.mark.parametrize("module", BASE_MODULES)
def test_the_base_imports_no_model_and_no_service(module):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            imported.add((node.module or "").split(".")[0])
    assert imported <= set(BASE_MODULES), imported - set(BASE_MODULES)


def test_the_package_databases_are_their_own_dialect(backend, db):
    assert dialect(db) is db
    assert dialect() is db
    assert dialect(database_proxy) is db
    family = SqliteDialect if backend.name == "sqlite" else PostgresDialect
    assert isinstance(db, family)
    assert db.is_sqlite == (backend.name == "sqlite")


def test_a_plain_peewee_database_gets_its_familys_members(tmp_path):
    plain = pw.SqliteDatabase(str(tmp_path / "plain.db"))
    members = dialect(plain)
    assert isinstance(members, SqliteDialect) and members.is_sqlite
    assert members.index_hint("recording_open") == ' INDEXED BY "recording_open"'
    assert members.translate_error(pw.OperationalError("database or disk is full")) is None
    check_database_file(plain)  # a database the package did not open is let through
    members.checkpoint_passive()  # runs on the plain database
    plain.close()
    pg = dialect(pw.PostgresqlDatabase("nothing"))
    assert isinstance(pg, PostgresDialect) and not pg.is_sqlite
    assert pg.index_hint("recording_open") == "" and pg.share_lock == " FOR SHARE"


def test_without_rowid_follows_the_bound_database(backend):
    other = backend.connect()
    try:
        with other.bind_ctx([MetricSample, MetricRollup, Recording]):
            expected = backend.name == "sqlite"
            assert MetricSample._meta.without_rowid is expected
            assert MetricRollup._meta.without_rowid is expected
            assert Recording._meta.without_rowid is False  # asks nobody: a plain table
    finally:
        other.close()


def test_nothing_bound_is_database_unavailable():
    previous = database_proxy.obj
    database_proxy.initialize(None)
    try:
        with pytest.raises(DatabaseUnavailable, match="open_database"):
            current_database()
        with pytest.raises(DatabaseUnavailable, match="open_database"):
            dialect()
    finally:
        database_proxy.initialize(previous)


@pytest.mark.parametrize(
    ("url", "backend_name"),
    [
        ("state.db", "sqlite"),
        ("/var/lib/state.db", "sqlite"),
        ("sqlite:///state.db", "sqlite"),
        ("SQLite+pool:////abs/state.db", "sqlite"),
        ("postgresql://u:p@db/state", "postgres"),
        ("postgres://db/state", "postgres"),
        ("postgresql+pool://db/state", "postgres"),
    ],
)
def test_the_url_names_the_backend(url, backend_name):
    assert url_backend(url) == backend_name


def test_an_unknown_scheme_is_refused_without_showing_the_password():
    with pytest.raises(ValidationError, match="unsupported scheme") as caught:
        url_backend("mysql://root:hunter2@db/state")
    assert "hunter2" not in str(caught.value)
