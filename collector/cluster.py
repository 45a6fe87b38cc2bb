"""The writer's link to a Redis Cluster: the round of :class:`collector.resp.RedisLink`, split per master.

A round is what the pusher sends to one Redis: packed commands in, one result per
command out, error replies in their command's place. Here each command goes to the
master that serves its key's slot; the per-master shares are written concurrently,
each as one pipelined write on that master's own connection (a ``RedisLink``, kept
from round to round), and the results are put back in the round's order.

URL: ``redis+cluster://[user:password@]host1:port1,host2:port2`` (``rediss+cluster://``
for TLS). redis-py names a cluster by the class (``RedisCluster.from_url("redis://h:p")``),
and its URL holds one seed; one string with every seed lets a single ``redis.url``
setting say "cluster" and survive the loss of any one seed. A database number is refused
(a cluster has only database 0), as are URL options, as ``RedisLink`` does.

What happens when:

- **MOVED** (the slot has moved: a resharding, a failover the map has not seen): the slot
  map is reloaded and the redirected commands are sent once more, to the node the
  redirection names. A second redirection is returned in the command's place.
- **ASK** (the slot is being migrated and the key is already on the target): ``ASKING``
  and the command go to the named node, once. The map is left as it is: the slot still
  belongs to the source until the migration ends.
- **A node that cannot be reached** (refused, reset, no reply within ``timeout_s``):
  only that node's commands fail, each with the ``OSError`` in its place, and the next
  round reloads the slot map first (a replica may have been promoted meanwhile). A round
  whose every command failed that way raises that ``OSError`` instead, as ``RedisLink``
  does when its one server is down, so the caller's outage handling applies unchanged.
- **wait_replicas = K**: ``WAIT K wait_timeout_ms`` ends each node's pipeline; if fewer
  than K replicas acknowledged, that node's commands count as failed
  (:class:`NotReplicated` in their place): a frame is acknowledged only once K replicas
  hold it. Redis has applied those commands all the same, so a frame the caller spools
  for that reason (or for a lost reply) may also be in Redis: the copies carry the same
  event id and are removed downstream, as for every other duplicate
  (docs/ARCHITECTURE.md, "Where duplicates can arise").

Each command's key must be its first argument (true of RPUSH, LPUSH, LTRIM, HINCRBY,
EXPIRE: every command the pusher sends); a command without one is refused. Multi-key
commands are routed by their first key, and Redis refuses them (CROSSSLOT) unless every
key hashes to the same slot.

One task's rounds; not shared.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import urllib.parse
from collections.abc import Sequence
from typing import Any

from collector.resp import NotReplicated, RedisLink, check_wait, pack

__all__ = ["SLOTS", "ClusterLink", "NotReplicated", "command_key", "key_slot", "parse_url", "split_commands"]

# One parser for the cluster URL, shared with the flusher, the notifier and the commands.
from oceanus.redisclient import parse_address as _address
from oceanus.redisclient import parse_cluster_url as parse_url

#: Redis Cluster's key space: a key's slot is CRC16(key) mod 16384.
SLOTS = 16384
_CLUSTER_SHARDS = pack("CLUSTER", "SHARDS")
_ASKING = pack("ASKING")

Address = tuple[str, int]


def key_slot(key: bytes) -> int:
    """The hash slot of ``key``, as Redis computes it (``keyHashSlot`` in cluster.c).

    Only the part between the first ``{`` and the first ``}`` after it is hashed, if that
    part is not empty; otherwise the whole key. CRC16 is the XMODEM variant, which is
    ``binascii.crc_hqx`` started from 0.
    """
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) & (SLOTS - 1)


def command_key(command: bytes) -> bytes:
    """The first argument of a packed command (see :func:`collector.resp.pack`)."""
    pos, argc = _header(command, 0, b"*")
    if argc < 2:
        raise ValueError(f"a cluster round needs a key in every command; got {command[:40]!r}")
    pos, length = _header(command, pos, b"$")
    pos, length = _header(command, pos + length + 2, b"$")
    return command[pos : pos + length]


def split_commands(packed: bytes, count: int) -> list[bytes]:
    """``count`` packed commands joined in ``packed``, apart again."""
    out: list[bytes] = []
    pos = 0
    for _ in range(count):
        start = pos
        pos, argc = _header(packed, pos, b"*")
        for _ in range(argc):
            pos, length = _header(packed, pos, b"$")
            pos += length + 2
        out.append(packed[start:pos])
    if pos != len(packed):
        raise ValueError(f"{len(packed) - pos} bytes left after {count} commands")
    return out


def _header(buf: bytes, pos: int, kind: bytes) -> tuple[int, int]:
    """Read ``*N\\r\\n`` or ``$N\\r\\n`` at ``pos``: the position after it, and N."""
    end = buf.find(b"\r\n", pos)
    if end < 0 or buf[pos : pos + 1] != kind:
        raise ValueError(f"not a packed command at byte {pos}")
    return end + 2, int(buf[pos + 1 : end])


class ClusterLink:
    """One connection per master, a slot map, and rounds split per master (module docstring)."""

    def __init__(
        self,
        seeds: str | Sequence[Address],
        timeout_s: float,
        *,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 0,
    ) -> None:
        if isinstance(seeds, str):
            self._seeds, self._user, self._password, self._tls = parse_url(seeds)
        else:
            self._seeds, self._user, self._password, self._tls = list(seeds), None, None, False
            if not self._seeds:
                raise ValueError("a cluster link needs at least one seed node")
        check_wait(wait_replicas, wait_timeout_ms, timeout_s)
        self._timeout = timeout_s
        self._wait = pack("WAIT", wait_replicas, wait_timeout_ms) if wait_replicas else None
        self._wait_replicas = wait_replicas
        self._links: dict[Address, RedisLink] = {}
        #: slot -> the master serving it; None until the first round loads it.
        self._slots: list[Address | None] | None = None
        self._stale = True

    # -- the round ---------------------------------------------------------------------------

    async def call(self, packed: bytes, replies: int) -> list[Any]:
        """``RedisLink.call``'s signature: ``replies`` commands joined in ``packed``."""
        return await self.round(split_commands(packed, replies))

    async def round(self, commands: Sequence[bytes]) -> list[Any]:
        """Send each command to the master of its key's slot; one result per command, in order.

        Error replies and per-node failures come back in their commands' places as exception
        instances; only a round none of whose commands reached a node raises (``OSError``).
        """
        if not commands:
            return []  # nothing to route: no reason to reach a node
        if self._stale or self._slots is None:
            await self.refresh()
        slots = self._slots
        assert slots is not None
        results: list[Any] = [None] * len(commands)
        shares: dict[Address, list[int]] = {}
        for i, command in enumerate(commands):
            node = slots[key_slot(command_key(command))]
            if node is None:
                results[i] = ConnectionError(f"no master serves the slot of command {i} (cluster down?)")
                self._stale = True
            else:
                shares.setdefault(node, []).append(i)
        await self._send(commands, shares, results, asking=False)

        moved: dict[Address, list[int]] = {}
        asked: dict[Address, list[int]] = {}
        for i, result in enumerate(results):
            if isinstance(result, Exception):
                redirect = _redirect(result)
                if redirect is not None:
                    kind, node = redirect
                    (moved if kind == "MOVED" else asked).setdefault(node, []).append(i)
        if moved:
            # If no node answers, the redirection itself still names the node; the map is reloaded next round.
            with contextlib.suppress(OSError):
                await self.refresh()
        if moved or asked:
            # One more try each, all in one concurrent step; a second redirection stays in place.
            await asyncio.gather(
                self._send(commands, moved, results, asking=False), self._send(commands, asked, results, asking=True)
            )

        if all(isinstance(r, OSError) for r in results):
            raise results[0]
        return results

    async def _send(
        self, commands: Sequence[bytes], shares: dict[Address, list[int]], results: list[Any], asking: bool
    ) -> None:
        if len(shares) == 1:
            ((node, indexes),) = shares.items()
            await self._send_one(node, commands, indexes, results, asking)
        elif shares:
            await asyncio.gather(
                *(self._send_one(node, commands, indexes, results, asking) for node, indexes in shares.items())
            )

    async def _send_one(
        self, node: Address, commands: Sequence[bytes], indexes: list[int], results: list[Any], asking: bool
    ) -> None:
        """One node's share as one pipelined write; its results go to ``results[indexes]``."""
        parts: list[bytes] = []
        for i in indexes:
            if asking:
                parts.append(_ASKING)
            parts.append(commands[i])
        if self._wait is not None:
            parts.append(self._wait)
        try:
            replies = await self._link(node).call(b"".join(parts), len(parts))
        except OSError as exc:
            self._stale = True
            for i in indexes:
                results[i] = exc
            return
        step = 2 if asking else 1
        for n, i in enumerate(indexes):
            if asking and isinstance(replies[2 * n], Exception):
                results[i] = replies[2 * n]  # ASKING itself was refused
            else:
                results[i] = replies[n * step + step - 1]
        if self._wait is not None:
            acked = replies[-1]
            if not isinstance(acked, int) or acked < self._wait_replicas:
                short = NotReplicated(
                    f"{node[0]}:{node[1]}: {acked!r} of {self._wait_replicas} replica(s) acknowledged in time"
                )
                for i in indexes:
                    if not isinstance(results[i], Exception):
                        results[i] = short

    # -- the slot map ------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Reload the slot map from the first node that answers ``CLUSTER SHARDS``.

        The masters of the current map are asked first, then the seeds; a master that hangs
        rather than refuses costs up to ``timeout_s`` before the next is asked. Raises
        ``ConnectionError`` when none answers.
        """
        tried: list[str] = []
        known = [] if self._slots is None else list(dict.fromkeys(n for n in self._slots if n is not None))
        for node in dict.fromkeys([*known, *self._seeds]):
            try:
                reply = (await self._link(node).call(_CLUSTER_SHARDS, 1))[0]
            except OSError as exc:
                tried.append(f"{node[0]}:{node[1]}: {exc}")
                continue
            if isinstance(reply, Exception):
                tried.append(f"{node[0]}:{node[1]}: {reply}")
                continue
            self._slots = _slot_map(reply, node[0], self._tls)
            self._stale = False
            masters = set(self._slots)
            for address in [a for a in self._links if a not in masters]:
                self._links.pop(address).close()
            return
        self._stale = True
        raise ConnectionError("no cluster node answered CLUSTER SHARDS (" + "; ".join(tried) + ")")

    def node_for(self, key: bytes) -> Address | None:
        """The master this link would send ``key`` to now (None before the first round)."""
        return None if self._slots is None else self._slots[key_slot(key)]

    def _link(self, node: Address) -> RedisLink:
        link = self._links.get(node)
        if link is None:
            host = f"[{node[0]}]" if ":" in node[0] else node[0]
            auth = ""
            if self._password is not None:
                auth = urllib.parse.quote(self._user or "", safe="") + ":" + urllib.parse.quote(self._password, safe="")
                auth += "@"
            link = RedisLink(f"{'rediss' if self._tls else 'redis'}://{auth}{host}:{node[1]}", self._timeout)
            self._links[node] = link
        return link

    def close(self) -> None:
        links, self._links = self._links, {}
        for link in links.values():
            link.close()


def _redirect(error: Exception) -> tuple[str, Address] | None:
    """``("MOVED" | "ASK", node)`` from a redirection error reply, else None."""
    if isinstance(error, OSError | NotReplicated):
        return None
    words = str(error).split()
    if len(words) != 3 or words[0] not in ("MOVED", "ASK"):
        return None
    return words[0], _address(words[2], f"a {words[0]} reply")


def _slot_map(shards: list[Any], asked_host: str, tls: bool) -> list[Address | None]:
    """slot -> master from a ``CLUSTER SHARDS`` reply (RESP2: each map a flat key/value list)."""
    slots: list[Address | None] = [None] * SLOTS
    for shard in shards:
        fields = _pairs(shard)
        master: Address | None = None
        for node in fields.get(b"nodes", []):
            info = _pairs(node)
            # A shard may list a failed master beside the promoted one for a moment: the online one wins.
            if info.get(b"role") == b"master" and (master is None or info.get(b"health") == b"online"):
                endpoint = info.get(b"endpoint") or b"?"
                # "?" (or nothing): the node has no known endpoint; it is the one we asked (CLUSTER SHARDS docs).
                host = asked_host if endpoint == b"?" else endpoint.decode()
                port = info.get(b"tls-port") if tls else info.get(b"port")
                if port is None:
                    continue
                master = (host, int(port))
        ranges = fields.get(b"slots", [])
        if master is None:
            continue
        for start, end in zip(ranges[::2], ranges[1::2], strict=True):
            for slot in range(int(start), int(end) + 1):
                slots[slot] = master
    return slots


def _pairs(flat: list[Any]) -> dict[bytes, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
