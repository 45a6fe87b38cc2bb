"""Token buckets counted in events, one per client IP or per stream.

Each granian worker keeps its own buckets at ``rate / workers`` and
``burst / workers`` (:func:`per_worker`): nothing is shared between processes,
so the hot path is one dict lookup and a few float operations. The trade-off
(docs/SECURITY.md): traffic spread over the workers -- many connections, as
browsers and NATs make -- is held to the configured totals; one keep-alive
connection stays on one worker and is held to ``1 / workers`` of them. Never
more than the configured total is admitted, which is what keeps Redis from
filling.

A request of ``n`` events is admitted when the bucket holds ``n`` tokens (or
the whole burst, for a batch larger than it, which then leaves the bucket in
debt), so the first refusal comes exactly at the limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

#: Keys one worker tracks per limit. Past it, buckets that have refilled are dropped
#: (they hold no state a new bucket would not); if most are still draining, all are.
#: ~120 bytes each: 32,768 keys is ~4 MiB per limit per worker.
MAX_TRACKED_KEYS = 32_768


def per_worker(rate_per_s: float, burst: int, workers: int) -> tuple[float, float]:
    """One worker's share of a limit set for the whole collector."""
    return rate_per_s / workers, max(burst / workers, 1.0)


#: The bucket of an exempt key: never limited, and dropped by the first prune
#: (``inf + (now - inf) * rate`` is NaN, which is not below the burst).
_EXEMPT: list[float] = [math.inf, math.inf]


class TokenBuckets:
    __slots__ = ("_buckets", "_burst", "_exempt", "_rate")

    def __init__(self, rate_per_s: float, burst: float, exempt: Callable[[str], bool] | None = None) -> None:
        """``exempt(key)`` is asked once per new key (not per request): true keys are never limited."""
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive (a limit of 0 is no TokenBuckets at all)")
        self._rate = rate_per_s
        self._burst = burst
        self._exempt = exempt
        # key -> [tokens, time of the last update]
        self._buckets: dict[str, list[float]] = {}

    def take(self, key: str, n: int, now: float) -> float:
        """Take ``n`` tokens: 0.0 when admitted, else the seconds until a retry can be."""
        bucket = self._buckets.get(key)
        burst = self._burst
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_KEYS:
                self._prune(now)
            if self._exempt is not None and self._exempt(key):
                self._buckets[key] = _EXEMPT
                return 0.0
            bucket = self._buckets[key] = [burst, now]
            tokens = burst
        elif bucket is _EXEMPT:
            return 0.0
        else:
            tokens = bucket[0] + (now - bucket[1]) * self._rate
            if tokens > burst:
                tokens = burst
        need = n if n < burst else burst
        if tokens < need:
            bucket[0] = tokens
            bucket[1] = now
            return (need - tokens) / self._rate
        bucket[0] = tokens - n
        bucket[1] = now
        return 0.0

    def _prune(self, now: float) -> None:
        rate, burst = self._rate, self._burst
        kept = {k: b for k, b in self._buckets.items() if b[0] + (now - b[1]) * rate < burst}
        self._buckets = kept if len(kept) < MAX_TRACKED_KEYS // 2 else {}

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(seconds: float) -> int:
    """Whole seconds for ``Retry-After``: rounded up, at least 1."""
    return max(1, math.ceil(seconds))
