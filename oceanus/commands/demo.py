"""``oceanus demo``: realistic traffic against a running collector.

Mostly pixel page views with referrers and user agents, some form posts (JSON
and form-encoded), some ``ecview`` events (single and batched), and a sprinkle
of requests that are invalid on purpose, so a newcomer sees both data and
errors flow end to end. Each event carries a unique ``demo_id`` key; the
collector keeps unknown keys in the row's ``extra`` JSON column, so::

    SELECT json_extract_string(extra, '$.demo_id') FROM pageview

finds exactly the events that got a 2xx. ``--report FILE`` writes those ids
(and the rejected ones) for scripts and the end-to-end test.

One keep-alive connection, requests in sequence: the demo shows the pipeline,
it is not a load generator (``make loadtest`` is).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import secrets
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

import msgspec

from oceanus.commands import UsageError
from oceanus.errors import OceanusError

HTTP_TIMEOUT_S = 10.0
PROGRESS_INTERVAL_S = 0.1
BAR_WIDTH = 30
#: Events in one ecview batch POST.
ECVIEW_BATCH = 3
#: Share of requests that are invalid on purpose.
INVALID_SHARE = 0.05

USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
)
PAGES = (
    ("/", "Business templates — Example Docs"),
    ("/templates/invoice", "Invoice template (Excel, Word)"),
    ("/templates/estimate", "Estimate template — free download"),
    ("/templates/resignation-letter", "Resignation letter: samples and how to write one"),
    ("/guides/tax-return", "Filing your tax return, step by step"),
    ("/search?q=contract", "Search: contract"),
)
REFERRERS = (
    "",
    "",
    "https://www.google.com/",
    "https://www.bing.com/search?q=invoice+template",
    "https://t.co/x1y2z3",
    "https://docs.example.com/templates/invoice",
    "https://news.example.net/article/42",
)
SCREENS = ("1920x1080", "1366x768", "390x844", "412x915", "820x1180", "2560x1440")
OCCUPATIONS = ("engineer", "teacher", "designer", "accountant", "student", "sales", "")
NAMES = (
    ("Ada Lovelace", "Analytical Engines Ltd"),
    ("Grace Hopper", "Compilers Inc"),
    ("Hedy Lamarr", "Spread Spectrum KK"),
    ("Alan Turing", "Bombe & Co"),
)
SITE = "https://docs.example.com"


class DemoError(OceanusError):
    """The demo cannot run (no collector at the URL...)."""


class Request(msgspec.Struct, kw_only=True):
    stream: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None = None
    #: demo_id of every event in the request (a batch has several).
    ids: list[str]
    #: False for the requests that are invalid on purpose.
    valid: bool = True
    kind: str = ""


class Report(msgspec.Struct, kw_only=True):
    url: str
    run_id: str
    events: int = 0
    requests: int = 0
    seconds: float = 0.0
    #: stream -> demo_ids the collector acknowledged with a 2xx.
    accepted: dict[str, list[str]] = {}
    #: stream -> demo_ids refused with a 4xx.
    rejected: dict[str, list[str]] = {}
    status_counts: dict[str, int] = {}
    #: 5xx answers and connection errors, in events.
    errors: int = 0
    #: Requests whose outcome differs from the intent (valid but refused, or invalid but accepted).
    unexpected: list[str] = []
    #: A few 4xx messages, to show what the collector says.
    error_samples: list[str] = []


class Generator:
    """Realistic requests; deterministic for a given seed."""

    def __init__(self, rng: random.Random, run_id: str) -> None:
        self.rng = rng
        self.run_id = run_id
        self.seq = 0
        # Returning visitors: a small pool of browser ids, each with one UA.
        self.visitors = [(f"{rng.getrandbits(64):016x}", rng.choice(USER_AGENTS)) for _ in range(40)]

    def next_id(self) -> str:
        self.seq += 1
        return f"{self.run_id}-{self.seq}"

    def pageview_params(self, demo_id: str) -> tuple[dict[str, str], str]:
        sid, ua = self.rng.choice(self.visitors)
        path, title = self.rng.choice(PAGES)
        params = {
            "sid": sid,
            "evt": self.rng.choices(("view", "click", "scroll"), (8, 1, 1))[0],
            "url": SITE + path,
            "ref": self.rng.choice(REFERRERS),
            "tit": title,
            "scr": self.rng.choice(SCREENS),
            "vie": self.rng.choice(SCREENS),
            "enc": "UTF-8",
            "oid": demo_id.rsplit("-", 1)[-1][-16:],
            "demo_id": demo_id,
        }
        if self.rng.random() < 0.3:
            params["uid"] = f"u{self.rng.randrange(1, 500)}"
        return params, ua

    def pageview(self) -> Request:
        demo_id = self.next_id()
        params, ua = self.pageview_params(demo_id)
        return Request(
            stream="pageview",
            method="GET",
            path="/b/pageview?" + urlencode(params),
            headers={"user-agent": ua, "referer": params["url"]},
            ids=[demo_id],
            kind="pixel",
        )

    def form(self) -> Request:
        demo_id = self.next_id()
        sid, ua = self.rng.choice(self.visitors)
        name, company = self.rng.choice(NAMES)
        event = {
            "sid": sid,
            "name": f"  {name} ",
            "cname": company,
            "email": name.split()[0].upper() + "@Example.com ",
            "tel": "+81 3-1234-5678",
            "jsn": json.dumps({"plan": self.rng.choice(("free", "pro"))}),
            "demo_id": demo_id,
        }
        if self.rng.random() < 0.5:
            body = urlencode(event).encode()
            ctype, kind = "application/x-www-form-urlencoded", "form-encoded"
        else:
            body = json.dumps(event).encode()
            ctype, kind = "application/json", "json"
        return Request(
            stream="form",
            method="POST",
            path="/e/form",
            body=body,
            ids=[demo_id],
            kind=kind,
            headers={"content-type": ctype, "user-agent": ua},
        )

    def ecview_event(self, demo_id: str) -> dict[str, object]:
        event: dict[str, object] = {
            "user_id": f"c{self.rng.randrange(1, 300):05d}",
            "age": self.rng.randrange(18, 80),
            "gender": self.rng.choice(("female", "male", "other", "unknown", "Female")),
            "occupation": self.rng.choice(OCCUPATIONS),
            "screen": self.rng.choice(SCREENS),
            "viewed_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "demo_id": demo_id,
        }
        return event

    def ecview(self, room: int) -> Request:
        n = ECVIEW_BATCH if room >= ECVIEW_BATCH and self.rng.random() < 0.25 else 1
        ids = [self.next_id() for _ in range(n)]
        events = [self.ecview_event(i) for i in ids]
        body = json.dumps(events if n > 1 else events[0]).encode()
        return Request(
            stream="ecview",
            method="POST",
            path="/e/ecview",
            body=body,
            ids=ids,
            kind="batch" if n > 1 else "json",
            headers={"content-type": "application/json", "user-agent": self.rng.choice(USER_AGENTS)},
        )

    def invalid(self) -> Request:
        """One request the collector must refuse, naming the field."""
        demo_id = self.next_id()
        kind = self.rng.choice(
            ("missing-sid", "bad-sid", "long-ref", "bad-email", "bad-age", "bad-gender", "unknown-stream")
        )
        params, ua = self.pageview_params(demo_id)
        headers = {"user-agent": ua}
        if kind == "missing-sid":
            del params["sid"]
        elif kind == "bad-sid":
            params["sid"] = "not-hex!"
        elif kind == "long-ref":
            params["ref"] = SITE + "/" + "x" * 1100
        if kind in ("missing-sid", "bad-sid", "long-ref"):
            return Request(
                stream="pageview",
                method="GET",
                path="/b/pageview?" + urlencode(params),
                headers=headers,
                ids=[demo_id],
                valid=False,
                kind=kind,
            )
        if kind == "unknown-stream":
            return Request(
                stream="nosuchstream",
                method="GET",
                path="/b/nosuchstream?" + urlencode(params),
                headers=headers,
                ids=[demo_id],
                valid=False,
                kind=kind,
            )
        headers["content-type"] = "application/json"
        if kind == "bad-email":
            body = {"sid": params["sid"], "email": "not an address", "demo_id": demo_id}
            return Request(
                stream="form",
                method="POST",
                path="/e/form",
                body=json.dumps(body).encode(),
                headers=headers,
                ids=[demo_id],
                valid=False,
                kind=kind,
            )
        event = self.ecview_event(demo_id)
        if kind == "bad-age":
            event["age"] = 200
        else:
            event["gender"] = "robot"
        return Request(
            stream="ecview",
            method="POST",
            path="/e/ecview",
            body=json.dumps(event).encode(),
            headers=headers,
            ids=[demo_id],
            valid=False,
            kind=kind,
        )

    def requests(self, events: int) -> Iterator[Request]:
        sent = 0
        while sent < events:
            r = self.rng.random()
            if r < INVALID_SHARE:
                req = self.invalid()
            elif r < 0.75:
                req = self.pageview()
            elif r < 0.83:
                req = self.form()
            else:
                req = self.ecview(events - sent)
            sent += len(req.ids)
            yield req


class Client:
    """One keep-alive HTTP/1.1 connection, reopened after an error."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--url {url!r}: expected http://HOST:PORT")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.base = parts.path.rstrip("/")
        self.conn: http.client.HTTPConnection | None = None

    def send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, str]:
        """Status and the error text (``X-Oceanus-Error`` or the body) of one request."""
        for attempt in (1, 2):
            if self.conn is None:
                cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
                self.conn = cls(self.host, self.port, timeout=HTTP_TIMEOUT_S)
            try:
                self.conn.request(method, self.base + path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                error = resp.getheader("x-oceanus-error") or (
                    data.decode(errors="replace") if resp.status >= 400 else ""
                )
                return resp.status, error
            except (OSError, http.client.HTTPException):
                self.close()
                # A keep-alive connection the server closed between requests
                # fails on first use: retry once on a fresh one. Only a GET is
                # retried blindly; a POST might have been applied.
                if attempt == 2 or method != "GET":
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Progress:
    """A one-line bar on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.last = 0.0

    def update(self, done: int, counts: Counter[str], force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < PROGRESS_INTERVAL_S):
            return
        self.last = now
        filled = BAR_WIDTH * done // max(1, self.total)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        sys.stderr.write(
            f"\r[{bar}] {done}/{self.total} events  2xx {counts['2xx']}  4xx {counts['4xx']}  errors {counts['err']} "
        )
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def run(url: str, events: int, rate: float, seed: int | None, progress: bool) -> Report:
    if events < 0 or rate <= 0:
        raise UsageError("--events must be >= 0 and --rate > 0")
    client = Client(url)
    try:
        client.send("GET", "/healthz", None, {})
    except (OSError, http.client.HTTPException) as exc:
        raise DemoError(f"no collector answers at {url} ({exc}); start one with `oceanus dev`") from None
    rng = random.Random(seed)
    # The run id prefixes every demo_id: with a seed the traffic repeats, the ids must not.
    run_id = secrets.token_hex(4)
    report = Report(url=url, run_id=run_id)
    counts: Counter[str] = Counter()
    bar = Progress(events, progress)
    start = time.monotonic()
    done = 0
    try:
        for req in Generator(rng, run_id).requests(events):
            # Pace by events: request k leaves at start + (events before it) / rate.
            delay = start + done / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            _send_one(client, req, report, counts)
            done += len(req.ids)
            report.requests += 1
            bar.update(done, counts)
    finally:
        client.close()
        bar.update(done, counts, force=True)
        bar.finish()
    report.events = done
    report.seconds = round(time.monotonic() - start, 3)
    return report


def _send_one(client: Client, req: Request, report: Report, counts: Counter[str]) -> None:
    n = len(req.ids)
    try:
        status, error = client.send(req.method, req.path, req.body, req.headers)
    except (OSError, http.client.HTTPException) as exc:
        report.errors += n
        counts["err"] += n
        report.status_counts["error"] = report.status_counts.get("error", 0) + n
        if len(report.error_samples) < 5:
            report.error_samples.append(f"{req.method} {req.path.split('?')[0]}: {exc}")
        return
    report.status_counts[str(status)] = report.status_counts.get(str(status), 0) + n
    if 200 <= status < 300:
        counts["2xx"] += n
        report.accepted.setdefault(req.stream, []).extend(req.ids)
        if not req.valid:
            report.unexpected.append(f"{req.kind} {req.path.split('?')[0]} was accepted ({status})")
    elif 400 <= status < 500:
        counts["4xx"] += n
        report.rejected.setdefault(req.stream, []).extend(req.ids)
        if req.valid:
            report.unexpected.append(f"{req.kind} {req.path.split('?')[0]} was refused ({status}): {error[:200]}")
        elif len(report.error_samples) < 3:
            report.error_samples.append(f"{status} {req.path.split('?')[0]}: {error[:200]}")
    else:
        counts["err"] += n
        report.errors += n
        if len(report.error_samples) < 5:
            report.error_samples.append(f"{status} {req.path.split('?')[0]}: {error[:200]}")


def summary(report: Report) -> str:
    ok = {s: len(ids) for s, ids in report.accepted.items()}
    bad = {s: len(ids) for s, ids in report.rejected.items()}
    codes_4xx = {c: n for c, n in sorted(report.status_counts.items()) if c.startswith("4")}
    rate = report.events / report.seconds if report.seconds > 0 else 0.0
    lines = [
        f"sent {report.events} events in {report.requests} requests over {report.seconds:.1f} s "
        f"({rate:.0f} events/s) to {report.url}",
        f"  2xx: {sum(ok.values())} events (" + ", ".join(f"{s} {n}" for s, n in sorted(ok.items())) + ")",
        f"  4xx: {sum(bad.values())} events, invalid on purpose ("
        + ", ".join(f"{c}: {n}" for c, n in codes_4xx.items())
        + ")",
    ]
    lines += [f"       e.g. {s}" for s in report.error_samples if s[:1] == "4"]
    lines.append(f"  5xx or connection errors: {report.errors} events")
    lines += [f"       {s}" for s in report.error_samples if s[:1] != "4"]
    if report.unexpected:
        lines.append(f"  UNEXPECTED outcomes: {len(report.unexpected)} (is the collector using another config?)")
        lines += [f"       {u}" for u in report.unexpected[:5]]
    lines.append(
        '  find them: oceanus query "SELECT count(*) FROM pageview_dedup '
        f"WHERE json_extract_string(extra, '$.demo_id') LIKE '{report.run_id}-%'\""
    )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if getattr(args, "shop", False):
        from pathlib import Path

        from oceanus.commands import demoshop

        shop = demoshop.run_shop(args.url, Path(args.data_dir), args.events, getattr(args, "seed", None))
        if getattr(args, "report", None):
            with open(args.report, "wb") as f:
                f.write(msgspec.json.encode(shop))
        print(demoshop.summary(shop))
        return 0
    report = run(
        args.url,
        args.events,
        args.rate,
        getattr(args, "seed", None),
        progress=sys.stderr.isatty() and not getattr(args, "quiet", False),
    )
    if getattr(args, "report", None):
        with open(args.report, "wb") as f:
            f.write(msgspec.json.encode(report))
    print(summary(report))
    return 1 if report.errors else 0
