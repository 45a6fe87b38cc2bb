"""``collector.ip_mode``: what the ip column keeps, by unit and through the app into Redis."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import pytest

from collector.app import App
from collector.enrich import IpHasher, ip_store, truncate_ip
from oceanus import config
from oceanus.errors import ConfigError
from tests.collector.asgi import request, running
from tests.collector.conftest import queued_rows
from tests.support.servers import RedisServer

MakeConfig = Callable[..., config.Config]
KEY = "k" * 32
DAY_S = 20_000 * 86_400  # 2024-10-04, UTC midnight


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("203.0.113.0", "203.0.113.0"),
        ("10.255.255.255", "10.255.255.0"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1::"),
        ("2001:db8:ffff:ffff::1", "2001:db8:ffff::"),
        ("::ffff:198.51.100.9", "198.51.100.0"),  # IPv4-mapped: the IPv4 rule
        ("::1", "::"),
        ("testclient", None),
        ("", None),
    ],
)
def test_truncate(addr: str, expected: str | None) -> None:
    assert truncate_ip(addr) == expected
    store = ip_store("truncate")
    assert store is not None
    assert store(addr) == expected
    assert store(addr) == expected


def test_hash_is_keyed_and_changes_with_the_utc_day() -> None:
    h = IpHasher(KEY)
    first = h("203.0.113.7", DAY_S + 10)
    expected = hmac.new(KEY.encode(), b"20000|203.0.113.7", hashlib.sha256).hexdigest()[:16]
    assert first == expected
    assert h("203.0.113.7", DAY_S + 86_399.9) == first  # same UTC day
    next_day = h("203.0.113.7", DAY_S + 86_400)
    assert next_day == hmac.new(KEY.encode(), b"20001|203.0.113.7", hashlib.sha256).hexdigest()[:16]
    assert next_day != first
    assert IpHasher("j" * 32)("203.0.113.7", DAY_S) != h("203.0.113.7", DAY_S)
    assert h("203.0.113.8", DAY_S) != first


def test_full_and_none() -> None:
    assert ip_store("full") is None
    none = ip_store("none")
    assert none is not None
    assert none("203.0.113.7") is None


def test_hash_mode_wants_a_long_key() -> None:
    text = "[streams.s.fields.a]\n"
    with pytest.raises(ConfigError, match=r"collector: `ip_hash_key` must hold at least 32"):
        config.loads(text, env={"OCEANUS_COLLECTOR_IP_MODE": "hash", "OCEANUS_COLLECTOR_IP_HASH_KEY": "x" * 31})
    cfg = config.loads(text, env={"OCEANUS_COLLECTOR_IP_MODE": "hash", "OCEANUS_COLLECTOR_IP_HASH_KEY": KEY})
    assert (cfg.collector.ip_mode, cfg.collector.ip_hash_key) == ("hash", KEY)
    with pytest.raises(ConfigError, match=r"collector\.ip_mode"):
        config.loads(text, env={"OCEANUS_COLLECTOR_IP_MODE": "partial"})


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("full", "2001:db8:1:2::5"),
        ("truncate", "2001:db8:1::"),
        ("none", None),
    ],
)
async def test_the_row_in_redis_holds_what_the_mode_keeps(
    make_config: MakeConfig, redis_server: RedisServer, mode: str, expected: str | None
) -> None:
    async with running(App(make_config(ip_mode=mode))) as app:
        r = await request(app, "GET", "/b/pageview", "sid=ab&evt=v", client=("2001:db8:1:2::5", 1234))
        e = await request(
            app,
            "POST",
            "/e/pageview",
            body=b'[{"sid":"cd","evt":"v"}]',
            headers=[("content-type", "application/json")],
            client=("2001:db8:1:2::5", 1),
        )
    assert r.status == 200
    assert e.status in (200, 202)
    assert [row["ip"] for row in queued_rows(redis_server, "pageview")] == [expected, expected]


@pytest.mark.anyio
async def test_hash_mode_through_the_app(make_config: MakeConfig, redis_server: RedisServer) -> None:
    async with running(App(make_config(ip_mode="hash", ip_hash_key=KEY))) as app:
        for peer in ("203.0.113.7", "203.0.113.7", "203.0.113.8"):
            assert (await request(app, "GET", "/b/pageview", "sid=ab&evt=v", client=(peer, 1))).status == 200
    ips = [row["ip"] for row in queued_rows(redis_server, "pageview")]
    assert ips[0] == ips[1] != ips[2]
    assert all(len(ip) == 16 and int(ip, 16) >= 0 for ip in ips)
    assert "203.0.113" not in "".join(ips)
