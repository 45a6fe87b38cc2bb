"""The 2016 oceanus's URLs, answered the way its clients notice (docs/MIGRATION.md).

Every route comes from the config: a stream's ``aliases`` (``/swallow``,
``/pirate/{site}``, ``/gaze``, ``/pierce``, each with the stream profile that
reproduces the 2016 validation) and ``collector.legacy_routes`` for the rest
(``/lb``, ``/hc``, ``/rstatus``, ``/robots.txt``, ``/favicon.ico``, the tag's
old path). :func:`build` turns them into one dict at start-up; the app looks a
path up there only when no native route matched, so ``/b/`` and ``/e/`` pay
nothing for it.

Events on these routes pass the same limits, enrichment, durable ack and spool
as native ones: the handlers call the app's own steps. What differs is only the
answer a 2016 client expects (a GIF, ``ok``, an empty 200, a delayed redirect)
and, on internal networks, ``?debug=1``.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from pprint import pformat
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from prometheus_client import Counter

from collector import status, web
from collector._types import Receive, Scope, Send
from collector.pusher import Unavailable
from collector.validate import Invalid, StreamValidator, make_validator, parse_query
from oceanus.config import AliasKind, Config

if TYPE_CHECKING:
    from collector.app import App

#: The gaze chain (gaze.py): each step's event, then the step the redirect asks for.
GAZE_NEXT = {"open": "see", "see": "read", "read": "done"}
#: The 2016 /rstatus: 503 once the backlog holds more than this many times the rows of one write per stream.
BACKLOG_LIMIT_FACTOR = 2
ROBOTS = b"User-agent: *\nDisallow: /\n"
#: Answered to a Redis ping by /lb and /hc within this.
HEALTH_TIMEOUT_S = 2.0

Handler = Callable[["App", Scope, str, Receive, Send], Awaitable[int]]


class _Gazes:
    """Gaze requests of this worker waiting out their delay."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting = 0


