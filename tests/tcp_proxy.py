"""A TCP proxy that can be pulled out and plugged back in, to take a database server away.

Stopping the real PostgreSQL server would break every other test running
against it, so the outage tests talk to the server through this proxy
instead. ``stop()`` closes the listening socket and cuts every live
connection (both directions, at once), which is what a client sees when the
server goes down: established connections break and new ones are refused.
``start()`` listens again on the same port, as a restarted server would.

    proxy = TcpProxy("127.0.0.1", 5432)
    proxy.start()            # proxy.port is the port to connect to
    ...
    proxy.stop()             # outage
    proxy.start()            # back
    proxy.freeze()           # the server stops answering but keeps every connection open
    proxy.thaw()             # it answers again (what was held is delivered)
    proxy.close()

While frozen, the proxy still reads what each side sends (so the sender's
kernel sees its bytes acknowledged, as with a stopped server process whose
kernel still runs) but forwards nothing, and new connections are accepted
and then left waiting: TCP keepalives and ``tcp_user_timeout`` see a healthy
peer, and only a client-side bound notices.
"""

from __future__ import annotations

import contextlib
import socket
import threading

_CHUNK = 65536


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1", port: int = 0):
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port = port  # 0 until the first start() picks a free one
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._running = threading.Event()
        self._live: set[socket.socket] = set()
        self._pumps: list[threading.Thread] = []
        self._flowing = threading.Event()
        self._flowing.set()
        self.accepted = 0  # connections taken since creation
        self.cut = 0  # live connections cut by stop()
        self.outages = 0  # stop() calls while running

    # --- control ------------------------------------------------------------------

    def start(self) -> None:
        """Listen (again) on ``self.port`` and forward every connection to the target."""
        if self._running.is_set():
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Connections cut by stop() linger in TIME_WAIT: rebinding the same
        # port right away needs SO_REUSEADDR.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.listen_host, self.port))
        listener.listen(64)
        # accept() wakes up every 50 ms to notice stop(): closing a listening
        # socket from another thread does not reliably interrupt accept().
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._running.set()
        self._acceptor = threading.Thread(target=self._accept_loop, name="tcp-proxy-accept", daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        """Refuse new connections and cut every live one, like a server that went down."""
        if not self._running.is_set():
            return
        self._running.clear()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            live = list(self._live)
            self._live.clear()
            pumps, self._pumps = self._pumps, []
            self.cut += len(live) // 2
            self.outages += 1
        for sock in live:
            _shut(sock)
        for pump in pumps:
            pump.join(timeout=5)

    def freeze(self) -> None:
        """Stop forwarding in both directions, keeping every connection open."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    @property
    def frozen(self) -> bool:
        return not self._flowing.is_set()

    def close(self) -> None:
        self.thaw()
        self.stop()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def live_connections(self) -> int:
        with self._lock:
            return len(self._live) // 2

    # --- forwarding ---------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while self._running.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _shut(client)
                continue
            with self._lock:
                if not self._running.is_set():
                    _shut(client)
                    _shut(upstream)
                    return
                self.accepted += 1
                self._live.update((client, upstream))
                pumps = [
                    threading.Thread(target=self._pump, args=(client, upstream), daemon=True),
                    threading.Thread(target=self._pump, args=(upstream, client), daemon=True),
                ]
                self._pumps.extend(pumps)
            for pump in pumps:
                pump.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                while not self._flowing.wait(0.05):  # frozen: hold the bytes
                    if not self._running.is_set():
                        return
                sink.sendall(data)
        except OSError:
            pass
        # One side ended: end the other too, so neither peer waits forever.
        with self._lock:
            self._live.discard(source)
            self._live.discard(sink)
        _shut(source)
        _shut(sink)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
