"""The Kubernetes manifests: schema-valid per file and after kustomize, and
consistent with oceanus's own config (ports, probes, drain budgets, paths)."""

from __future__ import annotations

import copy
import re
from typing import Any

import msgspec
import pytest
import yaml

from oceanus import config
from tests.deploy import manifests as m

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the test extra")

#: The oldest Kubernetes minor GKE still offers, and the newest the validator knows.
K8S_VERSIONS = ("1.30.0", kv.latest_version())

needs_kubectl = pytest.mark.skipif(m.kubectl() is None, reason="kubectl (for kustomize) is not installed")


def _validate(resource: dict[str, Any], version: str) -> None:
    key = (resource["apiVersion"], resource["kind"])
    if key in m.GKE_CUSTOM_KINDS:
        return  # no published schema; test_gke_custom_resources checks them
    kv.validate(resource, version, strict=True)


@pytest.mark.parametrize("path", list(m.manifest_files()), ids=lambda p: str(p.relative_to(m.K8S)))
def test_every_manifest_file_validates(path: Any) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert docs, f"{path} holds no resource"
    for version in K8S_VERSIONS:
        for doc in docs:
            _validate(doc, version)


@needs_kubectl
@pytest.mark.parametrize("target", m.OVERLAYS)
def test_kustomize_output_validates(target: str) -> None:
    resources = m.kustomize(target)
    kinds = {r["kind"] for r in resources}
    assert {"Deployment", "Service", "ConfigMap", "CronJob", "Ingress"} <= kinds
    if target not in m.EXTERNAL_REDIS:
        assert {"StatefulSet", "NetworkPolicy", "PodDisruptionBudget"} <= kinds, "Redis in the cluster, fenced"
    for version in K8S_VERSIONS:
        for res in resources:
            _validate(res, version)


@needs_kubectl
def test_the_validator_rejects_a_broken_deployment() -> None:
    """Control: strict validation catches a misspelt field and a wrong type."""
    good = m.find(m.kustomize("base"), "Deployment", "oceanus-collector")
    typo = copy.deepcopy(good)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kv.ValidationError):
        kv.validate(typo, K8S_VERSIONS[-1], strict=True)
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(wrong_type, K8S_VERSIONS[-1], strict=True)


def _config_for(resources: tuple[dict[str, Any], ...], c: dict[str, Any]) -> config.Config:
    """The config a container runs with: the ConfigMap's file plus its OCEANUS_* env."""
    cm = m.find_prefix(resources, "ConfigMap", "oceanus-config")
    env = {k: v for k, v in m.env_of(c).items() if k.startswith("OCEANUS_")}
    return config.loads(cm["data"]["oceanus.toml"], env=env)


def _streams(cfg: config.Config) -> Any:
    return msgspec.to_builtins({name: s for name, s in cfg.streams.items()})


@needs_kubectl
@pytest.mark.parametrize("target", m.OVERLAYS)
def test_configmap_decodes_with_the_real_loader(target: str) -> None:
    resources = m.kustomize(target)
    cm = m.find_prefix(resources, "ConfigMap", "oceanus-config")
    cfg = config.loads(cm["data"]["oceanus.toml"])
    repo = config.load(m.REPO / "oceanus.toml", env={})
    # The cluster copy differs in addresses and paths, never in the streams.
    assert _streams(cfg) == _streams(repo), "k8s/base/oceanus.toml's streams drifted from oceanus.toml"
    if target not in m.SINGLE_REDIS:
        return  # the pods' OCEANUS_REDIS_URL names the cluster (test_redis_cluster.py)
    assert cfg.redis.url.startswith("redis://redis:")
    redis_svc = m.find(resources, "Service", "redis")
    assert cfg.redis.url.split(":")[2].split("/")[0] == str(redis_svc["spec"]["ports"][0]["port"])


def _mounted(c: dict[str, Any], path: str) -> bool:
    return any(
        path == v["mountPath"] or path.startswith(v["mountPath"].rstrip("/") + "/") for v in c.get("volumeMounts", [])
    )


def _prestop_s(c: dict[str, Any]) -> float:
    hook = c.get("lifecycle", {}).get("preStop")
    if not hook:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    cmd = hook["exec"]["command"]
    assert cmd[0] == "sleep", f"preStop {cmd}: the test only knows how long `sleep` takes"
    return float(cmd[1])


def _port(c: dict[str, Any], name: str) -> int:
    for p in c.get("ports", []):
        if p["name"] == name:
            return int(p["containerPort"])
    raise AssertionError(f"container {c['name']} has no port {name}")


