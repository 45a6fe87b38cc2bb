"""Adaptive batch size per stream: AIMD inside the stream's ``[batch]`` bounds.

The idea of Vector's adaptive request concurrency, applied to rows per write:

- **grow** while there is backlog and the sink keeps up: double the target
  (slow start) until the first sign of congestion, then add ``min_rows`` per
  write (additive increase);
- **shrink** multiplicatively (x ``DECREASE_FACTOR``) when the sink throttles
  or times out, when one write alone takes longer than the stream's latency
  promise ``max_wait_s``, or when its cost per row has *stayed* well above its
  baseline: the median of the last ``LATENCY_WINDOW`` writes beyond
  ``LATENCY_TOLERANCE`` x a slow-moving average. One slow write (a GC pause, a
  DuckDB checkpoint, a neighbour on the CPU) is noise and moves nothing; after
  a latency decrease the baseline is reset to the new level and the window
  emptied (hysteresis), so a sink that got lastingly slower costs one halving,
  not a spiral down to ``min_rows``;
- always within ``min_rows..max_rows`` and under ``max_bytes`` at the stream's
  measured bytes per row.

Frames hold a whole collector micro-batch, so the flusher claims frames, not
rows: :meth:`BatchController.frames_to_claim` converts the row target with the
measured rows per frame. The controller is pure arithmetic (no clock, no I/O),
which is what lets it be tested against a simulated sink.
"""

from __future__ import annotations

import collections
import enum
import math
import statistics

from oceanus.config import BatchConfig
from oceanus.errors import Reason

#: Multiplicative decrease on congestion.
DECREASE_FACTOR = 0.5
#: A median cost per row above this multiple of the baseline counts as rising latency.
#: Noise of +-50 % around a steady cost keeps the median under 1.5x.
LATENCY_TOLERANCE = 2.0
#: Writes in the latency window; the median of a full window is judged (a majority must be slow).
LATENCY_WINDOW = 5
#: Writes shorter than this never count as slow: timer noise dominates them (seconds).
LATENCY_FLOOR_S = 0.02
#: Weight of the newest sample in the running averages (rows per frame, bytes per row).
EWMA_ALPHA = 0.2
#: Weight of the newest sample in the slow-moving cost-per-row baseline.
BASELINE_ALPHA = 0.05
#: A write "used" the target when it had at least this share of it.
FULL_BATCH_SHARE = 0.5
#: Share of ``max_wait_s`` a partial batch may wait for company before it is claimed;
#: the rest is left for the write itself.
LINGER_SHARE = 0.5


class Outcome(enum.Enum):
    OK = "ok"
    THROTTLED = "throttled"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    ERROR = "error"

    @classmethod
    def of(cls, reason: Reason) -> Outcome:
        """What a failure of ``reason`` says about congestion (anything else is an error)."""
        return _CONGESTION.get(reason, cls.ERROR)


#: The reasons that mean "send less at a time".
_CONGESTION: dict[Reason, Outcome] = {
    Reason.THROTTLED: Outcome.THROTTLED,
    Reason.TIMEOUT: Outcome.TIMEOUT,
    Reason.TOO_LARGE: Outcome.TOO_LARGE,
}


class BatchController:
    def __init__(self, bounds: BatchConfig) -> None:
        self.min_rows = bounds.min_rows
        self.max_rows = bounds.max_rows
        self.max_bytes = bounds.max_bytes
        self.max_wait_s = bounds.max_wait_s
        self.linger_s = bounds.max_wait_s * LINGER_SHARE
        self._target = float(bounds.min_rows)
        self.slow_start = True
        self.row_bytes: float | None = None
        self.rows_per_frame: float | None = None
        #: Slow-moving average of the sink's cost per row (seconds) and the recent samples.
        self.cost_per_row_s: float | None = None
        self._recent: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.decreases = 0

    @property
    def target_rows(self) -> int:
        target = int(self._target)
        if self.row_bytes:
            target = min(target, int(self.max_bytes / self.row_bytes))
        return max(1, min(self.max_rows, target))

    def frames_to_claim(self) -> int:
        if not self.rows_per_frame:
            return 1
        return max(1, math.floor(self.target_rows / self.rows_per_frame))

    def observe_frames(self, frames: int, rows: int, nbytes: int) -> None:
        """What a claimed batch held: updates rows per frame and bytes per row."""
        if frames <= 0 or rows <= 0:
            return
        self.rows_per_frame = _ewma(self.rows_per_frame, rows / frames)
        if nbytes > 0:
            self.row_bytes = _ewma(self.row_bytes, nbytes / rows)

    def observe_write(self, rows: int, duration_s: float, outcome: Outcome, backlog: bool) -> None:
        """One sink write call (or failed attempt) and whether more was waiting."""
        if outcome in (Outcome.THROTTLED, Outcome.TIMEOUT, Outcome.TOO_LARGE):
            self._decrease()
            return
        if outcome is not Outcome.OK or rows <= 0:
            return
        if duration_s > self.max_wait_s:
            self._decrease()
            return
        if self._latency_rising(rows, duration_s):
            self._decrease()
        elif backlog and rows >= FULL_BATCH_SHARE * self.target_rows:
            self._increase()

    def _latency_rising(self, rows: int, duration_s: float) -> bool:
        if duration_s <= LATENCY_FLOOR_S:
            return False
        cost = duration_s / rows
        self._recent.append(cost)
        baseline = self.cost_per_row_s
        if baseline is None:
            self.cost_per_row_s = cost
            return False
        if len(self._recent) == LATENCY_WINDOW:
            median = statistics.median(self._recent)
            if median > baseline * LATENCY_TOLERANCE:
                # Re-baseline at the new level: the next decrease needs a further rise
                # and a fresh window of evidence.
                self.cost_per_row_s = median
                self._recent.clear()
                return True
        self.cost_per_row_s = baseline + BASELINE_ALPHA * (cost - baseline)
        return False

    def _increase(self) -> None:
        if self.slow_start:
            self._target = min(float(self.max_rows), self._target * 2)
        else:
            self._target = min(float(self.max_rows), self._target + self.min_rows)

    def _decrease(self) -> None:
        self.slow_start = False
        self.decreases += 1
        self._target = max(float(self.min_rows), self._target * DECREASE_FACTOR)


def _ewma(old: float | None, sample: float) -> float:
    return sample if old is None else old + EWMA_ALPHA * (sample - old)
