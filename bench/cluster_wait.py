"""What ``WAIT 1`` costs a writer round on Redis Cluster (collector/cluster.py).

Starts a local cluster (3 masters, 1 replica each, ``appendfsync always``:
tests/support/cluster.py) and one stand-alone ``redis-server`` (same AOF
policy), then times rounds of ``--commands`` RPUSH of a ``--frame-bytes``
frame, one key per command spread over the three masters, in three modes, one
after another within each repetition:

- ``single``: ``RedisLink`` to the stand-alone server (today's writer);
- ``cluster``: ``ClusterLink``, one pipeline per master, written concurrently;
- ``cluster_wait1``: the same with ``wait_replicas=1`` (``WAIT 1`` ends each master's pipeline).

Prints the median and p99 wall microseconds per round of each repetition, and the
client's CPU microseconds per round (what the link itself costs the writer)::

    python -m bench cluster_wait --rounds 2000 --commands 10 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from collector.cluster import ClusterLink
from collector.resp import RedisLink, pack
from tests.support.cluster import RedisCluster
from tests.support.servers import RedisServer

MODES = ("single", "cluster", "cluster_wait1")
#: WAIT's own timeout: far above a loopback replica's acknowledgement, far below the link's timeout.
WAIT_TIMEOUT_MS = 1000


async def _run(link: RedisLink | ClusterLink, commands: list[bytes], rounds: int) -> tuple[list[float], float]:
    """Wall seconds of each round, and this process's CPU seconds per round (the client's cost)."""
    packed = b"".join(commands)
    per_round: list[float] = []
    cpu0 = time.process_time()
    for _ in range(rounds):
        t0 = time.perf_counter()
        if isinstance(link, ClusterLink):
            results = await link.round(commands)
        else:
            results = await link.call(packed, len(commands))
        per_round.append(time.perf_counter() - t0)
        if any(isinstance(r, Exception) for r in results):
            raise RuntimeError(f"a round failed: {results}")
    return per_round, (time.process_time() - cpu0) / rounds


def _keys(cluster: RedisCluster, n: int) -> list[str]:
    """``n`` stream-like keys, dealt over the masters in turn."""
    masters = cluster.masters()
    return [cluster.key_on(masters[i % len(masters)], prefix=f"oceanus:q:s{i}:") for i in range(n)]


def _clear(cluster: RedisCluster, single: RedisServer, keys: list[str]) -> None:
    """Drop the pushed frames between runs: memory stays small and the AOF short."""
    for key in keys:
        cluster.node_for_key(key).command("DEL", key)
    client = single.client()
    try:
        client.delete(*keys)
    finally:
        client.close()


def _once(
    mode: str, cluster: RedisCluster, single: RedisServer, commands: list[bytes], rounds: int
) -> tuple[list[float], float]:
    link: RedisLink | ClusterLink
    if mode == "single":
        link = RedisLink(single.url, 5.0)
    else:
        link = ClusterLink(
            cluster.url,
            5.0,
            wait_replicas=1 if mode == "cluster_wait1" else 0,
            wait_timeout_ms=WAIT_TIMEOUT_MS if mode == "cluster_wait1" else 0,
        )

    async def warm_then_time() -> tuple[list[float], float]:
        try:
            # A few rounds first: connections, the slot map and the lists' first allocation are not timed.
            await _run(link, commands, 20)
            return await _run(link, commands, rounds)
        finally:
            link.close()  # inside the loop: the transports belong to it

    return asyncio.run(warm_then_time())


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench cluster_wait")
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--commands", type=int, default=10, help="RPUSH commands per round")
    ap.add_argument("--frame-bytes", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="oceanus-bench-") as tmp:
        cluster = RedisCluster(Path(tmp))
        single = RedisServer(Path(tmp) / "single")
        try:
            cluster.start()
            single.start()
            keys = _keys(cluster, args.commands)
            frame = b"x" * args.frame_bytes
            commands = [pack("RPUSH", key, frame) for key in keys]
            spread = len({cluster.node_for_key(k).port for k in keys})
            print(f"{args.commands} keys over {spread} masters; {args.rounds} rounds per run", file=sys.stderr)
            for rep in range(args.repeat):
                for mode in MODES:
                    per_round, cpu_s = _once(mode, cluster, single, commands, args.rounds)
                    _clear(cluster, single, keys)
                    us = sorted(t * 1e6 for t in per_round)
                    run = {
                        "median_us": round(statistics.median(us), 1),
                        "p99_us": round(us[int(0.99 * len(us))], 1),
                        "client_cpu_us": round(cpu_s * 1e6, 1),
                    }
                    runs[mode].append(run)
                    print(
                        f"rep {rep + 1} {mode:>14}: median {run['median_us']} us, p99 {run['p99_us']} us, "
                        f"client CPU {run['client_cpu_us']} us",
                        file=sys.stderr,
                    )
        finally:
            single.stop()
            cluster.stop()

    result: dict[str, Any] = {
        "rounds": args.rounds,
        "commands": args.commands,
        "frame_bytes": args.frame_bytes,
        "masters": spread,
        "runs": runs,
        "median_of_medians_us": {m: statistics.median(r["median_us"] for r in runs[m]) for m in MODES},
    }
    med = result["median_of_medians_us"]
    print(
        "median of medians (us): "
        + ", ".join(f"{m} {med[m]}" for m in MODES)
        + f"; WAIT 1 adds {med['cluster_wait1'] - med['cluster']:.0f} us per round "
        f"({med['cluster_wait1'] / med['cluster']:.2f}x)",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps(result))
    return 0
