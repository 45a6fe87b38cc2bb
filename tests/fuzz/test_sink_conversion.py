"""Every sink's row conversion against random values of every field type.

Two properties:

- whatever a frame holds (a stale collector, a corrupt row), each conversion
  either succeeds, refuses the row per row, or raises an exception the flusher
  isolates (``flusher.worker.row_specific``): never one it would retry for ever;
- whatever the edge accepts (``StreamValidator``) converts in every sink, and
  DuckDB stores it.

Conversions: DuckDB (Arrow table + insert, the real sink on a file), BigQuery
insertAll JSON rows, load-job NDJSON and Parquet, Storage Write API protobuf
and Arrow. Nothing here talks to BigQuery: these are the sinks' encoders.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.validate import Invalid, StreamValidator
from flusher.sinks.base import Batch
from flusher.sinks.bigquery import json_row_converter
from flusher.sinks.bigquery.load import ndjson, parquet
from flusher.sinks.bigquery.storage_write import _Encoder
from flusher.sinks.duckdb import DuckDBSink
from flusher.worker import row_specific
from oceanus import config
from oceanus.buffer import EventIds, decode_frame, encode_frame

PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

TOML = """
[sink.duckdb]
path = "{path}"

[streams.ev.fields]
s = { type = "string" }
n = { type = "int" }
f = { type = "float" }
b = { type = "bool" }
t = { type = "timestamp" }
j = { type = "json" }
"""

_ids = EventIds()
YEAR_10000_US = 253_402_300_800_000_000


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> config.Config:
    path = tmp_path_factory.mktemp("conv") / "w.duckdb"
    return config.loads(TOML.replace("{path}", str(path)), env={})


@pytest.fixture(scope="module")
def duck(cfg: config.Config) -> Iterator[DuckDBSink]:
    sink = DuckDBSink(cfg)
    sink.ensure_tables(list(cfg.streams.values()))
    try:
        yield sink
    finally:
        sink.close()


class _NoState:
    def get(self, key: str) -> str | None:
        return None

    def set(self, **values: str) -> None:
        pass


def _batch(stream: config.StreamConfig, rows: list[list[Any]]) -> Batch:
    return Batch(stream=stream, batch_id=f"b{time.monotonic_ns()}", columns=stream.columns, rows=rows)


def _insert_all(batch: Batch) -> None:
    convert = json_row_converter(batch.stream, batch.columns)
    for row in batch.rows:
        # The client library sends json.dumps of the rows: NaN/Infinity are not JSON.
        json.dumps(convert(row), allow_nan=False)


def _proto(batch: Batch) -> None:
    _Encoder(batch.stream, batch.columns, "proto").proto_rows(batch.rows)


def _arrow(batch: Batch) -> None:
    _Encoder(batch.stream, batch.columns, "arrow").arrow_batch(batch.rows)


ENCODERS: dict[str, Callable[[Batch], Any]] = {
    "insert_all": _insert_all,
    "load_ndjson": ndjson,
    "load_parquet": parquet,
    "storage_write_proto": _proto,
    "storage_write_arrow": _arrow,
}


def _outcome(fn: Callable[[], Any]) -> BaseException | None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the property is about which exceptions
        return exc
    return None


# --------------------------------------------------------------------------- any frame value

#: What msgpack (the frame codec) carries: ints from -2**63 to 2**64 - 1.
frame_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
any_value = st.recursive(
    st.none() | st.booleans() | frame_ints | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
#: Frame values of each column's own type, at and past every edge, plus anything at all.
typed_value = {
    "string": st.text(max_size=30),
    "int": frame_ints,
    "float": st.floats(),
    "bool": st.booleans(),
    # Around the year-10000 boundary too, where BigQuery's timestamp formatting overflows.
    "timestamp": frame_ints | st.integers(min_value=-(2**40), max_value=2**40).map(lambda d: YEAR_10000_US + d),
    "json": st.text(max_size=30) | st.recursive(st.just("0"), lambda t: t.map(lambda x: f"[{x}]"), max_leaves=3000),
}


@st.composite
def frame_rows(draw: st.DrawFn, stream: config.StreamConfig) -> list[Any]:
    types = {name: f.type for name, f in stream.fields.items()}
    row: list[Any] = [_ids.new(), time.time_ns() // 1000, "192.0.2.1", "ua", "pc"]
    for name in stream.fields:
        row.append(draw(typed_value[types[name]] | st.none() | any_value))
    row.append(draw(st.none() | typed_value["json"] | any_value))
    # Through the frame codec, as the flusher gets them.
    [decoded] = decode_frame(encode_frame(stream.columns, [row]))[1]
    return list(decoded)


@PROPS
@given(data=st.data())
def test_any_frame_value_converts_or_is_isolated(cfg: config.Config, duck: DuckDBSink, data: st.DataObject) -> None:
    stream = cfg.streams["ev"]
    row = data.draw(frame_rows(stream))
    batch = _batch(stream, [row])
    for name, encode in ENCODERS.items():
        exc = _outcome(lambda encode=encode: encode(batch))  # type: ignore[misc]
        assert exc is None or row_specific(exc), (name, type(exc), exc, row)
    exc = _outcome(lambda: duck.write(batch, _NoState()))
    # DuckDB refuses a bad value per row (WriteResult.rejected); it never raises for one.
    assert exc is None, (type(exc), exc, row)


# --------------------------------------------------------------------------- what the edge accepts

_offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
iso_times = st.builds(
    lambda dt, tz, sep: dt.replace(tzinfo=tz).isoformat(sep=sep),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)),
    st.none() | _offsets | st.just(UTC),
    st.sampled_from(["T", " "]),
)
edge_text = {
    "s": st.text(max_size=30),
    "n": st.integers(min_value=-(2**64), max_value=2**64).map(str) | st.text(max_size=6),
    "f": st.floats().map(str) | st.text(max_size=6),
    "b": st.sampled_from(["1", "0", "true", "false", "yes", "off", "x"]),
    "t": iso_times | st.integers(min_value=-10, max_value=2**63).map(str) | st.floats().map(str),
    "j": st.text(max_size=20) | st.recursive(st.just("1"), lambda t: t.map(lambda x: f"[{x}]"), max_leaves=800),
}
edge_json = {
    "s": st.text(max_size=30) | any_value,
    "n": st.integers(min_value=-(2**65), max_value=2**65) | any_value,
    "f": st.floats() | st.integers(min_value=-(2**1100), max_value=2**1100) | any_value,
    "b": st.booleans() | any_value,
    "t": iso_times | st.integers(min_value=-(2**64), max_value=2**64) | st.floats() | any_value,
    "j": any_value,
}


@PROPS
@given(data=st.data(), from_text=st.booleans())
def test_what_the_edge_accepts_converts_in_every_sink(
    cfg: config.Config, duck: DuckDBSink, data: st.DataObject, from_text: bool
) -> None:
    stream = cfg.streams["ev"]
    validator = StreamValidator(stream, cfg.collector)
    strategies = edge_text if from_text else edge_json
    event = {k: data.draw(st.none() | v) for k, v in strategies.items()}
    event = {k: v for k, v in event.items() if v is not None}
    extra = data.draw(
        st.dictionaries(st.sampled_from(["u", "v"]), any_value if not from_text else st.text(max_size=9), max_size=2)
    )
    event.update(extra)
    try:
        values = validator.values(dict(event), from_text)
    except Invalid:
        return
    row = [_ids.new(), time.time_ns() // 1000, "192.0.2.1", "ua", "pc", *values]
    [decoded] = decode_frame(encode_frame(stream.columns, [row]))[1]
    batch = _batch(stream, [list(decoded)])
    for name, encode in ENCODERS.items():
        exc = _outcome(lambda encode=encode: encode(batch))  # type: ignore[misc]
        assert exc is None, (name, type(exc), exc, event)
    result = duck.write(batch, _NoState())
    assert (result.written, result.rejected) == (1, ()), (result, event)


def test_an_edge_timestamp_round_trips_through_duckdb(cfg: config.Config, duck: DuckDBSink) -> None:
    # The last microsecond BigQuery stores, given with a time zone.
    stream = cfg.streams["ev"]
    values = StreamValidator(stream, cfg.collector).values({"t": "9999-12-31T09:59:59.999999-14:00"}, True)
    row = [_ids.new(), time.time_ns() // 1000, "192.0.2.1", "ua", "pc", *values]
    assert duck.write(_batch(stream, [row]), _NoState()).written == 1
    got = duck.query(f"SELECT t FROM ev WHERE event_id = '{row[0].hex()}'", 10.0).rows
    assert got == [["9999-12-31T23:59:59.999999"]]
    assert _outcome(lambda: _insert_all(_batch(stream, [row]))) is None


@pytest.mark.parametrize("text", ["[" * 5000, "[" * 5000 + "]" * 4999, "[" * 100 + "}"])
def test_invalid_json_of_any_depth_is_refused_per_row_by_duckdb(
    cfg: config.Config, duck: DuckDBSink, text: str
) -> None:
    stream = cfg.streams["ev"]
    row: list[Any] = [_ids.new(), time.time_ns() // 1000, "192.0.2.1", "ua", "pc", *([None] * 5), text, None]
    result = duck.write(_batch(stream, [row]), _NoState())
    assert result.written == 0
    assert [(e.index, e.reason.split(" (")[0]) for e in result.rejected] == [(0, "j: not valid JSON")]
