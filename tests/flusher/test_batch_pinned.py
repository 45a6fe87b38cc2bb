"""Frames -> Batch, pinned value by value: exact rows, exact dead-letter JSON, exact ``nbytes``.

No server: :class:`~flusher.batch.BatchBuilder` is pure. Each case names the line of
``flusher/batch.py`` whose mutants it tells apart (``make mutate``).
"""

from __future__ import annotations

import base64
import zlib

import msgspec
import pytest

from flusher.batch import BatchBuilder, DeadRow, dead_frame, dead_row, frame_oldest_ms
from oceanus import config
from oceanus.buffer import FRAME_MAGIC, frame_payload
from oceanus.buffer import encode_frame as encode

CFG = config.loads("[streams.s.fields.a]\n[streams.s.fields.b]\n", env={})
STREAM = CFG.streams["s"]
COLS = STREAM.columns  # event_id, received_at, ip, ua, device, a, b, extra
EID = bytes(range(16))
EID2 = bytes(range(16, 32))


def _row(a: object = "A", b: object = "B", extra: object = None, eid: bytes = EID) -> list[object]:
    return [eid, 1_700_000_000_000_000, "203.0.113.7", "UA", "pc", a, b, extra]


def _dead(item: bytes) -> dict[str, object]:
    decoded = msgspec.json.decode(item)
    assert isinstance(decoded, dict)
    return decoded


def test_columns_are_the_server_columns_the_fields_and_extra() -> None:
    assert COLS == ("event_id", "received_at", "ip", "ua", "device", "a", "b", "extra")


def test_frames_in_the_current_columns_pass_through_with_exact_nbytes() -> None:
    f1 = encode(COLS, [_row(), _row("A2", extra='{"k":1}', eid=EID2)])
    f2 = encode(COLS, [_row("A3")])
    built = BatchBuilder(STREAM).build("b-1", [f1, f2])
    assert built.dead == []
    assert built.batch.batch_id == "b-1"
    assert built.batch.columns == COLS
    assert [list(r) for r in built.batch.rows] == [_row(), _row("A2", extra='{"k":1}', eid=EID2), _row("A3")]
    # Both frames' compressed sizes times the first frame's expansion ratio.
    ratio = len(frame_payload(f1)) / len(f1)
    assert ratio > 1.0
    assert built.batch.nbytes == int((len(f1) + len(f2)) * ratio)


def test_nbytes_counts_only_frames_that_decoded_and_takes_the_first_decoded_ratio() -> None:
    bad = FRAME_MAGIC + b"\x00" * 40
    good = encode(COLS, [_row()] * 3)
    built = BatchBuilder(STREAM).build("b", [bad, good])
    assert built.batch.nbytes == int(len(good) * (len(frame_payload(good)) / len(good)))
    assert BatchBuilder(STREAM).build("b", []).batch.nbytes == 0
    assert BatchBuilder(STREAM).build("b", [bad]).batch.nbytes == 0


def test_an_older_column_list_is_mapped_by_name_moved_columns_go_to_extra() -> None:
    # The frame predates `b`, still has `gone`, and lists its columns in another order.
    old = ["a", "event_id", "gone", "received_at", "ip", "ua", "device", "extra"]
    rows: list[list[object]] = [
        ["A0", EID, "g0", 1, "ip0", "ua0", "d0", None],
        ["A1", EID2, "g1", 2, "ip1", "ua1", "d1", '{"u":"x","gone":"own"}'],
        ["A2", EID, None, 3, "ip2", "ua2", "d2", ""],  # a None moved value is not carried over
        ["A3", EID, b"\x01\xff", 4, "ip3", "ua3", "d3", "[1,2]"],  # bytes moved as hex; non-object extra
        ["A4", EID, "g4", 5, "ip4", "ua4", "d4", "not json"],
    ]
    built = BatchBuilder(STREAM).build("b", [encode(old, rows)])
    assert built.dead == []
    assert [list(r) for r in built.batch.rows] == [
        [EID, 1, "ip0", "ua0", "d0", "A0", None, '{"gone":"g0"}'],
        [EID2, 2, "ip1", "ua1", "d1", "A1", None, '{"gone":"own","u":"x"}'],
        [EID, 3, "ip2", "ua2", "d2", "A2", None, ""],  # nothing moved: extra as it was
        [EID, 4, "ip3", "ua3", "d3", "A3", None, '{"gone":"01ff","_extra":[1,2]}'],
        [EID, 5, "ip4", "ua4", "d4", "A4", None, '{"gone":"g4","_extra":"not json"}'],
    ]


