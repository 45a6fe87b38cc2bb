"""The flusher's admin HTTP server (asyncio, HTTP/1.1, one request per connection).

Routes::

    GET  /metrics   Prometheus text (docs/TELEMETRY.md)
    GET  /healthz   200 while the process and its event loop run
    GET  /readyz    200 once tables are ensured and Redis answered; 503 while draining or Redis is down
    POST /query     body: one read-only SQL statement; 200 {"columns": [...], "rows": [[...]]}
                    or 400 {"error": "..."}; served by sinks that can (DuckDB)

Bound to ``flusher.admin_host`` (loopback by default; port 0 picks a free
port). It is small on purpose: probes, Prometheus and ``oceanus query`` are its
only clients, so no framework is worth its import time here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec

from flusher.sinks.base import QueryError, QueryResult

log = logging.getLogger("oceanus.flusher.admin")

#: Largest /query body (bytes): SQL text, not data.
MAX_BODY_BYTES = 65_536
#: Longest request head (request line + headers, bytes).
MAX_HEAD_BYTES = 16_384
#: A client has this long to send its request (seconds).
READ_TIMEOUT_S = 10.0

_json = msgspec.json.Encoder()


class _Error(msgspec.Struct):
    error: str


QueryFn = Callable[[str], Awaitable[QueryResult]]


class AdminServer:
    def __init__(
        self,
        host: str,
        port: int,
        metrics: Callable[[], bytes],
        ready: Callable[[], str | None],
        query: QueryFn | None,
    ) -> None:
        """``ready`` returns None when ready, else why not; ``query`` is None when the sink cannot."""
        self.host = host
        self.port = port
        self._metrics = metrics
        self._ready = ready
        self._query = query
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        # A wildcard bind (k8s) is still reachable on loopback from this machine.
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body = await asyncio.wait_for(self._respond(reader), READ_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        except asyncio.LimitOverrunError:
            status, ctype, body = _error(431, f"request head over {MAX_HEAD_BYTES} bytes")
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD_BYTES:
            return _error(431, f"request head over {MAX_HEAD_BYTES} bytes")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return _error(400, "malformed request line")
        method, target, _ = parts
        path = target.split("?", 1)[0]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if path == "/query":
            if method != "POST":
                return _error(405, "/query takes POST with the SQL as the body")
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                return _error(400, "content-length is not a number")
            if length > MAX_BODY_BYTES:
                return _error(413, f"SQL body over {MAX_BODY_BYTES} bytes")
            body = await reader.readexactly(length) if length > 0 else b""
            return await self._run_query(body)
        if method not in ("GET", "HEAD"):
            return _error(405, f"{path} takes GET")
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", self._metrics()
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            why = self._ready()
            return (200, "text/plain", b"ready\n") if why is None else (503, "text/plain", why.encode() + b"\n")
        return _error(404, f"no route {path} (try /metrics, /healthz, /readyz, POST /query)")

    async def _run_query(self, body: bytes) -> tuple[int, str, bytes]:
        if self._query is None:
            return _error(404, "this flusher's sink does not serve /query (only the DuckDB sink does)")
        try:
            sql = body.decode("utf-8").strip()
        except UnicodeDecodeError:
            return _error(400, "body: the SQL must be UTF-8 text")
        if not sql:
            return _error(400, "body: empty; send one SQL statement")
        try:
            result = await self._query(sql)
        except QueryError as exc:
            return _error(400, str(exc))
        return 200, "application/json", _json.encode(result)


def _error(status: int, message: str) -> tuple[int, str, bytes]:
    return status, "application/json", _json.encode(_Error(message))


_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large",
    431: "Request Header Fields Too Large", 503: "Service Unavailable",
}