@needs_kubectl
@pytest.mark.parametrize("target", m.OVERLAYS)
def test_collector_deployment(target: str) -> None:
    resources = m.kustomize(target)
    dep = m.find(resources, "Deployment", "oceanus-collector")
    pod = dep["spec"]["template"]["spec"]
    c = m.container(dep, "collector")
    cfg = _config_for(resources, c)
    assert c["args"][0] == "collector"
    assert _port(c, "http") == cfg.collector.port
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    budget = _prestop_s(c) + cfg.collector.drain_timeout_s
    assert _prestop_s(c) > 0, "preStop lets endpoints and load balancers forget the pod before SIGTERM"
    assert pod["terminationGracePeriodSeconds"] > budget, (
        f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} <= preStop + drain {budget}"
    )
    assert _mounted(c, cfg.collector.spool_dir), f"spool_dir {cfg.collector.spool_dir} is not on a volume"
    assert {t["topologyKey"] for t in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    _assert_hardened(pod, c)


@needs_kubectl
@pytest.mark.parametrize("target", m.OVERLAYS)
def test_flusher_deployment(target: str) -> None:
    resources = m.kustomize(target)
    dep = m.find(resources, "Deployment", "oceanus-flusher")
    pod = dep["spec"]["template"]["spec"]
    c = m.container(dep, "flusher")
    cfg = _config_for(resources, c)
    assert c["args"][0] == "flusher"
    assert cfg.flusher.admin_host == "0.0.0.0", "probes and Prometheus reach the admin port from outside the pod"
    assert _port(c, "admin") == cfg.flusher.admin_port
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] > _prestop_s(c) + cfg.flusher.drain_timeout_s
    init = m.container(dep, "tables-sync")
    assert init["args"][:2] == ["tables", "sync"]
    # The init container must write to the same warehouse as the flusher.
    assert _config_for(resources, init).sink == cfg.sink
    if cfg.sink.kind == "duckdb":
        assert _mounted(c, cfg.sink.duckdb.path)
        assert _mounted(init, cfg.sink.duckdb.path)
        volume = next(v for v in pod["volumes"] if v["name"] == "warehouse")
        assert "persistentVolumeClaim" in volume, "a DuckDB warehouse on an emptyDir dies with the pod"
        assert dep["spec"]["replicas"] == 1
        assert dep["spec"]["strategy"]["type"] == "Recreate"
    _assert_hardened(pod, c)


@needs_kubectl
@pytest.mark.parametrize("target", m.OVERLAYS)
def test_notify_deployment(target: str) -> None:
    resources = m.kustomize(target)
    dep = m.find(resources, "Deployment", "oceanus-notify")
    pod = dep["spec"]["template"]["spec"]
    c = m.container(dep, "notify")
    cfg = _config_for(resources, c)
    assert c["args"][0] == "notify"
    assert pod["enableServiceLinks"] is False
    assert cfg.rules, "the notifier of a config without rules has nothing to do"
    assert cfg.notify.admin_host == "0.0.0.0", "probes and Prometheus reach the admin port from outside the pod"
    assert _port(c, "admin") == cfg.notify.admin_port
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] > _prestop_s(c) + cfg.notify.drain_timeout_s
    redis_url = next(e for e in c["env"] if e["name"] == "OCEANUS_REDIS_URL")["value"]
    flusher = m.container(m.find(resources, "Deployment", "oceanus-flusher"), "flusher")
    assert redis_url == next(e for e in flusher["env"] if e["name"] == "OCEANUS_REDIS_URL")["value"]
    _assert_hardened(pod, c)


