"""``oceanus flusher``: drain every stream's Redis list into the warehouse (the process's life cycle).

One asyncio loop per process: a :class:`flusher.worker.StreamWorker` task per
stream (claim, write, retries: see :mod:`flusher.worker`), plus a heartbeat, an
orphan re-claim scan, the gauges and the admin server.

Delivery guarantees (see docs/ARCHITECTURE.md):

- a frame leaves its queue only into an in-flight key, atomically, and the
  in-flight key is deleted only after ``sink.write`` returned: a crash at any
  point leaves the rows in Redis, and they are written again by whoever
  re-claims them — the sinks dedupe by ``event_id`` (DuckDB exactly; BigQuery
  by insertId / committed-stream offsets / job ids, with the dedup view);
- SIGTERM/SIGINT: stop claiming; a batch not yet handed to the sink is given
  back to the head of its queue; one being written is finished within
  ``drain_timeout_s``; past that the claim is left for re-claim and the
  process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from flusher.admin import AdminServer, query_endpoint
from flusher.batch import frame_oldest_ms
from flusher.claim import Claimer, make_owner_id
from flusher.metrics import FlusherMetrics
from flusher.sinks import make_sink
from flusher.sinks.base import Sink
from flusher.upgrade import UPGRADE_EVERY_S, Upgrade
from flusher.worker import StreamWorker
from oceanus import config as config_mod
from oceanus import redisclient
from oceanus.buffer import Keys
from oceanus.config import Config
from oceanus.discovery import FlusherInfo as _FlusherInfo

log = logging.getLogger("oceanus.flusher")

#: How often queue lengths, lag and Redis memory are sampled for /metrics (seconds).
GAUGE_INTERVAL_S = 1.0
#: Suffix of the discovery file written beside the DuckDB file.
FLUSHER_FILE_SUFFIX = ".flusher.json"

T = TypeVar("T")

#: Work the flusher process hosts beside the streams, in a thread of its own: called once
#: the tables are ensured, with the sink, the registry of /metrics and an event set at
#: SIGTERM; it returns once the event is set, having committed what it was writing. The
#: process that holds DuckDB's single-writer lock is the only one that can write the file,
#: so the ``[imports]`` run here (``oceanus flusher`` passes them: importer.hosted).
HostedTask = Callable[[Sink, CollectorRegistry, threading.Event], None]


class Flusher:
    """One flusher instance: its Redis clients, sink, workers and admin server."""

    def __init__(self, cfg: Config, sink: Sink, owner: str | None = None, hosted: Sequence[HostedTask] = ()) -> None:
        self.cfg = cfg
        self.sink = sink
        self.hosted = tuple(hosted)
        self.hosted_stop = threading.Event()
        self.keys = Keys(cfg.redis.key_prefix)
        self.owner = owner or make_owner_id()
        # No retries inside the client (one instance or a cluster: oceanus/redisclient.py): a
        # claim script is not idempotent (run twice under one key, its first frames would be
        # appended and never returned), and the worker's own loop already retries with the
        # outcome of every call known.
        self.aredis: aioredis.Redis = redisclient.async_client(cfg.redis)
        self.sync_redis: redis.Redis = redisclient.sync_client(cfg.redis)
        self.claimer = Claimer(
            self.aredis,
            self.keys,
            self.owner,
            cfg.flusher.heartbeat_ttl_s,
            dead_letter_max=cfg.flusher.dead_letter_max,
            dead_letter_ttl_s=cfg.flusher.dead_letter_ttl_s,
            # Streams with rules: a claimed frame the notifier's tap has not copied yet is copied by the claim.
            notify_tap=config_mod.rule_streams(cfg),
        )
        # Keys a Redis still holds in the layout before hash tags (flusher/upgrade.py). Single
        # instance only: that layout never ran on a cluster, and its scripts span slots.
        self.upgrade: Upgrade | None = (
            None if cfg.redis.cluster else Upgrade(self.aredis, cfg.redis.key_prefix, list(cfg.streams), [self.keys])
        )
        self.metrics = FlusherMetrics()
        self.stopping = asyncio.Event()
        self.redis_ok = False
        self.tables_ready = False
        self.workers = {name: StreamWorker(self, s) for name, s in cfg.streams.items()}
        # Sink writes and frame decoding leave the event loop free for the admin
        # server; a pool of our own so a stuck write cannot starve anything else.
        # Per stream one write and one decode of the batch claimed ahead, plus one spare.
        self._pool = ThreadPoolExecutor(max_workers=2 * len(self.workers) + 1, thread_name_prefix="oceanus-sink")
        self.admin: AdminServer | None = None
        for name, stream in cfg.streams.items():
            self.metrics.init_stream(name, stream.shards)

    # ------------------------------------------------------------------ helpers

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def sleep(self, seconds: float) -> None:
        """Wait, but wake at once on shutdown (a pause between polls, never a synchronisation)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=max(0.0, seconds))

    def ready(self) -> str | None:
        if self.stopping.is_set():
            return "draining"
        if not self.tables_ready:
            return "tables not ensured yet"
        if not self.redis_ok:
            return "Redis not reachable"
        return None

    # ------------------------------------------------------------------ background tasks

    async def _heartbeat_loop(self) -> None:
        interval = self.cfg.flusher.heartbeat_ttl_s / 3
        while not self.stopping.is_set():
            try:
                await self.claimer.heartbeat()
                self.redis_ok = True
            except RedisError as exc:
                self.redis_ok = False
                log.warning("heartbeat failed: %s", exc)
            await self.sleep(interval)

    async def reclaim_orphans(self) -> int:
        """Hand every orphaned in-flight batch of the shards we lease to its stream's worker
        (each shard's lease holder re-claims in it: flusher/leases.py); returns how many."""
        found = 0
        for worker in self.workers.values():
            found += await worker.reclaim_orphans()
        return found

    async def _reclaim_loop(self) -> None:
        interval = self.cfg.flusher.heartbeat_ttl_s / 2
        while not self.stopping.is_set():
            try:
                await self.reclaim_orphans()
            except RedisError as exc:
                log.warning("re-claim scan failed: %s", exc)
            await self.sleep(interval)

    async def _upgrade_loop(self, upgrade: Upgrade) -> None:
        while not self.stopping.is_set():
            try:
                if await upgrade.run():
                    log.info("moved old-layout keys into shard 0; re-claiming what their dead owners left")
                    await self.reclaim_orphans()
            except RedisError as exc:
                log.warning("looking for old-layout keys failed: %s", exc)
            await self.sleep(UPGRADE_EVERY_S)

    async def sample_gauges(self) -> None:
        m = self.metrics
        shards = {name: w.stream.shards for name, w in self.workers.items()}
        slots = [(name, shard) for name, n in shards.items() for shard in range(n)]
        async with self.aredis.pipeline(transaction=False) as pipe:
            for name, shard in slots:
                pipe.llen(self.keys.queue(name, shard))
                pipe.scard(self.keys.inflight_index(name, shard))
                pipe.lindex(self.keys.queue(name, shard), 0)
            results = await pipe.execute()
        inflight: dict[str, int] = dict.fromkeys(shards, 0)
        heads: dict[str, list[bytes]] = {name: [] for name in shards}
        for i, (name, shard) in enumerate(slots):
            backlog, batches, head = results[3 * i : 3 * i + 3]
            m.backlog_items.labels(name, str(shard)).set(backlog)
            # From the client's slot map (kept by the reads just made): no round trip per key.
            m.set_shard_node(name, shard, redisclient.node_of(self.aredis, self.keys.queue(name, shard)))
            inflight[name] += batches
            if head:
                heads[name].append(head)
        inflight_heads = await self.claimer.oldest_inflight_frame([n for n in shards if inflight[n]], shards)
        now_ms = time.time() * 1000
        for name in shards:
            m.inflight_batches.labels(name).set(inflight[name])
            m.batch_target_rows.labels(name).set(self.workers[name].controller.target_rows)
            ages = [frame_oldest_ms(fr) for fr in (*heads[name], inflight_heads.get(name)) if fr]
            known = [a for a in ages if a is not None]
            m.lag_seconds.labels(name).set(max(0.0, (now_ms - min(known)) / 1000) if known else 0.0)
        used, most = await redisclient.memory_info(self.aredis)
        m.redis_used_memory.set(used)
        m.redis_maxmemory.set(most)

    async def _gauge_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                await self.sample_gauges()
                self.redis_ok = True
            except RedisError as exc:
                self.redis_ok = False
                log.warning("sampling Redis gauges failed: %s", exc)
            await self.sleep(GAUGE_INTERVAL_S)

    def _run_hosted(self, task: HostedTask) -> None:
        try:
            task(self.sink, self.metrics.registry, self.hosted_stop)
        except Exception:
            # A bug in hosted work must not take the streams down with it.
            log.exception("hosted task %s failed; the streams go on", getattr(task, "__name__", task))

    # ------------------------------------------------------------------ life cycle

    async def start_admin(self) -> AdminServer:
        fcfg = self.cfg.flusher
        # /query runs on a thread of its own (never the write pool), off unless enabled.
        query = query_endpoint(fcfg, self.sink)
        admin = AdminServer(fcfg.admin_host, fcfg.admin_port, self.metrics.render, self.ready, query)
        await admin.start()
        # Published once it listens: before, its port is still 0 when admin_port is.
        self.admin = admin
        return admin

    async def run(self, on_started: Callable[[], Awaitable[None]] | None = None) -> bool:
        """Until :attr:`stopping` is set and the drain is over; False if a write outlived the drain."""
        await self.in_thread(self.sink.ensure_tables, list(self.cfg.streams.values()))
        self.tables_ready = True
        if self.admin is None:
            await self.start_admin()
        if on_started is not None:
            await on_started()
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._reclaim_loop(), name="reclaim"),
            asyncio.create_task(self._gauge_loop(), name="gauges"),
        ]
        if self.upgrade is not None:
            background.append(asyncio.create_task(self._upgrade_loop(self.upgrade), name="upgrade"))
        workers = [asyncio.create_task(w.run(), name=f"stream-{w.name}") for w in self.workers.values()]
        hosted = [
            threading.Thread(target=self._run_hosted, args=(task,), name=f"oceanus-hosted-{i}", daemon=True)
            for i, task in enumerate(self.hosted)
        ]
        for thread in hosted:
            thread.start()
        await self.stopping.wait()
        self.hosted_stop.set()
        self.metrics.draining.set(1)
        drain_until = time.monotonic() + self.cfg.flusher.drain_timeout_s
        log.info(
            "draining: no new claims; finishing the batches in hand (at most %.0fs)", self.cfg.flusher.drain_timeout_s
        )
        _, pending = await asyncio.wait(workers, timeout=self.cfg.flusher.drain_timeout_s)
        clean = not pending
        for task in pending:
            task.cancel()
        for task in background:
            task.cancel()
        await asyncio.gather(*workers, *background, return_exceptions=True)
        if not clean:
            log.warning("drain timeout: %d batch(es) left claimed; another flusher re-claims them", len(pending))
        for thread in hosted:
            # The hosted work commits its batch in hand, in the same drain budget.
            await asyncio.to_thread(thread.join, max(0.0, drain_until - time.monotonic()))
            if thread.is_alive():
                log.warning("drain timeout: %s still writing; its transaction is not committed", thread.name)
                clean = False
        with contextlib.suppress(RedisError):
            await self.claimer.drop_heartbeat()
        return clean

    async def close(self, wait_for_writes: bool = True) -> None:
        if self.admin is not None:
            await self.admin.stop()
        await self.aredis.aclose()
        self.sync_redis.close()
        self._pool.shutdown(wait=wait_for_writes, cancel_futures=True)
        if wait_for_writes:
            self.sink.close()


