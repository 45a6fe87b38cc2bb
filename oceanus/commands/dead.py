"""``oceanus dead list|replay|purge``: the rows the warehouse refused.

A dead letter (``P:dead:{stream}``) is the JSON of ``flusher.batch.DeadRow``:
the stream, the sink's reason, and either the row as ``{column: value}`` (the
event id as 32 hex digits, every other value as the frame held it) or, for a
frame that could not be decoded at all, the raw frame in base64.

``replay`` turns the rows back into frames (:func:`oceanus.buffer.encode_frame`,
the event id as its 16 bytes again) and appends them to the stream's queue, so
the flusher writes them once more -- after the config or the table has been
fixed. It moves them in one transaction that watches the dead-letter list: a
dead letter the flusher adds or trims meanwhile makes it start again, so no item
is replayed twice or dropped. Undecodable frames are not replayed (they would
only fail again); they stay listed until ``purge``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import msgspec
import redis

from oceanus import config, redisclient
from oceanus.buffer import Keys, encode_frame
from oceanus.commands import UsageError
from oceanus.errors import OceanusError

#: Rows per replayed frame: the collector's own micro-batch bound.
REPLAY_ROWS_PER_FRAME = 1024
#: Transaction attempts before giving up when the flusher keeps changing the list.
REPLAY_ATTEMPTS = 20


class DeadLetter(msgspec.Struct, frozen=True):
    """Read side of ``flusher.batch.DeadRow`` (the core imports nothing above it)."""

    stream: str
    reason: str
    row: dict[str, Any] | None = None
    frame_b64: str | None = None


_decoder = msgspec.json.Decoder(DeadLetter)
_encoder = msgspec.json.Encoder()


def parse(item: bytes) -> DeadLetter:
    try:
        return _decoder.decode(item)
    except msgspec.DecodeError as exc:
        raise OceanusError(f"a dead letter is not DeadRow JSON: {exc}") from None


def _group_frames(rows: Sequence[dict[str, Any]]) -> list[bytes]:
    """Frames of rows with the same columns, in order, at most REPLAY_ROWS_PER_FRAME rows each."""
    frames: list[bytes] = []
    columns: tuple[str, ...] | None = None
    pending: list[list[Any]] = []
    for row in rows:
        cols = tuple(row)
        if cols != columns or len(pending) >= REPLAY_ROWS_PER_FRAME:
            if pending and columns is not None:
                frames.append(encode_frame(columns, pending))
            columns, pending = cols, []
        values = [bytes.fromhex(v) if c == "event_id" and isinstance(v, str) else v for c, v in row.items()]
        pending.append(values)
    if pending and columns is not None:
        frames.append(encode_frame(columns, pending))
    return frames


def replay(client: redis.Redis, keys: Keys, stream: str, shard: int = 0) -> tuple[int, int]:
    """Move one shard's dead rows back to that shard's queue (one slot per MULTI).
    Returns (rows replayed, frames left dead)."""
    dead_key, queue_key = keys.dead(stream, shard), keys.queue(stream, shard)
    for _ in range(REPLAY_ATTEMPTS):
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(dead_key)  # type: ignore[no-untyped-call]
                items: list[bytes] = pipe.lrange(dead_key, 0, -1)  # type: ignore[assignment]
                letters = [parse(i) for i in items]
                rows = [d.row for d in letters if d.row is not None]
                kept = [i for i, d in zip(items, letters, strict=True) if d.row is None]
                pipe.multi()
                frames = _group_frames(rows)
                if frames:
                    pipe.rpush(queue_key, *frames)
                pipe.delete(dead_key)
                if kept:
                    pipe.rpush(dead_key, *kept)
                pipe.execute()
                return len(rows), len(kept)
            except redis.WatchError:
                continue
    raise OceanusError(f"dead letters of {stream} kept changing; run `oceanus dead replay` again")


def purge(client: redis.Redis, keys: Keys, stream: str, shard: int = 0) -> int:
    with client.pipeline(transaction=True) as pipe:
        pipe.llen(keys.dead(stream, shard))
        pipe.delete(keys.dead(stream, shard))
        count, _ = pipe.execute()
    return int(count)


def _streams(cfg: config.Config, only: str | None) -> list[str]:
    if only is None:
        return list(cfg.streams)
    if only not in cfg.streams:
        raise UsageError(f"--stream {only}: no such stream (known: {', '.join(cfg.streams)})")
    return [only]


def main(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    keys = Keys(cfg.redis.key_prefix)
    client = redisclient.sync_client(cfg.redis)
    out = sys.stdout
    try:
        for stream in _streams(cfg, args.stream):
            shards = range(cfg.streams[stream].shards)
            if args.action == "list":
                # Shard by shard, each list in its order, at most --limit in all.
                total, items = 0, list[bytes]()
                for shard in shards:
                    key = keys.dead(stream, shard)
                    total += int(client.llen(key))
                    if len(items) < args.limit:
                        some: list[bytes] = client.lrange(key, 0, args.limit - len(items) - 1)  # type: ignore[assignment]
                        items += some
                out.write(f"{stream}: {total} dead letter(s)\n")
                for item in items:
                    d = parse(item)
                    what = _encoder.encode(d.row).decode() if d.row is not None else "(undecodable frame)"
                    out.write(f"  {d.reason}\n    {what}\n")
                if total > len(items):
                    out.write(f"  ... {total - len(items)} more (--limit)\n")
            elif args.action == "replay":
                replayed = left = 0
                for shard in shards:
                    r, k = replay(client, keys, stream, shard)
                    replayed, left = replayed + r, left + k
                out.write(
                    f"{stream}: {replayed} row(s) back in the queue"
                    + (f"; {left} undecodable frame(s) left (purge them)" if left else "")
                    + "\n"
                )
            else:
                deleted = sum(purge(client, keys, stream, shard) for shard in shards)
                out.write(f"{stream}: {deleted} dead letter(s) deleted\n")
    except redisclient.REDIS_ERRORS as exc:
        raise OceanusError(f"Redis at {cfg.redis.url.split('@')[-1]}: {exc}") from None
    finally:
        client.close()
    return 0
