"""``python -m bench pipeline [--seconds N] [--steps K] [--json]``: the whole local stack's sustained rate.

On loopback, under a temporary directory: ``redis-server`` (AOF, ``appendfsync
always``), the collector (granian, ``--workers`` as in ``bench collector``) and
the flusher into DuckDB, each a child process (tests/reliability/harness.py).
Load comes from ``wrk`` (one thread by default, so the load costs the box far
less CPU per request than the collector does) with a Lua script that puts a
unique marker in each request's ``oid`` field (``SSTTQQQQQQQQ``: step, wrk
thread and sequence number in hex) and, for a paced step, spaces the requests
on a fixed schedule (open loop: a slow answer does not push the next request
back; up to ``--connections`` are outstanding).

1. the collector alone (the flusher not started yet), unpaced for
   ``min(--seconds, 10)`` seconds after ``--warmup``: its rate C;
2. the flusher starts and drains that backlog;
3. ``--steps`` paced steps of ``--seconds`` each, a binary search between 0
   and C starting at ``--start`` x C: a step is sustained when wrk achieved
   at least ``RATE_TOLERANCE`` of the target with no error or non-2xx, the
   p99 of the flusher's ``oceanus_lag_seconds`` (sampled every
   ``LAG_SAMPLE_S``) stayed within the stream's ``batch.max_wait_s`` +
   ``LAG_MARGIN_S``, and, once the step drained, nothing was lost. Lost and
   duplicates come from the flusher's ``POST /query``: 2xx answers of the step
   minus its distinct markers stored, and stored rows beyond one per marker.
   wrk reports how many requests were answered, not which, so a request cut
   off by the end of a step but stored anyway (``unacked_stored``) could hide
   a lost one: ``sent_not_stored`` (markers the script built, from its
   ``done()``, minus those stored) bounds the lost from above, and is 0 when
   every request sent was stored.

The last stdout line (``--json``) holds events_per_s (the highest sustained
step's achieved rate), fraction_of_collector (that over C), collector_alone_rps,
lag_p99_s, lost and duplicates, and every step. Loopback only; every step is
bounded in time (wrk's ``-d``) and count (the script stops sending past
``COUNT_SLACK`` x its share of target x seconds).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import secrets
import shutil
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.collector import PAGEVIEW_QUERY, log, wrk

#: Default length of each paced step (seconds).
DEFAULT_SECONDS = 60.0
#: Longest run of the collector alone (seconds): its rate only sets the search range.
COLLECTOR_ALONE_MAX_S = 10.0
#: A step is sustained when wrk achieved at least this share of its target rate.
RATE_TOLERANCE = 0.95
#: Lag allowed on top of the stream's batch.max_wait_s (seconds).
LAG_MARGIN_S = 2.0
#: How often the flusher's lag gauge is read during a step (it is sampled every 1 s itself).
LAG_SAMPLE_S = 0.5
#: A paced script stops sending past this multiple of its share of target x seconds.
COUNT_SLACK = 1.2
#: The search stops once the untested range is below this share of the collector-alone rate.
RESOLUTION = 0.02
#: Marker fields are two hex digits each (the oid field holds 16 characters, a marker 12).
MAX_STEPS = 0xFF
MAX_THREADS = 0xFF
STREAM = "pageview"
#: Marker steps: the warm-up, the collector alone, then the paced steps.
WARMUP_STEP, ALONE_STEP, FIRST_PACED_STEP = 0, 1, 2


def lua_script(step: int, rate_per_thread: float = 0.0, max_per_thread: int = 0) -> str:
    """wrk's Lua: a unique ``oid`` marker per request; paced at ``rate_per_thread`` requests/s when > 0.

    ``delay()`` exists only in a paced script: wrk asks it before every request when it is
    defined, which an unpaced run (the collector alone) should not pay for.
    """
    if not 0 <= step <= MAX_STEPS:
        raise ValueError(f"step {step} is outside 0..{MAX_STEPS}")
    base = f"/b/{STREAM}?{PAGEVIEW_QUERY}&oid="
    kind = "paced" if rate_per_thread > 0 else "unpaced"
    script = f"""-- bench/pipeline.py ({kind}): one marker per request in oid (step, thread, sequence)
local STEP = {step}
local BASE = [==[{base}]==]
local all = {{}}
seq = 0  -- a global: done() reads each thread's through thread:get
local prefix
local checked

