"""Configs and frames for the notifier's end-to-end tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from oceanus import config
from oceanus.buffer import EventIds, Keys, encode_frame

REPO = Path(__file__).resolve().parents[2]
#: The shipped config without its notify section (each test brings its own rules and channels).
_SHIPPED = (REPO / "oceanus.toml").read_text(encoding="utf-8")
BASE = _SHIPPED.split("\n# `oceanus notify`")[0] + _SHIPPED.split("# (end of the notify section)\n")[1]
_ids = EventIds()


def make_config(redis_url: str, extra: str) -> tuple[config.Config, str]:
    text = BASE + "\n[notify]\nadmin_port = 0\npoll_s = 0.02\nheartbeat_ttl_s = 3.0\n" + extra
    return config.loads(text, env={"OCEANUS_REDIS_URL": redis_url}), text


def pageview(evt: str, sid: str = "ab12", **fields: Any) -> dict[str, Any]:
    return {"sid": sid, "evt": evt, "url": "https://www.bizocean.jp/doc/1", **fields}


def push(
    client: redis.Redis, cfg: config.Config, stream: str, events: list[dict[str, Any]], key: str | None = None
) -> list[str]:
    """One frame of ``events`` onto the stream's queue (or ``key``), as the collector writes it; the event ids.

    The notifier's tap copies it to the notify queue (no flusher runs in these tests)."""
    columns = cfg.streams[stream].columns
    rows, ids = [], []
    for ev in events:
        eid = _ids.new()
        ids.append(eid.hex())
        values = {
            "event_id": eid,
            "received_at": int.from_bytes(eid[:6], "big") * 1000,
            "ip": "203.0.113.7",
            "ua": "test",
            "device": "desktop",
            **ev,
        }
        rows.append([values.get(c) for c in columns])
    client.rpush(key or Keys(cfg.redis.key_prefix).queue(stream), encode_frame(columns, rows))
    return ids
