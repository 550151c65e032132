"""Bounded waits on PostgreSQL: a frozen server becomes an error, not a hang.

A server that keeps its TCP connections open but stops answering (a stopped
process, a hung VM, a proxy that stalls) leaves libpq waiting forever: the
kernel at the other end still acknowledges the bytes and the keepalive
probes, so neither TCP keepalives nor ``tcp_user_timeout`` fire, and the
server-side ``statement_timeout`` cannot fire on a server that does nothing.

The ``Watchdog`` here bounds that wait from the client side. Every statement
registers its connection's socket with a deadline. When a statement has been
waiting ``unresponsive_after`` seconds, the watchdog asks the server, over a
new connection with its own short timeouts, to answer ``SELECT 1``. If the
server answers, the statement is merely slow and is left to the server's
``statement_timeout``; if it does not, the stuck connection's socket is shut
down, libpq returns at once with a lost connection, and the caller gets
``DatabaseUnavailable``. A statement that outlives ``statement_timeout`` plus
a grace period is cut off whatever the probe says (its server stopped
answering this connection). So a frozen server costs a caller at most
``unresponsive_after + probe_timeout + TICK`` seconds (4 + 3 + 0.25 by
default: under 8 s).

Settings (URL query parameters or ``open_database`` arguments) and their
defaults are in ``DEFAULTS``; the libpq ones go to libpq as they are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

# libpq connection parameters: give up connecting after 4 s; notice a dead
# peer (no ACKs) in about 10 s. Any of them may be overridden.
LIBPQ_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 4,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": 9000,  # ms
}
# Server settings, in milliseconds (0 disables): a runaway statement is
# cancelled after a minute; waiting for another transaction's row lock ends
# after 10 s with an error instead of queueing forever; a transaction whose
# client sent nothing for a minute (a node frozen inside it: a paused VM, a
# stopped process) is ended by the server, so the row locks it held do not
# keep the other nodes from taking its streams over once its lease expired.
SERVER_DEFAULTS: dict[str, int] = {
    "statement_timeout": 60_000,
    "lock_timeout": 10_000,
    "idle_in_transaction_session_timeout": 60_000,
}
# Client side, in seconds.
CLIENT_DEFAULTS: dict[str, float] = {"unresponsive_after": 4.0, "probe_timeout": 3.0}
TICK = 0.25
GRACE = 10.0  # beyond statement_timeout before a statement is cut off regardless


class Watchdog:
    """One thread per database that shuts down the sockets of statements stuck on a frozen server."""

    def __init__(
        self,
        probe_params: dict[str, Any],
        *,
        unresponsive_after: float,
        probe_timeout: float,
        statement_timeout_ms: int,
        display_url: str = "",
    ):
        self.probe_params = probe_params
        self.unresponsive_after = unresponsive_after
        self.probe_timeout = probe_timeout
        self.hard_limit = statement_timeout_ms / 1000 + GRACE if statement_timeout_ms else None
        self.display_url = display_url
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, int, bool]] = {}  # token -> (started, fd, bounded)
        self._local = threading.local()
        self._next_token = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # When the server last answered a probe: a server that answered less
        # than unresponsive_after ago is not asked again (each probe is a new
        # connection, a backend process on the server), and a freeze after
        # that answer is still found within unresponsive_after + probe_timeout.
        self._answered_at: float | None = None
        self.cut = 0  # sockets shut down because the server did not answer

    @contextlib.contextmanager
    def watch(self, connection: Any) -> Iterator[None]:
        """Bound the statement run inside the block on ``connection`` (a psycopg2 connection)."""
        if self.unresponsive_after <= 0 or self.probe_timeout <= 0 or connection is None:
            # Either setting at 0 turns the watchdog off (a probe with no time
            # to answer would take every slow statement for a frozen server).
            yield
            return
        try:
            fd = connection.fileno()
        except Exception:  # closed already: the statement fails on its own
            yield
            return
        with self._lock:
            self._next_token += 1
            token = self._next_token
            bounded = not getattr(self._local, "unbounded", False)
            self._watched[token] = (time.monotonic(), fd, bounded)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="pg-watchdog", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(token, None)

    @contextlib.contextmanager
    def unbounded(self) -> Iterator[None]:
        """Statements of this thread inside the block may run as long as the server keeps answering."""
        self._local.unbounded = True
        try:
            yield
        finally:
            self._local.unbounded = False

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            now = time.monotonic()
            with self._lock:
                stuck = [(t, started, fd, bounded) for t, (started, fd, bounded) in self._watched.items()
                         if now - started >= self.unresponsive_after]  # fmt: skip
            if not stuck:
                continue

            def over_limit(started: float, bounded: bool, now: float = now) -> bool:
                return bounded and self.hard_limit is not None and now - started >= self.hard_limit

            answering = None if all(over_limit(s[1], s[3]) for s in stuck) else self._answering(now)
            for token, started, fd, bounded in stuck:
                if answering and not over_limit(started, bounded):
                    continue
                with self._lock:
                    if token not in self._watched:
                        continue  # finished meanwhile
                    self._watched.pop(token, None)
                    self._shut(fd)
                log.error(
                    "PostgreSQL at %s did not answer for %.1f s; dropped the connection",
                    self.display_url,
                    now - started,
                )

    def _answering(self, now: float) -> bool:
        if self._answered_at is not None and now - self._answered_at < self.unresponsive_after:
            return True
        if self._server_answers():
            self._answered_at = time.monotonic()
            return True
        return False

    def _shut(self, fd: int) -> None:
        # shutdown() through a duplicate descriptor acts on the shared socket:
        # libpq's blocked recv() returns at once and the connection is lost.
        try:
            dup = os.dup(fd)
        except OSError:
            return
        try:
            sock = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        self.cut += 1

    def _server_answers(self) -> bool:
        """Whether the server answers ``SELECT 1`` on a new connection within ``probe_timeout``."""
        import psycopg2
        import psycopg2.extensions

        deadline = time.monotonic() + self.probe_timeout
        conn = None
        try:
            conn = psycopg2.connect(**self.probe_params, async_=1)
            _wait(conn, deadline)
            cursor = conn.cursor()
            cursor.execute("SELECT 1")
            _wait(conn, deadline)
            return bool(cursor.fetchone() == (1,))
        except Exception:
            return False
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()


def _wait(conn: Any, deadline: float) -> None:
    import psycopg2.extensions as ext

    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if state == ext.POLL_READ:
            select.select([conn.fileno()], [], [], remaining)
        elif state == ext.POLL_WRITE:
            select.select([], [conn.fileno()], [], remaining)
        else:
            raise OSError(f"unexpected poll state {state}")


# "-c name=value" or "--name=value" in libpq's options, as PostgreSQL reads them.
_OPTION = re.compile(r"(?:-c\s*|--)(" + "|".join(SERVER_DEFAULTS) + r")\s*=\s*(\S+)")
# PostgreSQL's units for time settings; a bare number is milliseconds.
_UNITS_MS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def _settings_in_options(options: str) -> dict[str, int]:
    """The timeouts set in libpq's ``options`` string, in ms (the last of a name wins, as on the server)."""
    from .errors import ValidationError

    found: dict[str, int] = {}
    for name, text in _OPTION.findall(options):
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip("'\""))
        if match is None or match.group(2) not in {"", *_UNITS_MS}:
            raise ValidationError(
                "options", options, f"{name}={text}: expected a time such as 30000, 30s or 1min"
            )
        found[name] = round(float(match.group(1)) * _UNITS_MS.get(match.group(2) or "ms", 1))
    return found


