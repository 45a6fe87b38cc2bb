"""The official Segment Python SDK (segment-analytics-python) against a real collector, flusher and DuckDB.

Every call type is sent by the SDK itself and read back from the warehouse
field by field; the SDK's own retry (its first connection loses the reply
after the collector stored the batch) ends as one row per message.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from segment.analytics import Client

from oceanus.buffer import Keys
from tests.collector.protocol_stack import OTHER_KEY, SEGMENT_KEY, protocol_stack, stored_rows
from tests.reliability.harness import Stack
from tests.support.servers import wait_for
from tests.support.tcpproxy import ReplyDropProxy

T0 = datetime(2026, 12, 4, 9, 15, 0, 123000, tzinfo=UTC)


def _accepted(stack: Stack, stream: str) -> int:
    """Events the collectors acknowledged for the stream (their per-minute Redis counters)."""
    keys = Keys(stack.cfg.redis.key_prefix)
    r = stack.redis.client()
    try:
        return sum(int(r.hget(k, "accepted") or 0) for k in r.keys(keys.stats(stream, 0)[:-1] + "*"))
    finally:
        r.close()


def _client(host: str, key: str = SEGMENT_KEY, **kw: Any) -> Client:
    errors: list[Any] = []
    client = Client(key, host=host, on_error=lambda e, batch: errors.append(e), max_retries=3, **kw)
    client._errors = errors
    return client


def test_every_call_type_is_stored_field_by_field(tmp_path: Path) -> None:
    with protocol_stack(tmp_path) as stack:
        now = datetime.now(UTC).replace(microsecond=0)
        client = _client(stack.url, gzip=True)
        ctx = {"ip": "198.51.100.7", "page": {"path": "/pricing"}}
        client.track(
            "u1",
            "Order Completed",
            {"revenue": 39.5, "items": [1, 2]},
            context=ctx,
            timestamp=now,
            message_id="m-track",
            integrations={"All": False},
        )
        client.identify("u1", {"email": "a@example.com", "plan": "pro"}, timestamp=now, message_id="m-identify")
        client.page("u1", "Docs", "Install", {"url": "https://example.com/docs"}, timestamp=now, message_id="m-page")
        client.screen(None, "Home", "Main", {"tab": 2}, anonymous_id="anon-9", timestamp=now, message_id="m-screen")
        client.group("u1", "g-42", {"name": "Acme"}, timestamp=now, message_id="m-group")
        client.alias("anon-9", "u1", timestamp=now, message_id="m-alias")
        client.track("u2", "Backfilled", timestamp=T0, message_id="m-old")
        client.flush()
        assert client._errors == []
        rows = {r["message_id"]: r for r in stored_rows(stack, "segment")}

    assert sorted(rows) == ["m-alias", "m-group", "m-identify", "m-old", "m-page", "m-screen", "m-track"]
    naive = now.replace(tzinfo=None)
    track = rows["m-track"]
    assert (track["type"], track["event"], track["user_id"], track["anonymous_id"]) == (
        "track",
        "Order Completed",
        "u1",
        None,
    )
    assert json.loads(track["properties"]) == {"revenue": 39.5, "items": [1, 2]}
    context = json.loads(track["context"])
    assert context["ip"] == "198.51.100.7"
    assert context["page"] == {"path": "/pricing"}
    assert context["library"]["name"] == "analytics-python"
    assert json.loads(track["integrations"]) == {"All": False}
    # A server library's timestamp is the client's choice: kept as sent, and it places the row.
    assert track["timestamp"] == naive
    assert track["original_timestamp"] == naive
    assert track["received_at"] == naive
    assert track["event_id"][:12] == f"{int(now.timestamp() * 1000):012x}"
    assert track["sent_at"] is not None
    assert abs(track["sent_at"] - track["collected_at"]) < timedelta(seconds=30)
    assert track["ua"].startswith("analytics-python/")
    assert track["ip"] == "127.0.0.1"
    assert track["extra"] is None
    identify = rows["m-identify"]
    assert identify["type"] == "identify"
    assert json.loads(identify["traits"]) == {"email": "a@example.com", "plan": "pro"}
    page = rows["m-page"]
    assert (page["type"], page["category"], page["name"]) == ("page", "Docs", "Install")
    assert json.loads(page["properties"]) == {"url": "https://example.com/docs"}
    screen = rows["m-screen"]
    assert (screen["type"], screen["name"], screen["user_id"], screen["anonymous_id"]) == (
        "screen",
        "Main",
        None,
        "anon-9",
    )
    group = rows["m-group"]
    assert (group["type"], group["group_id"], json.loads(group["traits"])) == ("group", "g-42", {"name": "Acme"})
    alias = rows["m-alias"]
    assert (alias["type"], alias["previous_id"], alias["user_id"]) == ("alias", "anon-9", "u1")
    # Outside collector.segment.own_time_window_s of arrival: placed at arrival, its own time kept.
    old = rows["m-old"]
    assert old["timestamp"] == T0.replace(tzinfo=None)
    assert old["received_at"] == old["collected_at"]


def test_sdk_retry_after_a_lost_reply_stores_one_row_per_message(tmp_path: Path) -> None:
    with protocol_stack(tmp_path) as stack:
        proxy = ReplyDropProxy(stack.port).start()
        try:
            # The first POST reaches the collector, which stores the batch and answers; the
            # answer is lost and the connection closed, so the SDK sends the batch again.
            proxy.drop_reply_after(b"POST /v1/batch", times=1)
            # One batch of exactly 25, however slow the box: sent when the 25th call is queued.
            client = _client(f"http://127.0.0.1:{proxy.port}", upload_size=25, upload_interval=60)
            ids = [f"retry-{i}" for i in range(25)]
            for mid in ids:
                client.track("u1", "Clicked", {"n": mid}, message_id=mid)
            client.flush()
            # The same messageId under another write key is another sender's event.
            other = _client(f"http://127.0.0.1:{proxy.port}", key=OTHER_KEY)
            other.track("u9", "Clicked", message_id="retry-0")
            other.flush()
        finally:
            proxy.stop()
        assert proxy.dropped == 1
        assert client._errors == []
        assert other._errors == []
        # Both copies of the first batch were acknowledged by the collector...
        # (the counters are written at most every 250 ms: polled)
        wait_for(lambda: _accepted(stack, "segment") == 2 * len(ids) + 1, what="51 events acknowledged")
        rows = stored_rows(stack, "segment")
    # ...and the warehouse holds one row per message.
    assert sorted(r["message_id"] for r in rows) == sorted([*ids, "retry-0"])
    assert len({r["event_id"] for r in rows}) == len(rows)
    assert sorted(r["user_id"] for r in rows if r["message_id"] == "retry-0") == ["u1", "u9"]


def test_wrong_write_key_is_401_and_stores_nothing(tmp_path: Path) -> None:
    with protocol_stack(tmp_path) as stack:
        client = _client(stack.url, key="wk_nobody")
        client.track("u1", "Nope", message_id="m-x")
        client.flush()
        errors = client._errors
        assert [(e.status, e.code) for e in errors] == [(401, "valid")]
        assert "writeKey: valid" in errors[0].message
        assert _accepted(stack, "segment") == 0
        assert stored_rows(stack, "segment") == []
