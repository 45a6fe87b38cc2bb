"""The flusher's admin HTTP server (asyncio, HTTP/1.1, one request per connection).

Routes::

    GET  /metrics   Prometheus text (docs/TELEMETRY.md)
    GET  /healthz   200 while the process and its event loop run
    GET  /readyz    200 once tables are ensured and Redis answered; 503 while draining or Redis is down
    POST /query     body: one read-only SQL statement; 200 {"columns": [...], "rows": [[...]]}
                    or 400 {"error": "..."}; off (404) unless ``flusher.query_enabled``,
                    and then only with ``Authorization: Bearer <token>`` (else 401)

Bound to ``flusher.admin_host`` (loopback by default; port 0 picks a free
port). It is small on purpose: probes, Prometheus and ``oceanus query`` are its
only clients, so no framework is worth its import time here.

``/query`` runs SQL sent over the network, so it is guarded four ways: it is
off by default; it needs a bearer token that never sits in ``oceanus.toml``
(``OCEANUS_QUERY_TOKEN`` or ``flusher.query_token_file``), compared in
constant time; the sink runs it on a locked-down reader connection (no file,
extension or network access; see ``flusher/sinks/duckdb.py``) and interrupts
it after ``flusher.query_timeout_s``; and it runs on a thread of its own, with
at most :data:`MAX_QUERIES_IN_FLIGHT` waiting or running, so queries never
take the threads the sink writes on. A query over a limit (rows, seconds) is
the request's fault and is a 400 naming the limit, like any refused SQL; a
full queue is a 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from flusher.sinks.base import Queryable, QueryError, QueryResult
from oceanus.config import FlusherConfig
from oceanus.errors import ConfigError

log = logging.getLogger("oceanus.flusher.admin")

#: Largest /query body (bytes): SQL text, not data.
MAX_BODY_BYTES = 65_536
#: Longest request head (request line + headers, bytes).
MAX_HEAD_BYTES = 16_384
#: A client has this long to send its request (seconds).
READ_TIMEOUT_S = 10.0
#: Threads running /query: one, as the sink has one reader connection and runs
#: one query at a time on it. Never the sink's write threads.
QUERY_THREADS = 1
#: Queries waiting or running at once; more is a 429. With the timeout this bounds
#: how long a queued query can wait (4 x 10 s by default).
MAX_QUERIES_IN_FLIGHT = 4
#: Environment variable holding the /query bearer token.
QUERY_TOKEN_ENV = "OCEANUS_QUERY_TOKEN"
#: Shortest token accepted (characters): a guessable token guards nothing.
MIN_TOKEN_CHARS = 16

_json = msgspec.json.Encoder()


class _Error(msgspec.Struct):
    error: str


def load_query_token(fcfg: FlusherConfig, env: Mapping[str, str] | None = None) -> str:
    """The /query token: ``OCEANUS_QUERY_TOKEN``, else the file ``flusher.query_token_file``."""
    env = os.environ if env is None else env
    token = env.get(QUERY_TOKEN_ENV, "").strip()
    where = QUERY_TOKEN_ENV
    if not token and fcfg.query_token_file:
        where = f"flusher.query_token_file ({fcfg.query_token_file})"
        try:
            token = Path(fcfg.query_token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"flusher.query_token_file: cannot read {fcfg.query_token_file}: {exc}") from None
    if not token:
        raise ConfigError(
            f"flusher.query_enabled: /query needs a bearer token; set {QUERY_TOKEN_ENV} or "
            "flusher.query_token_file (a token is never read from oceanus.toml)"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{where}: the /query token is {len(token)} characters, under {MIN_TOKEN_CHARS}")
    return token


class QueryEndpoint:
    """``POST /query``: token check, a thread of its own, a bounded queue, the sink's timeout."""

    def __init__(self, run: Callable[[str, float], QueryResult], token: str, timeout_s: float) -> None:
        self._run = run
        self._token = token.encode()
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=QUERY_THREADS, thread_name_prefix="oceanus-query")
        self._in_flight = 0  # touched on the event loop only

    def authorized(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        # compare_digest: the time taken does not tell how much of a guess was right.
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)

    async def run(self, sql: str) -> QueryResult | None:
        """The result, or None when :data:`MAX_QUERIES_IN_FLIGHT` are already waiting or running."""
        if self._in_flight >= MAX_QUERIES_IN_FLIGHT:
            return None
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, sql, self.timeout_s)
        finally:
            self._in_flight -= 1

    def close(self) -> None:
        # A running query ends at its timeout at the latest; nothing waits for it here.
        self._pool.shutdown(wait=False, cancel_futures=True)


def query_endpoint(fcfg: FlusherConfig, sink: object, env: Mapping[str, str] | None = None) -> QueryEndpoint | None:
    """The /query endpoint the config asks for, or None (off, or a sink that cannot query)."""
    if not fcfg.query_enabled or not isinstance(sink, Queryable):
        return None
    return QueryEndpoint(sink.query, load_query_token(fcfg, env), fcfg.query_timeout_s)


class AdminServer:
    def __init__(
        self,
        host: str,
        port: int,
        metrics: Callable[[], bytes],
        ready: Callable[[], str | None],
        query: QueryEndpoint | None,
    ) -> None:
        """``ready`` returns None when ready, else why not; ``query`` is None when /query is off."""
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
        if self._query is not None:
            self._query.close()
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
        challenge = 'www-authenticate: Bearer realm="oceanus-query"\r\n' if status == 401 else ""
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\ncontent-type: {ctype}\r\n{challenge}"
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
            if self._query is None:
                return _error(
                    404,
                    "POST /query is off: set flusher.query_enabled = true and a token "
                    f"({QUERY_TOKEN_ENV} or flusher.query_token_file); only the DuckDB sink serves it",
                )
            if method != "POST":
                return _error(405, "/query takes POST with the SQL as the body")
            # Before the body is read: an unauthenticated client gets nothing but this.
            if not self._query.authorized(headers.get("authorization", "")):
                return _error(
                    401,
                    "/query needs the header Authorization: Bearer <token> "
                    f"(the flusher's {QUERY_TOKEN_ENV} or flusher.query_token_file)",
                )
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                return _error(400, "content-length is not a number")
            if length > MAX_BODY_BYTES:
                return _error(413, f"SQL body over {MAX_BODY_BYTES} bytes")
            body = await reader.readexactly(length) if length > 0 else b""
            return await self._run_query(self._query, body)
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

    async def _run_query(self, query: QueryEndpoint, body: bytes) -> tuple[int, str, bytes]:
        try:
            sql = body.decode("utf-8").strip()
        except UnicodeDecodeError:
            return _error(400, "body: the SQL must be UTF-8 text")
        if not sql:
            return _error(400, "body: empty; send one SQL statement")
        try:
            result = await query.run(sql)
        except QueryError as exc:
            return _error(400, str(exc))
        if result is None:
            return _error(
                429,
                f"{MAX_QUERIES_IN_FLIGHT} queries are already waiting or running (the limit); retry when one is done",
            )
        return 200, "application/json", _json.encode(result)


def _error(status: int, message: str) -> tuple[int, str, bytes]:
    return status, "application/json", _json.encode(_Error(message))


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
