"""oceanus.js in a real Chromium against a live collector and Redis: the demo
journey, sendBeacon on a closing page, the pixel fallback, privacy signals,
and the live status page."""

from __future__ import annotations

import http.server
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.conftest import ARTIFACTS, STATUS_TOKEN, HoldingProxy, LiveCollector, http_get
from tests.support.servers import free_port, wait_for

SID_RE = re.compile(r"^[0-9a-f]{32}$")
PAGE_TIMEOUT_MS = 10_000


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser profile: no cookie, so a new sid."""
    ctx = browser.new_context(viewport={"width": 1200, "height": 800})
    ctx.set_default_timeout(PAGE_TIMEOUT_MS)
    # Outbound links go nowhere real: answered inside the browser.
    ctx.route(
        re.compile(r"^https://example\.(com|org)/.*"),
        lambda route: route.fulfill(status=200, content_type="text/html", body="<title>away</title>"),
    )
    try:
        yield ctx
    finally:
        ctx.close()


def _sid(page: Any) -> str:
    page.wait_for_function("document.cookie.indexOf('oceanus_sid=') >= 0")
    cookie = dict(part.strip().split("=", 1) for part in page.evaluate("document.cookie").split(";"))
    sid: str = cookie["oceanus_sid"]
    assert SID_RE.match(sid), sid
    return sid


def _tag_ready(page: Any) -> None:
    page.wait_for_function("window.oceanus && window.oceanus.v === 1 && document.readyState === 'complete'")


def test_demo_journey_rows_sid_types_and_ref_chain(live: LiveCollector, context: Any) -> None:
    base = live.url
    page = context.new_page()
    page.goto(f"{base}/demo?uid=u-42")
    sid = _sid(page)
    live.wait_rows("pageview", sid, 1)
    # Single-page-app navigation: no reload, one page view each. Each step waits
    # for its row so the order in Redis is the order of the steps.
    page.click("header >> text=Pricing")
    live.wait_rows("pageview", sid, 2)
    page.click("header >> text=Home")
    live.wait_rows("pageview", sid, 3)
    page.click("#custom")
    live.wait_rows("pageview", sid, 4)
    page.click("header >> text=Contact")
    live.wait_rows("pageview", sid, 5)
    page.fill("#f-name", "  Ada Lovelace ")
    page.fill("#f-cname", "Analytical Engines")
    page.fill("#f-email", "ADA@Example.com")
    page.fill("#f-tel", "+44 20 7946 0000")
    page.fill("#f-message", "Please call back")
    page.fill("#f-password", "hunter2")
    page.click("#contact button[type=submit]")
    page.wait_for_selector("#thanks:not([hidden])")
    # A full page load: the cookie carries the same sid to the new document.
    page.click("#full-nav")
    page.wait_for_url(f"{base}/demo/docs")
    rows = live.wait_rows("pageview", sid, 6)
    assert len(rows) == 6
    assert _sid(page) == sid

    u = f"{base}/demo"
    expected = [  # (evt, url, ref, title)
        ("page", f"{u}?uid=u-42", None, "oceanus demo: home"),
        ("page", f"{u}/pricing", f"{u}?uid=u-42", "oceanus demo: pricing"),
        ("page", u, f"{u}/pricing", "oceanus demo: home"),
        ("signup", u, f"{u}/pricing", "oceanus demo: home"),
        ("page", f"{u}/contact", u, "oceanus demo: contact"),
        ("page", f"{u}/docs", f"{u}/contact", "oceanus demo: docs"),
    ]
    assert [(r["evt"], r["url"], r["ref"], r["tit"]) for r in rows] == expected
    for r in rows:
        assert r["sid"] == sid
        assert r["scr"]
        assert re.fullmatch(r"\d+x\d+", r["scr"])
        assert r["vie"] == "1200x800"
        assert r["enc"] == "UTF-8"
        assert r["ip"] == "127.0.0.1"
        assert "Chrome" in r["ua"]
        assert r["extra"] is None  # the tag sends only the stream's own fields
    # uid comes from init, and only the first document was given it.
    assert [r["uid"] for r in rows] == ["u-42"] * 5 + [None]
    signup = rows[3]
    assert signup["oid"] == "plan-pro"
    assert json.loads(signup["jsn"]) == {"plan": "pro", "seats": 3}

    forms = live.wait_rows("form", sid, 1)
    assert len(forms) == 1
    form = forms[0]
    # Stored after the server's transforms (strip, lowercase).
    assert (form["name"], form["cname"], form["email"], form["tel"]) == (
        "Ada Lovelace",
        "Analytical Engines",
        "ada@example.com",
        "+44 20 7946 0000",
    )
    assert json.loads(form["jsn"]) == {
        "form": "contact",
        "url": f"{u}/contact",
        "fields": {"message": "Please call back"},
    }
    flat = json.dumps([str(v) for v in form.values()])
    assert "hunter2" not in flat
    assert "not-sent" not in flat


def test_pixel_transport_fallback(live: LiveCollector, context: Any) -> None:
    page = context.new_page()
    with page.expect_request(lambda r: "/b/pageview?" in r.url) as first:
        page.goto(f"{live.url}/demo?transport=pixel")
    assert first.value.method == "GET"
    sid = _sid(page)
    with page.expect_request(lambda r: "/b/pageview?" in r.url and "evt=signup" in r.url):
        page.click("#custom")
    rows = live.wait_rows("pageview", sid, 2)
    assert [r["evt"] for r in rows] == ["page", "signup"]
    assert rows[0]["url"] == f"{live.url}/demo?transport=pixel"
    assert rows[0]["tit"] == "oceanus demo: home"
    assert json.loads(rows[1]["jsn"]) == {"plan": "pro", "seats": 3}


@pytest.mark.parametrize(
    ("option", "signal"),
    [
        ("dnt", "Object.defineProperty(Navigator.prototype, 'doNotTrack', {get: () => '1'})"),
        ("gpc", "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})"),
    ],
    ids=["dnt", "gpc"],
)
def test_privacy_signal_honoured_by_default(live: LiveCollector, context: Any, option: str, signal: str) -> None:
    context.add_init_script(signal)
    sent: list[str] = []
    quiet = context.new_page()
    quiet.on("request", lambda r: sent.append(r.url) if re.search(r"/(e|b)/", r.url) else None)
    quiet.goto(f"{live.url}/demo")
    _tag_ready(quiet)
    quiet.evaluate("oceanus('track', 'signup', {plan: 'x'}); oceanus('page')")
    assert not [c for c in context.cookies() if c["name"] == "oceanus_sid"]
    quiet.click("#outbound", no_wait_after=True)
    # Control, after the quiet page was done: same signal, but this page turns
    # the option off ({dnt: false}), so it sends. Its row landing means anything
    # the quiet page had sent would have been seen by now.
    loud = context.new_page()
    loud.goto(f"{live.url}/demo?{option}=0")
    sid = _sid(loud)
    live.wait_rows("pageview", sid, 1)
    assert sent == []


def test_status_page_shows_live_counts_and_errors(live: LiveCollector, context: Any) -> None:
    base = live.url
    for i in range(5):
        assert http_get(f"{base}/b/pageview?sid=abc{i}&evt=status")[0] == 200
    payload = "NOT-A-HEX-SECRET"
    status, headers, _ = http_get(f"{base}/b/pageview?sid={urllib.parse.quote(payload)}&evt=x")
    assert status == 400
    assert headers["x-oceanus-error"].startswith("sid: pattern")

    assert http_get(f"{base}/_/status")[0] == 401
    assert http_get(f"{base}/_/status.json", {"X-Oceanus-Token": "nope"})[0] == 401
    code, _, body = http_get(f"{base}/_/status.json", {"X-Oceanus-Token": STATUS_TOKEN})
    assert code == 200
    assert payload.lower() not in body.decode().lower()

    page = context.new_page()
    page.goto(f"{base}/_/status?token={STATUS_TOKEN}")
    row = page.locator("#streams tr[data-stream=pageview]")
    row.wait_for()
    cells = row.locator("td")

    def frames() -> int:
        return int(cells.nth(5).inner_text().replace(",", ""))

    wait_for(lambda: frames() >= 1 and float(cells.nth(1).inner_text()) > 0, timeout=10, what="live counts")
    before = frames()
    assert page.locator("#redis").inner_text() == "up"
    assert cells.nth(8).inner_text() != "-"  # the oldest unflushed event has an age
    # Collectors publish errors with their next Redis round: wait for the page to show it.
    wait_for(
        lambda: any(
            "pageview" in e and "sid" in e and "pattern" in e
            for e in page.locator("#errors tbody tr").all_inner_texts()
        ),
        timeout=10,
        what="the sid/pattern error on the page",
    )
    assert payload.lower() not in page.content().lower()

    # The page refreshes itself: more traffic shows up without a reload.
    for i in range(3):
        assert http_get(f"{base}/b/pageview?sid=def{i}&evt=status")[0] == 200
    wait_for(lambda: frames() > before, timeout=10, what="the status page to refresh")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "status.png"), full_page=True)


SITE_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>shop</title>
<script>
  (function (w, d, n, u) {
    w[n] = w[n] || function () { (w[n].q = w[n].q || []).push(arguments); };
    var s = d.createElement('script'); s.async = 1; s.src = u; d.head.appendChild(s);
  })(window, document, 'oceanus', '%(tag)s');
  oceanus('track', 'early', {n: 1});
  oceanus('init', {cookieDays: 0, sameSite: 'Strict', transport: 'fetch', clicks: false});
</script></head><body>
<a id="away" href="https://example.com/x">away</a>
<form id="f" data-oceanus-form="lead">
  <input name="name" value="%(long)s"><input name="email" value="not an address">
  <input data-oceanus-field="tel" name="phone" value="+1 555">
  <input name="topic" value="pricing"><input name="ignored" value="x" data-oceanus-ignore>
  <input type="checkbox" name="news" value="yes" checked><input type="checkbox" name="promo" value="yes">
  <button>go</button>
</form>
<script>
  document.getElementById('f').addEventListener('submit', function (e) { e.preventDefault(); });
  document.getElementById('away').addEventListener('click', function (e) { e.preventDefault(); });
</script>
</body></html>"""


