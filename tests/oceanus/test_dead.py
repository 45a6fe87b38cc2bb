"""Dead letters: bounded in count and age where the flusher writes them, and
``oceanus dead list|replay|purge`` against a real Redis."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis

from flusher.batch import BatchBuilder, dead_frame, dead_row
from flusher.claim import Claimer
from oceanus import cli, config
from oceanus.buffer import EventIds, Keys, decode_frame, encode_frame
from oceanus.errors import ConfigError
from tests.support.servers import RedisServer, as_bytes_list

KEYS = Keys("oceanus")
CFG = config.load(config.REPO_CONFIG, env={})
STREAM = CFG.streams["pageview"]


def _rows(n: int) -> list[list[object]]:
    ids = EventIds()
    rows: list[list[object]] = []
    for i in range(n):
        row: list[object] = [None] * len(STREAM.columns)
        values = {
            "event_id": ids.new(1_780_000_000_000_000_000 + i),
            "received_at": 1_780_000_000_000_000 + i,
            "ip": "203.0.113.7",
            "ua": "Mozilla/5.0",
            "device": "pc",
            "sid": f"s{i}",
            "evt": "view",
            "extra": '{"k":1}',
        }
        for col, value in values.items():
            row[STREAM.columns.index(col)] = value
        rows.append(row)
    return rows


def test_finish_keeps_the_newest_dead_letters_and_expires_the_list(redis_server: RedisServer) -> None:
    async def run() -> None:
        client = aioredis.from_url(redis_server.url)
        claimer = Claimer(client, KEYS, "me", 30.0, dead_letter_max=3, dead_letter_ttl_s=120.0)
        try:
            for round_, items in enumerate(([b"d1", b"d2", b"d3", b"d4", b"d5"], [b"d6", b"d7"])):
                await client.rpush(KEYS.queue("pv"), encode_frame(["event_id"], [[bytes(16)]]))
                claim = await claimer.claim("pv", 10)
                assert claim is not None
                assert await claimer.finish(claim, items) is True, round_
            assert await client.lrange(KEYS.dead("pv"), 0, -1) == [b"d5", b"d6", b"d7"]
            assert 0 < await client.ttl(KEYS.dead("pv")) <= 120
            # A batch without dead letters leaves the list and its expiry alone.
            await client.rpush(KEYS.queue("pv"), encode_frame(["event_id"], [[bytes(16)]]))
            claim = await claimer.claim("pv", 10)
            assert claim is not None
            assert await claimer.finish(claim) is True
            assert await client.llen(KEYS.dead("pv")) == 3
        finally:
            await client.aclose()

    asyncio.run(run())


def test_flusher_defaults_bound_dead_letters() -> None:
    cfg = config.loads(
        "[streams.s.fields.a]\n",
        env={"OCEANUS_FLUSHER_DEAD_LETTER_MAX": "5", "OCEANUS_FLUSHER_DEAD_LETTER_TTL_S": "60"},
    )
    assert (cfg.flusher.dead_letter_max, cfg.flusher.dead_letter_ttl_s) == (5, 60.0)
    assert (config.FlusherConfig().dead_letter_max, config.FlusherConfig().dead_letter_ttl_s) == (100_000, 604_800.0)
    with pytest.raises(ConfigError, match=r"flusher\.dead_letter_max"):
        config.loads("[flusher]\ndead_letter_max = 0\n[streams.s.fields.a]\n")


@pytest.fixture
def dead_env(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> RedisServer:
    monkeypatch.setenv("OCEANUS_REDIS_URL", redis_server.url)
    return redis_server


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main(["dead", *argv, "--config", str(config.REPO_CONFIG)]) == 0
    return capsys.readouterr().out


def test_dead_list_replay_purge(dead_env: RedisServer, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    client = dead_env.client()
    rows = _rows(3)
    corrupt = b"O2 not a frame"
    client.rpush(
        KEYS.dead("pageview"),
        dead_row("pageview", "rejected: sid too long", STREAM.columns, rows[0]),
        dead_frame("pageview", "corrupt frame: truncated", corrupt),
        dead_row("pageview", "rejected: sid too long", STREAM.columns, rows[1]),
        dead_row("pageview", "rejected: bad evt", STREAM.columns, rows[2]),
    )

    out = _run(capsys, "list", "--stream", "pageview", "--limit", "2")
    assert out.splitlines()[0] == "pageview: 4 dead letter(s)"
    assert "rejected: sid too long" in out
    assert "(undecodable frame)" in out
    assert "... 2 more" in out
    first_id = rows[0][STREAM.columns.index("event_id")]
    assert isinstance(first_id, bytes)
    assert first_id.hex() in out

    out = _run(capsys, "replay", "--stream", "pageview")
    assert out == "pageview: 3 row(s) back in the queue; 1 undecodable frame(s) left (purge them)\n"
    frames = as_bytes_list(client.lrange(KEYS.queue("pageview"), 0, -1))
    assert len(frames) == 1
    assert decode_frame(frames[0]) == (list(STREAM.columns), rows)
    # The flusher takes them as any collector frame: every row, no dead letter.
    built = BatchBuilder(STREAM).build("b", frames)
    assert built.dead == []
    assert [list(r) for r in built.batch.rows] == rows
    (left,) = client.lrange(KEYS.dead("pageview"), 0, -1)
    assert base64.b64decode(msgspec.json.decode(left)["frame_b64"]) == corrupt

    assert _run(capsys, "purge", "--stream", "pageview") == "pageview: 1 dead letter(s) deleted\n"
    assert client.exists(KEYS.dead("pageview")) == 0
    out = _run(capsys, "list")
    assert {ln for ln in out.splitlines()} == {f"{s}: 0 dead letter(s)" for s in CFG.streams}
    client.close()


def test_replay_splits_frames_by_columns_and_size(
    dead_env: RedisServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from oceanus.commands import dead

    monkeypatch.setattr(dead, "REPLAY_ROWS_PER_FRAME", 2)
    client = dead_env.client()
    rows = _rows(5)
    short = list(STREAM.columns[:6])
    items = [dead_row("pageview", "r", STREAM.columns, r) for r in rows[:3]]
    items.append(dead_row("pageview", "r", short, rows[3][:6]))
    items.append(dead_row("pageview", "r", STREAM.columns, rows[4]))
    client.rpush(KEYS.dead("pageview"), *items)
    assert _run(capsys, "replay", "--stream", "pageview") == "pageview: 5 row(s) back in the queue\n"
    frames = [decode_frame(f) for f in as_bytes_list(client.lrange(KEYS.queue("pageview"), 0, -1))]
    assert frames == [
        (list(STREAM.columns), rows[:2]),
        (list(STREAM.columns), rows[2:3]),
        (short, [rows[3][:6]]),
        (list(STREAM.columns), rows[4:5]),
    ]
    assert client.exists(KEYS.dead("pageview")) == 0
    client.close()


def test_unknown_stream_is_one_line(dead_env: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dead", "list", "--stream", "nope", "--config", str(config.REPO_CONFIG)]) == 2
    assert "--stream nope: no such stream" in capsys.readouterr().err