function setup(thread)
  thread:set("tid", #all)
  table.insert(all, thread)
end

function init(args)
  if tid > {MAX_THREADS} then error("too many wrk threads for a two-digit marker") end
  prefix = BASE .. string.format("%02x%02x", STEP, tid)
  -- wrk (4.x) builds one request on its first thread to check the script and never sends
  -- it: that one carries a marker outside every sequence and is not counted.
  checked = tid ~= 0
end

function request()
  if not checked then
    checked = true
    return wrk.format(nil, prefix .. "ffffffff")
  end
  local path = prefix .. string.format("%08x", seq)
  seq = seq + 1
  return wrk.format(nil, path)
end

-- Requests built per thread: every marker the run can have sent.
function done(summary, latency, requests)
  for _, thread in ipairs(all) do
    io.write(string.format("oceanus-sent %d %d\\n", thread:get("tid"), thread:get("seq")))
  end
end
"""
    if rate_per_thread > 0:
        script += f"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} oceanus_timespec;
int clock_gettime(int clk, oceanus_timespec *tp);
]]
local ts = ffi.new("oceanus_timespec")
local PERIOD_MS = {1000.0 / rate_per_thread!r}
local LIMIT = {max_per_thread}
local due

local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

-- Each request takes the next slot of a fixed schedule, whatever the answers did.
function delay()
  if seq >= LIMIT then return 3600000 end
  local now = now_ms()
  if due == nil then due = now end
  local wait = due - now
  due = due + PERIOD_MS
  if wait <= 0 then return 0 end
  return math.floor(wait)
end
"""
    return script


def sent_count(output: str) -> int:
    """Requests the marker script built, summed over wrk's threads (its ``done()`` lines)."""
    return sum(int(n) for n in re.findall(r"^oceanus-sent \d+ (\d+)$", output, re.M))


def parse_marker(oid: str) -> tuple[int, int, int]:
    """(step, thread, sequence) of a marker."""
    return int(oid[0:2], 16), int(oid[2:4], 16), int(oid[4:12], 16)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def sustained(step: dict[str, Any], lag_bound_s: float) -> bool:
    """The step's verdict (module docstring)."""
    return bool(
        step["achieved_rps"] >= RATE_TOLERANCE * step["target_rps"]
        and step["non2xx"] == 0
        and not step["socket_errors"]
        and step["lag_p99_s"] <= lag_bound_s
        and step["lost"] == 0
    )


class Search:
    """Binary search for the highest sustained rate in (0, ``ceiling``]."""

    def __init__(self, ceiling: float, start: float) -> None:
        self.ceiling = ceiling
        self.lo = 0.0  # highest rate sustained so far
        self.hi = ceiling  # lowest rate not sustained (the collector alone, until tested)
        self.next: float | None = start * ceiling

    def record(self, rate: float, ok: bool) -> None:
        if ok:
            self.lo = max(self.lo, rate)
        else:
            self.hi = min(self.hi, rate)
        if self.hi - self.lo < RESOLUTION * self.ceiling:
            self.next = None
        else:
            self.next = (self.lo + self.hi) / 2


def lag_seconds(admin_url: str) -> float:
    """The flusher's ``oceanus_lag_seconds`` for the stream (NaN when unreadable)."""
    try:
        with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith("oceanus_lag_seconds{") and f'stream="{STREAM}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def stored(admin_url: str, token: str, step: int) -> tuple[int, int, int]:
    """(rows, distinct event ids, distinct markers) of one step, through the flusher's ``POST /query``."""
    sql = (
        f"SELECT count(*), count(DISTINCT event_id), count(DISTINCT oid) FROM {STREAM} "
        f"WHERE substr(oid, 1, 2) = '{step:02x}'"
    )
    req = urllib.request.Request(
        admin_url + "/query", data=sql.encode(), method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        rows = json.loads(resp.read())["rows"]
    return int(rows[0][0]), int(rows[0][1]), int(rows[0][2])


def run_step(
    stack: Any, token: str, args: argparse.Namespace, step: int, rate: float, lag_bound_s: float, tmp: Path
) -> dict[str, Any]:
    """One paced step: load, lag samples, drain, accounting."""
    per_thread = rate / args.threads
    limit = math.ceil(per_thread * args.seconds * COUNT_SLACK) + args.connections
    script = tmp / f"step-{step}.lua"
    script.write_text(lua_script(step, per_thread, limit))
    url = f"{stack.url}/b/{STREAM}"
    lags: list[float] = []
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(wrk, url, args.seconds, args.connections, args.threads, script)
        while not load.done():
            lag = lag_seconds(stack.admin_url)
            if lag == lag:  # not NaN
                lags.append(lag)
            time.sleep(LAG_SAMPLE_S)  # the sampling period of a gauge, not a synchronisation
        res = load.result()
    stack.wait_drained()
    rows, events, markers = stored(stack.admin_url, token, step)
    sent = sent_count(res["output"])
    out = {
        "step": step,
        "target_rps": round(rate),
        "achieved_rps": round(res["rps"]),
        "sent": sent,
        "ok": res["ok"],
        "non2xx": res["non2xx"],
        "socket_errors": res["socket_errors"],
        "p99_ms": res["p99_ms"],
        "lag_p99_s": round(percentile(lags, 99), 2),
        "lag_max_s": round(max(lags), 2) if lags else None,
        "stored": markers,
        "lost": max(0, res["ok"] - markers),
        # Upper bound of the lost: sent and not stored (0 makes ``lost`` exact).
        "sent_not_stored": sent - markers,
        "unacked_stored": max(0, markers - res["ok"]),
        "duplicates": rows - min(events, markers),
    }
    out["sustained"] = sustained(out, lag_bound_s)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from oceanus import config
    from tests.reliability.harness import Stack

    token = secrets.token_hex(16)
    cfg = config.load(config.REPO_CONFIG, env={})
    lag_bound_s = cfg.streams[STREAM].batch.max_wait_s + LAG_MARGIN_S
    with tempfile.TemporaryDirectory(prefix="oceanus-bench-") as d:
        tmp = Path(d)
        stack = Stack(
            tmp / "stack",
            workers=args.workers,
            appendfsync="always",
            flusher_env={"OCEANUS_FLUSHER_QUERY_ENABLED": "true", "OCEANUS_QUERY_TOKEN": token},
        )
        try:
            stack.redis.start()
            stack.start_collector()
            url = f"{stack.url}/b/{STREAM}"
            if args.warmup:
                (tmp / "warmup.lua").write_text(lua_script(WARMUP_STEP))
                wrk(url, args.warmup, args.connections, args.threads, tmp / "warmup.lua")
            alone_s = min(args.seconds, COLLECTOR_ALONE_MAX_S)
            (tmp / "alone.lua").write_text(lua_script(ALONE_STEP))
            log(f"pipeline: the collector alone, unpaced, {alone_s:g}s at c{args.connections} ...")
            alone = wrk(url, alone_s, args.connections, args.threads, tmp / "alone.lua")
            collector_rps = float(alone["rps"])
            log(f"pipeline: collector alone {collector_rps:,.0f} events/s; starting the flusher, draining ...")
            stack.start_flusher()
            stack.wait_drained(timeout=600)
            search = Search(collector_rps, args.start)
            steps: list[dict[str, Any]] = []
            step = FIRST_PACED_STEP
            while search.next is not None and len(steps) < args.steps:
                rate = search.next
                log(f"pipeline: step {step}: {rate:,.0f} events/s for {args.seconds:g}s ...")
                result = run_step(stack, token, args, step, rate, lag_bound_s, tmp)
                log(f"pipeline: step {step}: {json.dumps(result)}")
                search.record(rate, result["sustained"])
                steps.append(result)
                step += 1
        finally:
            stack.stop()
    best = max((s for s in steps if s["sustained"]), key=lambda s: s["target_rps"], default=None)
    out: dict[str, Any] = {
        "bench": "pipeline",
        "seconds": args.seconds,
        "workers": args.workers,
        "connections": args.connections,
        "threads": args.threads,
        "appendfsync": "always",
        "collector_alone_rps": round(collector_rps),
        "collector_alone_p99_ms": alone["p99_ms"],
        "lag_bound_s": lag_bound_s,
        "events_per_s": best["achieved_rps"] if best else 0,
        "fraction_of_collector": round(best["achieved_rps"] / collector_rps, 3) if best else 0.0,
        "target_events_per_s": best["target_rps"] if best else 0,
        "lag_p99_s": best["lag_p99_s"] if best else None,
        "p99_ms": best["p99_ms"] if best else None,
        "lost": best["lost"] if best else None,
        "duplicates": best["duplicates"] if best else None,
        "lost_all_steps": sum(s["lost"] for s in steps),
        "duplicates_all_steps": sum(s["duplicates"] for s in steps),
        "steps": steps,
    }
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="length of each paced step")
    p.add_argument("--steps", type=int, default=6, help="paced steps at most (binary search)")
    p.add_argument("--start", type=float, default=0.5, help="first step's rate, as a share of the collector alone")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured wrk run before the collector alone (0: none)")
    p.add_argument("--workers", type=int, default=2, help="collector worker processes (as bench collector)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="wrk threads (1 leaves the CPU to the pipeline)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.seconds < 1:
        p.error("--seconds must be at least 1 (wrk runs whole seconds)")
    if not 1 <= args.steps <= MAX_STEPS - FIRST_PACED_STEP:
        p.error(f"--steps must be within 1..{MAX_STEPS - FIRST_PACED_STEP}")
    if not 0 < args.start <= 1:
        p.error("--start must be in (0, 1]")
    if not 1 <= args.threads <= MAX_THREADS + 1:
        p.error(f"--threads must be within 1..{MAX_THREADS + 1}")
    if args.connections < args.threads:
        p.error("--connections must be at least --threads (wrk gives each thread one at least)")
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        log("wrk is not installed (make system-deps installs it with apt)")
        return 2
    out = run(args)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0
