"""History queries: time-range indexes, a storage-usage summary, metric rollups.

* ``recording (stream_id, started_at, ended_at, state)`` replaces the index on
  ``(stream_id, started_at)``: same prefix, so it serves every query the old
  one did, and a time-range or gap query over a stream now reads its rows from
  the index alone instead of one table page per segment (24 hours of 10-second
  segments: about 6 ms instead of 60).
* ``recording_long``: a partial index on (stream, ended_at - started_at) over
  the segments longer than two minutes. Time-range queries bound the start of
  a segment (``started_at >= since - longest``); the longest segment of a
  stream is the index's last entry for it, or two minutes when the stream has
  none that long. The database keeps it exact whatever writes the rows
  (complete_segment, restore, check, an import), and the usual short segments
  cost nothing, because they are not in it.
* ``recording_usage``: segments, bytes and recorded milliseconds per (stream,
  UTC day, storage, state), kept exact by triggers on ``recording`` (so also
  for rows written by restore, check or hand-written SQL) and filled from the
  existing rows here. "Which stream eats the disk" then reads a few thousand
  summary rows instead of ten million segments.
* ``metric_rollup``: per-minute and per-hour count, sum, min, max and last
  value of each metric series, keyed (series, width, bucket start), so a week
  of a 1-second metric is read as 168 rows instead of 604,800.
* ``metric_rollup_stale``: (series, hour) whose rollups must be recomputed
  because raw samples older than the rollup watermark were written late;
  the watermark itself is the ``metric_rollups`` row of ``system_state``.

Frozen copies and literal SQL only: never import ``stream_state`` here.
"""

import peewee as pw
from peewee_migrate import Migrator

DAY_MS = 86_400_000

# Spelled out rather than built from a model so that the text never changes
# with peewee: SQLite stores it verbatim and the live models render the same.
CREATE_RECORDING_TIME = (
    'CREATE INDEX "recording_stream_id_started_at_ended_at_state" '
    'ON "recording" ("stream_id", "started_at", "ended_at", "state")'
)
CREATE_RECORDING_LONG = (
    'CREATE INDEX "recording_long" ON "recording" ("stream_id", ("ended_at" - "started_at")) '
    'WHERE (("ended_at" - "started_at") > 120000)'
)
FILL_USAGE = (
    'INSERT INTO "recording_usage" ("stream_id", "day_start", "storage", "state", "segments", '
    '"size_bytes", "duration_ms") '
    f'SELECT "stream_id", "started_at" / {DAY_MS} * {DAY_MS}, COALESCE("storage", \'\'), "state", '
    'COUNT(*), SUM("size_bytes"), SUM(COALESCE("ended_at" - "started_at", 0)) '
    'FROM "recording" GROUP BY 1, 2, 3, 4'
)


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


def sqlite_triggers() -> list[str]:
    return [
        f'CREATE TRIGGER "recording_usage_insert" AFTER INSERT ON "recording" BEGIN {_add("NEW")}; END',
        f'CREATE TRIGGER "recording_usage_delete" AFTER DELETE ON "recording" BEGIN '
        f"{'; '.join(_remove('OLD'))}; END",
        f'CREATE TRIGGER "recording_usage_adjust" AFTER UPDATE OF {_TRACKED} ON "recording" '
        f"WHEN {_same_key()} BEGIN {_adjust()}; END",
        f'CREATE TRIGGER "recording_usage_move" AFTER UPDATE OF {_TRACKED} ON "recording" '
        f"WHEN NOT ({_same_key()}) BEGIN {'; '.join(_remove('OLD'))}; {_add('NEW')}; END",
    ]


def postgres_function() -> str:
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


