"""One place that turns ``[redis]`` into a redis-py client: one instance or a Redis Cluster.

``redis.url`` names one instance (``redis://``, ``rediss://``, ``unix://``) or a cluster by
its seeds (``redis+cluster://h1:p1,h2:p2``, TLS ``rediss+cluster://``; docs/CLUSTER.md). The
flusher, the notifier, every command that reads Redis and the collector's status page take
their client from here, so they all behave the same on either.

**No hidden retries, on either client.** A claim script the client re-sent after a timeout
could run twice (its first frames appended under the key and never returned:
flusher/claim.py), so:

- one instance: ``retry=Retry(NoBackoff(), 0)``, as before;
- a cluster: the same ``retry`` object, which is what redis-py's cluster client retries
  connection errors, timeouts, ``CLUSTERDOWN`` and uncovered slots with
  (``cluster_error_retry_attempts`` is its deprecated spelling and is ignored once ``retry``
  is given). A ``MOVED`` or ``ASK`` reply is still followed, at most 16 times per command
  (redis-py's ``RedisClusterRequestTTL``; it is not a retry knob): the node refused the
  command without running it, so sending it to the named node runs it once. A timeout or a
  reset after the command was written is not followed: it raises, the client reloads its
  slot map before its next command, and the caller's loop decides, knowing the outcome is
  unknown (the claim's held-key bookkeeping turns a lost reply into an orphan its own
  re-claim scan takes back).

Pipelines: redis-py's cluster pipeline sends each single-key command to its slot's master
(one write per master) and refuses a transaction whose keys span slots, as Redis would.
Every ``MULTI`` oceanus runs keeps to one shard's slot (oceanus/buffer.py), so the same code
runs on both clients; what differs (``SCAN``, ``INFO``, the node serving a key) goes through
the helpers below.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, cast

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster as synccluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.retry import Retry

from oceanus.config import RedisConfig

Address = tuple[str, int]


def parse_cluster_url(url: str) -> tuple[list[Address], str | None, str | None, bool]:
    """Seeds, user name, password and TLS from a ``redis+cluster://`` URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis+cluster", "rediss+cluster"):
        raise ValueError(f"redis.url: a cluster URL starts with redis+cluster:// or rediss+cluster://, not {url!r}")
    if parts.path not in ("", "/", "/0") or parts.query or parts.fragment:
        raise ValueError("redis.url: a cluster URL carries no database, path or options (a cluster has database 0)")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    seeds = [parse_address(h, "redis.url") for h in hosts.split(",") if h]
    if not seeds:
        raise ValueError(f"redis.url: no host:port in {url!r}")
    return (
        seeds,
        urllib.parse.unquote(user) or None,
        urllib.parse.unquote(password) if userinfo and ":" in userinfo else None,
        parts.scheme == "rediss+cluster",
    )


def parse_address(text: str, where: str) -> Address:
    """``host:port`` (``[v6]:port`` too); ``where`` names the setting or reply in the error."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{where}: expected host:port, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class ClusterUnavailable(redis.ConnectionError):
    """The cluster could not run the command: no master serves the key's slot, no node answers, or
    a node replied ``CLUSTERDOWN`` / ``TRYAGAIN`` (a failover or a slot migration under way).

    redis-py raises the first two outside the ``RedisError`` tree and the last two as error
    replies; none ran the command. As a ``ConnectionError`` they take the path every caller
    already has for a Redis that is down (back off, try again) instead of ending a loop that
    only expects outages to be connection errors. redis-py's other ``RedisClusterException`` s
    (keys of several slots in one script, ...) are bugs, and stay as they are.
    """


#: Everything a synchronous caller (the commands) treats as "Redis did not do it".
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)
_OUTAGES = (SlotNotCoveredError, RedisClusterUnreachableError, ClusterDownError, TryAgainError)


class _ClusterPipeline(aiocluster.ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except _OUTAGES as exc:
            raise ClusterUnavailable(str(exc)) from exc


class _Cluster(aiocluster.RedisCluster):
    """redis-py's asyncio cluster client, its outage exceptions made :class:`ClusterUnavailable`."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except _OUTAGES as exc:
            raise ClusterUnavailable(str(exc)) from exc

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> aiocluster.ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refused there, with redis-py's message
        return _ClusterPipeline(self, transaction)  # type: ignore[abstract]


