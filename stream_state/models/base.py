"""The base model every table derives from, bound late to a database (``backends.database_proxy``)."""

from __future__ import annotations

import peewee as pw

# Re-exported: the models and the services built on them have always found these here.
from ..backends import check_database_file, current_database, database_proxy, dialect, locked

__all__ = [
    "BaseModel",
    "WithoutRowidOnSqlite",
    "check_database_file",
    "current_database",
    "database_proxy",
    "locked",
]


class BaseModel(pw.Model):
    # Set on every instance by peewee (the fields changed since the last save); not in its types.
    _dirty: set[str]

    class Meta:
        database = database_proxy
        legacy_table_names = False


class WithoutRowidOnSqlite(pw.Metadata):
    """``WITHOUT ROWID`` where the backend has it (SQLite), nothing elsewhere.

    The one way a model asks for a WITHOUT ROWID table (``model_metadata_class
    = WithoutRowidOnSqlite`` in its ``Meta``): the database the model is bound
    to decides (``Dialect.without_rowid``), so ``create_tables`` on either
    backend builds what the migrations build.
    """

    @property
    def without_rowid(self) -> bool:
        return dialect(self.database).without_rowid

    @without_rowid.setter
    def without_rowid(self, value: bool) -> None:
        pass  # decided by the backend, see above
