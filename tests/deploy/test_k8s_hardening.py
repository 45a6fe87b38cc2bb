"""Kubernetes hardening, on the rendered overlays: no service-link variables,
Redis behind an ACL user whose password only a Secret holds (checked against a
real redis-server started with the manifests' own arguments), TLS and only the
public paths on the Ingress, and the client address behind Google's load balancer."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from collector.app import App
from collector.enrich import ClientIp
from oceanus import config
from tests.deploy import manifests as m
from tests.deploy import redis_acl

pytestmark = pytest.mark.skipif(m.kubectl() is None, reason="kubectl (for kustomize) is not installed")

#: The Secret the operator creates (README, "Deploy"); no manifest in the repository holds it.
REDIS_SECRET = ("oceanus-redis", "password")
_VAR = re.compile(r"\$\((\w+)\)")


def _pod_specs(resources: tuple[m.Resource, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for res in resources:
        kind, name = res["kind"], f"{res['kind']}/{res['metadata']['name']}"
        if kind == "Pod":
            yield name, res["spec"]
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield name, res["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield name, res["spec"]["jobTemplate"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("target", m.OVERLAYS)
def test_every_pod_spec_disables_service_links(target: str) -> None:
    """Service links would inject OCEANUS_COLLECTOR_PORT=tcp://... from the Service's name."""
    specs = dict(_pod_specs(m.kustomize(target)))
    assert {"Deployment/oceanus-collector", "Deployment/oceanus-flusher", "Deployment/oceanus-notify"} <= set(specs)
    if target in m.SINGLE_REDIS:
        assert "StatefulSet/redis" in specs
    elif target not in m.EXTERNAL_REDIS:
        assert {"StatefulSet/redis-cluster", "Job/redis-cluster-init"} <= set(specs)
    for name, spec in specs.items():
        assert spec.get("enableServiceLinks") is False, f"{target}: {name} has service links on"


# --- Redis: one ACL user, the password from a Secret ------------------------------------------


def _env_entry(c: dict[str, Any], name: str) -> tuple[int, dict[str, Any]]:
    for i, e in enumerate(c.get("env", [])):
        if e["name"] == name:
            return i, e
    raise AssertionError(f"container {c['name']} has no env {name}")


