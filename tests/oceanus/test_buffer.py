from __future__ import annotations

import os

import pytest

from oceanus import buffer


def test_frame_round_trip() -> None:
    cols = ["event_id", "received_at", "sid", "extra"]
    rows = [[os.urandom(16), 1_700_000_000_000_000, "ab", None], [os.urandom(16), 1, "cd", '{"x":1}']]
    assert buffer.decode_frame(buffer.encode_frame(cols, rows)) == (cols, rows)


def test_bad_frames_are_refused() -> None:
    with pytest.raises(buffer.FrameError):
        buffer.decode_frame(b'{"json": 1}')
    with pytest.raises(buffer.FrameError):
        buffer.decode_frame(buffer.FRAME_MAGIC + b"garbage")


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
    assert key == "oc:inflight:pageview:host-1-abc:7"
    assert buffer.Keys.owner_of(key) == "host-1-abc"
