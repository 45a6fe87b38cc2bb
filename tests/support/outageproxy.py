"""A loopback TCP proxy that can take a server away and give it back on the same port.

``down()`` closes every proxied connection (each side sees a reset or an EOF, as
when a database restarts or a network path dies) and, until ``up()``, accepts
new connections only to close them at once: to the client the server is gone.
The server itself is never touched, so a test can simulate an outage of a
database other people are using.

    proxy = OutageProxy(5432).start()
    ... connect to 127.0.0.1:proxy.port ...
    proxy.down(); ...; proxy.up()
"""

from __future__ import annotations

import socket
import threading

from tests.support.tcpproxy import ReplyDropProxy, _close


class OutageProxy(ReplyDropProxy):
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        super().__init__(upstream_port, host)
        self._down = threading.Event()
        #: Connections refused while down.
        self.refused = 0

    def start(self) -> OutageProxy:
        super().start()
        return self

    def down(self) -> None:
        self._down.set()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _close(s)

    def up(self) -> None:
        self._down.clear()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down.is_set():
                with self._lock:
                    self.refused += 1
                _close(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._socks += [client, server]
            lose = threading.Event()
            threading.Thread(target=self._upstream, args=(client, server, lose), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, lose), daemon=True).start()
