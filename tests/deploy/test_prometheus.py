"""Prometheus config, alert rules and the Grafana dashboard: promtool accepts
them, the alerts fire when they should, and the dashboard's queries parse."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from oceanus import config
from tests.deploy import manifests as m

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool: `make system-deps` installs Debian's prometheus"
)

# Grafana's macros, replaced by what Prometheus sees at query time.
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "1h", "$stream": ".*"}


def _promtool(*args: str, cwd: Path = m.DOCKER / "prometheus") -> str:
    assert PROMTOOL is not None
    out = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, f"promtool {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@needs_promtool
def test_prometheus_config_and_rules_check() -> None:
    _promtool("check", "config", "prometheus.yml")
    _promtool("check", "rules", "alerts.yml")


@needs_promtool
def test_alerts_fire_on_their_series() -> None:
    """alerts_test.yml: each alert fires for its condition and stays quiet otherwise."""
    assert "SUCCESS" in _promtool("test", "rules", "alerts_test.yml")


def test_alerts_cover_the_promised_conditions() -> None:
    alerts = {r["alert"]: r for r in m.alert_rules() if "alert" in r}
    wanted = {
        "OceanusBacklogGrowing": "oceanus_backlog_items",
        "OceanusLagOverPromise": "oceanus_lag_seconds",
        "OceanusDeadLetters": "oceanus_rows_dead_lettered_total",
        "OceanusSpoolInUse": "oceanus_spool_frames",
        "OceanusRedisMemoryNearMax": "oceanus_redis_maxmemory_bytes",
        "OceanusCollector5xx": "oceanus_http_requests_total",
        "OceanusNotifyLoopFailing": "oceanus_notify_loop_errors_total",
    }
    for name, metric in wanted.items():
        assert name in alerts, f"missing alert {name}"
        assert metric in alerts[name]["expr"]
    for rule in alerts.values():
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"]
    tested = {
        t["alertname"]
        for case in m.load_yaml(m.DOCKER / "prometheus" / "alerts_test.yml")["tests"]
        for t in case["alert_rule_test"]
    }
    assert tested == set(alerts), f"alerts without a promtool test: {set(alerts) - tested}"


def test_lag_promises_match_the_streams() -> None:
    """The recorded promise of each stream is its batch.max_wait_s, for every stream."""
    cfg = config.load(m.REPO / "oceanus.toml", env={})
    promises: dict[str, float] = {}
    for rule in m.alert_rules():
        if rule.get("record") == "oceanus:lag_promise_seconds":
            promises[rule["labels"]["stream"]] = float(rule["expr"].removeprefix("vector(").removesuffix(")"))
    assert promises == {name: s.batch.max_wait_s for name, s in cfg.streams.items()}


def test_recorded_names_used_are_defined() -> None:
    defined = {r["record"] for r in m.alert_rules() if "record" in r}
    used: set[str] = set()
    for expr in m.dashboard_exprs() + [r["expr"] for r in m.alert_rules()]:
        used |= m.recorded_names(expr)
    assert used <= defined, f"undefined recording rules: {used - defined}"


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every panel's PromQL, as a recording rule, passes promtool's parser."""
    rules: list[dict[str, Any]] = []
    for i, expr in enumerate(m.dashboard_exprs()):
        if expr.startswith("label_values("):
            continue  # Grafana's templating function, not PromQL
        for macro, value in GRAFANA_MACROS.items():
            expr = expr.replace(macro, value)
        assert "$" not in expr, f"unknown Grafana macro in {expr}"
        rules.append({"record": f"dashboard:panel_{i}", "expr": expr})
    assert len(rules) > 20
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _promtool("check", "rules", "dashboard.yml", cwd=tmp_path)