def _assert_hardened(pod: dict[str, Any], c: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["resources"]["requests"]["cpu"]
    assert c["resources"]["limits"]["memory"]


_MEMORY_UNITS = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
_REDIS_UNITS = {"b": 1, "kb": 1024, "mb": 2**20, "gb": 2**30, "k": 1000, "m": 10**6, "g": 10**9}


def _k8s_bytes(q: str) -> int:
    num, unit = re.fullmatch(r"(\d+)([KMG]i?)?", q).groups()  # type: ignore[union-attr]
    return int(num) * _MEMORY_UNITS[unit or ""]


def _redis_bytes(q: str) -> int:
    num, unit = re.fullmatch(r"(\d+)([a-z]*)", q.lower()).groups()  # type: ignore[union-attr]
    return int(num) * _REDIS_UNITS[unit or "b"]


def _redis_settings(conf: str, args: list[str]) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in conf.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            settings[key.lower()] = value.strip()
    # redis-server FILE --key value... : command-line options override the file.
    key = ""
    for arg in args[1:]:
        if arg.startswith("--"):
            key = arg[2:].lower()
            settings[key] = ""
        else:
            settings[key] = (settings[key] + " " + arg).strip()
    return settings


@needs_kubectl
@pytest.mark.parametrize("target", m.SINGLE_REDIS)
def test_redis_statefulset(target: str) -> None:
    resources = m.kustomize(target)
    sts = m.find(resources, "StatefulSet", "redis")
    c = m.container(sts, "redis")
    conf = m.find_prefix(resources, "ConfigMap", "redis-config")["data"]["redis.conf"]
    settings = _redis_settings(conf, c["args"])
    assert settings["appendonly"] == "yes"
    assert settings["appendfsync"] in ("always", "everysec")
    assert settings["maxmemory-policy"] == "noeviction", "evicting would drop acknowledged events"
    limit = _k8s_bytes(c["resources"]["limits"]["memory"])
    maxmemory = _redis_bytes(settings["maxmemory"])
    # An AOF rewrite forks: copy-on-write needs head-room above maxmemory.
    assert 0 < maxmemory <= 0.8 * limit, f"maxmemory {maxmemory} vs memory limit {limit}"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert any(v["name"] == claim["metadata"]["name"] and v["mountPath"] == settings["dir"] for v in c["volumeMounts"])
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"


@needs_kubectl
@pytest.mark.parametrize("target", m.SINGLE_REDIS)
def test_only_collector_flusher_and_notify_reach_redis(target: str) -> None:
    resources = m.kustomize(target)
    policy = m.find(resources, "NetworkPolicy", "redis")
    redis_labels = m.find(resources, "StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "no namespace or IP peers"
    (expr,) = peer["podSelector"]["matchExpressions"]
    assert expr["operator"] == "In"
    allowed = {expr["key"]: set(expr["values"])}
    admitted = set()
    for res in resources:
        if res["kind"] in ("Deployment", "StatefulSet"):
            labels = res["spec"]["template"]["metadata"]["labels"]
            if labels.get(expr["key"]) in allowed[expr["key"]]:
                admitted.add(res["metadata"]["name"])
    assert admitted == {"oceanus-collector", "oceanus-flusher", "oceanus-notify"}
    assert [p["port"] for p in rule["ports"]] == [6379]


@needs_kubectl
@pytest.mark.parametrize("target", m.OVERLAYS)
def test_service_ingress_hpa_pdb_point_at_the_collector(target: str) -> None:
    resources = m.kustomize(target)
    dep = m.find(resources, "Deployment", "oceanus-collector")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    svc = m.find(resources, "Service", "oceanus-collector")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    ing = m.find(resources, "Ingress", "oceanus-collector")
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == svc["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    hpa = m.find(resources, "HorizontalPodAutoscaler", "oceanus-collector")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "oceanus-collector"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = m.find(resources, "PodDisruptionBudget", "oceanus-collector")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@needs_kubectl
@pytest.mark.parametrize("target", m.GKE)
def test_gke_custom_resources_and_identity(target: str) -> None:
    resources = m.kustomize(target)
    dep = m.find(resources, "Deployment", "oceanus-collector")
    c = m.container(dep, "collector")
    backend = m.find(resources, "BackendConfig", "oceanus-collector")["spec"]
    # The load balancer's health check must agree with the pod's readiness.
    assert backend["healthCheck"]["requestPath"] == c["readinessProbe"]["httpGet"]["path"]
    assert backend["healthCheck"]["port"] == _port(c, "http")
    svc = m.find(resources, "Service", "oceanus-collector")
    assert '"oceanus-collector"' in svc["metadata"]["annotations"]["cloud.google.com/backend-config"]
    assert _prestop_s(c) >= backend["connectionDraining"]["drainingTimeoutSec"]
    for name, port in (("oceanus-collector", "http"), ("oceanus-flusher", "admin")):
        monitor = m.find(resources, "PodMonitoring", name)
        workload = m.find(resources, "Deployment", name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert monitor["spec"]["endpoints"][0]["port"] == port
        _port(m.containers(workload)[0], port)
    sa = m.find(resources, "ServiceAccount", "oceanus-flusher")
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    flusher = m.find(resources, "Deployment", "oceanus-flusher")
    assert flusher["spec"]["template"]["spec"]["serviceAccountName"] == "oceanus-flusher"
    assert _config_for(resources, m.container(flusher, "flusher")).sink.kind == "bigquery"
    spool = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "spool")
    assert "ephemeral" in spool
    assert "emptyDir" not in spool
