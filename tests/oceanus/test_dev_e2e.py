"""End to end: the real commands as subprocesses.

``oceanus dev`` on free ports with a temp data dir, ``oceanus demo``,
``oceanus query``, ``oceanus status``, SIGINT and restarts. The accounting:
every event the collector answered 2xx is queryable exactly once, no event it
refused with a 4xx is.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from oceanus import discovery
from oceanus.buffer import Keys
from oceanus.commands import devstate
from tests.support.servers import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
STREAMS = ("pageview", "form", "ecview")

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
    pytest.mark.skipif(
        importlib.util.find_spec("flusher.runner") is None or importlib.util.find_spec("collector.server") is None,
        reason="the collector and flusher commands are not in this tree",
    ),
    pytest.mark.timeout(180),
    pytest.mark.integration,  # oceanus dev starts its own redis-server, collector and flusher
]


def oceanus(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oceanus.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )


class Dev:
    """One ``oceanus dev`` run; output in files so a full pipe never blocks it."""

    def __init__(self, data_dir: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: devstate.DevInfo | None = None
        self.runs = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> devstate.DevInfo:
        self.runs += 1
        out = open(self.data_dir.parent / f"dev-{self.runs}.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oceanus.cli", "dev", "--data-dir", str(self.data_dir), "--port", str(self.port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=self.env,
        )
        out.close()
        proc = self.proc

        def ready() -> devstate.DevInfo | None:
            if proc.poll() is not None:
                raise AssertionError(f"oceanus dev exited {proc.returncode}:\n{self.output()}")
            info = devstate.read_dev_info(self.data_dir)
            # The banner follows the discovery file: started means both.
            return info if info is not None and info.pid == proc.pid and "curl" in self.output() else None

        self.info = wait_for(ready, timeout=60, what="oceanus dev")
        return self.info

    def output(self) -> str:
        return (self.data_dir.parent / f"dev-{self.runs}.out").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, expect: int = 0) -> str:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=90)
        text = self.output()
        assert code == expect, text
        return text

    def cleanup(self) -> None:
        """Whatever happened in the test, leave no process behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.info is not None:
            for pid in (self.info.collector_pid, self.info.flusher_pid, self.info.redis_pid):
                if discovery.pid_alive(pid):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    d = Dev(tmp_path / "data", free_port(), env={"OCEANUS_FLUSHER_HEARTBEAT_TTL_S": "2"})
    try:
        yield d
    finally:
        d.cleanup()


def run_demo(dev: Dev, events: int, report: Path) -> dict[str, Any]:
    res = oceanus("demo", "--url", dev.url, "--events", str(events), "--rate", "2000", "--report", str(report))
    assert res.returncode == 0, res.stdout + res.stderr
    doc: dict[str, Any] = json.loads(report.read_text())
    assert doc["unexpected"] == [], doc["unexpected"]
    assert doc["errors"] == 0
    assert sum(len(v) for v in doc["accepted"].values()) > 0
    assert sum(len(v) for v in doc["rejected"].values()) > 0
    return doc


def query_json(dev: Dev, sql: str) -> list[dict[str, Any]]:
    res = oceanus("query", "--data-dir", str(dev.data_dir), "--format", "json", sql)
    assert res.returncode == 0, res.stderr
    rows: list[dict[str, Any]] = json.loads(res.stdout)
    return rows


def stored_ids(dev: Dev) -> dict[str, list[str]]:
    """demo_id of every stored row, per stream (a duplicate appears twice)."""
    sql = " UNION ALL ".join(
        f"SELECT '{s}' AS stream, json_extract_string(extra, '$.demo_id') AS demo_id FROM {s}" for s in STREAMS
    )
    out: dict[str, list[str]] = {s: [] for s in STREAMS}
    for row in query_json(dev, sql):
        if row["demo_id"] is not None:
            out[row["stream"]].append(row["demo_id"])
    return out


def merge(*reports: dict[str, Any]) -> tuple[dict[str, set[str]], set[str]]:
    accepted: dict[str, set[str]] = {s: set() for s in STREAMS}
    rejected: set[str] = set()
    for rep in reports:
        for stream, ids in rep["accepted"].items():
            accepted[stream].update(ids)
        for ids in rep["rejected"].values():
            rejected.update(ids)
    return accepted, rejected


def wait_all_stored(dev: Dev, accepted: dict[str, set[str]], timeout: float = 30) -> dict[str, list[str]]:
    want = sum(len(v) for v in accepted.values())

    def done() -> dict[str, list[str]] | None:
        got = stored_ids(dev)
        return got if sum(len(v) for v in got.values()) >= want else None

    return wait_for(done, timeout=timeout, interval=0.5, what=f"{want} demo rows in the warehouse")


def assert_exactly_once(stored: dict[str, list[str]], accepted: dict[str, set[str]], rejected: set[str]) -> None:
    for stream in STREAMS:
        ids = stored[stream]
        assert len(ids) == len(set(ids)), f"{stream}: duplicated rows"
        assert set(ids) == accepted[stream], f"{stream}: stored rows differ from the 2xx answers"
        assert not set(ids) & rejected, f"{stream}: a refused event was stored"


