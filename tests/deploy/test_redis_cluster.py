"""The Redis Cluster deployments: the compose profile `cluster`, the k8s overlays
`redis-cluster` (six pods, a forming Job) and `gke-memorystore-cluster` (no Redis of
its own). Checked as files (shape, hardening, the URL, the nodes named everywhere), and
by forming a real six-node cluster with the deployment's own redis-server arguments and
forming script, twice, then once more after every node came back at a new address."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from collector.cluster import ClusterLink, parse_url
from collector.resp import pack
from oceanus import config
from tests.deploy import manifests as m
from tests.deploy import redis_acl
from tests.deploy.test_docker import REQUIRED_ENV, _interpolate
from tests.deploy.test_k8s import _assert_hardened, _k8s_bytes, _redis_bytes, _redis_settings
from tests.deploy.test_k8s_hardening import REDIS_SECRET, _expand, _options, _redis_url, _secret_ref
from tests.support.servers import free_ports, port_open, wait_for

needs_kubectl = pytest.mark.skipif(m.kubectl() is None, reason="kubectl (for kustomize) is not installed")

CLUSTER = "overlays/redis-cluster"
MEMORYSTORE = "overlays/gke-memorystore-cluster"
SCRIPT = m.K8S / CLUSTER / "redis-cluster-init.sh"
#: The Secret key of the admin user's password (replication, the forming Job).
ADMIN_SECRET = ("oceanus-redis", "admin-password")
NODES = 6
REPLICAS = 1
OCEANUS_ROLES = (("oceanus-collector", "collector"), ("oceanus-flusher", "flusher"), ("oceanus-notify", "notify"))


def _env(c: dict[str, Any], name: str) -> dict[str, Any]:
    for e in c.get("env", []):
        if e["name"] == name:
            return dict(e)
    raise AssertionError(f"container {c['name']} has no env {name}")


def _host_ports(text: str) -> list[tuple[str, int]]:
    return [(h, int(p)) for h, _, p in (w.rpartition(":") for w in text.split())]


# --- k8s: overlays/redis-cluster ----------------------------------------------------------


@dataclass(frozen=True)
class K8sCluster:
    sts: dict[str, Any]
    svc: dict[str, Any]
    job: dict[str, Any]
    conf: str
    resources: tuple[m.Resource, ...]

    @property
    def pod_names(self) -> list[tuple[str, int]]:
        """Each pod's stable DNS name (StatefulSet ordinals, headless Service), with the Redis port."""
        port = int(self.svc["spec"]["ports"][0]["port"])
        name, service = self.sts["metadata"]["name"], self.sts["spec"]["serviceName"]
        return [(f"{name}-{i}.{service}", port) for i in range(self.sts["spec"]["replicas"])]


def _k8s_cluster() -> K8sCluster:
    resources = m.kustomize(CLUSTER)
    return K8sCluster(
        sts=m.find(resources, "StatefulSet", "redis-cluster"),
        svc=m.find(resources, "Service", "redis-cluster"),
        job=m.find(resources, "Job", "redis-cluster-init"),
        conf=m.find_prefix(resources, "ConfigMap", "redis-cluster-config")["data"]["redis.conf"],
        resources=resources,
    )


@needs_kubectl
@pytest.mark.parametrize("target", [CLUSTER, MEMORYSTORE])
def test_the_cluster_overlays_run_no_single_redis(target: str) -> None:
    resources = m.kustomize(target)
    single = [r["kind"] for r in resources if r["metadata"]["name"] == "redis"]
    assert not single, f"the base's single Redis is still there: {single}"
    assert not [r for r in resources if r["metadata"]["name"].startswith("redis-config-")]


