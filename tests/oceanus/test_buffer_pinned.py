"""The frame format and the event id layout pinned by value (see tests/golden/README.md).

A round trip passes whatever the encoder does as long as the decoder agrees;
frames already in Redis were written by yesterday's encoder. These tests decode
checked-in bytes and compare the encoder's output to them byte for byte.
"""

from __future__ import annotations

import itertools
import os
import random
import zlib
from pathlib import Path

import msgspec
import pytest

from oceanus import buffer

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
#: The zlib the golden O2 bytes were written with: another implementation (zlib-ng)
#: may encode the same level differently and still decode these.
GOLDEN_ZLIB = "1.2.13"

COLS = ["event_id", "received_at", "ip", "ua", "device", "sid", "n", "score", "ok", "at", "jsn", "extra"]
ROWS = [
    [
        bytes.fromhex("0190a1b2c3d45e6f708192a300000001"),
        1_780_000_000_000_000,
        "203.0.113.7",
        "Mozilla/5.0 (X11; Linux x86_64)",
        "desktop",
        "s-1",
        42,
        1.5,
        True,
        1_779_999_999_000_000,
        '{"k": [1, 2]}',
        None,
    ],
    [
        bytes.fromhex("0190a1b2c3d45e6f708192a300000002"),
        1_780_000_000_000_001,
        "2001:db8::1",
        "",
        "mobile",
        "日本語",
        -7,
        -0.25,
        False,
        None,
        None,
        '{"x":"y"}',
    ],
    [
        bytes.fromhex("0190a1b2c3d55e6f708192a3ffffffff"),
        1_780_000_000_999_999,
        "198.51.100.2",
        "curl/8",
        "bot",
        "",
        0,
        1e300,
        None,
        0,
        "null",
        None,
    ],
]


def _golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


@pytest.mark.parametrize("name", ["frame_o2_pv.bin", "frame_o1_pv.bin"])
def test_golden_frames_decode_forever(name: str) -> None:
    assert buffer.decode_frame(_golden(name)) == (COLS, ROWS)


def test_o2_layout_magic_raw_deflate_and_a_big_endian_crc32_trailer() -> None:
    frame = _golden("frame_o2_pv.bin")
    payload = msgspec.msgpack.encode((COLS, ROWS))
    assert frame[:2] == b"O2" == buffer.FRAME_MAGIC
    assert frame[-4:] == zlib.crc32(payload).to_bytes(4, "big")
    z = zlib.decompressobj(-15, buffer.FRAME_DICT_O2)
    assert z.decompress(frame[2:-4]) == payload
    assert z.eof
    assert not z.unused_data
    assert buffer.frame_payload(frame) == payload


@pytest.mark.skipif(zlib.ZLIB_RUNTIME_VERSION != GOLDEN_ZLIB, reason="the byte-exact encoding is zlib's own")
def test_the_encoder_writes_the_golden_bytes() -> None:
    # Pins the level, window, memLevel and dictionary the collector writes with.
    assert buffer.encode_frame(COLS, ROWS) == _golden("frame_o2_pv.bin")
    assert buffer.FRAME_ZLIB_LEVEL == 1


def test_format_constants() -> None:
    assert (buffer.FRAME_MAGIC, buffer.FRAME_MAGIC_O1, buffer.FRAME_MAGIC_LEN) == (b"O2", b"O1", 2)
    assert buffer.FRAME_MAX_INFLATED_BYTES == 128 * 1024 * 1024
    assert (buffer.STATS_TTL_S, buffer.RECENT_ERRORS_MAX) == (48 * 3600, 100)


def test_a_body_no_longer_than_the_checksum_is_truncated() -> None:
    for body in (b"", b"\x00", b"\x00\x00\x00\x00"):
        with pytest.raises(buffer.FrameError, match="truncated"):
            buffer.frame_payload(b"O2" + body)
    with pytest.raises(buffer.FrameError, match=r"corrupt frame: (?!truncated)"):
        buffer.frame_payload(b"O2" + b"\x00" * 5)


def test_every_wrong_crc_byte_is_refused() -> None:
    frame = _golden("frame_o2_pv.bin")
    for i in range(1, 5):
        bad = bytearray(frame)
        bad[-i] ^= 0x01
        with pytest.raises(buffer.FrameError, match="checksum mismatch"):
            buffer.frame_payload(bytes(bad))


