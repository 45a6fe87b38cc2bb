"""The collector: one raw ASGI app (no framework), run by granian.

Routes::

    GET  /b/{stream}?k=v...   pixel: 200 + 43-byte GIF; 400 + the same GIF and
                              X-Oceanus-Error "field: rule: detail"
    POST /e/{stream}          JSON object, JSON array (<= collector.max_batch_events)
                              or form-encoded; gzip accepted; 200 {"accepted": n}
    OPTIONS /b/..., /e/...    CORS preflight (204)
    GET  /healthz             process alive
    GET  /readyz              503 when draining, or Redis (any cluster master) down AND spool full
    GET  /metrics             Prometheus text, all granian workers merged
    other GETs                collector.web.handle (tag, demo, status pages), else 404

A 2xx means the event is in Redis (or in the fsync'd spool while Redis is
unreachable): the response waits for the micro-batch round that carries it.
With ``redis.min_replicas_ack = K`` "in Redis" means "on the master and K
replicas"; a round fewer replicas acknowledged is spooled as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import msgspec

from collector import legacy, web
from collector._types import Message, Receive, Scope, Send
from collector.access import StreamGate, load_keys
from collector.enrich import ClientIp, DeviceCache, ip_store
from collector.metrics import Metrics
from collector.pusher import Pusher, Unavailable, make_redis
from collector.ratelimit import TokenBuckets, per_worker, retry_after
from collector.resp import Link, RedisLink
from collector.spool import Spool
from collector.validate import Invalid, StreamValidator, compile_streams, parse_query
from oceanus.buffer import EventIds
from oceanus.config import Config

#: The 1x1 transparent GIF (43 bytes).
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

Headers = list[tuple[bytes, bytes]]

#: Output of one inflate step: JSON values are counted between steps.
INFLATE_STEP_BYTES = 65_536

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode

_NO_STORE = (b"cache-control", b"no-store, no-cache, must-revalidate, max-age=0")
_GIF_TYPE = (b"content-type", b"image/gif")
_JSON_TYPE = (b"content-type", b"application/json")
_TEXT_TYPE = (b"content-type", b"text/plain; charset=utf-8")
_EXPOSE = (b"access-control-expose-headers", b"X-Oceanus-Error")
_GIF_BODY: Message = {"type": "http.response.body", "body": GIF}
_EMPTY_BODY: Message = {"type": "http.response.body", "body": b""}
_PREFLIGHT = [
    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
    (b"access-control-allow-headers", b"Content-Type, Content-Encoding"),
    (b"access-control-max-age", b"86400"),
    (b"content-length", b"0"),
]


class _Reject(Exception):
    """A request-level refusal (not a field rule): status, limit name, detail."""

    def __init__(self, status: int, field: str, rule: str, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.invalid = Invalid(field, rule, detail)
        self.retry_after = retry_after


class App:
    """The ASGI callable. One instance per worker process."""

    def __init__(self, cfg: Config, *, handle_signals: bool = False) -> None:
        self.cfg = cfg
        c = cfg.collector
        self._validators: dict[str, StreamValidator] = compile_streams(cfg.streams.values(), c)
        self._ids = EventIds()
        self._client_ip = ClientIp(c.trusted_proxies, c.forwarded_for_skip)
        # collector.ip_mode: what the ip column keeps (None: the address as resolved).
        self._ip_store = ip_store(c.ip_mode, c.ip_hash_key)
        self._device = DeviceCache()
        self._max_url = c.max_url_bytes
        self._max_body = c.max_body_bytes
        self._max_inflated = c.max_decompressed_bytes
        self._max_batch = c.max_batch_events
        self._max_ua = c.max_ua_length
        self._body_timeout = c.body_timeout_s
        self._max_headers = c.max_headers
        self._max_values = c.max_json_values
        self._max_pending = c.max_pending_body_bytes
        self._pending = 0  # body bytes (raw and inflated) held by requests in flight
        self._max_bodies_per_ip = c.max_bodies_per_ip
        self._bodies: dict[str, int] = {}  # client IP -> POST bodies in flight
        # Volume limits: each worker enforces its share (collector/ratelimit.py).
        self._ip_limit: TokenBuckets | None = None
        if c.ip_rate_per_s > 0:
            # A trusted proxy's own address names no client (a proxy that sent no
            # X-Forwarded-For, or loopback senders such as `oceanus dev` and the benchmarks).
            self._ip_limit = TokenBuckets(
                *per_worker(c.ip_rate_per_s, c.ip_burst, c.workers), exempt=self._client_ip.is_trusted
            )
        # Streams with access rules only: for the others the lookup misses at once.
        self._rules: dict[str, tuple[StreamGate | None, TokenBuckets | None]] = {}
        for name, rule in c.access.items():
            keys = load_keys(name, rule)
            gate = StreamGate(frozenset(o.encode() for o in rule.origins), keys) if rule.origins or keys else None
            limit = TokenBuckets(*per_worker(rule.rate_per_s, rule.burst, c.workers)) if rule.rate_per_s else None
            if gate is not None or limit is not None:
                self._rules[name] = (gate, limit)
        self._wildcard = "*" in c.cors_origins
        self._origins = frozenset(o.encode() for o in c.cors_origins)
        self._handle_signals = handle_signals
        self.metrics = Metrics()
        self.pusher: Pusher | None = None
        self.spool: Spool | None = None
        self.draining = False
        self._inflight = 0
        self._idle: asyncio.Event | None = None
        self._redis: Any = None
        self._link: Link | None = None
        #: The pages' state (collector/web.py), made on the first page request.
        self.web: web.WebState | None = None
        gif_base: Headers = [_GIF_TYPE, _NO_STORE, (b"content-length", b"43")]
        self._gif_headers = gif_base
        self._cors_static: Headers = [(b"access-control-allow-origin", b"*"), _EXPOSE] if self._wildcard else []
        self._gif_ok_headers = gif_base + self._cors_static
        # The same message for every accepted pixel: servers only read it.
        self._gif_ok_start: Message = {"type": "http.response.start", "status": 200, "headers": self._gif_ok_headers}
        # The 2016 URLs (collector/legacy.py), looked up only when no route of ours matched.
        self._legacy = legacy.build(self)
        # The Segment and Snowplow paths (collector/protocols/) join the same after-a-miss lookup.
        # Imported here: the routes module builds on this one.
        from collector.protocols import routes as protocol_routes

        self._legacy.update(protocol_routes.build(self))

    # -- lifecycle -------------------------------------------------------------------

    async def startup(self) -> None:
        self._redis = make_redis(self.cfg)
        self._link = make_link(self.cfg)
        self.spool = Spool(self.cfg.collector.spool_dir, self.cfg.collector.spool_max_bytes).open()
        self.pusher = Pusher(self.cfg, self._link, self.spool, self.metrics)
        self.pusher.start()
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self) -> None:
        """Readiness turns 503 at once, queued batches are written at once, then
        granian's own shutdown runs.

        granian's worker handler answers SIGINT and SIGTERM alike; ours replaces
        it for SIGTERM, so it is handed on as SIGINT. granian then stops
        accepting and waits for the open requests -- which wait for their batch,
        hence ``hurry`` first -- before the lifespan shutdown below drains the rest.
        """
        self.begin_drain()
        os.kill(os.getpid(), signal.SIGINT)

    def begin_drain(self) -> None:
        self.draining = True
        self.metrics.draining.set(1)
        if self.pusher is not None:
            self.pusher.hurry()

    async def shutdown(self) -> None:
        """Finish in-flight requests and queued events within collector.drain_timeout_s."""
        self.begin_drain()
        deadline = time.monotonic() + self.cfg.collector.drain_timeout_s
        if self._inflight:
            # Only now is there someone to tell: requests set it as the count hits zero.
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), max(deadline - time.monotonic(), 0.0))
        if self.pusher is not None:
            await self.pusher.drain(max(deadline - time.monotonic(), 0.1))
        self.metrics.flush()
        if self._link is not None:
            self._link.close()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        if self.web is not None:
            with contextlib.suppress(Exception):
                await self.web.aclose()
        if self.spool is not None:
            self.spool.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                _freeze_heap()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- requests ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            self._inflight += 1
            try:
                await self._http(scope, receive, send)
            finally:
                self._inflight -= 1
                if not self._inflight and self._idle is not None:
                    self._idle.set()
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        if len(scope.get("raw_path") or path) + len(scope["query_string"]) > self._max_url:
            stream, route = "-", "other"
            status = await self._error(
                send,
                414,
                "url",
                "max_url_bytes",
                f"URL longer than {self._max_url} bytes",
                pixel=path.startswith("/b/"),
            )
        elif len(scope["headers"]) > self._max_headers:
            stream, route = "-", "other"
            status = await self._error(
                send,
                431,
                "headers",
                "max_headers",
                f"more than {self._max_headers} headers",
                pixel=path.startswith("/b/"),
            )
        elif path.startswith("/b/"):
            stream, route = path[3:], "pixel"
            status = await self._pixel(stream, scope, method, send)
        elif path.startswith("/e/"):
            stream, route = path[3:], "events"
            status = await self._events(stream, scope, method, receive, send)
        else:
            stream, route = "-", "other"
            status = await self._other(path, method, scope, receive, send)
        if stream != "-" and stream not in self._validators:
            stream = "-"  # unknown names never become label values
        self.metrics.request(stream, status, route, time.perf_counter() - t0)

    # pixel ------------------------------------------------------------------------------

    async def _pixel(self, name: str, scope: Scope, method: str, send: Send) -> int:
        validator = self._validators.get(name)
        if validator is None:
            return await self._error(send, 404, "stream", "unknown", f"no stream named {name!r}", pixel=True)
        if method != "GET" and method != "HEAD":
            if method == "OPTIONS":
                return await self._preflight(scope, send)
            return await self._error(
                send, 405, "method", "allowed", "use GET or OPTIONS", pixel=True, allow=b"GET, HEAD, OPTIONS"
            )
        ip, ua, device = self._client(scope)
        refused = self._admit(name, scope, ip, 1)
        if refused is not None:
            return await self._refuse(name, send, refused, pixel=True)
        try:
            row = self._stamp(validator.query_values(scope["query_string"]), ip, ua, device)
        except Invalid as exc:
            self._rejected(name, exc)
            return await self._error(send, 400, exc.field, exc.rule, exc.detail, pixel=True)
        try:
            await self._submit(name, validator, [row])
        except Unavailable as exc:
            return await self._error(send, 503, "spool", "full", str(exc), pixel=True)
        if self._wildcard:
            await send(self._gif_ok_start)
        else:
            await send({"type": "http.response.start", "status": 200, "headers": self._gif_headers + self._cors(scope)})
        await send(_GIF_BODY if method == "GET" else _EMPTY_BODY)
        return 200

    # events -----------------------------------------------------------------------------

    async def _events(
        self,
        name: str,
        scope: Scope,
        method: str,
        receive: Receive,
        send: Send,
        validator: StreamValidator | None = None,
        plain_ok: bool = False,
    ) -> int:
        """``validator``: a legacy route's profile; ``plain_ok``: answer an empty text/plain
        200 as the 2016 form endpoint did, instead of the JSON count."""
        if validator is None:
            validator = self._validators.get(name)
        if validator is None:
            return await self._error(send, 404, "stream", "unknown", f"no stream named {name!r}")
        if method != "POST":
            if method == "OPTIONS":
                return await self._preflight(scope, send)
            return await self._error(send, 405, "method", "allowed", "use POST or OPTIONS", allow=b"POST, OPTIONS")
        ip, ua, device = self._client(scope)
        bodies = self._bodies
        count = bodies.get(ip, 0)
        if count >= self._max_bodies_per_ip > 0 and not self._client_ip.is_trusted(ip):
            return await self._refuse(
                name,
                send,
                _Reject(
                    429,
                    "ip",
                    "max_bodies_per_ip",
                    f"{ip} already has {count} request bodies in flight (collector.max_bodies_per_ip)",
                    1,
                ),
            )
        bodies[ip] = count + 1
        held = [0]  # body bytes this request holds of the worker's max_pending_body_bytes
        try:
            return await self._accept_events(name, validator, scope, receive, send, ip, ua, device, held, plain_ok)
        finally:
            self._pending -= held[0]
            left = bodies[ip] - 1
            if left:
                bodies[ip] = left
            else:
                del bodies[ip]

    async def _accept_events(
        self,
        name: str,
        validator: StreamValidator,
        scope: Scope,
        receive: Receive,
        send: Send,
        ip: str,
        ua: str,
        device: str,
        held: list[int],
        plain_ok: bool = False,
    ) -> int:
        rules = self._rules.get(name)
        if rules is not None and rules[0] is not None:
            # Before the body is read: a refused sender costs no body buffering.
            denied = rules[0].check(scope["headers"])
            if denied is not None:
                return await self._refuse(name, send, _Reject(*denied))
        try:
            events, from_text, is_batch = await self._read_events(scope, receive, held)
            refused = self._admit(name, None, ip, len(events))
            if refused is not None:
                raise refused
            rows: list[list[Any]] = []
            for i, event in enumerate(events):
                try:
                    if type(event) is not dict:
                        raise Invalid("body", "type", "each event must be a JSON object")
                    rows.append(self._row(validator, event, from_text, ip, ua, device))
                except Invalid as exc:
                    if is_batch:
                        exc.index = i
                    raise
        except Invalid as exc:
            self._rejected(name, exc)
            return await self._error(send, 400, exc.field, exc.rule, exc.detail, index=exc.index)
        except _Reject as rej:
            return await self._refuse(name, send, rej)
        # Counted before the hand-off: the writer may extend this very list with
        # other requests' rows (the first request of a round lends it its list).
        accepted = len(rows)
        try:
            await self._submit(name, validator, rows)
        except Unavailable as exc:
            return await self._error(send, 503, "spool", "full", str(exc))
        body = b'{"accepted":%d}' % accepted if not plain_ok else b""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    _JSON_TYPE if not plain_ok else _TEXT_TYPE,
                    _NO_STORE,
                    (b"content-length", b"%d" % len(body)),
                    *self._cors(scope),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return 200

    async def _read_events(self, scope: Scope, receive: Receive, held: list[int]) -> tuple[Any, bool, bool]:
        """The events of a POST body: a list, whether values are form text, whether
        the body was a JSON array.

        A body that starts with ``{`` or ``[`` is JSON whatever the content type
        says: ``navigator.sendBeacon`` and ``curl -d`` label JSON as text/plain or
        form data, and no form body starts with a brace.
        """
        content_type = b""
        encoding = b""
        for key, value in scope["headers"]:
            if key == b"content-length":
                if value.isdigit() and int(value) > self._max_body:
                    raise _Reject(413, "body", "max_body_bytes", f"body larger than {self._max_body} bytes")
            elif key == b"content-type":
                content_type = value.lower()
            elif key == b"content-encoding":
                encoding = value.strip().lower()
        body = await self._read_body(receive, held)
        if encoding == b"gzip":
            body = self._gunzip(body)
            self._hold(held, len(body))
        elif encoding not in (b"", b"identity"):
            raise _Reject(415, "content-encoding", "supported", "only gzip is accepted")
        if not body.strip():
            raise Invalid("body", "required", "the body is empty")
        if content_type.startswith(b"application/x-www-form-urlencoded") and body.lstrip()[:1] not in (b"{", b"["):
            return [parse_query(body)], True, False
        data = self._decode_json(body, counted=encoding == b"gzip")
        if type(data) is list:
            if len(data) > self._max_batch:
                raise _Reject(413, "body", "max_batch_events", f"more than {self._max_batch} events in one array")
            if not data:
                raise Invalid("body", "required", "the array is empty")
            return data, False, True
        return [data], False, False

    def _too_many_values(self) -> _Reject:
        return _Reject(
            413,
            "body",
            "max_json_values",
            f"more than {self._max_values} JSON values (commas and brackets) in the body",
        )

    def _decode_json(self, body: bytes, *, counted: bool) -> Any:
        if not counted and len(body) > self._max_values:
            # Counted before decoding: 4 MB of `[{},{},...]` is 1.4 M objects (~100 MiB, ~180 ms)
            # once materialised. Every value but a container's first follows a comma, and every
            # container opens with a bracket, so this bounds the values (commas in strings only
            # make it larger). A body shorter than the limit cannot be over it.
            values = body.count(b",") + body.count(b"[") + body.count(b"{")
            if values > self._max_values:
                raise self._too_many_values()
        try:
            return _json_decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            # msgspec raises UnicodeDecodeError for invalid UTF-8 and RecursionError past ~1000 levels.
            detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise Invalid("body", "json", f"not valid JSON ({detail})") from None

    def _hold(self, held: list[int], n: int) -> None:
        """Count ``n`` more body bytes against the worker's max_pending_body_bytes."""
        if self._pending + n > self._max_pending:
            raise _Reject(
                503,
                "body",
                "max_pending_body_bytes",
                f"this worker already holds {self._pending} bytes of request bodies; retry shortly",
            )
        self._pending += n
        held[0] += n

    async def _read_body(self, receive: Receive, held: list[int]) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._body_timeout):
                while True:
                    message: Message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Reject(400, "body", "complete", "the client went away mid-body")
                    chunk = message.get("body", b"")
                    if chunk:
                        size += len(chunk)
                        if size > self._max_body:
                            raise _Reject(413, "body", "max_body_bytes", f"body larger than {self._max_body} bytes")
                        self._hold(held, len(chunk))
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise _Reject(408, "body", "body_timeout_s", f"body not received within {self._body_timeout:g}s") from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _gunzip(self, body: bytes) -> bytes:
        """Inflate in steps, counting JSON values as they appear: a bomb is refused
        after its first ~100,000 values (~300 KB of ``{},``), not after 4 MB."""
        inflater = zlib.decompressobj(wbits=31)
        parts: list[bytes] = []
        size = values = 0
        data = body
        is_json: bool | None = None
        try:
            while True:
                out = inflater.decompress(data, INFLATE_STEP_BYTES)
                data = inflater.unconsumed_tail
                size += len(out)
                if size > self._max_inflated:
                    raise _Reject(
                        413, "body", "max_decompressed_bytes", f"body inflates to more than {self._max_inflated} bytes"
                    )
                if is_json is None and out.strip():
                    is_json = out.lstrip()[:1] in (b"{", b"[")
                if is_json:
                    values += out.count(b",") + out.count(b"[") + out.count(b"{")
                    if values > self._max_values:
                        raise self._too_many_values()
                parts.append(out)
                if not data and len(out) < INFLATE_STEP_BYTES:
                    break
        except zlib.error:
            raise Invalid("body", "gzip", "not valid gzip data") from None
        if not inflater.eof:
            raise Invalid("body", "gzip", "truncated gzip data")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # shared -------------------------------------------------------------------------------

    def _client(self, scope: Scope) -> tuple[str, str, str]:
        """The request's client IP (through trusted proxies), user agent and device class."""
        ua = ""
        xff: str | None = None
        real_ip: str | None = None
        for key, value in scope["headers"]:
            if key == b"user-agent":
                ua = value.decode("latin-1")
            elif key == b"x-forwarded-for":
                xff = value.decode("latin-1")
            elif key == b"x-real-ip":
                real_ip = value.decode("latin-1")
        if len(ua) > self._max_ua:
            ua = ua[: self._max_ua]
        client = scope.get("client")
        peer = client[0] if client else ""
        return self._client_ip.resolve(peer, xff, real_ip), ua, self._device(ua)

    def _row(
        self, validator: StreamValidator, event: dict[str, Any], from_text: bool, ip: str, ua: str, device: str
    ) -> list[Any]:
        return self._stamp(validator.values(event, from_text), ip, ua, device)

    def _stamp(self, values: list[Any], ip: str, ua: str, device: str) -> list[Any]:
        """The row: the server's columns (event id, received_at, ip, user agent, device), then ``values``."""
        now_ns = time.time_ns()
        store = self._ip_store
        return [self._ids.new(now_ns), now_ns // 1000, ip if store is None else store(ip), ua, device, *values]

    def _admit(self, name: str, scope: Scope | None, ip: str, n: int) -> _Reject | None:
        """The stream's access rules (when ``scope`` is given) and the volume limits
        for ``n`` events from ``ip``: None, or the refusal."""
        rules = self._rules.get(name) if self._rules else None
        limit: TokenBuckets | None = None
        if rules is not None:
            gate, limit = rules
            if gate is not None and scope is not None:
                denied = gate.check(scope["headers"])
                if denied is not None:
                    return _Reject(*denied)
        ip_limit = self._ip_limit
        if ip_limit is None and limit is None:
            return None
        now = time.monotonic()
        if ip_limit is not None:
            wait = ip_limit.take(ip, n, now)
            if wait:
                c = self.cfg.collector
                return _Reject(
                    429,
                    "ip",
                    "ip_rate_per_s",
                    f"{ip} sent more than collector.ip_rate_per_s = {c.ip_rate_per_s:g} events/s (burst {c.ip_burst})",
                    retry_after(wait),
                )
        if limit is not None:
            wait = limit.take(name, n, now)
            if wait:
                rule = self.cfg.collector.access[name]
                return _Reject(
                    429,
                    "stream",
                    "rate_per_s",
                    f"more than collector.access.{name}.rate_per_s = {rule.rate_per_s:g} events/s (burst {rule.burst})",
                    retry_after(wait),
                )
        return None

    async def _refuse(self, name: str, send: Send, rej: _Reject, *, pixel: bool = False) -> int:
        if rej.status < 500:  # a full body budget is the worker's state, not the client's mistake
            self._rejected(name, rej.invalid)
        inv = rej.invalid
        return await self._error(
            send, rej.status, inv.field, inv.rule, inv.detail, pixel=pixel, retry_after=rej.retry_after
        )

    async def _submit(self, name: str, validator: StreamValidator, rows: list[list[Any]]) -> None:
        pusher = self.pusher
        if pusher is None or pusher.stopped:
            raise Unavailable("the collector is shutting down")
        await pusher.submit(name, validator.columns, rows)

    def _rejected(self, stream: str, exc: Invalid) -> None:
        self.metrics.reject(stream, exc.rule)
        if self.pusher is not None:
            self.pusher.rejected(stream, exc.field, exc.rule)

    def _cors(self, scope: Scope) -> Headers:
        if self._wildcard:
            return self._cors_static
        for key, value in scope["headers"]:
            if key == b"origin":
                if value in self._origins:
                    return [(b"access-control-allow-origin", value), (b"vary", b"Origin"), _EXPOSE]
                break
        return [(b"vary", b"Origin")]

    async def _preflight(self, scope: Scope, send: Send) -> int:
        await send({"type": "http.response.start", "status": 204, "headers": _PREFLIGHT + self._cors(scope)})
        await send({"type": "http.response.body", "body": b""})
        return 204

    async def _error(
        self,
        send: Send,
        status: int,
        field: str,
        rule: str,
        detail: str,
        *,
        pixel: bool = False,
        index: int | None = None,
        allow: bytes | None = None,
        retry_after: int | None = None,
    ) -> int:
        """Every error names the field (or limit) and the rule, in a header and the body."""
        err = Invalid(field, rule, detail, index)
        headers: Headers = [(b"x-oceanus-error", err.header().encode("latin-1")), _NO_STORE, *self._cors_static]
        if allow is not None:
            headers.append((b"allow", allow))
        if retry_after is not None:
            headers.append((b"retry-after", b"%d" % retry_after))
        elif status == 503:
            headers.append((b"retry-after", b"5"))
        if status == 401:
            headers.append((b"www-authenticate", b'Basic realm="oceanus"'))
        if pixel:
            body = GIF
            headers.append(_GIF_TYPE)
        else:
            body = _json_encode({"error": err.as_dict()})
            headers.append(_JSON_TYPE)
        headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return status

    # other routes ---------------------------------------------------------------------------

    async def _other(self, path: str, method: str, scope: Scope, receive: Receive, send: Send) -> int:
        old = self._legacy.get(path)
        if old is not None:
            return await old(self, scope, method, receive, send)
        if method == "GET" or method == "HEAD":
            route = self._routes.get(path)
            if route is not None:
                return await route(self, send)
            if method == "GET" and await web.handle(scope, receive, send, self):
                return 200
        return await self._error(send, 404, "path", "unknown", f"no route for {path}")

    async def _healthz(self, send: Send) -> int:
        return await self._text(send, 200, b"ok\n")

    async def _readyz(self, send: Send) -> int:
        if self.draining:
            return await self._text(send, 503, b"draining\n")
        if self.pusher is None or not self.pusher.ready:
            return await self._text(send, 503, b"redis unreachable and spool full\n")
        return await self._text(send, 200, b"ready\n")

    async def _metrics(self, send: Send) -> int:
        body, content_type = self.metrics.render()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return 200

    async def _text(self, send: Send, status: int, body: bytes) -> int:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [_TEXT_TYPE, _NO_STORE, (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return status

    async def _openapi(self, send: Send) -> int:
        # Built once per worker from the stream config: the document cannot drift from the validator.
        body = self._openapi_body
        if body is None:
            from collector import openapi

            body = self._openapi_body = _json_encode(openapi.build(self.cfg))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [_JSON_TYPE, *self._cors_static, (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return 200

    _openapi_body: bytes | None = None

    #: GET routes the app answers itself.
    _routes: ClassVar[dict[str, Callable[[App, Send], Awaitable[int]]]] = {
        "/healthz": _healthz,
        "/readyz": _readyz,
        "/metrics": _metrics,
        "/openapi.json": _openapi,
    }


def make_link(cfg: Config) -> Link:
    """The writer's connection: one Redis, or a Redis Cluster for a ``redis+cluster://`` URL,
    either ending each round with ``WAIT redis.min_replicas_ack redis.wait_timeout_ms`` when set."""
    r = cfg.redis
    wait = {"wait_replicas": r.min_replicas_ack, "wait_timeout_ms": r.wait_timeout_ms}
    if r.cluster:
        # Imported only here: a one-instance collector never loads the cluster link.
        from collector.cluster import ClusterLink

        return ClusterLink(r.url, r.timeout_s, **wait)
    return RedisLink(r.url, r.timeout_s, **wait)


def _freeze_heap() -> None:
    """Put everything alive once the worker is up out of the cyclic collector's reach.

    A worker holds ~48k GC-tracked objects after startup (modules, config,
    prometheus_client, redis-py, granian), nearly all of them for its whole
    life. Under ``python -m bench collector`` a full (generation 2) collection
    over them took 21-37 ms, about once per 10 s per worker: a stall for every
    request in flight, and the one GC pause that reaches the tail. Frozen, they
    are never scanned again (a full collection then covers the ~1k objects made
    since). The thresholds stay at their defaults: what a request allocates dies
    by reference count, so young collections ran only 2-3 times a second at
    under 0.5 ms each, and a larger generation-0 threshold would only make each
    of them longer (measured: no change in p99 with 50,000).

    Called from the ASGI lifespan only, so an app started in-process (tests)
    leaves its host's collector alone.
    """
    gc.collect()
    gc.freeze()


def create_app() -> App:
    """granian's factory target: config from ``OCEANUS_CONFIG`` and the environment."""
    from oceanus import config

    return App(config.load(), handle_signals=True)
