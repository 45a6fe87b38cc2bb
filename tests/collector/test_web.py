"""The web pages seam in-process: tag rendering and caching, page switches,
the status token, and status snapshots read from a real redis-server."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from collector import status, web
from collector.app import App
from oceanus import config
from oceanus.buffer import EventIds, Keys, encode_frame
from tests.support.servers import RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]
#: The README promises a tag under 3 KB gzipped with the default config.
TAG_GZIP_BUDGET_BYTES = 3000


def _cfg(tmp_path: Path, **env: str) -> config.Config:
    base = {"OCEANUS_COLLECTOR_SPOOL_DIR": str(tmp_path / "spool")}
    return config.load(REPO / "oceanus.toml", env={**base, **env})


class Response:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        start = messages[0]
        self.status: int = start["status"]
        self.headers = {k.decode(): v.decode() for k, v in start["headers"]}
        self.body: bytes = b"".join(m.get("body", b"") for m in messages[1:])


def _get(app: App, path: str, query: bytes = b"", headers: dict[str, str] | None = None) -> Response | None:
    messages: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        messages.append(dict(message))

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": query,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }

    async def run() -> bool:
        try:
            return await web.handle(scope, receive, send, app)
        finally:
            if app.web is not None:
                await app.web.aclose()

    handled = asyncio.run(run())
    if not handled:
        assert not messages
        return None
    return Response(messages)


# -- the tag --------------------------------------------------------------------------------


def test_tag_schema_comes_from_the_stream_config(default_config: config.Config) -> None:
    schema = web.tag_schema(list(default_config.streams.values()))
    assert schema["pageview"]["evt"] == [16]
    assert schema["pageview"]["jsn"] == [4096]
    # sid is lowercased by the server before its pattern runs: the tag leaves the pattern to it.
    assert schema["pageview"]["sid"] == [0]
    assert schema["form"]["email"] == [254, "", 1]
    assert schema["form"]["tel"] == [32, "^[0-9+() .-]*$"]
    # No sid field, so no tag events: not shipped in every visitor's download.
    assert "ecview" not in schema


def test_minify_drops_comment_lines_and_indentation_only() -> None:
    src = "// head\n(function () {\n  // why\n  var u = 'http://x/'; /*SCHEMA*/\n\n  return u;\n})();\n"
    assert web.minify_js(src) == "(function () {\nvar u = 'http://x/'; /*SCHEMA*/\nreturn u;\n})();\n"


def test_rendered_tag_embeds_the_schema_and_stays_small(default_config: config.Config) -> None:
    tag = web.render_tag(default_config).decode()
    assert "/*SCHEMA*/" not in tag
    match = re.search(r"var S = (\{.*?\});\n", tag)
    assert match is not None
    assert json.loads(match.group(1)) == web.tag_schema(web.tag_streams(default_config))
    assert not any(line.startswith("//") for line in tag.splitlines())
    assert tag.startswith("/*! oceanus.js")
    size = len(gzip.compress(tag.encode(), 9))
    assert size < TAG_GZIP_BUDGET_BYTES, f"oceanus.js is {size} B gzipped"


def test_tag_caching_headers_gzip_and_revalidation(tmp_path: Path) -> None:
    app = App(_cfg(tmp_path))
    plain = _get(app, "/oceanus.js")
    assert plain is not None
    assert plain.status == 200
    assert plain.headers["content-type"].startswith("application/javascript")
    assert "max-age=3600" in plain.headers["cache-control"]
    assert plain.headers["vary"] == "Accept-Encoding"
    assert "content-encoding" not in plain.headers
    assert plain.body.startswith(b"/*! oceanus.js")
    assert int(plain.headers["content-length"]) == len(plain.body)

    zipped = _get(app, "/oceanus.js", headers={"Accept-Encoding": "gzip, deflate, br"})
    assert zipped is not None
    assert zipped.headers["content-encoding"] == "gzip"
    assert gzip.decompress(zipped.body) == plain.body
    assert zipped.headers["etag"] != plain.headers["etag"]

    for etag, encoding in ((plain.headers["etag"], ""), (zipped.headers["etag"], "gzip")):
        again = _get(app, "/oceanus.js", headers={"If-None-Match": etag, "Accept-Encoding": encoding})
        assert again is not None
        assert again.status == 304
        assert again.body == b""
    stale = _get(app, "/oceanus.js", headers={"If-None-Match": '"0000"'})
    assert stale is not None
    assert stale.status == 200


def test_the_etag_is_the_same_in_every_worker(tmp_path: Path) -> None:
    one = _get(App(_cfg(tmp_path)), "/oceanus.js", headers={"Accept-Encoding": "gzip"})
    two = _get(App(_cfg(tmp_path)), "/oceanus.js", headers={"Accept-Encoding": "gzip"})
    assert one is not None
    assert two is not None
    assert one.headers["etag"] == two.headers["etag"]
    assert one.body == two.body


# -- page switches ------------------------------------------------------------------------


def test_demo_and_status_are_off_by_default(tmp_path: Path) -> None:
    app = App(_cfg(tmp_path))
    for path in ("/demo", "/demo/pricing", "/_/status", "/_/status.json", "/nothing"):
        assert _get(app, path) is None, path


def test_demo_serves_every_route_of_the_single_page_app(tmp_path: Path) -> None:
    app = App(_cfg(tmp_path, OCEANUS_COLLECTOR_DEMO="true"))
    for path in ("/demo", "/demo/pricing", "/demo/contact"):
        resp = _get(app, path)
        assert resp is not None
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/html")
        assert b"/oceanus.js" in resp.body
        assert b"data-oceanus-form" in resp.body
    assert _get(app, "/demonstration") is None


def test_status_token_via_header_bearer_or_query(tmp_path: Path) -> None:
    app = App(_cfg(tmp_path, OCEANUS_COLLECTOR_STATUS_PAGE="true", OCEANUS_COLLECTOR_STATUS_TOKEN='"s3cret"'))
    for headers, query in (({}, b""), ({"X-Oceanus-Token": "wrong"}, b""), ({}, b"token=s3cre")):
        resp = _get(app, "/_/status", query=query, headers=headers)
        assert resp is not None
        assert resp.status == 401
        assert resp.headers["x-oceanus-error"].startswith("token: status_token")
        assert json.loads(resp.body)["error"]["field"] == "token"
    for headers, query in (
        ({"X-Oceanus-Token": "s3cret"}, b""),
        ({"Authorization": "Bearer s3cret"}, b""),
        ({}, b"x=1&token=s3cret"),
    ):
        resp = _get(app, "/_/status", query=query, headers=headers)
        assert resp is not None, (headers, query)
        assert resp.status == 200, (headers, query)


def test_status_page_is_self_contained(tmp_path: Path) -> None:
    app = App(_cfg(tmp_path, OCEANUS_COLLECTOR_STATUS_PAGE="true"))
    resp = _get(app, "/_/status")
    assert resp is not None
    assert resp.status == 200
    html = resp.body.decode()
    # No external script, style or font: nothing but this collector.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp
    assert csp.count("'sha256-") == html.count("<script>")
    assert resp.headers["referrer-policy"] == "no-referrer"


# -- status snapshots from a real Redis ------------------------------------------------------


def _frame(cfg: config.Config, stream: str, ids: EventIds, at_ms: int, n: int) -> bytes:
    columns = cfg.streams[stream].columns
    rows = []
    for i in range(n):
        row: list[Any] = [None] * len(columns)
        row[0] = ids.new((at_ms + i) * 1_000_000)
        rows.append(row)
    return encode_frame(columns, rows)


def test_snapshot_counts_rates_backlog_age_and_errors(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, OCEANUS_REDIS_URL=f'"{redis_server.url}"')
    keys = Keys(cfg.redis.key_prefix)
    r = redis_server.client()
    ids = EventIds()
    now = 1_800_000_030.0  # 30 s into a minute
    minute = int(now // 60)
    r.hset(keys.stats("pageview", minute), mapping={"accepted": 30, "rejected": 6})
    r.hset(keys.stats("pageview", minute - 1), mapping={"accepted": 60, "rejected": 0})
    r.hset(keys.stats("pageview", minute - 5), mapping={"accepted": 7})
    # Three frames of 10, 4 and 6 rows; the oldest event 90 s ago.
    for age_s, n in ((90, 10), (50, 4), (20, 6)):
        r.rpush(keys.queue("pageview"), _frame(cfg, "pageview", ids, int((now - age_s) * 1000), n))
    # A batch a flusher claimed is older still: it counts as unflushed.
    inflight = keys.inflight("form", "flusher-1", 1)
    r.rpush(inflight, _frame(cfg, "form", ids, int((now - 300) * 1000), 2))
    r.sadd(keys.inflight_index("form"), inflight)
    r.lpush(keys.recent_errors(), b'{"stream":"pageview","field":"sid","rule":"pattern","at":1800000025}', b"not json")

    async def take() -> status.Snapshot:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_server.url)
        try:
            return await status.snapshot(cfg, client, now=now)
        finally:
            await client.aclose()

    snap = asyncio.run(take())
    assert snap.redis_up
    by_name = {s.name: s for s in snap.streams}
    pv = by_name["pageview"]
    # Last 60 s: this minute's 30 + half of the previous minute's 60.
    assert pv.events_per_s == pytest.approx(1.0)
    assert pv.rejected_per_s == pytest.approx(0.1)
    assert pv.reject_ratio == pytest.approx(6 / 66, abs=1e-4)
    assert len(pv.history) == status.STATUS_HISTORY_MIN
    assert pv.history[-1] == 30
    assert pv.history[-2] == 60
    assert pv.history[-6] == 7
    assert sum(pv.history) == 97
    assert pv.backlog_frames == 3
    assert (pv.backlog_rows, pv.backlog_rows_exact) == (24, False)  # 3 x (10 + 6) / 2
    assert pv.oldest_unflushed_s == pytest.approx(90.0, abs=0.01)
    form = by_name["form"]
    assert (form.backlog_frames, form.inflight_batches) == (0, 1)
    assert form.oldest_unflushed_s == pytest.approx(300.0, abs=0.01)
    assert by_name["ecview"].oldest_unflushed_s is None
    assert by_name["ecview"].events_per_s == 0
    assert [(e.stream, e.field, e.rule) for e in snap.recent_errors] == [("pageview", "sid", "pattern")]


def test_snapshot_when_redis_is_unreachable(tmp_path: Path) -> None:
    port = free_port()
    cfg = _cfg(tmp_path, OCEANUS_REDIS_URL=f'"redis://127.0.0.1:{port}/0"')
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "spool-1-aa.log").write_bytes(b"x" * 1000)
    (spool / "spool-1-aa.off").write_text("400")
    (spool / "spool-2-bb.log").write_bytes(b"y" * 50)
    (spool / "spool-2-bb.off").write_text("50")  # fully replayed

    app = App(cfg)
    t0 = time.monotonic()
    resp = _get(app, "/_/status.json")  # status page off: not served at all
    assert resp is None
    app = App(msgspec.structs.replace(cfg, collector=msgspec.structs.replace(cfg.collector, status_page=True)))
    resp = _get(app, "/_/status.json")
    assert resp is not None
    assert resp.status == 200
    snap = json.loads(resp.body)
    assert snap["redis_up"] is False
    assert snap["redis_error"]
    assert snap["spool"] == {"bytes": 600, "files": 1}
    assert time.monotonic() - t0 < status.STATUS_REDIS_TIMEOUT_S + 3


def test_streams_fed_by_trackers_are_not_in_the_tag(default_config: config.Config) -> None:
    foreign = {default_config.collector.segment.stream, default_config.collector.snowplow.stream} - {""}
    assert foreign, "the shipped config feeds streams from Segment and Snowplow"
    assert foreign <= set(default_config.streams)
    tag = web.render_tag(default_config).decode()
    match = re.search(r"var S = (\{.*?\});\n", tag)
    assert match is not None
    schema = json.loads(match.group(1))
    assert not foreign & set(schema)
    assert "pageview" in schema
