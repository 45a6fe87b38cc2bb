"""A page still carrying the 2016 snippet (okeanides.js's API) loads today's tag
from the 2016 path, in a real Chromium against a live collector: every request
and every stored row is compared with what the 2016 tag sent and the 2016
swallow.py stored."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.conftest import LiveCollector

PAGE_TIMEOUT_MS = 10_000
OLD_SID = "0123456789abcdef"  # 16 hex digits: drawn by the 2016 tag
TITLE = "請求書の書き方 | bizocean"
PATH = "/search/12/?keyword=%E8%AB%8B%E6%B1%82%E6%9B%B8"

LEGACY_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>%(title)s</title>
<script>
var memberInfo = {member_state: {id: 'm-7'}};
var oceanus = oceanus || [];
oceanus.q = [
  {evt: 'Search', oid: '77', jsn: {b: 1, a: '\\u00e9'}},
  {evt: 'banner', uid: 'u-1', url: 'https://x.jp/p', tit: 'T', ref: 'https://r.jp/', _private: 'no', other: 'x'}
];
oceanus.autosend = false;
oceanus.click = [];
</script>
<script src="/static/oceanus/okeanides.js"></script>
</head><body style="margin: 0">
<p style="height: 200px">results</p>
<a id="next" href="#next" style="display: inline-block; width: 300px">Next   page<img alt="arrow" width="10"
 height="10" src="data:image/gif;base64,R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=="></a>
</body></html>"""


def sent_2016(opt: dict[str, Any], page: dict[str, str], search: dict[str, str]) -> dict[str, str]:
    """The query okeanides.js built for ``oceanus.q.push(opt)`` (only truthy values, no ``_`` keys)."""
    jsn = dict(opt.get("jsn") or {})
    jsn.update(search)
    args: dict[str, Any] = {
        "oid": opt.get("oid") or 2,
        "evt": opt.get("evt") or "pageview",
        "uid": opt.get("uid") or page["member_id"],
        "ref": (opt.get("ref") or page["referrer"])[:1024],
        "tit": (opt.get("tit") or page["title"])[:256],
        "url": (opt.get("url") or page["url"])[:1024],
        "enc": page["charset"],
        "scr": page["screen"],
        "vie": page["viewport"],
        "jsn": json.dumps(jsn, ensure_ascii=False, separators=(",", ":")) if jsn else None,
        "sid": page["sid"],
    }
    return {k: str(v) for k, v in args.items() if v}


def stored_2016(query: dict[str, str]) -> dict[str, Any]:
    """What swallow.py put in the row for that query: adjust_user_data, then clean_json."""
    row: dict[str, Any] = {
        k: query.get(k) for k in ("sid", "evt", "oid", "uid", "url", "ref", "tit", "jsn", "scr", "vie", "enc")
    }
    row["sid"] = row["sid"].lower()
    row["evt"] = row["evt"].lower()
    if row["enc"]:
        row["enc"] = row["enc"].upper().replace("/", "")
    if row["jsn"]:
        row["jsn"] = json.dumps(json.loads(row["jsn"]), sort_keys=True)
    return row


@pytest.fixture
def context(browser: Any, live: LiveCollector) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1000, "height": 700})
    ctx.set_default_timeout(PAGE_TIMEOUT_MS)
    ctx.add_cookies([{"name": "oceanus_sid", "value": OLD_SID, "url": live.url}])
    ctx.route(
        re.compile(r".*/search/12/.*"),
        lambda route: route.fulfill(
            status=200, content_type="text/html; charset=utf-8", body=LEGACY_PAGE % {"title": TITLE}
        ),
    )
    try:
        yield ctx
    finally:
        ctx.close()


