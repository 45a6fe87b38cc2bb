"""The AIMD controller's arithmetic against hand-computed sequences.

test_controller.py shows the controller behaves against simulated sinks
(direction and shape); these pin the numbers: every average after every
sample, the exact step at each boundary.
"""

from __future__ import annotations

import pytest

from flusher.controller import BatchController, Outcome
from oceanus.config import BatchConfig

BOUNDS = BatchConfig(min_rows=100, max_rows=10_000, max_bytes=9_000_000, max_wait_s=5.0)


def _exact(x: float) -> object:
    return pytest.approx(x, rel=1e-12, abs=0.0)


def test_rows_per_frame_and_bytes_per_row_are_ewmas_with_alpha_0_2() -> None:
    c = BatchController(BOUNDS)
    assert (c.rows_per_frame, c.row_bytes) == (None, None)
    c.observe_frames(frames=10, rows=1000, nbytes=50_000)  # first sample taken as is: 100 rows/frame, 50 B/row
    assert (c.rows_per_frame, c.row_bytes) == (_exact(100.0), _exact(50.0))
    c.observe_frames(frames=1, rows=200, nbytes=20_000)  # 100 + 0.2 * (200 - 100); 50 + 0.2 * (100 - 50)
    assert (c.rows_per_frame, c.row_bytes) == (_exact(120.0), _exact(60.0))
    c.observe_frames(frames=2, rows=100, nbytes=0)  # 120 + 0.2 * (50 - 120); no bytes measured: unchanged
    assert (c.rows_per_frame, c.row_bytes) == (_exact(106.0), _exact(60.0))
    for frames, rows in ((0, 10), (5, 0), (-1, 10)):
        c.observe_frames(frames=frames, rows=rows, nbytes=1_000)
    assert (c.rows_per_frame, c.row_bytes) == (_exact(106.0), _exact(60.0))


def test_cost_per_row_baseline_moves_by_alpha_0_05_and_ignores_short_writes() -> None:
    c = BatchController(BOUNDS)
    baselines = []
    for duration_s in (0.1, 0.12, 0.08, 0.02, 0.0201, 0.11):
        c.observe_write(1000, duration_s, Outcome.OK, backlog=False)
        baselines.append(c.cost_per_row_s)
    assert baselines == [
        _exact(1e-4),  # first sample: 0.1 s / 1000 rows
        _exact(1.01e-4),  # 1e-4 + 0.05 * (1.2e-4 - 1e-4)
        _exact(0.9995e-4),  # 1.01e-4 + 0.05 * (0.8e-4 - 1.01e-4)
        _exact(0.9995e-4),  # 0.02 s is at the timer-noise floor: not a sample
        _exact(0.959575e-4),  # 0.9995e-4 + 0.05 * (0.201e-4 - 0.9995e-4)
        _exact(0.96659625e-4),  # full window, median 1e-4 < 2x baseline: 0.959575e-4 + 0.05 * (1.1e-4 - ...)
    ]
    assert c.decreases == 0
    assert c.target_rows == 100


def _grown(writes: int) -> BatchController:
    """Slow start from 100 rows: each full write with backlog doubles (durations under the noise floor)."""
    c = BatchController(BOUNDS)
    for _ in range(writes):
        c.observe_write(c.target_rows, 0.001, Outcome.OK, backlog=True)
    return c


def test_a_window_whose_median_passes_twice_the_baseline_halves_once_and_rebaselines() -> None:
    c = _grown(3)
    assert c.target_rows == 800
    assert c.slow_start
    # baseline 1e-4, then 1.1e-4, 1.195e-4, 1.28525e-4 (alpha 0.05 toward 3e-4); the window
    # fills on the fifth write: median 3e-4 > 2 x 1.28525e-4.
    for i, expected in enumerate((1e-4, 1.1e-4, 1.195e-4, 1.28525e-4)):
        c.observe_write(1000, 0.1 if i == 0 else 0.3, Outcome.OK, backlog=False)
        assert c.cost_per_row_s == _exact(expected)
        assert c.decreases == 0
    c.observe_write(1000, 0.3, Outcome.OK, backlog=False)
    assert c.decreases == 1
    assert not c.slow_start
    assert c.target_rows == 400
    assert c.cost_per_row_s == _exact(3e-4)  # re-baselined at the median, window emptied
    for _ in range(4):  # four more at the same cost: the new window is not full yet, nothing moves
        c.observe_write(1000, 0.3, Outcome.OK, backlog=False)
    assert c.cost_per_row_s == _exact(3e-4)
    assert c.decreases == 1


