"""The Snowplow tracker protocol's edges, in process against a real Redis: the network user id
cookie, SP-Anonymous, CORS with credentials, retry-stable ids, and hostile inputs (bad base64,
wrong schemas, huge contexts: a 4xx naming the parameter, nothing stored)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest

from collector.app import GIF, App
from oceanus import config
from tests.collector.asgi import Response, request, running
from tests.collector.conftest import queued_rows
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

MakeConfig = Callable[..., config.Config]
PAYLOAD = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1"
UNSTRUCT = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"
EID = "8a4d7c1e-3b2f-4e6a-9d10-2c5b7e8f9a01"


@pytest.fixture
def cfg(make_config: MakeConfig) -> config.Config:
    return make_config(snowplow=config.SnowplowConfig(stream="snowplow", cookie_domain=".shop.example"))


def _b64(value: Any, *, pad: bool = False) -> str:
    text = base64.urlsafe_b64encode(json.dumps(value).encode()).decode()
    return text if pad else text.rstrip("=")


def _event(**kw: str) -> dict[str, str]:
    return {"e": "pv", "eid": EID, "dtm": str(int(time.time() * 1000) - 2000), "url": "https://shop.example/", **kw}


async def _tp2(app: App, events: list[Any], *headers: tuple[str, str], schema: str = PAYLOAD) -> Response:
    body = json.dumps({"schema": schema, "data": events}).encode()
    return await request(
        app,
        "POST",
        "/com.snowplowanalytics.snowplow/tp2",
        headers=[("content-type", "application/json; charset=utf-8"), *headers],
        body=body,
    )


async def test_pixel_sets_the_cookie_and_a_known_one_is_kept(cfg: config.Config, redis_server: RedisServer) -> None:
    known = str(uuid.uuid4())
    async with running(App(cfg)) as app:
        fresh = await request(app, "GET", "/i", urlencode(_event()))
        again = await request(
            app,
            "GET",
            "/com.snowplowanalytics.snowplow/i",
            urlencode(_event(eid=str(uuid.uuid4()))),
            headers=[("cookie", f"other=1; sp={known}")],
        )
        forged = await request(
            app, "GET", "/i", urlencode(_event(eid=str(uuid.uuid4()))), headers=[("cookie", "sp=<script>")]
        )
    assert (fresh.status, fresh.body, fresh.headers["content-type"]) == (200, GIF, "image/gif")
    cookie = fresh.headers["set-cookie"]
    nuid = cookie.split(";")[0].removeprefix("sp=")
    assert uuid.UUID(nuid).version == 4
    assert "; Path=/; Max-Age=31536000; HttpOnly; Domain=.shop.example; SameSite=None; Secure; Expires=" in cookie
    assert again.headers["set-cookie"].startswith(f"sp={known};")
    rows = queued_rows(redis_server, "snowplow")
    assert [r["nuid"] for r in rows[:2]] == [nuid, known]
    assert rows[2]["nuid"] != "<script>"
    assert forged.headers["set-cookie"].startswith(f"sp={rows[2]['nuid']};")
    assert uuid.UUID(rows[2]["nuid"]).version == 4


async def test_sp_anonymous_sets_no_cookie_and_stores_no_address(cfg: config.Config, redis_server: RedisServer) -> None:
    async with running(App(cfg)) as app:
        r = await _tp2(app, [_event()], ("sp-anonymous", "*"), ("cookie", f"sp={uuid.uuid4()}"))
    assert (r.status, r.body) == (200, b"ok")
    assert "set-cookie" not in r.headers
    (row,) = queued_rows(redis_server, "snowplow")
    assert (row["nuid"], row["ip"]) == ("00000000-0000-0000-0000-000000000000", None)


async def test_cookie_off(make_config: MakeConfig, redis_server: RedisServer) -> None:
    cfg = make_config(snowplow=config.SnowplowConfig(stream="snowplow", cookie=False))
    async with running(App(cfg)) as app:
        r = await request(app, "GET", "/i", urlencode(_event(tnuid="server-side-id")))
    assert "set-cookie" not in r.headers
    (row,) = queued_rows(redis_server, "snowplow")
    assert row["nuid"] == "server-side-id"


async def test_post_answers_cors_with_credentials(cfg: config.Config) -> None:
    origin = ("origin", "https://shop.example")
    async with running(App(cfg)) as app:
        pre = await request(app, "OPTIONS", "/com.snowplowanalytics.snowplow/tp2", headers=[origin])
        ok = await _tp2(app, [_event()], origin)
        get = await request(app, "GET", "/com.snowplowanalytics.snowplow/tp2")
    assert pre.status == 204
    for r in (pre, ok):
        assert r.headers["access-control-allow-origin"] == "https://shop.example"
        assert r.headers["access-control-allow-credentials"] == "true"
    assert "SP-Anonymous" in pre.headers["access-control-allow-headers"]
    assert (get.status, get.headers["allow"]) == (405, "POST, OPTIONS")


async def test_a_resent_event_repeats_event_id_and_received_at(cfg: config.Config, redis_server: RedisServer) -> None:
    ev = _event(cx=_b64({"schema": CONTEXTS, "data": [{"schema": "iglu:com.acme/c/jsonschema/1-0-0", "data": {}}]}))
    async with running(App(cfg)) as app:
        assert (await _tp2(app, [dict(ev, stm="1")])).status == 200
        assert (await _tp2(app, [dict(ev, stm="2")])).status == 200
    first, second = queued_rows(redis_server, "snowplow")
    assert (first["event_id"], first["received_at"]) == (second["event_id"], second["received_at"])
    assert first["received_at"] == int(ev["dtm"]) * 1000
    assert first["collected_at"] != first["received_at"]


async def test_base64_padded_standard_and_plain_json_decode_alike(
    cfg: config.Config, redis_server: RedisServer
) -> None:
    ue = {"schema": UNSTRUCT, "data": {"schema": "iglu:com.acme/buy/jsonschema/1-0-0", "data": {"sku": "é/?+"}}}
    std = base64.b64encode(json.dumps(ue).encode()).decode()
    async with running(App(cfg)) as app:
        r = await _tp2(
            app,
            [
                _event(e="ue", ue_px=_b64(ue), eid=str(uuid.uuid4())),
                _event(e="ue", ue_px=_b64(ue, pad=True), eid=str(uuid.uuid4())),
                _event(e="ue", ue_px=std, eid=str(uuid.uuid4())),
                _event(e="ue", ue_pr=json.dumps(ue), eid=str(uuid.uuid4())),
            ],
        )
    assert r.status == 200
    assert [json.loads(row["ue"]) for row in queued_rows(redis_server, "snowplow")] == [ue["data"]] * 4


def _contexts(n_bytes: int) -> str:
    return _b64({"schema": CONTEXTS, "data": [{"schema": "iglu:com.acme/c/jsonschema/1-0-0", "data": "x" * n_bytes}]})


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (_event(cx="%%%not-base64"), "cx: base64: is not valid base64"),
        (_event(cx=_b64({"schema": CONTEXTS, "data": [1]})[:-3] + "A"), "cx: json: is not valid JSON"),
        (_event(cx=_b64({"schema": "iglu:com.acme/x/jsonschema/1-0-0", "data": []})), "cx: schema: expected"),
        (_event(cx=_b64({"schema": CONTEXTS, "data": {}})), "cx: schema: the contexts' data must be an array"),
        (_event(cx=_b64({"schema": CONTEXTS, "data": [{"data": 1}]})), "cx: schema: each entity must be"),
        (_event(co="{nope"), "co: json: is not valid JSON"),
        (_event(e="ue", ue_px=_b64({"schema": CONTEXTS, "data": {}})), "ue_px: schema: expected"),
        (_event(e="ue", ue_pr=json.dumps({"schema": UNSTRUCT, "data": {"schema": "acme"}})), "ue_pr: schema:"),
        (_event(cx=_contexts(70_000)), "contexts: max_length: longer than 65536 bytes"),
        (_event(eid="not-a-uuid"), "eid: format: is not a UUID"),
        (_event(e=""), "e: required"),
        (_event(vid="seven"), "vid: type"),
        (_event(contexts="[]"), "contexts: reserved"),
        (_event(dtm="yesterday"), "dtm: type"),
    ],
)
async def test_hostile_parameters_name_the_parameter_and_store_nothing(
    cfg: config.Config, redis_server: RedisServer, event: dict[str, str], error: str
) -> None:
    async with running(App(cfg)) as app:
        post = await _tp2(app, [_event(eid=str(uuid.uuid4())), event])
        pixel = await request(app, "GET", "/i", urlencode(event))
    assert post.status == 400
    assert post.error.startswith(error)
    assert post.json()["error"]["index"] == 1
    if len(urlencode(event)) > cfg.collector.max_url_bytes:
        # Too long for a URL before it is too large for its field.
        assert (pixel.status, pixel.error) == (414, "url: max_url_bytes: URL longer than 8192 bytes")
    else:
        assert (pixel.status, pixel.body) == (400, GIF)
        assert pixel.error.startswith(error)
    assert queued_rows(redis_server, "snowplow") == []


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"schema": "iglu:com.acme/payload/jsonschema/1-0-0", "data": [_event()]}, "schema: payload_data: expected"),
        ({"data": [_event()]}, "schema: payload_data"),
        ({"schema": PAYLOAD, "data": {}}, "data: type: expected an array of events"),
        ({"schema": PAYLOAD, "data": []}, "data: required: the array is empty"),
        ({"schema": PAYLOAD, "data": [_event(), "pv"]}, "data: type: each event must be a JSON object"),
        (
            {"schema": PAYLOAD, "data": [_event(), {**_event(), "aid": ["a"]}]},
            "aid: type: tracker parameters are strings",
        ),
        ([_event()], "body: type: expected a payload_data JSON object"),
    ],
)
async def test_wrong_payload_shapes_are_400(
    cfg: config.Config, redis_server: RedisServer, body: Any, error: str
) -> None:
    async with running(App(cfg)) as app:
        r = await request(app, "POST", "/com.snowplowanalytics.snowplow/tp2", body=json.dumps(body).encode())
    assert r.status == 400
    assert r.error.startswith(error)
    assert queued_rows(redis_server, "snowplow") == []


async def test_more_events_than_max_batch_events_is_413(cfg: config.Config, redis_server: RedisServer) -> None:
    at = [_event(eid=str(uuid.uuid4())) for _ in range(cfg.collector.max_batch_events)]
    async with running(App(cfg)) as app:
        ok = await _tp2(app, at)
        over = await _tp2(app, [*at, _event()])
    assert ok.status == 200
    assert (over.status, over.error) == (413, "data: max_batch_events: more than 500 events in one body")
    assert len(queued_rows(redis_server, "snowplow")) == cfg.collector.max_batch_events


async def test_routes_are_off_without_a_stream(make_config: MakeConfig) -> None:
    async with running(App(make_config(snowplow=config.SnowplowConfig()))) as app:
        r = await request(app, "GET", "/i", urlencode(_event()))
    assert r.status == 404


async def test_a_non_string_parameter_without_a_name_is_named_data(cfg: config.Config) -> None:
    async with running(App(cfg)) as app:
        r = await _tp2(app, [_event(), {**_event(eid=str(uuid.uuid4())), "": {"x": 1}}])
    assert (r.status, r.error) == (400, "data: type: tracker parameters are strings")
    assert r.json()["error"]["index"] == 1


# superscript one, Arabic-Indic and fullwidth digits
@pytest.mark.parametrize("dtm", ["\u00b9", "\u0661\u0662\u0663", "\uff11\uff12\uff13"])
async def test_a_timestamp_in_non_ascii_digits_is_not_a_time(
    dtm: str, cfg: config.Config, redis_server: RedisServer
) -> None:
    """``str.isdigit`` accepts these and ``int`` refuses "¹": a 400 naming ``dtm``, never a 500."""
    async with running(App(cfg)) as app:
        r = await request(app, "GET", "/i", urlencode(_event(dtm=dtm)))
    assert r.status == 400
    assert r.error.startswith("dtm: type: ")
    assert queued_rows(redis_server, "snowplow") == []
