"""``oceanus notify`` as a process: kill -9 mid-deliveries, Redis killed and restarted from its AOF.

Counts: every matched event reaches the receiver; by its ``Idempotency-Key`` none twice. The one
window the delivery key leaves open (killed after the receiver accepted, before the key was set) can
re-send at most the deliveries in flight at each kill -- one per channel -- and the receiver's
idempotency key absorbs it; the test asserts that bound on the raw count.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from notifier.keys import NotifyKeys
from tests.notifier.receivers import Receiver, http_receiver
from tests.notifier.support import REPO, make_config, pageview, push
from tests.support.servers import RedisServer, kill_group, wait_for

SECRET = "receiver-secret-0123456789"


def start(config_file: Path, log: Path, redis_url: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCEANUS_")}
    env.update({"T_HOOK_SECRET": SECRET, "OCEANUS_REDIS_URL": redis_url})
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "oceanus.cli", "notify", "--config", str(config_file)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.timeout(120)
def test_kill_9_mid_delivery_and_redis_restarted_from_its_aof(redis_server: RedisServer, tmp_path: Path) -> None:
    total = 300
    with http_receiver(Receiver(secret=SECRET.encode(), delay_s=0.01)) as rx:
        cfg, text = make_config(
            redis_server.url,
            f"""
[channels.hook]
kind = "webhook"
url = "{rx.url}/hook"
secret_env = "T_HOOK_SECRET"
retry_base_s = 0.1
retry_max_s = 0.5
[rules.paid]
stream = "pageview"
conditions = [{{ field = "evt", eq = "paid" }}]
channels = ["hook"]
rate_limit = {{ max = 100000 }}
""",
        )
        config_file = tmp_path / "oceanus.toml"
        config_file.write_text(text)
        log = tmp_path / "notify.log"
        client = redis_server.client()
        expected: set[str] = set()
        for _ in range(total // 10):
            ids = push(client, cfg, "pageview", [pageview("paid")] * 10 + [pageview("view")] * 5)
            expected |= {f"paid:hook:{i}" for i in ids[:10]}
        kills = 0
        proc = start(config_file, log, redis_server.url)
        try:
            wait_for(lambda: len(rx.posts) >= 60, timeout=30, what="deliveries under way")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            at_kill = len(rx.posts)
            assert at_kill < total
            # Redis killed too, and restarted from its AOF (appendfsync always) on the same port.
            redis_server.kill()
            redis_server.start()
            proc = start(config_file, log, redis_server.url)
            wait_for(lambda: len(rx.posts) >= at_kill + 60, timeout=30, what="deliveries after the restart")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = start(config_file, log, redis_server.url)
            # The last kill left a job in a dead owner's sending list: handed back after its heartbeat TTL.
            wait_for(lambda: len(set(rx.ids())) >= total, timeout=60, what="every delivery")
            keys = NotifyKeys(cfg.redis.key_prefix)
            client = redis_server.client()
            wait_for(
                lambda: client.llen(keys.jobs("hook")) == 0 and client.llen(keys.claim.queue("pageview")) == 0,
                timeout=10,
                what="empty queues",
            )
        finally:
            kill_group(proc.pid)
            proc.wait()
    ids = rx.ids()
    assert set(ids) == expected
    repeats = len(ids) - len(set(ids))
    print(
        f"\nkill -9 x{kills} + Redis restart: {len(set(ids))} of {total} delivered, {repeats} re-sent "
        "(absorbed by Idempotency-Key)"
    )
    assert repeats <= kills  # at most the one delivery in flight per kill
    assert rx.bad_signatures == 0
