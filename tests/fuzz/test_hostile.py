"""Hostile inputs, one test each: every one gets a 4xx naming the limit or the
rule (or, below the app, a refused connection), fast, and the collector keeps
serving afterwards. None may produce a 5xx or take the worker down."""

from __future__ import annotations

import gzip
import json
import time

from oceanus import config
from tests.fuzz.asgi import Driver, Response, assert_answer
from tests.fuzz.conftest import REPO
from tests.fuzz.live import headers_of, raw_exchange, status_of, wait_healthy
from tests.reliability.harness import Stack
from tests.support.servers import RedisServer

JSON = [(b"content-type", b"application/json")]
GZIP_JSON = [*JSON, (b"content-encoding", b"gzip")]
#: Each hostile request must be answered within this (seconds): a parser that
#: is quadratic in its input would blow it.
FAST_S = 5.0


def timed(driver: Driver, *args: object, **kwargs: object) -> Response:
    t0 = time.monotonic()
    resp = driver.request(*args, **kwargs)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < FAST_S, "hostile input took too long to refuse"
    assert_answer(resp)
    return resp


def still_accepts(driver: Driver) -> None:
    resp = driver.request("GET", "/b/pageview", query=b"sid=ab&evt=pv")
    assert resp.status == 200, resp.error


def test_ten_megabyte_query_string_in_process(driver: Driver) -> None:
    resp = timed(driver, "GET", "/b/pageview", query=b"sid=ab&evt=pv&x=" + b"a" * 10_000_000)
    assert resp.status == 414
    assert resp.error.startswith("url: max_url_bytes")
    still_accepts(driver)


def test_ten_megabyte_query_string_on_the_wire(live_collector: Stack) -> None:
    request = b"GET /b/pageview?sid=ab&evt=pv&x=" + b"a" * 10_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    status = status_of(raw_exchange(live_collector.port, request))
    # granian may refuse the request line itself (4xx or a closed socket); it must never be a 5xx.
    assert status == 0 or 400 <= status < 500, status
    wait_healthy(live_collector.port)


def test_million_key_json(driver: Driver) -> None:
    body = json.dumps({f"k{i}": 0 for i in range(1_000_000)}).encode()
    resp = timed(driver, "POST", "/e/pageview", body=body, headers=JSON)
    assert resp.status == 413
    assert resp.error.startswith("body: max_body_bytes")
    resp = timed(driver, "POST", "/e/pageview", body=gzip.compress(body, 1), headers=GZIP_JSON)
    assert resp.status == 413
    assert "max_" in resp.error
    still_accepts(driver)


def test_many_keys_inside_every_limit(driver: Driver) -> None:
    """90k keys that fit the body limits (max_json_values too) reach the validator, which names the extra-keys limit."""
    event = {"sid": "ab", "evt": "pv", **{f"k{i}": 0 for i in range(90_000)}}
    body = gzip.compress(json.dumps(event).encode(), 6)
    resp = timed(driver, "POST", "/e/pageview", body=body, headers=GZIP_JSON)
    assert resp.status == 400, resp.error
    assert resp.error.startswith("extra: max_extra_keys"), resp.error
    still_accepts(driver)


def test_deep_nesting_in_a_json_body(driver: Driver) -> None:
    depth = 100_000
    body = b'{"sid":"ab","evt":"pv","jsn":' + b"[" * depth + b"]" * depth + b"}"
    resp = timed(driver, "POST", "/e/pageview", body=body, headers=JSON)
    assert resp.status in (400, 413), resp.error
    still_accepts(driver)


def test_deep_nesting_in_json_text_of_a_query(driver: Driver) -> None:
    depth = 3000
    query = b"sid=ab&evt=pv&jsn=" + b"%5B" * depth + b"%5D" * depth
    resp = timed(driver, "GET", "/b/pageview", query=query[:8000])
    assert resp.status in (400, 414), resp.error
    resp = timed(driver, "GET", "/b/pageview", query=b"sid=ab&evt=pv&jsn=" + b"[" * depth + b"]" * depth)
    assert resp.status == 400, resp.error
    assert resp.error.startswith("jsn: "), resp.error
    still_accepts(driver)


def test_deep_nesting_in_unknown_keys(driver: Driver) -> None:
    depth = 900  # under the decoder's own limit: the extra-column encoder must cope too
    body = b'{"sid":"ab","evt":"pv","deep":' + b"[" * depth + b"]" * depth + b"}"
    timed(driver, "POST", "/e/pageview", body=body, headers=JSON)
    still_accepts(driver)


def test_invalid_utf8(driver: Driver) -> None:
    resp = timed(driver, "GET", "/b/pageview", query=b"sid=ab&evt=\xff\xfe&tit=%ff%c3%28")
    assert resp.status in (200, 400)
    resp = timed(driver, "POST", "/e/pageview", body=b'{"sid":"ab","evt":"\xff\xfe"}', headers=JSON)
    assert resp.status == 400, resp.error
    assert resp.error.startswith("body: "), resp.error
    resp = timed(
        driver,
        "POST",
        "/e/form",
        body=b"sid=ab&name=\xff%ff%c3%28",
        headers=[(b"content-type", b"application/x-www-form-urlencoded")],
    )
    assert resp.status in (200, 400)
    resp = timed(driver, "POST", "/e/pageview", body=b'{"sid":"ab","evt":"pv","\xc3\x28":1}', headers=JSON)
    assert resp.status == 400
    still_accepts(driver)


