"""Lag is measured from arrival, also for streams whose event ids carry the client's time."""

from __future__ import annotations

from collector.status import summarize
from flusher.batch import frame_oldest_ms
from oceanus.buffer import EventIds, encode_frame, row_arrival_ms

ARRIVED_MS = 1_800_000_000_000
CLIENT_MS = ARRIVED_MS - 3_000_000  # the SDK held the event for 50 minutes


def test_the_arrival_column_wins_over_the_event_id_time() -> None:
    eid = EventIds().new(CLIENT_MS * 1_000_000)
    cols = ["event_id", "received_at", "collected_at"]
    rows = [[eid, CLIENT_MS * 1000, ARRIVED_MS * 1000 + 999], [eid, CLIENT_MS * 1000, ARRIVED_MS * 1000 + 5000]]
    assert row_arrival_ms(cols, rows[0]) == ARRIVED_MS
    frame = encode_frame(cols, rows)
    assert frame_oldest_ms(frame) == ARRIVED_MS
    assert summarize(frame) == (2, ARRIVED_MS)


def test_without_an_arrival_column_the_event_id_time_is_the_arrival() -> None:
    eid = EventIds().new(ARRIVED_MS * 1_000_000 + 123_456)
    cols = ["event_id", "received_at"]
    assert row_arrival_ms(cols, [eid, 0]) == ARRIVED_MS
    assert frame_oldest_ms(encode_frame(cols, [[eid, 0]])) == ARRIVED_MS
    # an arrival column without a usable value falls back to the id, never to a wrong number
    assert row_arrival_ms([*cols, "collected_at"], [eid, 0, None]) == ARRIVED_MS
    assert row_arrival_ms([*cols, "collected_at"], [eid, 0, True]) == ARRIVED_MS
    assert row_arrival_ms(["sid"], ["x"]) is None
    assert row_arrival_ms(["event_id"], [b"\x00"]) is None
