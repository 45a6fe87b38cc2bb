"""The spool file format and its limits pinned by value (no servers: the Spool alone).

A spool file outlives the process that wrote it (a crashed collector's file is
replayed by the next one, possibly a newer version), so the record layout is
checked against bytes in tests/golden/.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import zlib
from pathlib import Path

import msgspec
import pytest

from collector import spool as spool_mod
from collector.spool import (
    FULL_MARGIN_BYTES,
    REPLAY_CHUNK_RECORDS,
    Record,
    Spool,
    drain_budget_s,
    usage,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "spool_records.bin"
GOLDEN_RECORDS: list[Record] = [("pageview", b"O2\x00\x01frame"), ("event", b""), ("pv", bytes(range(256)))]


def _record(stream: str, frame: bytes) -> bytes:
    payload = msgspec.msgpack.encode((stream, frame))
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def _replay(s: Spool, max_records: int | None = None) -> list[list[Record]]:
    pushes: list[list[Record]] = []

    async def push(chunk: list[Record]) -> None:
        pushes.append(list(chunk))

    asyncio.run(s.replay(push, max_records))
    return pushes


def test_appended_records_are_the_golden_bytes(tmp_path: Path) -> None:
    s = Spool(tmp_path, 1 << 20).open()
    assert s.append(GOLDEN_RECORDS)
    own = next(tmp_path.glob("spool-*.log"))
    assert own.read_bytes() == GOLDEN.read_bytes() == b"".join(_record(*r) for r in GOLDEN_RECORDS)
    assert (s.pending_bytes, s.pending_frames, s.pending) == (len(GOLDEN.read_bytes()), 3, True)
    s.close()


def test_a_golden_file_left_by_a_dead_worker_replays_and_is_deleted(tmp_path: Path) -> None:
    left = tmp_path / "spool-1-dead.log"
    shutil.copyfile(GOLDEN, left)
    s = Spool(tmp_path, 1 << 20).open()
    assert s.pending_frames == 3
    assert _replay(s) == [GOLDEN_RECORDS]
    assert not left.exists()
    assert [p.name for p in tmp_path.iterdir()] == [next(tmp_path.glob("spool-*.log")).name]
    assert (s.pending_bytes, s.pending_frames, s.pending) == (0, 0, False)
    s.close()
    assert list(tmp_path.iterdir()) == []  # an empty own file goes at close


def test_append_fits_at_max_bytes_and_refuses_one_byte_past(tmp_path: Path) -> None:
    size = len(_record("pv", b"x" * 10))
    s = Spool(tmp_path / "a", 2 * size).open()
    assert s.append([("pv", b"x" * 10)])
    assert s.append([("pv", b"y" * 10)])  # exactly max_bytes
    assert not s.append([("pv", b"")])
    assert (s.pending_bytes, s.pending_frames) == (2 * size, 2)
    s.close()
    s = Spool(tmp_path / "b", 2 * size - 1).open()
    assert not s.append([("pv", b"x" * 10), ("pv", b"y" * 10)])  # all or nothing
    assert (s.pending_bytes, s.pending_frames) == (0, 0)
    assert next((tmp_path / "b").glob("spool-*.log")).stat().st_size == 0
    s.close()


def test_full_means_less_than_the_margin_left(tmp_path: Path) -> None:
    size = len(_record("pv", b"x"))
    s = Spool(tmp_path, FULL_MARGIN_BYTES + size).open()
    assert FULL_MARGIN_BYTES == 65_536
    assert not s.full
    assert s.append([("pv", b"x")])
    assert not s.full  # exactly the margin left
    s.close()
    s = Spool(tmp_path, FULL_MARGIN_BYTES + size - 1).open()
    assert s.append([("pv", b"x")])
    assert s.full
    s.close()


def test_replay_pushes_chunks_of_256_and_a_limit_saves_the_offset(tmp_path: Path) -> None:
    assert REPLAY_CHUNK_RECORDS == 256
    records: list[Record] = [("pv", b"%04d" % i) for i in range(600)]
    s = Spool(tmp_path, 1 << 20).open()
    assert s.append(records)
    own = next(tmp_path.glob("spool-*.log"))
    one = len(_record("pv", b"0000"))
    pushes = _replay(s, max_records=3)
    assert pushes == [records[:3]]
    assert own.with_suffix(".off").read_text() == str(3 * one)
    assert (s.pending_bytes, s.pending_frames) == (597 * one, 597)
    assert usage(tmp_path) == (597 * one, 1)
    pushes = _replay(s, max_records=300)
    assert [len(p) for p in pushes] == [256, 44]
    assert own.with_suffix(".off").read_text() == str(303 * one)
    pushes = _replay(s)
    assert [len(p) for p in pushes] == [256, 41]
    assert [r for p in pushes for r in p] == records[303:]
    assert own.stat().st_size == 0
    assert not own.with_suffix(".off").exists()
    assert usage(tmp_path) == (0, 0)
    s.close()


def test_replay_chunks_are_bounded_in_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = len(_record("pv", b"x" * 100))
    monkeypatch.setattr(spool_mod, "REPLAY_CHUNK_BYTES", 3 * one)
    s = Spool(tmp_path, 1 << 20).open()
    assert s.append([("pv", b"x" * 100)] * 7)
    assert [len(p) for p in _replay(s)] == [3, 3, 1]
    s.close()


def test_a_push_that_fails_keeps_the_chunk_pending(tmp_path: Path) -> None:
    s = Spool(tmp_path, 1 << 20).open()
    assert s.append([("pv", b"a"), ("pv", b"b")])

    async def refuse(chunk: list[Record]) -> None:
        raise ConnectionError("redis down")

    with pytest.raises(ConnectionError):
        asyncio.run(s.replay(refuse))
    assert (s.pending_frames, s.pending_bytes) == (2, 2 * len(_record("pv", b"a")))
    assert _replay(s) == [[("pv", b"a"), ("pv", b"b")]]
    s.close()


def test_usage_counts_unreplayed_bytes_of_spool_files_only(tmp_path: Path) -> None:
    assert usage(tmp_path / "missing") == (0, 0)
    (tmp_path / "spool-1-a.log").write_bytes(b"x" * 100)
    (tmp_path / "spool-1-a.off").write_text("40")
    (tmp_path / "spool-2-b.log").write_bytes(b"x" * 10)
    (tmp_path / "spool-2-b.off").write_text("11")  # past the end: the whole file is pending
    (tmp_path / "spool-3-c.log").write_bytes(b"x" * 5)
    (tmp_path / "spool-3-c.off").write_text("5")  # fully replayed
    (tmp_path / "spool-4-d.log").write_bytes(b"x" * 7)
    (tmp_path / "spool-4-d.off").write_text("junk")  # unreadable offset: from the start
    (tmp_path / "spool-1-a.quarantine").write_bytes(b"x" * 1000)
    (tmp_path / "other.log").write_bytes(b"x" * 1000)
    assert usage(tmp_path) == (60 + 10 + 7, 3)
    s = Spool(tmp_path / "live", 1 << 20).open()
    assert s.append([("pv", b"a")])
    left = tmp_path / "live" / "spool-9-left.log"
    left.write_bytes(b"y" * 9)
    assert usage(tmp_path / "live") == (len(_record("pv", b"a")) + 9, 2)
    assert usage(tmp_path / "live", unowned_only=True) == (9, 1)
    s.close()


def test_drain_budget_is_ten_seconds_plus_the_replay_at_5_mb_per_s() -> None:
    assert drain_budget_s(0) == 10.0
    assert drain_budget_s(50_000_000) == 20.0
    assert drain_budget_s(1_073_741_824) == pytest.approx(10 + 214.7483648)


def test_usage_at_one_pending_byte(tmp_path: Path) -> None:
    s = Spool(tmp_path, 1 << 20).open()
    own = next(tmp_path.glob("spool-*.log"))
    with own.open("ab") as f:  # one byte not yet replayed in a file a live worker holds
        f.write(b"x")
    (tmp_path / "spool-9-left.log").write_bytes(b"y")
    assert usage(tmp_path) == (2, 2)
    assert usage(tmp_path, unowned_only=True) == (1, 1)
    s.close()


def test_an_offset_past_the_end_of_a_left_file_replays_it_whole(tmp_path: Path) -> None:
    left = tmp_path / "spool-1-dead.log"
    shutil.copyfile(GOLDEN, left)
    left.with_suffix(".off").write_text("99999")  # the file was truncated under its offset
    s = Spool(tmp_path, 1 << 20).open()
    assert _replay(s) == [GOLDEN_RECORDS]
    assert s.quarantined == {spool_mod.TORN_TAIL: 0, spool_mod.CORRUPT: 0}
    s.close()


def test_orphans_found_later_are_each_replayed_once(tmp_path: Path) -> None:
    s = Spool(tmp_path / "a" / "b", 1 << 20).open()  # missing parents are made
    assert s.claim_orphans() == 0
    shutil.copyfile(GOLDEN, tmp_path / "a" / "b" / "spool-1-first.log")
    assert s.claim_orphans() == 1
    shutil.copyfile(GOLDEN, tmp_path / "a" / "b" / "spool-2-second.log")
    assert s.claim_orphans() == 1
    assert s.claim_orphans() == 0
    assert s.pending_frames == 6
    assert s.append([("pv", b"mine")])
    assert [r for p in _replay(s) for r in p] == GOLDEN_RECORDS + GOLDEN_RECORDS + [("pv", b"mine")]
    s.close()


def test_spool_files_are_private_to_the_collector(tmp_path: Path) -> None:
    s = Spool(tmp_path, 1 << 20).open()
    assert s.append([("pv", b"a"), ("pv", b"b")])
    _replay(s, max_records=1)
    own = next(tmp_path.glob("spool-*.log"))
    assert own.stat().st_mode & 0o777 == 0o600
    assert own.with_suffix(".off").stat().st_mode & 0o777 == 0o600
    s.close()


def test_quarantine_is_private_and_a_claimed_file_deleted_meanwhile_is_no_error(tmp_path: Path) -> None:
    left = tmp_path / "spool-1-dead.log"
    left.write_bytes(b"\x00garbage" + GOLDEN.read_bytes())
    other = tmp_path / "spool-2-dead.log"
    shutil.copyfile(GOLDEN, other)
    s = Spool(tmp_path, 1 << 20).open()
    other.unlink()  # an operator cleaned up: the open descriptor still reads it
    assert [r for p in _replay(s) for r in p] == GOLDEN_RECORDS + GOLDEN_RECORDS
    assert s.quarantined[spool_mod.CORRUPT] == 8
    assert spool_mod.quarantine_path(left).stat().st_mode & 0o777 == 0o600
    s.close()


def test_one_bad_byte_costs_one_byte(tmp_path: Path) -> None:
    (tmp_path / "spool-1-dead.log").write_bytes(b"\x92" + GOLDEN.read_bytes())
    s = Spool(tmp_path, 1 << 20).open()
    assert _replay(s) == [GOLDEN_RECORDS]
    assert s.quarantined == {spool_mod.TORN_TAIL: 0, spool_mod.CORRUPT: 1}
    s.close()


def test_a_tail_shorter_than_a_header_is_a_torn_tail(tmp_path: Path) -> None:
    (tmp_path / "spool-1-dead.log").write_bytes(GOLDEN.read_bytes() + b"\x10\x00\x00")
    s = Spool(tmp_path, 1 << 20).open()
    assert _replay(s) == [GOLDEN_RECORDS]
    assert s.quarantined == {spool_mod.TORN_TAIL: 3, spool_mod.CORRUPT: 0}
    s.close()
