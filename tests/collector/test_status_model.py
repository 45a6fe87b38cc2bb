"""One read model of the backlog (collector/status.py): the status page and
``oceanus status`` read frames, the oldest event and the spool the same way, and
the pages' state belongs to the app that serves them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec

from collector import status, web
from collector.app import App
from oceanus import config
from oceanus.buffer import EventIds, Keys, encode_frame
from oceanus.commands import status as status_command
from tests.support.servers import RedisServer

REPO = Path(__file__).resolve().parents[2]
NOW = 1_800_000_030.0
COLUMNS = ["event_id", "received_at", "sid"]


def _rows(ids: EventIds, at_ns: int, n: int) -> list[list[Any]]:
    # As App._row makes them: the id's millisecond and received_at's microsecond from one clock reading.
    return [[ids.new(at_ns + i * 1_000_000), (at_ns + i * 1_000_000) // 1000, "ab"] for i in range(n)]


def test_summarize_reads_rows_and_the_first_event_time() -> None:
    ids = EventIds()
    at_ns = 1_799_999_000_123_456_789
    assert status.summarize(encode_frame(COLUMNS, _rows(ids, at_ns, 3))) == (3, 1_799_999_000_123)
    assert status.summarize(encode_frame(["sid"], [["a"], ["b"]])) == (2, None)  # no event_id column
    assert status.summarize(encode_frame(COLUMNS, [])) == (0, None)
    assert status.summarize(b"not a frame") == (0, None)
    assert status.summarize("text") == (0, None)
    assert status.summarize(None) == (0, None)


def test_unflushed_age_is_from_the_oldest_known_event() -> None:
    assert status.unflushed_age_s(1000.5, [None, 400_000, 300_250]) == 700.25
    assert status.unflushed_age_s(1000.5, [1_000_500]) == 0.0
    assert status.unflushed_age_s(1000.5, [2_000_000]) == 0.0  # a clock ahead of ours: not negative
    assert status.unflushed_age_s(1000.5, [None]) is None
    assert status.unflushed_age_s(1000.5, []) is None


def test_status_command_and_status_page_agree(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = config.load(
        REPO / "oceanus.toml",
        env={"OCEANUS_COLLECTOR_SPOOL_DIR": str(tmp_path / "spool"), "OCEANUS_REDIS_URL": f'"{redis_server.url}"'},
    )
    keys = Keys(cfg.redis.key_prefix)
    ids = EventIds()
    r = redis_server.client()
    # Receive times 0.7 ms past a millisecond: the id keeps the millisecond, received_at the microseconds.
    for age_s, n in ((90, 2), (40, 1)):
        at_ns = int((NOW - age_s) * 1e9) + 700_000
        r.rpush(keys.queue("pageview"), encode_frame(COLUMNS, _rows(ids, at_ns, n)))
    inflight = keys.inflight("form", "flusher-1", 1)
    r.rpush(inflight, encode_frame(COLUMNS, _rows(ids, int((NOW - 300) * 1e9) + 700_000, 2)))
    r.sadd(keys.inflight_index("form"), inflight)
    r.close()

    async def take() -> status.Snapshot:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_server.url)
        try:
            return await status.snapshot(cfg, client, now=NOW)
        finally:
            await client.aclose()

    page = {s.name: s for s in asyncio.run(take()).streams}
    command = status_command.redis_counts(redis_server.url, cfg.redis.key_prefix, list(cfg.streams), NOW)
    assert set(page) == set(command)
    for name, st in command.items():
        assert (st.backlog_frames, st.oldest_unflushed_age_s) == (
            page[name].backlog_frames,
            page[name].oldest_unflushed_s,
        ), name
    assert command["pageview"].oldest_unflushed_age_s == 90.0  # the id's millisecond, not received_at's
    assert command["form"].oldest_unflushed_age_s == 300.0
    assert command["ecview"].oldest_unflushed_age_s is None


def test_each_app_owns_its_pages_and_closes_the_status_client(tmp_path: Path) -> None:
    cfg = config.load(REPO / "oceanus.toml", env={"OCEANUS_COLLECTOR_SPOOL_DIR": str(tmp_path / "spool")})
    on = msgspec.structs.replace(cfg, collector=msgspec.structs.replace(cfg.collector, status_page=True))
    first, second = App(cfg), App(on)
    assert first.web is None  # nothing rendered until a page is asked for

    async def get(app: App, path: str) -> int:
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        async def receive() -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": []}
        assert await web.handle(scope, receive, send, app)
        return int(sent[0]["status"])

    async def run() -> None:
        assert await get(first, "/oceanus.js") == 200
        assert await get(second, "/_/status.json") == 200  # Redis is not there: the page says so
        assert first.web is not None
        assert second.web is not None
        assert first.web is not second.web
        pages = first.web.pages
        assert await get(first, "/oceanus.js") == 200
        assert first.web.pages is pages  # rendered once per app
        assert first.web.redis is None
        assert second.web.redis is not None
        await second.shutdown()
        assert second.web.redis is None

    asyncio.run(run())
