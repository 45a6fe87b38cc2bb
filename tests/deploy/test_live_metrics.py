"""Every metric the dashboard and the alert rules query exists in a live
collector's and flusher's /metrics; the image's health probe passes against
both; both stop within the time the Kubernetes manifests give them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from oceanus import config
from tests.deploy import manifests as m
from tests.support.servers import RedisServer, free_ports, kill_group, wait_for


class Process:
    """``oceanus <role>`` as a child on a free port; stderr kept for the failure message."""

    def __init__(self, role: str, port: int, env: dict[str, str], log: Path) -> None:
        self.role = role
        self.port = port
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        args = [sys.executable, "-m", "oceanus.cli", role, "--config", str(m.REPO / "oceanus.toml")]
        if role == "collector":
            args += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        self.proc = subprocess.Popen(
            args, cwd=log.parent, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=5) as resp:
                return int(resp.status), resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        # Not tests.support.servers.wait_for: an exited process must fail at once, not be retried.
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"oceanus {self.role} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise AssertionError(f"oceanus {self.role}: no 200 from /healthz in {timeout}s\n{self.output()}")
            time.sleep(0.05)

    def terminate(self, budget_s: float) -> float:
        """SIGTERM; return how long the drain took (fails past ``budget_s``)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"oceanus {self.role} still running {budget_s}s after SIGTERM") from None
        return time.monotonic() - start

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        kill_group(self.proc.pid)
        self._log.close()


def _env(redis: RedisServer, tmp: Path, **extra: str) -> dict[str, str]:
    # Only this test's settings: an OCEANUS_* variable from the caller's shell would change the run.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCEANUS_")}
    env.update(
        {
            "OCEANUS_REDIS_URL": redis.url,
            "OCEANUS_COLLECTOR_SPOOL_DIR": str(tmp / "spool"),
            "OCEANUS_SINK_KIND": "duckdb",
            "OCEANUS_SINK_DUCKDB_PATH": str(tmp / "warehouse.duckdb"),
            **extra,
        }
    )
    return env


@pytest.fixture
def processes(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Process, Process]]:
    collector_port, flusher_port = free_ports(2)
    collector = Process("collector", collector_port, _env(redis_server, tmp_path), tmp_path / "collector.log")
    flusher = Process(
        "flusher",
        flusher_port,
        _env(
            redis_server,
            tmp_path,
            OCEANUS_FLUSHER_ADMIN_HOST="127.0.0.1",
            OCEANUS_FLUSHER_ADMIN_PORT=str(flusher_port),
        ),
        tmp_path / "flusher.log",
    )
    try:
        collector.wait_healthy()
        flusher.wait_healthy()
        yield collector, flusher
    finally:
        collector.stop()
        flusher.stop()


def _probe(url: str) -> int:
    return subprocess.run(
        [sys.executable, str(m.DOCKER / "healthcheck.py")],
        env={"HEALTHCHECK_URL": url},
        capture_output=True,
        timeout=30,
        check=False,
    ).returncode


def test_dashboard_and_alerts_query_only_live_metrics(processes: tuple[Process, Process]) -> None:
    collector, flusher = processes
    # One accepted and one refused event, so labelled series have children too.
    collector.get("/b/pageview?sid=abc123&evt=view")
    collector.get("/b/pageview?evt=view")
    wait_for(lambda: flusher.get("/readyz")[0] == 200, timeout=30, what="flusher /readyz")
    exposed: dict[str, set[str]] = {}
    for proc in processes:
        status, body = proc.get("/metrics")
        assert status == 200, f"{proc.role} /metrics answered {status}"
        exposed[proc.role] = m.exposed_names(body)
    live = exposed["collector"] | exposed["flusher"]
    # `oceanus import serve` is the third exporter (tests/importer/test_serve.py scrapes it live);
    # its families are declared before any import runs.
    from prometheus_client import generate_latest

    from importer.metrics import ImportMetrics

    live |= m.exposed_names(generate_latest(ImportMetrics().registry).decode())
    # `oceanus notify` is the fourth: its admin /metrics serves this registry, declared likewise.
    from notifier.metrics import NotifyMetrics

    live |= m.exposed_names(generate_latest(NotifyMetrics().registry).decode())
    refs = m.referenced_metrics()
    assert len(refs) > 15
    missing = {name: sorted(where) for name, where in refs.items() if name not in live}
    assert not missing, f"queried but not exposed by a live exporter: {missing}"
    # The image's HEALTHCHECK command, as compose and Docker run it.
    assert _probe(collector.url("/healthz")) == 0
    assert _probe(flusher.url("/healthz")) == 0


def test_sigterm_drain_fits_the_manifests(processes: tuple[Process, Process]) -> None:
    """`kubectl rollout` sends SIGTERM after preStop; each process must be gone before the kill."""
    collector, flusher = processes
    resources = m.kustomize("base")
    budgets: dict[str, float] = {}
    for proc in processes:
        dep = m.find(resources, "Deployment", f"oceanus-{proc.role}")
        c = m.container(dep, proc.role)
        hook = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", ["sleep", "0"])
        budgets[proc.role] = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] - float(hook[1])
    defaults = config.load(m.REPO / "oceanus.toml", env={})
    assert budgets["collector"] > defaults.collector.drain_timeout_s
    collector.get("/b/pageview?sid=abc123&evt=view")
    took = {proc.role: proc.terminate(budgets[proc.role]) for proc in (collector, flusher)}
    assert took["collector"] < budgets["collector"]
    assert took["flusher"] < budgets["flusher"]
