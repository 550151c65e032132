"""Metric capacity: a counter of deleted series for the writers' id cache, and metric blocks.

``record_many`` keeps the ids of the series it has written to (per database),
so that a manager's tick does not look up its thousand series by their key
text every second. A cached id goes wrong only when its series is deleted:
SQLite hands the largest id out again after that row is deleted, so a stale
cache could file samples under another series. A trigger counts every
deletion from ``metric_series``, whoever runs it (a purge, a hand-written
DELETE, another process), in the ``metric_series_deleted`` row of
``system_state``; writers read that one row in their transaction and drop
their cache when it moved.

``metric_block``: one row per (series, hour) of compacted samples (count,
first and last time, sum, min, max, last value, and the samples encoded by
``stream_state.codec``; BLOB on SQLite, bytea on PostgreSQL), WITHOUT ROWID
on SQLite. Existing raw samples are not encoded here: the first
``compact_samples`` (Maintenance's hourly ``compact`` job) moves them, in
short transactions, rather than holding the upgrade's lock while millions
of samples are encoded. Rolling back turns every block back into raw
samples first, so nothing is lost either way.

Frozen models and SQL only: never import ``stream_state`` here (the rollback
decodes blocks with its own frozen copy of the block format's decoder).
"""

import itertools
import struct
import zlib
from array import array

import peewee as pw
from peewee_migrate import Migrator

KEY = "metric_series_deleted"

SQLITE_TRIGGER = (
    'CREATE TRIGGER "metric_series_deleted" AFTER DELETE ON "metric_series" BEGIN '
    f'UPDATE "system_state" SET "value" = CAST("value" AS INTEGER) + 1 WHERE "key" = \'{KEY}\'; END'
)
POSTGRES_FUNCTION = (
    'CREATE FUNCTION "metric_series_deleted"() RETURNS trigger LANGUAGE plpgsql AS $fn$ '
    "BEGIN "
    'UPDATE "system_state" SET "value" = to_jsonb(("value" #>> \'{}\')::bigint + 1) '
    f"WHERE \"key\" = '{KEY}'; "
    "RETURN NULL; "
    "END $fn$"
)
POSTGRES_TRIGGER = (
    'CREATE TRIGGER "metric_series_deleted" AFTER DELETE ON "metric_series" '
    'FOR EACH STATEMENT EXECUTE FUNCTION "metric_series_deleted"()'
)


def _decode(block: bytes) -> tuple[list[int], list[float]]:
    """Frozen copy of stream_state.codec.decode, format version 1."""
    header = struct.Struct("<BBBIqBBI")
    _version, mode, decimals, _count, first, time_width, value_width, split = header.unpack_from(block)
    body = zlib.decompress(block[header.size :])
    codes = {1: "B", 2: "H", 4: "I", 8: "Q"}

    def unpack(data: bytes, width: int) -> list[int]:
        if width > 1:
            out = bytearray(len(data))
            n = len(data) // width
            for j in range(width):
                out[j::width] = data[j * n : (j + 1) * n]
            data = bytes(out)
        return [(z >> 1) ^ -(z & 1) for z in array(codes[width], data)]

    stamps = list(itertools.accumulate(itertools.accumulate(unpack(body[:split], time_width)), initial=first))
    if mode == 0:
        factor = 10**decimals
        values = [q / factor for q in itertools.accumulate(unpack(body[split:], value_width))]
    else:
        data = body[split:]
        out = bytearray(len(data))
        m = len(data) // 8
        for j in range(8):
            out[j::8] = data[j * m : (j + 1) * m]
        bits = array("Q", itertools.accumulate(array("Q", bytes(out)), lambda a, b: a ^ b))
        values = array("d", bits.tobytes()).tolist()
    return stamps, values


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    postgres = isinstance(database, pw.PostgresqlDatabase)

    class MetricSeries(pw.Model):
        id = pw.AutoField()

        class Meta:
            table_name = "metric_series"
            legacy_table_names = False

    @migrator.create_model
    class MetricBlock(pw.Model):
        series = pw.ForeignKeyField(MetricSeries, on_delete="CASCADE", index=False)
        hour_start = pw.BigIntegerField()
        sample_count = pw.IntegerField()
        first_ts = pw.BigIntegerField()
        last_ts = pw.BigIntegerField()
        value_sum = pw.DoubleField()
        value_min = pw.DoubleField()
        value_max = pw.DoubleField()
        value_last = pw.DoubleField()
        payload = pw.BlobField()

        class Meta:
            table_name = "metric_block"
            legacy_table_names = False
            primary_key = pw.CompositeKey("series", "hour_start")
            without_rowid = not postgres

    # Decimals a series keeps when compacted; NULL: exact.
    migrator.add_fields("metric_series", resolution=pw.SmallIntegerField(null=True))

    now_ms = (
        "(EXTRACT(EPOCH FROM now()) * 1000)::bigint"
        if postgres
        else "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    )
    migrator.sql(
        f'INSERT INTO "system_state" ("key", "value", "updated_at") VALUES (\'{KEY}\', \'0\', {now_ms})'
    )
    if postgres:
        migrator.sql(POSTGRES_FUNCTION)
        migrator.sql(POSTGRES_TRIGGER)
    else:
        migrator.sql(SQLITE_TRIGGER)


def _unpack_blocks(database: pw.Database) -> None:
    p = database.param
    cursor = database.execute_sql('SELECT "series_id", "payload" FROM "metric_block"')
    rows = []
    for series_id, payload in cursor.fetchall():
        stamps, values = _decode(bytes(payload))
        rows.extend((series_id, ts, value) for ts, value in zip(stamps, values, strict=True))
    if rows:
        database.cursor().executemany(
            f'INSERT INTO "metric_sample" ("series_id", "ts", "value") VALUES ({p}, {p}, {p}) '
            'ON CONFLICT ("series_id", "ts") DO NOTHING',
            rows,
        )


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    # Blocks go back to raw samples before their table goes.
    migrator.run(_unpack_blocks, database)
    migrator.remove_model("metric_block")
    # Native DROP COLUMN (SQLite 3.35+, PostgreSQL): no table rebuild, which
    # would cascade to the samples through their foreign key.
    migrator.sql('ALTER TABLE "metric_series" DROP COLUMN "resolution"')
    if isinstance(database, pw.PostgresqlDatabase):
        migrator.sql('DROP TRIGGER IF EXISTS "metric_series_deleted" ON "metric_series"')
        migrator.sql('DROP FUNCTION IF EXISTS "metric_series_deleted"()')
    else:
        migrator.sql('DROP TRIGGER IF EXISTS "metric_series_deleted"')
    migrator.sql(f'DELETE FROM "system_state" WHERE "key" = \'{KEY}\'')
