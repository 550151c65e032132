"""The base model every table derives from, bound late to a database."""

from __future__ import annotations

from typing import Any

import peewee as pw

# Models are declared once and bound at run time by ``open_database``, so the
# same classes serve SQLite and PostgreSQL and importing the package opens
# nothing.
database_proxy = pw.DatabaseProxy()


class BaseModel(pw.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


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