def test_an_empty_extra_is_not_folded_in() -> None:
    old = [*COLS, "gone"]
    built = BatchBuilder(STREAM).build("b", [encode(old, [[*_row(extra=""), "g"]])])
    assert [list(r) for r in built.batch.rows] == [[*_row(extra='{"gone":"g"}')]]


def test_without_moved_columns_extra_is_kept_if_text_or_none_else_dropped() -> None:
    # Same columns, another order: the plan is not the identity and nothing moves.
    reordered = ["extra", *COLS[:-1]]
    rows = [["{}", *_row()[:-1]], [None, *_row()[:-1]], [5, *_row()[:-1]], ["", *_row()[:-1]]]
    built = BatchBuilder(STREAM).build("b", [encode(reordered, rows)])
    assert [r[-1] for r in built.batch.rows] == ["{}", None, None, ""]
    assert [list(r[:-1]) for r in built.batch.rows] == [_row()[:-1]] * 4


def test_a_frame_without_extra_gets_none_and_a_missing_first_column_is_none() -> None:
    # No extra column at all; `event_id` is the frame's first column and `a` its last.
    cols = ["event_id", "received_at", "ip", "ua", "device", "a"]
    built = BatchBuilder(STREAM).build("b", [encode(cols, [[EID, 7, "i", "u", "d", "A"]])])
    assert [list(r) for r in built.batch.rows] == [[EID, 7, "i", "u", "d", "A", None, None]]
    # `event_id` first, a column missing in the middle: index 0 is taken, a missing one is None.
    cols = ["event_id", "b", "received_at"]
    built = BatchBuilder(STREAM).build("b", [encode(cols, [[EID, "B", 9]])])
    assert [list(r) for r in built.batch.rows] == [[EID, 9, None, None, None, None, "B", None]]
    # No extra column and a text column first: extra is None, not that text.
    built = BatchBuilder(STREAM).build("b", [encode(["a", "event_id"], [["A", EID]])])
    assert [list(r) for r in built.batch.rows] == [[EID, None, None, None, None, "A", None, None]]


def test_extra_as_the_first_frame_column_is_read() -> None:
    cols = ["extra", "event_id", "a"]
    built = BatchBuilder(STREAM).build("b", [encode(cols, [['{"x":1}', EID, "A"]])])
    assert [list(r) for r in built.batch.rows] == [[EID, None, None, None, None, "A", None, '{"x":1}']]


def test_rows_of_the_wrong_width_are_dead_letters_and_the_rest_goes_on() -> None:
    short = _row()[:-1]
    long = [*_row(), "surplus"]
    f_same = encode(COLS, [_row(), short, _row("A2")])
    f_old = encode([*COLS, "gone"], [[*_row(), "g"], long[:-1]])
    built = BatchBuilder(STREAM).build("b", [f_same, f_old])
    assert [list(r) for r in built.batch.rows] == [_row(), _row("A2"), _row(extra='{"gone":"g"}')]
    assert len(built.dead) == 2
    d0 = _dead(built.dead[0])
    assert d0 == {
        "stream": "s",
        "reason": "row has 7 values for 8 columns",
        "row": {
            "event_id": EID.hex(),
            "received_at": 1_700_000_000_000_000,
            "ip": "203.0.113.7",
            "ua": "UA",
            "device": "pc",
            "a": "A",
            "b": "B",
        },
        "frame_b64": None,
    }
    assert _dead(built.dead[1])["reason"] == "row has 8 values for 9 columns"


def test_a_longer_row_is_a_dead_letter_with_the_values_that_have_a_column() -> None:
    frame = encode(COLS, [[*_row(), "surplus"]])
    built = BatchBuilder(STREAM).build("b", [frame])
    assert built.batch.rows == []
    assert _dead(built.dead[0]) == {
        "stream": "s",
        "reason": "row has 9 values for 8 columns",
        "row": dict(zip(COLS, [EID.hex(), *_row()[1:]], strict=True)),
        "frame_b64": None,
    }


