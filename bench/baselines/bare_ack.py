"""The durable-ack floor: the bare GIF app plus the least that a 2xx meaning "in Redis" costs.

Each request appends its raw query string to its worker's current batch and waits; one writer task
per worker sends the whole batch as a single ``RPUSH`` on its own connection (the collector's raw
RESP link, collector/resp.py) and answers the batch's requests when Redis has replied, with one
round in flight, as the collector does. No parsing, validation, enrichment, event id, compression,
stats or metrics: only the round trip to redis-server, which shares the box's cores with granian
and wrk. The collector's latency is read against this app as well as against the bare one: what
the bare app lacks, any collector that acknowledges only stored events pays.

``BARE_ACK_REDIS_URL`` names the Redis; every item goes to the list ``bench:bare_ack``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from bench.baselines.bare import GIF, HEADERS
from collector.resp import RedisLink, pack

KEY = b"bench:bare_ack"
_START = {"type": "http.response.start", "status": 200, "headers": HEADERS}
_BODY = {"type": "http.response.body", "body": GIF}
_UNAVAILABLE = {"type": "http.response.start", "status": 503, "headers": [(b"content-length", b"0")]}
_EMPTY = {"type": "http.response.body", "body": b""}


class _Writer:
    """One per worker: batches the items of concurrent requests into one RPUSH round."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._link = RedisLink(url, 5.0)
        self._items: list[bytes] = []
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._waker: asyncio.Future[None] | None = None
        self._task = self._loop.create_task(self._run())

    def submit(self, item: bytes) -> asyncio.Future[None]:
        self._items.append(item)
        waker = self._waker
        if waker is not None and not waker.done():
            waker.set_result(None)
        return self._done

    async def _run(self) -> None:
        while True:
            if not self._items:
                self._waker = self._loop.create_future()
                await self._waker
                self._waker = None
            items, done = self._items, self._done
            self._items, self._done = [], self._loop.create_future()
            try:
                (reply,) = await self._link.call(pack(b"RPUSH", KEY, *items), 1)
            except OSError as exc:  # lost, refused or timed out: a 503, and the next batch tries again
                done.set_exception(exc)
                continue
            if isinstance(reply, Exception):
                done.set_exception(ConnectionError(f"Redis refused the RPUSH: {reply}"))
            else:
                done.set_result(None)


_writer: _Writer | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _writer
    if scope["type"] != "http":
        return
    if _writer is None:
        _writer = _Writer(os.environ.get("BARE_ACK_REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        await _writer.submit(scope["query_string"])
    except OSError:
        await send(_UNAVAILABLE)
        await send(_EMPTY)
        return
    await send(_START)
    await send(_BODY)