class StreamRoute:
    """One legacy URL of a stream: its kind and its compiled profile."""

    __slots__ = ("debug", "evt_index", "gazes", "ignored", "kind", "path", "profile", "stream", "validator")

    def __init__(
        self,
        path: str,
        stream: str,
        kind: AliasKind,
        profile: str,
        validator: StreamValidator,
        debug: DebugNets,
        gazes: _Gazes,
        ignored: Counter,
    ) -> None:
        self.path = path
        self.stream = stream
        self.kind = kind
        self.profile = profile
        self.validator = validator
        # Row index of evt (the row starts with the 5 server columns, as the validator's columns do).
        self.evt_index = validator.columns.index("evt") if "evt" in validator.columns else -1
        self.debug = debug
        self.gazes = gazes
        self.ignored = ignored

    async def __call__(self, app: App, scope: Scope, method: str, receive: Receive, send: Send) -> int:
        if method == "OPTIONS":
            return await app._preflight(scope, send)
        if self.kind == "form" and method == "POST":
            return await app._events(self.stream, scope, method, receive, send, validator=self.validator, plain_ok=True)
        if method != "GET" and method != "HEAD":
            allow = b"GET, POST, OPTIONS" if self.kind == "form" else b"GET, HEAD, OPTIONS"
            return await app._error(
                send,
                405,
                "method",
                "allowed",
                f"use {allow.decode()}",
                allow=allow,
                pixel=self.kind in ("pixel", "gaze"),
            )
        return await self._get(app, scope, method, send)

    async def _get(self, app: App, scope: Scope, method: str, send: Send) -> int:
        pixel = self.kind in ("pixel", "gaze")
        name = self.stream
        ip, ua, device = app._client(scope)
        event: dict[str, Any] = parse_query(scope["query_string"])
        debug = event.pop("debug", None) is not None and self.debug.allows(ip)
        admit_ip = ip
        gated: Scope | None = scope
        if self.kind == "pierce":
            rules = app._rules.get(name)
            gate = rules[0] if rules is not None else None
            if gate is not None:
                # The write key first: it decides whether rad/ua may be read at all.
                denied = gate.check(scope["headers"])
                if denied is not None:
                    code, fname, rule, detail = denied
                    app._rejected(name, Invalid(fname, rule, detail))
                    return await app._error(send, code, fname, rule, detail)
                gated = None
            try:
                admit_ip, ua, device = self._pierce_client(app, name, ip, ua, device, event)
            except Invalid as exc:
                app._rejected(name, exc)
                return await app._error(send, 400, exc.field, exc.rule, exc.detail)
        refused = app._admit(name, gated, admit_ip, 1)
        if refused is not None:
            return await app._refuse(name, send, refused, pixel=pixel)
        parsed = dict(event) if debug else None
        try:
            row = app._row(self.validator, event, True, admit_ip, ua, device)
        except Invalid as exc:
            app._rejected(name, exc)
            if parsed is not None:
                return await self._debug(app, send, 400, parsed, None, f"refused: {exc.header()}", "not written")
            return await app._error(send, 400, exc.field, exc.rule, exc.detail, pixel=pixel)
        try:
            await app._submit(name, self.validator, [row])
        except Unavailable as exc:
            if parsed is not None:
                return await self._debug(app, send, 503, parsed, row, "valid", f"not written: {exc}")
            return await app._error(send, 503, "spool", "full", str(exc), pixel=pixel)
        if parsed is not None:
            return await self._debug(
                app, send, 200, parsed, row, "valid", "written (Redis, or the local spool while Redis is unreachable)"
            )
        if self.kind == "pierce":
            return await _plain(send, 200, b"ok", app._cors(scope))
        if self.kind == "form":
            return await _plain(send, 200, b"", app._cors(scope))
        if self.kind == "gaze":
            step = row[self.evt_index] if self.evt_index >= 0 else None
            if isinstance(step, str) and step in GAZE_NEXT:
                return await self._gaze(app, scope, send, step, GAZE_NEXT[step])
        return await _gif(send, 200, method, app._cors(scope))

    def _pierce_client(
        self, app: App, name: str, ip: str, ua: str, device: str, event: dict[str, Any]
    ) -> tuple[str, str, str]:
        """The end client's address and user agent from ``rad``/``ua`` when the sender
        may speak for it (a trusted proxy, or a write key the gate checked); else the
        sender's own, and the ignored parameters counted."""
        rad = event.pop("rad", None)
        given_ua = event.pop("ua", None)
        rules = app._rules.get(name)
        keyed = rules is not None and rules[0] is not None and bool(rules[0].keys)
        if not (keyed or app._client_ip.is_trusted(ip)):
            for param, value in (("rad", rad), ("ua", given_ua)):
                if value is not None:
                    self.ignored.labels(name, param).inc()
            return ip, ua, device
        if not rad:
            raise Invalid("rad", "required", "is required from a trusted sender (the end client's address)")
        try:
            addr = ipaddress.ip_address(rad.strip())
        except ValueError:
            raise Invalid("rad", "type", "is not an IP address") from None
        if not (addr.is_global or addr.is_private):
            raise Invalid("rad", "range", "is neither a global nor a private address")
        ua = (given_ua or "")[: app._max_ua]
        return str(addr), ua, app._device(ua)

    async def _gaze(self, app: App, scope: Scope, send: Send, step: str, following: str) -> int:
        """Wait, then redirect to the next step (gaze.py slept in its worker; here the
        wait is a timer, and at most ``collector.max_gazes`` wait at once)."""
        c = app.cfg.collector
        gazes = self.gazes
        if gazes.waiting >= c.max_gazes:
            # Redirecting at once would store a "read" that nobody read: the chain ends here.
            return await _gif(send, 200, "GET", app._cors(scope))
        wait = c.gaze_waits_s[list(GAZE_NEXT).index(step)] if len(c.gaze_waits_s) == len(GAZE_NEXT) else 0.0
        gazes.waiting += 1
        try:
            await asyncio.sleep(min(wait, c.body_timeout_s))
        finally:
            gazes.waiting -= 1
        pairs = [
            (k, following if k == "evt" else v)
            for k, v in parse_qsl(scope["query_string"].decode("utf-8", "replace"), keep_blank_values=True)
        ]
        location = (self.path + "?" + urlencode(pairs)).encode("latin-1", "replace")
        headers = [
            (b"location", location),
            (b"content-type", b"image/gif"),
            _NO_STORE,
            (b"content-length", b"%d" % len(_GIF)),
            *app._cors(scope),
        ]
        await send({"type": "http.response.start", "status": 302, "headers": headers})
        await send({"type": "http.response.body", "body": _GIF})
        return 302

    async def _debug(
        self,
        app: App,
        send: Send,
        status: int,
        parsed: dict[str, Any],
        row: list[Any] | None,
        verdict: str,
        written: str,
    ) -> int:
        """The 2016 debug page without what must never leave the server: no headers,
        no environment, no Redis keys."""
        stored = "-" if row is None else pformat(dict(zip(self.validator.columns, row, strict=True)), width=100)
        body = (
            f"oceanus debug\n\nroute: {self.path} -> stream {self.stream}"
            f"{f' (profile {self.profile})' if self.profile else ''}\n\nparameters:\n{pformat(parsed, width=100)}"
            f"\n\nvalidation: {verdict}\n\nrow:\n{stored}\n\nredis: {written}\n"
        ).encode("utf-8", "replace")
        return await _plain(send, status, body, [])


class DebugNets:
    """``collector.debug_networks``: who may see a debug answer."""

    __slots__ = ("nets",)

    def __init__(self, networks: tuple[str, ...]) -> None:
        self.nets = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def allows(self, ip: str) -> bool:
        if not self.nets:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.nets)


_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
_NO_STORE = (b"cache-control", b"no-store, no-cache, must-revalidate, max-age=0")
_TEXT = (b"content-type", b"text/plain; charset=utf-8")


