"""``oceanus collector``: run the ASGI app under granian with uvloop.

The config is loaded here once to fail fast with one line, then again in each
worker (granian's factory target :func:`collector.app.create_app`) from the same
file and environment. ``--host/--port/--workers`` override the config through
``OCEANUS_COLLECTOR_*`` so workers see the same values.

Metrics: a fresh ``PROMETHEUS_MULTIPROC_DIR`` per run (removed on exit) so the
workers' values merge and a restart never resurrects old counts.

Shutdown: SIGTERM to this process makes granian terminate the workers; each
one turns ``/readyz`` 503, lets in-flight requests finish, writes what is
queued (Redis, else the spool) within ``collector.drain_timeout_s``, and exits.
granian kills a worker that overstays by a few seconds.

Each worker replays its whole spool to Redis before it exits (collector/pusher.py).
Once every worker is gone, spool bytes no live process holds were acknowledged and
not replayed (Redis unreachable, or the drain budget spent): the command says how
many and exits ``EXIT_SPOOL_LEFT``, since on Kubernetes that disk goes with the pod.
A full spool needs :func:`collector.spool.drain_budget_s` of ``drain_timeout_s``
(replay plans on 5 MB/s: 225 s for 1 GiB); where the spool's disk dies with the
pod (k8s), the config and grace periods follow from that, and a test checks them.

Worker death: granian respawns a worker that exits unexpectedly; the new one
claims the dead worker's spool file (collector/spool.py) and replays it.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from typing import Any

from collector import spool
from collector.access import load_keys
from oceanus import config
from oceanus.config import CollectorConfig

# Not imported from collector.metrics: prometheus_client picks its value class
# at import time, so it must not be imported before the variable is set.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Extra seconds granian gives a worker beyond its drain before killing it.
KILL_MARGIN_S = 3
#: Exit status when acknowledged events are left in the spool at exit.
EXIT_SPOOL_LEFT = 3


#: HTTP/2 streams one connection may open at once (granian's minimum is 10): each
#: buffers a header block of up to ``max_header_bytes``.
HTTP2_MAX_STREAMS = 16


def edge_limits(c: CollectorConfig) -> dict[str, Any]:
    """granian's connection-level limits from ``collector.*`` (docs/SECURITY.md).

    granian's defaults let one connection hold 400 KB of unfinished HTTP/1 headers
    or, over cleartext HTTP/2, 16 MB of header block per stream, and never close a
    connection that sends nothing. Here a request head must fit in
    ``max_header_bytes`` and arrive within ``header_timeout_s`` (hyper starts that
    clock when it waits for a head, so idle keep-alive connections are closed too),
    and a worker serves ``max_connections`` at once (granian's backpressure: a
    semaphore taken per accepted connection); the rest wait in the kernel's backlog.
    """
    from granian.constants import HTTPModes
    from granian.http import HTTP1Settings, HTTP2Settings

    return {
        "http": {"1": HTTPModes.http1, "2": HTTPModes.http2, "auto": HTTPModes.auto}[c.http],
        "backpressure": c.max_connections,
        "http1_settings": HTTP1Settings(
            header_read_timeout=max(1, round(c.header_timeout_s * 1000)), max_buffer_size=c.max_header_bytes
        ),
        "http2_settings": HTTP2Settings(
            max_headers_size=c.max_header_bytes,
            max_concurrent_streams=HTTP2_MAX_STREAMS,
            keep_alive_interval=max(1, round(c.header_timeout_s * 1000)),
            keep_alive_timeout=max(1, math.ceil(c.header_timeout_s)),
        ),
    }


def main(args: argparse.Namespace) -> int:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    overrides = {
        "OCEANUS_COLLECTOR_HOST": args.host,
        "OCEANUS_COLLECTOR_PORT": args.port,
        "OCEANUS_COLLECTOR_WORKERS": args.workers,
    }
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = str(value) if not isinstance(value, str) else f'"{value}"'
    if args.config:
        os.environ["OCEANUS_CONFIG"] = os.path.abspath(args.config)
    cfg = config.load()
    os.environ["OCEANUS_CONFIG"] = os.path.abspath(cfg.source)
    c = cfg.collector
    for name, rule in c.access.items():
        load_keys(name, rule)  # a missing key source fails here, in one line, not in every worker
    os.makedirs(c.spool_dir, exist_ok=True)

    metrics_dir = tempfile.mkdtemp(prefix="oceanus-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        server = Granian(
            "collector.app:create_app",
            factory=True,
            address=c.host,
            port=c.port,
            interface=Interfaces.ASGI,
            workers=c.workers,
            loop=Loops.uvloop,
            log_access=False,
            backlog=2048,
            **edge_limits(c),
            workers_kill_timeout=math.ceil(c.drain_timeout_s) + KILL_MARGIN_S,
            # A worker that dies (OOM kill, segfault, kill -9) is replaced at once; its
            # spool file is unlocked by its death, and the new worker claims and replays
            # it. granian gives up (and exits, so the pod restarts) if the same worker
            # dies again within ~5 s of a respawn: a crash loop.
            respawn_failed_workers=True,
        )
        server.serve()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    left = spool.usage(c.spool_dir, unowned_only=True)
    if left.bytes:
        print(
            f"oceanus collector: exiting with {left.bytes} bytes of acknowledged events not replayed to Redis "
            f"in {left.files} spool file(s) under {c.spool_dir}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_SPOOL_LEFT
    return 0
