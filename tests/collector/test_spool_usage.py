"""One reading of the spool's depth: ``oceanus status`` and the collector's
``/_/status`` report the same pending bytes (not yet replayed) for a partly
replayed spool -- not the size of every file in the directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

from collector import status as read_model
from collector.spool import REPLAY_CHUNK_RECORDS, Spool, quarantine_path, usage
from oceanus.commands import status as status_command

Record = tuple[str, bytes]


def test_status_and_status_page_agree_on_a_partly_replayed_spool(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    # A dead worker's file, replayed in part: its offset is saved beside it in ``.off``.
    dead = Spool(spool_dir, 1 << 30).open()
    records = [("pageview", bytes([i % 251]) * 100) for i in range(REPLAY_CHUNK_RECORDS + 10)]
    assert dead.append(records)
    dead.close()
    claimer = Spool(spool_dir, 1 << 30).open()
    pushed: list[Record] = []

    async def push(chunk: list[Record]) -> None:
        pushed.extend(chunk)

    # One chunk of records, cut short by a limit as an outage's recovery round would be.
    asyncio.run(claimer.replay(push, max_records=REPLAY_CHUNK_RECORDS))
    assert len(pushed) == REPLAY_CHUNK_RECORDS
    live = Spool(spool_dir, 1 << 30).open()  # a live worker with an unreplayed append of its own
    assert live.append([("form", b"z" * 50)])
    (dead_path,) = [p for p in spool_dir.glob("spool-*.log") if p.with_suffix(".off").exists()]
    quarantine_path(dead_path).write_bytes(b"q" * 77)  # unreadable bytes kept aside: not pending

    # Record sizes by hand: header 8 + msgpack [fixarray 1, fixstr 1+len, bin8 2+len].
    pageview_record = 8 + 1 + (1 + 8) + (2 + 100)  # 120
    form_record = 8 + 1 + (1 + 4) + (2 + 50)  # 66
    assert dead_path.stat().st_size == len(records) * pageview_record
    assert int(dead_path.with_suffix(".off").read_text()) == REPLAY_CHUNK_RECORDS * pageview_record
    expected = 10 * pageview_record + form_record
    assert expected == 1266

    assert usage(spool_dir).bytes == expected
    assert read_model.spool_status(spool_dir).bytes == expected
    assert status_command.spool_status(None, spool_dir).bytes == expected
    assert read_model.spool_status(spool_dir).files == 2
    assert claimer.pending_bytes + live.pending_bytes == expected
    claimer.close()
    live.close()
