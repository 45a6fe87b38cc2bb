"""A live collector (granian, real workers) for the tests that need a real socket:
oversized request lines, raw header bytes, slow bodies, schemathesis."""

from __future__ import annotations

import socket
import time

from tests.support.servers import wait_for

#: Bound on one raw exchange.
RAW_TIMEOUT_S = 15.0


def raw_exchange(port: int, data: bytes | list[bytes], pace_s: float = 0.0, timeout: float = RAW_TIMEOUT_S) -> bytes:
    """Send ``data`` (chunks ``pace_s`` apart: a slow client) and read until the server closes or answers."""
    chunks = [data] if isinstance(data, bytes) else data
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        deadline = time.monotonic() + timeout
        try:
            for i, chunk in enumerate(chunks):
                if i and pace_s:
                    time.sleep(pace_s)  # pacing the slow client, not synchronisation
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server gave up on us first: read what it said
        out = b""
        while time.monotonic() < deadline:
            try:
                part = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not part:
                break
            out += part
            if _complete(out):
                break
        return out


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return True


def status_of(response: bytes) -> int:
    """The status code of a raw response, 0 if the server closed without one."""
    if not response.startswith(b"HTTP/"):
        return 0
    return int(response.split(b" ", 2)[1])


def headers_of(response: bytes) -> list[tuple[bytes, bytes]]:
    head = response.partition(b"\r\n\r\n")[0]
    out = []
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out.append((name.strip().lower(), value.strip()))
    return out


def wait_healthy(port: int) -> None:
    def ok() -> bool:
        return (
            status_of(raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=2.0))
            == 200
        )

    wait_for(ok, timeout=20, what="collector /healthz after a hostile request")
