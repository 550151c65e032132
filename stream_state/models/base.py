"""The base model every table derives from, bound late to a database."""

from __future__ import annotations

import peewee as pw

# Models are declared once and bound at run time by ``open_database``, so the
# same classes serve SQLite and PostgreSQL and importing the package opens
# nothing.
database_proxy = pw.DatabaseProxy()


class BaseModel(pw.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False
