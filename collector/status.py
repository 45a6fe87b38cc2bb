"""The backlog's read model: what is waiting where, read once for every page.

The collector's ``/_/status.json`` (:func:`snapshot`, one pipelined read per
poll) and ``oceanus status`` (exact counts, frame by frame) both decode frames
with :func:`summarize`, age the oldest event with :func:`unflushed_age_s` and
read the spool with :func:`spool_status` (``collector.spool.usage``: the bytes
not yet replayed), so the two never disagree on a number they both show.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import msgspec
from redis.exceptions import RedisError

from collector.spool import usage as spool_usage
from oceanus import redisclient
from oceanus.buffer import FrameError, Keys, decode_frame, row_arrival_ms
from oceanus.config import Config

#: Minutes of per-minute history on the status page (the sparkline).
STATUS_HISTORY_MIN = 15
#: Recent validation errors shown.
STATUS_ERRORS_SHOWN = 20
#: Latest notifier outcomes shown (``P:notify:recent``, newest first).
STATUS_NOTIFICATIONS_SHOWN = 20
#: In-flight batches inspected for the oldest unflushed event (bounded work per poll).
STATUS_MAX_INFLIGHT_KEYS = 64
#: Redis work of one status snapshot may take this long before the page says Redis is slow.
STATUS_REDIS_TIMEOUT_S = 2.0


class ShardStatus(msgspec.Struct, kw_only=True):
    """One shard of a stream (``[streams.X] shards``): its queue and who serves it."""

    shard: int
    #: ``host:port`` of the master serving the shard's slot on Redis Cluster; "" on one instance.
    node: str
    backlog_frames: int
    #: Rows in those frames, where the reader counted them (``oceanus status``); the page does not.
    backlog_rows: int | None = None
    #: The flusher that drains the shard: the owner id in its lease (flusher/leases.py). None: no
    #: flusher holds it now (none runs the stream, or the holder died and its lease has not been
    #: taken over yet), so its backlog waits.
    flusher: str | None = None


class StreamStatus(msgspec.Struct, kw_only=True):
    name: str
    #: Events accepted per second over the last 60 s (this minute plus the
    #: overlapping share of the previous one).
    events_per_s: float
    rejected_per_s: float
    #: Rejected / (accepted + rejected) over the same window; 0 when idle.
    reject_ratio: float
    #: Accepted per minute, oldest first, the current (partial) minute last.
    history: list[int]
    backlog_frames: int
    #: Rows in the backlog: exact up to two frames, else frames x the mean of
    #: the head and tail frames (counting every frame would cost a full read).
    backlog_rows: int
    backlog_rows_exact: bool
    inflight_batches: int
    #: Age of the oldest event not yet in the warehouse (queue head or a claimed batch).
    oldest_unflushed_s: float | None
    #: Each shard's part of ``backlog_frames`` (one entry for a stream of one shard).
    shards: list[ShardStatus] = []


class RecentError(msgspec.Struct, kw_only=True):
    stream: str
    field: str
    rule: str
    at: float


class RecentNotification(msgspec.Struct, kw_only=True):
    """One outcome of ``oceanus notify`` (``sent`` or ``dead``), as the notifier recorded it."""

    rule: str
    channel: str
    outcome: str
    at: float
    #: The job id when sent; the reason when dead-lettered (cut to 300 characters by the notifier).
    detail: str


class SpoolStatus(msgspec.Struct, kw_only=True):
    #: Bytes written to the collectors' disk spools and not yet replayed (all workers).
    bytes: int
    files: int


class Snapshot(msgspec.Struct, kw_only=True):
    generated_at: float
    redis_up: bool
    redis_error: str | None = None
    streams: list[StreamStatus]
    recent_errors: list[RecentError]
    #: Newest first; empty where no notifier runs.
    recent_notifications: list[RecentNotification] = []
    spool: SpoolStatus


class _ErrorItem(msgspec.Struct):
    stream: str = ""
    field: str = ""
    rule: str = ""
    at: float = 0.0


_error_item = msgspec.json.Decoder(_ErrorItem)


class _NotificationItem(msgspec.Struct):
    rule: str = ""
    channel: str = ""
    outcome: str = ""
    at: float = 0.0
    detail: str = ""


_notification_item = msgspec.json.Decoder(_NotificationItem)


def shard_nodes(client: Any, keys: Keys, stream: str, shards: int) -> list[str]:
    """The master serving each shard of ``stream`` (``host:port``; "" on one instance), from the
    client's slot map: no round trip per key, and the map follows every MOVED."""
    return [redisclient.node_of(client, keys.queue(stream, shard)) for shard in range(shards)]


