"""``python -m bench notify [--events N] [--frame-rows R] [--kinds log,webhook,...] [--json]``: notify throughput.

A real redis-server (a child on a free port), the real notifier (``oceanus
notify``, a process of its own), and a local receiver per channel kind: the log
channel writes a file, webhook and slack post to a local HTTP receiver, email
goes to aiosmtpd (STARTTLS, a fresh certificate), sheets to the local Sheets
``values.append`` server (tests/notifier/receivers.py; the receivers run in this
process, not in the notifier's). One rule per kind matches every event pushed
for it. For each kind in turn, N matched events are pushed at once as frames
onto the stream's queue, as the collector writes them (the notifier's tap copies
them to its own queue; no flusher runs), and the kind is timed from the first
frame to the last delivery: ``<kind>_per_s`` deliveries
per second. Latency is event received (the frame pushed: its events' receive
time) -> the receiver holding the message, p50/p95: ``burst`` over those N (it
includes the wait behind the rest of the burst), ``single`` over
``--singles`` events pushed one at a time, each after the previous was
delivered (an idle notifier).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KINDS = ("log", "webhook", "slack", "email", "sheets")
#: A kind must deliver its burst within this (seconds); the bench fails rather than hang.
DELIVERY_TIMEOUT_S = 600.0
#: The notifier must be up (its heartbeat in Redis) within this (seconds).
START_TIMEOUT_S = 30.0
#: How often deliveries are counted (seconds): the resolution of the latency figures.
POLL_S = 0.002
SECRET = "bench-webhook-secret"
TOKEN = "ya29.bench-token"
SPREADSHEET = "bench"


def _channels(urls: dict[str, str], log_path: Path, smtp_port: int, ca: Path) -> str:
    return f"""
[channels.log]
kind = "log"
path = "{log_path}"
[channels.webhook]
kind = "webhook"
url = "{urls["webhook"]}/hook"
secret_env = "BENCH_HOOK_SECRET"
[channels.slack]
kind = "slack"
url_env = "BENCH_SLACK_URL"
[channels.email]
kind = "email"
host = "127.0.0.1"
port = {smtp_port}
ca_file = "{ca}"
sender = "oceanus@example.com"
to = ["team@example.com"]
[channels.sheets]
kind = "sheets"
spreadsheet_id = "{SPREADSHEET}"
tab = "Sheet1"
endpoint = "{urls["sheets"]}"
token_env = "BENCH_SHEETS_TOKEN"
""" + "".join(
        f'[rules.bench_{k}]\nstream = "pageview"\nconditions = [{{ field = "evt", eq = "bench_{k}" }}]\n'
        f'template = "{{evt}} by {{uid}} on {{url}}"\nfields = ["uid", "url"]\nchannels = ["{k}"]\n'
        "rate_limit = { max = 10000000, per_s = 60.0 }\n"
        for k in KINDS
    )


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


@contextlib.contextmanager
def _notifier(config_path: Path, env: dict[str, str], client: Any, prefix: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "oceanus.cli", "notify", "--config", str(config_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not client.keys(f"{prefix}:notify:hb:*"):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"oceanus notify exited with {proc.returncode}: {err[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("oceanus notify did not start (no heartbeat in Redis)")
            time.sleep(0.01)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _watch(count: Callable[[], int], target: int, arrivals: list[float]) -> None:
    """Poll ``count()`` until ``target``, stamping each new delivery with the time it was seen."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    seen = len(arrivals)
    while seen < target:
        n = count()
        if n > seen:
            now = time.time()
            arrivals.extend([now] * (n - seen))
            seen = n
            continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"{seen} of {target} deliveries after {DELIVERY_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)


def _since(count: Callable[[], int], before: int) -> Callable[[], int]:
    return lambda: count() - before


