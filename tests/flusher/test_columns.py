"""The native frame decoder: the same table as the Python path, or None; never a different row."""

from __future__ import annotations

import random
import zlib
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flusher import columns
from flusher.batch import BatchBuilder
from flusher.sinks.duckdb import DuckDBSink
from oceanus.buffer import FRAME_MAGIC, encode_frame
from oceanus.config import StreamConfig
from tests.flusher.helpers import make_config, make_rows


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg = make_config("redis://unused", tmp_path_factory.mktemp("columns") / "w.duckdb")
    s = DuckDBSink(cfg)
    yield s
    s.close()


@pytest.fixture(scope="module")
def stream(sink: DuckDBSink) -> StreamConfig:
    return make_config("redis://unused", sink.path).streams["pv"]


def _python_table(sink: DuckDBSink, stream: StreamConfig, frames: list[bytes]) -> pa.Table:
    built = BatchBuilder(stream).build("b", frames)
    table = sink._arrow(built.batch, built.batch.rows, None, {})
    assert table is not None
    return table


def _native(sink: DuckDBSink, stream: StreamConfig, frames: list[bytes]) -> pa.Table | None:
    layout = sink.arrow_layout(stream)
    assert layout is not None
    return columns.decode(layout, frames)


def test_the_extension_is_built() -> None:
    # A build that lost its compiler would fall back to Python silently: the tests say so.
    assert columns.AVAILABLE


def test_the_table_equals_the_python_paths(sink: DuckDBSink, stream: StreamConfig) -> None:
    frames = [encode_frame(stream.columns, make_rows(stream, n, start)) for n, start in ((300, 0), (1, 300), (0, 301))]
    native = _native(sink, stream, frames)
    assert native is not None
    assert native.num_rows == 301
    assert native.equals(_python_table(sink, stream, frames))


# Values of each field type, nulls included, at their edges.
_strings = st.one_of(st.none(), st.text(max_size=40))
_ints = st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1))
_floats = st.one_of(st.none(), st.floats(allow_nan=False), st.integers(min_value=-(2**53), max_value=2**53))
_bools = st.one_of(st.none(), st.booleans())


@st.composite
def _rows(draw: st.DrawFn, stream: StreamConfig) -> list[list[Any]]:
    n = draw(st.integers(min_value=0, max_value=30))
    base = make_rows(stream, n)
    by_type: dict[str, st.SearchStrategy[Any]] = {
        "string": _strings,
        "json": st.one_of(st.none(), st.just('{"a": 1}')),
        "int": _ints,
        "float": _floats,
        "bool": _bools,
        "timestamp": _ints,
    }
    types = {name: f.type for name, f in stream.fields.items()}
    for row in base:
        for j, col in enumerate(stream.columns):
            if col in types:
                row[j] = draw(by_type[types[col]])
            elif col in ("ip", "ua", "device"):
                row[j] = draw(_strings)
    return base


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_rows_decode_to_the_python_paths_table(sink: DuckDBSink, stream: StreamConfig, data: Any) -> None:
    frames = [encode_frame(stream.columns, data.draw(_rows(stream))) for _ in range(data.draw(st.integers(1, 3)))]
    native = _native(sink, stream, frames)
    assert native is not None
    python = _python_table(sink, stream, frames)
    assert native.schema == python.schema
    for name in native.column_names:
        got_col, want_col = native.column(name), python.column(name)
        if pa.types.is_timestamp(got_col.type):  # past datetime's years: compared as microseconds
            got_col, want_col = got_col.cast(pa.int64()), want_col.cast(pa.int64())
        assert got_col.to_pylist() == want_col.to_pylist(), name


def _with(stream: StreamConfig, column: str, value: Any) -> list[bytes]:
    rows = make_rows(stream, 3)
    rows[1][stream.columns.index(column)] = value
    return [encode_frame(stream.columns, rows)]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("n", "7"),  # a string in an int field
        ("n", 2**63),  # past int64
        ("n", 1.5),
        ("sid", 7),  # an int in a string field
        ("sid", b"raw"),  # bytes, not text
        ("sid", ["nested"]),
        ("sid", {"a": 1}),
        ("ok", 1),  # an int in a bool field
        ("score", "1.5"),
        ("score", 2**53 + 1),  # an int no double holds exactly: pyarrow refuses it, so must this
        ("score", -(2**53) - 1),
        ("event_id", b"\x01" * 15),  # the wrong length
        ("event_id", "0" * 32),  # hex text: the Python path's business
        ("event_id", None),
        ("jsn", msgspec.msgpack.Ext(1, b"x")),  # an extension type
    ],
)
def test_a_value_its_column_does_not_expect_takes_the_python_path(
    sink: DuckDBSink, stream: StreamConfig, column: str, value: Any
) -> None:
    assert _native(sink, stream, _with(stream, column, value)) is None


