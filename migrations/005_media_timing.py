"""Media timing: what the muxer wrote, beside when the manager was called.

A segmenter's callbacks run about one GOP after the media starts, and a
stalled source is noticed only when frames return, so wall-clock times taken
at the callbacks hide holes. These columns keep the media's own evidence:

* ``media_started_at`` / ``media_ended_at``: the first frame's time and the
  last frame's end, mapped to wall clock (pipeline clock + base time), epoch
  ms. When a manager gives them, they are also the row's ``started_at`` /
  ``ended_at`` (see ``Stream.begin_segment``), so gaps, coverage and usage,
  which read those, follow the media.
* ``frame_count``: frames the muxer received for the file.
* ``finalized``: whether the muxer finalised the file (an MP4 without its
  ``moov`` atom is not playable); NULL when nobody said.

Nullable, no default: existing rows simply have no media evidence.
Frozen copies only: never import ``stream_state`` here.
"""

import peewee as pw
from peewee_migrate import Migrator

COLUMNS = ("media_started_at", "media_ended_at", "frame_count", "finalized")


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.add_fields(
        "recording",
        media_started_at=pw.BigIntegerField(null=True),
        media_ended_at=pw.BigIntegerField(null=True),
        frame_count=pw.BigIntegerField(null=True),
        finalized=pw.BooleanField(null=True),
    )


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.remove_fields("recording", *COLUMNS)
