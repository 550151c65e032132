"""Segment runs: each stream-hour's closed segments merged into runs, for pictures of long ranges.

``segment_runs`` holds one row per (stream, hour) that has or had closed
segments, the hour being ``started_at / 3600000`` as the database divides
it (whole hours since the epoch). ``runs`` is what
``stream_state.segment_runs.summarize_runs`` (Maintenance's ``runs`` job)
computed from the hour's closed segments: per segment state, the segments
merged where they touch or overlap, as JSON. NULL means "not summarized
yet, or changed since": readers then read that hour's segments themselves.

Triggers keep it honest, whatever writes ``recording`` (the package, another
process, a hand-written statement): any insert, delete or update of a
closed segment's stream, start, end or state marks its hour (old and new)
stale, in the same transaction, by setting ``runs`` to NULL and adding one
to ``version``. Open segments (ended_at NULL) are not summarized, so a
checkpoint never touches the table. ``summarize_runs`` stores an hour's runs
only where ``version`` is still the one it read with the segments: a writer
that changed the hour meanwhile (another connection on PostgreSQL) has
bumped it, and the hour stays stale until the next pass.

SQLite: three row triggers with WHEN clauses (a checkpoint's UPDATE names no
tracked column, so SQLite does not even look at them). PostgreSQL: three
FOR EACH STATEMENT triggers over transition tables (a tick's batched
completions are one statement), marking the hours in key order so that two
writers queue instead of deadlocking.

The migration marks every hour of the existing closed segments stale (one
pass over the (stream, started_at, ...) index); summarizing them is left to
the first ``runs`` job, in short transactions, rather than done under the
upgrade's lock. Rolling back drops the table and its triggers: nothing but
this summary is in them.

Frozen SQL only: never import ``stream_state`` here.
"""

import peewee as pw
from peewee_migrate import Migrator

HOUR_MS = 3_600_000
_TRACKED = '"stream_id", "started_at", "ended_at", "state"'


def _mark(row: str) -> str:
    """SQLite: mark the hour of recording row ``row`` (NEW or OLD) stale."""
    return (
        'INSERT INTO "segment_runs" ("stream_id", "hour", "version", "runs") '
        f'VALUES ({row}."stream_id", {row}."started_at" / {HOUR_MS}, 1, NULL) '
        'ON CONFLICT ("stream_id", "hour") DO UPDATE SET '
        '"version" = "segment_runs"."version" + 1, "runs" = NULL'
    )


def sqlite_triggers() -> list[str]:
    return [
        'CREATE TRIGGER "segment_runs_insert" AFTER INSERT ON "recording" '
        f'WHEN NEW."ended_at" IS NOT NULL BEGIN {_mark("NEW")}; END',
        'CREATE TRIGGER "segment_runs_delete" AFTER DELETE ON "recording" '
        f'WHEN OLD."ended_at" IS NOT NULL BEGIN {_mark("OLD")}; END',
        f'CREATE TRIGGER "segment_runs_update" AFTER UPDATE OF {_TRACKED} ON "recording" '
        'WHEN OLD."ended_at" IS NOT NULL OR NEW."ended_at" IS NOT NULL '
        f"BEGIN {_mark('OLD')}; {_mark('NEW')}; END",
    ]


def _hours(table: str) -> str:
    """PostgreSQL: the (stream, hour) of a transition table's closed rows."""
    return (
        f'SELECT "stream_id", "started_at" / {HOUR_MS} AS "hour" FROM "{table}" WHERE "ended_at" IS NOT NULL'
    )


def _changed_hours() -> str:
    """PostgreSQL, UPDATE: old and new hours of the closed rows whose tracked columns changed.

    A metadata-only update (archived, clock_suspect, a session column) leaves
    the runs as they were, and so does a checkpoint of an open segment.
    """
    changed = (
        'FROM "runs_old" AS "o" JOIN "runs_new" AS "n" ON "n"."id" = "o"."id" '
        'WHERE ("o"."ended_at" IS NOT NULL OR "n"."ended_at" IS NOT NULL) '
        'AND ("o"."stream_id", "o"."started_at", "o"."ended_at", "o"."state") '
        'IS DISTINCT FROM ("n"."stream_id", "n"."started_at", "n"."ended_at", "n"."state")'
    )
    return (
        f'SELECT "o"."stream_id", "o"."started_at" / {HOUR_MS} AS "hour" {changed} '
        f'UNION SELECT "n"."stream_id", "n"."started_at" / {HOUR_MS} {changed}'
    )


