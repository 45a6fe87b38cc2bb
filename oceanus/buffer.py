"""The Redis contract between the collector and the flusher.

Everything that reads or writes oceanus's Redis keys goes through the names
and the codec in this module.

Keys (``P`` is ``redis.key_prefix``, default ``oceanus``; ``{T}`` is the hash tag
of one shard of a stream, literally in braces: ``{pageview}`` for shard 0,
``{pageview~3}`` for shard 3; ``~`` never occurs in a stream name)::

    P:q:{T}                      LIST   frames waiting to be flushed (RPUSH by collectors)
    P:inflight:{T}:{owner}:{seq} LIST   frames claimed by one flusher instance
    P:inflight-index:{T}         SET    names of the shard's in-flight keys
    P:state:{inflight key}       HASH   sink write state kept beside a claimed batch (its first
                                        ``{...}`` is the in-flight key's tag: same slot)
    P:hb:{owner}                 STRING heartbeat of a flusher (or notifier) process (TTL)
    P:hb:{T}:{owner}             STRING the same heartbeat in one shard's slot, kept for every
                                        shard the owner has claimed in: the re-claim script
                                        reads this one
    P:lease:{T}                  STRING the flusher that drains this shard (owner id, PX = the
                                        heartbeat TTL; SET NX to take, renewed with the shard's
                                        heartbeat, deleted on release: flusher/leases.py); the
                                        claim and re-claim scripts check it in the shard's slot
    P:flushers:{stream}          ZSET   the flushers running a stream: owner -> expiry (unix ms),
                                        refreshed every heartbeat; the live ones divide the
                                        stream's shards (one key, never in a script with others)
    P:dead:{T}                   LIST   rows the warehouse refused, with its reason (written in
                                        the MULTI that finishes a batch of that shard)
    P:stats:{stream}:{minute}    HASH   collector counters for one UTC minute (``minute`` =
                                        unix seconds // 60); fields ``accepted`` and
                                        ``rejected`` (events); TTL STATS_TTL_S (48 h)
    P:recent-errors              LIST   newest first, capped at RECENT_ERRORS_MAX items; each
                                        item is JSON ``{"stream", "field", "rule", "at"}``
                                        (``at`` unix seconds) -- never the payload
    P:notify:q:{T}               LIST   the same frames again, for ``oceanus notify``: copied from
                                        ``P:q:{T}`` by the notifier's tap, or by the flusher's
                                        claim for frames the tap had not reached (streams with rules
                                        only; the notifier's own keys live under ``P:notify:`` too,
                                        see notifier/keys.py)
    P:notify:tapped:{T}          STRING the tap counter ``N``: the first ``N`` frames at the head of
                                        ``P:q:{T}`` are in the notify queue already (absent = 0)
    P:notify:recent              LIST   newest first: the latest notifications and failures, JSON
                                        ``{"rule", "channel", "outcome", "at", "detail"}``

Shards (``[streams.X] shards = N``, default 1): a stream's frames are spread over
``N`` queues, each with every key above that one script or MULTI touches with it,
under its own tag -- so on Redis Cluster each shard is one slot, and the shards of
a busy stream land on several masters. A collector worker sends each round's
frames of a stream to one shard and the next round's to the next; flushers and
notifiers claim, tap and re-claim in every shard, and every reader (status, gauges,
``oceanus dead``, ``forget``) sums or lists over them. A batch is one shard's:
claims never span two slots. Lowering ``N`` strands what the dropped shards hold:
drain the stream first.

The layout before the tags (``P:q:pageview``, ``P:inflight:pageview:{owner}:{seq}``,
``P:dead:pageview``, ``P:notify:q:pageview``, ...; the ``legacy_*`` names below)
is moved into shard 0 by the flusher and the notifier (flusher/upgrade.py).

Collectors write the stats and recent errors in the same pipeline as their
RPUSH, once per micro-batch, never per event. Collectors know nothing of rules:
a stream's frames reach the notifier without a second push at the edge.

Who changes ``P:notify:tapped:{T}`` (each in the same Lua script as the
change of ``P:q:{stream}`` it accounts for, so the invariant "the first N frames
of the queue were copied" holds between any two scripts):

- the notifier's tap (notifier/tap.py) copies frames ``N..`` of the queue to the
  notify queue and adds their count;
- the flusher's claim (flusher/claim.py) pops ``n`` frames from the head: for a
  stream with rules it copies those at positions ``>= N`` first (nothing is lost
  while no notifier runs), and sets ``N = max(0, N - n)``; it records in the
  claim's state hash (``_tapped``) how many of its frames are in the notify queue;
- the flusher's give-back pushes a claimed batch back onto the head: ``N`` grows
  by its size when all of it had been copied, else becomes the copied count
  (a shorter prefix: some frames are evaluated twice, none is missed);
- ``oceanus forget`` removing a frame from the copied prefix takes one off ``N``.

Every writer clamps ``N`` to the queue's length. Appends to the tail
(collectors, spool replay, ``oceanus dead replay``) leave ``N`` alone: the tap
reaches them.

Frame: one list item holds one collector micro-batch of one stream. Current
format (written by :func:`encode_frame`)::

    b"O2" + deflate_raw( msgpack( [columns, rows] ), zdict=FRAME_DICT_O2 ) + crc32( msgpack ... )

``deflate_raw`` is a raw DEFLATE stream (RFC 1951, zlib ``wbits=-15``) primed
with the static preset dictionary :data:`FRAME_DICT_O2`; the last 4 bytes are
the CRC-32 of the uncompressed msgpack, big-endian. Older format, still
decoded::

    b"O1" + zlib( msgpack( [columns, rows] ) )

``columns`` is the list of column names the rows were encoded with (the
stream's ``columns`` when the collector encoded them, so a config change while
frames are buffered is harmless); ``rows`` is a list of arrays in that order.
Column values: ``event_id`` 16 raw bytes (time-ordered, see :class:`EventIds`),
``received_at`` int microseconds since the epoch (UTC), ``ip``/``ua``/``device``
str, string fields str, int/float/bool as such, timestamp int microseconds,
json the JSON text (str), ``extra`` the JSON text of unknown keys or nil.
Absent optional values are nil.

Why one compressed item per micro-batch: Redis memory divided by bytes per
buffered event is how long an outage oceanus rides out. A plain JSON item per
event costs well over 200 B in Redis for a ~170 B pageview; a compressed frame
of many similar rows costs a fraction of that.

Why a preset dictionary: a small frame cannot compress against itself, so its
column list, msgpack framing and user-agent text were paid in full in every
frame (a one-row O1 frame was ~390 B). The dictionary holds those fragments so
even a one-row frame refers back to them. It is part of the format: it is a
constant of this module, never derived from the runtime config (frames outlive
config changes), and pinned by a test -- changing it means a new magic (``O3``)
with the old dictionary kept for decoding. The zlib header and Adler-32 are
replaced by the CRC-32 trailer: 4 bytes instead of 6 (10 with a dictionary id),
and a corrupt frame is still refused (:class:`FrameError`) before it reaches a
sink, instead of decoding into wrong values.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Sequence
from typing import Any

import msgspec

#: Magic of the frames :func:`encode_frame` writes.
FRAME_MAGIC = b"O2"
#: Magic of the previous format (zlib without a dictionary), still decoded.
FRAME_MAGIC_O1 = b"O1"
#: Both magics are 2 bytes, so the flusher can slice either off the same way.
FRAME_MAGIC_LEN = 2
#: Lifetime of one per-minute stats hash (48 h in seconds).
STATS_TTL_S = 172_800
#: Validation errors kept in ``P:recent-errors``.
RECENT_ERRORS_MAX = 100

#: zlib level 1: most of the ratio of level 6 on repetitive rows, several times
#: faster (with the dictionary, level 6 saves another ~7 % at 2-3x the CPU).
FRAME_ZLIB_LEVEL = 1
#: Raw DEFLATE with a 32 KiB window: no zlib header or Adler-32 (see the CRC trailer).
_RAW_WBITS = -15
#: Largest payload a frame may inflate to (bytes, 128 MiB); past it the frame is
#: refused (:class:`FrameError`, so the flusher dead-letters it with the raw frame
#: kept) before more is allocated. DEFLATE inflates up to ~1,000x: a forged 300 KB
#: item would otherwise take ~300 MB, and several times that once decoded, on every
#: re-claim. A frame is one collector worker's micro-batch, and each of its rows
#: comes from a request body that worker still holds against
#: ``collector.max_pending_body_bytes`` (32 MiB by default: a request's bytes
#: count until its rows are durable); the msgpack rows re-encode those bodies and
#: add the server columns. 4x that budget leaves room for the per-row columns of
#: many small events; a full micro-batch of 1,024 test events is ~90 KB inflated.
FRAME_MAX_INFLATED_BYTES = 134_217_728
_CRC_BYTES = 4

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(tuple[list[str], list[list[Any]]])


def _o2_dictionary() -> bytes:
    """The O2 preset dictionary. Frozen: every byte is part of the O2 format.

    DEFLATE refers back at most 32 KiB and codes near distances cheaper, so the
    likeliest text comes last: generic web fragments, then common user agents,
    then the msgpack of a one-row frame of each default stream (column list,
    array headers, the ``bin 16`` event id and uint64 timestamp prefixes).
    Literals only -- built from nothing that can change at run time.
    """
    fragments = (
        "Googlebot/2.1; +http://www.google.com/bot.html bingbot YandexBot compatible; MSIE Trident/7.0 "
        "https://www.yahoo.co.jp/ https://search.yahoo.co.jp/ https://www.bing.com/ https://duckduckgo.com/ "
        "https://www.facebook.com/ https://t.co/ https://www.youtube.com/ https://www.google.co.jp/ "
        "https://www.google.com/ ?utm_source=&utm_medium=&utm_campaign= index.html /index.php?id= .html "
        "Shift_JIS EUC-JP utf-8 UTF-8 1280x720 1366x768 1440x900 1536x864 1536x750 2560x1440 375x667 393x852 "
        "414x896 390x844 390x664 1920x1080 click submit purchase desktop bot tablet mobile view "
    )
    user_agents = (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile "
        "Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Safari/605.1.15",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36",
    )
    server = ("event_id", "received_at", "ip", "ua", "device")
    streams = (
        (*server, "user_id", "age", "gender", "occupation", "screen", "viewed_at", "extra"),
        (*server, "sid", "name", "cname", "email", "tel", "jsn", "extra"),
        (*server, "sid", "evt", "uid", "oid", "url", "ref", "tit", "jsn", "scr", "vie", "enc", "extra"),
    )
    parts = [fragments.encode(), " ".join(user_agents).encode()]
    for columns in streams:
        row = [b"\x01\x90" + bytes(14), 1_780_000_000_000_000, "203.0.113.7", user_agents[-1], "desktop"]
        row += [None] * (len(columns) - len(row))
        parts.append(_encoder.encode((columns, [row])))
    return b"".join(parts)


#: The O2 preset dictionary (pinned by length and CRC-32 in the tests).
FRAME_DICT_O2 = _o2_dictionary()


class FrameError(ValueError):
    """A Redis item is not an oceanus frame."""


def encode_frame(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    payload = _encoder.encode((columns, rows))
    # A fresh compressobj per frame: priming it with the dictionary costs less
    # than copying a primed one (~256 KiB of state) at these frame sizes.
    z = zlib.compressobj(FRAME_ZLIB_LEVEL, zlib.DEFLATED, _RAW_WBITS, 8, zlib.Z_DEFAULT_STRATEGY, FRAME_DICT_O2)
    return b"".join((FRAME_MAGIC, z.compress(payload), z.flush(), zlib.crc32(payload).to_bytes(_CRC_BYTES, "big")))


def frame_payload(item: bytes) -> bytes:
    """The msgpack ``[columns, rows]`` inside a frame of any supported format.

    Raises :class:`FrameError` for a foreign item or a corrupt frame; decoding
    the msgpack is the caller's (so the flusher can decode rows as tuples).
    """
    body = memoryview(item)[FRAME_MAGIC_LEN:]
    if item.startswith(FRAME_MAGIC):
        if len(body) <= _CRC_BYTES:
            raise FrameError("corrupt frame: truncated")
        z = zlib.decompressobj(_RAW_WBITS, FRAME_DICT_O2)
        try:
            # One byte over the cap is enough to know it is over: never allocate more.
            payload = z.decompress(body[:-_CRC_BYTES], FRAME_MAX_INFLATED_BYTES + 1)
        except zlib.error as exc:
            raise FrameError(f"corrupt frame: {exc}") from None
        _check_inflated(payload)
        if not z.eof or z.unused_data:
            raise FrameError("corrupt frame: the deflate stream does not end where the checksum starts")
        if zlib.crc32(payload) != int.from_bytes(body[-_CRC_BYTES:], "big"):
            raise FrameError("corrupt frame: checksum mismatch")
        return payload
    if item.startswith(FRAME_MAGIC_O1):
        z = zlib.decompressobj()
        try:
            payload = z.decompress(body, FRAME_MAX_INFLATED_BYTES + 1)
        except zlib.error as exc:
            raise FrameError(f"corrupt frame: {exc}") from None
        _check_inflated(payload)
        if not z.eof:
            raise FrameError("corrupt frame: truncated")
        return payload
    raise FrameError("not an oceanus frame (bad magic)")


def _check_inflated(payload: bytes) -> None:
    if len(payload) > FRAME_MAX_INFLATED_BYTES:
        raise FrameError(
            f"frame inflates past FRAME_MAX_INFLATED_BYTES ({FRAME_MAX_INFLATED_BYTES} bytes); "
            "no collector writes one so large"
        )


def decode_frame(item: bytes) -> tuple[list[str], list[list[Any]]]:
    payload = frame_payload(item)
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise FrameError(f"corrupt frame: {exc}") from None


class Keys:
    """Key names under one prefix.

    A stream's buffer keys carry the hash tag of one (stream, shard): ``{stream}``
    for shard 0, ``{stream~N}`` for shard N (see the module docstring). ``shard``
    defaults to 0, so a one-shard stream reads as before the sharding.
    """

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = "oceanus") -> None:
        self.prefix = prefix

    @staticmethod
    def tag(stream: str, shard: int = 0) -> str:
        """The hash tag of one shard of a stream (``~`` never occurs in a stream name)."""
        return f"{{{stream}}}" if shard == 0 else f"{{{stream}~{shard}}}"

    def queue(self, stream: str, shard: int = 0) -> str:
        return f"{self.prefix}:q:{self.tag(stream, shard)}"

    def inflight(self, stream: str, owner: str, seq: int, shard: int = 0) -> str:
        return f"{self.prefix}:inflight:{self.tag(stream, shard)}:{owner}:{seq}"

    def inflight_index(self, stream: str, shard: int = 0) -> str:
        return f"{self.prefix}:inflight-index:{self.tag(stream, shard)}"

    def state(self, inflight_key: str) -> str:
        """Beside an in-flight key, in its slot: the first ``{...}`` of the name is the in-flight key's tag."""
        return f"{self.prefix}:state:{inflight_key}"

    def heartbeat(self, owner: str) -> str:
        """The process's own heartbeat (the notifier's deliveries check it; no script reads it)."""
        return f"{self.prefix}:hb:{owner}"

    def shard_heartbeat(self, owner: str, stream: str, shard: int = 0) -> str:
        """The heartbeat of ``owner`` in one shard's slot, which the re-claim script checks."""
        return f"{self.prefix}:hb:{self.tag(stream, shard)}:{owner}"

    def lease(self, stream: str, shard: int = 0) -> str:
        """The owner id of the one flusher that drains this shard (flusher/leases.py)."""
        return f"{self.prefix}:lease:{self.tag(stream, shard)}"

    def flushers(self, stream: str) -> str:
        """The flushers running ``stream`` (ZSET owner -> expiry ms); untagged: no script reads it."""
        return f"{self.prefix}:flushers:{stream}"

    def dead(self, stream: str, shard: int = 0) -> str:
        return f"{self.prefix}:dead:{self.tag(stream, shard)}"

    def stats(self, stream: str, minute: int) -> str:
        """Per-minute counters of one stream (``minute`` = unix seconds // 60)."""
        return f"{self.prefix}:stats:{stream}:{minute}"

    def recent_errors(self) -> str:
        return f"{self.prefix}:recent-errors"

    def notify_queue(self, stream: str, shard: int = 0) -> str:
        """Frames of a stream with rules, copied for the notifier by its tap or the flusher's claim
        (``Keys(notify_prefix).queue``)."""
        return f"{self.notify_prefix()}:q:{self.tag(stream, shard)}"

    def notify_tapped(self, stream: str, shard: int = 0) -> str:
        """How many frames at the head of :meth:`queue` the notify queue has (see the module docstring)."""
        return f"{self.notify_prefix()}:tapped:{self.tag(stream, shard)}"

    def notify_prefix(self) -> str:
        """The notifier's namespace: ``Keys(this)`` gives its queue, in-flight and heartbeat keys."""
        return f"{self.prefix}:notify"

    def notify_recent(self) -> str:
        return f"{self.prefix}:notify:recent"

    # The layout before hash tags (one queue per stream, no shard). Only read, to move what a
    # Redis still holds in it into shard 0 (flusher/upgrade.py); never written by this version.

    def legacy_queue(self, stream: str) -> str:
        return f"{self.prefix}:q:{stream}"

    def legacy_inflight(self, stream: str, owner: str, seq: int) -> str:
        """An old in-flight key, as members of :meth:`legacy_inflight_index` name them."""
        return f"{self.prefix}:inflight:{stream}:{owner}:{seq}"

    def legacy_inflight_index(self, stream: str) -> str:
        return f"{self.prefix}:inflight-index:{stream}"

    def legacy_dead(self, stream: str) -> str:
        return f"{self.prefix}:dead:{stream}"

    def legacy_notify_queue(self, stream: str) -> str:
        return f"{self.notify_prefix()}:q:{stream}"

    def legacy_notify_tapped(self, stream: str) -> str:
        return f"{self.notify_prefix()}:tapped:{stream}"

    @staticmethod
    def owner_of(inflight_key: str) -> str:
        """The owner part of an in-flight key (``P:inflight:{tag}:{owner}:{seq}``, either layout)."""
        return inflight_key.rsplit(":", 2)[-2]

    @staticmethod
    def seq_of(inflight_key: str) -> int:
        """The sequence number at the end of an in-flight key (either layout)."""
        return int(inflight_key.rsplit(":", 1)[-1])


