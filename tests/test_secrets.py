"""Passwords with any characters stay hidden (issue 13, item 11).

A password may hold ``#``, ``?``, ``/``, ``@``, ``:``, ``%`` and spaces; the
userinfo is taken up to the last ``@`` before the host, so none of it shows
in ``display_uri``, ``repr``, events, logs, CLI output or error messages,
whether the URI is accepted or refused. Database URLs too.
"""

from __future__ import annotations

import logging
import string
from urllib.parse import unquote

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_state import Event, Stream, StreamStateError, ValidationError
from stream_state.cli import cli
from stream_state.database import _open_postgres
from stream_state.models import database_proxy
from stream_state.redact import redact_text, redact_uri, split_userinfo

MARK = "Pw9"  # starts every generated password, so finding it means a leak
PASSWORD_ALPHABET = string.ascii_letters + string.digits + "#?/@:% !$&'()*+,;=-._~"
PASSWORDS = st.text(PASSWORD_ALPHABET, min_size=1, max_size=12).map(lambda tail: MARK + tail)
HOSTS = st.sampled_from(["10.0.0.5", "cam.example", "[::1]", "cam-2.local:8554"])
PATHS = st.sampled_from(["", "/", "/stream1", "/live?channel=1", "/a/b#frag"])
REPORTED = [
    "rtsp://admin:1234#Fake@host/s",
    "rtsp://admin:9?FakePw@host/s",
    "rtsp://admin:55/FakePw@host/s",
    "rtsp://admin:Fake#pw@host/s",
]


@pytest.mark.parametrize("uri", REPORTED)
def test_the_reported_passwords_are_masked(uri):
    assert redact_uri(uri) == "rtsp://admin:***@host/s"
    assert "Fake" not in redact_text(f"cannot reach {uri} now")


def test_the_host_is_after_the_last_at_and_a_path_at_is_not_a_password():
    assert split_userinfo("rtsp://u:a@b/c@host:554/s") == ("u:a@b/c", "rtsp://host:554/s")
    assert split_userinfo("rtsp://u:p@10.0.0.1:554/a@b:c") == ("u:p", "rtsp://10.0.0.1:554/a@b:c")
    # A path's "@" followed by a bare ":" is no host (found by the property tests: the
    # URI was refused for want of a host, and its event lost the host).
    assert split_userinfo("rtsp://A:0@10.0.0.0:554/@:") == ("A:0", "rtsp://10.0.0.0:554/@:")
    assert split_userinfo("rtsp://A:0@10.0.0.0:554/@:0") == ("A:0", "rtsp://10.0.0.0:554/@:0")
    assert split_userinfo("srt://u:p@:9000?mode=listener") == ("u:p", "srt://:9000?mode=listener")
    assert redact_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(password=PASSWORDS, host=HOSTS, path=PATHS)
def test_any_password_is_hidden_from_every_display(db, caplog, password, host, path):
    uri = f"rtsp://admin:{password}@{host}{path}"
    shown = redact_uri(uri)
    assert MARK not in shown and "admin:***@" in shown
    assert MARK not in redact_text(f"opening {uri} failed")
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="stream_state"):
        try:
            cam = Stream.register(f"cam-{abs(hash(password)) % 10**9}", uri)
        except StreamStateError as exc:
            assert isinstance(exc, ValidationError), exc
            assert MARK not in str(exc), str(exc)
            assert " " in password or "%" in password, f"refused a URI a camera accepts: {exc}"
            return
        assert cam.uri == uri  # stored as given: the manager needs it
        assert MARK not in cam.display_uri and MARK not in repr(cam)
        for event in Event.select().where(Event.stream == cam.id):
            assert MARK not in (event.message or "") and MARK not in str(event.data)
    assert MARK not in caplog.text


def test_cli_never_shows_such_a_password(db, backend):
    password = "Pw9#x/y?z@w: %"
    Stream.register("cam-odd", "rtsp://admin:Pw9#x/y?z@cam/s")
    url = db.database if backend.name == "sqlite" else None
    previous = database_proxy.obj
    try:
        if url is not None:
            database_proxy.initialize(None)
            for args in (["streams"], ["streams", "--json"], ["events"]):
                result = CliRunner().invoke(cli, ["--db", url, *args])
                assert result.exit_code == 0, result.output
                assert "Pw9" not in result.output and "cam-odd" in result.output
        for bad in ("rtsp://admin:Pw9#x y@cam/s", "rtsp://admin:Pw9/x@cam:99x/s"):
            with pytest.raises(ValidationError) as info:
                Stream.register("cam-bad", bad)
            assert "Pw9" not in str(info.value)
    finally:
        database_proxy.initialize(previous)
    assert password  # the alphabet of the reported cases


@pytest.mark.parametrize("password", ["ab#FAKEcd", "ab?FAKE", "ab/FAKE", "a@b:FAKE", "a b%FAKE"])
def test_database_urls_with_odd_passwords_parse_and_stay_masked(password):
    url = f"postgresql://nvr:{password}@127.0.0.1:1/recorder?connect_timeout=1"
    db = _open_postgres(url, max_connections=1)
    assert db.connect_params["password"] == unquote(password)  # percent-escapes still work
    assert db.connect_params["user"] == "nvr" and db.connect_params["host"] == "127.0.0.1"
    assert db.connect_params["port"] == 1 and db.database == "recorder"
    assert "FAKE" not in db.display_url
    result = CliRunner().invoke(cli, ["--db", url, "streams"])
    assert result.exit_code == 1 and "FAKE" not in result.output, result.output
    assert "unexpected" not in result.output


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///state.db?key=topsecret",  # SQLCipher-style key: an option this package does not take
        "sqlite://admin:topsecret@db.example/state.db",  # a host where none belongs
        "sqlite://admin:topsecret@/:memory:",
    ],
)
def test_a_refused_sqlite_url_does_not_show_its_secret(url, tmp_path, monkeypatch):
    from stream_state import open_database

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError) as info:
        open_database(url)
    assert "topsecret" not in str(info.value) and "topsecret" not in repr(info.value.value)


@pytest.mark.parametrize(
    "query",
    [
        "access_token=S3cr3tV",
        "api_key=S3cr3tV",
        "apikey=S3cr3tV",
        "auth_token=S3cr3tV",
        "client_secret=S3cr3tV",
        "X-Amz-Signature=S3cr3tV",
        "sig=S3cr3tV",
        "PASSWORD=S3cr3tV",
    ],
)
def test_secret_looking_query_parameters_are_masked_whatever_their_prefix(query):
    uri = f"https://cdn.example/live/index.m3u8?channel=1&{query}&fmt=ts"
    shown = redact_uri(uri)
    assert "S3cr3tV" not in shown and "S3cr3tV" not in redact_text(f"fetching {uri} failed")
    assert shown.startswith("https://cdn.example/live/index.m3u8?channel=1&")
    assert shown.endswith("=***&fmt=ts")
