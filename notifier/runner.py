"""``oceanus notify``: the process. One evaluator loop, one delivery worker per channel, a heartbeat,
the orphan scan, gauges, and a small admin HTTP server (``/metrics``, ``/healthz``, ``/readyz``).
Every loop outlives its errors, and /readyz names the ones failing (notifier/loops.py).

SIGTERM: stop claiming, let the round in progress write its jobs and release
its claim, give each channel's unfinished job back to the head of its list,
drop the heartbeat, exit 0 -- all within ``notify.drain_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from flusher.claim import Claimer, make_owner_id
from flusher.upgrade import UPGRADE_EVERY_S, Upgrade
from notifier.channels import make_channel
from notifier.delivery import Worker, return_orphans
from notifier.engine import Evaluator
from notifier.keys import NotifyKeys
from notifier.loops import LoopState, supervise
from notifier.metrics import NotifyMetrics
from oceanus import redisclient
from oceanus.config import Config

log = logging.getLogger("oceanus.notify")
#: Gauges are refreshed this often (seconds).
GAUGES_EVERY_S = 1.0
#: Longest request head the admin server reads (bytes).
MAX_HEAD_BYTES = 8192


def make_client(cfg: Config) -> aioredis.Redis:
    # No hidden retries, on one instance or a cluster: a claim script re-sent by the client
    # could run twice (flusher/claim.py, oceanus/redisclient.py).
    return redisclient.async_client(cfg.redis)


class Notifier:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.keys = NotifyKeys(cfg.redis.key_prefix, cfg.redis.cluster)
        self.owner = make_owner_id()
        self.client = make_client(cfg)
        self.metrics = NotifyMetrics()
        self.stopping = asyncio.Event()
        #: Set once the first heartbeat is in and the loops start.
        self.started = False
        self.claimer = Claimer(self.client, self.keys.claim, self.owner, cfg.notify.heartbeat_ttl_s)
        self.evaluator = Evaluator(cfg, self.client, self.claimer, self.metrics)
        # Keys a Redis still holds in the layout before hash tags: the event queues the tap reads
        # and this namespace's in-flight batches (single instance; flusher/upgrade.py).
        # Single instance only: that layout never ran on a cluster, and its scripts span slots.
        self.upgrade: Upgrade | None = (
            None
            if cfg.redis.cluster
            else Upgrade(self.client, cfg.redis.key_prefix, list(self.evaluator.streams), [self.keys.claim])
        )
        self.loops = {
            name: LoopState(name, self.metrics)
            for name in ("evaluate", "housekeeping", "gauges", *(f"channels.{c}" for c in cfg.channels))
        }
        self.workers = [
            Worker(
                cfg,
                name,
                make_channel(name, ch),
                self.client,
                self.owner,
                self.metrics,
                self.stopping,
                on_pass=self.loops[f"channels.{name}"].ok,
            )
            for name, ch in cfg.channels.items()
        ]
        self.admin_port = 0

    def loops_failing(self) -> list[str]:
        """One line per loop between an error and its next complete pass (empty: all working)."""
        return [state.describe() for state in self.loops.values() if state.errors]

    async def _evaluate_loop(self) -> None:
        state = self.loops["evaluate"]
        while not self.stopping.is_set():
            handled = await self.evaluator.round()
            state.ok()
            if not handled:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self.cfg.notify.poll_s)

    async def _housekeeping(self) -> None:
        state = self.loops["housekeeping"]
        ttl = self.cfg.notify.heartbeat_ttl_s
        scan_due = upgrade_due = 0.0
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            await self.claimer.heartbeat()
            if self.upgrade is not None and loop.time() >= upgrade_due:
                upgrade_due = loop.time() + UPGRADE_EVERY_S
                if await self.upgrade.run():
                    scan_due = 0.0  # re-evaluate at once what a stopped notifier of the old layout left
            if loop.time() >= scan_due:
                await self.evaluator.reclaim_orphans()
                moved = await return_orphans(self.client, self.cfg, self.owner)
                if moved:
                    log.info("gave %d unfinished deliveries of a stopped notifier back to their queues", moved)
                # Due again only once a scan went through: after an error the next pass scans.
                scan_due = loop.time() + ttl / 2
            state.ok()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), min(ttl / 3, GAUGES_EVERY_S))

    async def _gauge_loop(self) -> None:
        """Apart from the heartbeat: with Redis refusing writes (OOM) the backlog gauges, which only
        read, go on showing the queues grow."""
        state = self.loops["gauges"]
        while not self.stopping.is_set():
            await self._gauges()
            state.ok()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), GAUGES_EVERY_S)

    async def _gauges(self) -> None:
        slots = [(s, n) for s in self.evaluator.streams for n in range(self.cfg.streams[s].shards)]
        async with self.client.pipeline(transaction=False) as pipe:
            for stream, shard in slots:
                pipe.llen(self.keys.claim.queue(stream, shard))
            for name in self.cfg.channels:
                pipe.llen(self.keys.jobs(name))
                pipe.llen(self.keys.dead(name))
            out = await pipe.execute()
        it = iter(out)
        for stream, shard in slots:
            self.metrics.frames_backlog.labels(stream, str(shard)).set(next(it))
        for name in self.cfg.channels:
            self.metrics.jobs_backlog.labels(name).set(next(it))
            self.metrics.dead_letters.labels(name).set(next(it))

    async def _admin(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
            if path == b"/metrics":
                status, body, ctype = 200, self.metrics.render(), b"text/plain; version=0.0.4"
            elif path == b"/healthz":
                status, body, ctype = 200, b"ok\n", b"text/plain"
            elif path == b"/readyz":
                status, body, ctype = self._readiness()
            else:
                status, body, ctype = 404, b"not found\n", b"text/plain"
            reason = {200: b"OK", 404: b"Not Found", 503: b"Service Unavailable"}[status]
            writer.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % (status, reason, ctype, len(body))
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    def _readiness(self) -> tuple[int, bytes, bytes]:
        """503 while starting, draining, or while a loop keeps failing (its lines say which and why);
        /healthz stays 200 then: a restart cures none of the faults a loop backs off from."""
        if not self.started:
            reasons = ["starting"]
        elif self.stopping.is_set():
            reasons = ["draining"]
        else:
            reasons = self.loops_failing()
        if not reasons:
            return 200, b"ready\n", b"text/plain"
        return 503, "".join(f"{r}\n" for r in reasons).encode(), b"text/plain; charset=utf-8"

    async def run(self, on_started: Callable[[], Awaitable[None]] | None = None) -> None:
        server = await asyncio.start_server(
            self._admin, self.cfg.notify.admin_host, self.cfg.notify.admin_port, limit=MAX_HEAD_BYTES
        )
        self.admin_port = server.sockets[0].getsockname()[1]
        await self.claimer.heartbeat()
        self.started = True
        log.info(
            "oceanus notify: %d rules on %s, channels %s; admin http://%s:%d/metrics",
            len(self.cfg.rules),
            ", ".join(self.evaluator.streams) or "no stream",
            ", ".join(self.cfg.channels) or "none",
            self.cfg.notify.admin_host,
            self.admin_port,
        )
        bodies: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("evaluate", self._evaluate_loop),
            ("housekeeping", self._housekeeping),
            ("gauges", self._gauge_loop),
            # A worker started again takes first the job left in its sending list; its delivery key
            # drops it if it was sent already.
            *((f"channels.{w.name}", w.run) for w in self.workers),
        ]
        tasks = [
            asyncio.create_task(supervise(self.loops[name], body, self.stopping), name=f"notify-{name}")
            for name, body in bodies
        ]
        if on_started is not None:
            await on_started()
        await self.stopping.wait()
        _, pending = await asyncio.wait(tasks, timeout=self.cfg.notify.drain_timeout_s)
        for t in pending:
            t.cancel()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                log.error("%s failed: %r", t.get_name(), t.exception())
        with contextlib.suppress(Exception):
            await self.claimer.drop_heartbeat()
        server.close()
        await self.client.aclose()


async def serve(cfg: Config) -> int:
    notifier = Notifier(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, notifier.stopping.set)
    await notifier.run()
    return 0
