"""BigQuery sink: the client, the table manager, and the per-stream mode dispatch.

The same files answer the questions every sink answers (Vector's habit):
``schema.py`` how a stream becomes a table and a row a JSON row, ``errors.py``
which failure is which :class:`oceanus.errors.Reason`, and one writer per
``stream.mode``: ``insert_all.py``, ``storage_write.py``, ``load.py``. A writer
makes one attempt and classifies; the flusher's worker retries.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from flusher.sinks.base import Batch, WriteResult, WriteState
from flusher.sinks.bigquery.errors import classify
from flusher.sinks.bigquery.insert_all import STATE_DONE
from flusher.sinks.bigquery.schema import (
    Tables,
    dedup_view_sql,
    json_row_converter,
    table_schema,
    timestamp_us_to_rfc3339,
)
from flusher.sinks.common import DEDUP_VIEW_SUFFIX
from oceanus.config import Config, StreamConfig
from oceanus.errors import ConfigError

if TYPE_CHECKING:
    from google.cloud import bigquery

__all__ = [
    "STATE_DONE",
    "BigQuerySink",
    "ModeWriter",
    "classify",
    "dedup_view_sql",
    "json_row_converter",
    "make_client",
    "table_schema",
    "timestamp_us_to_rfc3339",
]


class ModeWriter(Protocol):
    """One BigQuery write mode, built lazily as ``Writer(sink)``.

    It may use ``sink.client``, ``sink.config``, ``sink.table_id(stream)``,
    ``sink.write_retry``/``sink.timeout_s``, :func:`table_schema` and
    :func:`json_row_converter`. ``write`` has the contract of
    :meth:`flusher.sinks.base.Sink.write`.
    """

    def write(self, batch: Batch, state: WriteState) -> WriteResult: ...

    def close(self) -> None: ...


#: stream.mode -> "module:class" of its writer.
MODE_WRITERS: dict[str, str] = {
    "insert_all": "flusher.sinks.bigquery.insert_all:InsertAllWriter",
    "storage_write": "flusher.sinks.bigquery.storage_write:StorageWriter",
    "load": "flusher.sinks.bigquery.load:LoadWriter",
}


def _endpoint(cfg: Config) -> str:
    endpoint = cfg.sink.bigquery.api_endpoint or os.environ.get("BIGQUERY_EMULATOR_HOST", "")
    if endpoint and "://" not in endpoint:
        # BIGQUERY_EMULATOR_HOST is conventionally ``host:port``.
        endpoint = "http://" + endpoint
    return endpoint


def make_client(cfg: Config) -> bigquery.Client:
    """The REST client: ADC normally; anonymous against an explicit endpoint (an emulator)."""
    from google.api_core.client_options import ClientOptions
    from google.auth import exceptions as auth_exc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    bq = cfg.sink.bigquery
    project = bq.project or None
    endpoint = _endpoint(cfg)
    if endpoint:
        if project is None:
            raise ConfigError("sink.bigquery.project: required when sink.bigquery.api_endpoint (or an emulator) is set")
        return bigquery.Client(
            project=project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=endpoint),
            location=bq.location,
        )
    try:
        return bigquery.Client(project=project, location=bq.location)
    except auth_exc.DefaultCredentialsError as exc:
        raise ConfigError(
            "sink.bigquery: no Google credentials found; set GOOGLE_APPLICATION_CREDENTIALS to a key file "
            f"or run `gcloud auth application-default login` ({exc})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"sink.bigquery: cannot build the BigQuery client ({exc})") from None


class BigQuerySink:
    """``[sink] kind = "bigquery"``: one table per stream in ``sink.bigquery.dataset``."""

    name = "bigquery"

    def __init__(self, cfg: Config, client: bigquery.Client | None = None) -> None:
        from google.cloud import bigquery

        self.config = cfg
        self.settings = cfg.sink.bigquery
        self.client = client if client is not None else make_client(cfg)
        self.project: str = self.client.project
        self.dataset_id = f"{self.project}.{self.settings.dataset}"
        self.timeout_s = self.settings.timeout_s
        # Table sync only (it runs once, before the workers): the library's retries,
        # bounded by sink.bigquery.retry_deadline_s. None disables them; the
        # library's annotations say Retry only, hence Any.
        self.retry: Any = (
            bigquery.DEFAULT_RETRY.with_deadline(self.settings.retry_deadline_s)
            if self.settings.retry_deadline_s > 0
            else None
        )
        # Writes: none. A write makes one attempt and the flusher's worker backs off
        # and counts each retry; a library retry inside would hide that time (against
        # an emulator answering 500, minutes).
        self.write_retry: Any = None
        self._writers: dict[str, ModeWriter] = {}
        # The flusher may write several streams from worker threads at once.
        self._writers_lock = threading.Lock()

    def table_id(self, stream: StreamConfig | str) -> str:
        name = stream if isinstance(stream, str) else stream.name
        return f"{self.dataset_id}.{name}"

    def dedup_view_id(self, stream: StreamConfig | str) -> str:
        return self.table_id(stream) + DEDUP_VIEW_SUFFIX

    def ensure_tables(self, streams: Sequence[StreamConfig]) -> list[str]:
        return Tables(self).ensure_tables(streams)

    def write(self, batch: Batch, state: WriteState) -> WriteResult:
        return self._mode_writer(batch.stream.mode).write(batch, state)

    def _mode_writer(self, mode: str) -> ModeWriter:
        writer = self._writers.get(mode)
        if writer is not None:
            return writer
        with self._writers_lock:
            writer = self._writers.get(mode)
            if writer is None:
                target = MODE_WRITERS.get(mode)
                if target is None:
                    raise ConfigError(f"stream mode `{mode}` is not supported by the BigQuery sink")
                module_name, class_name = target.split(":")
                try:
                    module = importlib.import_module(module_name)
                except ModuleNotFoundError as exc:
                    raise ConfigError(f"stream mode `{mode}` is not available in this build ({exc})") from None
                writer = getattr(module, class_name)(self)
                self._writers[mode] = writer
            return writer

    def close(self) -> None:
        with self._writers_lock:
            writers, self._writers = list(self._writers.values()), {}
        for writer in writers:
            writer.close()
        self.client.close()  # type: ignore[no-untyped-call]
