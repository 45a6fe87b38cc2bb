"""Fault scenarios under load, each ending with the accounting line; ``lost`` must be 0.

Quick variants run in ``make test`` (a few seconds of load each); the long ones
are ``@pytest.mark.slow`` and run with ``make chaos``.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.reliability.harness import STREAM, Stack, Tally
from tests.reliability.loadgen import Load
from tests.support.servers import free_port, wait_for

#: Short flusher heartbeat: a killed flusher's claims are re-claimed within seconds, not 30 s.
FAST_ENV = {"OCEANUS_FLUSHER_HEARTBEAT_TTL_S": "2.0", "OCEANUS_FLUSHER_RETRY_MAX_S": "1.0"}
QUICK_S = 6.0
SLOW_S = 60.0


def assert_no_loss(tally: Tally) -> None:
    assert tally.acked > 0, "no event was acknowledged: the scenario proved nothing"
    assert tally.lost == 0, f"acknowledged events missing from the warehouse: {tally.lost_markers[:20]}"


def claimed_batch(stack: Stack) -> bool:
    r = stack.redis.client()
    try:
        return bool(r.scard(stack.keys.inflight_index(STREAM)))
    finally:
        r.close()


# --------------------------------------------------------------------------- collector worker


def kill_collector_worker(stack: Stack, load: Load) -> Tally:
    load.start()
    assert load.wait_acked(200, 30), "no load acknowledged before the fault"
    workers = stack.collector_workers()
    assert len(workers) >= 2, "granian should run 2 workers"
    victim = workers[0].pid
    workers[0].kill()
    # granian respawns a dead worker; the collector's main process stays up throughout.
    main = stack.collector
    assert main is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        pids = [w.pid for w in stack.collector_workers()]
        if len(pids) >= 2 and victim not in pids:
            break
        time.sleep(0.05)  # polling
    assert main.alive(), "the collector exited after one worker died"
    pids = [w.pid for w in stack.collector_workers()]
    assert len(pids) >= 2, f"worker {victim} was not replaced: {pids}"
    assert victim not in pids, f"worker {victim} was not replaced: {pids}"
    return stack.finish(load.join(), "kill -9 collector worker")


def test_kill9_collector_worker_quick(tmp_path: Path) -> None:
    stack = Stack(tmp_path, workers=2, env=FAST_ENV).start()
    try:
        assert_no_loss(kill_collector_worker(stack, Load(stack.port, senders=8, duration_s=QUICK_S)))
    finally:
        stack.stop()


@pytest.mark.slow
def test_kill9_collector_worker_long(tmp_path: Path) -> None:
    stack = Stack(tmp_path, workers=2, env=FAST_ENV).start()
    try:
        assert_no_loss(kill_collector_worker(stack, Load(stack.port, senders=16, duration_s=SLOW_S)))
    finally:
        stack.stop()


# --------------------------------------------------------------------------- flusher


def kill_flusher_mid_batch(stack: Stack, load: Load, times: int) -> Tally:
    load.start()
    for _ in range(times):
        wait_for(lambda: claimed_batch(stack), timeout=30, interval=0.005, what="a claimed batch")
        assert stack.flusher is not None
        stack.flusher.kill()
        stack.start_flusher()
    return stack.finish(load.join(), f"kill -9 flusher mid-batch x{times}")


def test_kill9_flusher_mid_batch_quick(tmp_path: Path) -> None:
    stack = Stack(tmp_path, env=FAST_ENV).start()
    try:
        assert_no_loss(kill_flusher_mid_batch(stack, Load(stack.port, senders=8, duration_s=QUICK_S), 1))
    finally:
        stack.stop()


@pytest.mark.slow
def test_kill9_flusher_mid_batch_long(tmp_path: Path) -> None:
    stack = Stack(tmp_path, env=FAST_ENV).start()
    try:
        assert_no_loss(kill_flusher_mid_batch(stack, Load(stack.port, senders=16, duration_s=SLOW_S), 5))
    finally:
        stack.stop()


# --------------------------------------------------------------------------- Redis


def kill_redis(stack: Stack, load: Load, down_s: float) -> tuple[Tally, float]:
    """kill -9 redis-server under load, keep it down ``down_s``, restart it from its AOF.

    Returns the tally and the monotonic time of the kill.
    """
    load.start()
    assert load.wait_acked(300, 30), "no load acknowledged before the fault"
    killed_at = time.monotonic()
    stack.redis.kill(signal.SIGKILL)
    time.sleep(down_s)  # the outage itself: how long Redis stays down
    stack.restart_redis()
    return stack.finish(load.join(), f"kill -9 redis (appendfsync {stack.redis.appendfsync})"), killed_at


def test_kill9_redis_appendfsync_always_quick(tmp_path: Path) -> None:
    stack = Stack(tmp_path, appendfsync="always", env=FAST_ENV).start()
    try:
        tally, _ = kill_redis(stack, Load(stack.port, senders=8, duration_s=QUICK_S), 1.0)
        assert_no_loss(tally)
    finally:
        stack.stop()


@pytest.mark.slow
def test_kill9_redis_appendfsync_always_long(tmp_path: Path) -> None:
    stack = Stack(tmp_path, appendfsync="always", env=FAST_ENV).start()
    try:
        tally, _ = kill_redis(stack, Load(stack.port, senders=16, duration_s=SLOW_S / 2), 5.0)
        assert_no_loss(tally)
    finally:
        stack.stop()


@pytest.mark.slow
def test_kill9_redis_appendfsync_everysec_reports_window(tmp_path: Path) -> None:
    """With ``everysec`` Redis may lose the last second or two of writes it acknowledged: the
    collector's 2xx came from Redis's memory. Guaranteed, and asserted: whatever is lost was
    acknowledged within the 2 s before the kill (Redis fsyncs at most ~1 s late, and blocks
    writes when an fsync is 2 s late)."""
    stack = Stack(tmp_path, appendfsync="everysec", env=FAST_ENV).start()
    try:
        load = Load(stack.port, senders=16, duration_s=20.0, record_times=True)
        tally, killed_at = kill_redis(stack, load, 2.0)
        window = load.result.acked_between(killed_at - 2.0, killed_at + 0.5)
        print(f"everysec: lost={tally.lost} acked in the 2 s before the kill={len(window)}")
        assert tally.acked > 0
        assert set(tally.lost_markers) <= window, "lost events acknowledged outside the fsync window"
    finally:
        stack.stop()


def redis_unreachable(stack: Stack, load: Load, down_s: float) -> Tally:
    """Redis stops answering (SIGSTOP: connections hang, like a partition) for ``down_s``:
    the collector answers from its disk spool, then replays it in order."""
    load.start()
    assert load.wait_acked(300, 30)
    proc = stack.redis.proc
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    try:
        acked_before = load.result.acked_count
        time.sleep(down_s)  # the outage itself
        spooled = stack.spool_pending_bytes()
        acked_during = load.result.acked_count - acked_before
    finally:
        proc.send_signal(signal.SIGCONT)
    print(f"redis unreachable {down_s:g}s: acked during the outage={acked_during} spool bytes={spooled}")
    assert acked_during > 0, "the collector stopped acknowledging while Redis was unreachable"
    assert spooled > 0, "nothing went to the spool"
    tally = stack.finish(load.join(), f"redis unreachable {down_s:g}s")
    assert tally.reordered_senders == 0, "events of one sender reordered"
    return tally


def test_redis_unreachable_spool_quick(tmp_path: Path) -> None:
    stack = Stack(tmp_path, env={**FAST_ENV, "OCEANUS_REDIS_TIMEOUT_S": "0.5"}).start()
    try:
        assert_no_loss(redis_unreachable(stack, Load(stack.port, senders=8, duration_s=QUICK_S + 3), 3.0))
    finally:
        stack.stop()


@pytest.mark.slow
def test_redis_unreachable_30s(tmp_path: Path) -> None:
    stack = Stack(tmp_path, env={**FAST_ENV, "OCEANUS_REDIS_TIMEOUT_S": "0.5"}).start()
    try:
        assert_no_loss(redis_unreachable(stack, Load(stack.port, senders=16, duration_s=50.0), 30.0))
    finally:
        stack.stop()


# --------------------------------------------------------------------------- SIGTERM after a Redis outage


def sigterm_after_redis_outage(stack: Stack, load: Load, down_s: float) -> Tally:
    """Redis unreachable for ``down_s`` under load (the collector spools), back, and SIGTERM to the
    collector at once -- a rollout or HPA scale-down right after a Redis blip. The pod's disk goes
    with it, so the spool directory is wiped before a new collector starts: whatever the drain did not
    replay to Redis would be lost."""
    load.start()
    assert load.wait_acked(300, 30)
    proc = stack.redis.proc
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(down_s)  # the outage itself
        spooled = stack.spool_pending_bytes()
    finally:
        proc.send_signal(signal.SIGCONT)
    collector = stack.collector
    assert collector is not None
    code = collector.stop(signal.SIGTERM)
    left = stack.spool_pending_bytes()
    print(
        f"SIGTERM after redis unreachable {down_s:g}s: spooled={spooled} bytes, left at exit={left} bytes, "
        f"exit code {code}"
    )
    assert spooled > 0, "nothing went to the spool"
    assert left == 0, f"the collector exited with {left} bytes of acknowledged events in its spool"
    assert code == 0, f"collector exit code {code} after SIGTERM: {collector.tail()}"
    shutil.rmtree(stack.spool_dir)  # the emptyDir / ephemeral disk, deleted with the pod
    stack.start_collector()
    return stack.finish(load.join(), f"SIGTERM right after redis unreachable {down_s:g}s")


def test_sigterm_right_after_redis_outage_quick(tmp_path: Path) -> None:
    stack = Stack(tmp_path, env={**FAST_ENV, "OCEANUS_REDIS_TIMEOUT_S": "0.5"}).start()
    try:
        assert_no_loss(sigterm_after_redis_outage(stack, Load(stack.port, senders=8, duration_s=QUICK_S + 3), 3.0))
    finally:
        stack.stop()


@pytest.mark.slow
def test_sigterm_right_after_redis_outage_long(tmp_path: Path) -> None:
    stack = Stack(tmp_path, workers=2, env={**FAST_ENV, "OCEANUS_REDIS_TIMEOUT_S": "0.5"}).start()
    try:
        assert_no_loss(sigterm_after_redis_outage(stack, Load(stack.port, senders=16, duration_s=40.0), 15.0))
    finally:
        stack.stop()


# --------------------------------------------------------------------------- rolling restart


def rolling_restart(stack: Stack, seconds: float, rounds: int) -> Tally:
    """Two collectors behind the load (half the senders each), restarted one at a time with
    SIGTERM, then the flusher -- what ``kubectl rollout restart`` does."""
    second = free_port()
    stack.start_collector(second)
    loads = [
        Load(stack.port, senders=4, duration_s=seconds).start(),
        Load(second, senders=4, duration_s=seconds, first_sender=4).start(),
    ]
    assert loads[0].wait_acked(200, 30)
    assert loads[1].wait_acked(200, 30)
    for _ in range(rounds):
        for port in (stack.port, second):
            proc = stack.collectors[port]
            code = proc.stop(signal.SIGTERM)
            assert code == 0, f"collector exit code {code} after SIGTERM: {proc.tail()}"
            stack.start_collector(port)
        assert stack.flusher is not None
        code = stack.flusher.stop(signal.SIGTERM)
        assert code == 0, f"flusher exit code {code} after SIGTERM: {stack.flusher.tail()}"
        stack.start_flusher()
    merged = loads[0].join()
    other = loads[1].join()
    merged.sent += other.sent
    merged.acked.update(other.acked)
    merged.statuses.update(other.statuses)
    return stack.finish(merged, f"SIGTERM rolling restart x{rounds}")


def test_sigterm_rolling_restart_quick(tmp_path: Path) -> None:
    stack = Stack(tmp_path, env=FAST_ENV).start()
    try:
        tally = rolling_restart(stack, QUICK_S + 4, 1)
        assert_no_loss(tally)
    finally:
        stack.stop()


@pytest.mark.slow
def test_sigterm_rolling_restart_long(tmp_path: Path) -> None:
    stack = Stack(tmp_path, env=FAST_ENV).start()
    try:
        assert_no_loss(rolling_restart(stack, SLOW_S, 4))
    finally:
        stack.stop()
