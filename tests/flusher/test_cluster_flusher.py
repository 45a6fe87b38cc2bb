"""The flusher process's loop on a real Redis Cluster: three shards on three masters drained into
DuckDB once each, and a master killed with -9 mid-drain (reconnect, new slot map, no crash loop,
no duplicate in the table)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import duckdb
import redis.cluster
from redis.exceptions import RedisError

from flusher.runner import Flusher
from flusher.sinks.duckdb import DuckDBSink
from oceanus.buffer import Keys, encode_frame
from oceanus.config import Config
from tests.flusher.helpers import STREAMS_TOML, make_config, make_rows
from tests.flusher.test_runner import until
from tests.support.cluster import ClusterNode, RedisCluster
from tests.support.servers import RedisServer

#: Enough shards that three of them sit on three different masters whatever the slot layout.
SHARDS = 8


def _config(cluster: RedisCluster, tmp_path: Path) -> Config:
    streams = STREAMS_TOML.replace("[streams.pv]\n", f"[streams.pv]\nshards = {SHARDS}\n", 1)
    return make_config(cluster.url, tmp_path / "w.duckdb", streams)


def _one_shard_per_master(cluster: RedisCluster, keys: Keys) -> dict[int, ClusterNode]:
    """Shard -> master, one shard for each of the three masters."""
    chosen: dict[int, ClusterNode] = {}
    for shard in range(SHARDS):
        node = cluster.node_for_key(keys.queue("pv", shard))
        if node.port not in {n.port for n in chosen.values()}:
            chosen[shard] = node
    assert len(chosen) == 3, chosen
    return chosen


def _push(cluster: RedisCluster, cfg: Config, shards: list[int], frames: int, rows: int) -> dict[int, set[str]]:
    """``frames`` frames of ``rows`` rows into each shard; the event ids pushed, per shard."""
    keys = Keys(cfg.redis.key_prefix)
    host, port = cluster.addresses[0].split(":")
    client = redis.cluster.RedisCluster(host=host, port=int(port))
    ids: dict[int, set[str]] = {}
    try:
        stream = cfg.streams["pv"]
        for shard in shards:
            items = []
            for i in range(frames):
                batch = make_rows(stream, rows, start=(shard * frames + i) * rows)
                items.append(encode_frame(stream.columns, batch))
                ids.setdefault(shard, set()).update(r[stream.columns.index("event_id")].hex() for r in batch)
            client.rpush(keys.queue("pv", shard), *items)
    finally:
        client.close()
    return ids


def _stored(path: Path) -> tuple[int, set[str]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute("SELECT event_id FROM pv").fetchall()
    finally:
        con.close()
    return len(rows), {str(r[0]) for r in rows}


async def _queues_empty(f: Flusher) -> bool:
    try:
        for shard in range(SHARDS):
            q, batches = f.keys.queue("pv", shard), f.keys.inflight_index("pv", shard)
            if await f.aredis.llen(q) or await f.aredis.scard(batches):
                return False
    except RedisError:
        return False  # during the failover: ask again
    return True


def _node_series(f: Flusher, shard: int) -> list[str]:
    """The ``node`` of every ``oceanus_shard_node_info`` series of one shard of pv."""
    return [
        sample.labels["node"]
        for metric in f.metrics.registry.collect()
        if metric.name == "oceanus_shard_node_info"
        for sample in metric.samples
        if sample.labels["stream"] == "pv" and sample.labels["shard"] == str(shard) and sample.value == 1
    ]


def _rows_written(f: Flusher) -> float:
    return f.metrics.registry.get_sample_value("oceanus_rows_written_total", {"stream": "pv"}) or 0.0


def test_three_shards_on_three_masters_are_drained_once(redis_cluster: RedisCluster, tmp_path: Path) -> None:
    cfg = _config(redis_cluster, tmp_path)
    shards = _one_shard_per_master(redis_cluster, Keys(cfg.redis.key_prefix))
    pushed = set().union(*_push(redis_cluster, cfg, sorted(shards), frames=20, rows=25).values())

    async def main() -> None:
        flusher = Flusher(cfg, DuckDBSink(cfg))
        task = asyncio.create_task(flusher.run())
        try:
            await until(lambda: _drained(flusher, len(pushed)), "every shard drained", timeout=60)
            # The old-layout move is single-instance only: not even started on a cluster.
            assert flusher.upgrade is None
            await flusher.sample_gauges()
            for shard, node in shards.items():
                assert _node_series(flusher, shard) == [node.address]
            assert flusher.metrics.registry.get_sample_value("oceanus_worker_restarts_total", {"stream": "pv"}) in (
                None,
                0.0,
            )
        finally:
            flusher.stopping.set()
            assert await asyncio.wait_for(task, 30)
            await flusher.close()

    async def _drained(f: Flusher, n: int) -> bool:
        return _rows_written(f) == n and await _queues_empty(f)

    asyncio.run(main())
    count, ids = _stored(tmp_path / "w.duckdb")
    assert (count, ids) == (len(pushed), pushed)


class _PacedSink:
    """The real DuckDB sink, paced so that the drain is still under way when the master dies."""

    name = "duckdb"

    def __init__(self, inner: DuckDBSink, pace_s: float) -> None:
        self.inner = inner
        self.pace_s = pace_s

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def write(self, batch: object, state: object) -> object:
        import time

        time.sleep(self.pace_s)  # fault injection: a slow warehouse, not a synchronisation
        return self.inner.write(batch, state)  # type: ignore[arg-type]


def test_a_master_killed_mid_drain_the_flusher_reconnects_and_writes_each_event_once(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    cfg = _config(redis_cluster, tmp_path)
    keys = Keys(cfg.redis.key_prefix)
    shards = _one_shard_per_master(redis_cluster, keys)
    # Small batches (10 rows per claim at most): many claims and finishes straddle the kill.
    streams = STREAMS_TOML.replace("[streams.pv]\n", f"[streams.pv]\nshards = {SHARDS}\n", 1).replace(
        "max_rows = 5000, min_rows = 10", "max_rows = 10, min_rows = 10"
    )
    cfg = make_config(redis_cluster.url, tmp_path / "w.duckdb", streams)
    per_shard = _push(redis_cluster, cfg, sorted(shards), frames=60, rows=5)
    pushed = set().union(*per_shard.values())
    victim_shard = sorted(shards)[0]
    victim = shards[victim_shard]
    killed: list[ClusterNode] = []

    async def main() -> None:
        flusher = Flusher(cfg, _PacedSink(DuckDBSink(cfg), 0.02))  # type: ignore[arg-type]
        task = asyncio.create_task(flusher.run())
        try:
            await until(lambda: _some_written(flusher), "the drain under way", timeout=60)
            assert not await _queues_empty(flusher)
            await flusher.sample_gauges()
            assert _node_series(flusher, victim_shard) == [victim.address]
            replica = await asyncio.to_thread(redis_cluster.kill_master, victim)
            killed.append(victim)
            await until(lambda: _queues_empty(flusher), "every shard drained after the failover", timeout=90)
            # The gauge follows the slot to the promoted replica; the dead master's series is gone.
            await flusher.sample_gauges()
            assert _node_series(flusher, victim_shard) == [replica.address]
            assert not task.done()  # no crash: the process is still running
            restarts = flusher.metrics.registry.get_sample_value("oceanus_worker_restarts_total", {"stream": "pv"})
            assert restarts in (None, 0.0)  # an outage is a Redis error, never an unexpected one
        finally:
            flusher.stopping.set()
            assert await asyncio.wait_for(task, 30)
            await flusher.close()

    async def _some_written(f: Flusher) -> bool:
        return _rows_written(f) >= 100

    try:
        asyncio.run(main())
    finally:
        for node in killed:
            redis_cluster.restart(node)
    count, ids = _stored(tmp_path / "w.duckdb")
    assert count == len(ids)  # no duplicate
    assert ids <= pushed
    # The shards whose masters lived lose nothing; the failed-over one at most unreplicated pushes.
    assert ids >= set().union(*(per_shard[s] for s in sorted(shards) if s != victim_shard))


def test_one_redis_has_no_shard_node_series(redis_server: RedisServer, tmp_path: Path) -> None:
    streams = STREAMS_TOML.replace("[streams.pv]\n", "[streams.pv]\nshards = 2\n", 1)
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb", streams)

    async def main() -> None:
        flusher = Flusher(cfg, DuckDBSink(cfg))
        try:
            assert flusher.upgrade is not None  # one instance: the old layout may be there
            await flusher.sample_gauges()
            assert [_node_series(flusher, s) for s in range(2)] == [[], []]
        finally:
            await flusher.close()

    asyncio.run(main())
