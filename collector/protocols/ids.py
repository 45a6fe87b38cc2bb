"""Event ids and placement times that a retried SDK request reproduces exactly.

Segment and Snowplow SDKs retry a batch whose answer they did not see, so the
same message can arrive twice. The warehouses drop the second copy only when
both copies carry the same ``event_id`` **and** the same ``received_at``: the
DuckDB sink anti-joins a batch with the ids stored inside the batch's
``[min, max]`` of ``received_at``, and BigQuery's ``_dedup`` view partitions by
``(received_at, event_id)``. So for these protocols both columns are functions
of the message, never of the moment it arrived:

- ``received_at`` is the message's own client time (Segment ``originalTimestamp``,
  else ``timestamp``; Snowplow ``dtm``, else ``ttm``) -- the same bytes in every
  retry -- provided it lies within ``own_time_window_s`` of the arrival. A clock
  set to 1970 or 2099 would otherwise put rows in far-away partitions and the
  lag gauge out of all proportion. Outside the window, or without an own time,
  the arrival time is used and a retry is not deduplicated (counted nowhere
  else: the message's own fields still show it).
- ``event_id`` keeps the :class:`oceanus.buffer.EventIds` layout -- 48-bit unix
  milliseconds first -- with that placement time in the prefix, and the other
  80 bits a keyed BLAKE2b of the message id (``messageId``, ``eid``). The key is
  the write key's digest (Segment) or the stream's name (Snowplow), so two
  senders' ids never collide, and nothing in an id tells the write key.

What that does to ordering and lag: ids sort by the client's event time rather
than by arrival (within the window), and ``oceanus_lag_seconds`` -- read from
the first id of the oldest waiting frame -- includes the time the event spent
in the SDK's queue, at most the window. The real arrival time is kept in the
streams' ``collected_at`` column.
"""

from __future__ import annotations

import hashlib

#: Default of ``own_time_window_s`` (1 hour in seconds): SDK retries finish well within it.
OWN_TIME_WINDOW_S = 3600.0
#: Bytes of the keyed hash in an id: 16 bytes minus the 6-byte millisecond prefix.
HASH_BYTES = 10


def placement_us(own_us: int | None, arrival_us: int, window_us: int) -> int:
    """The ``received_at`` of a message: its own time when within the window of arrival."""
    if own_us is not None and -window_us <= own_us - arrival_us <= window_us:
        return own_us
    return arrival_us


def stable_id(placed_us: int, message_id: str, key: bytes) -> bytes:
    """16 bytes: placement milliseconds (48 bits) | BLAKE2b(message id, key) (80 bits)."""
    digest = hashlib.blake2b(message_id.encode("utf-8", "surrogatepass"), digest_size=HASH_BYTES, key=key).digest()
    return (placed_us // 1000).to_bytes(6, "big") + digest
