"""``oceanus demo``: the traffic it generates, judged by the collector's own validator."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from collector.validate import Invalid, StreamValidator, compile_streams, parse_pairs
from oceanus import cli, config
from oceanus.commands import demo

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def validators() -> dict[str, StreamValidator]:
    cfg = config.load(REPO / "oceanus.toml", env={})
    return compile_streams(cfg.streams.values(), cfg.collector)


def events_of(req: demo.Request) -> tuple[list[dict[str, Any]], bool]:
    """The events a request carries, and whether they are query/form text."""
    if req.method == "GET":
        return [parse_pairs(urlsplit(req.path).query)], True
    assert req.body is not None
    if req.headers["content-type"] == "application/x-www-form-urlencoded":
        return [parse_pairs(req.body.decode())], True
    body = json.loads(req.body)
    return (body if isinstance(body, list) else [body]), False


def verdict(validators: dict[str, StreamValidator], req: demo.Request) -> bool:
    validator = validators.get(req.stream)
    if validator is None:
        return False  # unknown stream: 404
    events, from_text = events_of(req)
    try:
        for event in events:
            validator.values(dict(event), from_text)
    except Invalid:
        return False
    return True


def test_every_request_is_judged_as_intended(validators: dict[str, StreamValidator]) -> None:
    reqs = list(demo.Generator(random.Random(7), "t").requests(3000))
    assert sum(len(r.ids) for r in reqs) == 3000
    for req in reqs:
        assert verdict(validators, req) is req.valid, (req.kind, req.path, req.body)


def test_mix_is_realistic(validators: dict[str, StreamValidator]) -> None:
    reqs = list(demo.Generator(random.Random(1), "t").requests(5000))
    by_stream: dict[str, int] = {}
    for r in reqs:
        if r.valid:
            by_stream[r.stream] = by_stream.get(r.stream, 0) + len(r.ids)
    invalid = sum(1 for r in reqs if not r.valid)
    assert by_stream["pageview"] > by_stream["ecview"] > by_stream["form"] > 0
    assert 0.02 < invalid / len(reqs) < 0.1
    assert {r.kind for r in reqs} >= {"pixel", "form-encoded", "json", "batch", "unknown-stream", "bad-email"}
    # Each event has its own marker, in a key the collector keeps in `extra`.
    ids = [i for r in reqs for i in r.ids]
    assert len(set(ids)) == len(ids)
    pv = next(r for r in reqs if r.kind == "pixel")
    events, _ = events_of(pv)
    assert events[0]["demo_id"] == pv.ids[0]
    assert events[0]["ref"] is not None
    assert pv.headers["user-agent"]


def test_no_collector_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        code = cli.main(["demo", "--url", f"http://127.0.0.1:{port}", "--events", "5"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert "no collector answers" in err


def test_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--url", "ftp://x", "--events", "5"]) == 2
    assert "--url" in capsys.readouterr().err
