"""Browser-facing pages served by the collector: the tag, the demo page and the
live status page. The ingestion app hands every GET it does not route itself
to :func:`handle`.

Routes::

    GET /oceanus.js         the browser tag; ETag + Cache-Control, gzip when accepted
    GET /oceanus-2016.js    the same plus the 2016 tag's API (loaded by the tag on a page with the 2016 snippet)
    GET /demo, /demo/...    a page exercising the tag (``collector.demo``)
    GET /_/status           live status page (``collector.status_page``)
    GET /_/status.json      what the page polls (:func:`collector.status.snapshot`)

With ``collector.status_token`` set, both status routes want the token in an
``X-Oceanus-Token`` header, ``Authorization: Bearer``, or ``?token=``.

Everything static is read, rendered and compressed once per process; a
request only picks the prepared bytes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import msgspec

from collector import status
from collector._types import Receive, Scope, Send
from oceanus.config import Config, StreamConfig

if TYPE_CHECKING:
    from collector.app import App

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: Browsers reuse the tag this long without asking (1 h), then revalidate with
#: the ETag; a new tag version reaches every visitor within the hour.
TAG_MAX_AGE_S = 3600
#: ...and may keep using a stale copy for a day while revalidating in the background.
TAG_STALE_S = 86_400

Headers = list[tuple[bytes, bytes]]

_NO_STORE = (b"cache-control", b"no-store")
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_HTML = (b"content-type", b"text/html; charset=utf-8")
_JSON = (b"content-type", b"application/json")
_snapshot_json = msgspec.json.Encoder()


# -- prepared assets ----------------------------------------------------------------------


class Asset:
    """One response body, prepared once: identity and gzip bytes and an ETag."""

    __slots__ = ("body", "etag", "gzipped", "headers")

    def __init__(
        self, body: bytes, content_type: bytes, cache_control: bytes, extra: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        self.body = body
        # mtime=0: the same bytes (and ETag) in every worker and after every restart.
        self.gzipped = gzip.compress(body, 9, mtime=0)
        self.etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'
        self.headers: Headers = [
            (b"content-type", content_type),
            (b"cache-control", cache_control),
            _NOSNIFF,
            (b"vary", b"Accept-Encoding"),
            *extra,
        ]


def tag_schema(streams: Sequence[StreamConfig]) -> dict[str, dict[str, list[Any]]]:
    """What the tag needs to know of each stream to trim values instead of
    having events refused: for every string or json field, ``[max_length or 0,
    pattern, is_email]`` with trailing defaults left out (bytes matter here).

    Fields with a case transform keep no pattern: the server changes the case
    before matching, the tag would judge the value too early. Only streams with
    a ``sid`` field are listed: every event the tag sends carries the browser id,
    and the tag's size is paid on every first page view.
    """
    out: dict[str, dict[str, list[Any]]] = {}
    for stream in streams:
        if "sid" not in stream.fields:
            continue
        fields: dict[str, list[Any]] = {}
        for name, f in stream.fields.items():
            if f.type not in ("string", "json"):
                continue
            cased = "lowercase" in f.transforms or "uppercase" in f.transforms
            rule: list[Any] = [
                f.max_length or 0,
                "" if cased or f.pattern is None else f.pattern,
                1 if f.format == "email" else 0,
            ]
            while len(rule) > 1 and not rule[-1]:
                rule.pop()
            fields[name] = rule
        out[stream.name] = fields
    return out


def minify_js(source: str) -> str:
    """Leading indentation and whole-line ``//`` comments out; nothing else.

    Deliberately this little: the tag keeps every comment on its own line and
    has no multi-line strings, so the result is the same program (the browser
    tests run the served, minified file).
    """
    lines = (line.strip() for line in source.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("//")) + "\n"


def tag_streams(cfg: Config) -> list[StreamConfig]:
    """The streams the tag may send to: not those fed by another protocol's trackers
    (Snowplow's ``sid`` is its session id, not the tag's browser id), whose schema
    would only add bytes to every first page view."""
    foreign = {cfg.collector.segment.stream, cfg.collector.snowplow.stream} - {""}
    return [s for s in cfg.streams.values() if s.name not in foreign]


def render_tag(cfg: Config, *, legacy: bool = False) -> bytes:
    """The tag; with ``legacy``, also the 2016 tag's API (static/oceanus-2016.js)."""
    source = (STATIC_DIR / "oceanus.js").read_text(encoding="utf-8")
    if "/*LEGACY2016*/" not in source:
        raise RuntimeError("oceanus.js lost its /*LEGACY2016*/ placeholder")
    extra = (STATIC_DIR / "oceanus-2016.js").read_text(encoding="utf-8") if legacy else ""
    source = source.replace("/*LEGACY2016*/", extra)
    schema = msgspec.json.encode(tag_schema(tag_streams(cfg))).decode()
    if "/*SCHEMA*/{}" not in source:
        raise RuntimeError("oceanus.js lost its /*SCHEMA*/ placeholder")
    return minify_js(source.replace("/*SCHEMA*/{}", schema)).encode()