@needs_kubectl
def test_the_statefulset_is_six_durable_nodes_in_cluster_mode() -> None:
    k = _k8s_cluster()
    spec = k.sts["spec"]
    assert spec["replicas"] == NODES
    assert spec["serviceName"] == k.svc["metadata"]["name"]
    assert k.svc["spec"]["clusterIP"] == "None", "headless: one DNS name per pod"
    assert k.svc["spec"]["publishNotReadyAddresses"] is True, "names resolve before the cluster is formed"
    assert spec["podManagementPolicy"] == "Parallel", "no pod is ready before the Job ran: OrderedReady would wait"
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    c = m.container(k.sts, "redis")
    settings = _redis_settings(k.conf, c["args"])
    assert settings["cluster-enabled"] == "yes"
    assert settings["appendonly"] == "yes"
    assert settings["appendfsync"] in ("always", "everysec")
    assert settings["maxmemory-policy"] == "noeviction", "evicting would drop acknowledged events"
    assert 0 < _redis_bytes(settings["maxmemory"]) <= 0.8 * _k8s_bytes(c["resources"]["limits"]["memory"])
    # nodes.conf (the node's ids, slots and peers) and the AOF on the claimed disk.
    assert "/" not in settings["cluster-config-file"]
    (claim,) = spec["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": settings["dir"]} in c["volumeMounts"]
    # Clients are sent to the pod's stable name, not to its IP.
    assert settings["cluster-preferred-endpoint-type"] == "hostname"
    assert settings["cluster-announce-hostname"] == f"$(POD_NAME).{spec['serviceName']}"
    assert _env(c, "POD_NAME")["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"redis": int(settings["port"]), "bus": int(settings["port"]) + 10000}
    assert {p["name"]: p["port"] for p in k.svc["spec"]["ports"]} == ports


@needs_kubectl
def test_the_cluster_pods_are_hardened_like_the_base_redis() -> None:
    k = _k8s_cluster()
    base = m.find(m.kustomize("base"), "StatefulSet", "redis")
    pod, base_pod = m.pod_spec(k.sts), m.pod_spec(base)
    c, base_c = m.container(k.sts, "redis"), m.container(base, "redis")
    assert c["image"] == base_c["image"]
    assert pod["securityContext"] == base_pod["securityContext"]
    assert c["securityContext"] == base_c["securityContext"]
    for key in ("automountServiceAccountToken", "enableServiceLinks", "terminationGracePeriodSeconds"):
        assert pod[key] == base_pod[key], key
    assert c["livenessProbe"] == base_c["livenessProbe"]
    _assert_hardened(pod, c)
    # The users: default off (redis.conf), oceanus as in the base, oceanus-admin for replication.
    assert "user default off" in k.conf
    assert "protected-mode yes" in k.conf
    users = {u[0]: u for u in _options(c["args"][1:])["user"]}
    assert users["oceanus"] == _options(base_c["args"][1:])["user"][0]
    assert users["oceanus-admin"][:3] == ["oceanus-admin", "on", ">$(REDIS_ADMIN_PASSWORD)"]
    assert _options(c["args"][1:])["masteruser"] == [["oceanus-admin"]]
    assert _options(c["args"][1:])["masterauth"] == [["$(REDIS_ADMIN_PASSWORD)"]]
    assert _secret_ref(c, "REDISCLI_AUTH") == REDIS_SECRET
    assert _secret_ref(c, "REDIS_ADMIN_PASSWORD") == ADMIN_SECRET
    probe = " ".join(c["readinessProbe"]["exec"]["command"])
    assert "redis-cli --user oceanus cluster info" in probe
    assert "cluster_state:ok" in probe
    # The Job: hardened too, and it alone holds the admin password besides Redis.
    job_pod = m.pod_spec(k.job)
    (jc,) = job_pod["containers"]
    _assert_hardened(job_pod, jc)
    assert jc["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert job_pod["automountServiceAccountToken"] is False
    assert job_pod["enableServiceLinks"] is False
    assert _secret_ref(jc, "REDISCLI_AUTH") == ADMIN_SECRET
    for name, cname in OCEANUS_ROLES:
        app = m.container(m.find(k.resources, "Deployment", name), cname)
        assert "admin-password" not in str(app.get("env")), f"{name} must not hold the admin password"


@needs_kubectl
def test_masters_and_replicas_spread_and_one_goes_at_a_time() -> None:
    k = _k8s_cluster()
    pod = m.pod_spec(k.sts)
    labels = k.sts["spec"]["template"]["metadata"]["labels"]
    (rule,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert rule["topologyKey"] == "kubernetes.io/hostname"
    assert rule["labelSelector"]["matchLabels"].items() <= labels.items(), "one Redis pod per machine"
    zones = [t for t in pod["topologySpreadConstraints"] if t["topologyKey"] == "topology.kubernetes.io/zone"]
    assert zones
    assert zones[0]["labelSelector"]["matchLabels"].items() <= labels.items()
    pdb = m.find(k.resources, "PodDisruptionBudget", "redis-cluster")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


@needs_kubectl
def test_the_url_the_job_and_the_pods_name_the_same_six_nodes() -> None:
    k = _k8s_cluster()
    password = secrets.token_hex(8)
    for name, cname in OCEANUS_ROLES:
        app = m.container(m.find(k.resources, "Deployment", name), cname)
        assert _secret_ref(app, "REDIS_PASSWORD") == REDIS_SECRET
        url = _expand(_redis_url(app), {"REDIS_PASSWORD": password})  # also checks the variable comes first
        seeds, user, pw, tls = parse_url(url)
        assert seeds == k.pod_names, f"{name}: every pod a seed"
        assert (user, pw, tls) == ("oceanus", password, False)
        # The config loader takes the URL as it is; the link is chosen from its scheme.
        cfg = m.find_prefix(k.resources, "ConfigMap", "oceanus-config")["data"]["oceanus.toml"]
        assert config.loads(cfg, env={"OCEANUS_REDIS_URL": url}).redis.url == url
    (jc,) = m.containers(k.job)
    env = m.env_of(jc)
    assert _host_ports(env["REDIS_CLUSTER_NODES"]) == k.pod_names
    assert env["REDIS_CLUSTER_REPLICAS"] == str(REPLICAS)
    assert divmod(NODES, 1 + REPLICAS) == (3, 0), "3 masters, 1 replica each"
    assert jc["command"] == ["sh", "/scripts/redis-cluster-init.sh"]
    script = m.find_prefix(k.resources, "ConfigMap", "redis-cluster-init")["data"]["redis-cluster-init.sh"]
    assert script == SCRIPT.read_text(encoding="utf-8")
    assert k.job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


@needs_kubectl
def test_only_oceanus_the_job_and_the_nodes_reach_the_cluster() -> None:
    k = _k8s_cluster()
    policy = m.find(k.resources, "NetworkPolicy", "redis-cluster")
    labels = k.sts["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    clients, peers = policy["spec"]["ingress"]
    (client,) = clients["from"]
    (expr,) = client["podSelector"]["matchExpressions"]
    admitted = {
        r["metadata"]["name"]
        for r in k.resources
        if r["kind"] in ("Deployment", "StatefulSet", "Job")
        and r["spec"]["template"]["metadata"]["labels"].get(expr["key"]) in expr["values"]
    }
    assert expr["operator"] == "In"
    assert admitted == {"oceanus-collector", "oceanus-flusher", "oceanus-notify", "redis-cluster-init"}
    assert [p["port"] for p in clients["ports"]] == [6379]
    (peer,) = peers["from"]
    assert peer == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis-cluster"}}}
    assert sorted(p["port"] for p in peers["ports"]) == [6379, 16379], "replication and the cluster bus"


# --- k8s: overlays/gke-memorystore-cluster ------------------------------------------------------


@needs_kubectl
def test_memorystore_overlay_points_at_the_discovery_endpoint() -> None:
    resources = m.kustomize(MEMORYSTORE)
    assert not [r for r in resources if r["kind"] in ("StatefulSet", "Job")], "no Redis in the cluster"
    assert not [r for r in resources if r["kind"] == "NetworkPolicy"], "the base's policy fenced the in-cluster Redis"
    cm = m.find_prefix(resources, "ConfigMap", "oceanus-memorystore")
    endpoint = cm["data"]["discovery-endpoint"]
    assert endpoint == "DISCOVERY_ENDPOINT_IP:6379", "a placeholder the overlay's header explains"
    for name, cname in OCEANUS_ROLES:
        app = m.container(m.find(resources, "Deployment", name), cname)
        ref = _env(app, "REDIS_CLUSTER_ENDPOINT")["valueFrom"]["configMapKeyRef"]
        assert ref == {"name": cm["metadata"]["name"], "key": "discovery-endpoint"}
        assert "REDIS_PASSWORD" not in {e["name"] for e in app["env"]}
        url = _expand(_redis_url(app), {"REDIS_CLUSTER_ENDPOINT": endpoint})
        assert parse_url(url) == ([("DISCOVERY_ENDPOINT_IP", 6379)], None, None, False)
    # The rest is the gke overlay's: BigQuery through Workload Identity.
    flusher = m.container(m.find(resources, "Deployment", "oceanus-flusher"), "flusher")
    assert m.env_of(flusher).get("OCEANUS_SINK_KIND", "bigquery") == "bigquery"


# --- compose: profile `cluster` ------------------------------------------------------------------------

COMPOSE_NODES = [f"redis-node-{i}" for i in range(1, NODES + 1)]
COMPOSE_ROLES = ("collector-cluster", "tables-cluster", "flusher-cluster", "notify-cluster")


def _compose_unescape(text: str) -> str:
    """compose's ``$$``: a literal ``$`` for the container's shell."""
    return text.replace("$$", "$")


def test_compose_cluster_profile_leaves_the_other_profiles_alone() -> None:
    services = m.compose()["services"]
    cluster = {name for name, svc in services.items() if "cluster" in svc.get("profiles", [])}
    assert cluster == {*COMPOSE_NODES, "redis-cluster-init", *COMPOSE_ROLES}
    for name, svc in services.items():
        if name not in cluster:
            assert not set(svc.get("depends_on", {})) & cluster, f"{name} needs a cluster service"
            assert "redis+cluster" not in str(svc.get("environment")), name
    assert all(services[n]["profiles"] == ["cluster"] for n in cluster)


def test_compose_cluster_nodes_are_durable_checked_and_hardened() -> None:
    data = m.compose()
    services = data["services"]
    single = services["redis"]
    volumes = set()
    for name in COMPOSE_NODES:
        svc = services[name]
        assert svc["hostname"] == name, "the node announces its service name"
        assert svc["healthcheck"]["test"] == single["healthcheck"]["test"]
        (volume,) = svc["volumes"]
        source, target = volume.split(":")
        assert target == "/data"
        assert source in data["volumes"]
        volumes.add(source)
        for key in ("image", "user", "read_only", "cap_drop", "security_opt", "restart"):
            assert svc[key] == single[key], f"{name}: {key} differs from the redis service"
        opts = dict(zip(svc["command"][::2], svc["command"][1::2], strict=False))
        assert opts["--cluster-enabled"] == "yes"
        assert opts["--appendonly"] == "yes"
        assert opts["--appendfsync"] in ("always", "everysec")
        assert opts["--maxmemory-policy"] == "noeviction"
        assert opts["--cluster-preferred-endpoint-type"] == "hostname"
        assert "--cluster-announce-hostname" in svc["entrypoint"][2]
        assert "$$HOSTNAME" in svc["entrypoint"][2]
    assert len(volumes) == NODES, "each node its own volume"


def test_compose_cluster_init_names_all_six_nodes_with_one_replica() -> None:
    services = m.compose()["services"]
    init = services["redis-cluster-init"]
    env = init["environment"]
    assert _host_ports(env["REDIS_CLUSTER_NODES"]) == [(n, 6379) for n in COMPOSE_NODES]
    assert env["REDIS_CLUSTER_REPLICAS"] == str(REPLICAS)
    assert init["depends_on"] == {n: {"condition": "service_healthy"} for n in COMPOSE_NODES}
    assert init["restart"] == "no"
    (bind,) = init["volumes"]
    source, target, mode = bind.split(":")
    assert (m.DOCKER / source).resolve() == SCRIPT, "the same script as the k8s Job"
    assert mode == "ro"
    assert init["entrypoint"] == ["sh", target]


def test_compose_cluster_roles_use_the_cluster_url() -> None:
    services = m.compose()["services"]
    text = (m.REPO / "oceanus.toml").read_text(encoding="utf-8")
    for name in COMPOSE_ROLES:
        svc = services[name]
        env = {k: _interpolate(str(v)) for k, v in svc["environment"].items()}
        cfg = config.loads(text, env={k: v for k, v in env.items() if k.startswith("OCEANUS_")})
        seeds, user, password, _ = parse_url(cfg.redis.url)
        assert seeds == [(n, 6379) for n in COMPOSE_NODES]
        assert (user, password) == ("oceanus", REQUIRED_ENV["OCEANUS_REDIS_PASSWORD"])
        assert all(v.split(":")[0].endswith("-cluster") for v in svc.get("volumes", [])), "volumes of its own"
        if name != "tables-cluster":
            assert svc["depends_on"]["redis-cluster-init"] == {"condition": "service_completed_successfully"}
    assert services["flusher-cluster"]["depends_on"]["tables-cluster"]["condition"] == "service_completed_successfully"


# --- a real cluster, formed by the deployment's own script ---------------------------------------------


@dataclass
class Node:
    port: int
    bus_port: int
    data_dir: Path
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self, host: str) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        overrides = ["--port", str(self.port), "--cluster-port", str(self.bus_port), "--bind", host]
        overrides += ["--dir", str(self.data_dir), "--cluster-node-timeout", "1000", "--daemonize", "no"]
        overrides += ["--logfile", str(self.data_dir / "redis.log")]
        self.proc = subprocess.Popen(
            [*self.argv, *overrides], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: port_open(self.port, host) or self.proc.poll() is not None, timeout=20, what="a node")  # type: ignore[union-attr]
        assert self.proc.poll() is None, f"redis-server refused the arguments: see {self.data_dir}/redis.log"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # SHUTDOWN: AOF and nodes.conf written
            self.proc.wait(timeout=20)


#: (argv of node i, environment, announced hostname of node i) from a deployment file.
Flavour = Callable[[int, Path, str, str], tuple[list[str], dict[str, str], str]]


def _compose_node(i: int, tmp: Path, password: str, admin: str) -> tuple[list[str], dict[str, str], str]:
    svc = m.compose()["services"][COMPOSE_NODES[i]]
    env = {"OCEANUS_REDIS_PASSWORD": password, "GRAFANA_ADMIN_PASSWORD": "x"}
    entry = [_compose_unescape(_interpolate(str(a), env)) for a in svc["entrypoint"]]
    command = [_interpolate(str(a), env) for a in svc["command"]]
    # compose's HOSTNAME would be the service name; here every node is this machine.
    node_env = {"PATH": os.environ["PATH"], "HOSTNAME": "localhost", "REDIS_ADMIN_PASSWORD": admin}
    return [*entry, *command], node_env, "localhost"


def _k8s_node(i: int, tmp: Path, password: str, admin: str) -> tuple[list[str], dict[str, str], str]:
    k = _k8s_cluster()
    c = m.container(k.sts, "redis")
    conf, n = re.subn(r"(?m)^dir .*$", f"dir {tmp}", k.conf)  # the command line's --dir comes too late
    assert n == 1
    path = tmp.parent / f"redis-{i}.conf"
    path.write_text(conf, encoding="utf-8")
    pod = f"{k.sts['metadata']['name']}-{i}"
    values = {"POD_NAME": pod, "REDISCLI_AUTH": password, "REDIS_ADMIN_PASSWORD": admin}
    args = [_expand(a, values) for a in c["args"]]
    assert args[0] == "/etc/redis/redis.conf"
    hostname = f"{pod}.{k.sts['spec']['serviceName']}"
    # The pod names do not resolve here: clients get IPs, the announced name is still checked.
    argv = [shutil.which("redis-server") or "redis-server", str(path), *args[1:]]
    return [*argv, "--cluster-preferred-endpoint-type", "ip"], {}, hostname


@contextmanager
def _nodes(flavour: Flavour, tmp: Path, password: str, admin: str) -> Iterator[list[Node]]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server / redis-cli are not installed")
    ports = free_ports(2 * NODES)
    nodes = []
    for i in range(NODES):
        argv, env, _ = flavour(i, tmp / f"node-{i}", password, admin)
        nodes.append(Node(ports[i], ports[NODES + i], tmp / f"node-{i}", argv, env))
    try:
        for node in nodes:
            node.start("127.0.0.1")
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _form(nodes: list[Node], host: str, admin: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "REDIS_CLUSTER_NODES": " ".join(f"{host}:{n.port}" for n in nodes),
        "REDIS_CLUSTER_REPLICAS": str(REPLICAS),
        "REDIS_CLUSTER_USER": "oceanus-admin",
        "REDISCLI_AUTH": admin,
        "REDIS_CLUSTER_WAIT_S": "60",
    }
    return subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=180, check=False)


def _admin(node: Node, host: str, admin: str) -> redis.Redis:
    return redis.Redis(host=host, port=node.port, username="oceanus-admin", password=admin, socket_timeout=5)


def _shards(node: Node, host: str, admin: str) -> list[list[dict[bytes, Any]]]:
    """CLUSTER SHARDS as Redis sends it (redis-py's client reshapes it): each shard's nodes."""
    conn = redis.Connection(host=host, port=node.port, username="oceanus-admin", password=admin, socket_timeout=5)
    try:
        conn.send_command("CLUSTER", "SHARDS")
        raw = conn.read_response()
    finally:
        conn.disconnect()
    return [[_pairs(n) for n in _pairs(shard)[b"nodes"]] for shard in raw]


def _pairs(reply: Any) -> dict[bytes, Any]:
    """A RESP3 map, or its RESP2 form: a flat list of keys and values."""
    return dict(reply) if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))


