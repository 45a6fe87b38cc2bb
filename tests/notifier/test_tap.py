"""The tap against a real redis-server: every frame of the event queue reaches the notify queue exactly
once, whatever the order of taps, flusher claims, give-backs and finishes, and whether the notifier runs."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import redis.asyncio as aioredis

from flusher.claim import Claim, Claimer
from notifier.keys import NotifyKeys
from notifier.tap import TAP_MAX_FRAMES, Tap
from oceanus.buffer import Keys
from tests.support.servers import RedisServer

PREFIX = "t"
KEYS = Keys(PREFIX)
Q, TAPPED, NQ = KEYS.queue("pv"), KEYS.notify_tapped("pv"), KEYS.notify_queue("pv")


def test_key_names() -> None:
    assert TAPPED == "t:notify:tapped:{pv}"
    assert NQ == "t:notify:q:{pv}"
    assert NotifyKeys(PREFIX).claim.queue("pv") == NQ
    # Shard N: the tap's three keys share the tag, and the notifier claims from that same queue.
    assert KEYS.notify_tapped("pv", 2) == "t:notify:tapped:{pv~2}"
    assert NotifyKeys(PREFIX).claim.queue("pv", 2) == KEYS.notify_queue("pv", 2) == "t:notify:q:{pv~2}"


class World:
    """The event queue, a flusher (its claims copy for ``pv``), the tap and a notifier draining its queue."""

    def __init__(self, client: aioredis.Redis, tap_max: int = TAP_MAX_FRAMES, copy: bool = True) -> None:
        self.client = client
        self.flusher = Claimer(client, KEYS, "flusher", 30.0, notify_tap=("pv",) if copy else ())
        self.tap = Tap(client, PREFIX, max_frames=tap_max)
        self.notifier = Claimer(client, NotifyKeys(PREFIX).claim, "notifier", 30.0)
        self.pushed: list[bytes] = []
        self.received: list[bytes] = []
        self.held: list[Claim] = []

    async def push(self, k: int) -> None:
        frames = [b"f%05d" % (len(self.pushed) + i) for i in range(k)]
        self.pushed += frames
        await self.client.rpush(Q, *frames)

    async def claim(self, n: int) -> Claim | None:
        c = await self.flusher.claim("pv", n)
        if c is not None:
            self.held.append(c)
        return c

    async def give_back(self, i: int) -> None:
        await self.flusher.give_back(self.held.pop(i))

    async def finish(self, i: int) -> None:
        await self.flusher.finish(self.held.pop(i))

    async def evaluate(self, n: int) -> None:
        c = await self.notifier.claim("pv", n)
        if c is not None:
            self.received += c.frames
            await self.notifier.finish(c)

    async def tapped(self) -> int:
        raw = await self.client.get(TAPPED)
        return int(raw) if raw is not None else 0

    async def settle(self) -> None:
        """The flusher finishes what it holds and empties the queue; the notifier takes everything."""
        while self.held:
            await self.finish(0)
        while await self.claim(50) is not None:
            await self.finish(0)
        while await self.client.llen(NQ):
            await self.evaluate(1000)

    def missed_and_repeated(self) -> tuple[set[bytes], dict[bytes, int]]:
        counts = Counter(self.received)
        return set(self.pushed) - set(counts), {f: c for f, c in counts.items() if c > 1}


def _run(server: RedisServer, scenario):  # type: ignore[no-untyped-def]
    async def main() -> None:
        client = aioredis.from_url(server.url)
        try:
            await scenario(client)
        finally:
            await client.aclose()

    asyncio.run(main())


def test_tap_then_claim_pinned_counts(redis_server: RedisServer) -> None:
    async def scenario(client: aioredis.Redis) -> None:
        w = World(client, tap_max=4)
        await w.push(6)
        assert await w.tap.run("pv") == 4  # capped per run
        assert await w.tapped() == 4
        assert await client.lrange(NQ, 0, -1) == [b"f00000", b"f00001", b"f00002", b"f00003"]
        assert await w.tap.run("pv") == 0  # the notify queue is full: the rest waits in the event queue
        await w.evaluate(3)
        assert await w.tap.run("pv") == 2
        assert await w.tapped() == 6
        c = await w.claim(5)  # all five tapped already: nothing copied
        assert c is not None
        assert await client.hget(KEYS.state(c.key), "_tapped") == b"5"
        assert await w.tapped() == 1
        assert await client.llen(NQ) == 3
        await w.push(3)
        c2 = await w.claim(3)  # f00005 tapped; f00006, f00007 copied by the claim
        assert c2 is not None
        assert c2.frames == [b"f00005", b"f00006", b"f00007"]
        assert await client.exists(TAPPED) == 0  # 0 is no key
        assert await client.lrange(NQ, -2, -1) == [b"f00006", b"f00007"]
        assert await w.tap.run("pv") == 0  # the claim's copies filled the notify queue (5 of 4)
        await w.evaluate(5)
        assert await w.tap.run("pv") == 1  # f00008
        await w.give_back(1)  # c2 back at the head: 3 copied frames before the tapped one
        assert await w.tapped() == 4
        assert await client.lrange(Q, 0, -1) == [b"f00005", b"f00006", b"f00007", b"f00008"]
        await w.give_back(0)
        assert await w.tapped() == 9
        await w.settle()
        assert w.missed_and_repeated() == (set(), {})

    _run(redis_server, scenario)


def test_claims_before_any_tap_copy_everything_then_the_tap_resumes(redis_server: RedisServer) -> None:
    """The notifier down: each claim copies; up again, the tap starts after what the flusher took."""

    async def scenario(client: aioredis.Redis) -> None:
        w = World(client)
        await w.push(10)
        await w.claim(4)
        assert await client.lrange(NQ, 0, -1) == [b"f%05d" % i for i in range(4)]
        assert await client.exists(TAPPED) == 0
        await w.finish(0)
        await w.push(2)
        assert await w.tap.run("pv") == 8
        assert await w.tapped() == 8
        await w.settle()
        assert w.missed_and_repeated() == (set(), {})

    _run(redis_server, scenario)


def test_a_counter_past_the_queue_is_clamped(redis_server: RedisServer) -> None:
    async def scenario(client: aioredis.Redis) -> None:
        w = World(client)
        await w.push(3)
        await client.set(TAPPED, 999)
        assert await w.tap.run("pv") == 0
        assert await w.tapped() == 3
        await client.set(TAPPED, 999)
        await w.claim(1)
        assert await w.tapped() == 2
        await client.set(TAPPED, 999)
        await w.give_back(0)
        assert await w.tapped() == 3

    _run(redis_server, scenario)


def test_the_notifiers_own_claims_leave_the_counter_alone(redis_server: RedisServer) -> None:
    async def scenario(client: aioredis.Redis) -> None:
        w = World(client)
        await w.push(5)
        await w.tap.run("pv")
        await w.evaluate(2)
        c = await w.notifier.claim("pv", 2)
        assert c is not None
        await w.notifier.give_back(c)
        assert await w.tapped() == 5
        assert sorted(await client.keys("*")) == sorted(k.encode() for k in (Q, NQ, TAPPED))

    _run(redis_server, scenario)


def test_every_frame_once_in_many_random_orders(redis_server: RedisServer) -> None:
    """Push, tap, claim, give back, finish and evaluate in random orders, the notifier sometimes down."""

    async def scenario(client: aioredis.Redis) -> None:
        for seed in range(150):
            await client.flushall()
            rng = random.Random(seed)
            w = World(client, tap_max=rng.choice([1, 3, 8, 1000]))
            notifier_up = rng.random() < 0.7
            for _ in range(rng.randint(5, 60)):
                op = rng.random()
                if op < 0.25:
                    await w.push(rng.randint(1, 5))
                elif op < 0.45:
                    if notifier_up:
                        await w.tap.run("pv")
                elif op < 0.65:
                    await w.claim(rng.randint(1, 6))
                elif op < 0.75 and w.held:
                    await w.give_back(rng.randrange(len(w.held)))
                elif op < 0.85 and w.held:
                    await w.finish(rng.randrange(len(w.held)))
                elif op < 0.95:
                    if notifier_up:
                        await w.evaluate(rng.randint(1, 4))
                else:
                    notifier_up = not notifier_up
                assert await w.tapped() <= await client.llen(Q)
            while await w.tap.run("pv"):
                await w.evaluate(1000)
            await w.settle()
            missed, repeated = w.missed_and_repeated()
            assert (seed, missed, repeated) == (seed, set(), {})

    _run(redis_server, scenario)


def test_tap_and_flusher_running_concurrently(redis_server: RedisServer) -> None:
    """Collector, flusher, tap and evaluator as concurrent tasks: 3,000 frames, each evaluated once."""

    async def scenario(client: aioredis.Redis) -> None:
        w = World(client, tap_max=50)
        clients = [aioredis.from_url(redis_server.url) for _ in range(3)]
        pushing = True

        async def collector() -> None:
            nonlocal pushing
            rng = random.Random(1)
            for _ in range(600):
                await w.push(5)
                if rng.random() < 0.3:
                    await asyncio.sleep(0)
            pushing = False

        async def flusher() -> None:
            rng = random.Random(2)
            flusher = Claimer(clients[0], KEYS, "flusher2", 30.0, notify_tap=("pv",))
            while pushing or await clients[0].llen(Q):
                c = await flusher.claim("pv", rng.randint(1, 40))
                if c is None:
                    await asyncio.sleep(0.001)
                elif rng.random() < 0.2:
                    await flusher.give_back(c)
                else:
                    await flusher.finish(c)

        async def tap() -> None:
            t = Tap(clients[1], PREFIX, max_frames=50)
            while pushing or await clients[1].llen(Q):
                await t.run("pv")
                await asyncio.sleep(0.001)

        async def evaluator() -> None:
            n = Claimer(clients[2], NotifyKeys(PREFIX).claim, "n2", 30.0)
            while pushing or await clients[2].llen(Q) or await clients[2].llen(NQ):
                c = await n.claim("pv", 30)
                if c is None:
                    await asyncio.sleep(0.001)
                    continue
                w.received += c.frames
                await n.finish(c)

        await asyncio.wait_for(asyncio.gather(collector(), flusher(), tap(), evaluator()), 120)
        for c in clients:
            await c.aclose()
        await w.settle()
        assert len(w.pushed) == 3000
        assert w.missed_and_repeated() == (set(), {})
        assert await client.exists(TAPPED) == 0

    _run(redis_server, scenario)


def test_a_flusher_without_the_rule_keeps_the_counter_true(redis_server: RedisServer) -> None:
    """Config skew (the notifier knows a rule its flusher does not): no frame is missed, some are
    evaluated twice (delivery keys drop the repeats)."""

    async def scenario(client: aioredis.Redis) -> None:
        w = World(client, copy=False)
        await w.push(6)
        await w.tap.run("pv")  # 6 tapped
        await w.push(4)
        c = await w.claim(8)  # 6 copied by the tap, 2 not (this flusher does not copy)
        assert c is not None
        assert await client.hget(KEYS.state(c.key), "_tapped") == b"6"
        assert await client.exists(TAPPED) == 0
        assert await w.tap.run("pv") == 2  # f00008, f00009
        await w.give_back(0)
        # Only the batch's first 6 frames are in the notify queue: f00006 and f00007 get tapped now,
        # and the two after them a second time.
        assert await w.tapped() == 6
        while await w.tap.run("pv"):
            await w.evaluate(1000)
        await w.settle()
        missed, repeated = w.missed_and_repeated()
        assert missed == set()
        assert repeated == {b"f00008": 2, b"f00009": 2}

    _run(redis_server, scenario)