class EventIds:
    """Unique, time-ordered 128-bit event ids without a syscall per id.

    Layout (big-endian): 48-bit unix milliseconds | 48-bit random per process |
    32-bit counter. Sorting by id sorts by receive time (to the millisecond);
    two processes collide only if their 48-bit randoms match (and the counter
    matches within the same millisecond). The random part is re-drawn after a
    fork so granian workers never share it.
    """

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._node = int.from_bytes(os.urandom(6), "big") << 32
        self._counter = int.from_bytes(os.urandom(2), "big")

    def new(self, now_ns: int | None = None) -> bytes:
        ms = (now_ns if now_ns is not None else time.time_ns()) // 1_000_000
        self._counter = (self._counter + 1) & 0xFFFFFFFF
        return ((ms << 80) | self._node | self._counter).to_bytes(16, "big")


def event_id_hex(raw: bytes) -> str:
    """The warehouse form of an event id: 32 lowercase hex digits."""
    return raw.hex()


def event_id_time_ms(raw: bytes) -> int:
    return int.from_bytes(raw[:6], "big")


#: A stream column holding the arrival time (µs) where ``event_id`` carries another
#: time: Segment and Snowplow events are placed at the client's own time so that an
#: SDK's retry dedupes, and their arrival is kept in this column.
ARRIVAL_COLUMN = "collected_at"


def row_arrival_ms(columns: Sequence[str], row: Sequence[Any]) -> int | None:
    """When the collector received this row (ms since the epoch), for lag: the
    arrival column if the stream has one, else the time prefix of ``event_id``."""
    if ARRIVAL_COLUMN in columns:
        value = row[columns.index(ARRIVAL_COLUMN)]
        if isinstance(value, int) and not isinstance(value, bool):
            return value // 1000
    try:
        first = row[columns.index("event_id")]
    except ValueError:
        return None
    return event_id_time_ms(first) if isinstance(first, bytes) and len(first) >= 6 else None
