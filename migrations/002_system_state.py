"""Add system_state: small named records of the recorder as a whole.

Holds the lifecycle marker that tells a clean stop from a crash, the
database's identity (written to storage-root markers), and later the
schedule of maintenance jobs.
"""

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    @migrator.create_model
    class SystemState(pw.Model):
        key = pw.TextField(primary_key=True)
        value = pw.JSONField(null=True)
        updated_at = pw.BigIntegerField()

        class Meta:
            table_name = "system_state"
            legacy_table_names = False


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.remove_model("system_state")
