"""``oceanus dev``: the whole pipeline on one machine.

Starts, in this order, a ``redis-server`` child (free loopback port, AOF on,
data in ``DIR/redis``), the flusher writing to ``DIR/warehouse.duckdb``,
``oceanus notify`` when the config has rules (its ``log`` channel's lines are
echoed to the terminal), and the collector on ``--port``; publishes ``DIR/dev.json`` for ``oceanus status``
and ``oceanus query``; then waits for Ctrl-C / SIGTERM and stops them in the
reverse order, each after the previous one has exited:

1. collector: stops accepting, writes what it acknowledged to Redis;
2. notify: gives the delivery in hand back to its queue;
3. flusher: finishes or gives back the batch in hand;
4. redis-server: SIGTERM, which Redis handles as SHUTDOWN (fsync the AOF).

The next ``oceanus dev`` on the same directory replays the AOF, so whatever was
still buffered (queued or claimed in flight) is flushed then.

Redis runs with ``appendfsync always``: a 2xx from the collector means "in
Redis", and only an fsync per write makes that survive a power cut. The
collector pipelines one RPUSH per micro-batch, so the cost is one fsync per
batch, not per event — negligible at the rates a laptop sees; ``everysec``
would trade up to a second of acknowledged events for nothing we need here.

Children run in their own session so that Ctrl-C in the terminal reaches only
this process: otherwise the terminal would signal all of them at once and the
order above would be lost. A closed terminal (SIGHUP) stops the stack like
Ctrl-C. If this process is killed outright (kill -9, the OOM killer), the
kernel sends each child SIGTERM (``PR_SET_PDEATHSIG``, Linux): they drain as
on a normal stop, minus the ordering, instead of running on as orphans that
hold the port, the AOF and the DuckDB file.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import IO

import msgspec

from oceanus import config, discovery
from oceanus.buffer import Keys
from oceanus.commands import EXIT_FAILED, UsageError, devstate
from oceanus.commands.banner import banner
from oceanus.errors import OceanusError

if sys.platform == "linux":
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl
    _PR_SET_PDEATHSIG = 1

    def _die_with_parent(parent: int) -> None:
        """In the forked child, before exec: SIGTERM when the supervisor (``parent``) dies."""
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died between fork and prctl
            os._exit(1)
else:  # pragma: no cover - the children outlive a killed supervisor there

    def _die_with_parent(parent: int) -> None:
        return None


REDIS_READY_TIMEOUT_S = 30.0
FLUSHER_READY_TIMEOUT_S = 60.0
COLLECTOR_READY_TIMEOUT_S = 60.0
#: Added to a component's own drain budget before it is killed.
STOP_GRACE_S = 10.0
REDIS_STOP_TIMEOUT_S = 30.0
SUPERVISE_INTERVAL_S = 0.25
POLL_INTERVAL_S = 0.05


class DevError(OceanusError):
    """``oceanus dev`` cannot start; the message is one line a user can act on."""


class _Stop:
    """Signal state shared between the handlers and the main thread."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.forced = threading.Event()

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested.is_set():
            # A second Ctrl-C: stop waiting for drains. Nothing acknowledged is
            # lost even then (Redis fsyncs every write; a killed flusher's batch
            # is re-claimed on the next start), it only takes longer to resume.
            self.forced.set()
            print("\noceanus dev: forcing stop", file=sys.stderr, flush=True)
        else:
            self.requested.set()