def split_settings(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int], dict[str, float]]:
    """(libpq params with the defaults filled in, server settings in ms, client settings in s).

    Values may come from a URL (strings) or from arguments; bad ones raise
    ``ValidationError`` naming the setting.
    """
    from .errors import ValidationError

    libpq = {**LIBPQ_DEFAULTS, **params}
    in_options = _settings_in_options(str(libpq.get("options") or ""))
    server: dict[str, int] = {}
    for name, default in SERVER_DEFAULTS.items():
        if name not in libpq and name in in_options:
            # The caller set it in libpq's options ("-c lock_timeout=30s"):
            # that value stands (appending ours would override it) and the
            # watchdog's limit follows it.
            server[name] = in_options[name]
            continue
        value = libpq.pop(name, default)
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValidationError(name, value, "expected milliseconds (0 turns it off)") from None
        if number < 0:
            raise ValidationError(name, value, "expected milliseconds (0 turns it off)")
        server[name] = number
    client: dict[str, float] = {}
    for name, default_s in CLIENT_DEFAULTS.items():
        value = libpq.pop(name, default_s)
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise ValidationError(name, value, "expected seconds (0 turns the watchdog off)") from None
        if not 0 <= seconds < 86400:
            raise ValidationError(name, value, "expected seconds (0 turns the watchdog off)")
        client[name] = seconds
    extra = " ".join(
        f"-c {name}={ms}" for name, ms in server.items() if name not in in_options or name in params
    )
    libpq["options"] = f"{libpq['options']} {extra}" if libpq.get("options") else extra
    return libpq, server, client
