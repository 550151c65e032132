"""PostgreSQL: the storage-usage summary kept by statement-level triggers.

Migration 003 keeps ``recording_usage`` exact on PostgreSQL with a FOR EACH
ROW plpgsql trigger: one function call, and one or two statements, per
changed segment. A manager's tick writes its thousand checkpoints in one
UPDATE, and the trigger was about half of that statement's time (EXPLAIN
ANALYZE: ~100-115 ms of ~200-240 ms at 1,000 rows).

Here it becomes three FOR EACH STATEMENT triggers (one per event: PostgreSQL
refuses transition tables on a trigger with several events or a column
list) that read the statement's old and new rows as transition tables, sum
the deltas per usage key (stream, UTC day, storage, state) and apply them in
one INSERT ... ON CONFLICT DO UPDATE, then delete the keys whose segment
count reached 0, which only a DELETE or a key-moving UPDATE can cause. The
summary ends exactly as the row trigger left it: per key, the sum of the
same +1 / -1, sizes and durations, and the same rule that a key with no
segment left has no row. A key whose deltas cancel (an UPDATE touching no
tracked column, a checkpoint repeating its size) is not written at all, as
the row trigger (``UPDATE OF`` the tracked columns) wrote nothing for it.

SQLite keeps 003's row triggers: a row trigger costs little there, and
SQLite has no transition tables. Rolling back restores 003's function and
trigger text exactly (copied below: migrations are frozen).

Frozen SQL only: never import ``stream_state`` here.
"""

import peewee as pw
from peewee_migrate import Migrator

DAY_MS = 86_400_000

_KEY_COLUMNS = '"stream_id", "day_start", "storage", "state"'
_USAGE_COLUMNS = f'{_KEY_COLUMNS}, "segments", "size_bytes", "duration_ms"'


def _deltas(table: str, sign: str) -> str:
    """Each row of a transition table as its usage key and its signed contribution."""
    return (
        f'SELECT "stream_id", "started_at" / {DAY_MS} * {DAY_MS} AS "day_start", '
        'COALESCE("storage", \'\') AS "storage", "state", '
        f'{sign}1 AS "segments", {sign}"size_bytes" AS "size_bytes", '
        f'{sign}COALESCE("ended_at" - "started_at", 0) AS "duration_ms" FROM "{table}"'
    )


def _apply(source: str) -> str:
    """Sum the deltas per key and add them in one statement; keys that sum to nothing are left alone.

    ORDER BY: concurrent statements lock summary rows in one order, so they queue
    instead of deadlocking.
    """
    return (
        f'INSERT INTO "recording_usage" ({_USAGE_COLUMNS}) '
        f'SELECT {_KEY_COLUMNS}, SUM("segments"), SUM("size_bytes"), SUM("duration_ms") '
        f'FROM ({source}) AS "d" GROUP BY {_KEY_COLUMNS} '
        'HAVING SUM("segments") <> 0 OR SUM("size_bytes") <> 0 OR SUM("duration_ms") <> 0 '
        f"ORDER BY {_KEY_COLUMNS} "
        f"ON CONFLICT ({_KEY_COLUMNS}) DO UPDATE SET "
        '"segments" = "recording_usage"."segments" + excluded."segments", '
        '"size_bytes" = "recording_usage"."size_bytes" + excluded."size_bytes", '
        '"duration_ms" = "recording_usage"."duration_ms" + excluded."duration_ms"'
    )


def _apply_and_drop_empty(source: str) -> str:
    """_apply, then delete the keys it brought to 0 segments (found from its RETURNING)."""
    return (
        f'WITH "up" AS ({_apply(source)} RETURNING {_KEY_COLUMNS}, "segments") '
        'SELECT array_agg("stream_id"), array_agg("day_start"), array_agg("storage"), array_agg("state") '
        'INTO gone_stream, gone_day, gone_storage, gone_state FROM "up" WHERE "segments" = 0; '
        "IF gone_stream IS NOT NULL THEN "
        'DELETE FROM "recording_usage" AS "u" '
        'USING unnest(gone_stream, gone_day, gone_storage, gone_state) AS "g"("s", "d", "v", "t") '
        'WHERE "u"."stream_id" = "g"."s" AND "u"."day_start" = "g"."d" AND "u"."storage" = "g"."v" '
        'AND "u"."state" = "g"."t" AND "u"."segments" = 0; '
        "END IF"
    )


def postgres_function() -> str:
    # No "%" anywhere: the driver would read it as a parameter marker.
    return (
        'CREATE FUNCTION "recording_usage_apply"() RETURNS trigger LANGUAGE plpgsql AS $fn$ '
        "DECLARE gone_stream bigint[]; gone_day bigint[]; gone_storage text[]; gone_state text[]; "
        "BEGIN "
        f"IF TG_OP = 'INSERT' THEN {_apply(_deltas('usage_new', ''))}; "
        f"ELSIF TG_OP = 'DELETE' THEN {_apply_and_drop_empty(_deltas('usage_old', '-'))}; "
        "ELSE "
        f"{_apply_and_drop_empty(_deltas('usage_new', '') + ' UNION ALL ' + _deltas('usage_old', '-'))}; "
        "END IF; "
        "RETURN NULL; "
        "END $fn$"
    )


