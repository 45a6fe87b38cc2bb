"""The AIMD batch controller alone, driven by a simulated sink (pure arithmetic, no clock)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from flusher.controller import LATENCY_WINDOW, BatchController, Outcome
from oceanus.config import BatchConfig
from oceanus.errors import Reason

BOUNDS = BatchConfig(min_rows=100, max_rows=10_000, max_bytes=9_000_000, max_wait_s=5.0)


class SimulatedSink:
    """Fixed cost per call plus cost per row; throttles above a row capacity."""

    def __init__(self, per_call_s: float = 0.01, per_row_s: float = 1e-5, capacity_rows: int | None = None) -> None:
        self.per_call_s = per_call_s
        self.per_row_s = per_row_s
        self.capacity_rows = capacity_rows

    def write(self, rows: int) -> tuple[float, Outcome]:
        if self.capacity_rows is not None and rows > self.capacity_rows:
            return 0.5, Outcome.THROTTLED
        return self.per_call_s + rows * self.per_row_s, Outcome.OK


def drive(c: BatchController, sink: SimulatedSink, writes: int, backlog: bool = True) -> list[int]:
    sizes = []
    for _ in range(writes):
        rows = c.target_rows
        duration, outcome = sink.write(rows)
        c.observe_write(rows, duration, outcome, backlog)
        sizes.append(rows)
    return sizes


def test_fast_sink_with_backlog_grows_to_max_rows() -> None:
    c = BatchController(BOUNDS)
    assert c.target_rows == 100
    sizes = drive(c, SimulatedSink(), 20)
    assert sizes[:4] == [100, 200, 400, 800]  # slow start doubles
    assert c.target_rows == 10_000


def test_no_backlog_means_no_growth() -> None:
    c = BatchController(BOUNDS)
    drive(c, SimulatedSink(), 20, backlog=False)
    assert c.target_rows == 100


def test_throttling_halves_then_additive_increase_settles_below_capacity() -> None:
    c = BatchController(BOUNDS)
    sink = SimulatedSink(capacity_rows=3000)
    sizes = drive(c, sink, 200)
    assert c.decreases >= 2
    tail = sizes[-100:]
    # AIMD sawtooth: most writes fit, and the size stays within a factor of two of capacity
    assert sum(s <= 3000 for s in tail) >= 90
    assert min(tail) >= 1500
    assert max(tail) <= 3000 + BOUNDS.min_rows
    # after the first decrease growth is additive: + min_rows per write
    first_drop = next(i for i in range(1, len(sizes)) if sizes[i] < sizes[i - 1])
    steps = {
        b - a
        for a, b in zip(sizes[first_drop : first_drop + 5], sizes[first_drop + 1 : first_drop + 6], strict=True)
        if b > a
    }
    assert steps == {BOUNDS.min_rows}


def test_sustained_rising_cost_per_row_shrinks_the_batch_once() -> None:
    c = BatchController(BOUNDS)
    drive(c, SimulatedSink(per_row_s=1e-5), 20)
    before = c.target_rows
    assert before == BOUNDS.max_rows
    # the sink slows down tenfold per row (a struggling warehouse) and stays slow
    slow = SimulatedSink(per_row_s=1e-4)
    writes = 0
    while c.decreases == 0 and writes < LATENCY_WINDOW:
        drive(c, slow, 1)
        writes += 1
    # the majority of a full window must be slow: a single write never decides
    assert writes == LATENCY_WINDOW // 2 + 1
    assert c.decreases == 1
    assert c.target_rows == before // 2
    # re-baselined at the new level: no spiral down, additive growth resumes
    drive(c, slow, 30)
    assert c.decreases == 1
    assert c.target_rows == min(BOUNDS.max_rows, before // 2 + 30 * BOUNDS.min_rows)


def test_one_slow_write_is_noise() -> None:
    c = BatchController(BOUNDS)
    drive(c, SimulatedSink(per_row_s=1e-5), 20)
    before = c.target_rows
    # a checkpoint or GC pause: one write five times slower, then back to normal
    c.observe_write(before, 5 * (0.01 + before * 1e-5), Outcome.OK, True)
    drive(c, SimulatedSink(per_row_s=1e-5), 10)
    assert c.decreases == 0
    assert c.target_rows == before


class NoisySink(SimulatedSink):
    """Every duration multiplied by a uniform factor in [1 - noise, 1 + noise] (CPU contention)."""

    def __init__(self, noise: float, seed: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.noise = noise
        self.rng = random.Random(seed)

    def write(self, rows: int) -> tuple[float, Outcome]:
        duration, outcome = super().write(rows)
        return duration * self.rng.uniform(1 - self.noise, 1 + self.noise), outcome


@pytest.mark.parametrize("seed", range(20))
def test_noise_of_50_percent_never_shrinks_the_batch(seed: int) -> None:
    c = BatchController(BOUNDS)
    sizes = drive(c, NoisySink(0.5, seed, per_row_s=1e-5), 300)
    assert c.decreases == 0
    assert c.target_rows == BOUNDS.max_rows
    assert sizes[-1] == BOUNDS.max_rows


@pytest.mark.parametrize("seed", range(5))
def test_noise_does_not_hide_throttling_or_timeouts(seed: int) -> None:
    c = BatchController(BOUNDS)
    sizes = drive(c, NoisySink(0.5, seed, per_row_s=1e-5, capacity_rows=3000), 200)
    assert c.decreases >= 2
    assert max(sizes[-100:]) <= 3000 + BOUNDS.min_rows
    before = c.target_rows
    c.observe_write(before, 30.0, Outcome.TIMEOUT, True)
    assert c.target_rows == max(BOUNDS.min_rows, int(before * 0.5))


@pytest.mark.parametrize("seed", range(5))
def test_noise_does_not_hide_a_lasting_slowdown(seed: int) -> None:
    c = BatchController(BOUNDS)
    drive(c, NoisySink(0.5, seed, per_row_s=1e-5), 30)
    drive(c, NoisySink(0.5, seed, per_row_s=1e-4), 2 * LATENCY_WINDOW)
    assert c.decreases >= 1


def test_timeouts_decrease_but_never_below_min_rows() -> None:
    c = BatchController(BOUNDS)
    for _ in range(20):
        c.observe_write(c.target_rows, 30.0, Outcome.TIMEOUT, True)
    assert c.target_rows == BOUNDS.min_rows


def test_a_write_slower_than_max_wait_shrinks_the_batch() -> None:
    c = BatchController(BOUNDS)
    drive(c, SimulatedSink(), 10)
    before = c.target_rows
    c.observe_write(before, BOUNDS.max_wait_s + 1, Outcome.OK, True)
    assert c.target_rows == before // 2


def test_max_bytes_bounds_the_target_and_frames_follow_rows_per_frame() -> None:
    c = BatchController(BatchConfig(min_rows=100, max_rows=10_000, max_bytes=1_000_000, max_wait_s=5.0))
    c.observe_frames(frames=10, rows=5000, nbytes=2_000_000)  # 400 B/row, 500 rows/frame
    drive(c, SimulatedSink(), 30)
    assert c.target_rows == 2500  # 1 MB / 400 B
    assert c.frames_to_claim() == 5
    assert BatchController(BOUNDS).frames_to_claim() == 1  # nothing measured yet: one frame


def test_non_congestion_errors_leave_the_size_alone() -> None:
    c = BatchController(BOUNDS)
    drive(c, SimulatedSink(), 5)
    before = c.target_rows
    c.observe_write(before, 0.1, Outcome.ERROR, True)
    assert c.target_rows == before
    assert c.slow_start
    congestion = {
        Reason.THROTTLED: Outcome.THROTTLED,
        Reason.TIMEOUT: Outcome.TIMEOUT,
        Reason.TOO_LARGE: Outcome.TOO_LARGE,
    }
    assert {r: Outcome.of(r) for r in Reason} == {r: congestion.get(r, Outcome.ERROR) for r in Reason}
