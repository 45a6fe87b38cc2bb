"""Real oceanus processes on loopback, and the accounting that ends every scenario.

:class:`Stack` runs ``redis-server`` (AOF, the fsync policy under test), the
collector under granian (``oceanus collector``) and the flusher (``oceanus
flusher``) writing to a DuckDB file or a BigQuery endpoint, each as a child
process with its log under the scenario's directory, so a test can kill -9 or
SIGTERM any of them. :func:`account` compares what the load generator saw
acknowledged with what the warehouse holds and prints the one line::

    sent=… acked=… stored=… duplicates=… lost=…

``stored``: distinct acknowledged markers found in the warehouse; ``duplicates``:
rows beyond the first per ``event_id``; ``lost``: acknowledged and not stored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec
import psutil
import redis

from collector.spool import usage as spool_usage
from oceanus import config
from oceanus.buffer import Keys
from oceanus.redisclient import sync_client
from tests.reliability.loadgen import LoadResult, parse_marker
from tests.support.cluster import RedisCluster
from tests.support.servers import BigQueryEmulator, RedisServer, as_bytes, free_port, free_ports, wait_for
from tests.support.sqlwarehouse import SqlWarehouse

REPO = Path(__file__).resolve().parents[2]
STREAM = "pageview"
#: Generous bounds on start-up and drain on a shared 2-core box; polled, never slept.
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0


def http_status(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


class Proc:
    """One child (``python -m oceanus.cli ...``) in its own session, output in a log file."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.log_path = log
        self._log: IO[bytes] = open(log, "ab")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oceanus.cli", *args],
            env=dict(env),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def children(self) -> list[psutil.Process]:
        try:
            kids: list[psutil.Process] = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return kids

    def rss_bytes(self) -> int:
        """Resident memory of the process and all its children (granian workers)."""
        total = 0
        try:
            procs = [psutil.Process(self.pid), *self.children()]
        except psutil.NoSuchProcess:
            return 0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def send(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Signal and wait; kill -9 (the whole session) past ``timeout``. Returns the exit code."""
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_session()
        self._log.close()
        return int(self.proc.returncode if self.proc.returncode is not None else -9)

    def kill(self) -> None:
        """kill -9 the process and what it started (granian workers would otherwise linger)."""
        kids = self.children()
        if self.alive():
            self.proc.kill()
        self.proc.wait(20)
        self._reap_session()
        psutil.wait_procs(kids, timeout=10)

    def _reap_session(self) -> None:
        # The child leads its own process group (start_new_session): workers whose parent already
        # died are reparented away from it but stay in the group, so kill the group, not the tree.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Tally:
    sent: int
    acked: int
    stored: int
    duplicates: int
    lost: int
    #: Stored although never acknowledged (answer lost or timed out): harmless, reported for honesty.
    unacked_stored: int = 0
    #: Senders whose stored events are out of acknowledgement order (event_id order).
    reordered_senders: int = 0
    lost_markers: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"sent={self.sent} acked={self.acked} stored={self.stored} duplicates={self.duplicates} lost={self.lost}"


def account(load: LoadResult, rows: list[tuple[str, str]], label: str = "") -> Tally:
    """``rows``: (event_id, marker) of every warehouse row of the stream. Prints the accounting line."""
    acked = load.acked_set()
    per_event: dict[str, str] = {}
    duplicates = 0
    for event_id, mark in rows:
        if event_id in per_event:
            duplicates += 1
        else:
            per_event[event_id] = mark
    stored_markers = set(per_event.values())
    stored = len(acked & stored_markers)
    lost = sorted(acked - stored_markers)
    # Order: within one sender, event_ids (time-ordered) must follow the sequence numbers.
    by_sender: dict[int, list[tuple[str, int]]] = {}
    for event_id, mark in per_event.items():
        if mark and len(mark) == 12:
            s, q = parse_marker(mark)
            by_sender.setdefault(s, []).append((event_id, q))
    reordered = 0
    for events in by_sender.values():
        seqs = [q for _, q in sorted(events)]
        if seqs != sorted(seqs):
            reordered += 1
    tally = Tally(
        load.sent,
        len(acked),
        stored,
        duplicates,
        len(lost),
        unacked_stored=len(stored_markers - acked),
        reordered_senders=reordered,
        lost_markers=lost,
    )
    print(
        f"{label + ': ' if label else ''}{tally.line()}"
        f"  (unacked_stored={tally.unacked_stored} reordered_senders={reordered} statuses={dict(load.statuses)})",
        flush=True,
    )
    return tally


class Stack:
    """redis-server + collector + flusher for one scenario, under ``base``.

    ``cluster``: the collectors and flushers use that Redis Cluster (its ``redis+cluster://``
    URL) instead of a redis-server of their own; the caller owns it (start, restore, stop).
    ``shards``: ``[streams.pageview] shards`` (the config is copied under ``base`` with it).
    Several flushers may run at once (:meth:`start_flusher` gives each its own admin port);
    they need a warehouse that takes several writers (PostgreSQL, MySQL), not one DuckDB file.
    """

    def __init__(
        self,
        base: Path,
        *,
        workers: int = 1,
        appendfsync: str = "always",
        sink: str = "duckdb",
        env: Mapping[str, str] | None = None,
        flusher_env: Mapping[str, str] | None = None,
        cluster: RedisCluster | None = None,
        shards: int = 1,
    ) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(base / "redis", appendfsync=appendfsync)
        self.cluster = cluster
        self.shards = shards
        self.config_path = REPO / "oceanus.toml"
        if shards != 1:
            self.config_path = base / "oceanus.toml"
            text = (REPO / "oceanus.toml").read_text()
            header = "[streams.pageview]\n"
            if header not in text:
                raise RuntimeError(f"no {header.strip()} section in oceanus.toml")
            self.config_path.write_text(text.replace(header, f"{header}shards = {shards}\n", 1))
        self.port, self.admin_port = free_ports(2)
        self.workers = workers
        self.duckdb_path = base / "warehouse.duckdb"
        self.spool_dir = base / "spool"
        self.extra_env = dict(env or {})
        #: On top of ``env`` for the flusher alone (e.g. its Redis behind a fault proxy).
        self.flusher_env = dict(flusher_env or {})
        self.sink = sink
        #: Set by BigQuery scenarios: the emulator whose tables are read back.
        self.bigquery: BigQueryEmulator | None = None
        #: Set by PostgreSQL / MySQL scenarios: the schema or database whose table is read back.
        self.sql: SqlWarehouse | None = None
        self.bq_dataset = "oceanus"
        #: Running collectors by port (a rolling restart uses two).
        self.collectors: dict[int, Proc] = {}
        #: The flusher started last (the one a scenario kills and replaces).
        self.flusher: Proc | None = None
        #: Every flusher started, by admin port.
        self.flushers: dict[int, Proc] = {}
        self.cfg = config.load(self.config_path, env={})
        self.keys = Keys(self.cfg.redis.key_prefix)
        self._runs = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def redis_url(self) -> str:
        # The cluster's live nodes now: every one of them is a seed.
        return self.cluster.url if self.cluster is not None else self.redis.url

    def redis_client(self) -> redis.Redis:
        """A client for the stack's Redis, a cluster client on a cluster (close it after use)."""
        if self.cluster is None:
            return self.redis.client()
        return sync_client(msgspec.structs.replace(self.cfg.redis, url=self.redis_url), timeout_s=5.0)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCEANUS_")}
        env.update(
            {
                "OCEANUS_CONFIG": str(self.config_path),
                "OCEANUS_REDIS_URL": self.redis_url,
                "OCEANUS_SINK_KIND": self.sink,
                "OCEANUS_SINK_DUCKDB_PATH": str(self.duckdb_path),
                "OCEANUS_COLLECTOR_SPOOL_DIR": str(self.spool_dir),
                "OCEANUS_FLUSHER_ADMIN_PORT": str(self.admin_port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def _log(self, name: str) -> Path:
        self._runs += 1
        return self.base / f"{name}-{self._runs}.log"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Stack:
        if self.cluster is None:
            self.redis.start()
        self.start_flusher()
        self.start_collector()
        return self

    @property
    def collector(self) -> Proc | None:
        return self.collectors.get(self.port)

    def start_collector(self, port: int | None = None) -> Proc:
        port = port or self.port
        proc = Proc(
            "collector",
            ["collector", "--host", "127.0.0.1", "--port", str(port), "--workers", str(self.workers)],
            self.env(),
            self._log("collector"),
        )
        self.collectors[port] = proc

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"collector exited: {proc.tail()}")
            return http_status(f"http://127.0.0.1:{port}/readyz") == 200

        wait_for(ready, timeout=READY_TIMEOUT_S, what="collector /readyz")
        return proc

    def start_flusher(self) -> Proc:
        """A flusher on the stack's admin port, or on a free one while another flusher lives there."""
        running = self.flushers.get(self.admin_port)
        port = free_port() if running is not None and running.alive() else self.admin_port
        env = {**self.env(), **self.flusher_env, "OCEANUS_FLUSHER_ADMIN_PORT": str(port)}
        self.flusher = proc = Proc("flusher", ["flusher"], env, self._log("flusher"))
        self.flushers[port] = proc

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"flusher exited: {proc.tail()}")
            return http_status(f"http://127.0.0.1:{port}/healthz") == 200

        wait_for(ready, timeout=READY_TIMEOUT_S, what="flusher /healthz")
        return proc

    def collector_workers(self) -> list[psutil.Process]:
        """granian's worker processes (the children of the collector's main process)."""
        if self.collector is None:
            return []
        try:
            kids: list[psutil.Process] = psutil.Process(self.collector.pid).children(recursive=False)
        except psutil.NoSuchProcess:
            return []
        return kids

    def restart_redis(self) -> None:
        """Start redis-server again on the same port and directory: it replays its AOF."""
        self.redis.start()

    def stop(self) -> None:
        for proc in (*self.collectors.values(), *self.flushers.values()):
            if proc.alive():
                proc.stop()
        self.redis.stop()

    # -- draining and reading ---------------------------------------------------------------

    def backlog_frames(self) -> int:
        """Frames still in Redis for the stream, every shard: queued plus claimed in flight."""
        r = self.redis_client()
        try:
            total = 0
            for shard in range(self.shards):
                total += int(r.llen(self.keys.queue(STREAM, shard)))
                for key in r.smembers(self.keys.inflight_index(STREAM, shard)):
                    total += int(r.llen(key))
            return total
        finally:
            r.close()

    def spool_pending_bytes(self) -> int:
        """Bytes not yet replayed, read as ``oceanus status`` reads them."""
        return spool_usage(self.spool_dir).bytes

    def wait_drained(self, timeout: float = 120.0) -> float:
        """Poll until the spool and Redis hold nothing for the stream; returns the seconds it took."""
        t0 = time.monotonic()
        try:
            wait_for(
                lambda: self.spool_pending_bytes() == 0 and self.backlog_frames() == 0,
                timeout=timeout,
                interval=0.1,
                what="spool and Redis drained",
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.describe_backlog()}") from None
        return time.monotonic() - t0

    def describe_backlog(self) -> str:
        """What is still waiting, for a drain that timed out: the queue, the spool, and
        every in-flight key with its frames, its owner and whether that owner's heartbeat lives."""
        lines = [f"spool pending bytes={self.spool_pending_bytes()}"]
        try:
            r = self.redis_client()
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not hide the timeout
            return "\n".join([*lines, f"Redis unreadable: {exc!r}"])
        try:
            members: list[str] = []
            for shard in range(self.shards):
                queue = self.keys.queue(STREAM, shard)
                lines.append(f"queue {queue}: {r.llen(queue)} frames")
                index = self.keys.inflight_index(STREAM, shard)
                members += sorted(as_bytes(m).decode() for m in r.smembers(index))
            lines.append(f"in-flight keys: {len(members)}")
            for key in members:
                owner = Keys.owner_of(key)
                alive = bool(r.exists(self.keys.heartbeat(owner)))
                lines.append(f"  {key}: {r.llen(key)} frames, owner {owner}, heartbeat {'alive' if alive else 'gone'}")
        except Exception as exc:  # noqa: BLE001 - as above
            lines.append(f"Redis unreadable: {exc!r}")
        finally:
            r.close()
        return "\n".join(lines)

    def warehouse_rows(self) -> list[tuple[str, str]]:
        """(event_id, oid) of every row of the stream. Stop the flusher first (DuckDB has one writer)."""
        if self.sql is not None:
            return [(str(e), str(m or "")) for e, m in self.sql.rows(f"SELECT event_id, oid FROM {{s}}.{STREAM}")]
        if self.bigquery is not None:
            client = self.bigquery.client()
            try:
                sql = f"SELECT event_id, oid FROM `{self.bigquery.project}.{self.bq_dataset}.{STREAM}`"
                return [(_hex(r[0]), str(r[1] or "")) for r in client.query(sql).result()]
            finally:
                client.close()
        import duckdb

        con = duckdb.connect(str(self.duckdb_path), read_only=True)
        try:
            rows: list[tuple[Any, Any]] = con.execute(f"SELECT event_id, oid FROM {STREAM}").fetchall()
        finally:
            con.close()
        return [(_hex(e), str(m or "")) for e, m in rows]

    def finish(self, load: LoadResult, label: str) -> Tally:
        """Drain, stop everything, read the warehouse, print the accounting line."""
        self.wait_drained()
        for proc in self.collectors.values():
            if proc.alive():
                proc.stop()
        # The collector's drain may have pushed its last frames: wait for those too.
        self.wait_drained()
        for flusher in self.flushers.values():
            flusher.stop()
        tally = account(load, self.warehouse_rows(), label)
        self.redis.stop()
        return tally


def _hex(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)
