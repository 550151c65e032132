"""Migrations and models agree; migrations round-trip; pw_migrate works from the repo root."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import peewee as pw
import pytest

from stream_state import MODELS, open_database
from stream_state.database import (
    applied_migrations,
    code_schema_version,
    migrate_to_head,
    rollback_one,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
TABLES = [model._meta.table_name for model in MODELS]


def _constraints(db: pw.Database, table: str) -> set[str]:
    if isinstance(db, pw.PostgresqlDatabase):
        rows = db.execute_sql(
            "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
            "WHERE t.relname = %s AND t.relnamespace = current_schema()::regnamespace",
            (table,),
        ).fetchall()
        return {row[0] for row in rows}
    (sql,) = db.execute_sql(
        "SELECT sql FROM sqlite_master WHERE type='table' AND name=?", (table,)
    ).fetchone()
    return set(re.findall(r"CHECK \((?:[^()]|\([^()]*\))*\)", sql))


def _where(index_sql: str | None) -> str:
    """The WHERE of a partial index, whitespace-normalised ('' for a full index)."""
    if not index_sql or " WHERE " not in index_sql:
        return ""
    return re.sub(r"\s+", " ", index_sql.split(" WHERE ", 1)[1])


def describe(db: pw.Database) -> dict[str, dict]:
    """Everything about the package's tables that a query or a constraint relies on."""
    schema = {}
    for table in TABLES:
        schema[table] = {
            "columns": sorted(
                (c.name, c.data_type.lower(), c.null, c.primary_key) for c in db.get_columns(table)
            ),
            "indexes": sorted(
                (i.name, tuple(i.columns), i.unique, _where(i.sql)) for i in db.get_indexes(table)
            ),
            "foreign_keys": sorted(
                (f.column, f.dest_table, f.dest_column) for f in db.get_foreign_keys(table)
            ),
            "constraints": sorted(_constraints(db, table)),
        }
    return schema


def test_migrations_build_exactly_what_the_models_declare(backend, db):
    from_models = backend.connect()
    try:
        with from_models.bind_ctx(MODELS):
            from_models.create_tables(MODELS)
            assert describe(db) == describe(from_models)
            if isinstance(from_models, pw.SqliteDatabase):
                # WITHOUT ROWID is SQLite-only: the models ask for it through their metadata class.
                assert (
                    _without_rowid(from_models)
                    == _without_rowid(db)
                    == {"metric_block", "metric_rollup", "metric_sample", "segment_runs"}
                )
    finally:
        from_models.close()


def _without_rowid(db: pw.Database) -> set[str]:
    rows = db.execute_sql("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for name, sql in rows if sql.rstrip().upper().endswith("WITHOUT ROWID")}


def test_the_open_segments_index_is_partial_on_both_backends(db):
    indexes = {i.name: i for i in db.get_indexes("recording")}
    assert "ended_at" in indexes["recording_open"].sql.lower()
    assert "is null" in indexes["recording_open"].sql.lower()
    stream_indexes = {i.name: i for i in db.get_indexes("stream")}
    assert stream_indexes["stream_name_live"].unique


def test_migrations_round_trip_up_down_up(backend, db):
    before = describe(db)
    applied = applied_migrations(db)
    rolled_back = [rollback_one(db) for _ in applied]
    assert rolled_back == applied[::-1]
    assert applied_migrations(db) == []
    assert not set(TABLES) & set(db.get_tables())
    assert migrate_to_head(db) == applied
    assert describe(db) == before


def _pw_migrate(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("pw_migrate", path=os.path.dirname(sys.executable)) or shutil.which("pw_migrate")
    assert exe, "pw_migrate (from peewee-migrate) must be installed"
    return subprocess.run([exe, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def _sqlite_schema(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
    finally:
        conn.close()


def test_pw_migrate_from_the_repository_root_builds_the_same_schema(tmp_path):
    by_cli = tmp_path / "cli.db"
    result = _pw_migrate("migrate", "--database", f"sqlite:///{by_cli}", "--directory", "migrations")
    assert result.returncode == 0, result.stderr
    by_package = tmp_path / "package.db"
    open_database(by_package).close()
    assert _sqlite_schema(by_cli) == _sqlite_schema(by_package)

    every = str(len(applied_migrations(open_database(by_package))))
    result = _pw_migrate(
        "rollback", "--count", every, "--database", f"sqlite:///{by_cli}", "--directory", "migrations"
    )
    assert result.returncode == 0, result.stderr
    assert [row[1] for row in _sqlite_schema(by_cli)] == ["migratehistory"]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_pw_migrate_runs_on_postgres_too(backend):
    url, params = backend.new_target()
    schema = params["options"].split("=", 1)[1]
    cli_url = f"{url}?options=-csearch_path%3D{schema}"
    every = str(len(list((REPO_ROOT / "migrations").glob("[0-9][0-9][0-9]_*.py"))))
    for command in (["migrate"], ["rollback", "--count", every], ["migrate"]):
        result = _pw_migrate(*command, "--database", cli_url, "--directory", "migrations")
        assert result.returncode == 0, result.stderr
    db = open_database(url, migrate=False, **params)
    try:
        assert applied_migrations(db)[-1] == code_schema_version()
        assert len(applied_migrations(db)) == int(every)
    finally:
        db.close_all()
