"""``python -m bench protocols --seconds N [--json]``: 20 events per POST, three ways, in one sitting.

One ``oceanus collector`` (granian + uvloop, durable ack) and one redis-server
child (AOF on, ``appendfsync everysec``), then, one after the other under
``wrk -c64`` on loopback, the same 20 page views as:

- ``native``: ``POST /e/pageview``, a JSON array of 20 events;
- ``segment``: ``POST /v1/batch``, 20 ``page`` calls with context and properties,
  the write key as the HTTP Basic user (collector/protocols/segment.py);
- ``snowplow``: ``POST /com.snowplowanalytics.snowplow/tp2``, 20 ``pv`` events as
  the JavaScript tracker sends them, a base64url web-page context each
  (collector/protocols/snowplow.py).

The last stdout line (``--json``) holds, per protocol, requests/s, events/s,
p99_ms, non-2xx and lost (events acknowledged minus rows found in Redis after the
collector drained; <= 0), and each protocol's events/s as a ratio of native's.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.collector import REPO, USER_AGENT, _ms, count_rows, free_port, log, redis_child, server

EVENTS_PER_BODY = 20
WRITE_KEY = "bench-write-key"
URL = "https://www.bizocean.jp/doc/detail/123456/"
REFERRER = "https://www.google.com/"
TITLE = "請求書 テンプレ"


def native_body() -> bytes:
    event = {
        "sid": "3f9a1c2e7b4d4e8f9a0b1c2d3e4f5a6b",
        "evt": "view",
        "uid": "u12345678",
        "url": URL,
        "ref": REFERRER,
        "tit": TITLE,
        "scr": "1920x1080",
        "vie": "1280x720",
        "enc": "UTF-8",
    }
    return json.dumps([event] * EVENTS_PER_BODY, ensure_ascii=False).encode()


def segment_body(now_ms: int) -> bytes:
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_ms / 1000)) + f".{now_ms % 1000:03d}Z"
    calls = [
        {
            "type": "page",
            "name": TITLE,
            "anonymousId": "3f9a1c2e-7b4d-4e8f-9a0b-1c2d3e4f5a6b",
            "userId": "u12345678",
            "messageId": f"ajs-next-{i:032x}",
            "timestamp": iso,
            "properties": {"url": URL, "referrer": REFERRER, "title": TITLE, "path": "/doc/detail/123456/"},
            "context": {
                "library": {"name": "analytics.js", "version": "next-1.70.0"},
                "page": {"url": URL, "referrer": REFERRER, "title": TITLE},
                "screen": {"width": 1920, "height": 1080},
                "locale": "ja-JP",
                "userAgent": USER_AGENT,
            },
            "integrations": {},
        }
        for i in range(EVENTS_PER_BODY)
    ]
    return json.dumps({"batch": calls, "sentAt": iso}, ensure_ascii=False).encode()


def snowplow_body(now_ms: int) -> bytes:
    web_page = {
        "schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
        "data": [{"schema": "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0", "data": {"id": "x"}}],
    }
    cx = base64.urlsafe_b64encode(json.dumps(web_page).encode()).decode().rstrip("=")
    events = [
        {
            "e": "pv",
            "eid": f"3f9a1c2e-7b4d-4e8f-9a0b-{i:012x}",
            "tv": "js-3.23.0",
            "tna": "sp",
            "aid": "bizocean",
            "p": "web",
            "cookie": "1",
            "cs": "UTF-8",
            "lang": "ja-JP",
            "res": "1920x1080",
            "cd": "24",
            "tz": "Asia/Tokyo",
            "dtm": str(now_ms),
            "stm": str(now_ms + 5),
            "vp": "1280x720",
            "ds": "1263x3400",
            "vid": "3",
            "sid": "8c1e0d7a-3b2f-4e6a-9d10-2c5b7e8f9a01",
            "duid": "6a1e0d7a-3b2f-4e6a-9d10-2c5b7e8f9a02",
            "url": URL,
            "refr": REFERRER,
            "page": TITLE,
            "cx": cx,
        }
        for i in range(EVENTS_PER_BODY)
    ]
    schema = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
    return json.dumps({"schema": schema, "data": events}, ensure_ascii=False).encode()


def lua_script(path: Path, body: Path, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f'local f = io.open("{body}", "rb")', "wrk.body = f:read('*a')", "f:close()"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in {**headers, "User-Agent": USER_AGENT}.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk_post(url: str, script: Path, seconds: float, connections: int, threads: int) -> dict[str, Any]:
    """wrk with a POST script against ``url`` (loopback only): rps, p99, 2xx count."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("load is only ever sent to loopback")
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx_m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(non2xx_m.group(1)) if non2xx_m else 0
    p99_m = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    return {
        "rps": rps,
        "ok": total - non2xx,
        "non2xx": non2xx,
        "p99_ms": _ms(p99_m.group(1)) if p99_m else float("nan"),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench protocols", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measured wrk run per protocol")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured wrk run before each (0: none)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="wrk threads (1 leaves the CPU to the collector)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        log("wrk is not installed (make system-deps installs it with apt)")
        return 2
    now_ms = int(time.time() * 1000)
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    cases = {
        "native": ("/e/pageview", native_body(), {"Content-Type": "application/json"}, "pageview"),
        "segment": (
            "/v1/batch",
            segment_body(now_ms),
            {"Content-Type": "application/json", "Authorization": auth},
            "segment",
        ),
        "snowplow": (
            "/com.snowplowanalytics.snowplow/tp2",
            snowplow_body(now_ms),
            {"Content-Type": "application/json; charset=UTF-8"},
            "snowplow",
        ),
    }
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="oceanus-bench-") as d:
        tmp = Path(d)
        with redis_child(tmp / "redis") as rport:
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("OCEANUS_")}
            env.update(
                {
                    "OCEANUS_REDIS_URL": f"redis://127.0.0.1:{rport}/0",
                    "OCEANUS_COLLECTOR_SPOOL_DIR": f'"{tmp / "spool"}"',
                    "OCEANUS_COLLECTOR_SEGMENT_KEYS_ENV": "BENCH_SEGMENT_WRITE_KEYS",
                    "BENCH_SEGMENT_WRITE_KEYS": WRITE_KEY,
                }
            )
            cmd = [sys.executable, "-m", "oceanus.cli", "collector", "--config", str(REPO / "oceanus.toml")]
            cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers)]
            acked: dict[str, int] = {}
            with server(cmd, env, f"http://127.0.0.1:{port}/readyz", tmp / "collector.log") as proc:
                for name, (path, body, headers, _stream) in cases.items():
                    body_file = tmp / f"{name}.json"
                    body_file.write_bytes(body)
                    script = lua_script(tmp / f"{name}.lua", body_file, headers)
                    url = f"http://127.0.0.1:{port}{path}"
                    log(f"{name}: {len(body)} B per body, {args.seconds:g}s at c{args.connections} ...")
                    warm = wrk_post(url, script, args.warmup, args.connections, args.threads) if args.warmup else None
                    res = wrk_post(url, script, args.seconds, args.connections, args.threads)
                    res["events_per_s"] = round(res["rps"] * EVENTS_PER_BODY)
                    res["body_bytes"] = len(body)
                    acked[name] = (res["ok"] + (warm["ok"] if warm else 0)) * EVENTS_PER_BODY
                    results[name] = res
                    log(f"{name}: {json.dumps(res)}")
                proc.send_signal(signal.SIGTERM)  # drain, then count what reached Redis
                proc.wait(timeout=60)
            from oceanus.buffer import Keys

            for name, (*_rest, stream) in cases.items():
                results[name]["lost"] = acked[name] - count_rows(rport, Keys().queue(stream))
    native = results["native"]["events_per_s"]
    out: dict[str, Any] = {"workers": args.workers, "connections": args.connections, "seconds": args.seconds}
    for name, res in results.items():
        out[f"{name}_rps"] = round(res["rps"])
        out[f"{name}_events_per_s"] = res["events_per_s"]
        out[f"{name}_p99_ms"] = res["p99_ms"]
        out[f"{name}_non2xx"] = res["non2xx"]
        out[f"{name}_lost"] = res["lost"]
        if name != "native":
            out[f"{name}_vs_native"] = round(res["events_per_s"] / native, 3) if native else None
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0
