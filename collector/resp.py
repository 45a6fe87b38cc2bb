"""The writer's own Redis connection: packed RESP commands on one socket, replies read by hiredis.

redis-py's asyncio client spends about 100 us of CPU on one command round
(a pool checkout under a lock, a timeout context per read, instrumentation
hooks, a stream reader) and adds as much to the round trip; measured in-process,
a lone RPUSH of a 1.5 KB frame cost ~128 us of client CPU through it and ~25 us
here. The collector sends one round per micro-batch from a single writer task
and every request of the batch waits for that round, so the round trip is on
every request's latency. The writer needs none of the pool: one connection,
the round's commands packed into one write, and one future resolved by the
protocol once the expected number of replies has arrived.

Failure handling is deliberately blunt: a refused connection, a lost
connection, a reply that does not come within ``redis.timeout_s`` or a
garbled reply raises ``OSError`` (``ConnectionError``/``TimeoutError``) and
closes the socket, so the next round starts on a fresh connection and can
never read a reply meant for an earlier one. An error *reply* (e.g. WRONGTYPE,
OOM) is not raised: it is returned in its command's place, as redis-py's
``raise_on_error=False`` does, so the caller decides per command.

URLs: ``redis://``, ``rediss://`` (TLS, certificate and host name verified by
the system's trust store) and ``unix://``, with user, password and database.
Other URL options are refused at startup rather than silently ignored.

``wait_replicas = K`` (``redis.min_replicas_ack``): ``WAIT K wait_timeout_ms``
ends every round, in the same write. When fewer than K replicas acknowledged,
every command of the round that Redis applied gets :class:`NotReplicated` in
its place instead of its reply, so the caller treats it as failed (spools the
frame) although Redis holds it: replication is asynchronous, and a failover to
a replica that lacks the round would lose it.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Protocol

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

#: What a URL may carry; anything else parse_url yields is an option this client does not implement.
_URL_KEYS = frozenset(("host", "port", "db", "username", "password", "path", "connection_class"))


class NotReplicated(Exception):
    """The command was applied, but fewer replicas than ``wait_replicas`` acknowledged it in time."""


class Link(Protocol):
    """What the pusher needs of its connection: :class:`RedisLink`, or ``collector.cluster.ClusterLink``."""

    async def call(self, packed: bytes, replies: int) -> list[Any]: ...

    def close(self) -> None: ...


def pack(*args: bytes | str | int) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    """Collects replies for the one round in flight and resolves its future."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiter: asyncio.Future[list[Any]] | None = None
        self.expected = 0
        self.replies: list[Any] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        replies = self.replies
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                replies.append(reply)
        except hiredis.ProtocolError as exc:
            self._fail(ConnectionError(f"garbled reply from Redis: {exc}"))
            return
        waiter = self.waiter
        if waiter is None or len(replies) > self.expected:
            # A reply nobody asked for: the stream is out of step, so it is useless from here on.
            self._fail(ConnectionError("unexpected reply from Redis"))
        elif len(replies) == self.expected and not waiter.done():
            waiter.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(f"Redis closed the connection ({exc or 'EOF'})"))

    def _fail(self, exc: Exception) -> None:
        self.lost = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class RedisLink:
    """One lazily (re)connected Redis connection for one task's rounds; not shared."""

    def __init__(self, url: str, timeout_s: float, *, wait_replicas: int = 0, wait_timeout_ms: int = 0) -> None:
        opts: dict[str, Any] = dict(parse_url(url))
        unknown = set(opts) - _URL_KEYS
        if unknown:
            raise ValueError(f"redis.url: the collector does not support the option(s) {', '.join(sorted(unknown))}")
        cls = opts.get("connection_class")
        self._path: str | None = opts.get("path") if cls is UnixDomainSocketConnection else None
        self._host: str = opts.get("host") or "localhost"
        self._port = int(opts.get("port") or 6379)
        self._ssl = ssl.create_default_context() if cls is SSLConnection else None
        self._timeout = timeout_s
        hello: list[bytes] = []
        password = opts.get("password")
        if password is not None:
            username = opts.get("username")
            hello.append(pack("AUTH", username, password) if username else pack("AUTH", password))
        if opts.get("db"):
            hello.append(pack("SELECT", int(opts["db"])))
        self._hello = hello
        self._protocol: _Protocol | None = None
        check_wait(wait_replicas, wait_timeout_ms, timeout_s)
        self._wait_replicas = wait_replicas
        self._wait = pack("WAIT", wait_replicas, wait_timeout_ms) if wait_replicas else None

    async def call(self, packed: bytes, replies: int) -> list[Any]:
        """Send ``packed`` (``replies`` commands) and return their replies in order.

        Error replies come back as exception instances; connection trouble raises.
        """
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        if self._wait is None:
            return await self._round(protocol, packed, replies)
        results = await self._round(protocol, packed + self._wait, replies + 1)
        acked = results.pop()
        if not isinstance(acked, int) or acked < self._wait_replicas:
            short = NotReplicated(
                f"{self._host}:{self._port}: {acked!r} of {self._wait_replicas} replica(s) acknowledged in time"
            )
            results = [r if isinstance(r, Exception) else short for r in results]
        return results

    async def _round(self, protocol: _Protocol, packed: bytes, replies: int) -> list[Any]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[list[Any]] = loop.create_future()
        protocol.waiter, protocol.expected, protocol.replies = waiter, replies, []
        transport = protocol.transport
        assert transport is not None
        transport.write(packed)
        timer = loop.call_later(self._timeout, _expire, waiter, self._timeout)
        try:
            return await waiter
        except BaseException:
            # Timed out, lost, or cancelled mid-round: whatever arrives later belongs to
            # no one, so this connection is done.
            self.close()
            raise
        finally:
            timer.cancel()
            protocol.waiter = None

    async def _connect(self) -> _Protocol:
        self.close()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout):
            if self._path is not None:
                _, protocol = await loop.create_unix_connection(_Protocol, self._path)
            else:
                _, protocol = await loop.create_connection(
                    _Protocol,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        self._protocol = protocol
        for command in self._hello:
            reply = (await self._round(protocol, command, 1))[0]
            if isinstance(reply, Exception):
                self.close()
                raise ConnectionError(f"Redis refused the connection's setup: {reply}")
        return protocol

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.lost = True
            if protocol.transport is not None:
                protocol.transport.abort()


def check_wait(wait_replicas: int, wait_timeout_ms: int, timeout_s: float) -> None:
    """Refuse a ``WAIT`` that could block for ever or outlast the round's own timeout."""
    if wait_replicas < 0:
        raise ValueError(f"wait_replicas: must be 0 or more, got {wait_replicas}")
    if wait_replicas and not 0 < wait_timeout_ms < timeout_s * 1000:
        # WAIT with a timeout of 0 blocks for ever; past timeout_s the link gives up on the server first.
        raise ValueError(
            f"wait_timeout_ms: must be above 0 and below redis.timeout_s ({timeout_s:g} s), got {wait_timeout_ms}"
        )


def _expire(waiter: asyncio.Future[list[Any]], timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no reply from Redis within {timeout_s:g}s"))
