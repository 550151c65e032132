"""The base model every table derives from, bound late to a database."""

from __future__ import annotations

from typing import Any

import peewee as pw

from ..errors import DatabaseUnavailable

# Models are declared once and bound at run time by ``open_database``, so the
# same classes serve SQLite and PostgreSQL and importing the package opens
# nothing.
database_proxy = pw.DatabaseProxy()


def current_database() -> pw.Database:
    """The database ``open_database`` bound the models to; ``DatabaseUnavailable`` if none is."""
    if database_proxy.obj is None:
        raise DatabaseUnavailable("no database is open; call stream_state.open_database() first")
    return database_proxy.obj


class BaseModel(pw.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class WithoutRowidOnSqlite(pw.Metadata):
    """``WITHOUT ROWID`` on SQLite, nothing on PostgreSQL (which has no such clause).

    The one way a model asks for a WITHOUT ROWID table (``model_metadata_class
    = WithoutRowidOnSqlite`` in its ``Meta``): the database the model is bound
    to decides, so ``create_tables`` on either backend builds what the
    migrations build.
    """

    @property
    def without_rowid(self) -> bool:
        database = self.database
        database = getattr(database, "obj", database)  # through the DatabaseProxy
        return isinstance(database, pw.SqliteDatabase)

    @without_rowid.setter
    def without_rowid(self, value: bool) -> None:
        pass  # decided by the backend, see above


def locked(query: pw.ModelSelect) -> pw.ModelSelect:
    """``SELECT ... FOR UPDATE`` where the backend has it.

    PostgreSQL needs the row lock for read-then-write transactions; SQLite has
    no FOR UPDATE and needs none, because its transactions begin IMMEDIATE
    and so already hold the database's write lock.
    """
    return query.for_update() if query.model._meta.database.for_update else query


def check_database_file(db: Any) -> None:
    """Raise ``DatabaseUnavailable`` if ``db``'s SQLite file vanished or was replaced.

    Every database this package opens can tell; a plain peewee database bound
    by hand cannot, and is let through.
    """
    verify_file = getattr(db, "verify_file", None)
    if verify_file is not None:
        verify_file()
