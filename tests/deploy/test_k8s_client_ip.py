"""Behind each overlay's front door the collector sees the real client, in its rows and its per-IP limit."""

from __future__ import annotations

from typing import Any

import pytest

from collector.enrich import ClientIp
from oceanus import config
from tests.deploy import manifests as m

needs_kubectl = pytest.mark.skipif(m.kubectl() is None, reason="kubectl (for kustomize) is not installed")

CLIENT = "198.51.100.9"
#: (socket peer, X-Forwarded-For) as each overlay's front door delivers a request from CLIENT.
FRONT_DOOR = {
    # an ingress-nginx controller pod on the pod network appends the client it saw
    "base": ("10.8.1.23", CLIENT),
    "overlays/dev": ("10.8.1.23", CLIENT),
    # Google's load balancer: a GFE address as the peer, `client, forwarding-rule address` in the header
    "overlays/gke": ("35.191.3.4", f"{CLIENT}, 34.120.7.8"),
    "overlays/redis-cluster": ("10.8.1.23", CLIENT),
    "overlays/gke-memorystore-cluster": ("35.191.3.4", f"{CLIENT}, 34.120.7.8"),
}


def _collector_config(target: str) -> config.Config:
    resources = m.kustomize(target)
    cm = m.find_prefix(resources, "ConfigMap", "oceanus-config")
    dep: dict[str, Any] = m.find(resources, "Deployment", "oceanus-collector")
    [container] = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "collector"]
    env = {k: v for k, v in m.env_of(container).items() if k.startswith("OCEANUS_")}
    return config.loads(cm["data"]["oceanus.toml"], env=env)


@needs_kubectl
@pytest.mark.parametrize("target", m.OVERLAYS)
def test_the_client_address_survives_the_front_door(target: str) -> None:
    col = _collector_config(target).collector
    resolver = ClientIp(col.trusted_proxies, col.forwarded_for_skip)
    peer, xff = FRONT_DOOR[target]
    assert resolver.resolve(peer, xff, None) == CLIENT
    # A client cannot pick its own address by sending the header through the front door.
    assert resolver.resolve(peer, f"203.0.113.66, {xff}", None) == CLIENT
    # Sent straight to the pod from outside the cluster, the header is not believed.
    assert resolver.resolve("203.0.113.7", xff, None) == "203.0.113.7"