def test_undecodable_frames_and_frames_without_event_id_are_dead_frames() -> None:
    bad = FRAME_MAGIC + b"\x00" * 40
    no_id = encode(["a"], [["A"]])
    built = BatchBuilder(STREAM).build("b", [bad, encode(COLS, [_row()]), no_id])
    assert [list(r) for r in built.batch.rows] == [_row()]
    first, second = (_dead(d) for d in built.dead)
    assert first["stream"] == "s"
    assert str(first["reason"]).startswith("corrupt frame: ")
    assert first["row"] is None
    assert base64.b64decode(str(first["frame_b64"])) == bad
    assert second == {
        "stream": "s",
        "reason": "frame has no event_id column",
        "row": None,
        "frame_b64": base64.b64encode(no_id).decode(),
    }


def test_a_frame_whose_rows_are_not_arrays_is_a_dead_frame() -> None:
    # msgpack of ([columns], [row]) where the row is a map: the tuple decoder refuses it.
    payload = msgspec.msgpack.encode((["event_id"], [{"x": 1}]))
    z = zlib.compressobj(1, zlib.DEFLATED, -15)
    raw = FRAME_MAGIC[:1] + b"1" + z.compress(payload) + z.flush()
    built = BatchBuilder(STREAM).build("b", [raw])
    assert built.batch.rows == []
    (d,) = built.dead
    assert str(_dead(d)["reason"]).startswith("corrupt frame: ")


def test_a_value_that_cannot_be_normalised_dead_letters_only_its_frame() -> None:
    # A moved msgpack extension value cannot be put in extra's JSON.
    ext = msgspec.msgpack.Ext(1, b"x")
    odd = encode([*COLS, "gone"], [[*_row(), ext]])
    built = BatchBuilder(STREAM).build("b", [odd, encode(COLS, [_row("ok")])])
    assert [list(r) for r in built.batch.rows] == [_row("ok")]
    (d,) = built.dead
    got = _dead(d)
    assert str(got["reason"]).startswith("cannot normalise the frame: ")
    assert base64.b64decode(str(got["frame_b64"])) == odd


def test_plans_are_cached_per_column_list() -> None:
    builder = BatchBuilder(STREAM)
    old = [*COLS, "gone"]
    builder.build("b", [encode(old, [[*_row(), "g"]]), encode(old, [[*_row(), "h"]])])
    assert list(builder._plans) == [tuple(old)]
    builder.build("b", [encode(COLS, [_row()])])
    assert list(builder._plans) == [tuple(old), COLS]


def test_dead_row_json_exactly() -> None:
    item = dead_row("s", "why", ["event_id", "raw", "n", "odd"], [EID, bytearray(b"\x00\x10"), 3, 1 + 2j])
    assert item == (
        b'{"stream":"s","reason":"why","row":{"event_id":"' + EID.hex().encode() + b'","raw":"0010","n":3,'
        b'"odd":"(1+2j)"},"frame_b64":null}'
    )
    # An event_id that is not bytes is kept as it is, never hexed.
    assert _dead(dead_row("s", "r", ["event_id", "n"], [None, 1]))["row"] == {"event_id": None, "n": 1}
    # Fewer values than columns, or more: each value with its column, no error.
    assert _dead(dead_row("s", "r", ["a", "b"], ["A"]))["row"] == {"a": "A"}
    assert _dead(dead_row("s", "r", ["a"], ["A", "B"]))["row"] == {"a": "A"}


def test_dead_frame_json_exactly() -> None:
    assert dead_frame("s", "why", b"\x00\xff") == b'{"stream":"s","reason":"why","row":null,"frame_b64":"AP8="}'


def test_dead_row_is_immutable() -> None:
    d = DeadRow(stream="s", reason="r")
    with pytest.raises(AttributeError):
        d.reason = "other"  # type: ignore[misc]


def test_frame_oldest_ms_is_the_first_rows_arrival() -> None:
    cols = ["event_id", "received_at", "collected_at"]
    frame = encode(cols, [[EID, 0, 5_000_999], [EID, 0, 3_000_000], [EID, 0, 9_000_000]])
    assert frame_oldest_ms(frame) == 5_000
    assert frame_oldest_ms(encode(cols, [])) is None
    assert frame_oldest_ms(b"junk") is None
