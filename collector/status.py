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


async def _fetch(
    redis: Any, keys: Keys, names: list[str], minutes: range
) -> tuple[list[Any], dict[str, list[str]], list[Any]]:
    """Two pipelined round trips: counters, queue ends, in-flight sets and errors;
    then the head frame of every in-flight batch."""
    pipe = redis.pipeline(transaction=False)
    for name in names:
        for m in minutes:
            pipe.hmget(keys.stats(name, m), "accepted", "rejected")
        pipe.llen(keys.queue(name))
        pipe.lindex(keys.queue(name), 0)
        pipe.lindex(keys.queue(name), -1)
        pipe.smembers(keys.inflight_index(name))
    pipe.lrange(keys.recent_errors(), 0, STATUS_ERRORS_SHOWN - 1)
    pipe.lrange(keys.notify_recent(), 0, STATUS_NOTIFICATIONS_SHOWN - 1)
    results = list(await pipe.execute())
    per_stream = len(minutes) + 4
    inflight: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        members = results[i * per_stream + per_stream - 1]
        inflight[name] = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)[
            :STATUS_MAX_INFLIGHT_KEYS
        ]
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
    spool = spool_status(cfg.collector.spool_dir)
    try:
        async with asyncio.timeout(STATUS_REDIS_TIMEOUT_S):
            results, inflight, heads = await _fetch(redis, keys, names, minutes)
    except (RedisError, OSError, TimeoutError) as exc:
        return Snapshot(
            generated_at=now,
            redis_up=False,
            redis_error=str(exc) or type(exc).__name__,
            streams=[],
            recent_errors=[],
            spool=spool,
        )
    per_stream = len(minutes) + 4

    streams: list[StreamStatus] = []
    for i, name in enumerate(names):
        base = i * per_stream
        counts = [(int(a or 0), int(r or 0)) for a, r in results[base : base + len(minutes)]]
        frames = int(results[base + len(minutes)])
        head = summarize(results[base + len(minutes) + 1])
        tail_rows = summarize(results[base + len(minutes) + 2]).rows
        if frames <= 1:
            rows, exact = head.rows if frames else 0, True
        elif frames == 2:
            rows, exact = head.rows + tail_rows, True
        else:
            rows, exact = round(frames * (head.rows + tail_rows) / 2), False
        oldest = [head.oldest_ms, *(summarize(heads.pop(0)).oldest_ms for _ in inflight[name])]
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
