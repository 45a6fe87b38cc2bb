"""Claims whose replies are lost, under load, with the whole stack running; ``lost`` must be 0.

The flusher reaches Redis through a proxy that swallows the answer to some claim
scripts after Redis ran them (and wrote them to its AOF): exactly what the
flusher sees when Redis is killed between its fsync and the reply, or when a
reply is slower than ``redis.timeout_s``. The flusher lives on, heartbeat and
all, so no other flusher would ever take the stranded keys: its own re-claim
scan must. The collector talks to Redis directly.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from flusher.claim import _CLAIM_LUA
from tests.reliability.harness import Stack, Tally
from tests.reliability.loadgen import Load
from tests.reliability.test_scenarios import FAST_ENV, QUICK_S, SLOW_S, assert_no_loss
from tests.support.tcpproxy import ReplyDropProxy

CLAIM_SHA = hashlib.sha1(_CLAIM_LUA.encode()).hexdigest().encode()


def lost_claim_replies(tmp_path: Path, seconds: float, senders: int, every: int) -> tuple[Tally, int]:
    """Load for ``seconds`` while every ``every``-th claim's reply is lost; returns the tally and the drops."""
    stack = Stack(tmp_path, env=FAST_ENV)
    proxy = ReplyDropProxy(stack.redis.port).start()
    stack.flusher_env = {"OCEANUS_REDIS_URL": proxy.url}
    try:
        stack.start()
        load = Load(stack.port, senders=senders, duration_s=seconds).start()
        assert load.wait_acked(200, 30), "no load acknowledged before the fault"
        # Far more drops than the load can reach: the fault lasts as long as the load.
        proxy.drop_reply_after(CLAIM_SHA, times=1_000_000, every=every)
        result = load.join()
        proxy.clear()
        dropped = proxy.dropped
        t0 = time.monotonic()
        tally = stack.finish(result, f"lost claim reply (1 in {every}, {dropped} lost)")
        print(f"lost claim replies: {dropped}; drained and stopped in {time.monotonic() - t0:.1f}s")
        return tally, dropped
    finally:
        stack.stop()
        proxy.stop()


def test_lost_claim_reply_quick(tmp_path: Path) -> None:
    tally, dropped = lost_claim_replies(tmp_path, QUICK_S, senders=8, every=3)
    assert dropped > 0, "no claim reply was lost: the scenario proved nothing"
    assert_no_loss(tally)
    assert tally.duplicates == 0


@pytest.mark.slow
def test_lost_claim_reply_long(tmp_path: Path) -> None:
    tally, dropped = lost_claim_replies(tmp_path, SLOW_S, senders=16, every=2)
    assert dropped > 10
    assert_no_loss(tally)
    assert tally.duplicates == 0
