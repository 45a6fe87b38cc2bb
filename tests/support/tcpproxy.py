"""A loopback TCP proxy that can lose a server's reply after the server acted on the request.

It forwards bytes both ways unchanged, except after a request that contains an
armed marker: that request still reaches the server (which executes it and, with
AOF ``always``, makes it durable), but the first chunk of the answer is swallowed
and both sides of the connection are closed. That is what a client sees when
Redis is killed between its fsync and its reply, or when the reply is slower
than the socket timeout: "did it run?" has no answer.

    proxy = ReplyDropProxy(redis_port).start()
    proxy.drop_reply_after(b"EVALSHA", times=1)
    ...
    assert proxy.dropped == 1

One thread per direction per connection; ``stop()`` closes everything.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class ReplyDropProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self._listener = socket.create_server((host, 0))
        self._lock = threading.Lock()
        self._markers: list[tuple[bytes, int, int]] = []  # (marker, times left, every n-th)
        self._seen: dict[bytes, int] = {}
        self._socks: list[socket.socket] = []
        self._stopped = threading.Event()
        #: Replies swallowed so far.
        self.dropped = 0

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> ReplyDropProxy:
        threading.Thread(target=self._accept, name="reply-drop-proxy", daemon=True).start()
        return self

    def drop_reply_after(self, marker: bytes, times: int = 1, every: int = 1) -> None:
        """Lose the reply to the next ``times`` requests containing ``marker`` (each ``every``-th one)."""
        with self._lock:
            self._markers.append((marker, times, max(1, every)))
            self._seen[marker] = 0

    def clear(self) -> None:
        with self._lock:
            self._markers.clear()

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _close(s)

    def _take(self, chunk: bytes) -> bool:
        with self._lock:
            for i, (marker, left, every) in enumerate(self._markers):
                if marker in chunk:
                    self._seen[marker] += 1
                    if self._seen[marker] % every:
                        return False
                    if left <= 1:
                        del self._markers[i]
                    else:
                        self._markers[i] = (marker, left - 1, every)
                    return True
        return False

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
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

    def _upstream(self, client: socket.socket, server: socket.socket, lose: threading.Event) -> None:
        try:
            while chunk := client.recv(65536):
                if self._take(chunk):
                    lose.set()  # before forwarding: the reply cannot overtake the flag
                server.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(server)

    def _downstream(self, server: socket.socket, client: socket.socket, lose: threading.Event) -> None:
        try:
            while chunk := server.recv(65536):
                if lose.is_set():
                    with self._lock:
                        self.dropped += 1
                    break
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(client)
            _close(server)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
