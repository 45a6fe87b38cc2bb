"""Sinks: one module per warehouse, chosen by ``[sink] kind``.

The flusher only knows :func:`make_sink` and the protocol in
:mod:`flusher.sinks.base`; a sink's module (and its client library) is imported
only when the config asks for it.
"""

from __future__ import annotations

import importlib

from flusher.sinks.base import Sink
from oceanus.config import Config
from oceanus.errors import ConfigError

#: sink.kind -> "module:class"; the class is built as ``Class(cfg)``.
SINKS: dict[str, str] = {
    "duckdb": "flusher.sinks.duckdb:DuckDBSink",
    "bigquery": "flusher.sinks.bigquery:BigQuerySink",
    "postgres": "flusher.sinks.postgres:PostgresSink",
    "mysql": "flusher.sinks.mysql:MySQLSink",
}


def make_sink(cfg: Config) -> Sink:
    target = SINKS.get(cfg.sink.kind)
    if target is None:
        raise ConfigError(f"sink.kind: unknown sink {cfg.sink.kind!r} (known: {', '.join(sorted(SINKS))})")
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    sink: Sink = cls(cfg)
    return sink
