"""``python -m bench memory [--json]``: Redis bytes per buffered pageview.

How long an outage oceanus rides out is Redis memory divided by this figure.
Realistic pageviews (visitor, page, title, referrer and user-agent pools drawn
with a fixed seed; about 170 bytes of JSON per row) go through the collector's
own path -- the ASGI app in-process: validation, enrichment, micro-batching,
``encode_frame``, pipelined RPUSH -- into a real redis-server child. Each batch
size is forced with ``batch_max_events = B`` and a long linger, and
``used_memory`` is read before and after.

The last line (``--json``) ends with ``redis_bytes_per_event``: the figure at
the batch size the collector reaches under load (``--realistic-batch``,
default 16: ``python -m bench collector`` reports a mean of 13-15 events per
round at c64 on two workers),
next to the figures for every measured size, batch size 1 included.

``--codec`` adds the frame codec's CPU cost: medians of 9 timeit runs of
``encode_frame`` / ``decode_frame`` per event at each batch size, for the
current format and for the previous one (O1: zlib without a dictionary), on
pageview rows shaped as the collector builds them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

from bench.collector import log, redis_child

TITLES = [
    "請求書 テンプレート",
    "見積書の書き方",
    "履歴書 無料ダウンロード",
    "議事録 フォーマット",
    "退職届 例文",
    "Invoice template (Excel)",
    "領収書 エクセル",
    "送付状 テンプレート 無料",
    "契約書 ひな形",
    "年賀状 文例",
]
REFS = [
    "https://www.google.com/",
    "https://www.google.co.jp/",
    "https://search.yahoo.co.jp/",
    "",
    "https://www.bing.com/",
    "https://www.bizocean.jp/",
    "https://t.co/x1",
]
UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36",
]
SCREENS = [("1920x1080", "1280x720"), ("390x844", "390x664"), ("1536x864", "1536x750"), ("2560x1440", "1700x900")]


def pageviews(n: int, seed: int = 7) -> list[tuple[str, str]]:
    """``n`` (query string, user agent) pairs."""
    rnd = random.Random(seed)
    visitors = [rnd.getrandbits(128).to_bytes(16, "big").hex() for _ in range(5000)]
    out = []
    for _ in range(n):
        scr, vie = rnd.choice(SCREENS)
        fields = {
            "sid": rnd.choice(visitors),
            "evt": "view",
            "uid": f"u{rnd.randrange(10**7):07d}" if rnd.random() < 0.3 else "",
            "url": f"https://www.bizocean.jp/doc/detail/{rnd.randrange(200000)}/",
            "ref": rnd.choice(REFS),
            "tit": rnd.choice(TITLES) + " | bizocean",
            "scr": scr,
            "vie": vie,
            "enc": "UTF-8",
        }
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in fields.items() if v)
        out.append((query, rnd.choice(UAS)))
    return out


async def fill(redis_url: str, spool_dir: str, batch: int, events: list[tuple[str, str]]) -> int:
    """Push ``events`` through the app in batches of exactly ``batch``; returns 2xx count."""
    from collector.app import App
    from oceanus import config

    base = config.load(env={"OCEANUS_REDIS_URL": redis_url})
    cfg = msgspec.structs.replace(
        base,
        collector=msgspec.structs.replace(
            base.collector, batch_max_events=batch, batch_linger_ms=60_000.0, spool_dir=spool_dir, ip_rate_per_s=0.0
        ),
    )  # one client address sends everything: no per-IP limit
    app = App(cfg)
    await app.startup()
    ok = 0

    async def one(query: str, ua: str) -> int:
        status = 0

        async def receive() -> MutableMapping[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/b/pageview",
            "raw_path": b"/b/pageview",
            "query_string": query.encode(),
            "headers": [(b"user-agent", ua.encode())],
            "client": ("198.51.100.20", 50000),
        }
        await app(scope, receive, send)
        return status

    try:
        for start in range(0, len(events), batch):
            statuses = await asyncio.gather(*(one(q, ua) for q, ua in events[start : start + batch]))
            ok += sum(1 for s in statuses if s == 200)
    finally:
        await app.shutdown()
    return ok


def measure(batch: int, n: int, tmp: Path) -> dict[str, Any]:
    import redis

    events = pageviews(n)
    with redis_child(tmp / f"redis-b{batch}") as port:
        client = redis.Redis(port=port)
        before = int(client.info("memory")["used_memory"])
        ok = asyncio.run(fill(f"redis://127.0.0.1:{port}/0", str(tmp / "spool"), batch, events))
        after = int(client.info("memory")["used_memory"])
        frames = int(client.llen("oceanus:q:pageview"))
        client.close()
    if ok != n:
        raise RuntimeError(f"only {ok} of {n} events were accepted")
    return {"batch": batch, "events": n, "frames": frames, "bytes_per_event": round((after - before) / n, 1)}


def row_json_bytes(n: int = 2000) -> float:
    """Mean size of a row's fields as one JSON object (what a plain JSON item would hold)."""
    from urllib.parse import parse_qsl

    total = 0
    for query, _ua in pageviews(n):
        total += len(json.dumps(dict(parse_qsl(query)), ensure_ascii=False).encode())
    return total / n


