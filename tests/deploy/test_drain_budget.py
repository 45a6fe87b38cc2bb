"""On Kubernetes the collector's spool dies with its pod, so the drain must be long
enough to replay a full spool, and the pod's grace period longer than that drain."""

from __future__ import annotations

import pytest

from collector.server import KILL_MARGIN_S
from collector.spool import drain_budget_s
from tests.deploy import manifests as m
from tests.deploy.test_k8s import _config_for, _prestop_s, needs_kubectl


def test_drain_budget_is_the_replay_of_a_full_spool() -> None:
    # 10 s for requests and the queued batch, then 1 GiB at 5 MB/s.
    assert drain_budget_s(1_073_741_824) == pytest.approx(10.0 + 214.7483648)
    assert drain_budget_s(5_000_000) == pytest.approx(11.0)


@needs_kubectl
@pytest.mark.parametrize("target", m.OVERLAYS)
def test_collector_drain_replays_a_full_spool_within_the_grace_period(target: str) -> None:
    resources = m.kustomize(target)
    dep = m.find(resources, "Deployment", "oceanus-collector")
    c = m.container(dep, "collector")
    cfg = _config_for(resources, c).collector
    needed = drain_budget_s(cfg.spool_max_bytes)
    assert cfg.drain_timeout_s >= needed, (
        f"collector.drain_timeout_s {cfg.drain_timeout_s} cannot replay a full spool "
        f"({cfg.spool_max_bytes} bytes needs {needed:.0f} s)"
    )
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # granian kills a worker KILL_MARGIN_S after its drain budget; the kubelet must not kill it first.
    assert grace > _prestop_s(c) + cfg.drain_timeout_s + KILL_MARGIN_S