def _raw_frame(payload: bytes) -> bytes:
    """A frame around any msgpack payload (the collector's framing, without its dictionary)."""
    from oceanus.buffer import _CRC_BYTES, _RAW_WBITS, FRAME_DICT_O2, FRAME_ZLIB_LEVEL

    z = zlib.compressobj(FRAME_ZLIB_LEVEL, zlib.DEFLATED, _RAW_WBITS, 8, zlib.Z_DEFAULT_STRATEGY, FRAME_DICT_O2)
    return FRAME_MAGIC + z.compress(payload) + z.flush() + zlib.crc32(payload).to_bytes(_CRC_BYTES, "big")


def test_ints_a_double_holds_exactly_are_taken_in_a_float_column(sink: DuckDBSink, stream: StreamConfig) -> None:
    for value in (2**53, -(2**53), 7):
        table = _native(sink, stream, _with(stream, "score", value))
        assert table is not None
        assert table.column("score").to_pylist()[1] == float(value)


def test_invalid_utf8_and_odd_shapes_take_the_python_path(sink: DuckDBSink, stream: StreamConfig) -> None:
    rows = make_rows(stream, 2)
    good = msgspec.msgpack.encode((stream.columns, rows))
    assert _native(sink, stream, [_raw_frame(good)]) is not None
    sid = stream.columns.index("sid")
    marker = rows[1][sid].encode()
    # the same length, bytes that are not UTF-8: a lone continuation byte, a surrogate, an overlong form
    for bad in (b"\x80", b"\xed\xa0\x80", b"\xc0\xaf"):
        rows[1][sid] = "x" * len(bad)
        payload = msgspec.msgpack.encode((stream.columns, rows)).replace(b"x" * len(bad), bad, 1)
        assert bad in payload
        assert _native(sink, stream, [_raw_frame(payload)]) is None
    rows[1][sid] = marker.decode()
    short_row = [r[:-1] for r in rows]
    assert _native(sink, stream, [_raw_frame(msgspec.msgpack.encode((stream.columns, short_row)))]) is None
    other_columns = [*stream.columns[:-1], "renamed"]
    assert _native(sink, stream, [_raw_frame(msgspec.msgpack.encode((other_columns, rows)))]) is None
    assert _native(sink, stream, [_raw_frame(good + b"\xc0")]) is None  # trailing bytes
    assert _native(sink, stream, [_raw_frame(good[:-3])]) is None  # truncated
    assert _native(sink, stream, [b"not a frame"]) is None


def test_skipped_columns_step_over_any_value() -> None:
    layout = columns.Layout(("event_id", "junk", "n"), [pa.string(), None, pa.int64()])
    deep: Any = 1
    for _ in range(5):
        deep = [deep, {"k": deep}]
    rows = [[b"\x00" * 16, deep, 1], [b"\x01" * 16, msgspec.msgpack.Ext(2, b"ab"), 2], [b"\x02" * 16, None, None]]
    table = columns.decode(layout, [_raw_frame(msgspec.msgpack.encode((["event_id", "junk", "n"], rows[:1])))])
    assert table is not None
    assert table.to_pylist() == [{"event_id": "00" * 16, "n": 1}]
    # an extension type, even in a skipped column, is refused: the decoder never guesses a length
    assert columns.decode(layout, [_raw_frame(msgspec.msgpack.encode((["event_id", "junk", "n"], rows)))]) is None
    too_deep: Any = 1
    for _ in range(40):
        too_deep = [too_deep]
    frame = _raw_frame(msgspec.msgpack.encode((["event_id", "junk", "n"], [[b"\x00" * 16, too_deep, 1]])))
    assert columns.decode(layout, [frame]) is None