# --------------------------------------------------------------------------- entry point


def discovery_file(cfg: Config) -> Path | None:
    if cfg.sink.kind != "duckdb":
        return None
    path = Path(cfg.sink.duckdb.path).resolve()
    return path.with_name(path.name + FLUSHER_FILE_SUFFIX)


def _write_discovery(path: Path, url: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(msgspec.json.encode(_FlusherInfo(pid=os.getpid(), admin_url=url)) + b"\n")
    os.replace(tmp, path)  # readers never see half a file


def _remove_discovery(path: Path) -> None:
    try:
        info = msgspec.json.decode(path.read_bytes(), type=_FlusherInfo)
    except (OSError, msgspec.DecodeError):
        return
    if info.pid == os.getpid():
        path.unlink(missing_ok=True)


async def serve(cfg: Config, hosted: Sequence[HostedTask] = ()) -> int:
    sink = make_sink(cfg)
    flusher = Flusher(cfg, sink, hosted=hosted)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, flusher.stopping.set)
    disco = discovery_file(cfg)

    async def started() -> None:
        if flusher.admin is None:  # never: run() starts it before calling us
            return
        if disco is not None:
            _write_discovery(disco, flusher.admin.url)
        log.info(
            "flusher %s: %d stream(s) -> %s; admin %s", flusher.owner, len(cfg.streams), sink.name, flusher.admin.url
        )

    clean = True
    try:
        clean = await flusher.run(started)
    finally:
        if disco is not None:
            _remove_discovery(disco)
        await flusher.close(wait_for_writes=clean)
    if not clean:
        # A sink call still runs in a worker thread and cannot be interrupted;
        # its claim stays in Redis for re-claim, so leaving now loses nothing.
        log.info("exiting with a write still running (its batch is re-claimed later)")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def setup_logging() -> None:
    level = os.environ.get("OCEANUS_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(args: argparse.Namespace) -> int:
    setup_logging()
    return run_process(config_mod.load(getattr(args, "config", None)))


def run_process(cfg: Config, hosted: Sequence[HostedTask] = ()) -> int:
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    return int(runner(serve(cfg, hosted)))
