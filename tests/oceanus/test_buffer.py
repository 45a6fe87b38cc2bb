from __future__ import annotations

import os
import zlib

import msgspec
import pytest

from oceanus import buffer


def _rows(n: int) -> list[list[object]]:
    ids = buffer.EventIds()
    return [
        [
            ids.new(),
            1_700_000_000_000_000 + i,
            "203.0.113.9",
            "Mozilla/5.0",
            "desktop",
            f"{i:032x}",
            "view",
            None,
            1.5,
            True,
            '{"x":1}',
        ]
        for i in range(n)
    ]


COLS = ["event_id", "received_at", "ip", "ua", "device", "sid", "evt", "uid", "f", "b", "extra"]


@pytest.mark.parametrize("n", [0, 1, 16, 500])
def test_frame_round_trip(n: int) -> None:
    rows = _rows(n)
    frame = buffer.encode_frame(COLS, rows)
    assert frame.startswith(buffer.FRAME_MAGIC)
    assert buffer.decode_frame(frame) == (COLS, rows)


def test_o1_frames_still_decode() -> None:
    # Built by hand, as the previous collector wrote them: b"O1" + zlib(msgpack).
    rows = _rows(3)
    old = b"O1" + zlib.compress(msgspec.msgpack.encode((COLS, rows)), 1)
    assert buffer.decode_frame(old) == (COLS, rows)
    with pytest.raises(buffer.FrameError, match="corrupt"):
        buffer.decode_frame(old[:-3])


def test_dictionary_is_frozen() -> None:
    # Every buffered O2 frame depends on these exact bytes: a change needs a new magic.
    assert len(buffer.FRAME_DICT_O2) == 2012
    assert zlib.crc32(buffer.FRAME_DICT_O2) == 1682085759


def test_dictionary_shrinks_small_frames() -> None:
    rows = _rows(1)
    o1 = b"O1" + zlib.compress(msgspec.msgpack.encode((COLS, rows)), buffer.FRAME_ZLIB_LEVEL)
    assert len(buffer.encode_frame(COLS, rows)) < len(o1) - 40


def test_bad_frames_are_refused() -> None:
    with pytest.raises(buffer.FrameError, match="bad magic"):
        buffer.decode_frame(b'{"json": 1}')
    with pytest.raises(buffer.FrameError):
        buffer.decode_frame(buffer.FRAME_MAGIC + b"garbage")
    with pytest.raises(buffer.FrameError):
        buffer.decode_frame(buffer.FRAME_MAGIC)


def test_no_corrupted_byte_yields_wrong_rows() -> None:
    rows = _rows(4)
    frame = buffer.encode_frame(COLS, rows)
    refused = 0
    for i in range(len(frame)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(frame)
            bad[i] ^= flip
            try:
                decoded = buffer.decode_frame(bytes(bad))
            except buffer.FrameError:
                refused += 1
            else:
                # A flip can leave the data intact: the padding bits after the last
                # deflate block, or a back-reference turned into an equal one (the
                # dictionary repeats text). Then the rows must be exactly the same.
                assert decoded == (COLS, rows), f"byte {i} ^ {flip:#x} changed the rows undetected"
    assert refused >= 0.95 * 3 * len(frame)


def test_every_truncation_and_extension_is_detected() -> None:
    frame = buffer.encode_frame(COLS, _rows(4))
    for cut in range(len(frame)):
        with pytest.raises(buffer.FrameError):
            buffer.decode_frame(frame[:cut])
    with pytest.raises(buffer.FrameError):
        buffer.decode_frame(frame + b"\x00")
    # Bytes slipped in before the checksum: the stream no longer ends where it should.
    with pytest.raises(buffer.FrameError):
        buffer.decode_frame(frame[:-4] + b"\x00" + frame[-4:])


def test_frame_payload_is_the_msgpack() -> None:
    rows = _rows(2)
    assert buffer.frame_payload(buffer.encode_frame(COLS, rows)) == msgspec.msgpack.encode((COLS, rows))


def test_event_ids_unique_and_time_ordered() -> None:
    ids = buffer.EventIds()
    made = [ids.new(now_ns=n * 1_000_000) for n in range(1, 2001)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    assert buffer.event_id_time_ms(made[0]) == 1
    assert len(buffer.event_id_hex(made[0])) == 32


def test_event_ids_differ_after_fork() -> None:
    ids = buffer.EventIds()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(w, ids.new(now_ns=0))
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 16)
    assert child[6:12] != ids.new(now_ns=0)[6:12]


def test_keys() -> None:
    k = buffer.Keys("oc")
    key = k.inflight("pageview", "host-1-abc", 7)
    assert key == "oc:inflight:{pageview}:host-1-abc:7"
    assert buffer.Keys.owner_of(key) == "host-1-abc"