def _assert_formed(nodes: list[Node], host: str, admin: str, hostnames: set[str]) -> None:
    """The cluster as formed, once gossip has settled: right after forming, Redis 7.0 may list a
    replica as a shard of its own for a moment (its shard id not yet learned), so this polls."""
    deadline = time.monotonic() + 15
    while True:
        try:
            _check_formed(nodes, host, admin, hostnames)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _check_formed(nodes: list[Node], host: str, admin: str, hostnames: set[str]) -> None:
    for node in nodes:
        client = _admin(node, host, admin)
        try:
            info = client.cluster("INFO")
        finally:
            client.close()
        assert info["cluster_state"] == "ok"
        assert int(info["cluster_slots_assigned"]) == 16384
        assert int(info["cluster_known_nodes"]) == NODES
    shards = _shards(nodes[0], host, admin)
    assert len(shards) == NODES // (1 + REPLICAS)
    announced = set()
    for shard in shards:
        roles = sorted(n[b"role"] for n in shard)
        assert roles == [b"master"] + [b"replica"] * REPLICAS, shard
        announced |= {n[b"hostname"].decode() for n in shard}
    assert announced == hostnames, "each node announces its name"


async def _push_as_oceanus(url: str) -> list[Any]:
    link = ClusterLink(url, 2.0)
    try:
        return await link.round([pack("RPUSH", f"oceanus:q:t{i}", b"frame") for i in range(30)])
    finally:
        link.close()