def spool_status(directory: str | os.PathLike[str]) -> SpoolStatus:
    """Pending (not yet replayed) spool bytes of every worker: :func:`collector.spool.usage`."""
    used = spool_usage(directory)
    return SpoolStatus(bytes=used.bytes, files=used.files)


class FrameSummary(NamedTuple):
    rows: int
    #: Event time of the frame's oldest row (ms since the epoch); None if unknown.
    oldest_ms: int | None


_UNREADABLE = FrameSummary(0, None)


def summarize(item: Any) -> FrameSummary:
    """Rows and the oldest event time of one frame; no rows if it does not decode."""
    if not isinstance(item, bytes):
        return _UNREADABLE
    try:
        columns, rows = decode_frame(item)
    except FrameError:
        return _UNREADABLE
    if not rows:
        return _UNREADABLE
    # Rows of a frame are in arrival order: the first row arrived first.
    return FrameSummary(len(rows), row_arrival_ms(columns, rows[0]))


def unflushed_age_s(now: float, oldest_ms: Iterable[int | None]) -> float | None:
    """Seconds since the oldest of these events (frames not yet in the warehouse); None if none."""
    known = [ms for ms in oldest_ms if ms is not None]
    return round(max(now * 1000.0 - min(known), 0.0) / 1000.0, 3) if known else None


def _rates(counts: list[tuple[int, int]], now: float) -> tuple[float, float]:
    """Accepted and rejected per second over the last 60 s from per-minute counts
    (``counts[-1]`` the current minute, ``counts[-2]`` the previous one)."""
    share = 1.0 - (now % 60) / 60.0
    acc = counts[-1][0] + counts[-2][0] * share
    rej = counts[-1][1] + counts[-2][1] * share
    return acc / 60.0, rej / 60.0


def _per_stream(minutes: range, shards: int) -> int:
    """Replies per stream in :func:`_fetch`'s first round: the counters, then 5 per shard."""
    return len(minutes) + _PER_SHARD * shards


#: Replies per shard in :func:`_fetch`'s first round: LLEN, head, tail, in-flight set, lease.
_PER_SHARD = 5


def _text(value: Any) -> str | None:
    """A Redis string reply as text (None stays None)."""
    return value.decode() if isinstance(value, bytes) else value


async def _fetch(
    redis: Any, keys: Keys, names: list[str], minutes: range, shards: dict[str, int]
) -> tuple[list[Any], dict[str, list[str]], list[Any]]:
    """Two pipelined round trips: counters, every shard's queue ends and in-flight set, and
    errors; then the head frame of every in-flight batch."""
    pipe = redis.pipeline(transaction=False)
    for name in names:
        for m in minutes:
            pipe.hmget(keys.stats(name, m), "accepted", "rejected")
        for shard in range(shards[name]):
            pipe.llen(keys.queue(name, shard))
            pipe.lindex(keys.queue(name, shard), 0)
            pipe.lindex(keys.queue(name, shard), -1)
            pipe.smembers(keys.inflight_index(name, shard))
            pipe.get(keys.lease(name, shard))
    pipe.lrange(keys.recent_errors(), 0, STATUS_ERRORS_SHOWN - 1)
    pipe.lrange(keys.notify_recent(), 0, STATUS_NOTIFICATIONS_SHOWN - 1)
    results = list(await pipe.execute())
    inflight: dict[str, list[str]] = {}
    base = 0
    for name in names:
        members = [m for s in range(shards[name]) for m in results[base + len(minutes) + _PER_SHARD * s + 3]]
        base += _per_stream(minutes, shards[name])
        inflight[name] = sorted(str(_text(m)) for m in members)[:STATUS_MAX_INFLIGHT_KEYS]
    heads: list[Any] = []
    if any(inflight.values()):
        pipe = redis.pipeline(transaction=False)
        for name in names:
            for key in inflight[name]:
                pipe.lindex(key, 0)
        heads = list(await pipe.execute())
    return results, inflight, heads