def test_2016_snippet_sends_and_stores_what_2016_did(live: LiveCollector, context: Any) -> None:
    page = context.new_page()
    sent: list[tuple[str, dict[str, str]]] = []

    def seen(request: Any) -> None:
        url = urllib.parse.urlsplit(request.url)
        if url.path.startswith("/swallow"):
            sent.append((url.path, dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))))

    page.on("request", seen)
    # Waiting for each request also lets Playwright deliver its event to `seen`.
    with page.expect_request(lambda r: "evt=Search" in r.url), page.expect_request(lambda r: "evt=banner" in r.url):
        page.goto(live.url + PATH)
    page.wait_for_function("document.readyState === 'complete' && window.oceanus.v === 1")
    # The page as the 2016 tag read it (before the click adds #next to the URL).
    facts = page.evaluate("""() => ({
        url: document.URL, title: document.title, referrer: document.referrer, charset: document.charset,
        screen: screen.width + 'x' + screen.height,
        viewport: document.documentElement.clientWidth + 'x' + document.documentElement.clientHeight,
        ua: navigator.userAgent})""")
    facts.update(sid=OLD_SID, member_id="m-7")
    live.wait_rows("pageview", OLD_SID, 2)
    with page.expect_request(lambda r: "evt=Later" in r.url):
        page.evaluate("oceanus.q.push({evt: 'Later', oceanus_url: location.origin + '/swallow/skj'})")
    live.wait_rows("pageview", OLD_SID, 3)
    box = page.locator("#next").bounding_box()
    assert box is not None
    x, y = int(box["x"]) + 37, int(box["y"]) + 5
    with page.expect_request(lambda r: "evt=linkclick" in r.url):
        page.mouse.click(x, y)
    rows = live.wait_rows("pageview", OLD_SID, 4)

    assert facts["charset"] == "UTF-8"
    assert facts["title"] == TITLE
    search = {"kwd": "請求書", "cat": "12"}
    expected = [
        ("/swallow", sent_2016({"evt": "Search", "oid": "77", "jsn": {"b": 1, "a": "é"}}, facts, search)),
        (
            "/swallow",
            sent_2016(
                {"evt": "banner", "uid": "u-1", "url": "https://x.jp/p", "tit": "T", "ref": "https://r.jp/"},
                facts,
                search,
            ),
        ),
        ("/swallow/skj", sent_2016({"evt": "Later"}, facts, search)),
        (
            "/swallow",
            sent_2016(
                {
                    "evt": "linkclick",
                    "url": "#next",
                    "ref": facts["url"],
                    "tit": "[text]Next page[alt]arrow",
                    "jsn": {"pageX": x, "pageY": y},
                },
                facts,
                search,
            ),
        ),
    ]
    # Requests: the same path and query, parameter for parameter (JSON compared as values).
    assert len(sent) == 4
    by_evt = {q["evt"]: (path, q) for path, q in sent}
    for path, query in expected:
        got_path, got = by_evt[query["evt"]]
        assert got_path == path
        assert {k: v for k, v in got.items() if k != "jsn"} == {k: v for k, v in query.items() if k != "jsn"}
        assert json.loads(got["jsn"]) == json.loads(query["jsn"])
    # Rows: column for column what swallow.py stored, plus the server's own columns.
    stored = {r["evt"]: r for r in rows}
    assert len(rows) == 4
    assert len(stored) == 4
    for _path, query in expected:
        want = stored_2016(query)
        row = stored[want["evt"]]
        assert {k: row[k] for k in want} == want
        assert row["ua"] == facts["ua"]
        assert row["ip"] == "127.0.0.1"
        assert row["extra"] is None
    click = stored["linkclick"]
    assert click["url"] == "#next"
    assert click["tit"] == "[text]Next page[alt]arrow"
    assert json.loads(click["jsn"]) == {"pageX": int(x), "pageY": int(y), "kwd": "請求書", "cat": "12"}
    assert stored["search"]["uid"] == "m-7"
    assert stored["banner"]["uid"] == "u-1"
    # The returning visitor kept the 16-hex id.
    assert next(c["value"] for c in context.cookies() if c["name"] == "oceanus_sid") == OLD_SID


def test_autosend_sends_one_default_page_view_through_the_lean_tag(live: LiveCollector, browser: Any) -> None:
    # /oceanus.js finds the 2016 snippet and loads /oceanus-2016.js, which sends the page view.
    ctx = browser.new_context()
    ctx.set_default_timeout(PAGE_TIMEOUT_MS)
    ctx.add_cookies([{"name": "oceanus_sid", "value": "abc", "url": live.url}])
    page_html = (
        "<!doctype html><html><head><meta charset='utf-8'><title>plain</title>"
        "<script>var oceanus = oceanus || [];</script>"
        "<script async src='/oceanus.js'></script></head><body>x</body></html>"
    )
    ctx.route(
        re.compile(r".*/plain$"), lambda route: route.fulfill(status=200, content_type="text/html", body=page_html)
    )
    try:
        page = ctx.new_page()
        page.goto(live.url + "/plain")
        [row] = live.wait_rows("pageview", "abc", 1)
        assert (row["evt"], row["oid"], row["url"], row["tit"], row["jsn"]) == (
            "pageview",
            "2",
            live.url + "/plain",
            "plain",
            None,
        )
    finally:
        ctx.close()


def test_native_tag_keeps_an_existing_short_hex_cookie(live: LiveCollector, browser: Any) -> None:
    ctx = browser.new_context()
    ctx.set_default_timeout(PAGE_TIMEOUT_MS)
    ctx.add_cookies([{"name": "oceanus_sid", "value": "00ff00ff00ff00ff", "url": live.url}])
    try:
        page = ctx.new_page()
        page.goto(f"{live.url}/demo")
        row = live.wait_rows("pageview", "00ff00ff00ff00ff", 1)[0]
        assert row["evt"] == "page"
        assert next(c["value"] for c in ctx.cookies() if c["name"] == "oceanus_sid") == "00ff00ff00ff00ff"
    finally:
        ctx.close()
