"""The flusher loop when Redis acts on a claim but its reply is lost (real redis-server, real DuckDB).

A proxy between the flusher and Redis swallows the answers to some claim
scripts; Redis has moved the frames into an in-flight key meanwhile. Every row
must still reach the table exactly once, while the flusher that stranded the
keys keeps running with its heartbeat alive.
"""

from __future__ import annotations

import hashlib

from flusher.claim import _CLAIM_LUA
from flusher.runner import Flusher
from flusher.sinks.duckdb import DuckDBSink
from oceanus.buffer import Keys
from tests.flusher.helpers import make_config, push_frames
from tests.flusher.test_runner import run_flusher, until
from tests.support.servers import RedisServer
from tests.support.tcpproxy import ReplyDropProxy


def test_lost_claim_replies_strand_nothing(redis_server: RedisServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proxy = ReplyDropProxy(redis_server.port).start()
    cfg = make_config(proxy.url, tmp_path / "w.duckdb", heartbeat_ttl_s=1.0)
    keys = Keys(cfg.redis.key_prefix)
    client = redis_server.client()
    client.script_load(_CLAIM_LUA)
    ids = push_frames(client, keys, cfg.streams["pv"], frames=200, rows_per_frame=5)
    # Every second claim's reply is lost, four times: the frames moved, the flusher never learns which.
    proxy.drop_reply_after(hashlib.sha1(_CLAIM_LUA.encode()).hexdigest().encode(), times=4, every=2)
    sink = DuckDBSink(cfg)
    try:

        async def body(f: Flusher) -> None:
            async def drained() -> bool:
                return client.llen(keys.queue("pv")) == 0 and client.scard(keys.inflight_index("pv")) == 0

            await until(drained, "every claimed key recovered and written", timeout=30)
            assert proxy.dropped >= 3  # at least three claims were stranded and recovered
            assert client.exists(keys.heartbeat(f.owner))  # the owner lived through it all

        run_flusher(cfg, sink, body)
        rows = DuckDBSink(cfg).query("SELECT event_id, count(*) FROM pv GROUP BY 1").rows
    finally:
        proxy.stop()
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert all(r[1] == 1 for r in rows)
