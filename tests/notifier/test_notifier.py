"""The notifier end to end, in process: frames on the notify queue -> rules -> a real HTTP receiver."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

from notifier.keys import NotifyKeys
from notifier.runner import Notifier
from oceanus import cli, config
from tests.notifier.receivers import Receiver, http_receiver
from tests.notifier.support import make_config, pageview, push
from tests.support.servers import RedisServer

SECRET = "receiver-secret-0123456789"


def hook(url: str, **opts: Any) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in opts.items())
    return f'[channels.hook]\nkind = "webhook"\nurl = "{url}/hook"\nsecret_env = "T_HOOK_SECRET"\n{extra}'


async def run_until(cfg: config.Config, done: Callable[[], bool], timeout_s: float = 30.0) -> Notifier:
    n = Notifier(cfg)
    task = asyncio.create_task(n.run())
    deadline = time.monotonic() + timeout_s
    try:
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError("the notifier did not finish in time")
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    finally:
        n.stopping.set()
        await asyncio.wait_for(task, 15)
    return n


def test_matched_events_are_delivered_once_signed_within_the_latency_bound(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_HOOK_SECRET", SECRET)
    with http_receiver(Receiver(secret=SECRET.encode())) as rx:
        cfg, _ = make_config(
            redis_server.url,
            hook(rx.url)
            + """
[rules.paid]
stream = "pageview"
conditions = [{ field = "evt", eq = "paid" }]
template = "paid {uid}"
channels = ["hook"]
rate_limit = { max = 1000, per_s = 60.0 }
""",
        )
        client = redis_server.client()
        expected: set[str] = set()
        for i in range(20):
            events = [pageview("paid" if j % 4 == 0 else "view", uid=f"u{i}-{j}") for j in range(20)]
            ids = push(client, cfg, "pageview", events)
            expected |= {f"paid:hook:{eid}" for j, eid in enumerate(ids) if j % 4 == 0}
        asyncio.run(run_until(cfg, lambda: len(rx.posts) >= len(expected)))
    assert len(expected) == 100
    assert rx.bad_signatures == 0
    assert sorted(rx.ids()) == sorted(expected)  # every one, none twice
    latencies = sorted(p.at - p.json()["event_ms"] / 1000 for p in rx.posts)
    p95 = latencies[int(len(latencies) * 0.95) - 1]
    print(
        f"\nend-to-end (event received -> webhook accepted), 100 events: median "
        f"{statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"
    )
    assert p95 < cfg.streams["pageview"].batch.max_wait_s + 2
    keys = NotifyKeys(cfg.redis.key_prefix)
    assert client.llen(keys.jobs("hook")) == 0
    assert client.llen(keys.claim.queue("pageview")) == 0
    assert client.exists(keys.sent(sorted(expected)[0])) == 1


def test_threshold_fires_once_per_group_and_window(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_HOOK_SECRET", SECRET)
    with http_receiver(Receiver(secret=SECRET.encode())) as rx:
        cfg, _ = make_config(
            redis_server.url,
            hook(rx.url)
            + """
[rules.burst]
stream = "pageview"
conditions = [{ field = "evt", eq = "search_not_found" }]
threshold = { count = 5, window_s = 600.0, group_by = "sid" }
template = "{count} in {window_s} s for {group}"
channels = ["hook"]
""",
        )
        client = redis_server.client()
        push(client, cfg, "pageview", [pageview("search_not_found", sid="aa")] * 12)  # fires once (5th)
        push(client, cfg, "pageview", [pageview("search_not_found", sid="bb")] * 4)  # below the count
        push(client, cfg, "pageview", [pageview("view", sid="cc")] * 9)  # no match
        push(client, cfg, "pageview", [pageview("search_not_found", sid="cc")] * 5)  # fires once
        n = asyncio.run(
            run_until(
                cfg,
                lambda: (
                    len(rx.posts) >= 2 and not redis_server.client().llen(NotifyKeys("oceanus").claim.queue("pageview"))
                ),
            )
        )
        time.sleep(0)  # the receiver has what it got; nothing more is queued
    assert sorted(p.json()["message"] for p in rx.posts) == ["5 in 600 s for aa", "5 in 600 s for cc"]
    assert n.metrics.matched.labels("burst")._value.get() == 21


def test_rate_limit_holds_back_and_sums_up(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_HOOK_SECRET", SECRET)
    with http_receiver(Receiver(secret=SECRET.encode())) as rx:
        cfg, _ = make_config(
            redis_server.url,
            hook(rx.url)
            + """
