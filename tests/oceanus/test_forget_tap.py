"""``oceanus forget`` and the notifier's tap counter (real redis-server): removing a frame from the prefix
the tap copied shortens that prefix by one; a frame past it, or one only rewritten, changes nothing."""

from __future__ import annotations

from oceanus import config
from oceanus.buffer import EventIds, Keys, encode_frame
from oceanus.commands.forget import forget_buffered
from tests.support.servers import RedisServer

KEYS = Keys("oceanus")
IDS = EventIds()
COLUMNS = config.load(config.REPO_CONFIG, env={}).streams["pageview"].columns


def _frame(*uids: str) -> bytes:
    rows = []
    for uid in uids:
        values = {"event_id": IDS.new(), "received_at": 1_780_000_000_000_000, "sid": "s", "evt": "view", "uid": uid}
        rows.append([values.get(c) for c in COLUMNS])
    return encode_frame(COLUMNS, rows)


def test_forget_keeps_the_tap_counter_true(redis_server: RedisServer) -> None:
    client = redis_server.client()
    q, tapped = KEYS.queue("pageview"), KEYS.notify_tapped("pageview")
    gone1, kept, mixed, gone2, late = _frame("u-1"), _frame("u-2"), _frame("u-1", "u-3"), _frame("u-1"), _frame("u-4")
    client.rpush(q, gone1, kept, mixed, gone2, late)
    client.set(tapped, 4)  # gone1, kept, mixed and gone2 are in the notify queue
    report = forget_buffered(client, KEYS, "pageview", "uid", "u-1")
    assert report.queued == 3
    left = client.lrange(q, 0, -1)
    assert left[0] == kept
    assert left[2] == late
    assert len(left) == 3  # mixed rewritten in place, without its u-1 row
    assert client.get(tapped) == b"2"  # two removed inside the prefix: kept and mixed stay copied
    client.set(tapped, 1)
    client.rpush(q, _frame("u-1"))
    forget_buffered(client, KEYS, "pageview", "uid", "u-1")  # removed past the prefix
    assert client.get(tapped) == b"1"
    client.lpush(q, _frame("u-1"))
    client.set(tapped, 1)  # the new head, copied
    forget_buffered(client, KEYS, "pageview", "uid", "u-1")  # the only copied frame removed
    assert client.exists(tapped) == 0
