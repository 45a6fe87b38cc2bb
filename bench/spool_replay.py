"""How fast a collector worker replays its disk spool into Redis on shutdown.

Fills a spool with ``--mb`` MB of pageview frames of ``--events`` events each
(one frame per writer round during an outage), starts a real ``redis-server``
(``--appendfsync``), and times :meth:`collector.pusher.Pusher.drain` -- the
SIGTERM path -- until the spool is empty. The rate, in MB of spool per second,
is what ``collector.drain_timeout_s`` must allow for a full
``collector.spool_max_bytes`` (collector/server.py, README "Deploy")::

    python -m bench spool_replay --mb 200 --events 1
    python -m bench spool_replay --mb 200 --events 32 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from collector import spool as spool_mod
from collector.metrics import Metrics
from collector.pusher import Pusher
from collector.resp import RedisLink
from collector.spool import Spool
from oceanus import config
from oceanus.buffer import EventIds, encode_frame
from tests.support.servers import RedisServer

REPO = Path(__file__).resolve().parents[1]
STREAM = "pageview"


def _rows(columns: tuple[str, ...], n: int, ids: EventIds) -> list[list[Any]]:
    """Pageview-like rows; the per-visit values are random so frames compress as real ones do."""
    out = []
    for _ in range(n):
        row: dict[str, Any] = {
            "received_at": time.time_ns() // 1000,
            "ip": f"203.0.{os.urandom(1)[0]}.{os.urandom(1)[0]}",
            "device": "pc",
            "evt": "view",
            "sid": os.urandom(8).hex(),
            "ua": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            "url": f"https://shop.example.com/p/{os.urandom(6).hex()}?page={os.urandom(1)[0]}",
            "ref": "https://www.example.org/",
        }
        out.append([ids.new() if c == "event_id" else row.get(c, os.urandom(6).hex()) for c in columns])
    return out


async def _drain(cfg: config.Config, spool: Spool) -> tuple[float, bool]:
    link = RedisLink(cfg.redis.url, cfg.redis.timeout_s)
    pusher = Pusher(cfg, link, spool, Metrics())
    pusher.start()
    t0 = time.perf_counter()
    ok = await pusher.drain(3600.0)
    elapsed = time.perf_counter() - t0
    link.close()
    return elapsed, ok


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench spool_replay")
    ap.add_argument("--mb", type=float, default=100.0, help="MB of spool to replay")
    ap.add_argument("--events", type=int, default=1, help="events per spooled frame")
    ap.add_argument("--appendfsync", default="everysec", choices=("always", "everysec", "no"))
    ap.add_argument(
        "--chunk-records",
        type=int,
        default=spool_mod.REPLAY_CHUNK_RECORDS,
        help="records per replay round trip (256 before the drain replay; for comparison)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    spool_mod.REPLAY_CHUNK_RECORDS = args.chunk_records
    with tempfile.TemporaryDirectory(prefix="oceanus-bench-") as tmp:
        base = Path(tmp)
        redis = RedisServer(base / "redis", appendfsync=args.appendfsync).start()
        try:
            cfg = config.load(REPO / "oceanus.toml", env={"OCEANUS_REDIS_URL": redis.url})
            columns = cfg.streams[STREAM].columns
            spool = Spool(base / "spool", 1 << 40).open()
            ids = EventIds()
            frames = 0
            target = int(args.mb * 1_000_000)
            while spool.pending_bytes < target:
                batch = [(STREAM, encode_frame(columns, _rows(columns, args.events, ids))) for _ in range(256)]
                assert spool.append(batch)
                frames += len(batch)
            size = spool.pending_bytes
            print(f"spool: {size / 1e6:.1f} MB, {frames} frames of {args.events} event(s); replaying", file=sys.stderr)
            elapsed, ok = asyncio.run(_drain(cfg, spool))
            left = spool.pending_bytes
            spool.close()
        finally:
            redis.stop()
    result = {
        "spool_mb": round(size / 1e6, 1),
        "frames": frames,
        "events_per_frame": args.events,
        "chunk_records": args.chunk_records,
        "appendfsync": args.appendfsync,
        "seconds": round(elapsed, 2),
        "mb_per_s": round(size / 1e6 / elapsed, 1),
        "frames_per_s": round(frames / elapsed),
        "left_bytes": left,
        "drained": ok,
    }
    print(
        f"replayed {result['spool_mb']} MB in {result['seconds']} s: {result['mb_per_s']} MB/s, "
        f"{result['frames_per_s']} frames/s (left {left} bytes)",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps(result))
    return 0 if ok and not left else 1
