"""Micro-benchmarks of the per-event work: parse + validate + encode, per stream, as the pixel does it.

They run as plain tests under ``--benchmark-disable`` (``make test``) and time
with ``pytest tests/collector/test_bench_pipeline.py --benchmark-enable``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from collector.validate import StreamValidator, parse_query
from oceanus import config
from oceanus.buffer import EventIds, decode_frame, encode_frame

QUERIES = {
    "pageview": (
        "sid=3F9A1C2E7B4D4E8F9A0B1C2D3E4F5A6B&evt=view&uid=u1234567"
        "&url=https%3A%2F%2Fwww.bizocean.jp%2Fdoc%2Fdetail%2F123456%2F&ref=https%3A%2F%2Fwww.google.com%2F"
        "&tit=%E8%AB%8B%E6%B1%82%E6%9B%B8+%E3%83%86%E3%83%B3%E3%83%97%E3%83%AC&scr=1920x1080&vie=1280x720&enc=UTF-8"
        "&utm_source=newsletter"
    ),
    "form": "sid=ab12&name=+Taro+Yamada+&cname=bizocean&email=Taro%40Example.JP&tel=03-1234-5678&jsn=%7B%22q%22%3A1%7D",
    "ecview": (
        "user_id=u-778&age=34&gender=Female&occupation=engineer&screen=1920x1080&viewed_at=2024-05-01T10%3A00%3A00Z"
    ),
}
BATCH = 32


def _pipeline(cfg: config.Config, stream: str) -> Callable[[], bytes]:
    validator = StreamValidator(cfg.streams[stream], cfg.collector)
    ids = EventIds()
    query = QUERIES[stream].encode()
    columns = cfg.streams[stream].columns

    def run() -> bytes:
        rows: list[list[Any]] = []
        for _ in range(BATCH):
            values = validator.query_values(query)
            rows.append([ids.new(), 1_700_000_000_000_000, "198.51.100.7", "Mozilla/5.0", "pc", *values])
        return encode_frame(columns, rows)

    return run


@pytest.mark.parametrize("stream", sorted(QUERIES))
def test_bench_parse_validate_encode(benchmark: Any, default_config: config.Config, stream: str) -> None:
    """One micro-batch of 32 events: parse the query, validate, build rows, encode the frame."""
    frame = benchmark(_pipeline(default_config, stream))
    columns, rows = decode_frame(frame)
    assert len(rows) == BATCH
    assert list(columns) == list(default_config.streams[stream].columns)
    assert all(row[-1] is None or msgspec.json.decode(row[-1]) for row in rows)


@pytest.mark.parametrize("path", ["query_values", "values_of_parse_query"])
@pytest.mark.parametrize("stream", sorted(QUERIES))
def test_bench_query_to_values(benchmark: Any, default_config: config.Config, stream: str, path: str) -> None:
    """One event's query to its field values: the pixel's path, and the dict-then-values path it replaced."""
    validator = StreamValidator(default_config.streams[stream], default_config.collector)
    query = QUERIES[stream].encode()
    if path == "query_values":
        values = benchmark(validator.query_values, query)
    else:
        values = benchmark(lambda: validator.values(parse_query(query), True))
    assert values == validator.values(parse_query(query), True)
