"""The notifier's long-running loops, kept running through any error.

Each loop of ``oceanus notify`` (the evaluator with its taps, housekeeping, the gauges, one delivery
worker per channel) runs under :func:`supervise`. An error ends the loop's pass, never the loop: it is
counted (``oceanus_notify_loop_errors_total{loop}``), logged once, and the loop starts again after
0.1 s, doubling to 2 s while the errors go on. A Redis outage is one such error; so is every reply a
reconnect does not cure (OOM at maxmemory, NOSCRIPT, READONLY mid-failover, BUSY, WRONGTYPE) and a bug.
Ending the loop instead would leave a process that runs, answers /healthz and does nothing. Between an
error and the loop's next complete pass, /readyz names the loop (``Notifier.loops_failing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from notifier.metrics import NotifyMetrics
from oceanus.redisclient import REDIS_ERRORS

log = logging.getLogger("oceanus.notify")

#: A loop stopped by an error starts again after this long, doubling up to the cap (seconds).
RETRY_BASE_S = 0.1
RETRY_MAX_S = 2.0


class LoopState:
    """One loop's errors in a row: its backoff, its log lines, its metric and what /readyz says."""

    __slots__ = ("_errors_total", "errors", "failing_since", "last_error", "name")

    def __init__(self, name: str, metrics: NotifyMetrics) -> None:
        self.name = name
        #: Errors since the loop's last complete pass (0: working).
        self.errors = 0
        self.last_error = ""
        self.failing_since = 0.0
        self._errors_total = metrics.loop_errors.labels(name)

    def ok(self) -> None:
        """A pass of the loop went through: working (again)."""
        if self.errors:
            log.info("%s: working again (failures in a row: %d)", self.name, self.errors)
            self.errors = 0
            self.last_error = ""

    def failed(self, exc: Exception) -> float:
        """Count and log one error (one line per backoff step); returns the wait before the next start."""
        delay: float = min(RETRY_MAX_S, RETRY_BASE_S * 2**self.errors)
        if not self.errors:
            self.failing_since = time.monotonic()
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._errors_total.inc()
        log.warning(
            "%s: %s; starting again in %.1f s (failures in a row: %d)",
            self.name,
            self.last_error,
            delay,
            self.errors,
            # Not a Redis error: a bug, whose traceback the first line carries.
            exc_info=exc if self.errors == 1 and not isinstance(exc, REDIS_ERRORS) else None,
        )
        return delay

    def describe(self) -> str:
        """One line for /readyz while failing."""
        return (
            f"{self.name}: failing for {time.monotonic() - self.failing_since:.1f} s"
            f" (failures in a row: {self.errors}), the last: {self.last_error}"
        )


async def supervise(state: LoopState, body: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> None:
    """Run ``body`` (a loop that returns once ``stopping`` is set, calling ``state.ok()`` after each pass)
    until it returns; after an error, again once its backoff is over."""
    while not stopping.is_set():
        try:
            await body()
            return
        except Exception as exc:  # noqa: BLE001 - the loop outlives every error (module docstring)
            delay = state.failed(exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
