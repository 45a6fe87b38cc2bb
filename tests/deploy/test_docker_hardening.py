"""The image and the compose stack, hardened: labels that carry their values,
state on the volumes, pinned dependencies, a read-only stack with limits, Redis
behind an ACL user (checked against a real redis-server with compose's own
arguments), Grafana on loopback with a password of the operator's."""

from __future__ import annotations

import posixpath
import re
import secrets
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from oceanus import config
from tests.deploy import manifests as m
from tests.deploy import redis_acl
from tests.deploy.test_docker import _interpolate, _stages

CONSTRAINTS = m.DOCKER / "constraints.txt"
_REF = re.compile(r"\$\{?(\w+)")


def _env_pairs(arg: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in shlex.split(arg) if "=" in word)


def test_every_variable_a_stage_uses_is_in_scope() -> None:
    """An ARG declared before the first FROM is empty inside a stage that does not declare it again."""
    for stage in _stages():
        scope: set[str] = set()
        for op, arg in stage[1:]:
            if op == "ARG":
                scope.add(arg.split("=", 1)[0].strip())
            elif op == "ENV":
                scope.update(_env_pairs(arg))
            elif op in ("LABEL", "COPY", "WORKDIR", "USER", "EXPOSE"):
                missing = {v for v in _REF.findall(arg) if v not in scope}
                assert not missing, f"{op} {arg[:60]}...: {sorted(missing)} not declared in this stage"
    final = _stages()[-1]
    labels = " ".join(a for op, a in final if op == "LABEL")
    assert 'org.opencontainers.image.base.name="${PYTHON_IMAGE}"' in labels


def test_the_image_writes_only_to_the_directories_it_makes() -> None:
    final = _stages()[-1]
    env: dict[str, str] = {}
    workdir = "/"
    made: set[str] = set()
    for op, arg in final:
        if op == "ENV":
            env.update(_env_pairs(arg))
        elif op == "WORKDIR":
            workdir = posixpath.join(workdir, arg)
        elif op == "RUN" and "install -d" in arg:
            made.update(w for w in shlex.split(arg.split("install -d", 1)[1]) if w.startswith("/"))
    cfg = config.load(m.REPO / "oceanus.toml", env={k: v for k, v in env.items() if k.startswith("OCEANUS_")})
    spool = posixpath.normpath(posixpath.join(workdir, cfg.collector.spool_dir))
    warehouse = posixpath.dirname(posixpath.normpath(posixpath.join(workdir, cfg.sink.duckdb.path)))
    assert spool in made, f"collector.spool_dir resolves to {spool}, not a directory the image makes ({made})"
    assert warehouse in made, f"sink.duckdb.path resolves under {warehouse}, not one of {made}"
    # And compose mounts its named volumes exactly there.
    services = m.compose()["services"]
    assert f"collector-spool:{spool}" in services["collector"]["volumes"]
    assert f"warehouse:{warehouse}" in services["flusher"]["volumes"]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_the_image_installs_pinned_versions() -> None:
    runs = [a for stage in _stages() for op, a in stage if op == "RUN" and "pip install" in a]
    assert runs
    for run in runs:
        for command in re.findall(r"pip install[^;&]*", run):
            assert "-c docker/constraints.txt" in command, f"unpinned: {command}"
    copies = [a for stage in _stages() for op, a in stage if op == "COPY"]
    assert "docker/constraints.txt docker/constraints.txt" in copies
    pins = _pins()
    project = tomllib.loads((m.REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [Requirement(r) for r in (*project["dependencies"], *project["optional-dependencies"]["emulator"])]
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in docker/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {req}"


def test_constraints_are_the_environments_closure() -> None:
    """docker/constraints.py --check: the file equals what it would write now."""
    out = subprocess.run(
        [sys.executable, str(m.DOCKER / "constraints.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr


# --- compose -----------------------------------------------------------------------------


def _bytes(text: str) -> int:
    num, unit = re.fullmatch(r"(\d+)([kmg]?)b?", str(text).lower()).groups()  # type: ignore[union-attr]
    return int(num) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit]


def test_compose_images_are_pinned() -> None:
    version = tomllib.loads((m.REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    for name, svc in m.compose()["services"].items():
        image = _interpolate(svc["image"])
        repo, _, tag = image.rpartition(":")
        assert repo, f"{name}: image {image} has no fixed tag"
        assert tag, f"{name}: image {image} has no fixed tag"
        assert "latest" not in tag, f"{name}: image {image} has no fixed tag"
        if repo == "oceanus":
            assert tag.split("-")[0] == version, f"{name}: {image} is not this tree's version {version}"


def test_compose_services_are_locked_down() -> None:
    services = m.compose()["services"]
    for name, svc in services.items():
        assert svc.get("read_only") is True, f"{name}: root file system is writable"
        assert svc.get("cap_drop") == ["ALL"], f"{name}: capabilities not dropped"
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        assert _bytes(svc["mem_limit"]) > 0, f"{name}: no memory limit"
        for port in svc.get("ports", []):
            if name != "collector":
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published on every interface"
    redis = services["redis"]
    maxmemory = _bytes(redis["command"][redis["command"].index("--maxmemory") + 1])
    assert maxmemory <= 0.8 * _bytes(redis["mem_limit"]), "an AOF rewrite forks: leave copy-on-write head-room"


def test_grafana_has_no_default_password_and_stays_local() -> None:
    grafana = m.compose()["services"]["grafana"]
    env = grafana["environment"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", env["GF_SECURITY_ADMIN_PASSWORD"]), (
        "the admin password must come from the environment and be required"
    )
    assert env.get("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer") == "Viewer"
    assert grafana["ports"] == ["127.0.0.1:3000:3000"]


def _redis_user_lines(cmd: list[str]) -> list[list[str]]:
    lines: list[list[str]] = []
    for arg in cmd[1:]:
        if arg.startswith("--"):
            lines.append([arg])
        else:
            lines[-1].append(arg)
    return [line[1:] for line in lines if line[0] == "--user"]


def test_compose_redis_admits_only_the_oceanus_user(tmp_path: Path) -> None:
    services: dict[str, Any] = m.compose()["services"]
    password = secrets.token_hex(24)
    env = {"OCEANUS_REDIS_PASSWORD": password, "GRAFANA_ADMIN_PASSWORD": "x"}
    raw = services["redis"]["command"]
    assert [u[:2] for u in _redis_user_lines(raw)] == [["default", "off"], ["oceanus", "on"]]
    assert "nopass" not in raw
    assert all("requirepass" not in str(a) for a in raw)
    cmd = [_interpolate(str(a), env) for a in raw]
    assert cmd[0] == "redis-server"
    url = _interpolate(m.compose()["x-oceanus-env"]["OCEANUS_REDIS_URL"], env)
    assert url == f"redis://oceanus:{password}@redis:6379/0"
    probe = services["redis"]["healthcheck"]["test"]
    assert probe[0] == "CMD-SHELL"
    assert services["redis"]["environment"]["REDISCLI_AUTH"].startswith("${OCEANUS_REDIS_PASSWORD:?")
    with redis_acl.redis_with(cmd[1:], tmp_path) as port:
        redis_acl.assert_admits_only(redis_acl.at_port(url, port), port, password)
        assert redis_acl.probe_passes(["sh", "-c", probe[1]], port, password)
        assert not redis_acl.probe_passes(["sh", "-c", probe[1]], port, "wrong")