def test_lazy_rows_decode_only_when_a_row_is_asked_for(stream: StreamConfig, tmp_path: Path) -> None:
    rows = make_rows(stream, 5)
    calls: list[int] = []

    def load() -> list[list[Any]]:
        calls.append(1)
        return rows

    lazy = columns.LazyRows(5, load)
    assert len(lazy) == 5
    assert not lazy.loaded
    assert not calls
    assert lazy[2] == rows[2]
    assert list(lazy)[4] == rows[4]
    assert lazy[1:3] == rows[1:3]
    assert calls == [1]
    with pytest.raises(RuntimeError, match="decode to 5 rows, not 6"):
        columns.LazyRows(6, load)[0]


def test_the_builder_gives_a_lazy_batch_with_its_table(sink: DuckDBSink, stream: StreamConfig) -> None:
    frames = [encode_frame(stream.columns, make_rows(stream, 40))]
    layout = sink.arrow_layout(stream)
    built = BatchBuilder(stream).build("b1", frames, layout)
    assert isinstance(built.batch.rows, columns.LazyRows)
    assert not built.batch.rows.loaded
    assert built.batch.arrow is not None
    assert built.batch.arrow.num_rows == 40
    python = BatchBuilder(stream).build("b1", frames)
    assert built.batch.nbytes == python.batch.nbytes
    assert list(built.batch.rows) == list(python.batch.rows)
    # a frame the decoder declines sends the whole batch down the Python path
    fallback = BatchBuilder(stream).build("b2", [*frames, *_with(stream, "n", "7")], layout)
    assert fallback.batch.arrow is None
    assert len(fallback.batch.rows) == 43


def test_a_failing_decoder_leaves_the_batch_to_the_python_path(
    sink: DuckDBSink, stream: StreamConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        @staticmethod
        def decode(*_args: object) -> object:
            raise MemoryError("no room")

    monkeypatch.setattr(columns, "_columns", Broken)
    frames = [encode_frame(stream.columns, make_rows(stream, 4))]
    built = BatchBuilder(stream).build("b", frames, sink.arrow_layout(stream))
    assert built.batch.arrow is None
    assert len(built.batch.rows) == 4
    assert built.dead == []


def _same(a: pa.Table, b: pa.Table) -> bool:
    """Table equality where NaN equals NaN (a flipped byte makes NaNs of many payloads)."""
    if a.equals(b):
        return True
    for name in a.column_names:
        for x, y in zip(a.column(name).to_pylist(), b.column(name).to_pylist(), strict=True):
            if x != y and not (isinstance(x, float) and isinstance(y, float) and x != x and y != y):
                return False
    return True


def test_corrupted_payloads_are_declined_or_decoded_as_the_python_path_decodes_them(
    sink: DuckDBSink, stream: StreamConfig
) -> None:
    from flusher.batch import _frame_decoder
    from flusher.sinks.base import Batch

    layout = sink.arrow_layout(stream)
    assert layout is not None
    assert columns._columns is not None
    rng = random.Random(20261206)
    bases = [msgspec.msgpack.encode((list(stream.columns), make_rows(stream, n))) for n in (1, 3, 8)]
    compared = 0
    for _ in range(4000):
        payload = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        out = columns._columns.decode([bytes(payload)], layout.names, layout.kinds)
        if out is None:
            continue
        # What the decoder took, msgspec takes too, with the same shape and values.
        cols, rows = _frame_decoder.decode(bytes(payload))
        assert list(cols) == list(stream.columns)
        rejected: dict[int, str] = {}
        batch = Batch(stream=stream, batch_id="f", columns=stream.columns, rows=rows)
        python = sink._arrow(batch, rows, None, rejected)
        assert python is not None
        assert not rejected
        native = columns.decode(layout, [_raw_frame(bytes(payload))])
        assert native is not None
        assert _same(native, python), bytes(payload).hex()
        compared += 1
    assert compared > 500  # the mutations must reach the values, not only break the framing


@pytest.mark.parametrize(("arrays", "taken"), [(32, True), (33, False)])
def test_a_skipped_value_nests_at_most_32_arrays_deep(arrays: int, taken: bool) -> None:
    layout = columns.Layout(("event_id", "junk"), [pa.string(), None])
    value: Any = 1
    for _ in range(arrays):
        value = [value]
    frame = _raw_frame(msgspec.msgpack.encode((["event_id", "junk"], [[b"\x00" * 16, value]])))
    assert (columns.decode(layout, [frame]) is not None) is taken
