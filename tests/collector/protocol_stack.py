"""A real collector + flusher + DuckDB for the Segment and Snowplow SDK tests, and reading their rows back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from oceanus.buffer import Keys
from tests.reliability.harness import Stack
from tests.support.servers import wait_for

SEGMENT_KEY = "wk_test_3f9a1c"
#: A second key, listed with its stream: the same messageId under another key is another event.
OTHER_KEY = "wk_other_77b2"
ENV = {
    "OCEANUS_COLLECTOR_SEGMENT_KEYS_ENV": "TEST_SEGMENT_WRITE_KEYS",
    "TEST_SEGMENT_WRITE_KEYS": f"{SEGMENT_KEY}\n# a comment\n{OTHER_KEY} segment\n",
    "OCEANUS_COLLECTOR_SNOWPLOW_COOKIE_SECURE": "false",
    "OCEANUS_FLUSHER_HEARTBEAT_TTL_S": "2.0",
    "OCEANUS_FLUSHER_RETRY_MAX_S": "1.0",
}


@contextmanager
def protocol_stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path, env=ENV).start()
    try:
        yield stack
    finally:
        stack.stop()


def backlog(stack: Stack, stream: str) -> int:
    keys = Keys(stack.cfg.redis.key_prefix)
    r = stack.redis.client()
    try:
        total = int(r.llen(keys.queue(stream)))
        for key in r.smembers(keys.inflight_index(stream)):
            total += int(r.llen(key))
        return total
    finally:
        r.close()


def stored_rows(stack: Stack, stream: str) -> list[dict[str, Any]]:
    """Drain the stream, stop the processes, and read every row of its DuckDB table."""
    wait_for(lambda: backlog(stack, stream) == 0, timeout=60, interval=0.1, what=f"{stream} drained")
    for proc in stack.collectors.values():
        if proc.alive():
            proc.stop()
    wait_for(lambda: backlog(stack, stream) == 0, timeout=60, interval=0.1, what=f"{stream} drained")
    if stack.flusher is not None:
        stack.flusher.stop()
    import duckdb

    con = duckdb.connect(str(stack.duckdb_path), read_only=True)
    try:
        cur = con.execute(f"SELECT * FROM {stream} ORDER BY received_at, event_id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()
