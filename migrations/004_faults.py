"""Faults a real recorder meets (issue 13): one spelling per path, and segments whose clock lied.

* ``recording.path``: rows written before paths were normalised (a storage
  root configured as ``/media/disk1/`` gave ``/media/disk1//cam-1/x.ts``) get
  their one spelling (``os.path.normpath``, one leading slash). ``check``
  compares files and rows in that spelling; a row whose normalised path is
  already another row's is left as it is and reported by ``check``.
* ``recording.clock_suspect``: NULL for a plausible segment, else why its
  timestamps cannot be believed (``before_registration``, ``before_2000``,
  ``too_long``). The row keeps its evidence; a suspect segment never drives
  the time-range queries' lower bound, and retention orders it by its index.
* ``recording_suspect``: a partial index over the (few) suspect rows.
* ``recording_long`` is rebuilt without suspect rows: one 56-year segment
  (open across a 1970 boot and an NTP step) made every range query of its
  stream scan the whole stream.

Rollback drops the column and restores the old index; normalised paths stay
normalised (they name the same files). Frozen SQL only: never import
``stream_state`` here.
"""

import os

import peewee as pw
from peewee_migrate import Migrator

OLD_RECORDING_LONG = (
    'CREATE INDEX "recording_long" ON "recording" ("stream_id", ("ended_at" - "started_at")) '
    'WHERE (("ended_at" - "started_at") > 120000)'
)
NEW_RECORDING_LONG = (
    'CREATE INDEX "recording_long" ON "recording" ("stream_id", ("ended_at" - "started_at")) '
    'WHERE ((("ended_at" - "started_at") > 120000) AND ("clock_suspect" IS NULL))'
)
# The few suspect segments of a stream, for retention (which judges them by index).
CREATE_SUSPECT_INDEX = (
    'CREATE INDEX "recording_suspect" ON "recording" ("stream_id", "segment_index") '
    'WHERE ("clock_suspect" IS NOT NULL)'
)
# Spellings normpath changes: "//", "/./", "/../", a trailing "/." or "/.." (LIKE
# patterns as parameters: psycopg2 would read a literal "%" as a placeholder).
ODD_PATTERNS = ("%//%", "%/./%", "%/../%", "%/.", "%/..")


def _normal(path: str) -> str:
    normal = os.path.normpath(path)
    return "/" + normal.lstrip("/") if normal.startswith("//") else normal


def _normalise_paths(database: pw.Database) -> None:
    param = database.param
    where = " OR ".join(f'"path" LIKE {param}' for _ in ODD_PATTERNS)
    query = f'SELECT "id", "path" FROM "recording" WHERE {where} ORDER BY "id"'  # oldest row wins a clash
    rows = database.execute_sql(query, ODD_PATTERNS).fetchall()
    for rec_id, path in rows:
        normal = _normal(path)
        if normal == path:
            continue
        taken = database.execute_sql(
            f'SELECT 1 FROM "recording" WHERE "path" = {param}', (normal,)
        ).fetchone()
        if taken is None:
            database.execute_sql(
                f'UPDATE "recording" SET "path" = {param} WHERE "id" = {param}', (normal, rec_id)
            )


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.add_fields("recording", clock_suspect=pw.TextField(null=True))
    migrator.sql('DROP INDEX IF EXISTS "recording_long"')
    migrator.sql(NEW_RECORDING_LONG)
    migrator.sql(CREATE_SUSPECT_INDEX)
    migrator.run(_normalise_paths, database)


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.sql('DROP INDEX IF EXISTS "recording_suspect"')
    migrator.sql('DROP INDEX IF EXISTS "recording_long"')
    migrator.remove_fields("recording", "clock_suspect")
    migrator.sql(OLD_RECORDING_LONG)