def _mark_all(source: str) -> str:
    return (
        'INSERT INTO "segment_runs" ("stream_id", "hour", "version", "runs") '
        f'SELECT DISTINCT "stream_id", "hour", 1, NULL::text FROM ({source}) AS "h" '
        'ORDER BY "stream_id", "hour" '
        'ON CONFLICT ("stream_id", "hour") DO UPDATE SET '
        '"version" = "segment_runs"."version" + 1, "runs" = NULL'
    )


def postgres_function() -> str:
    # No "%" anywhere: the driver would read it as a parameter marker.
    return (
        'CREATE FUNCTION "segment_runs_mark"() RETURNS trigger LANGUAGE plpgsql AS $fn$ '
        "BEGIN "
        f"IF TG_OP = 'INSERT' THEN {_mark_all(_hours('runs_new'))}; "
        f"ELSIF TG_OP = 'DELETE' THEN {_mark_all(_hours('runs_old'))}; "
        f"ELSE {_mark_all(_changed_hours())}; "
        "END IF; "
        "RETURN NULL; "
        "END $fn$"
    )


POSTGRES_TRIGGERS = [
    'CREATE TRIGGER "segment_runs_insert" AFTER INSERT ON "recording" '
    'REFERENCING NEW TABLE AS "runs_new" FOR EACH STATEMENT EXECUTE FUNCTION "segment_runs_mark"()',
    'CREATE TRIGGER "segment_runs_delete" AFTER DELETE ON "recording" '
    'REFERENCING OLD TABLE AS "runs_old" FOR EACH STATEMENT EXECUTE FUNCTION "segment_runs_mark"()',
    'CREATE TRIGGER "segment_runs_update" AFTER UPDATE ON "recording" '
    'REFERENCING OLD TABLE AS "runs_old" NEW TABLE AS "runs_new" '
    'FOR EACH STATEMENT EXECUTE FUNCTION "segment_runs_mark"()',
]

# Every hour of the closed segments already there, stale.
MARK_EXISTING = (
    'INSERT INTO "segment_runs" ("stream_id", "hour", "version", "runs") '
    f'SELECT DISTINCT "stream_id", "started_at" / {HOUR_MS}, 1, NULL FROM "recording" '
    'WHERE "ended_at" IS NOT NULL'
)


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    postgres = isinstance(database, pw.PostgresqlDatabase)

    class Stream(pw.Model):
        id = pw.AutoField()

        class Meta:
            table_name = "stream"
            legacy_table_names = False

    @migrator.create_model
    class SegmentRuns(pw.Model):
        stream = pw.ForeignKeyField(Stream, on_delete="CASCADE", index=False)
        hour = pw.BigIntegerField()
        version = pw.BigIntegerField()
        runs = pw.TextField(null=True)

        class Meta:
            table_name = "segment_runs"
            legacy_table_names = False
            primary_key = pw.CompositeKey("stream", "hour")
            without_rowid = not postgres

    # What summarize_runs looks for: the stale hours, oldest first.
    migrator.sql('CREATE INDEX "segment_runs_stale" ON "segment_runs" ("hour") WHERE ("runs" IS NULL)')
    migrator.sql(MARK_EXISTING)
    if postgres:
        migrator.sql(postgres_function())
        for trigger in POSTGRES_TRIGGERS:
            migrator.sql(trigger)
    else:
        for trigger in sqlite_triggers():
            migrator.sql(trigger)


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    if isinstance(database, pw.PostgresqlDatabase):
        for name in ("insert", "delete", "update"):
            migrator.sql(f'DROP TRIGGER IF EXISTS "segment_runs_{name}" ON "recording"')
        migrator.sql('DROP FUNCTION IF EXISTS "segment_runs_mark"()')
    else:
        for name in ("insert", "delete", "update"):
            migrator.sql(f'DROP TRIGGER IF EXISTS "segment_runs_{name}"')
    migrator.remove_model("segment_runs")
