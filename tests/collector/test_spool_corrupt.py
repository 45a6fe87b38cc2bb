"""A corrupt record in the middle of a spool file costs that record only: every
record after it was acknowledged too, so the reader resyncs on the next valid one
and the unreadable bytes go to a quarantine file beside the spool."""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from collector.app import App
from collector.spool import CORRUPT, RESYNC_BLOCK_BYTES, TORN_TAIL, Spool, quarantine_path
from oceanus import config
from oceanus.buffer import Keys, decode_frame, encode_frame
from tests.collector.asgi import request, running
from tests.collector.conftest import frame_count
from tests.support.servers import RedisServer, as_bytes_list

MakeConfig = Callable[..., config.Config]
Record = tuple[str, bytes]


def _record(stream: str, frame: bytes) -> bytes:
    """One spool record as the spool writes it (len, crc32, msgpack([stream, frame]))."""
    payload = msgspec.msgpack.encode((stream, frame))
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def _spool_file(directory: Path, records: list[Record]) -> tuple[Path, list[int]]:
    """A dead worker's spool file holding ``records``; returns it and each record's offset."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "spool-1-deadbeef.log"
    offsets, data = [], b""
    for stream, frame in records:
        offsets.append(len(data))
        data += _record(stream, frame)
    path.write_bytes(data)
    return path, offsets


def _replay_all(directory: Path) -> tuple[list[Record], Spool]:
    spool = Spool(directory, 1 << 30).open()
    pushed: list[Record] = []

    async def push(records: list[Record]) -> None:
        pushed.extend(records)

    asyncio.run(spool.replay(push))
    return pushed, spool


RECORDS = [("pageview", f"frame-{i:02d}".encode() * (i + 1)) for i in range(12)]


@pytest.mark.parametrize("where", ["payload", "crc", "length"])
def test_a_corrupt_record_mid_file_costs_only_itself(tmp_path: Path, where: str) -> None:
    path, offsets = _spool_file(tmp_path, RECORDS)
    data = bytearray(path.read_bytes())
    bad = 5
    start, end = offsets[bad], offsets[bad + 1]
    if where == "payload":
        data[start + 12] ^= 0xFF  # a flipped byte inside the frame
    elif where == "crc":
        data[start + 4 : start + 8] = b"\x00\x00\x00\x00"
    else:
        data[start : start + 4] = struct.pack("<I", 0x7FFF_FFFF)  # claims to run far past the end
    path.write_bytes(bytes(data))

    pushed, spool = _replay_all(tmp_path)
    assert pushed == RECORDS[:bad] + RECORDS[bad + 1 :]
    assert quarantine_path(path).read_bytes() == bytes(data[start:end])
    assert spool.quarantined == {CORRUPT: end - start, TORN_TAIL: 0}
    assert not spool.pending
    assert not path.exists()
    spool.close()


def test_several_bad_stretches_and_a_torn_tail(tmp_path: Path) -> None:
    path, offsets = _spool_file(tmp_path, RECORDS)
    data = bytearray(path.read_bytes())
    # Records 2 and 3 overwritten together, record 8 zeroed, then an append cut short.
    for i in range(offsets[2] + 3, offsets[4] - 2):
        data[i] = 0x92  # the payload's first byte everywhere: every offset is a resync candidate
    data[offsets[8] : offsets[9]] = bytes(offsets[9] - offsets[8])
    torn = _record("pageview", b"never acknowledged")[:-3]
    path.write_bytes(bytes(data) + torn)

    pushed, spool = _replay_all(tmp_path)
    assert pushed == RECORDS[:2] + RECORDS[4:8] + RECORDS[9:]
    q = quarantine_path(path).read_bytes()
    assert q == bytes(data[offsets[2] : offsets[4]]) + bytes(data[offsets[8] : offsets[9]]) + torn
    assert spool.quarantined == {CORRUPT: offsets[4] - offsets[2] + offsets[9] - offsets[8], TORN_TAIL: len(torn)}
    spool.close()


def test_resync_past_a_bad_stretch_longer_than_one_scan_block(tmp_path: Path) -> None:
    big = [("pageview", b"a"), ("pageview", b"b" * (RESYNC_BLOCK_BYTES + 4096)), ("pageview", b"c")]
    path, offsets = _spool_file(tmp_path, big)
    data = bytearray(path.read_bytes())
    data[offsets[1] + 100] ^= 0x01
    path.write_bytes(bytes(data))

    pushed, spool = _replay_all(tmp_path)
    assert pushed == [big[0], big[2]]
    assert quarantine_path(path).read_bytes() == bytes(data[offsets[1] : offsets[2]])
    spool.close()


def test_a_replay_retried_after_a_failed_push_quarantines_once(tmp_path: Path) -> None:
    path, offsets = _spool_file(tmp_path, RECORDS)
    data = bytearray(path.read_bytes())
    data[offsets[3] + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    spool = Spool(tmp_path, 1 << 30).open()
    pushed: list[Record] = []
    calls = 0

    async def push(records: list[Record]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("Redis went away")
        pushed.extend(records)

    with pytest.raises(ConnectionError):
        asyncio.run(spool.replay(push))
    asyncio.run(spool.replay(push))
    assert pushed == RECORDS[:3] + RECORDS[4:]
    assert quarantine_path(path).read_bytes() == bytes(data[offsets[3] : offsets[4]])
    assert spool.quarantined[CORRUPT] == offsets[4] - offsets[3]
    spool.close()


@pytest.mark.anyio
async def test_the_collector_replays_around_a_corrupt_record_and_counts_it(
    make_config: MakeConfig, redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = make_config()
    columns = cfg.streams["pageview"].columns
    frames = [("pageview", encode_frame(columns, [[f"{i}"] * len(columns)])) for i in range(6)]
    path, offsets = _spool_file(tmp_path / "spool", frames)
    data = bytearray(path.read_bytes())
    data[offsets[2] + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    async with running(App(cfg)) as app:
        deadline = time.monotonic() + 10
        while frame_count(redis_server, "pageview") < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # polling the condition, bounded by the deadline
        metrics = (await request(app, "GET", "/metrics")).body.decode()
    assert f'oceanus_spool_quarantined_bytes_total{{reason="corrupt"}} {offsets[3] - offsets[2]}.0' in metrics
    client = redis_server.client()
    try:
        items = as_bytes_list(client.lrange(Keys().queue("pageview"), 0, -1))
    finally:
        client.close()
    assert [decode_frame(f)[1][0][0] for f in items] == ["0", "1", "3", "4", "5"]
    assert quarantine_path(path).read_bytes() == bytes(data[offsets[2] : offsets[3]])