def test_gzip_bomb(driver: Driver) -> None:
    bomb = gzip.compress(b'{"sid":"ab","evt":"pv","x":"' + b"0" * 200_000_000 + b'"}', 9)
    assert len(bomb) < 1_000_000  # it fits the body limit: only the inflate bound stops it
    resp = timed(driver, "POST", "/e/pageview", body=bomb, headers=GZIP_JSON)
    assert resp.status == 413, resp.error
    assert resp.error.startswith("body: max_decompressed_bytes"), resp.error
    truncated = timed(driver, "POST", "/e/pageview", body=bomb[: len(bomb) // 2], headers=GZIP_JSON)
    assert truncated.status in (400, 413)
    still_accepts(driver)


def test_header_injection_in_values(live_collector: Stack) -> None:
    """CR/LF smuggled in a path, a query value or the JSON body never reaches a response header."""
    port = live_collector.port
    probes = [
        b"GET /b/x%0d%0aSet-Cookie:%20evil=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /x%0d%0aSet-Cookie:%20evil=1%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /b/pageview?sid=%0d%0aSet-Cookie:%20evil=1&evt=pv HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /b/pageview?sid=ab&evt=%0d%0aSet-Cookie:%20evil%3D1%0d%0a HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
        b"GET /b/pageview?sid=ab&evt=pv&event_id=%0d%0aX-Evil:%201 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ]
    body = b'{"sid":"ab","evt":"pv","\\r\\nSet-Cookie: evil=1":1,"event_id":"\\r\\nX-Evil: 1"}'
    probes.append(
        b"POST /e/pageview HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    for probe in probes:
        resp = raw_exchange(port, probe)
        status = status_of(resp)
        assert 200 <= status < 500, (status, probe[:80])
        names = [name for name, _ in headers_of(resp)]
        assert b"set-cookie" not in names, resp[:400]
        assert b"x-evil" not in names, resp[:400]


def test_path_traversal_in_static_paths(live_collector: Stack) -> None:
    port = live_collector.port
    secret = (REPO / "pyproject.toml").read_bytes()[:40]
    targets = [
        b"/../pyproject.toml",
        b"/%2e%2e/pyproject.toml",
        b"/..%2fpyproject.toml",
        b"/oceanus.js/../../pyproject.toml",
        b"/static/../../pyproject.toml",
        b"/static/..%2f..%2fpyproject.toml",
        b"/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        b"/oceanus.js%00.html",
        b"/....//....//pyproject.toml",
        b"/static/%252e%252e/pyproject.toml",
        b"/collector/static/../app.py",
        b"//etc/passwd",
    ]
    for target in targets:
        resp = raw_exchange(port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status = status_of(resp)
        assert status == 0 or 400 <= status < 500, (target, status)
        assert secret not in resp, target
        assert b"root:x:0:0" not in resp, target
        assert b"import " not in resp, target


def test_slow_body_is_cut_at_body_timeout(live_collector: Stack) -> None:
    """A client that trickles its body gets 408 once collector.body_timeout_s (1 s here) passes,
    and the worker serves others meanwhile."""
    head = b"POST /e/pageview HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    t0 = time.monotonic()
    resp = raw_exchange(live_collector.port, [head] + [b" "] * 40, pace_s=0.1, timeout=15)
    elapsed = time.monotonic() - t0
    status = status_of(resp)
    assert status == 408, resp[:300]
    assert b"body_timeout_s" in resp
    assert elapsed < 1.0 + 5.0, elapsed
    wait_healthy(live_collector.port)


def test_integer_beyond_64_bits(fuzz_redis: RedisServer) -> None:
    """An int field without bounds gets 2**64 in a JSON body: a 4xx naming the field, and the
    worker's writer keeps writing (a frame that cannot be encoded must not stop it)."""
    text = (REPO / "oceanus.toml").read_text() + (
        '\n[streams.counter]\nfields = { n = { type = "int" }, f = { type = "float" } }\n'
    )
    import tempfile

    with tempfile.TemporaryDirectory() as spool:
        cfg = config.loads(text, env={"OCEANUS_REDIS_URL": fuzz_redis.url, "OCEANUS_COLLECTOR_SPOOL_DIR": spool})
        d = Driver(cfg)
        try:
            for n in (2**64, -(2**63) - 1, 10**400):
                body = b'{"n":%d}' % n
                resp = timed(d, "POST", "/e/counter", body=body, headers=JSON)
                assert resp.status == 400, (n, resp.status, resp.error)
                assert resp.error.startswith("n: "), (n, resp.status, resp.error)
            resp = timed(d, "GET", "/b/counter", query=b"n=" + b"9" * 30)
            assert resp.status == 400, resp.error
            assert resp.error.startswith("n: "), resp.error
            resp = timed(d, "POST", "/e/counter", body=b'{"n":1,"f":1e400}', headers=JSON)
            assert resp.status == 400
            ok = d.request("POST", "/e/counter", body=b'{"n":1}', headers=JSON)
            assert ok.status == 200, ok.error
        finally:
            d.close()


def test_far_future_timestamp(fuzz_config: config.Config) -> None:
    """A timestamp beyond any warehouse's range (1e300 s) is a 400 naming the field, not a frame
    the writer cannot encode. Its own app: if the writer dies, only this test fails."""
    d = Driver(fuzz_config)
    try:
        resp = timed(d, "GET", "/b/ecview", query=b"user_id=u1&viewed_at=1e300")
        assert resp.status == 400, (resp.status, resp.error)
        assert resp.error.startswith("viewed_at: "), (resp.status, resp.error)
        resp = timed(d, "POST", "/e/ecview", body=b'{"user_id":"u1","viewed_at":1e300}', headers=JSON)
        assert resp.status == 400, (resp.status, resp.error)
        assert resp.error.startswith("viewed_at: "), (resp.status, resp.error)
        still_accepts(d)
    finally:
        d.close()