def run(events: int, frame_rows: int, singles: int, kinds: tuple[str, ...]) -> dict[str, Any]:
    import redis

    from oceanus import config
    from oceanus.buffer import EventIds, Keys, encode_frame
    from tests.notifier.receivers import FakeSheets, Receiver, http_receiver, sheets_server, smtp_server
    from tests.notifier.support import BASE
    from tests.support.servers import RedisServer

    out: dict[str, Any] = {"bench": "notify", "events": events, "frame_rows": frame_rows, "singles": singles}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="oceanus-bench-notify-")))
        server = RedisServer(tmp / "redis").start()
        stack.callback(server.stop)
        hook = stack.enter_context(http_receiver(Receiver(secret=SECRET.encode())))
        slack = stack.enter_context(http_receiver(Receiver()))
        sheets = stack.enter_context(sheets_server(FakeSheets(token=TOKEN), SPREADSHEET))
        box, ca = stack.enter_context(smtp_server(tmp))
        log_path = tmp / "notify.log"
        # The shipped config's streams and [notify] defaults (poll_s, ...), an admin port of its own.
        text = (
            BASE
            + "\n[notify]\nadmin_port = 0\n"
            + _channels({"webhook": hook.url, "sheets": sheets.url}, log_path, box.port, ca)
        )
        cfg = config.loads(text, env={"OCEANUS_REDIS_URL": server.url})
        config_path = tmp / "oceanus.toml"
        config_path.write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCEANUS_")}
        env.update(
            OCEANUS_REDIS_URL=server.url,
            BENCH_HOOK_SECRET=SECRET,
            BENCH_SLACK_URL=slack.url + "/services/bench",
            BENCH_SHEETS_TOKEN=TOKEN,
        )
        missing = config.missing_secrets(cfg, env)
        if missing:
            raise RuntimeError("; ".join(missing))
        counts: dict[str, Callable[[], int]] = {
            "log": lambda: len(log_path.read_bytes().splitlines()) if log_path.exists() else 0,
            "webhook": lambda: len(hook.posts),
            "slack": lambda: len(slack.posts),
            "email": lambda: len(box.messages),
            "sheets": lambda: len(sheets.sheets["Sheet1"]),
        }
        client = redis.Redis.from_url(server.url)
        stream = cfg.streams["pageview"]
        # The event queue, where the collector pushes: the tap's interval is part of the latency.
        queue = Keys(cfg.redis.key_prefix).queue("pageview")
        ids = EventIds()

        def frame(kind: str, n: int) -> tuple[bytes, float]:
            """A frame of ``n`` events for ``kind``'s rule, received now; and that time (s)."""
            now_ns = time.time_ns()
            rows = []
            for i in range(n):
                values = {
                    "event_id": ids.new(now_ns),
                    "received_at": now_ns // 1000,
                    "ip": "203.0.113.7",
                    "ua": "bench",
                    "device": "pc",
                    "sid": f"s{i % 50}",
                    "evt": f"bench_{kind}",
                    "uid": f"u{i}",
                    "url": "https://www.bizocean.jp/templates/invoice/",
                }
                rows.append([values.get(c) for c in stream.columns])
            return encode_frame(stream.columns, rows), now_ns / 1e9

        with _notifier(config_path, env, client, cfg.redis.key_prefix) as proc:
            for kind in kinds:
                count = counts[kind]
                frames = [frame(kind, min(frame_rows, events - i)) for i in range(0, events, frame_rows)]
                # Built first, then pushed in one command: every event of the burst is received at the push.
                cpu0, t0 = _cpu_s(proc.pid), time.perf_counter()
                pushed_at = time.time()
                client.rpush(queue, *[f for f, _ in frames])
                arrivals: list[float] = []
                _watch(count, events, arrivals)
                seconds, cpu = time.perf_counter() - t0, _cpu_s(proc.pid) - cpu0
                burst = [a - pushed_at for a in arrivals]
                single: list[float] = []
                for _ in range(singles):
                    f, _ = frame(kind, 1)
                    before = count()
                    client.rpush(queue, f)
                    pushed = time.time()
                    got: list[float] = []
                    _watch(_since(count, before), 1, got)
                    single.append(got[0] - pushed)
                if count() != events + singles:
                    raise RuntimeError(f"{kind}: {count()} deliveries, expected {events + singles} (none twice)")
                out[f"{kind}_per_s"] = round(events / seconds)
                out[f"{kind}_seconds"] = round(seconds, 3)
                out[f"{kind}_cpu_ms_per_delivery"] = round(cpu / events * 1000, 3)
                out[f"{kind}_burst_p50_ms"] = round(_pct(burst, 0.50) * 1000, 1)
                out[f"{kind}_burst_p95_ms"] = round(_pct(burst, 0.95) * 1000, 1)
                if single:
                    out[f"{kind}_single_p50_ms"] = round(_pct(single, 0.50) * 1000, 1)
                    out[f"{kind}_single_p95_ms"] = round(_pct(single, 0.95) * 1000, 1)
                print(
                    f"{kind}: {events} in {seconds:.2f} s = {events / seconds:,.0f}/s; burst p50 "
                    f"{out[f'{kind}_burst_p50_ms']} ms p95 {out[f'{kind}_burst_p95_ms']} ms; single p50 "
                    f"{out.get(f'{kind}_single_p50_ms')} ms p95 {out.get(f'{kind}_single_p95_ms')} ms "
                    f"(median {statistics.median(single) * 1000 if single else 0:.1f} ms)",
                    file=sys.stderr,
                )
        if hook.bad_signatures:
            raise RuntimeError(f"webhook: {hook.bad_signatures} posts with a bad signature")
        client.close()
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench notify", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=2000, help="matched events per channel kind, pushed at once")
    p.add_argument("--frame-rows", type=int, default=100, help="events per frame")
    p.add_argument("--singles", type=int, default=20, help="events pushed one at a time, for the idle latency")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if args.events <= 0 or args.frame_rows <= 0 or args.singles < 0:
        p.error("--events and --frame-rows must be positive, --singles not negative")
    if not kinds or any(k not in KINDS for k in kinds):
        p.error(f"--kinds: a comma-separated list of {', '.join(KINDS)}")
    result = run(args.events, args.frame_rows, args.singles, kinds)
    print(json.dumps(result) if args.json else result)
    return 0
