"""Every 2016 URL shape (swallow.py, pirate.py, gaze.py, pierce.py, healthcheck.py)
replayed against the collector with the shipped oceanus.toml: status, body type and
the row stored, compared with what the 2016 code stored."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from collector.app import GIF, App
from collector.enrich import DeviceCache
from collector.validate import MappedValidator, StreamValidator
from oceanus import config
from oceanus.errors import ConfigError
from tests.collector.asgi import request, running
from tests.collector.conftest import queued_rows
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

MakeConfig = Callable[..., config.Config]
UA_IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
CLIENT = ("203.0.113.5", 40000)
TRUSTED = ("127.0.0.1", 40000)
SID = "sid=0123456789ABCDEF"
# jsn as okeanides.js sends it (JSON.stringify), stored as the 2016 clean_json re-encoded it.
JSN_SENT = "%7B%22pageY%22%3A20%2C%22pageX%22%3A10%2C%22kwd%22%3A%22%E8%AB%8B%E6%B1%82%22%7D"
JSN_STORED = '{"kwd": "\\u8acb\\u6c42", "pageX": 10, "pageY": 20}'
FULL = (
    f"oid=2&evt=PageView&uid=u-9&ref=https%3A%2F%2Fr.jp%2F&tit=T%C3%ACtle&url=https%3A%2F%2Fx.jp%2Fa%3Fb%3D1"
    f"&enc=utf-8&scr=1920x1080&vie=1200x800&jsn={JSN_SENT}&{SID}&cachebuster=9"
)


@dataclass
class Case:
    method: str
    path: str
    query: str = ""
    status: int = 200
    body_type: str = "image/gif"
    #: Columns of the one stored row (only these are compared); None: nothing stored.
    row: dict[str, Any] | None = None
    stream: str = "pageview"
    error: str = ""
    body: bytes = b""
    client: tuple[str, int] = CLIENT
    headers: list[tuple[str, str]] = field(default_factory=list)
    content: bytes | None = None


SWALLOW_ROW = {
    "sid": "0123456789abcdef",
    "evt": "pageview",
    "oid": "2",
    "uid": "u-9",
    "ref": "https://r.jp/",
    "tit": "Tìtle",
    "url": "https://x.jp/a?b=1",
    "enc": "UTF-8",
    "scr": "1920x1080",
    "vie": "1200x800",
    "jsn": JSN_STORED,
    "ip": "203.0.113.5",
    "extra": None,
}

CASES: dict[str, Case] = {
    # swallow: the default site and a named one; unknown parameters dropped as in 2016
    "swallow": Case("GET", "/swallow", FULL, row=SWALLOW_ROW),
    "swallow/bizocean": Case("GET", "/swallow/bizocean", FULL, row=SWALLOW_ROW),
    "swallow/skj": Case("GET", "/swallow/skj", FULL, row=SWALLOW_ROW),
    "swallow HEAD": Case("HEAD", "/swallow", FULL, row=SWALLOW_ROW),
    "swallow empty url": Case(
        "GET", "/swallow", f"{SID}&evt=x&oid=1&url=", row={"url": "", "uid": None, "jsn": None, "enc": None}
    ),
    "swallow enc from a mail client": Case(
        "GET", "/swallow", f"{SID}&evt=open&oid=1&url=&enc=text%2Fhtml", row={"enc": "TEXTHTML", "evt": "open"}
    ),
    "swallow no url": Case("GET", "/swallow", f"{SID}&evt=x&oid=1", 400, error="url: required"),
    "swallow no oid": Case("GET", "/swallow", f"{SID}&evt=x&url=", 400, error="oid: required"),
    "swallow no sid": Case("GET", "/swallow", "evt=x&oid=1&url=", 400, error="sid: required"),
    "swallow no evt": Case("GET", "/swallow", f"{SID}&oid=1&url=", 400, error="evt: required"),
    "swallow bad sid": Case("GET", "/swallow", "sid=xyz&evt=x&oid=1&url=", 400, error="sid: pattern"),
    "swallow long sid": Case("GET", "/swallow", f"sid={'a' * 33}&evt=x&oid=1&url=", 400, error="sid: pattern"),
    "swallow long evt": Case("GET", "/swallow", f"{SID}&evt={'e' * 17}&oid=1&url=", 400, error="evt: max_length"),
    "swallow long oid": Case("GET", "/swallow", f"{SID}&evt=x&oid={'1' * 17}&url=", 400, error="oid: max_length"),
    "swallow bad enc": Case("GET", "/swallow", f"{SID}&evt=x&oid=1&url=&enc=utf-8%3B", 400, error="enc: pattern"),
    "swallow bad jsn": Case("GET", "/swallow", f"{SID}&evt=x&oid=1&url=&jsn=%7B", 400, error="jsn: type"),
    "swallow long ua cut": Case(
        "GET", "/swallow", f"{SID}&evt=x&oid=1&url=", headers=[("User-Agent", "U" * 600)], row={"ua": "U" * 512}
    ),
    "swallow unknown site": Case("GET", "/swallow/nosuch", f"{SID}&evt=x&oid=1&url=", 404, "application/json"),
    "swallow POST": Case("POST", "/swallow", "", 405, error="method: allowed"),
    "swallow debug from outside": Case(
        "GET", "/swallow", f"{SID}&evt=x&oid=1&url=&debug=1", row={"evt": "x", "extra": None}
    ),
    # pirate: form posts; the 2016 limits (1024, no email check); uid/oid/url/enc kept in extra
    "pirate": Case(
        "POST",
        "/pirate/movieform",
        status=200,
        body_type="text/plain; charset=utf-8",
        stream="form",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
        content=(
            b"sid=ABCDEF&name=+Ada+&cname=AE&email=not-an-email&tel=03-1234%E2%80%905678&uid=u1"
            b"&oid=7&url=https%3A%2F%2Fx.jp%2Ff&enc=utf-8&submit=Send&jsn=%7B%22b%22%3A1%2C%22a%22%3A2%7D"
        ),
        row={
            "sid": "abcdef",
            "name": " Ada ",
            "cname": "AE",
            "email": "not-an-email",
            "tel": "03-1234\u20105678",
            "jsn": '{"a": 2, "b": 1}',
            "extra": '{"uid":"u1","oid":"7","url":"https://x.jp/f","enc":"utf-8"}',
        },
    ),
    "pirate other site": Case(
        "POST",
        "/pirate/docreq",
        status=200,
        body_type="text/plain; charset=utf-8",
        stream="form",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
        content=b"sid=ab",
        row={"sid": "ab", "extra": None},
    ),
    "pirate GET": Case(
        "GET",
        "/pirate/namecard",
        "sid=ab&name=x",
        body_type="text/plain; charset=utf-8",
        stream="form",
        row={"sid": "ab", "name": "x"},
    ),
    "pirate no sid": Case(
        "POST",
        "/pirate/movieform",
        status=400,
        body_type="application/json",
        stream="form",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
        content=b"name=x",
        error="sid: required",
    ),
    "pirate long name": Case(
        "POST",
        "/pirate/movieform",
        status=400,
        body_type="application/json",
        stream="form",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
        content=b"sid=ab&name=" + b"n" * 1025,
        error="name: max_length",
    ),
    # gaze (waits set to 0 here; test_gaze_* below times them)
    "gaze open": Case(
        "GET",
        "/gaze",
        "evt=open&url=https%3A%2F%2Fm.jp%2F",
        302,
        row={"sid": "", "evt": "open", "oid": "2", "url": "https://m.jp/"},
    ),
    "gaze read": Case("GET", "/gaze/mailaction", "evt=READ&sid=ab", 302, row={"sid": "ab", "evt": "read"}),
    "gaze done": Case("GET", "/gaze", "evt=done&sid=ab&oid=5", 200, row={"evt": "done", "oid": "5"}),
    "gaze no evt": Case("GET", "/gaze", "sid=ab", 400, error="evt: required"),
    "gaze bad sid": Case("GET", "/gaze", "sid=zz&evt=open", 400, error="sid: pattern"),
    # pierce: rad/ua honoured from a trusted sender only
    "pierce untrusted": Case(
        "GET",
        "/pierce",
        "evt=Click&oid=1&url=u&rad=198.51.100.7&ua=Bot%2F1",
        body_type="text/plain; charset=utf-8",
        body=b"ok",
        headers=[("User-Agent", "curl/8")],
        row={"ip": "203.0.113.5", "ua": "curl/8", "evt": "click", "sid": "", "extra": None},
    ),
    "pierce trusted": Case(
        "GET",
        "/pierce/shortener",
        f"evt=click&oid=1&url=u&rad=198.51.100.7&ua={UA_IPHONE}",
        body_type="text/plain; charset=utf-8",
        body=b"ok",
        client=TRUSTED,
        row={"ip": "198.51.100.7", "ua": UA_IPHONE, "device": DeviceCache()(UA_IPHONE)},
    ),
    "pierce trusted no rad": Case(
        "GET", "/pierce", "evt=click&oid=1&url=u", 400, "application/json", client=TRUSTED, error="rad: required"
    ),
    "pierce trusted bad rad": Case(
        "GET",
        "/pierce",
        "evt=click&oid=1&url=u&rad=999.1.1.1",
        400,
        "application/json",
        client=TRUSTED,
        error="rad: type",
    ),
    "pierce no url": Case("GET", "/pierce", "evt=click&oid=1", 400, "application/json", error="url: required"),
    # health, backlog, static
    "lb": Case("GET", "/lb", body_type="text/plain; charset=utf-8", body=b"ok\n"),
    "hc": Case("GET", "/hc", body_type="text/plain; charset=utf-8", body=b"ok\n"),
    "rstatus": Case("GET", "/rstatus", body_type="text/plain; charset=utf-8", body=b"ok"),
    "robots": Case("GET", "/robots.txt", body_type="text/plain; charset=utf-8", body=b"User-agent: *\nDisallow: /\n"),
    "favicon": Case("GET", "/favicon.ico", status=204, body_type=""),
    "tag at its 2016 path": Case(
        "GET", "/static/oceanus/okeanides.js", body_type="application/javascript; charset=utf-8"
    ),
    "lb POST": Case("POST", "/lb", status=405, body_type="application/json", error="method: allowed"),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_2016_url(name: str, make_config: MakeConfig, redis_server: RedisServer) -> None:
    case = CASES[name]
    async with running(App(make_config(gaze_waits_s=(0.0, 0.0, 0.0)))) as app:
        r = await request(
            app, case.method, case.path, case.query, headers=case.headers, client=case.client, body=case.content or b""
        )
    assert r.status == case.status, (r.status, r.error, r.body[:200])
    assert r.headers.get("content-type", "") == case.body_type
    if case.error:
        assert r.error.startswith(case.error), r.error
    if case.body:
        assert r.body == case.body
    elif case.body_type == "image/gif":
        assert r.body == (b"" if case.method == "HEAD" else GIF)
    rows = queued_rows(redis_server, case.stream)
    if case.row is None:
        assert rows == []
        return
    [row] = rows
    assert {k: row[k] for k in case.row} == case.row


async def test_gaze_redirect_chain_keeps_the_query_and_waits_without_holding_the_worker(
    make_config: MakeConfig, redis_server: RedisServer
) -> None:
    async with running(App(make_config(gaze_waits_s=(0.3, 0.3, 0.3)))) as app:
        t0 = time.monotonic()
        # Twenty mails open at once: their waits overlap, so together they take one wait, not twenty.
        answers = await asyncio.gather(*(request(app, "GET", "/gaze", f"sid=a{i}&evt=open&url=x") for i in range(20)))
        took = time.monotonic() - t0
        location = answers[0].headers["location"]
        follow = await request(app, "GET", "/gaze", location.split("?", 1)[1])
    assert {a.status for a in answers} == {302}
    assert location == "/gaze?sid=a0&evt=see&url=x"
    assert 0.3 <= took < 0.3 * 20 / 2  # one after the other they would take 6 s
    assert follow.status == 302
    assert follow.headers["location"] == "/gaze?sid=a0&evt=read&url=x"
    assert [r["evt"] for r in queued_rows(redis_server, "pageview") if r["sid"] == "a0"] == ["open", "see"]


async def test_gazes_past_max_gazes_end_the_chain_instead_of_waiting(
    make_config: MakeConfig, redis_server: RedisServer
) -> None:
    async with running(App(make_config(gaze_waits_s=(0.5, 0.5, 0.5), max_gazes=2))) as app:
        answers = await asyncio.gather(*(request(app, "GET", "/gaze", f"sid=b{i}&evt=open") for i in range(3)))
    assert sorted(a.status for a in answers) == [200, 302, 302]
    assert len(queued_rows(redis_server, "pageview")) == 3  # every step is stored all the same


async def test_legacy_routes_pass_the_per_ip_limit(make_config: MakeConfig, redis_server: RedisServer) -> None:
    async with running(App(make_config(ip_rate_per_s=0.001, ip_burst=1))) as app:
        first = await request(app, "GET", "/swallow", f"{SID}&evt=x&oid=1&url=")
        second = await request(app, "GET", "/swallow", f"{SID}&evt=x&oid=1&url=")
        form = await request(
            app,
            "POST",
            "/pirate/movieform",
            body=b"sid=ab",
            headers=[("Content-Type", "application/x-www-form-urlencoded")],
        )
    assert first.status == 200
    assert second.status == 429
    assert second.body == GIF
    assert second.error.startswith("ip: ip_rate_per_s")
    assert form.status == 429
    assert form.error.startswith("ip: ip_rate_per_s")
    assert len(queued_rows(redis_server, "pageview")) == 1


async def test_pierce_counts_ignored_parameters(make_config: MakeConfig, redis_server: RedisServer) -> None:
    async with running(App(make_config())) as app:
        await request(app, "GET", "/pierce", "evt=c&oid=1&url=&rad=198.51.100.7&ua=x")
        await request(app, "GET", "/pierce", "evt=c&oid=1&url=&rad=198.51.100.7", client=TRUSTED)
        app.metrics.flush()
        text = app.metrics.render()[0].decode()
    assert 'oceanus_legacy_params_ignored_total{param="rad",stream="pageview"} 1.0' in text
    assert 'oceanus_legacy_params_ignored_total{param="ua",stream="pageview"} 1.0' in text


async def test_debug_dump_for_debug_networks_only_and_without_headers_or_environment(
    make_config: MakeConfig, redis_server: RedisServer
) -> None:
    os.environ["OCEANUS_TEST_SECRET"] = "env-s3cret-value"
    try:
        async with running(App(make_config(debug_networks=("203.0.113.0/24",)))) as app:
            ok = await request(
                app,
                "GET",
                "/swallow",
                f"{SID}&evt=Open&oid=1&url=&debug=1",
                headers=[("Cookie", "session=hdr-s3cret"), ("X-Api-Key", "hdr-s3cret")],
            )
            bad = await request(app, "GET", "/swallow", "sid=zz&evt=x&oid=1&url=&debug=1")
            outside = await request(
                app, "GET", "/swallow", f"{SID}&evt=x&oid=1&url=&debug=1", client=("198.51.100.1", 1)
            )
    finally:
        del os.environ["OCEANUS_TEST_SECRET"]
    assert ok.status == 200
    assert ok.headers["content-type"] == "text/plain; charset=utf-8"
    text = ok.body.decode()
    assert "route: /swallow -> stream pageview (profile swallow2016)" in text
    assert "'evt': 'Open'" in text
    assert "'evt': 'open'" in text
    assert "validation: valid" in text
    assert "redis: written" in text
    assert "s3cret" not in text
    assert os.environ.get("PATH", "-") not in text
    assert bad.status == 400
    assert "validation: refused: sid: pattern" in bad.body.decode()
    assert "redis: not written" in bad.body.decode()
    assert outside.status == 200
    assert outside.body == GIF
    # The debugged event is stored as any other; the refused one is not.
    assert [r["evt"] for r in queued_rows(redis_server, "pageview")] == ["open", "x"]


async def test_rstatus_answers_503_past_twice_one_write_per_stream(
    make_config: MakeConfig, redis_server: RedisServer
) -> None:
    base = make_config()
    small = {
        n: msgspec.structs.replace(s, batch=msgspec.structs.replace(s.batch, max_rows=1, min_rows=1))
        for n, s in base.streams.items()
        if n in ("pageview", "form", "ecview")
    }
    cfg = msgspec.structs.replace(base, streams=small)  # limit: 2 x (1 + 1 + 1) = 6 rows
    async with running(App(cfg)) as app:
        for i in range(6):
            await request(app, "GET", "/swallow", f"sid=a{i}&evt=x&oid=1&url=")
        at_limit = await request(app, "GET", "/rstatus")
        await request(app, "GET", "/swallow", "sid=a7&evt=x&oid=1&url=")
        past = await request(app, "GET", "/rstatus")
    assert at_limit.status == 200
    assert at_limit.body == b"ok"
    assert past.status == 503
    assert b"total/limit:7/6" in past.body


async def test_health_is_503_when_redis_is_gone(make_config: MakeConfig, redis_server: RedisServer) -> None:
    async with running(App(make_config())) as app:
        redis_server.stop()
        r = await request(app, "GET", "/hc")
    assert r.status == 503
    assert r.body == b"503 server error\n"


# -- the stationery-EC shop's server events ------------------------------------------------

SHOP_MESSAGE = {
    "userid": "42",
    "userage": "999",
    "usergender": "F",
    "useroccupation": "engineer",
    "useraction": "/items/3",
    "Actiontimestamp": "2026-12-04 09:15:00",
}
#: 2026-12-04 09:15 in Japan (UTC+9) is 00:15 UTC.
VIEWED_AT_US = 1_796_343_300_000_000


async def test_shop_message_is_stored_once_in_canonical_columns_at_the_utc_time(
    make_config: MakeConfig, redis_server: RedisServer
) -> None:
    async with running(App(make_config())) as app:
        r = await request(
            app,
            "POST",
            "/e/ecview",
            body=json.dumps(SHOP_MESSAGE).encode(),
            headers=[("Content-Type", "application/json")],
        )
    assert r.status == 200
    assert r.json() == {"accepted": 1}
    [row] = queued_rows(redis_server, "ecview")
    assert {k: row[k] for k in ("user_id", "age", "gender", "occupation", "screen", "viewed_at", "extra")} == {
        "user_id": "42",
        "age": None,
        "gender": "female",
        "occupation": "engineer",
        "screen": "/items/3",
        "viewed_at": VIEWED_AT_US,
        "extra": None,
    }
    assert int(datetime(2026, 12, 4, 0, 15, tzinfo=UTC).timestamp()) * 1_000_000 == VIEWED_AT_US


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({**SHOP_MESSAGE, "userage": "35", "usergender": "M"}, {"age": 35, "gender": "male"}),
        (
            {"user_id": "42", "age": 35, "gender": "male", "viewed_at": "2026-12-04T09:15:00"},
            {"age": 35, "gender": "male", "viewed_at": VIEWED_AT_US},
        ),
        ({"user_id": "42", "viewed_at": "2026-12-04T00:15:00Z"}, {"viewed_at": VIEWED_AT_US}),
        ({"userid": "42", "user_id": "7"}, {"user_id": "7", "extra": None}),
        ({"userid": "42", "userage": 999}, {"age": None}),
    ],
)
async def test_both_spellings_and_explicit_offsets(
    event: dict[str, Any], expected: dict[str, Any], make_config: MakeConfig, redis_server: RedisServer
) -> None:
    async with running(App(make_config())) as app:
        r = await request(app, "POST", "/e/ecview", body=json.dumps(event).encode())
    assert r.status == 200, r.error
    [row] = queued_rows(redis_server, "ecview")
    assert {k: row[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({**SHOP_MESSAGE, "userage": "abc"}, "age: type"),
        ({**SHOP_MESSAGE, "userage": "131"}, "age: max"),
        ({**SHOP_MESSAGE, "usergender": "X"}, "gender: enum"),
        ({**SHOP_MESSAGE, "userid": ""}, "user_id: required"),
        ({k: v for k, v in SHOP_MESSAGE.items() if k != "userid"}, "user_id: required"),
    ],
)
async def test_shop_message_errors_name_the_canonical_field(
    event: dict[str, Any], error: str, make_config: MakeConfig, redis_server: RedisServer
) -> None:
    async with running(App(make_config())) as app:
        r = await request(app, "POST", "/e/ecview", body=json.dumps(event).encode())
    assert r.status == 400, r.error
    assert r.error.startswith(error), r.error


STREAM = '[streams.s.fields]\nsid = { type = "string" }\n'


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            STREAM + '[[streams.s.aliases]]\npath = "/b/x"',
            "streams.s.aliases[0].path: /b/x is a route of the collector",
        ),
        (STREAM + '[[streams.s.aliases]]\npath = "/metrics"', "is a route of the collector itself"),
        (
            STREAM + '[[streams.s.aliases]]\npath = "/a"\n[[streams.s.aliases]]\npath = "/a"',
            "streams.s.aliases[1].path: /a is also streams.s.aliases[0].path",
        ),
        (
            '[collector]\nlegacy_routes = { "/a" = "health" }\n' + STREAM + '[[streams.s.aliases]]\npath = "/a"',
            "/a is also collector.legacy_routes./a",
        ),
        (STREAM + '[[streams.s.aliases]]\npath = "/a"\nprofile = "p"', "streams.s.aliases[0].profile: no profile"),
        (STREAM + "[streams.s.profiles.p.fields]\nnope = {}", "streams.s.profiles.p.fields.nope: not a field"),
        (STREAM + '[streams.s.profiles.p.fields]\nsid = { type = "int" }', "streams.s.profiles.p.fields.sid.type"),
        ('[streams.s]\ntimezone = "Mars/Olympus"\n' + STREAM, "streams.s.timezone: unknown time zone"),
        ('[streams.s.fields]\na = { aliases = ["b"] }\nb = {}', "streams.s.fields.a.aliases[0]: `b` already names"),
        ('[streams.s.fields]\na = { aliases = ["ip"] }', "streams.s.fields.a.aliases[0]: `ip` is a column"),
        ('[streams.s.fields]\na = { transforms = ["shout"] }', "unknown transform 'shout'"),
        ('[streams.s.fields]\na = { transforms = ["truncate"] }', "`truncate` needs `max_length`"),
        ('[streams.s.fields]\na = { type = "int", transforms = ["sort_keys"] }', "string and json fields only"),
        ('[streams.s.fields]\na = { type = "string", coerce = true }', "`coerce` applies to int"),
        ('[streams.s.fields]\na = { required = true, default = "x" }', "`default` and `required`"),
        ('[collector]\ndebug_networks = ["nope"]\n' + STREAM, "collector.debug_networks[0]"),
    ],
)
def test_config_errors_name_the_key(toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config.loads(toml)
    assert message in str(exc.value), str(exc.value)


async def test_truncate_and_remove_transforms(make_config: MakeConfig, redis_server: RedisServer) -> None:
    spool = make_config().collector.spool_dir
    cfg = config.loads(
        f'[redis]\nurl = "{redis_server.url}"\n[collector]\nspool_dir = "{spool}"\n'
        '[streams.s.fields]\na = { max_length = 3, transforms = ["remove:-/", "truncate"] }\n'
    )
    async with running(App(cfg)) as app:
        r = await request(app, "GET", "/b/s", "a=a-b/cdef")
    assert r.status == 200
    assert [row["a"] for row in queued_rows(redis_server, "s")] == ["abc"]


def test_native_pixel_path_keeps_the_plain_validator(make_config: MakeConfig) -> None:
    # Aliases, maps and profiles live in other validators and in a dict consulted only
    # after every native route missed: /b/pageview runs the same loop as before them.
    app = App(make_config())
    assert type(app._validators["pageview"]) is StreamValidator
    assert type(app._validators["form"]) is StreamValidator
    assert type(app._validators["ecview"]) is MappedValidator
    assert "/b/pageview" not in app._legacy
    assert "/swallow" in app._legacy


async def test_pierce_with_a_write_key_speaks_for_the_end_client(
    make_config: MakeConfig, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCEANUS_TEST_PV_KEYS", "k-shortener-0123456789")
    cfg = make_config(access={"pageview": config.StreamAccess(keys_env="OCEANUS_TEST_PV_KEYS")})
    query = "evt=click&oid=1&url=u&rad=198.51.100.7&ua=Bot%2F2"
    async with running(App(cfg)) as app:
        keyless = await request(app, "GET", "/pierce", query)
        wrong = await request(
            app, "GET", "/pierce", "evt=click&oid=1&url=u&rad=bad", headers=[("X-Oceanus-Key", "nope")]
        )
        keyed = await request(app, "GET", "/pierce", query, headers=[("X-Oceanus-Key", "k-shortener-0123456789")])
    assert keyless.status == 401
    assert keyless.error.startswith("key: required")
    assert wrong.status == 401
    assert wrong.error.startswith("key: valid")
    assert keyed.status == 200
    assert keyed.body == b"ok"
    [row] = queued_rows(redis_server, "pageview")
    assert (row["ip"], row["ua"], row["device"]) == ("198.51.100.7", "Bot/2", "bot")


def test_an_alias_under_the_demo_pages_is_refused() -> None:
    with pytest.raises(ConfigError, match="/demo/x is a route of the collector itself"):
        config.loads(STREAM + '[[streams.s.aliases]]\npath = "/demo/x"')
