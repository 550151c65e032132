"""The ``stream-state`` command line: thin wrappers over library functions."""

from __future__ import annotations

import sys

import click

from . import __version__
from .database import (
    code_schema_version,
    connect_database,
    migrate_to_head,
    open_database,
    pending_migrations,
    schema_version,
)
from .errors import StreamStateError


@click.group()
@click.version_option(__version__, prog_name="stream-state")
@click.option(
    "--db",
    "url",
    envvar="STREAM_STATE_DATABASE_URL",
    default=None,
    help="Database URL (sqlite:///file.db or postgresql://host/db); default ./stream_state.db.",
)
@click.pass_context
def cli(ctx: click.Context, url: str | None) -> None:
    """Inspect and maintain a stream_state database."""
    ctx.obj = {"url": url}


@cli.command()
@click.option("--status", is_flag=True, help="Only show the schema version and pending migrations.")
@click.pass_context
def migrate(ctx: click.Context, status: bool) -> None:
    """Bring the schema to this version of stream_state (SQLite is backed up first)."""
    db = connect_database(ctx.obj["url"]) if status else open_database(ctx.obj["url"])
    try:
        pending = pending_migrations(db)
        click.echo(f"schema:   {schema_version(db) or '(empty)'}")
        click.echo(f"code:     {code_schema_version()}")
        click.echo(f"pending:  {', '.join(pending) if pending else 'none'}")
    finally:
        db.close()


def main() -> None:
    """Entry point of the console script: errors as one line, distinct exit codes."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except StreamStateError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


__all__ = ["cli", "main", "migrate_to_head"]