def test_trailing_bytes_after_the_deflate_stream_are_refused() -> None:
    frame = _golden("frame_o2_pv.bin")
    with pytest.raises(buffer.FrameError, match="does not end where the checksum starts"):
        buffer.frame_payload(frame[:-4] + b"\x00" + frame[-4:])


@pytest.mark.parametrize("name", ["frame_o2_pv.bin", "frame_o1_pv.bin"])
def test_the_inflate_cap_holds_at_and_past_the_limit(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    size = len(msgspec.msgpack.encode((COLS, ROWS)))
    monkeypatch.setattr(buffer, "FRAME_MAX_INFLATED_BYTES", size)
    assert buffer.decode_frame(_golden(name)) == (COLS, ROWS)  # at the cap
    monkeypatch.setattr(buffer, "FRAME_MAX_INFLATED_BYTES", size - 1)
    with pytest.raises(buffer.FrameError, match=rf"inflates past FRAME_MAX_INFLATED_BYTES \({size - 1} bytes\)"):
        buffer.decode_frame(_golden(name))


def test_foreign_and_undecodable_items() -> None:
    with pytest.raises(buffer.FrameError, match="bad magic"):
        buffer.frame_payload(b"O3" + _golden("frame_o2_pv.bin")[2:])
    with pytest.raises(buffer.FrameError, match="corrupt frame"):
        buffer.frame_payload(b"O1" + b"not zlib")
    with pytest.raises(buffer.FrameError, match="corrupt frame: truncated"):
        buffer.frame_payload(_golden("frame_o1_pv.bin")[:-1])
    not_rows = _o2_of(msgspec.msgpack.encode({"a": 1}))
    with pytest.raises(buffer.FrameError, match="corrupt frame"):
        buffer.decode_frame(not_rows)


def _o2_of(payload: bytes) -> bytes:
    z = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, buffer.FRAME_DICT_O2)
    return b"O2" + z.compress(payload) + z.flush() + zlib.crc32(payload).to_bytes(4, "big")


def test_ids_minted_in_the_same_millisecond_are_distinct_and_ordered() -> None:
    ids = buffer.EventIds()
    same = [ids.new(now_ns=1_780_000_000_123_456_789) for _ in range(1000)]
    assert len(set(same)) == 1000
    assert same == sorted(same)
    counters = [int.from_bytes(i[12:], "big") for i in same]
    assert all((b - a) % 2**32 == 1 for a, b in itertools.pairwise(counters))
    assert {i[:12] for i in same} == {same[0][:12]}


def test_id_layout_millis_node_counter_and_the_counter_wraps_inside_its_32_bits() -> None:
    ids = buffer.EventIds()
    ids._counter = 0xFFFFFFFE
    node = ids._node
    a = ids.new(now_ns=1_780_000_000_123_999_999)
    b = ids.new(now_ns=1_780_000_000_124_000_000)
    assert int.from_bytes(a, "big") == (1_780_000_000_123 << 80) | node | 0xFFFFFFFF
    assert int.from_bytes(b, "big") == (1_780_000_000_124 << 80) | node | 0
    assert buffer.event_id_time_ms(a) == 1_780_000_000_123
    assert node & 0xFFFFFFFF == 0
    assert 0 <= node >> 32 < 2**48
    assert buffer.event_id_hex(a) == a.hex()
    assert len(a) == 16


def test_an_id_without_a_clock_argument_reads_the_clock() -> None:
    import time

    before = time.time_ns() // 1_000_000
    got = buffer.event_id_time_ms(buffer.EventIds().new())
    assert before <= got <= time.time_ns() // 1_000_000


