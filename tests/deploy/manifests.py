"""Loading the deployment files the tests check: kustomize output, compose,
Prometheus rules, the Grafana dashboard, and the metric names they reference."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = REPO / "k8s"
#: Every kustomize target; each passes the schema, hardening and process checks.
OVERLAYS = ("base", "overlays/dev", "overlays/gke", "overlays/redis-cluster", "overlays/gke-memorystore-cluster")
#: The targets running the base's one Redis (StatefulSet `redis`); the others reach a Redis Cluster.
SINGLE_REDIS = ("base", "overlays/dev", "overlays/gke")
#: The gke overlay and the one built on it (Google's load balancer, Workload Identity, BigQuery).
GKE = ("overlays/gke", "overlays/gke-memorystore-cluster")
#: Where Redis lives outside Kubernetes and has no oceanus password (Memorystore, IAM auth off).
EXTERNAL_REDIS = ("overlays/gke-memorystore-cluster",)
ALERTS = DOCKER / "prometheus" / "alerts.yml"
DASHBOARD = DOCKER / "grafana" / "oceanus.json"

#: Custom resources of GKE add-ons: no schema in kubernetes-validate, checked by hand.
GKE_CUSTOM_KINDS = frozenset(
    {
        ("cloud.google.com/v1", "BackendConfig"),
        ("monitoring.googleapis.com/v1", "PodMonitoring"),
        ("networking.gke.io/v1", "ManagedCertificate"),
        ("networking.gke.io/v1beta1", "FrontendConfig"),
    }
)

Resource = dict[str, Any]

_METRIC = re.compile(r"\boceanus_[a-z0-9_]+\b")
_RECORDED = re.compile(r"\boceanus:[a-z0-9_:]+\b")


def kubectl() -> str | None:
    return shutil.which("kubectl")


@cache
def kustomize(target: str) -> tuple[Resource, ...]:
    """``kubectl kustomize k8s/<target>`` as parsed resources (offline: local files only)."""
    exe = kubectl()
    if exe is None:
        raise RuntimeError("kubectl is not installed")
    out = subprocess.run([exe, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {target} failed: {out.stderr.strip()}")
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def find(resources: tuple[Resource, ...], kind: str, name: str) -> Resource:
    for res in resources:
        if res["kind"] == kind and res["metadata"]["name"] == name:
            return res
    raise AssertionError(f"no {kind}/{name} in the built manifests")


def find_prefix(resources: tuple[Resource, ...], kind: str, prefix: str) -> Resource:
    """A generated ConfigMap: its name carries a content hash."""
    hits = [r for r in resources if r["kind"] == kind and r["metadata"]["name"].startswith(prefix + "-")]
    if len(hits) != 1:
        raise AssertionError(f"expected one {kind} named {prefix}-<hash>, found {len(hits)}")
    return hits[0]


def pod_spec(workload: Resource) -> dict[str, Any]:
    """The pod template's spec of a Deployment, StatefulSet, DaemonSet, Job or CronJob."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    result: dict[str, Any] = spec["template"]["spec"]
    return result


def containers(workload: Resource, init: bool = False) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return list(spec.get("initContainers", []) if init else spec["containers"])


def container(workload: Resource, name: str) -> dict[str, Any]:
    for c in containers(workload) + containers(workload, init=True):
        if c["name"] == name:
            return c
    raise AssertionError(f"{workload['metadata']['name']} has no container {name}")


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e}


def manifest_files() -> Iterator[Path]:
    """Every complete manifest in k8s/ (kustomizations and patches are partial by design)."""
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.name.endswith(".patch.yaml"):
            continue
        yield path


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    data = load_yaml(DOCKER / "compose.yaml")
    assert isinstance(data, dict)
    return data


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of every panel and templating query."""
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard()["panels"])
    for var in dashboard().get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if var.get("type") == "query" and isinstance(query, str):
            exprs.append(query)
    return exprs


def metric_names(text: str) -> set[str]:
    """``oceanus_*`` metric names in a PromQL expression or any text."""
    return set(_METRIC.findall(text))


def recorded_names(text: str) -> set[str]:
    """``oceanus:*`` recording-rule names (made by Prometheus, not by oceanus)."""
    return set(_RECORDED.findall(text))


def referenced_metrics() -> dict[str, set[str]]:
    """Metric name -> where it is referenced (alert or panel)."""
    refs: dict[str, set[str]] = {}
    for rule in alert_rules():
        where = f"rule {rule.get('alert') or rule.get('record')}"
        for name in metric_names(rule["expr"]):
            refs.setdefault(name, set()).add(where)
    for expr in dashboard_exprs():
        for name in metric_names(expr):
            refs.setdefault(name, set()).add("dashboard")
    return refs


def exposed_names(exposition: str) -> set[str]:
    """Names a Prometheus scrape of this text can return, declared or sampled.

    A labelled family with no child yet has only ``# TYPE`` lines, so the
    declaration counts: counters as ``<family>_total``, histograms and
    summaries with their ``_bucket``/``_sum``/``_count`` series.
    """
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) < 4:
                continue
            family, kind = parts[2], parts[3]
            names.add(family)
            if kind == "counter":
                names.add(family if family.endswith("_total") else family + "_total")
            elif kind in ("histogram", "summary"):
                names.update({family + "_sum", family + "_count"})
                if kind == "histogram":
                    names.add(family + "_bucket")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names
