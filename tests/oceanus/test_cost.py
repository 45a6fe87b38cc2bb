"""``oceanus cost``: the arithmetic against hand-computed bills, and the metrics source."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from oceanus import config
from oceanus.cli import main as cli_main
from oceanus.commands import cost
from oceanus.errors import ConfigError
from tests.support.servers import free_port

ONE_STREAM = """
[flusher]
admin_port = {port}
[streams.pageview]
mode = "{mode}"
[streams.pageview.fields]
sid = {{}}
"""


def _cfg(port: int = 1, mode: str = "insert_all") -> config.Config:
    return config.loads(ONE_STREAM.format(port=port, mode=mode))


def test_insert_all_bills_each_row_at_least_1_kib() -> None:
    # bizocean 2016: 700k rows/day of ~357 bytes (250 MB/day) are billed as 700k KiB/day.
    usd = cost.monthly_usd("insert_all", 700_000, 357)
    assert usd == pytest.approx(700_000 * 30 * 1024 / (200 * 1024**2) * 0.01)
    assert usd == pytest.approx(1.0254, abs=1e-4)
    # Above the minimum the real size counts: 2 KiB rows cost twice 1 KiB rows.
    assert cost.monthly_usd("insert_all", 1000, 2048) == pytest.approx(2 * cost.monthly_usd("insert_all", 1000, 10))


def test_storage_write_free_tier_then_per_gib() -> None:
    assert cost.monthly_usd("storage_write", 700_000, 357) == 0.0
    # 100M rows/day x 1 KiB x 30 days = 2861 GiB; 2048 GiB free; the rest at $0.025.
    gib = 100_000_000 * 1024 * 30 / 1024**3
    assert cost.monthly_usd("storage_write", 100_000_000, 1024) == pytest.approx((gib - 2048) * 0.025)
    assert cost.gross_usd("storage_write", 1024**3) == pytest.approx(0.025)


def test_load_is_free() -> None:
    assert cost.monthly_usd("load", 10**9, 5000) == 0.0


def test_free_tier_is_shared_across_streams() -> None:
    cfg = config.loads(
        '[streams.a]\nmode = "storage_write"\n[streams.a.fields]\nx = {}\n'
        '[streams.b]\nmode = "storage_write"\n[streams.b.fields]\nx = {}\n'
    )
    # Each stream alone fits in 2 TiB; together they do not.
    per_day = 1.5 * 1024**4 / 30 / 1000
    loads = {n: cost.Load(per_day, 1000, "test") for n in ("a", "b")}
    text = cost.report(cfg, loads)
    assert cost.monthly_usd("storage_write", per_day, 1000) == 0.0
    assert f"configured modes (*): ${1024 * 0.025:,.2f}/month" in text


def test_report_marks_the_configured_mode_and_cites_prices() -> None:
    text = cost.report(_cfg(mode="load"), {"pageview": cost.Load(700_000, 357, "given")})
    row = next(line for line in text.splitlines() if line.startswith("pageview"))
    assert "$1.03 " in row
    assert "$0.00*" in row
    assert row.count("*") == 1
    assert "cloud.google.com/bigquery/pricing" in text


class _Metrics(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metrics_server() -> Iterator[int]:
    port = free_port()
    started = time.time() - 3600  # the flusher has run for an hour
    _Metrics.body = (
        f"process_start_time_seconds {started}\n"
        'oceanus_rows_written_total{stream="pageview"} 29166.0\n'
        'oceanus_written_bytes_total{stream="pageview"} 10412262.0\n'
    ).encode()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


def test_traffic_from_the_flusher_metrics(metrics_server: int) -> None:
    measured = cost.flusher_metrics(_cfg(metrics_server))
    ld = measured["pageview"]
    assert ld.avg_bytes == pytest.approx(357, abs=0.1)
    assert ld.events_per_day == pytest.approx(29166 * 24, rel=0.01)
    # An explicit flag wins over the measurement, the other number still comes from it.
    loads = cost.stream_loads(_cfg(metrics_server), None, 500, measured)
    assert loads["pageview"].avg_bytes == 500
    assert loads["pageview"].events_per_day == ld.events_per_day


def test_no_metrics_and_no_flags_says_what_to_pass() -> None:
    cfg = _cfg(free_port())
    assert cost.flusher_metrics(cfg) == {}
    with pytest.raises(ConfigError, match="--events-per-day"):
        cost.stream_loads(cfg, None, None, {})


def test_cli(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "oceanus.toml"
    path.write_text(ONE_STREAM.format(port=free_port(), mode="storage_write"))
    assert cli_main(["cost", "--config", str(path), "--events-per-day", "700000", "--avg-bytes", "357"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("pageview")
    assert "$0.00*" in out
    assert cli_main(["cost", "--config", str(path), "--avg-bytes", "0", "--events-per-day", "1"]) == 2
    assert "--avg-bytes must be > 0" in capsys.readouterr().err