@needs_promtool
def test_the_notify_panel_counts_each_list_once(tmp_path: Path) -> None:
    """Two notifiers report the same lists: a channel's jobs and dead letters once, a stream's
    shards once each and summed (a sum over every series would show twice as much)."""
    panel = next(p for p in m.dashboard()["panels"] if p.get("title") == "Notify backlog and dead letters")
    exprs = {t["refId"]: t["expr"] for t in panel["targets"]}
    series = []
    for instance in ("n:9102", "o:9102"):
        labels = f'job="oceanus-notify",instance="{instance}"'
        series += [
            {"series": f'oceanus_notify_backlog_jobs{{{labels},channel="team"}}', "values": "40x5"},
            {"series": f'oceanus_notify_dead_letters{{{labels},channel="team"}}', "values": "3x5"},
            *(
                {"series": f'oceanus_notify_backlog_frames{{{labels},stream="pageview",shard="{s}"}}', "values": v}
                for s, v in (("0", "10x5"), ("1", "25x5"), ("2", "7x5"))
            ),
        ]
    # refId: the sample it must give (labels in PromQL form), each list counted once.
    expected = {"A": ('{channel="team"}', 40), "B": ('{stream="pageview"}', 42), "C": ('{channel="team"}', 3)}
    assert set(exprs) == set(expected)
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [
                {"expr": exprs[ref], "eval_time": "3m", "exp_samples": [{"labels": labels, "value": value}]}
                for ref, (labels, value) in expected.items()
            ],
        }
    ]
    (tmp_path / "panel_test.yml").write_text(yaml.safe_dump({"rule_files": [], "tests": tests}))
    assert "SUCCESS" in _promtool("test", "rules", "panel_test.yml", cwd=tmp_path)


def test_dashboard_shows_what_operators_need() -> None:
    dash = m.dashboard()
    assert dash["uid"] == "oceanus"
    text = "\n".join(m.dashboard_exprs())
    for metric in (
        "oceanus_events_accepted_total",
        "oceanus_http_requests_total",
        "oceanus_http_request_duration_seconds_bucket",
        "oceanus_backlog_items",
        "oceanus_shard_node_info",
        "oceanus_redis_used_memory_bytes",
        "oceanus_lag_seconds",
        "oceanus_rows_written_total",
        "oceanus_batch_target_rows",
        "oceanus_sink_retries_total",
        "oceanus_rows_dead_lettered_total",
        "oceanus_spool_frames",
    ):
        assert metric in text, f"dashboard lacks {metric}"
    assert "histogram_quantile(0.99" in text
    assert "histogram_quantile(0.50" in text
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dash["panels"]:
        assert panel["type"] == "row" or panel["datasource"]["uid"] == "${datasource}"


def test_grafana_provisioning_matches_the_dashboard_and_compose() -> None:
    ds = m.load_yaml(m.DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")["datasources"][0]
    var = next(v for v in m.dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert var["current"]["value"] == ds["uid"]
    provider = m.load_yaml(m.DOCKER / "grafana" / "provisioning" / "dashboards" / "oceanus.yaml")["providers"][0]
    grafana = m.compose()["services"]["grafana"]
    targets = [v.split(":")[1] for v in grafana["volumes"]]
    assert provider["options"]["path"] + "/oceanus.json" in targets
    prometheus = m.compose()["services"]["prometheus"]
    assert ds["url"] == "http://prometheus:9090"
    assert "prometheus" in m.compose()["services"]
    assert any(v.startswith("./prometheus:/etc/prometheus") for v in prometheus["volumes"])


def test_scrape_targets_are_the_compose_services() -> None:
    prom = m.load_yaml(m.DOCKER / "prometheus" / "prometheus.yml")
    services = m.compose()["services"]
    env = m.compose()["x-oceanus-env"]
    cfg = config.loads(
        (m.REPO / "oceanus.toml").read_text(encoding="utf-8"),
        env={k: v for k, v in env.items() if k.startswith("OCEANUS_") and "$" not in v},
    )
    expected = {
        "oceanus-collector": f"collector:{cfg.collector.port}",
        "oceanus-flusher": f"flusher:{cfg.flusher.admin_port}",
    }
    for job in prom["scrape_configs"]:
        if job["job_name"] in expected:
            (static,) = job["static_configs"]
            assert static["targets"] == [expected.pop(job["job_name"])]
            assert static["targets"][0].split(":")[0] in services
    assert not expected, f"jobs not scraped: {expected}"