def _secret_ref(c: dict[str, Any], name: str) -> tuple[str, str]:
    ref = _env_entry(c, name)[1]["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def _options(args: list[str]) -> dict[str, list[list[str]]]:
    """redis-server's command line: ``--opt value...`` lines, in order, per option."""
    out: dict[str, list[list[str]]] = {}
    current: list[str] | None = None
    for arg in args:
        if arg.startswith("--"):
            current = []
            out.setdefault(arg[2:].lower(), []).append(current)
        else:
            assert current is not None, f"redis-server argument {arg!r} belongs to no option"
            current.append(arg)
    return out


def _conf_lines(conf: str) -> list[str]:
    return [" ".join(ln.split()) for ln in conf.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _redis_url(c: dict[str, Any]) -> str:
    """The container's OCEANUS_REDIS_URL; the kubelet expands ``$(VAR)`` only from earlier entries."""
    i, entry = _env_entry(c, "OCEANUS_REDIS_URL")
    url = str(entry["value"])
    for var in _VAR.findall(url):
        j, _ = _env_entry(c, var)
        assert j < i, f"{c['name']}: {var} must come before OCEANUS_REDIS_URL for $({var}) to expand"
    return url


@pytest.mark.parametrize("target", m.SINGLE_REDIS)
def test_redis_wants_the_acl_user_from_the_secret(target: str) -> None:
    resources = m.kustomize(target)
    sts = m.find(resources, "StatefulSet", "redis")
    c = m.container(sts, "redis")
    conf = _conf_lines(m.find_prefix(resources, "ConfigMap", "redis-config")["data"]["redis.conf"])
    assert "user default off" in conf, "the default user (no password) must be disabled"
    assert "protected-mode yes" in conf
    assert _secret_ref(c, "REDISCLI_AUTH") == REDIS_SECRET
    (user,) = _options(c["args"][1:])["user"]
    assert user[:3] == ["oceanus", "on", ">$(REDISCLI_AUTH)"]
    assert "-@dangerous" in user
    assert "nopass" not in user
    probe = " ".join(c["readinessProbe"]["exec"]["command"])
    assert "redis-cli --user oceanus ping" in probe
    svc_port = m.find(resources, "Service", "redis")["spec"]["ports"][0]["port"]
    for name, cname in (("oceanus-collector", "collector"), ("oceanus-flusher", "flusher")):
        app = m.container(m.find(resources, "Deployment", name), cname)
        assert _secret_ref(app, "REDIS_PASSWORD") == REDIS_SECRET
        parts = urlsplit(_redis_url(app))
        assert (parts.scheme, parts.username, parts.password) == ("redis", "oceanus", "$(REDIS_PASSWORD)")
        assert (parts.hostname, parts.port) == ("redis", svc_port)
        # The env wins over the ConfigMap's password-less URL.
        cfg = config.loads(
            m.find_prefix(resources, "ConfigMap", "oceanus-config")["data"]["oceanus.toml"],
            env={"OCEANUS_REDIS_URL": _redis_url(app)},
        )
        assert cfg.redis.url == _redis_url(app)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


_URL_PASSWORD = re.compile(r"rediss?(?:\+cluster)?://[^\s:/@]*:([^\s@]*)@")


@pytest.mark.parametrize("target", m.OVERLAYS)
def test_no_manifest_holds_a_password(target: str) -> None:
    resources = m.kustomize(target)
    assert not [r for r in resources if r["kind"] == "Secret"], "Secrets are created by the operator, not shipped"
    checked = 0
    for res in resources:
        for text in _strings(res):
            for password in _URL_PASSWORD.findall(text):
                assert _VAR.fullmatch(password), f"{res['kind']}/{res['metadata']['name']}: password in a URL"
                checked += 1
            for line in text.splitlines():
                words = line.split()
                if words and words[0].lower() in ("requirepass", "masterauth"):
                    raise AssertionError(f"{res['metadata']['name']}: {words[0]} in a manifest")
                if words and words[0].lower() == "user":
                    assert not [w for w in words if w.startswith((">", "#"))], "ACL password in a manifest"
        if res["kind"] == "StatefulSet":
            for c in m.containers(res):
                assert all(not a.startswith(">") or _VAR.fullmatch(a[1:]) for a in c.get("args", []))
    if target not in m.EXTERNAL_REDIS:  # Memorystore: IAM auth off, no password (the overlay says why)
        assert checked >= 2, "the collector's and the flusher's URLs were checked"


def _expand(text: str, env: dict[str, str]) -> str:
    return _VAR.sub(lambda mt: env[mt.group(1)], text)


@pytest.mark.parametrize("target", m.SINGLE_REDIS)
def test_a_redis_started_from_the_manifests_admits_only_the_oceanus_user(target: str, tmp_path: Path) -> None:
    resources = m.kustomize(target)
    c = m.container(m.find(resources, "StatefulSet", "redis"), "redis")
    text = m.find_prefix(resources, "ConfigMap", "redis-config")["data"]["redis.conf"]
    # redis-server changes to `dir` while it reads the file, before the command line applies.
    text, n = re.subn(r"(?m)^dir .*$", f"dir {tmp_path}", text)
    assert n == 1
    conf = tmp_path / "redis.conf"
    conf.write_text(text, encoding="utf-8")
    password = secrets.token_hex(24)
    env = {"REDISCLI_AUTH": password, "REDIS_PASSWORD": password}
    args = [_expand(a, env) for a in c["args"]]
    assert args[0] == "/etc/redis/redis.conf"
    collector = m.container(m.find(resources, "Deployment", "oceanus-collector"), "collector")
    with redis_acl.redis_with([str(conf), *args[1:]], tmp_path) as port:
        redis_acl.assert_admits_only(redis_acl.at_port(_expand(_redis_url(collector), env), port), port, password)
        probe = c["readinessProbe"]["exec"]["command"]
        assert redis_acl.probe_passes(probe, port, password)
        assert not redis_acl.probe_passes(probe, port, "wrong")


# --- Ingress: TLS, and only what the public sends to ----------------------------------------

#: Paths browsers and servers send to (collector/app.py routes /b/ and /e/; collector/web.py the tag).
PUBLIC_PATHS = ("/b/pageview", "/e/pageview", "/oceanus.js")
#: Served by the collector but not to the internet: App's own GET routes, the status page, the demo.
INTERNAL_PATHS = (*App._routes, "/_/status", "/_/status.json", "/demo", "/", "/index.html")


def _routed(rule_path: str, path_type: str, path: str) -> bool:
    """Kubernetes' Ingress matching: Exact is the whole path, Prefix is element-wise."""
    if path_type == "Exact":
        return path == rule_path
    assert path_type == "Prefix", f"pathType {path_type}: implementation-specific matching is not portable"
    prefix = rule_path.rstrip("/")
    return path == prefix or path.startswith(prefix + "/") or prefix == ""


@pytest.mark.parametrize("target", m.OVERLAYS)
def test_ingress_routes_only_public_paths(target: str) -> None:
    ing = m.find(m.kustomize(target), "Ingress", "oceanus-collector")
    rules = [(p["path"], p["pathType"]) for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
    assert {"/metrics", "/openapi.json", "/healthz", "/readyz"} <= set(INTERNAL_PATHS)
    for path in PUBLIC_PATHS:
        assert any(_routed(rp, pt, path) for rp, pt in rules), f"{path} is not routed"
    for path in INTERNAL_PATHS:
        assert not any(_routed(rp, pt, path) for rp, pt in rules), f"{path} is public through the Ingress"
    assert "defaultBackend" not in ing["spec"]


@pytest.mark.parametrize("target", ["base", "overlays/dev", "overlays/redis-cluster"])
def test_ingress_terminates_tls(target: str) -> None:
    ing = m.find(m.kustomize(target), "Ingress", "oceanus-collector")
    assert ing["spec"]["ingressClassName"]
    hosts = {r["host"] for r in ing["spec"]["rules"]}
    covered = {h for t in ing["spec"]["tls"] for h in t["hosts"] if t.get("secretName")}
    assert hosts <= covered, f"hosts without a certificate: {hosts - covered}"


@pytest.mark.parametrize("target", m.GKE)
def test_gke_ingress_has_a_managed_certificate_and_redirects_http(target: str) -> None:
    resources = m.kustomize(target)
    ing = m.find(resources, "Ingress", "oceanus-collector")
    notes = ing["metadata"]["annotations"]
    assert notes["kubernetes.io/ingress.class"] == "gce"
    assert "ingressClassName" not in ing["spec"], "the API refuses the class annotation and field together"
    cert = m.find(resources, "ManagedCertificate", notes["networking.gke.io/managed-certificates"])
    assert set(cert["spec"]["domains"]) == {r["host"] for r in ing["spec"]["rules"]}
    frontend = m.find(resources, "FrontendConfig", notes["networking.gke.io/v1beta1.FrontendConfig"])
    assert frontend["spec"]["redirectToHttps"]["enabled"] is True


@pytest.mark.parametrize("target", m.GKE)
def test_gke_records_the_client_not_the_load_balancer(target: str) -> None:
    """Google's external load balancer connects from 130.211.0.0/22 or 35.191.0.0/16 and
    sends ``X-Forwarded-For: <client>, <its forwarding-rule address>``."""
    resources = m.kustomize(target)
    c = m.container(m.find(resources, "Deployment", "oceanus-collector"), "collector")
    env = {k: v for k, v in m.env_of(c).items() if k.startswith("OCEANUS_") and "$(" not in v}
    cfg = config.loads(m.find_prefix(resources, "ConfigMap", "oceanus-config")["data"]["oceanus.toml"], env=env)
    ip = ClientIp(cfg.collector.trusted_proxies, cfg.collector.forwarded_for_skip)
    lb = "34.117.20.9"
    assert ip.resolve("35.191.12.7", f"203.0.113.9, {lb}", None) == "203.0.113.9"
    assert ip.resolve("130.211.1.250", f"203.0.113.9,{lb}", None) == "203.0.113.9"
    # A client's own X-Forwarded-For is kept by the LB on the left: never believed.
    assert ip.resolve("35.191.12.7", f"198.51.100.1, 203.0.113.9, {lb}", None) == "203.0.113.9"
    # Not from Google's ranges: the header is ignored.
    assert ip.resolve("10.8.0.3", f"203.0.113.9, {lb}", None) == "10.8.0.3"
    # Only the LB's own entry: nothing to believe.
    assert ip.resolve("35.191.12.7", lb, None) == "35.191.12.7"