[rules.errors]
stream = "pageview"
conditions = [{ field = "evt", contains = "error" }]
template = "{evt}"
channels = ["hook"]
rate_limit = { max = 3, per_s = 1.0 }
""",
        )
        push(redis_server.client(), cfg, "pageview", [pageview("js_error") for _ in range(40)])

        def summed() -> bool:
            kinds = [p.json()["kind"] for p in rx.posts]
            held = sum(int(p.json()["message"].split(" ")[2]) for p in rx.posts if p.json()["kind"] == "summary")
            return kinds.count("event") + held == 40

        asyncio.run(run_until(cfg, summed))
    summaries = [p.json()["message"] for p in rx.posts if p.json()["kind"] == "summary"]
    events = [p for p in rx.posts if p.json()["kind"] == "event"]
    assert summaries
    assert all(m.startswith("errors: and ") and m.endswith(" more in the last 1 s (rate limit)") for m in summaries)
    # 40 events within a few 1 s windows: at most 3 messages per window were sent.
    assert 3 <= len(events) < 40


def test_an_outage_delays_and_nothing_is_sent_twice(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    outage_s = 5.0
    _outage(redis_server, monkeypatch, outage_s)


@pytest.mark.slow
def test_a_minute_long_outage(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _outage(redis_server, monkeypatch, 60.0)


def _outage(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, outage_s: float) -> None:
    monkeypatch.setenv("T_HOOK_SECRET", SECRET)
    rx0 = Receiver(secret=SECRET.encode(), down_until=time.time() + outage_s)
    with http_receiver(rx0) as rx:
        cfg, _ = make_config(
            redis_server.url,
            hook(rx.url, retry_base_s=0.2, retry_max_s=1.0)
            + """
[channels.other]
kind = "log"
path = "{log}"
[rules.paid]
stream = "pageview"
conditions = [{ field = "evt", eq = "paid" }]
channels = ["hook", "other"]
rate_limit = { max = 1000 }
""".replace("{log}", str(redis_server.data_dir / "other.log")),
        )
        client = redis_server.client()
        ids = [i for _ in range(10) for i in push(client, cfg, "pageview", [pageview("paid")] * 10)]
        log = redis_server.data_dir / "other.log"
        other_done_at: list[float] = []

        def done() -> bool:
            if not other_done_at and log.exists() and len(log.read_bytes().splitlines()) == 100:
                other_done_at.append(time.time())
            return len(rx.posts) >= 100

        n = asyncio.run(run_until(cfg, done, timeout_s=outage_s + 30))
    sent = n.metrics.notifications.labels("paid", "hook", "sent")._value.get()
    print(
        f"\noutage {outage_s:g} s: hook {len(rx.posts)} posts ({len(set(rx.ids()))} distinct), {sent:g} sent, "
        f"{n.metrics.retries.labels('hook')._value.get():g} retries; other: 100 lines "
        f"{(other_done_at or [rx0.down_until])[0] - (rx0.down_until - outage_s):.2f} s after the outage began; "
        f"last post {max(p.at for p in rx.posts) - rx0.down_until:.2f} s after it ended"
    )
    assert sorted(rx.ids()) == sorted(f"paid:hook:{i}" for i in ids)
    assert time.time() >= rx0.down_until
    # The other channel did not wait for the webhook's outage.
    assert other_done_at
    assert other_done_at[0] < rx0.down_until
    assert n.metrics.retries.labels("hook")._value.get() >= 1
    assert n.metrics.notifications.labels("paid", "hook", "sent")._value.get() == 100


def test_a_4xx_is_dead_at_once_then_replayed(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("T_HOOK_SECRET", SECRET)
    with http_receiver(Receiver(secret=SECRET.encode(), status=404)) as rx:
        extra = (
            hook(rx.url)
            + """
[rules.paid]
stream = "pageview"
conditions = [{ field = "evt", eq = "paid" }]
channels = ["hook"]
"""
        )
        cfg, text = make_config(redis_server.url, extra)
        path = tmp_path / "oceanus.toml"
        path.write_text(text)
        monkeypatch.setenv("OCEANUS_REDIS_URL", redis_server.url)
        client = redis_server.client()
        keys = NotifyKeys("oceanus")
        ids = push(client, cfg, "pageview", [pageview("paid"), pageview("paid")])
        started = time.monotonic()
        asyncio.run(run_until(cfg, lambda: client.llen(keys.dead("hook")) == 2))
        assert time.monotonic() - started < 5  # not after give_up_after_s (an hour)
        assert rx.posts == []
        assert cli.main(["notify", "dead", "list", "--config", str(path)]) == 0
        out = capsys.readouterr().out
        assert "channel hook: 2 dead" in out
        assert "answered 404: no_service" in out
        assert f"paid:hook:{ids[0]}" in out
        rx.status = 200
        assert cli.main(["notify", "dead", "replay", "--config", str(path), "--channel", "hook"]) == 0
        assert "channel hook: 2 dead letters back in the queue" in capsys.readouterr().out
        asyncio.run(run_until(cfg, lambda: len(rx.posts) == 2))
    assert sorted(rx.ids()) == sorted(f"paid:hook:{i}" for i in ids)
    assert client.llen(keys.dead("hook")) == 0
    recent = [r for r in client.lrange(keys.recent(), 0, -1)]
    assert b'"outcome":"dead"' in recent[-1]
    assert b'"outcome":"sent"' in recent[0]


def test_hostile_values_arrive_inert_through_the_pipeline(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with http_receiver(Receiver()) as rx:
        monkeypatch.setenv("T_SLACK_URL", rx.url + "/services/x")
        cfg, _ = make_config(
            redis_server.url,
            """
