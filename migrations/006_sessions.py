"""Sessions, leases and fencing: several manager processes on one database.

* ``session``: one row per manager process (node, host, pid and process start
  time, lease times from the database's clock, how it ended). Ids only grow,
  so an id names one process for good.
* ``stream.owner_session_id`` / ``stream.owner_epoch``: the session that owns
  the stream and the fencing epoch, bumped at every change of owner. Every
  manager write on the stream is gated on the pair.
* ``recording.session_id`` / ``recording.session_epoch``: who began the
  segment, at which epoch (restore repairs only dead sessions' segments; the
  audit checks that every segment was begun by the owner of the moment).
* ``recording.busy_session_id``: the session in the middle of a multi-step
  change of the row (``deleting``, ``archiving``), so a repair leaves a live
  one alone.

Plain integer columns, no foreign keys: history outlives session rows, and a
foreign key would add a lookup to every gated write. ALTER TABLE ADD COLUMN
with literal SQL (not the migrator's column helpers): on SQLite those
rebuild the table for a NOT NULL column, which would drop the recording
triggers of 003.

Frozen copies and literal SQL only: never import ``stream_state`` here.
"""

import peewee as pw
from peewee_migrate import Migrator

# {big}: what peewee's BigIntegerField is on the backend (INTEGER on SQLite).
ADD_COLUMNS = (
    'ALTER TABLE "stream" ADD COLUMN "owner_session_id" {big}',
    'ALTER TABLE "stream" ADD COLUMN "owner_epoch" {big} NOT NULL DEFAULT 0',
    'ALTER TABLE "recording" ADD COLUMN "session_id" {big}',
    'ALTER TABLE "recording" ADD COLUMN "session_epoch" {big}',
    'ALTER TABLE "recording" ADD COLUMN "busy_session_id" {big}',
)
CREATE_INDEXES = (
    'CREATE INDEX "stream_owner_session_id" ON "stream" ("owner_session_id")',
    'CREATE INDEX "session_expires_at" ON "session" ("expires_at")',
)


class GrowingIdField(pw.BigAutoField):
    """Frozen copy of stream_state.fields.GrowingIdField: AUTOINCREMENT on SQLite."""

    def ddl(self, ctx):
        node = super().ddl(ctx)
        if isinstance(self.model._meta.database, pw.SqliteDatabase):
            return pw.NodeList((node, pw.SQL("AUTOINCREMENT")))
        return node


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    @migrator.create_model
    class Session(pw.Model):
        # Never handed out twice, even after the newest row is deleted: a
        # reused id would revive a dead owner.
        id = GrowingIdField()
        node = pw.TextField()
        host = pw.TextField()
        pid = pw.IntegerField()
        process_start = pw.TextField(null=True)
        label = pw.TextField(null=True)
        ttl_ms = pw.BigIntegerField()
        claims = pw.BooleanField(default=False)
        started_at = pw.BigIntegerField()
        renewed_at = pw.BigIntegerField()
        expires_at = pw.BigIntegerField()
        closed_at = pw.BigIntegerField(null=True)
        clean = pw.BooleanField(null=True)
        ended = pw.TextField(null=True)

        class Meta:
            table_name = "session"
            legacy_table_names = False

    big = "INTEGER" if isinstance(database, pw.SqliteDatabase) else "BIGINT"
    for sql in ADD_COLUMNS:
        migrator.sql(sql.format(big=big))
    for sql in CREATE_INDEXES:
        migrator.sql(sql)


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.sql('DROP INDEX IF EXISTS "stream_owner_session_id"')
    for sql in reversed(ADD_COLUMNS):
        table, column = sql.split('"')[1], sql.split('"')[3]
        migrator.sql(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
    migrator.remove_model("session")
