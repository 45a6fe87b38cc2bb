"""The config loader under the variables Kubernetes injects for every Service of the namespace.

The kubelet gives each container, for each Service ``<svc>`` (upper-cased, ``-`` ->
``_``): ``<SVC>_SERVICE_HOST``, ``<SVC>_SERVICE_PORT``, ``<SVC>_SERVICE_PORT_<PORTNAME>``,
``<SVC>_PORT=tcp://<ip>:<port>``, and per port ``<SVC>_PORT_<port>_<PROTO>`` with its
``_PROTO``, ``_PORT`` and ``_ADDR``. Services named ``oceanus-…`` land in the
``OCEANUS_`` namespace of config overrides.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import pytest

from oceanus import config
from oceanus.errors import ConfigError
from tests.deploy import manifests as m

needs_kubectl = pytest.mark.skipif(m.kubectl() is None, reason="kubectl (for kustomize) is not installed")

#: The Service CIDR the simulated cluster hands out ClusterIPs from.
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")

TOML = """
[streams.pv.fields]
sid = { type = "string" }
"""


def service_link_env(services: list[dict[str, Any]]) -> dict[str, str]:
    """The variables the kubelet derives from ``services`` (pkg/kubelet/envvars.FromServices)."""
    env: dict[str, str] = {}
    hosts = SERVICE_CIDR.hosts()
    next(hosts)  # .1 is the API server's own Service
    for svc in services:
        spec = svc["spec"]
        if spec.get("clusterIP") == "None" or spec.get("type") == "ExternalName":
            continue  # headless and ExternalName Services get no variables
        ip = str(next(hosts))
        prefix = svc["metadata"]["name"].upper().replace("-", "_")
        ports = spec["ports"]
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for p in ports:
            if p.get("name"):
                env[f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
        first_proto = ports[0].get("protocol", "TCP").lower()
        env[f"{prefix}_PORT"] = f"{first_proto}://{ip}:{ports[0]['port']}"
        for p in ports:
            proto = p.get("protocol", "TCP")
            key = f"{prefix}_PORT_{p['port']}_{proto}"
            env[key] = f"{proto.lower()}://{ip}:{p['port']}"
            env[key + "_PROTO"] = proto.lower()
            env[key + "_PORT"] = str(p["port"])
            env[key + "_ADDR"] = ip
    return env


def _workloads(resources: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [r for r in resources if r["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")]


@needs_kubectl
@pytest.mark.parametrize("target", m.OVERLAYS)
def test_every_container_loads_its_config_with_the_service_links(target: str) -> None:
    resources = m.kustomize(target)
    services = [r for r in resources if r["kind"] == "Service"]
    links = service_link_env(services)
    # What a real cluster puts in front of the loader: collector.port's own name among them.
    oceanus_links = {k for k in links if k.startswith("OCEANUS_")}
    assert "OCEANUS_COLLECTOR_PORT" in oceanus_links
    assert "OCEANUS_FLUSHER_SERVICE_HOST" in oceanus_links
    cm = m.find_prefix(resources, "ConfigMap", "oceanus-config")
    checked = 0
    for workload in _workloads(resources):
        for c in m.containers(workload) + m.containers(workload, init=True):
            # As if enableServiceLinks were on: the manifests may turn it off, but the
            # loader must not depend on that (an overlay of a user's may not).
            env = {**links, **m.env_of(c)}
            cfg = config.loads(cm["data"]["oceanus.toml"], env=env)
            own = m.env_of(c)
            if "OCEANUS_COLLECTOR_PORT" in own:
                assert cfg.collector.port == int(own["OCEANUS_COLLECTOR_PORT"])
            else:
                assert cfg.collector.port == config.loads(cm["data"]["oceanus.toml"]).collector.port
            checked += 1
    assert checked >= 3


def test_collector_port_from_a_service_link_is_ignored_a_number_is_not() -> None:
    links = {"OCEANUS_COLLECTOR_PORT": "tcp://10.96.0.2:80", "OCEANUS_COLLECTOR_SERVICE_HOST": "10.96.0.2"}
    assert config.loads(TOML, env=links).collector.port == 8080
    assert config.loads(TOML, env={**links, "OCEANUS_COLLECTOR_PORT": "9090"}).collector.port == 9090


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OCEANUS_FLUSHER_SERVICE_HOST", "10.96.0.3"),
        ("OCEANUS_FLUSHER_SERVICE_HOST", "fd00::3"),
        ("OCEANUS_FLUSHER_SERVICE_PORT", "9101"),
        ("OCEANUS_FLUSHER_SERVICE_PORT_ADMIN", "9101"),
        ("OCEANUS_FLUSHER_PORT", "tcp://10.96.0.3:9101"),
        ("OCEANUS_FLUSHER_PORT", "tcp://[fd00::3]:9101"),
        ("OCEANUS_FLUSHER_PORT_9101_TCP", "tcp://10.96.0.3:9101"),
        ("OCEANUS_FLUSHER_PORT_9101_TCP_PROTO", "tcp"),
        ("OCEANUS_FLUSHER_PORT_9101_TCP_PORT", "9101"),
        ("OCEANUS_FLUSHER_PORT_9101_TCP_ADDR", "10.96.0.3"),
        ("OCEANUS_REDIS_PORT_6379_TCP", "tcp://10.96.0.4:6379"),
        ("OCEANUS_REDIS_SERVICE_PORT_REDIS_TLS", "6380"),
        ("OCEANUS_STATS_PORT_53_UDP_PROTO", "udp"),
        # flusher.admin_port's name, from a Service named oceanus-flusher-admin.
        ("OCEANUS_FLUSHER_ADMIN_PORT", "tcp://10.96.0.5:9101"),
    ],
)
def test_service_link_shapes_are_ignored(name: str, value: str) -> None:
    assert config.is_service_link(name, value)
    assert config.loads(TOML, env={name: value}) == config.loads(TOML)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("OCEANUS_REDIS_URLL", "redis://x:6379/0", "OCEANUS_REDIS_URLL: not a configuration key"),
        ("OCEANUS_FLUSHER_SERVICE_HOST", "flusher.local", "OCEANUS_FLUSHER_SERVICE_HOST: not a configuration key"),
        ("OCEANUS_FLUSHER_SERVICE_PORT", "http", "OCEANUS_FLUSHER_SERVICE_PORT: not a configuration key"),
        ("OCEANUS_FLUSHER_PORT", "9101", "OCEANUS_FLUSHER_PORT: not a configuration key"),
        ("OCEANUS_FLUSHER_PORT_9101_TCP", "tcp://10.96.0.3:9102", "OCEANUS_FLUSHER_PORT_9101_TCP: not a configuration"),
        ("OCEANUS_FLUSHER_PORT_9101_TCP_PROTO", "udp", "OCEANUS_FLUSHER_PORT_9101_TCP_PROTO: not a configuration"),
        ("OCEANUS_FLUSHER_PORT_9101_TCP_ADDR", "10.96.0", "OCEANUS_FLUSHER_PORT_9101_TCP_ADDR: not a configuration"),
        ("OCEANUS_COLLECTOR_PORT", "tcp://collector:80", "collector.port: Expected `int`, got `str`"),
        ("OCEANUS_COLLECTOR_PORT", "80a", "collector.port: Expected `int`, got `str`"),
    ],
)
def test_typos_are_still_errors_naming_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.loads(TOML, env={name: value})
    assert str(info.value).startswith(message)


def test_a_service_link_for_a_string_key_is_a_value() -> None:
    # redis.url wants a string: a URL-looking value there is the user's, not the kubelet's.
    assert config.loads(TOML, env={"OCEANUS_REDIS_URL": "tcp://10.0.0.1:6379"}).redis.url == "tcp://10.0.0.1:6379"


def test_an_ignored_variable_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="oceanus.config"):
        config.loads(TOML, env={"OCEANUS_FLUSHER_SERVICE_HOST": "10.96.0.3", "OCEANUS_REDIS_URL": "redis://r:6379/0"})
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.DEBUG,
            "OCEANUS_FLUSHER_SERVICE_HOST: a Kubernetes service-link variable, not a configuration key; ignored",
        ),
    ]
