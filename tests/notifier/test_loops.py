"""The notifier's loops through Redis error replies that are not connection errors: each loop backs off
and starts again, /readyz names the loops failing meanwhile, and every matched event is delivered once
when the fault is gone. The faults are real replies of a real redis-server: OOM (maxmemory 1 with
noeviction: every write refused) and WRONGTYPE (a string where a channel's jobs list belongs)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest
import redis
from redis.exceptions import ResponseError

from notifier.keys import NotifyKeys
from notifier.loops import LoopState
from notifier.metrics import NotifyMetrics
from notifier.runner import Notifier
from oceanus import config
from oceanus.buffer import EventIds, Keys, encode_frame
from tests.notifier.receivers import Receiver, http_receiver
from tests.notifier.support import make_config, pageview, push
from tests.notifier.test_notifier import hook
from tests.support.servers import RedisServer

SECRET = "receiver-secret-0123456789"
RULE = """
[rules.paid]
stream = "pageview"
conditions = [{ field = "evt", eq = "paid" }]
channels = ["hook"]
rate_limit = { max = 1000 }
"""
EVENT_IDS = EventIds()
#: A loop's waits after 1, 2, ... errors in a row (seconds): 0.1 doubling, capped at 2.
DELAYS = ("0.1", "0.2", "0.4", "0.8", "1.6", "2.0", "2.0")


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: n\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


async def _until(done: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


def _frame(cfg: config.Config, events: int) -> tuple[bytes, list[str]]:
    """One frame of ``events`` paid page views, as the collector writes it, and its job ids."""
    columns = cfg.streams["pageview"].columns
    rows, job_ids = [], []
    for _ in range(events):
        eid = EVENT_IDS.new()
        values = {"event_id": eid, "received_at": int.from_bytes(eid[:6], "big") * 1000, **pageview("paid")}
        rows.append([values.get(c) for c in columns])
        job_ids.append(f"paid:hook:{eid.hex()}")
    return encode_frame(columns, rows), job_ids


def _errors(n: Notifier, loop: str) -> float:
    return float(n.metrics.loop_errors.labels(loop)._value.get())


def _scenario(
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    fault_on: Callable[[redis.client.Pipeline, config.Config], None],
    fault_off: Callable[[redis.Redis, config.Config], None],
    failing: set[str],
) -> tuple[Notifier, Receiver, list[str]]:
    """10 events delivered; 10 more pushed with the fault set in the same transaction; the loops in
    ``failing`` fail (at least 4 backoff steps) and /readyz names them; the fault removed; all 20 once."""
    monkeypatch.setenv("T_HOOK_SECRET", SECRET)
    rx = Receiver(secret=SECRET.encode())
    with http_receiver(rx):
        cfg, _ = make_config(redis_server.url, hook(rx.url) + RULE)
        client = redis_server.client()
        expected = [f"paid:hook:{i}" for i in push(client, cfg, "pageview", [pageview("paid")] * 10)]
        frame, later = _frame(cfg, 10)
        expected += later
        n = Notifier(cfg)

        async def scenario() -> None:
            task = asyncio.create_task(n.run())
            try:
                await _until(lambda: len(rx.posts) >= 10, "the first 10 delivered")
                # ... and settled: a delivery key the fault refused would send that one again, which
                # is the channel's at-least-once edge, not what this test is about.
                sent = [NotifyKeys(cfg.redis.key_prefix).sent(j) for j in expected[:10]]
                await _until(lambda: client.exists(*sent) == len(sent), "the first 10 delivery keys")
                assert (await _get(n.admin_port, "/readyz"))[0] == 200
                with client.pipeline(transaction=True) as pipe:
                    pipe.rpush(Keys(cfg.redis.key_prefix).queue("pageview"), frame)
                    fault_on(pipe, cfg)
                    pipe.execute()
                await _until(lambda: all(_errors(n, loop) >= 4 for loop in failing), "four errors of each loop")
                status, body = await _get(n.admin_port, "/readyz")
                assert status == 503
                assert {line.split(": failing for ")[0] for line in body.splitlines()} == failing
                # Alive all the same: a restart would cure none of these faults.
                assert await _get(n.admin_port, "/healthz") == (200, "ok\n")
                assert not task.done()
                fault_off(client, cfg)
                await _until(lambda: len(rx.posts) >= 20, "every delivery after the fault")
                await _until(lambda: n.loops_failing() == [], "every loop working again", timeout_s=5)
                assert await _get(n.admin_port, "/readyz") == (200, "ready\n")
            finally:
                n.stopping.set()
                await asyncio.wait_for(task, 15)

        asyncio.run(scenario())
    assert sorted(rx.ids()) == sorted(expected)  # every one, none twice
    keys = NotifyKeys(cfg.redis.key_prefix)
    assert client.llen(keys.jobs("hook")) == 0
    assert client.scard(keys.claim.inflight_index("pageview")) == 0
    return n, rx, expected


def test_every_loop_survives_redis_refusing_writes(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def oom(pipe: redis.client.Pipeline, cfg: config.Config) -> None:
        pipe.config_set("maxmemory-policy", "noeviction")
        pipe.config_set("maxmemory", 1)

    def ok(client: redis.Redis, cfg: config.Config) -> None:
        client.config_set("maxmemory", 0)

    caplog.set_level(logging.INFO, logger="oceanus.notify")
    # OOM: the tap's copy, the worker's LMOVE and the heartbeat's SET are refused; the gauges only read.
    n, _, _ = _scenario(redis_server, monkeypatch, oom, ok, {"evaluate", "housekeeping", "channels.hook"})
    for loop in ("evaluate", "housekeeping", "channels.hook"):
        errors = int(_errors(n, loop))
        lines = [r for r in caplog.records if r.getMessage().startswith(f"{loop}: ")]
        # One line per backoff step (not per event or per shard), then one when it works again.
        assert len([r for r in lines if r.levelno == logging.WARNING]) == errors
        assert "OutOfMemoryError: " in lines[0].getMessage()
        assert lines[-1].getMessage() == f"{loop}: working again (failures in a row: {errors})"
    steps = [r.getMessage().split("; ")[-1] for r in caplog.records if r.getMessage().startswith("evaluate: ")]
    assert steps[:4] == [f"starting again in {d} s (failures in a row: {i})" for i, d in enumerate(DELAYS[:4], 1)]
    assert _errors(n, "gauges") == 0


def test_a_batch_whose_jobs_could_not_be_written_is_evaluated_again(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WRONGTYPE on the jobs list: the tap and the claim succeed, writing the batch's jobs fails. The batch
    stays this notifier's (its heartbeat lives, so no scan takes it back): the evaluator writes its jobs
    again until they are in, before claiming more of that shard."""

    def clobber(pipe: redis.client.Pipeline, cfg: config.Config) -> None:
        pipe.set(NotifyKeys(cfg.redis.key_prefix).jobs("hook"), "not a list")

    def restore(client: redis.Redis, cfg: config.Config) -> None:
        client.delete(NotifyKeys(cfg.redis.key_prefix).jobs("hook"))

    n, _, _ = _scenario(redis_server, monkeypatch, clobber, restore, {"evaluate", "gauges", "channels.hook"})
    assert n.metrics.matched.labels("paid")._value.get() == 20  # the batch written again is counted once


def test_the_backoff_doubles_to_its_cap_and_a_pass_resets_it() -> None:
    metrics = NotifyMetrics()
    state = LoopState("evaluate", metrics)
    errors = [ResponseError("BUSY Redis is busy running a script"), ValueError("a bug")] * 4
    assert [f"{state.failed(e):.1f}" for e in errors[:7]] == list(DELAYS)
    assert state.errors == 7
    assert state.describe().startswith("evaluate: failing for ")
    assert state.describe().endswith(
        " s (failures in a row: 7), the last: ResponseError: BUSY Redis is busy running a script"
    )
    state.ok()
    assert (state.errors, state.last_error) == (0, "")
    assert state.failed(errors[1]) == 0.1
    assert state.describe().endswith(" s (failures in a row: 1), the last: ValueError: a bug")
    assert metrics.loop_errors.labels("evaluate")._value.get() == 8
