"""A frame that inflates past FRAME_MAX_INFLATED_BYTES is dead-lettered with its reason, never fully inflated."""

from __future__ import annotations

import base64
import json
import tracemalloc
import zlib
from pathlib import Path

import pytest

from flusher.runner import Flusher
from flusher.sinks.duckdb import DuckDBSink
from oceanus.buffer import (
    FRAME_DICT_O2,
    FRAME_MAGIC,
    FRAME_MAGIC_O1,
    FRAME_MAX_INFLATED_BYTES,
    FrameError,
    Keys,
    frame_payload,
)
from tests.flusher.helpers import make_config, push_frames
from tests.flusher.test_runner import run_flusher, until
from tests.support.servers import RedisServer

MIB = 1_048_576
#: What the forged frame would inflate to without the cap (bytes).
FORGED_INFLATED_BYTES = 1024 * MIB


def _zeros_frame(n: int, magic: bytes = FRAME_MAGIC) -> bytes:
    """A frame (valid DEFLATE, valid CRC) whose payload is ``n`` zero bytes, built without holding them."""
    if magic == FRAME_MAGIC:
        z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, FRAME_DICT_O2)
    else:
        z = zlib.compressobj(9)
    chunk = bytes(MIB)
    parts = [magic]
    crc = 0
    left = n
    while left:
        piece = chunk if left >= MIB else chunk[:left]
        parts.append(z.compress(piece))
        crc = zlib.crc32(piece, crc)
        left -= len(piece)
    parts.append(z.flush())
    if magic == FRAME_MAGIC:
        parts.append(crc.to_bytes(4, "big"))
    return b"".join(parts)


def test_a_frame_at_the_cap_inflates_and_one_byte_over_is_refused() -> None:
    at = _zeros_frame(FRAME_MAX_INFLATED_BYTES)
    assert len(frame_payload(at)) == FRAME_MAX_INFLATED_BYTES
    del at
    over = _zeros_frame(FRAME_MAX_INFLATED_BYTES + 1)
    with pytest.raises(FrameError) as info:
        frame_payload(over)
    assert str(info.value) == (
        f"frame inflates past FRAME_MAX_INFLATED_BYTES ({FRAME_MAX_INFLATED_BYTES} bytes); "
        "no collector writes one so large"
    )


def test_the_previous_format_is_capped_too() -> None:
    assert len(frame_payload(_zeros_frame(MIB, FRAME_MAGIC_O1))) == MIB
    with pytest.raises(FrameError, match="FRAME_MAX_INFLATED_BYTES"):
        frame_payload(_zeros_frame(FRAME_MAX_INFLATED_BYTES + 1, FRAME_MAGIC_O1))
    with pytest.raises(FrameError, match="truncated"):
        frame_payload(_zeros_frame(MIB, FRAME_MAGIC_O1)[:-8])


def test_a_forged_frame_is_dead_lettered_and_memory_stays_bounded(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = make_config(redis_server.url, tmp_path / "w.duckdb")
    keys = Keys(cfg.redis.key_prefix)
    client = redis_server.client()
    forged = _zeros_frame(FORGED_INFLATED_BYTES)
    assert len(forged) < 2 * MIB  # ~1,000:1
    ids = push_frames(client, keys, cfg.streams["pv"], frames=5, rows_per_frame=20)
    client.rpush(keys.queue("pv"), forged)
    ids += push_frames(client, keys, cfg.streams["pv"], frames=5, rows_per_frame=20, start=100)

    async def body(f: Flusher) -> None:
        await until(lambda: _counted(f, written=200, dead=1), "good rows written, the forged frame dead-lettered")

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        run_flusher(cfg, DuckDBSink(cfg), body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # An inflation peaks at twice its output: zlib's output blocks, then the bytes joined from
    # them. Two threads may inflate the forged frame at once: the batch's decode thread, and the
    # event loop reading the queue's head for the lag gauge. So the bound is 4 x the cap, plus
    # the flusher's own few MiB. Measured: 259 MiB when they did not overlap, 388 MiB when they
    # did, and 2.9 GiB uncapped.
    assert peak < 4 * FRAME_MAX_INFLATED_BYTES + 32 * MIB, f"peak {peak / MIB:.0f} MiB"
    [dead] = client.lrange(keys.dead("pv"), 0, -1)
    letter = json.loads(dead)
    assert letter["reason"] == (
        f"frame inflates past FRAME_MAX_INFLATED_BYTES ({FRAME_MAX_INFLATED_BYTES} bytes); "
        "no collector writes one so large"
    )
    assert base64.b64decode(letter["frame_b64"]) == forged
    stored = DuckDBSink(cfg).query("SELECT event_id FROM pv ORDER BY event_id").rows
    assert [r[0] for r in stored] == sorted(ids)
    assert client.llen(keys.queue("pv")) == 0


async def _counted(f: Flusher, written: int, dead: int) -> bool:
    get = f.metrics.registry.get_sample_value
    return (
        get("oceanus_rows_written_total", {"stream": "pv"}) == written
        and get("oceanus_rows_dead_lettered_total", {"stream": "pv"}) == dead
    )