POSTGRES_TRIGGERS = [
    'CREATE TRIGGER "recording_usage_insert" AFTER INSERT ON "recording" '
    'REFERENCING NEW TABLE AS "usage_new" FOR EACH STATEMENT EXECUTE FUNCTION "recording_usage_apply"()',
    'CREATE TRIGGER "recording_usage_delete" AFTER DELETE ON "recording" '
    'REFERENCING OLD TABLE AS "usage_old" FOR EACH STATEMENT EXECUTE FUNCTION "recording_usage_apply"()',
    'CREATE TRIGGER "recording_usage_update" AFTER UPDATE ON "recording" '
    'REFERENCING OLD TABLE AS "usage_old" NEW TABLE AS "usage_new" '
    'FOR EACH STATEMENT EXECUTE FUNCTION "recording_usage_apply"()',
]


# --- migration 003's row trigger, copied verbatim for the rollback --------------------------------


def _key(row: str) -> str:
    """The usage key of a recording row (NEW or OLD), as SQL."""
    return (
        f'"stream_id" = {row}."stream_id" AND "day_start" = {row}."started_at" / {DAY_MS} * {DAY_MS} '
        f'AND "storage" = COALESCE({row}."storage", \'\') AND "state" = {row}."state"'
    )


def _same_key() -> str:
    return (
        f'OLD."stream_id" = NEW."stream_id" AND OLD."started_at" / {DAY_MS} = NEW."started_at" / {DAY_MS} '
        'AND COALESCE(OLD."storage", \'\') = COALESCE(NEW."storage", \'\') AND OLD."state" = NEW."state"'
    )


def _add(row: str) -> str:
    return (
        'INSERT INTO "recording_usage" ("stream_id", "day_start", "storage", "state", "segments", '
        '"size_bytes", "duration_ms") '
        f'VALUES ({row}."stream_id", {row}."started_at" / {DAY_MS} * {DAY_MS}, '
        f'COALESCE({row}."storage", \'\'), {row}."state", 1, {row}."size_bytes", '
        f'COALESCE({row}."ended_at" - {row}."started_at", 0)) '
        'ON CONFLICT ("stream_id", "day_start", "storage", "state") DO UPDATE SET '
        '"segments" = "recording_usage"."segments" + 1, '
        '"size_bytes" = "recording_usage"."size_bytes" + excluded."size_bytes", '
        '"duration_ms" = "recording_usage"."duration_ms" + excluded."duration_ms"'
    )


def _remove(row: str) -> list[str]:
    return [
        'UPDATE "recording_usage" SET "segments" = "segments" - 1, '
        f'"size_bytes" = "size_bytes" - {row}."size_bytes", '
        f'"duration_ms" = "duration_ms" - COALESCE({row}."ended_at" - {row}."started_at", 0) '
        f"WHERE {_key(row)}",
        f'DELETE FROM "recording_usage" WHERE {_key(row)} AND "segments" = 0',
    ]


def _adjust() -> str:
    """Same key (a checkpoint, a size or end time corrected): one UPDATE of the deltas."""
    return (
        'UPDATE "recording_usage" SET "size_bytes" = "size_bytes" + NEW."size_bytes" - OLD."size_bytes", '
        '"duration_ms" = "duration_ms" + COALESCE(NEW."ended_at" - NEW."started_at", 0) '
        '- COALESCE(OLD."ended_at" - OLD."started_at", 0) '
        f"WHERE {_key('OLD')}"
    )


_TRACKED = '"stream_id", "storage", "started_at", "ended_at", "size_bytes", "state"'


def row_function() -> str:
    # No "%" anywhere: the driver would read it as a parameter marker.
    return (
        'CREATE FUNCTION "recording_usage_track"() RETURNS trigger LANGUAGE plpgsql AS $fn$ '
        "BEGIN "
        f"IF TG_OP = 'UPDATE' AND {_same_key()} THEN {_adjust()}; RETURN NULL; END IF; "
        f"IF TG_OP IN ('UPDATE', 'DELETE') THEN {'; '.join(_remove('OLD'))}; END IF; "
        f"IF TG_OP IN ('UPDATE', 'INSERT') THEN {_add('NEW')}; END IF; "
        "RETURN NULL; "
        "END $fn$"
    )


ROW_TRIGGER = (
    f'CREATE TRIGGER "recording_usage_track" AFTER INSERT OR DELETE OR UPDATE OF {_TRACKED} '
    'ON "recording" FOR EACH ROW EXECUTE FUNCTION "recording_usage_track"()'
)


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    if not isinstance(database, pw.PostgresqlDatabase):
        return
    migrator.sql('DROP TRIGGER IF EXISTS "recording_usage_track" ON "recording"')
    migrator.sql('DROP FUNCTION IF EXISTS "recording_usage_track"()')
    migrator.sql(postgres_function())
    for trigger in POSTGRES_TRIGGERS:
        migrator.sql(trigger)


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    if not isinstance(database, pw.PostgresqlDatabase):
        return
    for name in ("insert", "delete", "update"):
        migrator.sql(f'DROP TRIGGER IF EXISTS "recording_usage_{name}" ON "recording"')
    migrator.sql('DROP FUNCTION IF EXISTS "recording_usage_apply"()')
    migrator.sql(row_function())
    migrator.sql(ROW_TRIGGER)
