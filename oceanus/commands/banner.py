"""What ``oceanus dev`` prints once the stack is up: where everything runs, and
examples that work against it (a pixel URL and one POST per stream, with values
each stream's rules accept)."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from oceanus import config
from oceanus.commands import devstate


def _sample_string(name: str, field: config.FieldConfig) -> str:
    import re

    if field.enum:
        return field.enum[0]
    if field.format == "email":
        return "ada@example.com"
    candidates = ["0123abcd", "view", "demo", "12345", "03-1234-5678"]
    if field.pattern is None:
        return "u123" if name.endswith("id") else "demo"
    for cand in candidates:
        if re.search(field.pattern, cand) and (field.max_length is None or len(cand) <= field.max_length):
            return cand
    return "demo"


def sample_value(name: str, field: config.FieldConfig) -> object:
    """A value the collector accepts for ``field``, for the printed examples."""
    if field.type == "int":
        low = field.min if field.min is not None else 0
        return int(max(low, min(42, field.max if field.max is not None else 42)))
    if field.type == "float":
        return 1.5
    if field.type == "bool":
        return True
    if field.type == "timestamp":
        return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    if field.type == "json":
        return {"k": 1}
    return _sample_string(name, field)


def example_fields(stream: config.StreamConfig) -> dict[str, object]:
    """The required fields, or the first field when none is required."""
    names = [n for n, f in stream.fields.items() if f.required] or list(stream.fields)[:1]
    out = {n: sample_value(n, stream.fields[n]) for n in names}
    if stream.name == "pageview" and "evt" in out:
        out["evt"] = "view"
    return out


def banner(
    cfg: config.Config,
    data_dir: Path,
    collector_url: str,
    redis_url: str,
    admin_url: str,
    default_data_dir: bool,
    default_port: bool,
) -> str:
    from urllib.parse import urlencode

    dd = "" if default_data_dir else f" --data-dir {shlex.quote(str(data_dir))}"
    url_opt = "" if default_port else f" --url {collector_url}"
    streams = list(cfg.streams.values())
    first = streams[0]
    pixel = f"{collector_url}/b/{first.name}?" + urlencode(
        {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in example_fields(first).items()}
    )
    lines = [
        f"oceanus dev: running (data in {data_dir}; Ctrl-C stops everything cleanly)",
        f"  collector  {collector_url}",
        f"  flusher    -> {devstate.warehouse_path(data_dir)}  (admin {admin_url})",
        f"  redis      {redis_url}  (AOF in {data_dir / devstate.REDIS_DIR})",
        f"  logs       {data_dir / devstate.LOG_DIR}/",
        "",
        f"Pixel URL:    {pixel}",
        f"Demo page:    {collector_url}/demo      (the browser tag at work)",
        f"Status page:  {collector_url}/_/status",
        "",
        "Send events:",
        f"  curl -sS -o /dev/null -w '%{{http_code}}\\n' {shlex.quote(pixel)}",
    ]
    for stream in streams:
        body = msgspec.json.encode(example_fields(stream)).decode()
        lines.append(
            f"  curl -sS -X POST {collector_url}/e/{stream.name} -H 'content-type: application/json' "
            f"-d {shlex.quote(body)}"
        )
    lines += [
        f"  curl -sS {collector_url}/readyz; curl -sS {collector_url}/metrics | grep ^oceanus_events",
        "",
        "Then:",
        f"  oceanus demo{url_opt} --events 1000    # realistic traffic, a few invalid requests",
        f"  oceanus status{dd}    # rows stored, backlog, lag per stream",
        f'  oceanus query{dd} "SELECT evt, count(*) AS n FROM {first.name}_dedup GROUP BY ALL"'
        if first.name == "pageview"
        else f'  oceanus query{dd} "SELECT count(*) FROM {first.name}_dedup"',
        "",
    ]
    return "\n".join(lines)
