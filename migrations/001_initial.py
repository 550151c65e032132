"""Initial schema: stream, recording, event, metric_series, metric_sample.

The models here are frozen copies of the package's models as they were when
this migration was written; never import ``stream_state.models`` from a
migration, because those change with later migrations.

Times are BIGINT UTC epoch milliseconds; enums are TEXT.
"""

import peewee as pw
from peewee_migrate import Migrator


class GrowingIdField(pw.BigAutoField):
    """Frozen copy of stream_state.fields.GrowingIdField: AUTOINCREMENT on SQLite."""

    def ddl(self, ctx):
        node = super().ddl(ctx)
        if isinstance(self.model._meta.database, pw.SqliteDatabase):
            return pw.NodeList((node, pw.SQL("AUTOINCREMENT")))
        return node


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    @migrator.create_model
    class Stream(pw.Model):
        id = pw.AutoField()
        name = pw.TextField()
        uri = pw.TextField()
        config = pw.JSONField()
        desired_enabled = pw.BooleanField()
        desired_recording = pw.BooleanField()
        status = pw.TextField()
        health = pw.TextField()
        status_changed_at = pw.BigIntegerField(null=True)
        health_changed_at = pw.BigIntegerField(null=True)
        last_seen_at = pw.BigIntegerField(null=True)
        next_segment_index = pw.BigIntegerField(constraints=[pw.Check("next_segment_index >= 0")])
        retention = pw.JSONField(null=True)
        created_at = pw.BigIntegerField()
        updated_at = pw.BigIntegerField()
        removed_at = pw.BigIntegerField(null=True)

        class Meta:
            table_name = "stream"
            legacy_table_names = False

    Stream.add_index(
        Stream.index(Stream.name, unique=True, where=Stream.removed_at.is_null(), name="stream_name_live")
    )

    @migrator.create_model
    class Recording(pw.Model):
        id = GrowingIdField()
        stream = pw.ForeignKeyField(Stream, on_delete="RESTRICT", index=False)
        path = pw.TextField(unique=True)
        storage = pw.TextField(null=True)
        segment_index = pw.BigIntegerField(constraints=[pw.Check("segment_index >= 0")])
        started_at = pw.BigIntegerField()
        ended_at = pw.BigIntegerField(null=True)
        checkpoint_at = pw.BigIntegerField(null=True)
        size_bytes = pw.BigIntegerField(constraints=[pw.Check("size_bytes >= 0")])
        state = pw.TextField()
        archived = pw.BooleanField()
        metadata = pw.JSONField(null=True)

        class Meta:
            table_name = "recording"
            legacy_table_names = False
            constraints = [pw.Check("ended_at IS NULL OR ended_at >= started_at")]
            indexes = (
                (("stream", "segment_index"), True),
                (("stream", "started_at"), False),
                (("ended_at",), False),
            )

    Recording.add_index(
        Recording.index(
            Recording.stream,
            Recording.started_at,
            where=Recording.ended_at.is_null(),
            name="recording_open",
        )
    )
    Recording.add_index(
        Recording.index(Recording.state, where=Recording.state != "complete", name="recording_unsettled")
    )

    @migrator.create_model
    class Event(pw.Model):
        id = pw.BigAutoField()
        ts = pw.BigIntegerField()
        stream = pw.ForeignKeyField(Stream, null=True, on_delete="RESTRICT", index=False)
        type = pw.TextField()
        severity = pw.TextField()
        message = pw.TextField(null=True)
        data = pw.JSONField(null=True)

        class Meta:
            table_name = "event"
            legacy_table_names = False
            indexes = (
                (("ts", "id"), False),
                (("stream", "ts", "id"), False),
                (("type", "ts", "id"), False),
            )

    @migrator.create_model
    class MetricSeries(pw.Model):
        id = pw.AutoField()
        key = pw.TextField(unique=True)
        name = pw.TextField(index=True)
        stream = pw.ForeignKeyField(Stream, null=True, on_delete="RESTRICT")
        labels = pw.JSONField()
        created_at = pw.BigIntegerField()

        class Meta:
            table_name = "metric_series"
            legacy_table_names = False

    @migrator.create_model
    class MetricSample(pw.Model):
        series = pw.ForeignKeyField(MetricSeries, on_delete="CASCADE", index=False)
        ts = pw.BigIntegerField()
        value = pw.DoubleField()

        class Meta:
            table_name = "metric_sample"
            legacy_table_names = False
            primary_key = pw.CompositeKey("series", "ts")
            # About 19 bytes a sample instead of ~30: the key is the row.
            without_rowid = isinstance(database, pw.SqliteDatabase)


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    for table in ("metric_sample", "metric_series", "event", "recording", "stream"):
        migrator.remove_model(table)
