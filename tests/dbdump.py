"""A full dump of the package's tables, to prove a failed call changed nothing."""

from __future__ import annotations

from stream_state import MODELS


def dump_tables() -> dict[str, list[tuple]]:
    dump = {}
    for model in MODELS:
        database = model._meta.database
        table = model._meta.table_name
        if table == "session":
            # The process's session is opened by its first write (even one
            # that is refused) and renewed in the background: not the state
            # a call changes.
            continue
        rows = database.execute_sql(f'SELECT * FROM "{table}"').fetchall()
        dump[table] = sorted(tuple(row) for row in rows)
    return dump
