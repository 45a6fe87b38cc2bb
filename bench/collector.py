"""``python -m bench collector --seconds N [--json]``: the collector against its ceiling and its past.

In one go, on loopback, each under ``wrk -c64`` with the same realistic
pageview beacon (≈170-byte row) and a real redis-server child (AOF on,
``appendfsync everysec``):

- ``collector``: ``oceanus collector`` (granian + uvloop, durable ack);
- ``bare``: a granian ASGI app that only answers the GIF (bench/baselines/bare.py);
- ``bare_ack``: the bare app plus a durable ack and nothing else: each request's
  query string in a micro-batched RPUSH to its own redis-server child, answered
  when Redis replied (bench/baselines/bare_ack.py) -- the floor for any collector
  whose 2xx means "stored", on the same cores;
- ``legacy``: the 2016 shape, falcon + gunicorn gevent + one redis-py RPUSH per
  request (bench/baselines/legacy.py).

``--repeat N`` runs the whole set N times in turn (collector, bare, bare_ack, ...
each time), so that every ratio compares runs minutes apart at most; each
figure is then the median over the rounds and each ratio the median of the
rounds' ratios (the bare app's own rate moves by ±15 % from run to run on a
small shared box, more than most changes to the collector do).

The last stdout line (``--json``) holds collector_rps, bare_rps, bare_ack_rps,
legacy_rps, ratio_vs_bare, ratio_vs_legacy, p99_ms (the collector's), the p99
ratios p99_vs_bare, p99_vs_bare_ack and bare_ack_p99_vs_bare, ``rounds`` (each
round's rps and p99 per server) and lost: 2xx responses minus rows found in
Redis after the collector drained, summed over the rounds (must be <= 0;
negative when wrk gave up on requests the collector still wrote); bare_ack_lost
is the same count for the floor app.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

#: A realistic bizocean page view, as the browser tag sends it.
PAGEVIEW_QUERY = (
    "sid=3f9a1c2e7b4d4e8f9a0b1c2d3e4f5a6b&evt=view&uid=u12345678"
    "&url=https%3A%2F%2Fwww.bizocean.jp%2Fdoc%2Fdetail%2F123456%2F"
    "&ref=https%3A%2F%2Fwww.google.com%2F&tit=%E8%AB%8B%E6%B1%82%E6%9B%B8%20%E3%83%86%E3%83%B3%E3%83%97%E3%83%AC"
    "&scr=1920x1080&vie=1280x720&enc=UTF-8"
)
USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(200 <= resp.status < 300)
    except urllib.error.HTTPError:
        return False


@contextlib.contextmanager
def redis_child(directory: Path, appendfsync: str = "everysec") -> Iterator[int]:
    """A redis-server child on a free port (AOF on); yields the port."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            appendfsync,
            "--logfile",
            str(directory / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        wait_until(lambda: bool(redis.Redis(port=port, socket_timeout=0.5).ping()), 20, "redis-server")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextlib.contextmanager
def server(cmd: list[str], env: dict[str, str], ready_url: str, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited; see {log_path}")
            return http_ok(ready_url)

        wait_until(ready, 30, ready_url)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # A worker orphaned by its parent's exit must not keep loading the box.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, seconds: float, connections: int, threads: int, script: Path | None = None) -> dict[str, Any]:
    """Run wrk against ``url`` (loopback only); parse rps, p99, 2xx count. ``script``: a wrk Lua script
    (its ``request()`` builds each request, e.g. bench/pipeline.py's unique markers and pacing); what it
    prints is in ``output``, wrk's whole stdout."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("load is only ever sent to loopback")
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "--timeout",
            "5s",
            "-H",
            f"User-Agent: {USER_AGENT}",
            *(["-s", str(script)] if script is not None else []),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx_m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(non2xx_m.group(1)) if non2xx_m else 0
    p99_m = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    p99 = _ms(p99_m.group(1)) if p99_m else float("nan")
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "requests": total,
        "ok": total - non2xx,
        "non2xx": non2xx,
        "p99_ms": p99,
        "socket_errors": errors.group(1) if errors else "",
        "output": out,
    }


def count_rows(port: int, key_pattern: str) -> int:
    import redis

    from oceanus.buffer import decode_frame

    client = redis.Redis(port=port)
    total = 0
    for key in client.scan_iter(match=key_pattern):
        for start in range(0, int(client.llen(key)), 1000):
            items: list[bytes] = client.lrange(key, start, start + 999)  # type: ignore[assignment]
            for item in items:
                total += len(decode_frame(item)[1])
    client.close()
    return total


def mean_batch(port: int) -> float:
    """Events per pipelined round so far, from the collector's own histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = re.search(r"^oceanus_collector_batch_events_sum (\S+)", text, re.M)
    count = re.search(r"^oceanus_collector_batch_events_count (\S+)", text, re.M)
    if not total or not count or float(count.group(1)) == 0:
        return float("nan")
    return round(float(total.group(1)) / float(count.group(1)), 1)


@contextlib.contextmanager
def redis_target(tmp: Path, args: argparse.Namespace) -> Iterator[tuple[str, Callable[[], int]]]:
    """The collector's ``redis.url`` and a count of the pageview rows in Redis afterwards: one
    redis-server child, or (``--redis cluster``) the tests' local cluster of 3 masters with a
    replica each (tests/support/cluster.py; every node ``appendfsync always``)."""
    from oceanus.buffer import Keys

    queues = [Keys().queue("pageview", s) for s in range(args.shards)]
    if args.redis == "single":
        with redis_child(tmp / "redis-collector") as rport:
            yield f"redis://127.0.0.1:{rport}/0", lambda: sum(count_rows(rport, q) for q in queues)
        return
    from tests.support.cluster import RedisCluster

    cluster = RedisCluster(tmp).start()
    try:
        # Each shard's queue from the master that serves its slot now.
        yield cluster.url, lambda: sum(count_rows(cluster.node_for_key(q).port, q) for q in queues)
    finally:
        cluster.stop()


def sharded_config(tmp: Path, args: argparse.Namespace) -> Path:
    """``--config`` with ``shards = N`` for the pageview stream (a copy; the original is untouched)."""
    if args.shards == 1:
        return Path(args.config)
    text = Path(args.config).read_text()
    header = "[streams.pageview]\n"
    if header not in text:
        raise SystemExit(f"--shards: no {header.strip()} table in {args.config}")
    out = tmp / "oceanus-sharded.toml"
    out.write_text(text.replace(header, f"{header}shards = {args.shards}\n", 1))
    return out


def run_collector(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    with redis_target(tmp, args) as (redis_url, rows_in_redis):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCEANUS_")}
        env.update(
            {
                "OCEANUS_REDIS_URL": redis_url,
                "OCEANUS_COLLECTOR_SPOOL_DIR": f'"{tmp / "spool"}"',
            }
        )
        if args.min_replicas_ack:
            env["OCEANUS_REDIS_MIN_REPLICAS_ACK"] = str(args.min_replicas_ack)
        if args.linger_ms is not None:
            env["OCEANUS_COLLECTOR_BATCH_LINGER_MS"] = str(args.linger_ms)
        cmd = [
            sys.executable,
            "-m",
            "oceanus.cli",
            "collector",
            "--config",
            str(sharded_config(tmp, args)),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
        ]
        url = f"http://127.0.0.1:{port}/b/pageview?{PAGEVIEW_QUERY}"
        with server(cmd, env, f"http://127.0.0.1:{port}/readyz", tmp / "collector.log") as proc:
            warm_ok = wrk(url, args.warmup, args.connections, args.threads)["ok"] if args.warmup else 0
            result = wrk(url, args.seconds, args.connections, args.threads)
            result["mean_batch_events"] = mean_batch(port)
            proc.send_signal(signal.SIGTERM)  # drain, then count what reached Redis
            proc.wait(timeout=60)
        # Warm-up events are in Redis too: compare rows with every 2xx of both runs.
        result["all_ok"] = warm_ok + result["ok"]
        result["rows_in_redis"] = rows_in_redis()
        return result


def granian_cmd(target: str, port: int, args: argparse.Namespace) -> list[str]:
    """A baseline app under granian with the collector's loop and worker count."""
    return [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--loop",
        "uvloop",
        "--workers",
        str(args.workers),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-ws",
        "--log-level",
        "warning",
        target,
    ]


def run_bare(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    cmd = granian_cmd("bench.baselines.bare:app", port, args)
    url = f"http://127.0.0.1:{port}/b/pageview?{PAGEVIEW_QUERY}"
    with server(cmd, dict(os.environ), url, tmp / "bare.log"):
        if args.warmup:
            wrk(url, args.warmup, args.connections, args.threads)
        return wrk(url, args.seconds, args.connections, args.threads)


def run_bare_ack(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    with redis_child(tmp / "redis-bare-ack") as rport:
        port = free_port()
        env = dict(os.environ, BARE_ACK_REDIS_URL=f"redis://127.0.0.1:{rport}/0")
        cmd = granian_cmd("bench.baselines.bare_ack:app", port, args)
        url = f"http://127.0.0.1:{port}/b/pageview?{PAGEVIEW_QUERY}"
        # Readiness is a real request, so it is an item in Redis too.
        with server(cmd, env, url, tmp / "bare_ack.log"):
            warm_ok = wrk(url, args.warmup, args.connections, args.threads)["ok"] if args.warmup else 0
            result = wrk(url, args.seconds, args.connections, args.threads)
        import redis

        client = redis.Redis(port=rport)
        stored = int(client.llen("bench:bare_ack"))
        client.close()
        result["lost"] = warm_ok + result["ok"] - stored
        return result


def run_legacy(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    with redis_child(tmp / "redis-legacy") as rport:
        port = free_port()
        env = dict(os.environ, LEGACY_REDIS_URL=f"redis://127.0.0.1:{rport}/0")
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        cmd = [
            gunicorn,
            "-k",
            "gevent",
            "-w",
            str(args.workers),
            "--worker-connections",
            "1000",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "bench.baselines.legacy:app",
        ]
        url = f"http://127.0.0.1:{port}/b/pageview?{PAGEVIEW_QUERY}"
        with server(cmd, env, url, tmp / "legacy.log"):
            if args.warmup:
                wrk(url, args.warmup, args.connections, args.threads)
            return wrk(url, args.seconds, args.connections, args.threads)


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Each figure's median over the rounds, and each ratio the median of the rounds' own ratios
    (a ratio within a round compares runs taken moments apart)."""
    out: dict[str, Any] = {}
    runs = {name: [r[name] for r in rounds if name in r] for name in ("collector", "bare", "bare_ack", "legacy")}
    for name, done in runs.items():
        if done:
            out[f"{name}_rps"] = round(statistics.median(r["rps"] for r in done))
            out["p99_ms" if name == "collector" else f"{name}_p99_ms"] = statistics.median(r["p99_ms"] for r in done)
    if runs["collector"]:
        c = runs["collector"]
        out.update(
            collector_non2xx=sum(r["non2xx"] for r in c),
            mean_batch_events=statistics.median(r["mean_batch_events"] for r in c),
            lost=sum(r["all_ok"] - r["rows_in_redis"] for r in c),
        )
    if runs["bare_ack"]:
        out["bare_ack_lost"] = sum(r["lost"] for r in runs["bare_ack"])
    for key, (a, base, field, digits) in {
        "ratio_vs_bare": ("collector", "bare", "rps", 3),
        "ratio_vs_bare_ack": ("collector", "bare_ack", "rps", 3),
        "ratio_vs_legacy": ("collector", "legacy", "rps", 2),
        "p99_vs_bare": ("collector", "bare", "p99_ms", 3),
        "p99_vs_bare_ack": ("collector", "bare_ack", "p99_ms", 3),
        "bare_ack_p99_vs_bare": ("bare_ack", "bare", "p99_ms", 3),
    }.items():
        values = [r[a][field] / r[base][field] for r in rounds if a in r and base in r and r[base][field]]
        if values:
            out[key] = round(statistics.median(values), digits)
    out["rounds"] = [{name: {"rps": round(r["rps"]), "p99_ms": r["p99_ms"]} for name, r in rd.items()} for rd in rounds]
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench collector", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measured wrk run per server")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured wrk run before each (0: none)")
    p.add_argument("--workers", type=int, default=2, help="worker processes for every server")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="wrk threads (1 leaves the CPU to the servers)")
    p.add_argument("--linger-ms", type=float, default=None, help="collector.batch_linger_ms override")
    p.add_argument("--only", choices=["collector", "bare", "bare_ack", "legacy"], action="append")
    p.add_argument("--repeat", type=int, default=1, help="rounds of the whole set, in turn; medians reported")
    p.add_argument(
        "--config",
        type=Path,
        default=REPO / "oceanus.toml",
        help="the collector's oceanus.toml (e.g. a copy with more or fewer [rules] to price them)",
    )
    p.add_argument(
        "--redis",
        choices=["single", "cluster"],
        default="single",
        help="the collector's Redis: one redis-server, or a local cluster of 3 masters + 3 replicas",
    )
    p.add_argument("--shards", type=int, default=1, help="[streams.pageview] shards (spread over the masters)")
    p.add_argument("--min-replicas-ack", type=int, default=0, help="redis.min_replicas_ack (WAIT K each round)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        log("wrk is not installed (make system-deps installs it with apt)")
        return 2
    todo = args.only or ["collector", "bare", "bare_ack", "legacy"]
    runners = {"collector": run_collector, "bare": run_bare, "bare_ack": run_bare_ack, "legacy": run_legacy}
    rounds: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="oceanus-bench-") as d:
        for n in range(max(1, args.repeat)):
            results: dict[str, dict[str, Any]] = {}
            for name in todo:
                log(f"{name}: {args.seconds:g}s at c{args.connections}, {args.workers} workers (round {n + 1}) ...")
                # Each run its own directory: a Redis child's AOF must hold that run's rows only.
                run_dir = Path(d) / f"{name}-{n}"
                run_dir.mkdir()
                results[name] = runners[name](run_dir, args)
                log(f"{name}: {json.dumps(results[name])}")
            rounds.append(results)
    out: dict[str, Any] = {
        "workers": args.workers,
        "connections": args.connections,
        "seconds": args.seconds,
        "repeat": max(1, args.repeat),
        "linger_ms": args.linger_ms,
        "config": str(args.config),
        "redis": args.redis,
        "shards": args.shards,
        "min_replicas_ack": args.min_replicas_ack,
    }
    out.update(summarize(rounds))
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0
