"""Faults: a full disk, a deleted or damaged database file, a lost server, and secrets."""

from __future__ import annotations

import logging
import os

import peewee as pw
import pytest

from stream_state import (
    DatabaseUnavailable,
    Event,
    InvalidTransition,
    MetricSample,
    Recording,
    StorageFull,
    Stream,
    ValidationError,
    open_database,
)
from stream_state.restore import Restorer

from .dbdump import dump_tables

SECRET = "hunter2-Sup3rS3cret"


def sqlite_only(db):
    if not isinstance(db, pw.SqliteDatabase):
        pytest.skip("a SQLite file fault")


def test_a_full_database_raises_storage_full_keeps_nothing_half_written_and_recovers(db, tmp_path):
    sqlite_only(db)
    cam = Stream.register("cam-1", "rtsp://10.0.0.1/s")
    pages = db.execute_sql("PRAGMA page_count").fetchone()[0]
    db.execute_sql(f"PRAGMA max_page_count = {pages + 2}")
    written = 0
    with pytest.raises(StorageFull, match="full") as info:
        for i in range(10_000):
            cam.begin_segment(tmp_path / f"{i}.mp4", metadata={"pad": "x" * 2000})
            written += 1
    assert "retention" in str(info.value), "the message says what to do"
    assert Recording.select().count() == written, "the failing segment left no row"
    assert Stream.get_by_id(cam.id).next_segment_index == written, "nor a used-up index"
    db.execute_sql("PRAGMA max_page_count = 1073741823")
    assert cam.begin_segment(tmp_path / "after.mp4").segment_index == written


def test_a_full_database_during_a_metric_batch_writes_nothing(db):
    sqlite_only(db)
    Stream.register("cam-1", "rtsp://10.0.0.1/s")
    MetricSample.record("fps", 15.0)
    before = dump_tables()
    pages = db.execute_sql("PRAGMA page_count").fetchone()[0]
    db.execute_sql(f"PRAGMA max_page_count = {pages + 1}")
    with pytest.raises(StorageFull):
        MetricSample.record_many([(f"series-{i}", float(i)) for i in range(5000)])
    db.execute_sql("PRAGMA max_page_count = 1073741823")
    assert dump_tables() == before


def test_a_full_database_while_marking_late_metric_hours_is_storage_full(db):
    # The stale-hour marks go in through the cursor's executemany (not
    # execute_sql): the driver's error must still come out as the package's.
    sqlite_only(db)
    from stream_state.models.rollups import MetricRollupStale

    series = MetricSample.record("fps", 15.0).series_id
    before = dump_tables()
    pages = db.execute_sql("PRAGMA page_count").fetchone()[0]
    db.execute_sql(f"PRAGMA max_page_count = {pages + 1}")
    with pytest.raises(StorageFull), db.atomic():
        MetricRollupStale.mark(db, [(series, hour * 3_600_000) for hour in range(20_000)])
    db.execute_sql("PRAGMA max_page_count = 1073741823")
    assert dump_tables() == before


def test_a_database_file_deleted_under_the_process_is_a_clear_error(db, tmp_path):
    sqlite_only(db)
    cam = Stream.register("cam-1", "rtsp://10.0.0.1/s")
    os.unlink(db.database)
    for call in (lambda: cam.begin_segment(tmp_path / "x.mp4"), lambda: Restorer(db).restore()):
        with pytest.raises(DatabaseUnavailable, match="deleted while in use"):
            call()
    db.close()
    with pytest.raises(DatabaseUnavailable):
        Stream.select().count()  # a new connection does not create an empty database
    assert not os.path.exists(db.database)


def test_a_damaged_database_file_says_how_to_recover(tmp_path):
    path = tmp_path / "damaged.db"
    db = open_database(path)
    Stream.register("cam-1", "rtsp://10.0.0.1/s")
    with db.atomic():
        for i in range(2000):
            Event.record("filler", message="x" * 200, data={"i": i})
    db.close()
    size = path.stat().st_size
    with open(path, "r+b") as handle:  # scribble over the middle of the file
        handle.seek(size // 2)
        handle.write(os.urandom(size // 4))
    with pytest.raises(DatabaseUnavailable, match="restore a backup") as info:
        db = open_database(path)
        Event.select().where(Event.type == "filler").count()
        list(Event.select())
    assert "integrity" in str(info.value)


def test_a_lost_postgres_connection_is_database_unavailable_then_recovers(db, backend):
    if backend.name != "postgres":
        pytest.skip("a PostgreSQL connection fault")
    cam = Stream.register("cam-1", "rtsp://10.0.0.1/s")
    killer = pw.PostgresqlDatabase(
        db.database, **{k: v for k, v in db.connect_params.items() if k != "options"}
    )
    killer.connect()
    my_pid = db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    killer.execute_sql("SELECT pg_terminate_backend(%s)", (my_pid,))
    killer.close()
    with pytest.raises(DatabaseUnavailable, match="lost the connection"):
        cam.record_health("healthy")
    assert cam.record_health("healthy") is True, "the next call reconnects by itself"
    assert Stream.get_by_id(cam.id).health == "healthy"


def test_no_credential_is_ever_shown(db, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level, peewee's SQL log included
    uri = f"rtsp://admin:{SECRET}@10.0.0.9:554/stream1?token={SECRET}"
    shown: list[str] = []
    cam = Stream.register("cam-1", uri, {"password": SECRET, "backup_uri": uri, "fps": 15})
    cam.update_config({"password": SECRET + "x", "fps": 30})
    cam.set_status("starting")
    cam.record_health("failed", reason=f"cannot open {uri}")
    segment = cam.begin_segment(tmp_path / "a.mp4", metadata={"source": uri})
    segment.fail(f"lost {uri}")
    Event.record("note", cam, message=f"reconnecting to {uri}", data={"uri": uri, "secret": SECRET})
    MetricSample.record("fps", 1.0, stream=cam, labels={"source": "main"})
    for bad in (
        lambda: Stream.register("cam-2", uri.replace("554", "99999")),
        lambda: Stream.register("cam-4", uri).set_status("running"),
        lambda: Stream.register("cam 3\n", uri),
    ):
        with pytest.raises((ValidationError, InvalidTransition)) as info:
            bad()
        shown.append(str(info.value))
    state = Restorer(db, session="secrets").restore()
    shown += [repr(cam), str(cam), cam.display_uri, repr(segment), repr(state), str(state.summary)]
    shown += [f"{e.message} {e.data}" for e in Event.select()]
    shown += [record.getMessage() for record in caplog.records]
    assert state.stream("cam-1").uri == uri, "the manager still gets the real URI"
    leaks = [text for text in shown if SECRET in text]
    assert leaks == []
    assert len(caplog.records) > 10, "the scan saw the logs"
