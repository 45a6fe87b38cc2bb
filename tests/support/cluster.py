"""A real local Redis Cluster for tests: three masters, one replica each, on free ports.

Each node is a ``redis-server --cluster-enabled yes`` child with its own directory
(nodes.conf, AOF with ``appendfsync always``, log). ``redis-cli --cluster create``
assigns the slots and the replicas; readiness is then polled, never slept for:
every live node must report ``cluster_state:ok`` with all 16384 slots served, know
every node with no failure flag and no half-done migration, and every master must have
its replica attached and in step (``WAIT`` answers at once).

Creating one costs a few seconds, so the fixture is shared by a session and each
test gets it healthy and empty. A test that kills, pauses or migrates restores a
healthy cluster before it returns (:meth:`RedisCluster.restart`, :meth:`paused`);
its slot layout may differ afterwards, so tests look up who serves what
(:meth:`masters`, :meth:`node_for_key`) rather than assume it.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.servers import free_ports, wait_for

if TYPE_CHECKING:
    import redis

SLOTS = 16384
#: Short, so a killed master's replica is promoted within about two seconds.
NODE_TIMEOUT_MS = 1000


@dataclass
class ClusterNode:
    """One redis-server of the cluster; ``port`` is its client port, ``bus_port`` the cluster bus."""

    port: int
    bus_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout_s: float = 2.0) -> redis.Redis:
        import redis

        return redis.Redis(port=self.port, socket_timeout=timeout_s)

    def command(self, *args: Any, timeout_s: float = 2.0, asking: bool = False) -> Any:
        """One command on a short-lived connection to this node only: no redirection, and the
        reply as Redis sent it (redis-py's client would parse INFO and CLUSTER NODES into dicts).
        ``asking``: ASKING first, to read a key of a slot this node is importing."""
        import redis

        conn = redis.Connection(port=self.port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            if asking:
                conn.send_command("ASKING")
                conn.read_response()
            conn.send_command(*args)
            reply = conn.read_response()
        finally:
            conn.disconnect()
        if isinstance(reply, redis.ResponseError):
            raise reply
        return reply

    def info(self, section: str) -> dict[str, str]:
        return _info_pairs(self.command("INFO", section))

    def cluster_info(self) -> dict[str, str]:
        return _info_pairs(self.command("CLUSTER", "INFO"))


class RedisCluster:
    """Six cluster-enabled redis-server children: 3 masters, 1 replica each."""

    def __init__(self, base_dir: Path | None = None, masters: int = 3, replicas: int = 1) -> None:
        #: Removed on stop(): the nodes' AOFs and nodes.conf files are of no use afterwards.
        self.base_dir = Path(tempfile.mkdtemp(prefix="redis-cluster-", dir=base_dir))
        self.replicas = replicas
        count = masters * (1 + replicas)
        # The bus port is chosen too: the default (client port + 10000) may be taken or past 65535.
        ports = free_ports(2 * count)
        self.nodes = [
            ClusterNode(port=ports[i], bus_port=ports[count + i], data_dir=self.base_dir / f"node-{ports[i]}")
            for i in range(count)
        ]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> RedisCluster:
        cli = shutil.which("redis-cli")
        if shutil.which("redis-server") is None or cli is None:
            raise RuntimeError("redis-server / redis-cli are not installed (make test installs them with apt)")
        for node in self.nodes:
            self._spawn(node)
        for node in self.nodes:
            wait_for(functools.partial(node.command, "PING", timeout_s=0.5), timeout=20, what=f"{node.address} up")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_healthy(timeout=60)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            self._kill(node, signal.SIGKILL)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _spawn(self, node: ClusterNode) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        node.data_dir.mkdir(parents=True, exist_ok=True)
        node.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(node.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(node.data_dir),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                str(node.bus_port),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                # A replica whose link was down for a while (a paused test) may still take over:
                # the tests that kill a master want the promotion, whatever ran before them.
                "--cluster-replica-validity-factor",
                "0",
                # Replicas sync at once: the tests that need a replica should not wait 5 s for it.
                "--repl-diskless-sync-delay",
                "0",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                str(node.data_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @staticmethod
    def _kill(node: ClusterNode, sig: int) -> None:
        if node.proc is not None and node.proc.poll() is None:
            if sig != signal.SIGKILL:
                node.proc.send_signal(sig)
                return
            node.proc.send_signal(signal.SIGCONT)  # a paused node would not die of SIGTERM; SIGKILL is fine
            node.proc.kill()
            node.proc.wait(timeout=20)

    # -- what the cluster looks like ---------------------------------------------------------

    @property
    def live_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive]

    @property
    def addresses(self) -> list[str]:
        """``host:port`` of every live node, masters and replicas."""
        return [n.address for n in self.live_nodes]

    @property
    def url(self) -> str:
        """Every live node as seeds, in the ``redis+cluster://`` form of docs/CLUSTER.md."""
        return "redis+cluster://" + ",".join(self.addresses)

    def node(self, port: int) -> ClusterNode:
        for n in self.nodes:
            if n.port == port:
                return n
        raise KeyError(f"no node on port {port}")

    def slot_ranges(self) -> dict[int, list[tuple[int, int]]]:
        """Master port -> the slot ranges it serves, as a live node sees them now."""
        out: dict[int, list[tuple[int, int]]] = {}
        for entry in self._ask_live("CLUSTER", "SLOTS"):
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            out.setdefault(int(master[1]), []).append((start, end))
        return out

    def masters(self) -> list[ClusterNode]:
        """The nodes that serve slots now, in port order."""
        return [self.node(port) for port in sorted(self.slot_ranges())]

    def slot_of(self, key: bytes | str) -> int:
        return int(self._ask_live("CLUSTER", "KEYSLOT", key))

    def node_for_slot(self, slot: int) -> ClusterNode:
        for port, ranges in self.slot_ranges().items():
            if any(start <= slot <= end for start, end in ranges):
                return self.node(port)
        raise KeyError(f"no master serves slot {slot}")

    def node_for_key(self, key: bytes | str) -> ClusterNode:
        """The master that serves ``key``'s slot now."""
        return self.node_for_slot(self.slot_of(key))

    def key_on(self, node: ClusterNode, prefix: str = "k") -> str:
        """A key (``prefix`` + a number) whose slot ``node`` serves."""
        for i in range(100_000):
            key = f"{prefix}{i}"
            if self.node_for_key(key).port == node.port:
                return key
        raise LookupError(f"no key found for {node.address}")

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        """A live replica of ``master``."""
        master_id = _myid(master)
        for n in self.live_nodes:
            if n is not master and _node_line(n, n.port).get("master") == master_id:
                return n
        raise LookupError(f"{master.address} has no live replica")

    def _ask_live(self, *args: Any) -> Any:
        last: Exception | None = None
        for n in self.live_nodes:
            try:
                return n.command(*args, timeout_s=1.0)
            except Exception as exc:  # noqa: BLE001 - a paused node: ask the next one
                last = exc
        raise RuntimeError(f"no live cluster node answered {args!r}: {last!r}")

    # -- health ------------------------------------------------------------------------------

    def healthy(self) -> bool:
        """Every node alive, agreeing that every slot is served, none flagged failing, replicas linked."""
        nodes = self.nodes
        if not all(n.alive for n in nodes):
            return False
        for n in nodes:
            info = n.cluster_info()
            if (
                info.get("cluster_state") != "ok"
                or info.get("cluster_slots_ok") != str(SLOTS)
                or info.get("cluster_known_nodes") != str(len(nodes))
            ):
                return False
            listing = n.command("CLUSTER", "NODES")
            text = listing.decode() if isinstance(listing, bytes) else str(listing)
            for line in text.splitlines():
                parts = line.split()
                # "[slot->-id]" / "[slot-<-id]": a migration left half done.
                if "fail" in parts[2] or parts[7] != "connected" or any(p.startswith("[") for p in parts[8:]):
                    return False
        # Every node in its place: a master serving slots with all its replicas attached, or a
        # replica whose link is up (a restarted master is briefly a master without slots).
        masters = self.slot_ranges()
        for n in nodes:
            repl = n.info("replication")
            if n.port in masters:
                if repl.get("role") != "master" or repl.get("connected_slaves") != str(self.replicas):
                    return False
                # Attached is not yet in step: after a full sync the master streams only once the
                # replica's first ack arrives (up to a second later), and until then WAIT counts 0.
                if n.command("WAIT", self.replicas, 100) != self.replicas:
                    return False
            elif repl.get("role") != "slave" or repl.get("master_link_status") != "up":
                return False
        return len(masters) * (1 + self.replicas) == len(nodes)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        wait_for(self.healthy, timeout=timeout, interval=0.05, what="the cluster to be healthy")

    def flush(self) -> None:
        """Empty every master (replicas follow)."""
        for master in self.masters():
            master.command("FLUSHALL")

    # -- faults ------------------------------------------------------------------------------

    def kill_master(self, master: ClusterNode, wait: bool = True) -> ClusterNode:
        """``kill -9`` a master and return its replica; with ``wait``, once the replica serves
        the master's slots (else call :meth:`wait_promoted`)."""
        replica = self.replica_of(master)
        self._kill(master, signal.SIGKILL)
        if wait:
            self.wait_promoted(replica)
        return replica

    def wait_promoted(self, replica: ClusterNode) -> None:
        """Wait until ``replica`` is a master serving slots and every live node says the cluster is ok."""

        def promoted() -> bool:
            if replica.info("replication").get("role") != "master":
                return False
            for n in self.live_nodes:
                info = n.cluster_info()
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                    return False
            return replica.port in self.slot_ranges()

        wait_for(promoted, timeout=30, interval=0.05, what=f"{replica.address} promoted")

    def restart(self, node: ClusterNode) -> None:
        """Start a killed node again on its port and directory (it rejoins as a replica) and wait
        until the whole cluster is healthy."""
        if node.alive:
            raise RuntimeError(f"{node.address} is still running")
        self._spawn(node)
        self.wait_healthy(timeout=60)

    # -- resharding --------------------------------------------------------------------------

    def begin_migration(self, slot: int, target: ClusterNode) -> ClusterNode:
        """Mark ``slot`` importing on ``target`` and migrating on its master (returned): from
        now on the source answers ASK for the keys of the slot it does not hold."""
        source = self.node_for_slot(slot)
        if source.port == target.port:
            raise ValueError(f"{target.address} already serves slot {slot}")
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", _myid(source))
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", _myid(target))
        return source

    def finish_migration(self, slot: int, source: ClusterNode, target: ClusterNode) -> None:
        """Move the slot's keys with MIGRATE, then give the slot to ``target`` on every master
        (target first, then source, as the cluster tutorial orders it); source then answers MOVED."""
        while keys := source.command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys, timeout_s=10)
        target_id = _myid(target)
        for n in [target, source, *(m for m in self.masters() if m.port not in (source.port, target.port))]:
            n.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_healthy()

    def migrate_slot(self, slot: int, target: ClusterNode) -> ClusterNode:
        """Move ``slot`` (and its keys) to ``target``; returns the master that served it."""
        source = self.begin_migration(slot, target)
        self.finish_migration(slot, source, target)
        return source

    @contextlib.contextmanager
    def paused(self, node: ClusterNode) -> Iterator[ClusterNode]:
        """SIGSTOP ``node`` for the block; SIGCONT after it, then wait until the cluster is healthy."""
        self._kill(node, signal.SIGSTOP)
        try:
            yield node
        finally:
            self._kill(node, signal.SIGCONT)
            self.wait_healthy(timeout=60)


def _info_pairs(raw: Any) -> dict[str, str]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def _node_line(asked: ClusterNode, port: int) -> dict[str, str]:
    """The ``CLUSTER NODES`` line of the node on ``port``, as ``asked`` sees it."""
    listing = asked.command("CLUSTER", "NODES")
    text = listing.decode() if isinstance(listing, bytes) else str(listing)
    for line in text.splitlines():
        parts = line.split()
        if parts[1].split("@")[0].rsplit(":", 1)[1] == str(port):
            return {"id": parts[0], "flags": parts[2], "master": parts[3]}
    raise KeyError(f"{asked.address} does not know a node on port {port}")


def _myid(node: ClusterNode) -> str:
    raw = node.command("CLUSTER", "MYID")
    return raw.decode() if isinstance(raw, bytes) else str(raw)
