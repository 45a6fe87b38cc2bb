"""Configs, rows and state for the Storage Write API and load-job tests and the BigQuery bench."""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING, Any

from flusher.sinks.base import Batch
from oceanus import config

if TYPE_CHECKING:
    from flusher.sinks.bigquery import BigQuerySink
    from tests.support.servers import BigQueryEmulator

FIELDS_TOML = """
[streams.ev]
mode = "{mode}"
clustering = ["s"]
[streams.ev.fields]
s = { type = "string" }
n = { type = "int" }
f = { type = "float" }
b = { type = "bool" }
t = { type = "timestamp" }
j = { type = "json" }
"""


def mode_config(
    rest_url: str,
    grpc_target: str,
    project: str,
    mode: str,
    *,
    dataset: str | None = None,
    extra_fields: str = "",
    **bigquery: Any,
) -> config.Config:
    """Stream ``ev`` in ``mode``, written through the emulator at ``rest_url``/``grpc_target``."""
    settings = {
        "project": project,
        "dataset": dataset or f"t_{uuid.uuid4().hex[:10]}",
        "api_endpoint": rest_url,
        "grpc_endpoint": grpc_target,
        "retry_deadline_s": 5.0,
        "timeout_s": 10.0,
        **bigquery,
    }
    lines = "\n".join(f"{k} = {_toml(v)}" for k, v in settings.items())
    return config.loads(
        f'[sink]\nkind = "bigquery"\n[sink.bigquery]\n{lines}\n' + FIELDS_TOML.replace("{mode}", mode) + extra_fields
    )


def mode_sink(emu: BigQueryEmulator, mode: str, **kw: Any) -> BigQuerySink:
    """A BigQuerySink for stream ``ev`` in ``mode`` against ``emu``, its tables created."""
    from flusher.sinks.bigquery import BigQuerySink

    cfg = mode_config(emu.rest_url, emu.grpc_target, emu.project, mode, **kw)
    sink = BigQuerySink(cfg)
    sink.ensure_tables(list(cfg.streams.values()))
    return sink


def _toml(v: Any) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


class MemState:
    """A WriteState in memory (the flusher keeps it in a Redis hash beside the claim)."""

    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values: dict[str, str] = dict(values or {})

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def set(self, **values: str) -> None:
        self.values.update(values)


def event_id(batch_no: int, i: int) -> bytes:
    """Deterministic 16-byte ids, so a process can rebuild another one's batch."""
    return hashlib.md5(f"{batch_no}:{i}".encode()).digest()


def rows(stream: config.StreamConfig, batch_no: int, n: int, *, pad: int = 0) -> list[list[Any]]:
    """``n`` frame rows (``stream.columns`` order) of batch ``batch_no``; ``pad`` lengthens ``s``."""
    base_us = 1_790_000_000_000_000 + batch_no * 1_000_000
    out: list[list[Any]] = []
    for i in range(n):
        values: dict[str, Any] = {
            "event_id": event_id(batch_no, i),
            "received_at": base_us + i,
            "ip": "192.0.2.7",
            "ua": "Mozilla/5.0 (X11; Linux x86_64)",
            "device": "pc",
            "s": f"s{batch_no}-{i}" + "x" * pad,
            "n": i,
            "f": i / 4,
            "b": i % 2 == 0,
            "t": base_us - i,
            "j": f'{{"i": {i}}}',
            "extra": '{"utm": "mail"}' if i % 5 == 0 else None,
            "z": f"z{i}",
        }
        out.append([values.get(c) for c in stream.columns])
    return out


def batch(stream: config.StreamConfig, batch_no: int, n: int, *, pad: int = 0) -> Batch:
    data = rows(stream, batch_no, n, pad=pad)
    return Batch(stream=stream, batch_id=f"b{batch_no}", columns=stream.columns, rows=data)
