"""The status page shows the notifier's latest outcomes, from ``P:notify:recent`` (real redis-server)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import redis.asyncio as aioredis

from collector import status
from oceanus import config
from oceanus.buffer import Keys
from tests.support.servers import RedisServer

REPO = Path(__file__).resolve().parents[2]


def test_recent_notifications_newest_first_and_garbage_skipped(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = config.load(
        REPO / "oceanus.toml",
        env={"OCEANUS_REDIS_URL": redis_server.url, "OCEANUS_COLLECTOR_SPOOL_DIR": f'"{tmp_path / "spool"}"'},
    )
    keys = Keys(cfg.redis.key_prefix)
    client = redis_server.client()
    # As the notifier writes them: LPUSH, so the newest is first.
    sent = {"rule": "paid", "channel": "log", "outcome": "sent", "at": 1_800_000_000, "detail": "job-1"}
    dead = {"rule": "errors", "channel": "slack", "outcome": "dead", "at": 1_800_000_005, "detail": "HTTP 404"}
    client.lpush(keys.notify_recent(), json.dumps(sent), b"\xff not json", json.dumps(dead))

    async def take() -> status.Snapshot:
        r = aioredis.from_url(redis_server.url)
        try:
            return await status.snapshot(cfg, r, now=1_800_000_010.0)
        finally:
            await r.aclose()

    snap = asyncio.run(take())
    assert snap.recent_notifications == [
        status.RecentNotification(rule="errors", channel="slack", outcome="dead", at=1_800_000_005, detail="HTTP 404"),
        status.RecentNotification(rule="paid", channel="log", outcome="sent", at=1_800_000_000, detail="job-1"),
    ]
    client.delete(keys.notify_recent())
    assert asyncio.run(take()).recent_notifications == []


def test_the_page_renders_them_as_text() -> None:
    page = (REPO / "collector" / "static" / "status.html").read_text()
    assert '<table id="notifications">' in page
    # textContent, never HTML: a rule's detail can carry what an event sent.
    assert "innerHTML" not in page
