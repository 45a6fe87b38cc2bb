"""``oceanus status`` and the ``/_/status`` read model on a real Redis Cluster: each stream's backlog
summed, and each shard's with the master serving it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis.cluster

from collector import status as read_model
from oceanus import config, redisclient
from oceanus.buffer import Keys
from oceanus.commands import status
from tests.oceanus.test_status import frame
from tests.support.cluster import RedisCluster

REPO = Path(__file__).resolve().parents[2]
SHARDS = 4


def _config_file(cluster: RedisCluster, tmp_path: Path) -> Path:
    text = (REPO / "oceanus.toml").read_text(encoding="utf-8")
    path = tmp_path / "oceanus.toml"
    path.write_text(text.replace('url = "redis://127.0.0.1:6379/0"', f'url = "{cluster.url}"', 1), encoding="utf-8")
    return path


#: Who holds each shard's lease in the filled cluster (None: no flusher holds it).
HOLDERS = {0: "f-1-aa", 1: None, 2: "f-2-bb", 3: "f-1-aa"}


def _fill(cluster: RedisCluster, keys: Keys) -> dict[int, int]:
    """Shard s of pageview gets s + 1 frames of 2 rows and its lease as in HOLDERS; returns rows per shard."""
    host, port = cluster.addresses[0].split(":")
    client = redis.cluster.RedisCluster(host=host, port=int(port))
    now_us = time.time_ns() // 1000
    try:
        for s in range(SHARDS):
            client.rpush(keys.queue("pageview", s), *(frame(2, now_us - 1_000_000 * i) for i in range(s + 1)))
            holder = HOLDERS[s]
            if holder is not None:
                client.set(keys.lease("pageview", s), holder, px=60_000)
    finally:
        client.close()
    return {s: 2 * (s + 1) for s in range(SHARDS)}


def test_oceanus_status_shows_each_shards_backlog_and_master_on_a_cluster(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    path = _config_file(redis_cluster, tmp_path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("[streams.pageview]\n", f"[streams.pageview]\nshards = {SHARDS}\n", 1))
    cfg = config.load(path)
    assert cfg.redis.cluster
    assert cfg.streams["pageview"].shards == SHARDS
    keys = Keys(cfg.redis.key_prefix)
    rows = _fill(redis_cluster, keys)
    nodes = {s: redis_cluster.node_for_key(keys.queue("pageview", s)).address for s in range(SHARDS)}
    assert len(set(nodes.values())) > 1

    # No `oceanus dev` runs in this directory: the cluster is read where redis.url says.
    got = status.collect(tmp_path / "data", str(path))
    assert got.redis_up
    pv = got.streams["pageview"]
    assert (pv.backlog_frames, pv.backlog_rows) == (sum(range(1, SHARDS + 1)), sum(rows.values()))
    assert [(sh.shard, sh.node, sh.backlog_frames, sh.backlog_rows, sh.flusher) for sh in pv.shards] == [
        (s, nodes[s], s + 1, rows[s], HOLDERS[s]) for s in range(SHARDS)
    ]
    table = status.format_table(got)
    for s in range(SHARDS):
        line = next(ln for ln in table.splitlines() if ln.strip().startswith(f"shard {s} @"))
        assert line.split()[:4] == ["shard", str(s), "@", nodes[s]]
        assert line.split()[-2:] == [str(rows[s]), HOLDERS[s] or status.NO_FLUSHER]
    assert next(ln for ln in table.splitlines() if ln.startswith("pageview")).endswith("3 of 4 shards held")
    assert "Redis Cluster" in table.splitlines()[0]

    # The page's read model: the same shards and masters, from the page's own client.
    async def page() -> read_model.Snapshot:
        client = redisclient.async_client(cfg.redis)
        try:
            return await read_model.snapshot(cfg, client)
        finally:
            await client.aclose()

    snap = asyncio.run(page())
    assert snap.redis_up
    spv = next(st for st in snap.streams if st.name == "pageview")
    assert spv.backlog_frames == sum(range(1, SHARDS + 1))
    assert [(sh.shard, sh.node, sh.backlog_frames, sh.flusher) for sh in spv.shards] == [
        (s, nodes[s], s + 1, HOLDERS[s]) for s in range(SHARDS)
    ]