async def _gif(send: Send, status: int, method: str, cors: list[tuple[bytes, bytes]]) -> int:
    body = _GIF if method != "HEAD" else b""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"image/gif"), _NO_STORE, (b"content-length", b"%d" % len(_GIF)), *cors],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return status


async def _plain(send: Send, status: int, body: bytes, cors: list[tuple[bytes, bytes]]) -> int:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_TEXT, _NO_STORE, (b"content-length", b"%d" % len(body)), *cors],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return status


# -- routes that are no stream's ---------------------------------------------------------


async def _health(app: App, scope: Scope, method: str, receive: Receive, send: Send) -> int:
    """/lb, /hc: Redis answers a ping (healthcheck.py)."""
    redis = app._redis
    try:
        if redis is None:
            raise ConnectionError("not started")
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            await redis.ping()
    except Exception:  # noqa: BLE001 - any failure to reach Redis is the answer itself
        return await _plain(send, 503, b"503 server error\n", [])
    return await _plain(send, 200, b"ok\n", [])


async def _backlog(app: App, scope: Scope, method: str, receive: Receive, send: Send) -> int:
    """/rstatus: 503 when the rows waiting in Redis exceed twice one write per stream
    (healthcheck.py's RedisStatusResource, with ``batch.max_rows`` for ``chunk_num``)."""
    cfg: Config = app.cfg
    limit = BACKLOG_LIMIT_FACTOR * sum(s.batch.max_rows for s in cfg.streams.values())
    if app._redis is None:
        return await _plain(send, 503, b"503 server error\n", [])
    snap = await status.snapshot(cfg, app._redis)
    if not snap.redis_up:
        return await _plain(send, 503, b"503 server error\n", [])
    lists = {s.name: s.backlog_rows for s in snap.streams}
    total = sum(lists.values())
    query = parse_query(scope["query_string"])
    if "debug" in query:
        ip = app._client(scope)[0]
        if DebugNets(cfg.collector.debug_networks).allows(ip):
            body = f"Redis status\n\nlists: {lists}\ntotal/limit: {total}/{limit}\n".encode()
        else:
            body = f"Your ip {ip} is not included in collector.debug_networks".encode()
        return await _plain(send, 200, body, [])
    if total > limit:
        return await _plain(send, 503, f"over delay limit!\nlists: {lists}\ntotal/limit:{total}/{limit}".encode(), [])
    return await _plain(send, 200, b"ok", [])


async def _robots(app: App, scope: Scope, method: str, receive: Receive, send: Send) -> int:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [_TEXT, (b"cache-control", b"public, max-age=86400"), (b"content-length", b"%d" % len(ROBOTS))],
        }
    )
    await send({"type": "http.response.body", "body": ROBOTS if method != "HEAD" else b""})
    return 200


async def _favicon(app: App, scope: Scope, method: str, receive: Receive, send: Send) -> int:
    await send(
        {"type": "http.response.start", "status": 204, "headers": [(b"cache-control", b"public, max-age=86400")]}
    )
    await send({"type": "http.response.body", "body": b""})
    return 204


async def _tag(app: App, scope: Scope, method: str, receive: Receive, send: Send) -> int:
    """The tag at its 2016 path, with the 2016 API: the same bytes, ETag and caching as /oceanus-2016.js."""
    await web.handle({**scope, "path": "/oceanus-2016.js"}, receive, send, app)
    return 200


_FIXED: dict[str, Handler] = {
    "health": _health,
    "backlog": _backlog,
    "robots": _robots,
    "favicon": _favicon,
    "tag": _tag,
}


def build(app: App) -> dict[str, Handler]:
    """Every legacy path of the config -> its handler; built once per worker."""
    cfg = app.cfg
    c = cfg.collector
    debug = DebugNets(c.debug_networks)
    gazes = _Gazes()
    ignored = Counter(
        "oceanus_legacy_params_ignored",
        "rad/ua parameters of /pierce from senders that may not set them, ignored",
        ["stream", "param"],
        registry=app.metrics.registry,
    )
    routes: dict[str, Handler] = {}
    for stream in cfg.streams.values():
        validators: dict[str, StreamValidator] = {}
        for alias in stream.aliases:
            validator = validators.get(alias.profile)
            if validator is None:
                profile = stream.profiles[alias.profile] if alias.profile else None
                validator = validators[alias.profile] = make_validator(stream, c, profile)
            routes[alias.path] = StreamRoute(
                alias.path, stream.name, alias.kind, alias.profile, validator, debug, gazes, ignored
            )
    for path, what in c.legacy_routes.items():
        routes[path] = _get_only(_FIXED[what])
    return routes


def _get_only(handler: Handler) -> Handler:
    async def route(app: App, scope: Scope, method: str, receive: Receive, send: Send) -> int:
        if method != "GET" and method != "HEAD":
            return await app._error(send, 405, "method", "allowed", "use GET", allow=b"GET, HEAD")
        return await handler(app, scope, method, receive, send)

    return route
