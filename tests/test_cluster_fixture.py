"""The Redis Cluster fixture (tests/support/cluster.py) is what it says: prove it once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.cluster import RedisCluster


def test_three_masters_each_with_a_replica_and_its_own_aof(redis_cluster: RedisCluster) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    assert sum(end - start + 1 for ranges in redis_cluster.slot_ranges().values() for start, end in ranges) == 16384
    replicas = {redis_cluster.replica_of(m).port for m in masters}
    assert len(replicas) == 3
    assert replicas.isdisjoint(m.port for m in masters)
    assert sorted(redis_cluster.addresses) == sorted(f"127.0.0.1:{n.port}" for n in redis_cluster.nodes)
    dirs = set()
    for node in redis_cluster.nodes:
        settings = node.command("CONFIG", "GET", "*")
        # A map in RESP3, a flat list in RESP2: whichever protocol redis-py speaks by default.
        conf = settings if isinstance(settings, dict) else dict(zip(settings[::2], settings[1::2], strict=True))
        assert conf[b"appendonly"] == b"yes"
        assert conf[b"appendfsync"] == b"always"
        assert conf[b"cluster-enabled"] == b"yes"
        assert conf[b"cluster-node-timeout"] == b"1000"
        dirs.add(conf[b"dir"])
    assert len(dirs) == 6


def test_node_for_key_is_the_node_that_takes_it(redis_cluster: RedisCluster) -> None:
    for key in ("a", "b", "{a}b", "oceanus:q:{pageview}:0"):
        node = redis_cluster.node_for_key(key)
        assert node.command("RPUSH", key, "x") == 1  # any other master would answer MOVED


@pytest.mark.integration
def test_stop_kills_every_node_and_removes_the_directories(tmp_path: Path) -> None:
    cluster = RedisCluster(tmp_path).start()
    try:
        pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
        assert len(pids) == 6
        assert cluster.healthy()
    finally:
        cluster.stop()
    assert not cluster.base_dir.exists()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"redis-server {pid} outlived stop()")