async def snapshot(cfg: Config, redis: Any, now: float | None = None) -> Snapshot:
    """Everything the status page shows, from Redis and the spool directory."""
    now = time.time() if now is None else now
    keys = Keys(cfg.redis.key_prefix)
    minute = int(now // 60)
    minutes = range(minute - STATUS_HISTORY_MIN + 1, minute + 1)
    names = list(cfg.streams)
    shards = {name: s.shards for name, s in cfg.streams.items()}
    spool = spool_status(cfg.collector.spool_dir)
    try:
        async with asyncio.timeout(STATUS_REDIS_TIMEOUT_S):
            results, inflight, heads = await _fetch(redis, keys, names, minutes, shards)
    except (RedisError, OSError, TimeoutError) as exc:
        return Snapshot(
            generated_at=now,
            redis_up=False,
            redis_error=str(exc) or type(exc).__name__,
            streams=[],
            recent_errors=[],
            spool=spool,
        )
    streams: list[StreamStatus] = []
    base = 0
    for name in names:
        counts = [(int(a or 0), int(r or 0)) for a, r in results[base : base + len(minutes)]]
        # Each shard's queue is estimated from its own ends; the stream shows their sums.
        frames, rows, exact = 0, 0, True
        oldest: list[int | None] = []
        per_shard: list[ShardStatus] = []
        nodes = shard_nodes(redis, keys, name, shards[name])
        for shard in range(shards[name]):
            at = base + len(minutes) + _PER_SHARD * shard
            length = int(results[at])
            per_shard.append(
                ShardStatus(shard=shard, node=nodes[shard], backlog_frames=length, flusher=_text(results[at + 4]))
            )
            head = summarize(results[at + 1])
            tail_rows = summarize(results[at + 2]).rows
            if length <= 1:
                rows += head.rows if length else 0
            elif length == 2:
                rows += head.rows + tail_rows
            else:
                rows += round(length * (head.rows + tail_rows) / 2)
                exact = False
            frames += length
            oldest.append(head.oldest_ms)
        base += _per_stream(minutes, shards[name])
        oldest += [summarize(heads.pop(0)).oldest_ms for _ in inflight[name]]
        acc_s, rej_s = _rates(counts, now)
        total = acc_s + rej_s
        streams.append(
            StreamStatus(
                name=name,
                events_per_s=round(acc_s, 3),
                rejected_per_s=round(rej_s, 3),
                reject_ratio=round(rej_s / total, 4) if total else 0.0,
                history=[a for a, _r in counts],
                backlog_frames=frames,
                backlog_rows=rows,
                backlog_rows_exact=exact,
                inflight_batches=len(inflight[name]),
                oldest_unflushed_s=unflushed_age_s(now, oldest),
                shards=per_shard,
            )
        )
    errors: list[RecentError] = []
    for raw in results[-2]:
        try:
            item = _error_item.decode(raw)
        except msgspec.DecodeError:
            continue
        # Only names from the contract reach the page; the payload never is in the item.
        errors.append(RecentError(stream=item.stream, field=item.field, rule=item.rule, at=item.at))
    notifications: list[RecentNotification] = []
    for raw in results[-1]:
        try:
            n = _notification_item.decode(raw)
        except msgspec.DecodeError:
            continue
        notifications.append(
            RecentNotification(rule=n.rule, channel=n.channel, outcome=n.outcome, at=n.at, detail=n.detail)
        )
    return Snapshot(
        generated_at=now,
        redis_up=True,
        streams=streams,
        recent_errors=errors,
        recent_notifications=notifications,
        spool=spool,
    )
