"""The ``[imports]`` run inside the flusher process, on the DuckDB database it holds.

DuckDB lets one process open a file for writing and no other process open it at
all, so while a flusher runs, ``oceanus import`` cannot reach the warehouse. The
flusher therefore hosts the import loop (``oceanus import serve``'s) in a thread
of its own when ``[imports]`` are configured and the sink is DuckDB. Each run
gets a connection of its own to the flusher's open database
(:meth:`flusher.sinks.duckdb.DuckDBSink.connect`): never the writer's or the
reader's, so a batch of imported rows and its watermark still commit in one
transaction of the importer's (a crash leaves them together or not at all), and
the events' inserts go on beside it. SIGTERM sets the stop event: the batch being
written commits, the loop ends, the flusher exits. The import metrics are
served on the flusher's /metrics.

BigQuery needs none of this: ``oceanus import serve`` runs as a process of its
own (k8s/base has the CronJob).
"""

from __future__ import annotations

import logging
import os
import threading

from prometheus_client import CollectorRegistry

from flusher.runner import HostedTask
from flusher.sinks.base import Sink
from importer.metrics import ImportMetrics
from importer.runner import serve_loop
from importer.targets.base import Target
from importer.targets.duckdb import DuckDBTarget
from oceanus.config import Config

log = logging.getLogger("oceanus.import")


def hosted_imports(cfg: Config) -> list[HostedTask]:
    """The flusher's hosted task for ``cfg``'s imports: one when there are imports and the sink is DuckDB."""
    if not cfg.imports or cfg.sink.kind != "duckdb":
        return []
    # An import whose source variable this process lacks is left out, once, with a warning:
    # one config serves `oceanus dev` (which sets it) and deployments that import elsewhere.
    imports = []
    for imp in cfg.imports.values():
        if os.environ.get(imp.source_url_env):
            imports.append(imp)
        else:
            log.warning("imports.%s: %s is not set; this flusher does not run the import", imp.name, imp.source_url_env)
    if not imports:
        return []

    def imports_in_flusher(sink: Sink, registry: CollectorRegistry, stop: threading.Event) -> None:
        from flusher.sinks.duckdb import DuckDBSink

        if not isinstance(sink, DuckDBSink):  # never: make_sink follows sink.kind
            return

        def target(c: Config) -> Target:
            return DuckDBTarget(c, con=sink.connect())

        log.info("running %d import(s) in the flusher: %s", len(imports), ", ".join(i.name for i in imports))
        serve_loop(cfg, imports, stop, ImportMetrics(registry), target_opener=target)
        log.info("imports stopped")

    return [imports_in_flusher]