def test_a_full_window_at_the_same_cost_never_decreases() -> None:
    c = _grown(3)
    for duration_s in (0.1, 0.1, 0.1, 0.1, 0.25):  # median 1e-4: one slow write is noise
        c.observe_write(1000, duration_s, Outcome.OK, backlog=False)
    assert c.decreases == 0
    assert c.target_rows == 800
    assert c.cost_per_row_s == _exact(1.075e-4)  # 1e-4 + 0.05 * (2.5e-4 - 1e-4)


def test_slow_start_doubles_then_additive_increase_adds_min_rows() -> None:
    c = BatchController(BOUNDS)
    sizes = []
    for _ in range(4):
        sizes.append(c.target_rows)
        c.observe_write(c.target_rows, 0.001, Outcome.OK, backlog=True)
    c.observe_write(c.target_rows, 0.0, Outcome.THROTTLED, backlog=True)  # 1600 -> 800
    for _ in range(3):
        sizes.append(c.target_rows)
        c.observe_write(c.target_rows, 0.001, Outcome.OK, backlog=True)
    assert [*sizes, c.target_rows] == [100, 200, 400, 800, 800, 900, 1000, 1100]
    assert c.decreases == 1


def test_growth_needs_half_the_target_and_a_backlog() -> None:
    c = _grown(2)
    assert c.target_rows == 400
    c.observe_write(199, 0.001, Outcome.OK, backlog=True)  # under half: the target was not used
    c.observe_write(400, 0.001, Outcome.OK, backlog=False)  # nothing waiting
    c.observe_write(0, 0.001, Outcome.OK, backlog=True)
    assert c.target_rows == 400
    c.observe_write(200, 0.001, Outcome.OK, backlog=True)  # exactly half
    assert c.target_rows == 800


def test_growth_stops_at_max_rows_and_shrinking_at_min_rows() -> None:
    c = _grown(10)
    assert c.target_rows == 10_000
    c.observe_write(10_000, 0.0, Outcome.TOO_LARGE, backlog=True)
    assert c.target_rows == 5000
    c.observe_write(5000, 0.001, Outcome.OK, backlog=True)
    assert c.target_rows == 5100
    for _ in range(7):
        c.observe_write(1, 0.0, Outcome.TIMEOUT, backlog=True)
    assert c.target_rows == 100
    assert c.decreases == 8


def test_a_write_over_max_wait_shrinks_one_at_max_wait_does_not() -> None:
    c = _grown(3)
    c.observe_write(100, BOUNDS.max_wait_s, Outcome.OK, backlog=False)
    assert c.decreases == 0
    c.observe_write(100, BOUNDS.max_wait_s + 0.001, Outcome.OK, backlog=False)
    assert c.decreases == 1
    assert c.target_rows == 400


def test_errors_and_empty_writes_change_nothing() -> None:
    c = _grown(3)
    c.observe_write(800, 9.0, Outcome.ERROR, backlog=True)
    c.observe_write(0, 9.0, Outcome.OK, backlog=True)
    c.observe_write(-1, 0.001, Outcome.OK, backlog=True)
    assert (c.target_rows, c.decreases, c.slow_start, c.cost_per_row_s) == (800, 0, True, None)


def test_the_byte_budget_and_the_frame_conversion_round_down() -> None:
    c = BatchController(BatchConfig(min_rows=100, max_rows=10_000, max_bytes=1000, max_wait_s=4.0))
    assert c.linger_s == 2.0
    assert c.frames_to_claim() == 1  # nothing measured yet
    c.observe_frames(frames=1, rows=30, nbytes=90)  # 3 B/row: 1000 / 3 = 333.3 rows
    assert c.target_rows == 100  # the byte budget (333) is above the target
    c.observe_frames(frames=1, rows=30, nbytes=90_000)  # 3 + 0.2 * (3000 - 3) = 602.4 B/row
    assert c.target_rows == 1  # 1000 / 602.4 = 1.66 -> 1
    c = BatchController(BatchConfig(min_rows=100, max_rows=10_000, max_bytes=1000, max_wait_s=4.0))
    c.observe_frames(frames=1, rows=10, nbytes=0)
    c.observe_frames(frames=1, rows=5, nbytes=0)  # 10 + 0.2 * (5 - 10) = 9 rows/frame
    assert c.frames_to_claim() == 11  # floor(100 / 9)
    c.observe_frames(frames=1, rows=5000, nbytes=0)  # 9 + 0.2 * 4991 = 1007.2 rows/frame
    assert c.frames_to_claim() == 1  # floor(0.099) is 0: at least one frame
    c = BatchController(BatchConfig(min_rows=100, max_rows=10_000, max_bytes=1000, max_wait_s=4.0))
    c.observe_frames(frames=1, rows=3, nbytes=0)
    c.observe_frames(frames=1, rows=13, nbytes=0)  # 3 + 0.2 * 10 = 5 rows/frame
    assert c.frames_to_claim() == 20