POSTGRES_TRIGGER = (
    f'CREATE TRIGGER "recording_usage_track" AFTER INSERT OR DELETE OR UPDATE OF {_TRACKED} '
    'ON "recording" FOR EACH ROW EXECUTE FUNCTION "recording_usage_track"()'
)


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    postgres = isinstance(database, pw.PostgresqlDatabase)
    migrator.sql('DROP INDEX IF EXISTS "recording_stream_id_started_at"')
    migrator.sql(CREATE_RECORDING_TIME)
    migrator.sql(CREATE_RECORDING_LONG)

    class Stream(pw.Model):
        id = pw.AutoField()

        class Meta:
            table_name = "stream"
            legacy_table_names = False

    class MetricSeries(pw.Model):
        id = pw.AutoField()

        class Meta:
            table_name = "metric_series"
            legacy_table_names = False

    @migrator.create_model
    class RecordingUsage(pw.Model):
        stream = pw.ForeignKeyField(Stream, on_delete="CASCADE", index=False)
        day_start = pw.BigIntegerField()
        storage = pw.TextField()
        state = pw.TextField()
        segments = pw.BigIntegerField()
        size_bytes = pw.BigIntegerField()
        duration_ms = pw.BigIntegerField()

        class Meta:
            table_name = "recording_usage"
            legacy_table_names = False
            primary_key = pw.CompositeKey("stream", "day_start", "storage", "state")

    migrator.sql(FILL_USAGE)
    if postgres:
        migrator.sql(postgres_function())
        migrator.sql(POSTGRES_TRIGGER)
    else:
        for trigger in sqlite_triggers():
            migrator.sql(trigger)

    @migrator.create_model
    class MetricRollup(pw.Model):
        series = pw.ForeignKeyField(MetricSeries, on_delete="CASCADE", index=False)
        width_ms = pw.IntegerField()
        bucket_start = pw.BigIntegerField()
        sample_count = pw.BigIntegerField()
        value_sum = pw.DoubleField()
        value_min = pw.DoubleField()
        value_max = pw.DoubleField()
        value_last = pw.DoubleField()

        class Meta:
            table_name = "metric_rollup"
            legacy_table_names = False
            primary_key = pw.CompositeKey("series", "width_ms", "bucket_start")
            # Up to 10,080 minute rows per series and week: the key is the row.
            without_rowid = not postgres

    @migrator.create_model
    class MetricRollupStale(pw.Model):
        series = pw.ForeignKeyField(MetricSeries, on_delete="CASCADE", index=False)
        hour_start = pw.BigIntegerField()

        class Meta:
            table_name = "metric_rollup_stale"
            legacy_table_names = False
            primary_key = pw.CompositeKey("series", "hour_start")

    # The rollup watermark's row exists from the start, so that writers can
    # always lock it (FOR SHARE) against a concurrent refresh, even the first.
    now_ms = (
        "(EXTRACT(EPOCH FROM now()) * 1000)::bigint"
        if postgres
        else "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    )
    migrator.sql(
        'INSERT INTO "system_state" ("key", "value", "updated_at") '
        f"VALUES ('metric_rollups', '{{\"until\": null}}', {now_ms})"
    )


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    postgres = isinstance(database, pw.PostgresqlDatabase)
    migrator.remove_model("metric_rollup_stale")
    migrator.remove_model("metric_rollup")
    # The rollups are gone, so is the watermark that said how far they reach.
    migrator.sql('DELETE FROM "system_state" WHERE "key" = \'metric_rollups\'')
    if postgres:
        migrator.sql('DROP TRIGGER IF EXISTS "recording_usage_track" ON "recording"')
        migrator.sql('DROP FUNCTION IF EXISTS "recording_usage_track"()')
    else:
        for name in ("insert", "delete", "adjust", "move"):
            migrator.sql(f'DROP TRIGGER IF EXISTS "recording_usage_{name}"')
    migrator.remove_model("recording_usage")
    migrator.sql('DROP INDEX IF EXISTS "recording_long"')
    migrator.sql('DROP INDEX IF EXISTS "recording_stream_id_started_at_ended_at_state"')
    migrator.sql('CREATE INDEX "recording_stream_id_started_at" ON "recording" ("stream_id", "started_at")')