def test_every_key_name() -> None:
    k = buffer.Keys("P")
    assert buffer.Keys().prefix == "oceanus"
    assert [
        k.queue("s"),
        k.inflight("s", "o", 3),
        k.inflight_index("s"),
        k.state("P:inflight:{s}:o:3"),
        k.heartbeat("o"),
        k.shard_heartbeat("o", "s"),
        k.dead("s"),
        k.stats("s", 29_666_666),
        k.recent_errors(),
        k.notify_queue("s"),
        k.notify_tapped("s"),
        k.notify_prefix(),
        k.notify_recent(),
    ] == [
        "P:q:{s}",
        "P:inflight:{s}:o:3",
        "P:inflight-index:{s}",
        "P:state:P:inflight:{s}:o:3",
        "P:hb:o",
        "P:hb:{s}:o",
        "P:dead:{s}",
        "P:stats:s:29666666",
        "P:recent-errors",
        "P:notify:q:{s}",
        "P:notify:tapped:{s}",
        "P:notify",
        "P:notify:recent",
    ]
    # Shard N > 0: the tag ``{s~N}`` in every key of that shard.
    assert [
        k.queue("s", 3),
        k.inflight("s", "o", 3, 1023),
        k.inflight_index("s", 1),
        k.shard_heartbeat("o", "s", 2),
        k.dead("s", 7),
        k.notify_queue("s", 3),
        k.notify_tapped("s", 3),
    ] == [
        "P:q:{s~3}",
        "P:inflight:{s~1023}:o:3",
        "P:inflight-index:{s~1}",
        "P:hb:{s~2}:o",
        "P:dead:{s~7}",
        "P:notify:q:{s~3}",
        "P:notify:tapped:{s~3}",
    ]
    assert [buffer.Keys.tag("s"), buffer.Keys.tag("s", 1)] == ["{s}", "{s~1}"]
    # The layout before hash tags, read only to move it into shard 0.
    assert [
        k.legacy_queue("s"),
        k.legacy_inflight("s", "o", 3),
        k.legacy_inflight_index("s"),
        k.legacy_dead("s"),
        k.legacy_notify_queue("s"),
        k.legacy_notify_tapped("s"),
    ] == ["P:q:s", "P:inflight:s:o:3", "P:inflight-index:s", "P:dead:s", "P:notify:q:s", "P:notify:tapped:s"]
    assert buffer.Keys.owner_of("P:inflight:my:stream:host-1:12") == "host-1"
    assert buffer.Keys.owner_of("P:inflight:{my_stream~12}:host-1:12") == "host-1"
    assert buffer.Keys.seq_of("P:inflight:{s~3}:host-1:1780000000123") == 1_780_000_000_123
    assert buffer.Keys.seq_of("P:inflight:s:host-1:12") == 12


def test_the_random_parts_are_48_node_bits_and_a_16_bit_counter_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "urandom", lambda n: bytes(range(1, n + 1)))
    ids = buffer.EventIds()
    assert ids.new(now_ns=5_000_000).hex() == "000000000005" + "010203040506" + "00000103"


def _far_rows() -> list[list[object]]:
    rng = random.Random(18)
    blob = "".join(rng.choice("0123456789abcdef") for _ in range(20_000))
    return [[bytes(16), blob], [bytes(15) + b"\x01", blob]]


def test_a_back_reference_past_16_kib_decodes() -> None:
    # Small frames never reach back past 16 KiB, so only this one pins the 32 KiB window.
    frame = _golden("frame_o2_far.bin")
    assert buffer.decode_frame(frame) == (["event_id", "jsn"], _far_rows())
    if zlib.ZLIB_RUNTIME_VERSION == GOLDEN_ZLIB:
        assert buffer.encode_frame(["event_id", "jsn"], _far_rows()) == frame


def test_row_arrival_is_the_arrival_column_in_ms_else_the_id_time() -> None:
    eid = bytes.fromhex("0190a1b2c3d45e6f708192a300000001")
    id_ms = 0x0190A1B2C3D4
    assert buffer.ARRIVAL_COLUMN == "collected_at"
    assert buffer.row_arrival_ms(["event_id", "collected_at"], [eid, 1_780_000_000_123_999]) == 1_780_000_000_123
    assert buffer.row_arrival_ms(["event_id", "collected_at"], [eid, True]) == id_ms  # a bool is no time
    assert buffer.row_arrival_ms(["event_id", "collected_at"], [eid, None]) == id_ms
    assert buffer.row_arrival_ms(["event_id", "n"], [eid, 5]) == id_ms
    assert buffer.row_arrival_ms(["n"], [5]) is None
    assert buffer.row_arrival_ms(["event_id"], [eid[:6]]) == id_ms
    assert buffer.row_arrival_ms(["event_id"], [eid[:5]]) is None
    assert buffer.row_arrival_ms(["event_id"], ["0190a1b2c3d4"]) is None
