"""Locust scenarios for the collector.

Run through ``make loadtest`` (starts the local stack, bounded run time), or by
hand against a collector you started on loopback::

    locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:8080 -u 50 -r 10 -t 30s

User classes (pick with ``--class-picker`` or by name on the command line):
``PixelUser`` (GET /b/pageview), ``FormUser`` (POST /e/form, form-encoded),
``BatchUser`` (POST /e/pageview with JSON arrays), ``MixUser`` (a realistic
mix, with a small share of deliberately invalid requests that must get a 4xx).

Any non-2xx answer to valid traffic is a failure, so locust exits non-zero.
A 4xx to invalid traffic is the expected answer and counts as a success; a
2xx or 5xx to invalid traffic is a failure.
"""

from __future__ import annotations

import os
import random
import secrets
from typing import Any
from urllib.parse import urlencode, urlsplit

from locust import FastHttpUser, between, events, task
from locust.contrib.fasthttp import LocustUserAgent

PAGES = ["/", "/templates/", "/templates/excel/", "/templates/word/estimate", "/search?q=invoice", "/mypage/"]
REFERRERS = ["", "https://www.google.com/", "https://search.yahoo.co.jp/", "https://t.co/abc"]
UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
]


def _only_loopback(environment: Any, **_: Any) -> None:
    # Load is only ever aimed at this machine.
    host = urlsplit(environment.host or "").hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        raise SystemExit(f"refusing to load-test {host!r}: only loopback targets are allowed")


# Registered by a call, not as a decorator: ``add_listener`` is unannotated, and as a
# decorator it would hide the listener's signature from the type checker.
events.init.add_listener(_only_loopback)


def pageview(sid: str) -> dict[str, str]:
    page = random.choice(PAGES)
    return {
        "sid": sid,
        "evt": random.choice(["pv", "pv", "pv", "click", "scroll"]),
        "url": f"https://www.bizocean.example{page}",
        "ref": random.choice(REFERRERS),
        "tit": "書式の王様 bizocean — テンプレート",
        "scr": random.choice(["1920x1080", "390x844", "1440x900"]),
        "vie": random.choice(["1903x947", "390x664", "1440x789"]),
        "enc": "UTF-8",
    }


class _TaskJudgedAgent(LocustUserAgent):
    """The user agent that lets every status through to the task.

    Every answer is judged by the task itself (``catch_response``). Left to the HTTP
    client, a 4xx raises inside it, and for the pixel's GIF body its error report then
    fails decoding the bytes as text (geventhttpclient 2.6), which ends the user with a
    traceback instead of a counted success.
    """

    valid_response_codes = frozenset(range(100, 600))


class _Base(FastHttpUser):
    abstract = True
    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        self.sid = secrets.token_hex(16)
        self.ua = random.choice(UAS)
        # FastHttpSession builds its LocustUserAgent itself, with no way to pass another
        # class; the subclass only overrides a class attribute, so the live agent can
        # take it on as it is (``valid_response_codes`` is a ClassVar: not per instance).
        self.client.client.__class__ = _TaskJudgedAgent

    def _ok(self, resp: Any) -> None:
        if not 200 <= resp.status_code < 300:
            resp.failure(f"valid request answered {resp.status_code}: {resp.headers.get('X-Oceanus-Error', '')}")
        else:
            resp.success()

    def pixel(self) -> None:
        query = urlencode(pageview(self.sid))
        with self.client.get(
            f"/b/pageview?{query}", name="/b/pageview", headers={"User-Agent": self.ua}, catch_response=True
        ) as resp:
            self._ok(resp)

    def form(self) -> None:
        body = urlencode(
            {
                "sid": self.sid,
                "name": "山田 太郎",
                "cname": "Example K.K.",
                "email": f"user{random.randint(1, 10**6)}@example.com",
                "tel": "03-1234-5678",
            }
        )
        with self.client.post(
            "/e/form",
            data=body,
            name="/e/form",
            catch_response=True,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as resp:
            self._ok(resp)

    def batch(self) -> None:
        rows = [pageview(self.sid) for _ in range(random.randint(2, 20))]
        with self.client.post("/e/pageview", json=rows, name="/e/pageview[batch]", catch_response=True) as resp:
            self._ok(resp)
            if resp.status_code == 200 and resp.json().get("accepted") != len(rows):
                resp.failure(f"accepted {resp.json().get('accepted')} of {len(rows)}")

    def invalid(self) -> None:
        bad = pageview(self.sid)
        bad["sid"] = "NOT-HEX!"
        with self.client.get(f"/b/pageview?{urlencode(bad)}", name="/b/pageview[invalid]", catch_response=True) as resp:
            if resp.status_code == 400 and resp.headers.get("X-Oceanus-Error"):
                resp.success()
            else:
                resp.failure(f"invalid request answered {resp.status_code}")


class PixelUser(_Base):
    @task
    def t(self) -> None:
        self.pixel()


class FormUser(_Base):
    @task
    def t(self) -> None:
        self.form()


class BatchUser(_Base):
    @task
    def t(self) -> None:
        self.batch()


class MixUser(_Base):
    weight = int(os.environ.get("OCEANUS_LOADTEST_MIX_WEIGHT", "1"))

    @task(80)
    def pv(self) -> None:
        self.pixel()

    @task(8)
    def post_form(self) -> None:
        self.form()

    @task(10)
    def post_batch(self) -> None:
        self.batch()

    @task(2)
    def bad(self) -> None:
        self.invalid()
