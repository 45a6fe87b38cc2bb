"""A POST's answer counts its own events, whatever else shares the writer's round (real redis-server)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable

import pytest

from collector.app import App
from oceanus import config
from tests.collector.asgi import request, running
from tests.collector.conftest import queued_rows
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio


async def test_concurrent_arrays_each_get_their_own_count(
    make_config: Callable[..., config.Config], redis_server: RedisServer
) -> None:
    rng = random.Random(7)
    sizes = [rng.randint(2, 20) for _ in range(200)]
    answers: list[tuple[int, int, int]] = []
    # A linger long enough that several requests share each round, as under real concurrency.
    async with running(App(make_config(batch_linger_ms=5))) as app:
        gate = asyncio.Semaphore(16)

        async def post(i: int, n: int) -> None:
            events = [{"sid": f"{i:x}0{k:x}", "evt": "view", "url": ""} for k in range(n)]
            async with gate:
                r = await request(
                    app,
                    "POST",
                    "/e/pageview",
                    body=json.dumps(events).encode(),
                    headers=[("Content-Type", "application/json")],
                )
            answers.append((n, r.status, json.loads(r.body)["accepted"]))

        await asyncio.gather(*(post(i, n) for i, n in enumerate(sizes)))
    wrong = [(n, got) for n, status, got in answers if status != 200 or got != n]
    assert wrong == [], f"{len(wrong)} of {len(answers)} answers miscounted, e.g. {wrong[:5]}"
    assert len(queued_rows(redis_server, "pageview")) == sum(sizes)
