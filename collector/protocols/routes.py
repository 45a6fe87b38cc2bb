"""The HTTP side of the Segment and Snowplow protocols: paths, write keys, cookies, answers.

:func:`build` makes one dict of path -> handler per worker at start-up; the app
looks a path up there only after its own routes missed (as for the 2016 URLs),
so ``/b/`` and ``/e/`` pay nothing for these. Events go through the app's own
steps: the per-client body limits, gzip and JSON limits, the stream's volume
limits, its validator, enrichment (``ip``, ``ua``, ``device``), the durable
ack and the spool.

Answers, as the SDKs expect them:

- Segment: ``200 {"success": true}``; errors ``{"code", "message", "error"}``
  (``code`` and ``message`` are what analytics-python reads) and the usual
  ``X-Oceanus-Error``. A missing or unknown write key is a 401 (the SDKs do not
  retry it); a body over the spec's limits a 400 naming the limit;
- Snowplow: ``GET /i`` the GIF, ``POST tp2`` ``200 ok``; CORS with credentials
  (the JavaScript tracker posts ``withCredentials``), so the ``Origin`` is echoed
  and never ``*``; the network user id cookie unless the tracker sent
  ``SP-Anonymous`` (then no cookie is read or set, ``nuid`` is all zeros and
  ``ip`` is not stored, as the Snowplow collector does).

``collector.access.<stream>`` rate limits apply to both; its origin list and
write keys apply to the Snowplow routes (as to ``/b/``), while Segment routes
check the Segment write keys instead.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from collector._types import Receive, Scope, Send
from collector.access import _basic_user
from collector.app import GIF, App, _json_encode, _Reject
from collector.protocols import segment, snowplow
from collector.protocols.ids import placement_us, stable_id
from collector.pusher import Unavailable
from collector.validate import Invalid, StreamValidator, parse_pairs
from oceanus.config import Config
from oceanus.errors import ConfigError

Handler = Callable[[App, Scope, str, Receive, Send], Awaitable[int]]
Headers = list[tuple[bytes, bytes]]

_NO_STORE = (b"cache-control", b"no-store, no-cache, must-revalidate, max-age=0")
_JSON = (b"content-type", b"application/json")
_SUCCESS = b'{"success":true}'
_OK = b"ok"
_PREFLIGHT: Headers = [
    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
    # Authorization: RudderStack's and Segment's server-side-style calls from browsers;
    # SP-Anonymous: the Snowplow tracker's anonymous mode.
    (b"access-control-allow-headers", b"Content-Type, Content-Encoding, Authorization, SP-Anonymous"),
    (b"access-control-max-age", b"86400"),
    (b"content-length", b"0"),
]
#: Words on a Segment write-key line: ``KEY`` or ``KEY STREAM``.
_KEY_PARTS_MAX = 2


def load_segment_keys(cfg: Config, env: dict[str, str] | None = None) -> dict[bytes, tuple[str, bytes]]:
    """SHA-256 of each write key -> (its stream, the key of its event ids); ConfigError naming the key."""
    seg = cfg.collector.segment
    env = dict(os.environ) if env is None else env
    lines: list[tuple[str, str]] = []
    if seg.keys_env:
        if seg.keys_env not in env:
            raise ConfigError(f"collector.segment.keys_env: the environment variable {seg.keys_env} is not set")
        lines += [("collector.segment.keys_env", line) for line in env[seg.keys_env].splitlines()]
    if seg.keys_file:
        try:
            with open(seg.keys_file, encoding="utf-8") as f:
                lines += [("collector.segment.keys_file", line) for line in f.read().splitlines()]
        except OSError as exc:
            raise ConfigError(f"collector.segment.keys_file: cannot read {seg.keys_file} ({exc.strerror})") from None
    keys: dict[bytes, tuple[str, bytes]] = {}
    for where, line in lines:
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) > _KEY_PARTS_MAX:
            raise ConfigError(f"{where}: a line is KEY or KEY STREAM, not {len(parts)} words")
        stream = parts[1] if len(parts) == _KEY_PARTS_MAX else seg.stream
        if stream not in cfg.streams:
            raise ConfigError(f"{where}: no stream named {stream!r} for a write key")
        digest = hashlib.sha256(parts[0].encode()).digest()
        # The id key is another digest of the key: ids never reveal the key, nor its lookup digest.
        keys[digest] = (stream, hashlib.sha256(b"oceanus segment event id\0" + parts[0].encode()).digest())
    if (seg.keys_env or seg.keys_file) and not keys:
        raise ConfigError("collector.segment: keys_env/keys_file hold no key; every call would be refused")
    return keys


class Protocols:
    """The state both protocols' handlers share: per worker, made once."""

    def __init__(self, app: App) -> None:
        c = app.cfg.collector
        self.segment_keys = load_segment_keys(app.cfg) if c.segment.stream else {}
        self.segment_window_us = round(c.segment.own_time_window_s * 1_000_000)
        sp = c.snowplow
        self.snowplow_stream = sp.stream
        self.snowplow_window_us = round(sp.own_time_window_s * 1_000_000)
        self.snowplow_id_key = hashlib.sha256(b"oceanus snowplow event id\0" + sp.stream.encode()).digest()
        self.cookie_name = sp.cookie_name.encode() if sp.cookie else b""
        attrs = f"; Path=/; Max-Age={sp.cookie_max_age_s}; HttpOnly"
        if sp.cookie_domain:
            attrs += f"; Domain={sp.cookie_domain}"
        attrs += "; SameSite=None; Secure" if sp.cookie_secure else "; SameSite=Lax"
        self.cookie_attrs = attrs.encode()
        self.cookie_max_age_s = sp.cookie_max_age_s

    # -- shared steps ------------------------------------------------------------------

    @staticmethod
    def cors(app: App, scope: Scope) -> Headers:
        """CORS with credentials: the allowed Origin echoed, never ``*``."""
        for key, value in scope["headers"]:
            if key == b"origin":
                if app._wildcard or value in app._origins:
                    return [
                        (b"access-control-allow-origin", value),
                        (b"access-control-allow-credentials", b"true"),
                        (b"vary", b"Origin"),
                        (b"access-control-expose-headers", b"X-Oceanus-Error"),
                    ]
                break
        return [(b"vary", b"Origin")]

    async def preflight(self, app: App, scope: Scope, send: Send) -> int:
        await send({"type": "http.response.start", "status": 204, "headers": _PREFLIGHT + self.cors(app, scope)})
        await send({"type": "http.response.body", "body": b""})
        return 204

    async def fail(
        self,
        app: App,
        scope: Scope,
        send: Send,
        status: int,
        inv: Invalid,
        *,
        stream: str = "",
        pixel: bool = False,
        retry_after: int | None = None,
        allow: bytes | None = None,
    ) -> int:
        """The error answer: ``X-Oceanus-Error`` and JSON naming the field (or limit) and rule."""
        if stream and status < 500:
            app._rejected(stream, inv)
        headers: Headers = [(b"x-oceanus-error", inv.header().encode("latin-1")), _NO_STORE, *self.cors(app, scope)]
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
            headers.append((b"content-type", b"image/gif"))
        else:
            body = _error_body(inv)
            headers.append(_JSON)
        headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return status

    async def refuse(
        self, app: App, scope: Scope, send: Send, rej: _Reject, stream: str, *, pixel: bool = False
    ) -> int:
        return await self.fail(
            app, scope, send, rej.status, rej.invalid, stream=stream, pixel=pixel, retry_after=rej.retry_after
        )

    async def read_json(self, app: App, scope: Scope, receive: Receive, held: list[int]) -> tuple[Any, int]:
        """The body's JSON value and its (inflated) size, under the app's body limits."""
        encoding = b""
        for key, value in scope["headers"]:
            if key == b"content-length":
                if value.isdigit() and int(value) > app._max_body:
                    raise _Reject(413, "body", "max_body_bytes", f"body larger than {app._max_body} bytes")
            elif key == b"content-encoding":
                encoding = value.strip().lower()
        body = await app._read_body(receive, held)
        if encoding == b"gzip":
            body = app._gunzip(body)
            app._hold(held, len(body))
        elif encoding not in (b"", b"identity"):
            raise _Reject(415, "content-encoding", "supported", "only gzip is accepted")
        if not body.strip():
            raise Invalid("body", "required", "the body is empty")
        return app._decode_json(body, counted=encoding == b"gzip"), len(body)

    async def with_body(
        self, app: App, scope: Scope, send: Send, stream: str, ip: str, accept: Callable[[list[int]], Awaitable[int]]
    ) -> int:
        """Run ``accept`` holding one of the client's body slots (collector.max_bodies_per_ip), as /e/ does."""
        bodies = app._bodies
        count = bodies.get(ip, 0)
        if count >= app._max_bodies_per_ip > 0 and not app._client_ip.is_trusted(ip):
            return await self.refuse(
                app,
                scope,
                send,
                _Reject(
                    429,
                    "ip",
                    "max_bodies_per_ip",
                    f"{ip} already has {count} request bodies in flight (collector.max_bodies_per_ip)",
                    1,
                ),
                stream,
            )
        bodies[ip] = count + 1
        held = [0]
        try:
            return await accept(held)
        finally:
            app._pending -= held[0]
            left = bodies[ip] - 1
            if left:
                bodies[ip] = left
            else:
                del bodies[ip]

    async def submit(
        self,
        app: App,
        scope: Scope,
        send: Send,
        stream: str,
        validator: StreamValidator,
        rows: list[list[Any]],
        *,
        pixel: bool = False,
    ) -> int | None:
        """Hand the rows to the writer and wait for durability; an answer already sent, or None."""
        try:
            await app._submit(stream, validator, rows)
        except Unavailable as exc:
            return await self.fail(app, scope, send, 503, Invalid("spool", "full", str(exc)), pixel=pixel)
        return None

    # -- Segment -------------------------------------------------------------------------

    def segment_route(self, call: str | None) -> Handler:
        async def route(app: App, scope: Scope, method: str, receive: Receive, send: Send) -> int:
            if method == "OPTIONS":
                return await self.preflight(app, scope, send)
            if method != "POST":
                return await self.fail(
                    app, scope, send, 405, Invalid("method", "allowed", "use POST or OPTIONS"), allow=b"POST, OPTIONS"
                )
            ip, ua, device = app._client(scope)

            async def accept(held: list[int]) -> int:
                return await self._segment(app, scope, receive, send, call, ip, ua, device, held)

            return await self.with_body(app, scope, send, "", ip, accept)

        return route

    def _write_key(self, given: bytes | None) -> tuple[str, bytes] | Invalid | None:
        if not given:
            return None
        found = self.segment_keys.get(hashlib.sha256(given).digest())
        if found is None:
            return Invalid(
                "writeKey", "valid", "not a write key of this collector (collector.segment.keys_env/keys_file)"
            )
        return found

    async def _segment(
        self,
        app: App,
        scope: Scope,
        receive: Receive,
        send: Send,
        call: str | None,
        ip: str,
        ua: str,
        device: str,
        held: list[int],
    ) -> int:
        header_key: bytes | None = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                header_key = _basic_user(value)
                break
        # A key in the header is checked before the body is read: a wrong key costs no buffering.
        found = self._write_key(header_key)
        if isinstance(found, Invalid):
            return await self.fail(app, scope, send, 401, found)
        stream = found[0] if found is not None else ""
        try:
            body, size = await self.read_json(app, scope, receive, held)
            raw, sent_raw, body_key = segment.messages(body, call, size)
            if found is None:
                found = self._write_key(body_key.encode() if body_key is not None else None)
                if found is None:
                    return await self.fail(
                        app,
                        scope,
                        send,
                        401,
                        Invalid("writeKey", "required", "send the write key as the HTTP Basic user or as writeKey"),
                    )
                if isinstance(found, Invalid):
                    return await self.fail(app, scope, send, 401, found)
                stream = found[0]
            name, id_key = found
            validator = app._validators[name]
            refused = app._admit(name, None, ip, len(raw))
            if refused is not None:
                raise refused
            now_ns = time.time_ns()
            arrival_us = now_ns // 1000
            window = self.segment_window_us
            store = app._ip_store
            where = ip if store is None else store(ip)
            rows: list[list[Any]] = []
            collected = segment.stored_time(arrival_us)
            sent_us = segment.sent_time(sent_raw) if call is None else None
            for i, msg in enumerate(raw):
                try:
                    m = segment.decode(msg, call, sent_us, arrival_us, collected)
                    if m.message_id is None:
                        # Without a messageId nothing ties a retry to this call: a fresh id, no dedupe.
                        m.event["message_id"] = str(uuid.uuid4())
                        placed, event_id = arrival_us, app._ids.new(now_ns)
                    else:
                        placed = placement_us(m.own_us, arrival_us, window)
                        event_id = stable_id(placed, m.message_id, id_key)
                    rows.append([event_id, placed, where, ua, device, *validator.values(m.event, False)])
                except Invalid as exc:
                    if call is None:
                        exc.index = i
                    raise
        except Invalid as exc:
            return await self.fail(app, scope, send, 400, exc, stream=stream)
        except _Reject as rej:
            return await self.refuse(app, scope, send, rej, stream)
        answered = await self.submit(app, scope, send, name, validator, rows)
        if answered is not None:
            return answered
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [_JSON, _NO_STORE, (b"content-length", b"%d" % len(_SUCCESS)), *self.cors(app, scope)],
            }
        )
        await send({"type": "http.response.body", "body": _SUCCESS})
        return 200

    # -- Snowplow ------------------------------------------------------------------------

    def _nuid(self, scope: Scope) -> tuple[str | None, bool, Headers]:
        """(network user id, anonymous, Set-Cookie headers) of one request."""
        cookie: bytes | None = None
        for key, value in scope["headers"]:
            if key == b"sp-anonymous":
                return snowplow.ANONYMOUS_NUID, True, []
            if key == b"cookie" and self.cookie_name:
                cookie = value
        if not self.cookie_name:
            return None, False, []
        nuid = snowplow.valid_nuid(_cookie_value(cookie, self.cookie_name)) if cookie is not None else None
        if nuid is None:
            nuid = str(uuid.uuid4())
        # Set again on every answer, as the Snowplow collector does: the expiry slides.
        expires = (datetime.now(UTC) + timedelta(seconds=self.cookie_max_age_s)).strftime("%a, %d %b %Y %H:%M:%S GMT")
        value = self.cookie_name + b"=" + nuid.encode() + self.cookie_attrs + b"; Expires=" + expires.encode()
        return nuid, False, [(b"set-cookie", value)]

    def _snowplow_row(
        self,
        app: App,
        validator: StreamValidator,
        params: dict[str, Any],
        nuid: str | None,
        now_ns: int,
        collected: int | str,
        where: str | None,
        ua: str,
        device: str,
    ) -> list[Any]:
        arrival_us = now_ns // 1000
        ev = snowplow.decode(params, nuid, collected)
        if ev.eid is None:
            # A hand-made request without eid: a fresh one, no dedupe possible.
            ev.event["eid"] = str(uuid.uuid4())
            placed, event_id = arrival_us, app._ids.new(now_ns)
        else:
            placed = placement_us(ev.own_us, arrival_us, self.snowplow_window_us)
            event_id = stable_id(placed, ev.eid, self.snowplow_id_key)
        return [event_id, placed, where, ua, device, *validator.values(ev.event, True)]

    async def snowplow_get(self, app: App, scope: Scope, method: str, receive: Receive, send: Send) -> int:
        name = self.snowplow_stream
        if method == "OPTIONS":
            return await self.preflight(app, scope, send)
        if method != "GET" and method != "HEAD":
            return await self.fail(
                app,
                scope,
                send,
                405,
                Invalid("method", "allowed", "use GET or OPTIONS"),
                pixel=True,
                allow=b"GET, HEAD, OPTIONS",
            )
        validator = app._validators[name]
        ip, ua, device = app._client(scope)
        refused = app._admit(name, scope, ip, 1)
        if refused is not None:
            return await self.refuse(app, scope, send, refused, name, pixel=True)
        nuid, anonymous, cookie = self._nuid(scope)
        store = app._ip_store
        where = None if anonymous else ip if store is None else store(ip)
        params: dict[str, Any] = parse_pairs(scope["query_string"].decode("utf-8", "replace"))
        try:
            now_ns = time.time_ns()
            collected = segment.stored_time(now_ns // 1000)
            row = self._snowplow_row(app, validator, params, nuid, now_ns, collected, where, ua, device)
        except Invalid as exc:
            return await self.fail(app, scope, send, 400, exc, stream=name, pixel=True)
        answered = await self.submit(app, scope, send, name, validator, [row], pixel=True)
        if answered is not None:
            return answered
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"image/gif"),
                    _NO_STORE,
                    (b"content-length", b"%d" % len(GIF)),
                    *cookie,
                    *self.cors(app, scope),
                ],
            }
        )
        await send({"type": "http.response.body", "body": GIF if method == "GET" else b""})
        return 200

    async def snowplow_post(self, app: App, scope: Scope, method: str, receive: Receive, send: Send) -> int:
        name = self.snowplow_stream
        if method == "OPTIONS":
            return await self.preflight(app, scope, send)
        if method != "POST":
            return await self.fail(
                app, scope, send, 405, Invalid("method", "allowed", "use POST or OPTIONS"), allow=b"POST, OPTIONS"
            )
        ip, ua, device = app._client(scope)

        async def accept(held: list[int]) -> int:
            return await self._snowplow_post(app, scope, receive, send, ip, ua, device, held)

        return await self.with_body(app, scope, send, name, ip, accept)

    async def _snowplow_post(
        self, app: App, scope: Scope, receive: Receive, send: Send, ip: str, ua: str, device: str, held: list[int]
    ) -> int:
        name = self.snowplow_stream
        validator = app._validators[name]
        rules = app._rules.get(name)
        if rules is not None and rules[0] is not None:
            denied = rules[0].check(scope["headers"])
            if denied is not None:
                return await self.refuse(app, scope, send, _Reject(*denied), name)
        nuid, anonymous, cookie = self._nuid(scope)
        store = app._ip_store
        where = None if anonymous else ip if store is None else store(ip)
        try:
            body, _size = await self.read_json(app, scope, receive, held)
            items = snowplow.payload_items(body)
            if len(items) > app._max_batch:
                raise _Reject(413, "data", "max_batch_events", f"more than {app._max_batch} events in one body")
            refused = app._admit(name, None, ip, len(items))
            if refused is not None:
                raise refused
            now_ns = time.time_ns()
            collected = segment.stored_time(now_ns // 1000)
            rows: list[list[Any]] = []
            for i, item in enumerate(items):
                try:
                    if type(item) is not dict:
                        raise Invalid("data", "type", "each event must be a JSON object")
                    rows.append(self._snowplow_row(app, validator, item, nuid, now_ns, collected, where, ua, device))
                except Invalid as exc:
                    exc.index = i
                    raise
        except Invalid as exc:
            return await self.fail(app, scope, send, 400, exc, stream=name)
        except _Reject as rej:
            return await self.refuse(app, scope, send, rej, name)
        answered = await self.submit(app, scope, send, name, validator, rows)
        if answered is not None:
            return answered
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    _NO_STORE,
                    (b"content-length", b"%d" % len(_OK)),
                    *cookie,
                    *self.cors(app, scope),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _OK})
        return 200


def _error_body(inv: Invalid) -> bytes:
    return _json_encode({"code": inv.rule, "message": inv.header(), "error": inv.as_dict()})


def _cookie_value(header: bytes, name: bytes) -> str | None:
    for part in header.split(b";"):
        key, sep, value = part.strip().partition(b"=")
        if sep and key == name:
            return value.decode("latin-1")
    return None


def build(app: App) -> dict[str, Handler]:
    """Every path of the protocols that are on -> its handler; built once per worker."""
    c = app.cfg.collector
    protocols = Protocols(app)
    routes: dict[str, Handler] = {}
    if c.segment.stream:
        routes["/v1/batch"] = routes["/v1/b"] = protocols.segment_route(None)
        for call in segment.TYPES:
            routes[f"/v1/{call}"] = protocols.segment_route(call)
        for short, call in segment.SHORT.items():
            routes[f"/v1/{short}"] = protocols.segment_route(call)
    if c.snowplow.stream:
        routes["/i"] = routes["/com.snowplowanalytics.snowplow/i"] = protocols.snowplow_get
        routes["/com.snowplowanalytics.snowplow/tp2"] = protocols.snowplow_post
    return routes