def status_json(dev: Dev) -> dict[str, Any]:
    res = oceanus("status", "--data-dir", str(dev.data_dir), "--format", "json")
    assert res.returncode == 0, res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def test_demo_query_status_restart(dev: Dev, tmp_path: Path) -> None:
    info = dev.start()
    banner = dev.output()
    assert f"{dev.url}/b/pageview?" in banner
    assert "curl" in banner
    assert "oceanus query" in banner

    # Run 1: the flusher is paused, so the events are still in Redis when the stack stops.
    os.kill(info.flusher_pid, signal.SIGSTOP)
    rep1 = run_demo(dev, 300, tmp_path / "r1.json")
    st = status_json(dev)
    buffered = sum(s["backlog_rows"] + s["inflight_rows"] for s in st["streams"].values())
    assert buffered == sum(len(v) for v in rep1["accepted"].values())
    os.kill(info.flusher_pid, signal.SIGCONT)
    out = dev.stop(signal.SIGINT)
    lines = out.splitlines()
    # Stopped in order: collector, then flusher, then Redis.
    order = [
        next(i for i, ln in enumerate(lines) if f"stopping {w}" in ln)
        for w in ("the collector", "the flusher", "redis-server")
    ]
    assert order == sorted(order), out
    assert not (dev.data_dir / devstate.DEV_FILE).exists()
    for pid in (info.collector_pid, info.flusher_pid, info.redis_pid):
        assert not discovery.pid_alive(pid)

    # Run 2 resumes what was buffered, and takes more traffic.
    dev.start()
    rep2 = run_demo(dev, 300, tmp_path / "r2.json")
    accepted, rejected = merge(rep1, rep2)
    stored = wait_all_stored(dev, accepted)  # through the flusher's /query while it runs
    assert_exactly_once(stored, accepted, rejected)
    st = status_json(dev)
    assert st["running"] is True
    for name in STREAMS:
        assert st["streams"][name]["rows_stored"] == len(accepted[name])
        assert st["streams"][name]["backlog_rows"] == 0
        assert st["streams"][name]["dead_letters"] == 0
    table = oceanus("query", "--data-dir", str(dev.data_dir), "SELECT count(*) AS n FROM pageview_dedup")
    assert table.returncode == 0
    assert f"{len(accepted['pageview'])}" in table.stdout
    dev.stop(signal.SIGTERM)

    # Stopped: the file is opened read-only; same answer.
    assert_exactly_once(stored_ids(dev), accepted, rejected)
    assert "not running" in oceanus("status", "--data-dir", str(dev.data_dir)).stdout


def test_restart_resumes_queued_and_in_flight_after_a_crash(dev: Dev, tmp_path: Path) -> None:
    info = dev.start()
    os.kill(info.flusher_pid, signal.SIGSTOP)
    rep = run_demo(dev, 200, tmp_path / "r.json")
    accepted, rejected = merge(rep)

    # A batch claimed by a flusher that crashed mid-write: moved from the queue
    # into an in-flight key of an owner with no heartbeat.
    keys = Keys(info.key_prefix)
    r = redis.Redis.from_url(info.redis_url)
    try:
        claim = keys.inflight("pageview", "crashed-flusher", 1)
        assert r.lmove(keys.queue("pageview"), claim, "LEFT", "RIGHT") is not None
        r.sadd(keys.inflight_index("pageview"), claim)
    finally:
        r.close()
    st = status_json(dev)
    assert st["streams"]["pageview"]["inflight_rows"] > 0
    assert sum(s["backlog_rows"] + s["inflight_rows"] for s in st["streams"].values()) == sum(
        len(v) for v in accepted.values()
    )

    # The flusher dies (kill -9); `oceanus dev` notices, stops the rest and fails.
    os.kill(info.flusher_pid, signal.SIGKILL)
    code = dev.proc.wait(timeout=90) if dev.proc else None
    assert code == 1, dev.output()
    assert "flusher exited" in dev.output()

    dev.start()
    stored = wait_all_stored(dev, accepted)
    assert_exactly_once(stored, accepted, rejected)
    st = status_json(dev)
    assert all(s["backlog_rows"] == 0 and s["inflight_rows"] == 0 for s in st["streams"].values()), st
    dev.stop(signal.SIGINT)


def test_a_closed_terminal_or_a_killed_supervisor_leaves_no_orphans(dev: Dev, tmp_path: Path) -> None:
    # A closed terminal sends SIGHUP: the same ordered stop as Ctrl-C.
    dev.start()
    assert "stopped" in dev.stop(signal.SIGHUP, expect=0)

    # kill -9 of the supervisor: the kernel SIGTERMs each child, which drains and exits.
    info = dev.start()
    rep = run_demo(dev, 100, tmp_path / "r.json")
    accepted, rejected = merge(rep)
    assert dev.proc is not None
    dev.proc.kill()
    dev.proc.wait(timeout=10)
    children = (info.collector_pid, info.flusher_pid, info.redis_pid)
    wait_for(lambda: not any(discovery.pid_alive(p) for p in children), timeout=60, what="the children to exit")

    # Nothing is left holding the port, the AOF or the DuckDB file: the next start just works,
    # and every acknowledged event is there exactly once.
    dev.start()
    stored = wait_all_stored(dev, accepted)
    assert_exactly_once(stored, accepted, rejected)
    dev.stop(signal.SIGINT)