def pageview_rows(n: int) -> tuple[list[str], list[list[Any]]]:
    """Rows in the pageview stream's columns, as the collector builds them."""
    from urllib.parse import parse_qsl

    from oceanus import config
    from oceanus.buffer import EventIds

    columns = list(config.load(env={}).streams["pageview"].columns)
    ids = EventIds()
    rows = []
    for i, (query, ua) in enumerate(pageviews(n)):
        fields = dict(parse_qsl(query))
        server = {
            "event_id": ids.new(),
            "received_at": 1_780_000_000_000_000 + i * 50,
            "ip": "198.51.100.20",
            "ua": ua,
            "device": "mobile" if "Mobile" in ua else "desktop",
        }
        rows.append([server.get(c, fields.get(c)) for c in columns])
    return columns, rows


def codec_cpu(sizes: list[int]) -> dict[str, dict[str, float]]:
    """Encode/decode µs per event, current format vs O1, medians of 9 runs."""
    import functools
    import statistics
    import timeit
    import zlib

    from oceanus.buffer import FRAME_ZLIB_LEVEL, decode_frame, encode_frame

    pack = msgspec.msgpack.Encoder().encode

    def encode_o1(columns: list[str], rows: list[list[Any]]) -> bytes:
        return b"O1" + zlib.compress(pack((columns, rows)), FRAME_ZLIB_LEVEL)

    columns, rows = pageview_rows(max(sizes))
    out: dict[str, dict[str, float]] = {}
    for b in sizes:
        chunk = rows[:b]
        number = max(20, 2000 // b)
        res: dict[str, float] = {}
        for name, enc in (("o1", encode_o1), ("current", encode_frame)):
            frame = enc(columns, chunk)
            calls = (
                ("encode", functools.partial(enc, columns, chunk)),
                ("decode", functools.partial(decode_frame, frame)),
            )
            for op, fn in calls:
                runs = [timeit.timeit(fn, number=number) / number / b * 1e6 for _ in range(9)]
                res[f"{op}_us_{name}"] = round(statistics.median(runs), 2)
            res[f"frame_bytes_per_event_{name}"] = round(len(frame) / b, 1)
        out[str(b)] = res
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench memory", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=20_000, help="events per batch size")
    p.add_argument("--batches", default="1,8,16,32,128", help="batch sizes to measure")
    p.add_argument("--realistic-batch", type=int, default=16)
    p.add_argument("--json", action="store_true")
    p.add_argument("--codec", action="store_true", help="also time the frame codec (µs per event)")
    args = p.parse_args(argv)
    sizes = sorted({int(b) for b in args.batches.split(",")} | {args.realistic_batch})
    results = {}
    with tempfile.TemporaryDirectory(prefix="oceanus-memory-") as d:
        for b in sizes:
            n = args.events if b > 1 else min(args.events, 5_000)
            results[b] = measure(b, n, Path(d))
            log(f"batch {b}: {results[b]}")
    out = {
        "row_json_bytes": round(row_json_bytes(), 1),
        "by_batch": {str(b): r["bytes_per_event"] for b, r in results.items()},
        "redis_bytes_per_event_batch1": results[1]["bytes_per_event"] if 1 in results else None,
        "realistic_batch": args.realistic_batch,
        "redis_bytes_per_event": results[args.realistic_batch]["bytes_per_event"],
    }
    if args.codec:
        out = {"codec": codec_cpu(sizes), **out}
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