@pytest.fixture
def proxy(live: LiveCollector) -> Iterator[HoldingProxy]:
    p = HoldingProxy(live.port)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def site(live: LiveCollector, proxy: HoldingProxy) -> Iterator[str]:
    """Another origin on loopback (a real server: Chrome keeps a routed page out
    of the loopback address space) serving pages that embed the tag."""
    pages = {
        "/shop": (SITE_PAGE % {"tag": f"{live.url}/oceanus.js", "long": "N" * 200}).encode(),
        "/leave": (LEAVE_PAGE % {"tag": f"{live.url}/oceanus.js", "endpoint": proxy.url}).encode(),
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            html = pages["/leave" if self.path.startswith("/leave") else "/shop"]
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # localhost vs 127.0.0.1: another origin and another site than the collector.
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_tag_on_another_site_cookie_options_history_and_form_fitting(
    live: LiveCollector, context: Any, site: str
) -> None:
    site = f"{site}/shop"
    page = context.new_page()
    with page.expect_request(lambda r: r.url == f"{live.url}/e/pageview") as first:
        page.goto(f"{site}/home")
    assert first.value.resource_type == "fetch"  # transport: 'fetch' chosen in init
    sid = _sid(page)
    cookie = next(c for c in context.cookies() if c["name"] == "oceanus_sid")
    assert cookie["domain"] == "localhost"
    assert cookie["sameSite"] == "Strict"
    assert cookie["expires"] == -1  # cookieDays: 0 -> a session cookie

    # A call queued before init waits for it; two fetches in flight may land in either order.
    rows = sorted(live.wait_rows("pageview", sid, 2), key=lambda r: r["evt"] != "page")
    assert [(r["evt"], r["url"]) for r in rows] == [("page", f"{site}/home"), ("early", f"{site}/home")]
    assert json.loads(rows[1]["jsn"]) == {"n": 1}

    page.evaluate("history.replaceState({}, '', location.href)")  # same URL: not a new page view
    page.evaluate("oceanus('identify', 'u-9'); history.pushState({}, '', '/shop/cart')")
    live.wait_rows("pageview", sid, 3)
    page.go_back()  # popstate
    rows = live.wait_rows("pageview", sid, 4)
    assert len(rows) == 4
    assert [(r["url"], r["ref"], r["uid"]) for r in rows] == [
        (f"{site}/home", None, None),
        (f"{site}/home", None, None),
        (f"{site}/cart", f"{site}/home", "u-9"),
        (f"{site}/home", f"{site}/cart", "u-9"),
    ]
    page.click("#away")  # clicks: false (the page keeps the link from navigating)
    page.click("#f button")
    form = live.wait_rows("form", sid, 1)[0]
    # Trimmed to the field's max_length instead of refused; the email the stream
    # would refuse moved into jsn, so the post is still stored.
    assert form["name"] == "N" * 128
    assert form["email"] is None
    assert form["tel"] == "+1 555"
    assert json.loads(form["jsn"]) == {
        "form": "lead",
        "url": f"{site}/home",
        "fields": {"email": "not an address", "topic": "pricing", "news": "yes"},
    }
    assert all(r["evt"] != "click" for r in live.rows("pageview", sid))


LEAVE_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>leave</title>
<script>
  (function (w, d, n, u) {
    w[n] = w[n] || function () { (w[n].q = w[n].q || []).push(arguments); };
    var s = d.createElement('script'); s.async = 1; s.src = u; d.head.appendChild(s);
  })(window, document, 'oceanus', '%(tag)s');
  oceanus('init', {endpoint: '%(endpoint)s'});
</script></head><body>
<p style="margin-top: 300px">Read this, then leave:</p> <a id="out" href="https://example.com/">example.com</a>
</body></html>"""


def test_page_closed_right_after_an_outbound_click_still_delivers_it(
    live: LiveCollector, context: Any, site: str, proxy: HoldingProxy
) -> None:
    # Events go through a proxy that forwards a request only if the browser still
    # holds it half a second later: the page is long gone by then.
    page = context.new_page()
    page.goto(f"{site}/leave")
    sid = _sid(page)
    live.wait_rows("pageview", sid, 1)
    box = page.locator("#out").bounding_box()
    assert box is not None
    page.click("#out", no_wait_after=True)
    page.close()
    rows = live.wait_rows("pageview", sid, 2)
    click = rows[1]
    assert click["evt"] == "click"
    assert click["url"] == f"{site}/leave"
    jsn = json.loads(click["jsn"])
    assert jsn["href"] == "https://example.com/"
    assert jsn["text"] == "example.com"
    # The position: page coordinates inside the link, and which link of the page it was.
    assert box["x"] <= jsn["x"] <= box["x"] + box["width"]
    assert box["y"] <= jsn["y"] <= box["y"] + box["height"]
    assert jsn["y"] > 250
    assert jsn["idx"] == 0
    assert proxy.dropped == 0