def _cluster_kwargs(rcfg: RedisConfig, timeout_s: float, max_connections: int | None) -> dict[str, Any]:
    seeds, user, password, tls = parse_cluster_url(rcfg.url)
    kwargs: dict[str, Any] = {
        "username": user,
        "password": password,
        "ssl": tls,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
    }
    if max_connections is not None:
        kwargs["max_connections"] = max_connections  # per node in the cluster client
    return {"seeds": seeds, **kwargs}


def async_client(
    rcfg: RedisConfig, *, timeout_s: float | None = None, max_connections: int | None = None
) -> aioredis.Redis:
    """The asyncio client for ``rcfg.url`` (module docstring: no retries, redirects followed).

    Typed as the one-instance client: the cluster client takes every call oceanus makes
    with the same arguments; the few that differ are behind :func:`is_cluster`.
    """
    t = rcfg.timeout_s if timeout_s is None else timeout_s
    if rcfg.cluster:
        kwargs = _cluster_kwargs(rcfg, t, max_connections)
        seeds = kwargs.pop("seeds")
        client = _Cluster(
            startup_nodes=[aiocluster.ClusterNode(host, port) for host, port in seeds],
            retry=AsyncRetry(NoBackoff(), 0),
            **kwargs,
        )
        return cast(aioredis.Redis, client)
    extra: dict[str, Any] = {} if max_connections is None else {"max_connections": max_connections}
    return aioredis.Redis.from_url(
        rcfg.url, socket_timeout=t, socket_connect_timeout=t, retry=AsyncRetry(NoBackoff(), 0), **extra
    )


def sync_client(rcfg: RedisConfig, *, timeout_s: float | None = None) -> redis.Redis:
    """The synchronous client for ``rcfg.url``, with the same rules as :func:`async_client`."""
    t = rcfg.timeout_s if timeout_s is None else timeout_s
    if rcfg.cluster:
        kwargs = _cluster_kwargs(rcfg, t, None)
        seeds = kwargs.pop("seeds")
        client = synccluster.RedisCluster(
            startup_nodes=[synccluster.ClusterNode(host, port) for host, port in seeds],  # type: ignore[no-untyped-call]
            retry=Retry(NoBackoff(), 0),
            **kwargs,
        )
        return cast(redis.Redis, client)
    return redis.Redis.from_url(rcfg.url, socket_timeout=t, socket_connect_timeout=t, retry=Retry(NoBackoff(), 0))


def is_cluster(client: object) -> bool:
    """True for a client :func:`async_client` or :func:`sync_client` made for a cluster."""
    return isinstance(client, aiocluster.RedisCluster | synccluster.RedisCluster)


def node_of(client: object, key: str) -> str:
    """``host:port`` of the master serving ``key`` from the client's slot map (no round trip);
    ``""`` on one instance, or while the map is not loaded yet."""
    if not isinstance(client, aiocluster.RedisCluster | synccluster.RedisCluster):
        return ""
    try:
        node = client.get_node_from_key(key)
    except (redis.RedisError, IndexError, KeyError, TypeError):
        return ""
    return "" if node is None else f"{node.host}:{node.port}"


async def memory_info(client: aioredis.Redis) -> tuple[float, float]:
    """``used_memory`` and ``maxmemory``: the one server's, or summed over a cluster's masters."""
    if isinstance(client, aiocluster.RedisCluster):
        per_node: Any = await client.info("memory", target_nodes=aiocluster.RedisCluster.PRIMARIES)
        used = sum(float(v.get("used_memory", 0)) for v in per_node.values())
        most = sum(float(v.get("maxmemory", 0)) for v in per_node.values())
        return used, most
    info = await client.info("memory")
    return float(info.get("used_memory", 0)), float(info.get("maxmemory", 0))