@pytest.mark.parametrize("flavour", [_compose_node, _k8s_node], ids=["compose", "k8s"])
def test_the_script_forms_the_cluster_once_with_the_deployments_own_nodes(flavour: Flavour, tmp_path: Path) -> None:
    password, admin = secrets.token_hex(12), secrets.token_hex(12)
    # The health check compose waits on, and the readiness the StatefulSet's rolling update waits on.
    if flavour is _compose_node:
        probe, ready_before = ["sh", "-c", m.compose()["services"][COMPOSE_NODES[0]]["healthcheck"]["test"][1]], True
    else:
        probe, ready_before = m.container(_k8s_cluster().sts, "redis")["readinessProbe"]["exec"]["command"], False
    with _nodes(flavour, tmp_path, password, admin) as nodes:
        assert redis_acl.probe_passes(probe, nodes[0].port, password) is ready_before
        first = _form(nodes, "127.0.0.1", admin)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "forming a cluster of" in first.stderr
        assert redis_acl.probe_passes(probe, nodes[0].port, password)
        assert not redis_acl.probe_passes(probe, nodes[0].port, "wrong")
        hostnames = {flavour(i, tmp_path / f"node-{i}", password, admin)[2] for i in range(NODES)}
        _assert_formed(nodes, "127.0.0.1", admin, hostnames)
        again = _form(nodes, "127.0.0.1", admin)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "nothing to do" in again.stderr
        assert "forming" not in again.stderr
        # oceanus's own user pushes through the cluster link, and administers nothing.
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in nodes[:3])
        assert asyncio.run(_push_as_oceanus(f"redis+cluster://oceanus:{password}@{seeds}")) == [1] * 30
        client = redis.Redis(port=nodes[0].port, username="oceanus", password=password)
        try:
            for command in (("CLUSTER", "MEET", "127.0.0.1", "1"), ("CLUSTER", "RESET"), ("FLUSHALL",)):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    client.execute_command(*command)
        finally:
            client.close()
        anonymous = redis.Redis(port=nodes[0].port)
        try:
            with pytest.raises(redis.exceptions.AuthenticationError):
                anonymous.ping()
        finally:
            anonymous.close()


def test_the_script_reintroduces_nodes_that_all_came_back_at_new_addresses(tmp_path: Path) -> None:
    """Pods rescheduled together get new IPs; nodes.conf still holds the old ones, and the
    cluster bus connects to IPs only. 127.0.0.2 stands in for the new pod network."""
    password, admin = secrets.token_hex(12), secrets.token_hex(12)
    with _nodes(_k8s_node, tmp_path, password, admin) as nodes:
        formed = _form(nodes, "127.0.0.1", admin)
        assert formed.returncode == 0, formed.stderr
        for node in nodes:
            node.stop()
        for node in nodes:
            node.start("127.0.0.2")
        client = _admin(nodes[0], "127.0.0.2", admin)
        try:
            # The peers' old addresses answer no more.
            wait_for(lambda: b" disconnected" in client.execute_command("CLUSTER", "NODES"), what="links down")
        finally:
            client.close()
        again = _form(nodes, "127.0.0.2", admin)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "introducing every node again" in again.stderr
        hostnames = {f"redis-cluster-{i}.redis-cluster" for i in range(NODES)}
        _assert_formed(nodes, "127.0.0.2", admin, hostnames)
