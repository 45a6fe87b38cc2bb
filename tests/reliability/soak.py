"""``make soak``: the whole pipeline at ~80 % of its measured maximum for a long stretch.

    python -m tests.reliability.soak [--seconds 600] [--probe-seconds 10] [--load 0.8] [--json]

1. starts redis-server (AOF, appendfsync always), the flusher (DuckDB) and the
   collector on loopback ports under a temporary directory;
2. measures the maximum: as many senders as fit, unpaced, for ``--probe-seconds``;
3. runs paced load at ``--load`` x that rate for ``--seconds``, sampling every
   ``--sample-seconds``: collector RSS (main process + granian workers),
   flusher RSS, end-to-end lag (the flusher's ``oceanus_lag_seconds``) and the
   Redis backlog;
4. drains, stops, and prints the accounting line.

Pass: RSS growth after warm-up (the first 20 % of the run) under 5 % for both
processes, lag never above ``--max-lag-s``, and ``lost=0``. Exit code 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.reliability.harness import STREAM, Stack
from tests.reliability.loadgen import Load

#: RSS may grow this much (fraction) between the end of warm-up and the end of the run.
MAX_RSS_GROWTH = 0.05
#: Share of the run treated as warm-up (caches, allocator arenas, connection pools filling).
WARMUP_FRACTION = 0.2
SENDERS = 32


def lag_seconds(stack: Stack) -> float:
    try:
        with urllib.request.urlopen(stack.admin_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith("oceanus_lag_seconds{") and f'stream="{STREAM}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def growth(samples: list[int]) -> tuple[int, int, float]:
    """(RSS after warm-up, RSS at the end, growth): medians of the first and last few samples
    after warm-up, so one allocator hiccup does not decide the verdict."""
    k = max(1, len(samples) // 5)
    start = int(statistics.median(samples[:k]))
    end = int(statistics.median(samples[-k:]))
    return start, end, (end - start) / start if start else 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="oceanus-soak-"))
    stack = Stack(base, workers=args.workers, appendfsync=args.appendfsync).start()
    try:
        probe = Load(stack.port, senders=SENDERS, duration_s=args.probe_seconds, first_sender=0).start().join()
        max_rate = probe.acked_count / probe.elapsed_s
        rate = args.load * max_rate
        print(
            f"soak: measured max {max_rate:.0f} events/s over {args.probe_seconds:g}s; "
            f"soaking at {rate:.0f} events/s ({args.load:.0%}) for {args.seconds:g}s",
            file=sys.stderr,
            flush=True,
        )
        if args.probe_only:
            tally = stack.finish(probe, f"probe (appendfsync {args.appendfsync})")
            return {
                "appendfsync": args.appendfsync,
                "max_events_per_s": round(max_rate),
                "lost": tally.lost,
                "pass": tally.lost == 0,
            }
        stack.wait_drained()
        # Bounded by time; the count bound is only a backstop (twice what the paced rate can send).
        budget = int(rate * args.seconds * 2) + 1000
        load = Load(
            stack.port, senders=SENDERS, duration_s=args.seconds, rate=rate, first_sender=SENDERS, max_events=budget
        ).start()
        t0 = time.monotonic()
        samples: list[dict[str, float]] = []
        while time.monotonic() - t0 < args.seconds:
            time.sleep(args.sample_seconds)  # the sampling period
            assert stack.collector is not None
            assert stack.flusher is not None
            samples.append(
                {
                    "t": time.monotonic() - t0,
                    "collector_rss": stack.collector.rss_bytes(),
                    "flusher_rss": stack.flusher.rss_bytes(),
                    "lag_s": lag_seconds(stack),
                    "backlog_frames": stack.backlog_frames(),
                    "acked": load.result.acked_count,
                }
            )
            s = samples[-1]
            print(
                f"  t={s['t']:5.0f}s collector={s['collector_rss'] / 2**20:6.1f} MiB "
                f"flusher={s['flusher_rss'] / 2**20:6.1f} MiB lag={s['lag_s']:5.2f}s "
                f"backlog={s['backlog_frames']:.0f} acked={s['acked']:.0f}",
                file=sys.stderr,
                flush=True,
            )
        result = load.join()
        if result.elapsed_s < args.seconds * 0.95:
            raise RuntimeError(f"the load stopped after {result.elapsed_s:.0f}s of {args.seconds:g}s")
        soaked_rate = result.acked_count / result.elapsed_s
        # The probe's events are in the warehouse too: account for them as well.
        result.sent += probe.sent
        result.acked.update(probe.acked)
        result.statuses.update(probe.statuses)
        tally = stack.finish(result, "soak (probe + soak)")
    finally:
        stack.stop()
    steady = [s for s in samples if s["t"] >= args.seconds * WARMUP_FRACTION] or samples
    c0, c1, cg = growth([int(s["collector_rss"]) for s in steady])
    f0, f1, fg = growth([int(s["flusher_rss"]) for s in steady])
    lags = [s["lag_s"] for s in samples if s["lag_s"] == s["lag_s"]]
    out = {
        "seconds": args.seconds,
        "max_events_per_s": round(max_rate),
        "target_events_per_s": round(rate),
        "achieved_events_per_s": round(soaked_rate),
        "collector_rss_mib": [round(c0 / 2**20, 1), round(c1 / 2**20, 1)],
        "collector_rss_growth": round(cg, 4),
        "flusher_rss_mib": [round(f0 / 2**20, 1), round(f1 / 2**20, 1)],
        "flusher_rss_growth": round(fg, 4),
        "lag_s_max": round(max(lags), 2) if lags else None,
        "lag_s_median": round(statistics.median(lags), 2) if lags else None,
        "sent": tally.sent,
        "acked": tally.acked,
        "stored": tally.stored,
        "duplicates": tally.duplicates,
        "lost": tally.lost,
    }
    out["pass"] = bool(
        cg < MAX_RSS_GROWTH and fg < MAX_RSS_GROWTH and tally.lost == 0 and lags and max(lags) <= args.max_lag_s
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--probe-seconds", type=float, default=10.0)
    ap.add_argument("--load", type=float, default=0.8, help="fraction of the measured maximum")
    ap.add_argument("--sample-seconds", type=float, default=5.0)
    ap.add_argument("--max-lag-s", type=float, default=15.0, help="bound on the end-to-end lag")
    ap.add_argument("--workers", type=int, default=1, help="collector workers")
    ap.add_argument("--appendfsync", choices=["always", "everysec", "no"], default="always")
    ap.add_argument("--probe-only", action="store_true", help="measure the maximum rate and stop")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    args = ap.parse_args(argv)
    out = run(args)
    if args.probe_only:
        print(json.dumps(out))
        return 0 if out["pass"] else 1
    print(
        f"collector RSS {out['collector_rss_mib'][0]} -> {out['collector_rss_mib'][1]} MiB "
        f"({out['collector_rss_growth']:+.1%}); flusher RSS {out['flusher_rss_mib'][0]} -> "
        f"{out['flusher_rss_mib'][1]} MiB ({out['flusher_rss_growth']:+.1%}); lag max {out['lag_s_max']}s "
        f"median {out['lag_s_median']}s; {'PASS' if out['pass'] else 'FAIL'}"
    )
    if args.json:
        print(json.dumps(out))
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