class Child:
    """One supervised process, its output in a log file."""

    def __init__(self, name: str, cmd: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - lives as long as the child
        try:
            self.proc = subprocess.Popen(
                cmd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),
            )
        except OSError as exc:
            self._log.close()
            raise DevError(f"cannot start {name} ({cmd[0]}): {exc.strerror}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def last_log_line(self) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def died_error(self, during: str) -> DevError:
        detail = self.last_log_line()
        return DevError(
            f"{self.name} exited with code {self.proc.returncode} {during}"
            + (f": {detail}" if detail else "")
            + f" (log: {self.log_path})"
        )

    def stop(self, timeout: float, stop: _Stop) -> int | None:
        """SIGTERM, wait up to ``timeout`` (less if forced), then SIGKILL."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline and not stop.forced.is_set():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=SUPERVISE_INTERVAL_S)
            if self.alive():
                print(f"oceanus dev: {self.name} did not stop in time; killing it", file=sys.stderr, flush=True)
                self.proc.kill()
                self.proc.wait()
        # The child leads its own process group: SIGKILL whatever it left behind
        # (granian workers outlive a main process that was killed mid-drain).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
        return self.proc.returncode


# --------------------------------------------------------------------------- checks


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: a port left in TIME_WAIT by the previous run is free; a listener is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UsageError(
                f"port {port} is in use ({exc.strerror}); stop what listens there or choose another with --port"
            ) from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def prepare_data_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        for sub in (devstate.REDIS_DIR, devstate.SPOOL_DIR, devstate.LOG_DIR):
            (data_dir / sub).mkdir(exist_ok=True)
        probe = data_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"data dir {data_dir} is not writable ({exc.strerror}); choose another with --data-dir"
        ) from None


def check_not_running(data_dir: Path) -> None:
    """Two stacks on one directory would share an AOF and a DuckDB file: refuse."""
    info = devstate.read_dev_info(data_dir)
    if info is not None:
        raise DevError(f"oceanus dev (pid {info.pid}) is already running on {data_dir}; stop it first")
    try:
        stale = msgspec.json.decode((data_dir / devstate.DEV_FILE).read_bytes(), type=devstate.DevInfo)
    except (OSError, msgspec.DecodeError):
        return
    # The supervisor was killed (kill -9) but its children, in their own
    # sessions, may have survived it.
    for name, pid in (
        ("redis-server", stale.redis_pid),
        ("collector", stale.collector_pid),
        ("flusher", stale.flusher_pid),
    ):
        if discovery.pid_alive(pid):
            raise DevError(
                f"a {name} (pid {pid}) from an earlier oceanus dev still runs on {data_dir}; stop it with: kill {pid}"
            )
    (data_dir / devstate.DEV_FILE).unlink(missing_ok=True)


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise DevError(
            "redis-server is not installed; install it with: sudo apt-get install -y redis-server (or run make run)"
        )
    return binary


# --------------------------------------------------------------------------- start-up


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(child: Child, check: Callable[[], bool], timeout: float, what: str, stop: _Stop) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if not child.alive():
            raise child.died_error("during start-up")
        if stop.requested.is_set():
            raise DevError(f"interrupted while waiting for {what}")
        if time.monotonic() > deadline:
            raise DevError(f"{what} not ready after {timeout:.0f}s (log: {child.log_path})")
        time.sleep(POLL_INTERVAL_S)


def redis_ping(port: int) -> bool:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        # While the AOF is replayed Redis answers LOADING: not ready yet.
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def start_redis(data_dir: Path, env: Mapping[str, str], stop: _Stop) -> tuple[Child, int]:
    port = free_port()
    redis_dir = data_dir / devstate.REDIS_DIR
    cmd = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "yes",
        "--dir",
        str(redis_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        # The AOF is the only persistence: RDB snapshots would add fork pauses for nothing.
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        "",
    ]
    child = Child("redis-server", cmd, env, data_dir / devstate.LOG_DIR / "redis.log")
    wait_until(child, lambda: redis_ping(port), REDIS_READY_TIMEOUT_S, "redis-server", stop)
    return child, port


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "oceanus.cli", *args]


def flusher_admin_url(duckdb_path: Path, pid: int) -> str | None:
    info = discovery.read_flusher_info(duckdb_path)
    if info is None or info.pid != pid:
        return None
    return info.admin_url if http_ok(info.admin_url + "/healthz") else None


def child_env(data_dir: Path, redis_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "OCEANUS_REDIS_URL": redis_url,
            "OCEANUS_SINK_KIND": "duckdb",
            "OCEANUS_SINK_DUCKDB_PATH": str(devstate.warehouse_path(data_dir)),
            "OCEANUS_COLLECTOR_SPOOL_DIR": str((data_dir / devstate.SPOOL_DIR).resolve()),
            # 0: the flusher picks a free port and publishes it in its discovery file.
            "OCEANUS_FLUSHER_ADMIN_PORT": "0",
            # `oceanus query` and `oceanus status` go through the flusher's /query: on
            # loopback only, with the token Stack.start writes to DIR/query.token.
            "OCEANUS_FLUSHER_ADMIN_HOST": "127.0.0.1",
            "OCEANUS_FLUSHER_QUERY_ENABLED": "true",
            "OCEANUS_FLUSHER_QUERY_TOKEN_FILE": str(devstate.query_token_path(data_dir)),
            "OCEANUS_COLLECTOR_DEMO": "true",
            "OCEANUS_COLLECTOR_STATUS_PAGE": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # A token in the caller's environment would win over the file the CLI reads.
    env.pop("OCEANUS_QUERY_TOKEN", None)
    # The [imports] of oceanus.toml read `oceanus demo --shop`'s file unless a real shop is named.
    env.setdefault(devstate.SHOP_URL_ENV, "sqlite:///" + str((data_dir / devstate.SHOP_FILE).resolve()).lstrip("/"))
    return env


# --------------------------------------------------------------------------- run


def buffered_frames(redis_port: int, cfg: config.Config) -> int:
    """Frames still in Redis (queued or claimed), for the goodbye line."""
    import redis

    keys = Keys(cfg.redis.key_prefix)
    client = redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=2.0)
    try:
        total = 0
        for name, stream in cfg.streams.items():
            for shard in range(stream.shards):
                total += int(client.llen(keys.queue(name, shard)))
                for key in client.smembers(keys.inflight_index(name, shard)):
                    total += int(client.llen(key))
        return total
    except redis.RedisError:
        return -1
    finally:
        client.close()


class Stack:
    """The three children, started and stopped in order."""

    def __init__(self, cfg: config.Config, data_dir: Path, port: int, config_file: Path, stop: _Stop) -> None:
        self.cfg = cfg
        self.data_dir = data_dir
        self.port = port
        self.config_file = config_file
        self.stop = stop
        self.redis: Child | None = None
        self.flusher: Child | None = None
        self.collector: Child | None = None
        #: ``oceanus notify``, when the config has rules; its log channel's lines are echoed here.
        self.notifier: Child | None = None
        self._notify_offset = 0
        self.redis_port = 0
        self.admin_url = ""

    def children(self) -> list[Child]:
        return [c for c in (self.redis, self.flusher, self.notifier, self.collector) if c is not None]

    def start(self) -> devstate.DevInfo:
        self.redis, self.redis_port = start_redis(self.data_dir, os.environ, self.stop)
        redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        env = child_env(self.data_dir, redis_url)
        duckdb_path = devstate.warehouse_path(self.data_dir)
        logs = self.data_dir / devstate.LOG_DIR
        devstate.write_query_token(self.data_dir)
        self.flusher = Child(
            "flusher", python_cmd("flusher", "--config", str(self.config_file)), env, logs / "flusher.log"
        )
        flusher = self.flusher
        admin: list[str] = []

        def flusher_ready() -> bool:
            url = flusher_admin_url(duckdb_path, flusher.pid)
            if url:
                admin.append(url)
            return bool(url)

        wait_until(flusher, flusher_ready, FLUSHER_READY_TIMEOUT_S, "flusher", self.stop)
        if self.cfg.rules:
            # Before the collector: its tap reads the event queues from the first event on.
            notify_port = free_port()
            notifier = self.notifier = Child(
                "notify",
                python_cmd("notify", "--config", str(self.config_file)),
                {**env, "OCEANUS_NOTIFY_ADMIN_HOST": "127.0.0.1", "OCEANUS_NOTIFY_ADMIN_PORT": str(notify_port)},
                logs / "notify.log",
            )
            self._notify_offset = notifier.log_path.stat().st_size
            wait_until(
                notifier,
                lambda: http_ok(f"http://127.0.0.1:{notify_port}/healthz"),
                FLUSHER_READY_TIMEOUT_S,
                "notify",
                self.stop,
            )
        self.collector = Child(
            "collector",
            python_cmd("collector", "--config", str(self.config_file), "--host", "127.0.0.1", "--port", str(self.port)),
            env,
            logs / "collector.log",
        )
        collector_url = f"http://127.0.0.1:{self.port}"
        wait_until(
            self.collector,
            lambda: http_ok(collector_url + "/readyz"),
            COLLECTOR_READY_TIMEOUT_S,
            "collector",
            self.stop,
        )
        info = devstate.DevInfo(
            pid=os.getpid(),
            config=str(self.config_file),
            data_dir=str(self.data_dir.resolve()),
            collector_url=collector_url,
            collector_pid=self.collector.pid,
            flusher_pid=flusher.pid,
            redis_url=redis_url,
            redis_pid=self.redis.pid,
            key_prefix=self.cfg.redis.key_prefix,
            duckdb_path=str(duckdb_path),
            spool_dir=env["OCEANUS_COLLECTOR_SPOOL_DIR"],
            started_at=time.time(),
        )
        devstate.write_dev_info(self.data_dir, info)
        self.admin_url = admin[-1]
        return info

    def supervise(self) -> Child | None:
        """Wait for a stop signal; return the child that died on its own, if one did."""
        while not self.stop.requested.wait(SUPERVISE_INTERVAL_S):
            self.echo_notifications()
            for child in self.children():
                if not child.alive():
                    return child
        return None

    def echo_notifications(self) -> None:
        """Show the ``log`` channel's lines (JSON, in the notifier's log) in the terminal."""
        if self.notifier is None:
            return
        try:
            with open(self.notifier.log_path, "rb") as f:
                f.seek(self._notify_offset)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self._notify_offset += end
        for line in data[:end].splitlines():
            if line.startswith(b'{"notify":'):
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                _say(f"rule {item.get('notify')} -> {item.get('channel')}: {item.get('message')}")

    def shutdown(self) -> None:
        say = _say
        if self.collector is not None:
            if self.collector.alive():
                say("stopping the collector (writing what it acknowledged to Redis)...")
            self.collector.stop(self.cfg.collector.drain_timeout_s + STOP_GRACE_S, self.stop)
        if self.notifier is not None:
            if self.notifier.alive():
                say("stopping the notifier (the delivery in hand goes back to its queue)...")
            self.notifier.stop(self.cfg.notify.drain_timeout_s + STOP_GRACE_S, self.stop)
            self.echo_notifications()
        if self.flusher is not None:
            if self.flusher.alive():
                say("stopping the flusher (finishing the batch in hand)...")
            self.flusher.stop(self.cfg.flusher.drain_timeout_s + STOP_GRACE_S, self.stop)
        if self.redis is not None:
            left = buffered_frames(self.redis_port, self.cfg) if self.redis.alive() else -1
            if self.redis.alive():
                say("stopping redis-server (fsync of the AOF)...")
            self.redis.stop(REDIS_STOP_TIMEOUT_S, self.stop)
            if left > 0:
                say(f"{left} frame(s) still buffered in Redis; the next oceanus dev on {self.data_dir} flushes them")


def _say(text: str) -> None:
    print(f"oceanus dev: {text}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    config_file = config.config_path(args.config).resolve()
    # Validate with exactly the environment the children will see, so a bad
    # key fails here in one line rather than in a child's log.
    cfg = config.load(config_file, env=child_env(data_dir, "redis://127.0.0.1:6379/0"))
    redis_binary()
    prepare_data_dir(data_dir)
    check_not_running(data_dir)
    port = int(args.port)
    if port == 0:
        port = free_port()
    check_port("127.0.0.1", port)

    stop = _Stop()
    previous = {sig: signal.signal(sig, stop.handle) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    stack = Stack(cfg, data_dir, port, config_file, stop)
    died: Child | None = None
    try:
        try:
            info = stack.start()
        except DevError as exc:
            _say(str(exc))
            return EXIT_FAILED
        print(
            banner(
                cfg,
                data_dir,
                info.collector_url,
                info.redis_url,
                stack.admin_url,
                default_data_dir=args.data_dir == ".oceanus",
                default_port=int(args.port) == 8080,
            ),
            flush=True,
        )
        died = stack.supervise()
        if died is not None:
            _say(died.died_error("unexpectedly").args[0])
        else:
            _say("stopping")
    finally:
        stack.shutdown()
        devstate.remove_dev_info(data_dir, os.getpid())
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _say("stopped")
    return 1 if died is not None else 0
