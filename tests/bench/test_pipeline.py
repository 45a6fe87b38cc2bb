"""``python -m bench pipeline``: its arguments, its verdicts, its search, wrk's markers, and a tiny run."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from bench import pipeline, summary
from bench.collector import PAGEVIEW_QUERY, wrk

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


def test_defaults_and_refusals() -> None:
    args = pipeline.parse_args([])
    assert (args.seconds, args.steps, args.start, args.workers, args.connections, args.threads) == (
        60.0,
        6,
        0.5,
        2,
        64,
        1,
    )
    assert pipeline.parse_args(["--seconds", "3", "--json"]).seconds == 3.0
    for bad in (
        ["--seconds", "0.5"],
        ["--steps", "0"],
        ["--steps", "254"],
        ["--start", "0"],
        ["--start", "1.01"],
        ["--threads", "257"],
        ["--threads", "4", "--connections", "3"],
        ["--warmup", "-1"],
    ):
        with pytest.raises(SystemExit) as exc:
            pipeline.parse_args(bad)
        assert exc.value.code == 2, bad
    assert pipeline.parse_args(["--steps", "253", "--start", "1", "--threads", "256", "--connections", "256"])


def _step(**over: Any) -> dict[str, Any]:
    step: dict[str, Any] = {
        "target_rps": 1000,
        "achieved_rps": 950,
        "non2xx": 0,
        "socket_errors": "",
        "lag_p99_s": 7.0,
        "lost": 0,
    }
    step.update(over)
    return step


def test_a_step_is_sustained_at_each_limit_and_not_past_it() -> None:
    assert pipeline.sustained(_step(), 7.0)
    assert not pipeline.sustained(_step(achieved_rps=949), 7.0)
    assert not pipeline.sustained(_step(lag_p99_s=7.01), 7.0)
    assert not pipeline.sustained(_step(lag_p99_s=float("nan")), 7.0)
    assert not pipeline.sustained(_step(lost=1), 7.0)
    assert not pipeline.sustained(_step(non2xx=1), 7.0)
    assert not pipeline.sustained(_step(socket_errors="connect 0, read 0, write 0, timeout 3"), 7.0)


def test_the_search_halves_the_range_until_the_resolution() -> None:
    search = pipeline.Search(1000.0, 0.5)
    seen = []
    for ok in (True, False, True, False, True, True):
        assert search.next is not None
        seen.append(search.next)
        search.record(search.next, ok)
    assert seen == [500.0, 750.0, 625.0, 687.5, 656.25, 671.875]
    assert (search.lo, search.hi) == (671.875, 687.5)
    assert search.next is None  # 15.6 apart, under 2 % of 1000


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert pipeline.percentile(values, 99) == 99.0
    assert pipeline.percentile(values, 100) == 100.0
    assert pipeline.percentile(values, 50) == 50.0
    assert pipeline.percentile([5.0], 99) == 5.0
    assert math.isnan(pipeline.percentile([], 99))


def test_markers_and_sent_lines_parse() -> None:
    assert pipeline.parse_marker("07010000002a") == (7, 1, 42)
    out = "Running 1s test\n  10 requests in 1.00s\noceanus-sent 0 12\noceanus-sent 1 30\n"
    assert pipeline.sent_count(out) == 42
    with pytest.raises(ValueError, match="step 256"):
        pipeline.lua_script(256)


@contextlib.contextmanager
def _recording_server() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP/1.1 server answering 204 and keeping every request target."""
    targets: list[str] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            with lock:
                targets.append(self.path)
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", targets
    finally:
        server.shutdown()
        server.server_close()


def _oids(targets: list[str]) -> list[str]:
    base = f"/b/pageview?{PAGEVIEW_QUERY}&oid="
    assert all(t.startswith(base) for t in targets)
    return [parse_qs(urlsplit(t).query)["oid"][0] for t in targets]


@needs_wrk
def test_every_request_of_every_wrk_thread_carries_its_own_marker(tmp_path: Path) -> None:
    script = tmp_path / "m.lua"
    script.write_text(pipeline.lua_script(7))
    with _recording_server() as (url, targets):
        res = wrk(url + "/b/pageview", 1, 4, 2, script)
    oids = _oids(targets)
    assert len(oids) > 100
    assert len(set(oids)) == len(oids)
    assert all(len(o) == 12 and int(o, 16) >= 0 for o in oids)
    parsed = [pipeline.parse_marker(o) for o in oids]
    assert {s for s, _, _ in parsed} == {7}
    assert {t for _, t, _ in parsed} == {0, 1}
    # Every thread numbers its own requests from 0 (the last few may still be on their way to
    # the server's threads); the script's done() counts what it built.
    for thread in (0, 1):
        seqs = [q for _, t, q in parsed if t == thread]
        assert min(seqs) == 0
        assert max(seqs) < len(seqs) + 4
    assert len(oids) <= pipeline.sent_count(res["output"]) <= len(oids) + 4


@needs_wrk
def test_a_paced_script_keeps_its_rate_and_its_count_bound(tmp_path: Path) -> None:
    paced = tmp_path / "paced.lua"
    paced.write_text(pipeline.lua_script(9, rate_per_thread=100.0, max_per_thread=10_000))
    capped = tmp_path / "capped.lua"
    capped.write_text(pipeline.lua_script(10, rate_per_thread=1000.0, max_per_thread=50))
    with _recording_server() as (url, targets):
        wrk(url + "/b/pageview", 2, 4, 1, paced)
        wrk(url + "/b/pageview", 1, 4, 1, capped)
    oids = _oids(targets)
    assert len(set(oids)) == len(oids)
    steps = [pipeline.parse_marker(o)[0] for o in oids]
    # 100/s for 2 s, give or take the start and the last slots. wrk's main thread sleeps for the
    # duration and then raises a flag that each thread reads on its 100 ms rate timer, so a run
    # lasts up to 2.1 s: 210 slots, plus one request in flight per connection.
    assert 170 <= steps.count(9) <= 214
    # The bound is checked before each request: at most one more per other connection.
    assert 50 <= steps.count(10) <= 53


@needs_wrk
@pytest.mark.slow
def test_a_tiny_pipeline_run_accounts_for_every_event() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = pipeline.main(["--seconds", "3", "--steps", "1", "--warmup", "0", "--json"])
    assert code == 0
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert result["collector_alone_rps"] > 0
    [step] = result["steps"]
    # Half the collector alone's rate (both rounded to whole events/s on their own).
    assert abs(step["target_rps"] - result["collector_alone_rps"] * 0.5) <= 1, step
    assert step["lost"] == 0, step
    assert step["sent_not_stored"] >= 0, step
    assert step["stored"] >= step["ok"] > 0, step
    assert result["duplicates_all_steps"] == 0
    assert result["lag_bound_s"] == 7.0
    if step["sustained"]:
        assert result["events_per_s"] == step["achieved_rps"]
        assert result["fraction_of_collector"] == round(step["achieved_rps"] / result["collector_alone_rps"], 3)
    for _label, path in summary.HEADLINES["pipeline"]:
        assert summary._get(result, path) is not None, path