def _inline_script_csp(html: str) -> bytes:
    """A CSP that allows exactly the page's inline scripts (by hash) and nothing remote."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
        for m in re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    )
    return (
        "default-src 'none'; script-src " + hashes + "; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ).encode()


class Pages:
    """Everything static, rendered for one config."""

    def __init__(self, cfg: Config) -> None:
        self.tag = Asset(
            render_tag(cfg),
            b"application/javascript; charset=utf-8",
            b"public, max-age=%d, stale-while-revalidate=%d" % (TAG_MAX_AGE_S, TAG_STALE_S),
            [(b"cross-origin-resource-policy", b"cross-origin")],
        )
        self.tag2016 = Asset(
            render_tag(cfg, legacy=True),
            b"application/javascript; charset=utf-8",
            b"public, max-age=%d, stale-while-revalidate=%d" % (TAG_MAX_AGE_S, TAG_STALE_S),
            [(b"cross-origin-resource-policy", b"cross-origin")],
        )
        demo = (STATIC_DIR / "demo.html").read_bytes()
        self.demo = Asset(demo, b"text/html; charset=utf-8", b"no-cache")
        status = (STATIC_DIR / "status.html").read_text(encoding="utf-8")
        self.status = Asset(
            status.encode(),
            b"text/html; charset=utf-8",
            b"no-store",
            [
                (b"content-security-policy", _inline_script_csp(status)),
                # The token may be in the URL: never hand it on.
                (b"referrer-policy", b"no-referrer"),
                (b"x-frame-options", b"DENY"),
            ],
        )


# -- the app seam ---------------------------------------------------------------------------


class WebState:
    """What the pages keep between requests, owned by the app (``App.web``): the
    prepared assets and, when the app has no Redis client of its own, the status
    page's small one."""

    __slots__ = ("cfg", "pages", "redis")

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pages = Pages(cfg)
        self.redis: Any = None

    async def aclose(self) -> None:
        if self.redis is not None:
            client, self.redis = self.redis, None
            await client.aclose()


def _state(app: App) -> WebState:
    # Made on the first page request: an app that serves only events never renders the tag.
    if app.web is None:
        app.web = WebState(app.cfg)
    return app.web


def _redis(app: App, state: WebState) -> Any:
    """The app's own client when it has one (its pool, closed at its shutdown);
    else a small client of ours, made on first use."""
    client = app._redis
    if client is not None:
        return client
    if state.redis is None:
        from oceanus import redisclient

        t = min(state.cfg.redis.timeout_s, status.STATUS_REDIS_TIMEOUT_S)
        # One instance or a cluster (then 2 connections per node), no hidden retries.
        state.redis = redisclient.async_client(state.cfg.redis, timeout_s=t, max_connections=2)
    return state.redis


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _token_ok(scope: Scope, token: str) -> bool:
    if not token:
        return True
    given = _header(scope, b"x-oceanus-token")
    if given is None:
        auth = _header(scope, b"authorization") or b""
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
    if given is None:
        for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
            if k == "token":
                given = v.encode("latin-1", "replace")
    return given is not None and hmac.compare_digest(given, token.encode())


async def _respond(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [*headers, (b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


async def _asset(scope: Scope, send: Send, asset: Asset) -> None:
    inm = _header(scope, b"if-none-match")
    gz = b"gzip" in (_header(scope, b"accept-encoding") or b"")
    # One ETag per encoding, as caches between us and the browser expect.
    etag = asset.etag[:-1] + b'-gz"' if gz else asset.etag
    if inm is not None and (etag in inm or asset.etag in inm or inm.strip() == b"*"):
        await _respond(send, 304, [(b"etag", etag), *asset.headers], b"")
        return
    if gz:
        await _respond(send, 200, [(b"etag", etag), (b"content-encoding", b"gzip"), *asset.headers], asset.gzipped)
    else:
        await _respond(send, 200, [(b"etag", etag), *asset.headers], asset.body)


async def _unauthorized(send: Send) -> None:
    body = (
        b'{"error":{"field":"token","rule":"status_token","message":"missing or wrong status token; '
        b'send X-Oceanus-Token, Authorization: Bearer, or ?token="}}'
    )
    await _respond(
        send,
        401,
        [
            _JSON,
            _NO_STORE,
            (b"x-oceanus-error", b"token: status_token: missing or wrong"),
            (b"www-authenticate", b'Bearer realm="oceanus status"'),
        ],
        body,
    )


async def handle(scope: Scope, receive: Receive, send: Send, app: App) -> bool:
    """Serve ``scope`` if it is one of the web pages; return False if it is not."""
    path: str = scope["path"]
    state = _state(app)
    c = state.cfg.collector
    if path == "/oceanus.js":
        await _asset(scope, send, state.pages.tag)
        return True
    if path == "/oceanus-2016.js":
        await _asset(scope, send, state.pages.tag2016)
        return True
    if c.demo and (path == "/demo" or path.startswith("/demo/")):
        # Any /demo/... path: the demo is a single-page app and a reload keeps its route.
        await _asset(scope, send, state.pages.demo)
        return True
    if c.status_page and path in ("/_/status", "/_/status.json"):
        if not _token_ok(scope, c.status_token):
            await _unauthorized(send)
            return True
        if path == "/_/status":
            await _asset(scope, send, state.pages.status)
            return True
        snap = await status.snapshot(state.cfg, _redis(app, state))
        await _respond(send, 200, [_JSON, _NO_STORE, _NOSNIFF], _snapshot_json.encode(snap))
        return True
    return False