[channels.team]
kind = "slack"
url_env = "T_SLACK_URL"
[rules.paid]
stream = "pageview"
conditions = [{ field = "evt", eq = "paid" }]
template = "paid by {uid}: {tit}"
channels = ["team"]
""",
        )
        push(
            redis_server.client(),
            cfg,
            "pageview",
            [pageview("paid", uid="<!channel>", tit="*x* <https://evil|y>\r\n" + "z" * 1_000_000)],
        )
        asyncio.run(run_until(cfg, lambda: len(rx.posts) == 1))
    text = rx.posts[0].json()["text"]
    assert text.startswith("paid by &lt;!channel&gt;: *\u200bx*\u200b &lt;https://evil|y&gt;\r\nzzz")
    # The 1 MB title was cut to max_value_chars, then escaped: two zero-width spaces, &lt; and &gt; (+3 each).
    assert len(text) == len("paid by &lt;!channel&gt;: ") + cfg.notify.max_value_chars + 2 + 3 + 3
    assert text[-1] == "…"


def test_a_redelivered_job_is_counted_once_by_the_rate_limit(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job handed back mid-retry (SIGTERM) and one evaluated twice take one place in their window each."""
    import redis.asyncio as aioredis

    from notifier import jobs
    from notifier.channels import make_channel
    from notifier.delivery import Worker
    from notifier.metrics import NotifyMetrics

    monkeypatch.setenv("T_HOOK_SECRET", SECRET)
    with http_receiver(Receiver(secret=SECRET.encode(), down_until=time.time() + 3600)) as rx:
        cfg, _ = make_config(
            redis_server.url,
            hook(rx.url)
            + """
[rules.paid]
stream = "pageview"
channels = ["hook"]
rate_limit = { max = 2, per_s = 1.0 }
""",
        )

        def job(name: str) -> bytes:
            now = int(time.time() * 1000)
            return jobs.encode(
                jobs.Job(
                    id=f"paid:hook:{name}",
                    rule="paid",
                    channel="hook",
                    stream="pageview",
                    event_ms=now,
                    created_ms=now,
                    template=name,
                    subject="s",
                    values={},
                )
            )

        async def scenario() -> tuple[bool, NotifyMetrics, list[str]]:
            client = aioredis.Redis.from_url(redis_server.url)
            metrics = NotifyMetrics()
            stopping = asyncio.Event()

            def stop_at_once(_max_s: float) -> float:
                stopping.set()
                return 0.0

            # The first retry wait finds SIGTERM: job a goes back to the queue, unsent.
            first = Worker(
                cfg,
                "hook",
                make_channel("hook", cfg.channels["hook"]),
                client,
                "one",
                metrics,
                stopping,
                sleep=stop_at_once,
            )
            window = int(time.time())
            a, b, c = job("a"), job("b"), job("c")
            handed_back = await first.deliver(a)
            rx.down_until = 0.0
            again = Worker(
                cfg, "hook", make_channel("hook", cfg.channels["hook"]), client, "two", metrics, asyncio.Event()
            )
            outcomes = [await again.deliver(x) for x in (a, b, c, c)]  # c: evaluated twice
            await client.aclose()
            # All within one 1 s rate-limit window, or the counts below do not apply: the caller retries.
            return (
                (not handed_back and all(outcomes) and int(time.time()) == window),
                metrics,
                [p.json()["message"] for p in rx.posts],
            )

        deadline = time.monotonic() + 20
        while True:
            rx.posts.clear()
            rx.down_until = time.time() + 3600
            redis_server.client().flushall()
            one_window, metrics, sent = asyncio.run(scenario())
            if one_window or time.monotonic() > deadline:
                break
    assert one_window
    assert sent == ["a", "b"]  # a counted once: b is the second of max = 2
    count = metrics.notifications.labels
    assert count("paid", "hook", "held")._value.get() == 1  # c, once
    assert count("paid", "hook", "duplicate")._value.get() == 1  # c again
