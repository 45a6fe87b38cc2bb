"""``oceanus.toml``: frozen msgspec Structs, decoded once at start-up.

The stream definitions are the single source of truth: the collector's
validator, the warehouse schemas and ``/openapi.json`` are all derived from
them. Every error names the key path (``streams.pageview.fields.sid.pattern``)
so a start-up failure is one line a user can act on.

Environment overrides: any scalar key outside ``streams`` can be set with
``OCEANUS_<SECTION>_<KEY>`` (``OCEANUS_REDIS_URL``, ``OCEANUS_SINK_KIND``,
``OCEANUS_SINK_DUCKDB_PATH``, ``OCEANUS_COLLECTOR_PORT``...). Values are parsed
as TOML scalars when they look like one (``8080``, ``true``, ``["a","b"]``),
else taken as strings.

Kubernetes puts service-link variables in every container's environment, one
set per Service of the namespace (``oceanus-collector`` ->
``OCEANUS_COLLECTOR_SERVICE_HOST``, ``OCEANUS_COLLECTOR_PORT=tcp://10.0.0.1:80``,
...). Those exact shapes, with the values the kubelet gives them, are ignored
(logged at debug) rather than read as keys; any other ``OCEANUS_*`` name that
is not a key is still an error naming it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import tomllib
import typing
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from oceanus.errors import ConfigError

log = logging.getLogger("oceanus.config")

PositiveInt = Annotated[int, Meta(gt=0)]
NonNegInt = Annotated[int, Meta(ge=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
Name = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,62}$")]

FieldType = Literal["string", "int", "float", "bool", "timestamp", "json"]
#: Value transforms, applied in order before the checks. Strings: ``lowercase``,
#: ``uppercase``, ``strip``, ``truncate`` (cut at ``max_length`` instead of refusing),
#: ``remove:<chars>`` (delete each of the characters); json: ``sort_keys`` (re-encoded
#: with sorted keys and the separators of Python's ``json.dumps``, as the 2016 oceanus stored it).
Transform = str
STRING_TRANSFORMS = frozenset(("lowercase", "uppercase", "strip", "truncate"))
JSON_TRANSFORMS = frozenset(("sort_keys",))
#: Prefix of the transform that deletes characters (``remove:/``).
REMOVE_PREFIX = "remove:"
FieldFormat = Literal["email"]

#: Columns every row carries, set by the collector (never by the client).
SERVER_COLUMNS: tuple[str, ...] = ("event_id", "received_at", "ip", "ua", "device")
#: The last column: unknown keys, kept as a JSON object.
EXTRA_COLUMN = "extra"
RESERVED_NAMES = frozenset((*SERVER_COLUMNS, EXTRA_COLUMN))

# Largest request BigQuery's insertAll and Storage Write API accept.
BIGQUERY_MAX_REQUEST_BYTES = 10_000_000
# BigQuery's quota on load jobs into one table (failed ones count too).
BIGQUERY_LOADS_PER_TABLE_PER_DAY = 1_500
# BigQuery's TIMESTAMP range in µs since the epoch, [0001-01-01, 10000-01-01) UTC: the
# narrowest of the sinks' (DuckDB's is wider), so the collector's range for every stream.
BIGQUERY_TIMESTAMP_MIN_US = -62_135_596_800_000_000
BIGQUERY_TIMESTAMP_END_US = 253_402_300_800_000_000
SECONDS_PER_DAY = 86_400
#: Shortest ``collector.ip_hash_key``: a short key could be guessed, then every hash reversed.
IP_HASH_KEY_MIN_CHARS = 32


class _Base(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class FieldConfig(_Base, frozen=True):
    """One field of a stream."""

    type: FieldType = "string"
    required: bool = False
    #: Characters for strings, encoded bytes for json.
    max_length: PositiveInt | None = None
    pattern: str | None = None
    enum: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    transforms: tuple[Transform, ...] = ()
    format: FieldFormat | None = None
    description: str = ""
    #: The key must be sent, but may be empty (``required`` refuses empty values too).
    present: bool = False
    #: Other names a sender may use for this field (``userid`` for ``user_id``); the value
    #: is stored in this field's column. The field's own name wins when both are sent.
    aliases: tuple[str, ...] = ()
    #: Values that mean "unknown": stored as NULL (``"999"`` for an age). Compared as text.
    null_values: tuple[str, ...] = ()
    #: Exact values replaced before the checks (``{ F = "female" }``).
    map: dict[str, str] = {}
    #: Stored when the key is absent (text, parsed like a query value).
    default: str | None = None
    #: Accept the value's text form in JSON bodies too (``"age": "42"`` for an int field).
    coerce: bool = False

    def __post_init__(self) -> None:
        if self.pattern is not None:
            if self.type != "string":
                raise ValueError("`pattern` applies to string fields only")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"`pattern` is not a valid regular expression: {exc}") from None
        if self.enum is not None and self.type != "string":
            raise ValueError("`enum` applies to string fields only")
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError("`min`/`max` apply to int and float fields only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("`min` is greater than `max`")
        self._check_transforms()
        if self.format is not None and self.type != "string":
            raise ValueError("`format` applies to string fields only")
        if self.map and self.type != "string":
            raise ValueError("`map` applies to string fields only")
        if self.coerce and self.type not in ("int", "float", "bool"):
            raise ValueError("`coerce` applies to int, float and bool fields only")
        if self.required and self.default is not None:
            raise ValueError("`default` and `required` exclude each other")

    def _check_transforms(self) -> None:
        for t in self.transforms:
            if self.type == "json":
                if t not in JSON_TRANSFORMS:
                    raise ValueError(f"`transforms`: {t!r} does not apply to json fields (known: sort_keys)")
            elif self.type != "string":
                raise ValueError("`transforms` apply to string and json fields only")
            elif t not in STRING_TRANSFORMS and not (t.startswith(REMOVE_PREFIX) and len(t) > len(REMOVE_PREFIX)):
                raise ValueError(
                    f"`transforms`: unknown transform {t!r} (known: lowercase, uppercase, strip, "
                    "truncate, remove:<characters>)"
                )
        if "truncate" in self.transforms and self.max_length is None:
            raise ValueError("`transforms`: `truncate` needs `max_length`")


class BatchConfig(_Base, frozen=True):
    """Flush bounds of one stream; the flusher adapts the batch size inside them."""

    max_rows: PositiveInt = 10_000
    max_bytes: Annotated[int, Meta(gt=0, le=BIGQUERY_MAX_REQUEST_BYTES)] = 9_000_000
    #: The latency promise: a lone event reaches the warehouse within this.
    max_wait_s: PositiveFloat = 5.0
    min_rows: PositiveInt = 100

    def __post_init__(self) -> None:
        if self.min_rows > self.max_rows:
            raise ValueError("`min_rows` is greater than `max_rows`")


class ProfileConfig(_Base, frozen=True):
    """``[streams.NAME.profiles.PROFILE]``: other rules for the same columns, used by
    the legacy routes that name it (the 2016 oceanus's validation, for instance)."""

    #: Fields whose rules differ: each replaces the stream's definition of that field
    #: for this profile (same name, same type); the fields not listed keep theirs.
    fields: dict[str, FieldConfig] = {}
    #: Keys that are no field: "extra" (kept in the extra column) or "drop" (ignored,
    #: as the 2016 oceanus did).
    unknown: Literal["extra", "drop"] = "extra"
    #: With ``unknown = "drop"``: keys still kept in extra (the 2016 form's uid, oid, url, enc).
    keep: tuple[str, ...] = ()


#: Legacy route kinds: ``pixel`` (GET, 1x1 GIF), ``form`` (POST form or GET; empty
#: text/plain 200), ``gaze`` (GET; a delayed redirect chain open -> see -> read ->
#: done), ``pierce`` (GET; server-side hit, answers ``ok``).
AliasKind = Literal["pixel", "form", "gaze", "pierce"]
AliasPath = Annotated[str, Meta(pattern=r"^/[A-Za-z0-9_./-]{0,255}$")]


class RouteAlias(_Base, frozen=True):
    """One legacy URL of a stream (``[[streams.NAME.aliases]]``)."""

    path: AliasPath
    kind: AliasKind = "pixel"
    #: A profile of the stream (empty: the stream's own rules).
    profile: str = ""


class StreamConfig(_Base, frozen=True):
    """One kind of data: a Redis list, a warehouse table, an endpoint."""

    name: Name = "unnamed"
    description: str = ""
    fields: dict[str, FieldConfig] = {}
    #: BigQuery clustering columns (at most 4), also the DuckDB sort hint.
    clustering: tuple[str, ...] = ()
    #: How the BigQuery sink writes this stream.
    mode: Literal["insert_all", "storage_write", "load"] = "insert_all"
    batch: BatchConfig = BatchConfig()
    #: IANA zone of timestamps sent without an offset ("Asia/Tokyo"); stored in UTC.
    timezone: str = "UTC"
    #: Legacy URLs answered for this stream (docs/MIGRATION.md).
    aliases: tuple[RouteAlias, ...] = ()
    profiles: dict[str, ProfileConfig] = {}
    #: A view of this name beside the table, in the 2016 oceanus's layout (every column a
    #: string, ``dt``, ``rad``, ``dev``: docs/MIGRATION.md), made by ``oceanus tables sync``.
    legacy_view: Name | None = None
    #: Redis queues the stream's frames are spread over (each its own hash tag, so its own
    #: cluster slot): collectors take turns round by round, flushers and notifiers read every one.
    shards: Annotated[int, Meta(ge=1, le=1024)] = 1

    @property
    def columns(self) -> tuple[str, ...]:
        """Warehouse column order: server columns, the stream's fields, ``extra``."""
        return (*SERVER_COLUMNS, *self.fields, EXTRA_COLUMN)


class StreamAccess(_Base, frozen=True):
    """Who may send to one stream, and how much (docs/SECURITY.md)."""

    #: Events per second the whole stream accepts (split over the workers); 0 = no limit.
    rate_per_s: Annotated[float, Meta(ge=0)] = 0.0
    burst: PositiveInt = 10_000
    #: If set, a request whose ``Origin`` is not listed is a 403 (no ``Origin``: allowed,
    #: unless write keys are set too -- server-side senders have no Origin).
    origins: tuple[str, ...] = ()
    #: Write keys, one per line, from this environment variable and/or file (never
    #: inline). If any are set, a request without a listed key is a 401.
    keys_env: str = ""
    keys_file: str = ""


class SegmentConfig(_Base, frozen=True):
    """The Segment HTTP Tracking API at ``/v1/*`` (collector/protocols/segment.py)."""

    #: Stream of a write key listed without one; "" (the default) leaves the routes off (404).
    stream: str = ""
    #: Write keys, one per line: ``KEY`` (to ``stream``) or ``KEY STREAM``, from this
    #: environment variable and/or file (never inline). None set: every call is a 401.
    keys_env: str = ""
    keys_file: str = ""
    #: A message's own time places it (``received_at``, the event id's time) when within
    #: this of its arrival, so a retry lands on the same row (collector/protocols/ids.py).
    own_time_window_s: PositiveFloat = 3600.0


class SnowplowConfig(_Base, frozen=True):
    """The Snowplow tracker protocol at ``/i`` and ``/com.snowplowanalytics.snowplow/*``."""

    #: The stream the events go to; "" (the default) leaves the routes off (404).
    stream: str = ""
    #: The network user id cookie, as the Snowplow collector sets it; off: no cookie, no nuid.
    cookie: bool = True
    cookie_name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "sp"
    #: "" : the host the tracker called (a host-only cookie).
    cookie_domain: Annotated[str, Meta(pattern=r"^[A-Za-z0-9.-]{0,253}$")] = ""
    cookie_max_age_s: PositiveInt = 31_536_000
    #: ``Secure; SameSite=None`` (a third-party collector domain needs both); off for plain-HTTP tests.
    cookie_secure: bool = True
    own_time_window_s: PositiveFloat = 3600.0


class CollectorConfig(_Base, frozen=True):
    host: str = "0.0.0.0"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    workers: PositiveInt = 1
    #: Micro-batch bounds: one pipelined RPUSH per stream per batch.
    batch_max_events: PositiveInt = 1024
    #: 0: a batch is whatever arrived while the previous round was in flight, which
    #: batches well under load; a linger only adds latency when clients wait for
    #: their answer (bench/RESULTS.md).
    batch_linger_ms: Annotated[float, Meta(ge=0)] = 0.0
    max_body_bytes: PositiveInt = 1_048_576
    max_decompressed_bytes: PositiveInt = 4_194_304
    max_url_bytes: PositiveInt = 8192
    max_batch_events: PositiveInt = 500
    max_ua_length: PositiveInt = 512
    max_extra_bytes: PositiveInt = 2048
    max_extra_keys: PositiveInt = 32
    #: Levels of objects/arrays in ``extra`` (the object itself is 1): a 400 past it,
    #: so no warehouse JSON column (BigQuery: 500) or decoder recursion limit is reached.
    max_extra_depth: PositiveInt = 16
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    #: X-Forwarded-For entries a trusted proxy appends after the client's address:
    #: Google Cloud's external Application Load Balancer adds its own forwarding-rule
    #: address (``client, lb``), so 1 behind it; 0 elsewhere.
    forwarded_for_skip: Annotated[int, Meta(ge=0, le=8)] = 0
    #: What the ``ip`` column stores: "full" (the address), "truncate" (its /24 for
    #: IPv4, /48 for IPv6), "hash" (a keyed hash that changes every UTC day) or
    #: "none" (null). docs/SECURITY.md, "Privacy".
    ip_mode: Literal["full", "truncate", "hash", "none"] = "full"
    #: The "hash" mode's secret, >= 32 characters: set it with the environment
    #: variable OCEANUS_COLLECTOR_IP_HASH_KEY (from a Secret), not in this file.
    ip_hash_key: str = ""
    cors_origins: tuple[str, ...] = ("*",)
    spool_dir: str = ".oceanus/spool"
    spool_max_bytes: PositiveInt = 1_073_741_824
    drain_timeout_s: PositiveFloat = 10.0
    #: Seconds a request body may take to arrive (slow-body defence).
    body_timeout_s: PositiveFloat = 10.0
    #: Edge limits (docs/SECURITY.md). "1": HTTP/1.1 only; "auto" and "2" add
    #: cleartext HTTP/2, whose header blocks granian buffers per stream.
    http: Literal["1", "auto", "2"] = "1"
    #: granian's HTTP/1 read buffer: a request line and headers larger than this are refused.
    max_header_bytes: Annotated[int, Meta(ge=8192, le=1_048_576)] = 16_384
    #: Headers in one request; more is a 431 naming the limit.
    max_headers: PositiveInt = 64
    #: A connection that has not sent a whole request head within this is closed
    #: (idle keep-alive connections included).
    header_timeout_s: Annotated[float, Meta(gt=0, le=60)] = 5.0
    #: Connections one worker serves at once (granian's backpressure); more wait in the backlog.
    max_connections: PositiveInt = 1024
    #: Request body bytes (raw plus inflated) one worker holds at once; past it, 503 naming the limit.
    max_pending_body_bytes: PositiveInt = 33_554_432
    #: JSON values (counted as commas and brackets, an upper bound) in one body, checked before decoding.
    max_json_values: PositiveInt = 100_000
    #: Events per second one client IP may send (token bucket, split over the workers); 0 = no limit.
    ip_rate_per_s: Annotated[float, Meta(ge=0)] = 1000.0
    #: Events one client IP may send at once above its rate.
    ip_burst: PositiveInt = 10_000
    #: POST bodies one client IP may have in flight on one worker; past it, 429 at once
    #: (a slow-body flood from one address frees its connections instead of holding them).
    #: 0 = no limit.
    max_bodies_per_ip: NonNegInt = 64
    #: Per-stream access rules: ``[collector.access.<stream>]``.
    access: dict[str, StreamAccess] = {}
    demo: bool = False
    status_page: bool = False
    status_token: str = ""
    #: Client networks whose ``?debug=1`` on a legacy route gets a plain-text dump of the
    #: parsed event, the verdict and the Redis result instead of the usual answer. Empty: nobody.
    debug_networks: tuple[str, ...] = ()
    #: Legacy routes that are no stream's: path -> what it answers (docs/MIGRATION.md).
    legacy_routes: dict[AliasPath, Literal["health", "backlog", "robots", "favicon", "tag"]] = {}
    #: The waits of the gaze redirect chain: open -> see, see -> read, read -> done.
    gaze_waits_s: tuple[Annotated[float, Meta(ge=0, le=30)], ...] = (2.0, 4.0, 4.0)
    #: Gaze requests one worker holds in their wait at once; past it, the redirect is immediate.
    max_gazes: PositiveInt = 1024
    #: Other trackers' protocols (collector/protocols/).
    segment: SegmentConfig = SegmentConfig()
    snowplow: SnowplowConfig = SnowplowConfig()

    def __post_init__(self) -> None:
        if self.ip_mode == "hash" and len(self.ip_hash_key) < IP_HASH_KEY_MIN_CHARS:
            raise ValueError(
                f'`ip_hash_key` must hold at least {IP_HASH_KEY_MIN_CHARS} characters with ip_mode = "hash" '
                "(set OCEANUS_COLLECTOR_IP_HASH_KEY, e.g. to the output of `openssl rand -hex 32`)"
            )


#: URL schemes that name a Redis Cluster by its seed nodes (docs/CLUSTER.md).
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def redacted_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: what logs and command output may show."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hosts}"


class RedisConfig(_Base, frozen=True):
    #: One instance (``redis://``, ``rediss://``, ``unix://``) or a cluster
    #: (``redis+cluster://h1:p1,h2:p2``, TLS ``rediss+cluster://``).
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = "oceanus"
    pool_size: PositiveInt = 16
    timeout_s: PositiveFloat = 2.0
    #: Replication is asynchronous: a master that dies after answering can take the round with
    #: it. With K > 0 the collector sends ``WAIT K wait_timeout_ms`` after each round and counts
    #: the round as written only when K replicas hold it; otherwise its frames go to the spool.
    min_replicas_ack: Annotated[int, Meta(ge=0, le=16)] = 0
    wait_timeout_ms: Annotated[int, Meta(ge=1, le=60_000)] = 500

    @property
    def cluster(self) -> bool:
        """True when ``url`` names a Redis Cluster."""
        return self.url.startswith(CLUSTER_SCHEMES)


class FlusherConfig(_Base, frozen=True):
    #: Admin server: /metrics, /healthz, /readyz (public), POST /query (off unless enabled).
    admin_host: str = "127.0.0.1"
    admin_port: Annotated[int, Meta(ge=0, le=65535)] = 9101
    #: Serve read-only SQL on ``POST /query`` (DuckDB sink only), behind a bearer token
    #: taken from ``OCEANUS_QUERY_TOKEN`` or the file ``query_token_file`` — never from
    #: this file. ``oceanus dev`` turns it on with a token of its own.
    query_enabled: bool = False
    query_token_file: str = ""
    #: A query still running after this long is interrupted (a 400 naming this key).
    query_timeout_s: Annotated[float, Meta(gt=0, le=300)] = 10.0
    heartbeat_ttl_s: PositiveFloat = 30.0
    drain_timeout_s: PositiveFloat = 25.0
    #: Dead letters (``P:dead:{T}``, one list per shard) keep whole rows, personal data
    #: included: at most this many per shard (the newest), and the list expires this long after
    #: its last dead letter (7 days). ``oceanus dead`` lists, replays or purges them.
    dead_letter_max: PositiveInt = 100_000
    dead_letter_ttl_s: Annotated[float, Meta(ge=1)] = 604_800.0
    retry_base_s: PositiveFloat = 0.5
    retry_max_s: PositiveFloat = 60.0
    #: Failed writes of a batch (of a half of one, ...) with a retryable error before it
    #: is split in halves to isolate the rows at fault (docs/ARCHITECTURE.md, delivery).
    poison_after_failures: PositiveInt = 5


class DuckDBConfig(_Base, frozen=True):
    path: str = ".oceanus/warehouse.duckdb"
    #: DuckDB worker threads (``SET threads``); 0 = DuckDB's default (every core).
    threads: Annotated[int, Meta(ge=0, le=256)] = 1
    #: DuckDB's buffer pool cap (``SET memory_limit``), e.g. "256MB"; empty = DuckDB's
    #: default of 80 % of RAM. Bounded so the flusher's RSS stays flat as the tables grow.
    memory_limit: Annotated[str, Meta(pattern=r"^$|^[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")] = "512MB"
    #: Close and reopen the file after this many rows written (0 = never). DuckDB keeps
    #: state for every row group a dedupe scan touched until the database is closed
    #: (~10 B per stored row, measured) and its buffer pool the newest blocks (~28 B per
    #: row): reopening bounds both. A reopen (a checkpoint, then open) takes ~20 ms.
    reopen_rows: Annotated[int, Meta(ge=0)] = 500_000


class BigQueryConfig(_Base, frozen=True):
    project: str = ""
    dataset: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_]{1,1024}$")] = "oceanus"
    location: str = "US"
    #: Empty: the real service, or ``BIGQUERY_EMULATOR_HOST`` when that is set.
    api_endpoint: str = ""
    grpc_endpoint: str = ""
    max_rows_per_request: Annotated[int, Meta(gt=0, le=50_000)] = 500
    max_request_bytes: Annotated[int, Meta(gt=0, le=BIGQUERY_MAX_REQUEST_BYTES)] = 9_000_000
    timeout_s: PositiveFloat = 30.0
    #: Bound on the client library's own retries of table sync and of imports (0:
    #: none). Row writes make one attempt each: the flusher's worker retries them
    #: for ever with backoff and counts each retry.
    retry_deadline_s: Annotated[float, Meta(ge=0)] = 10.0
    #: Load-job mode: one job per table at most this often (the daily quota is 1,500).
    load_interval_s: PositiveFloat = 300.0
    #: Load-job file format: Parquet is smaller and loads faster; NDJSON is readable.
    load_format: Literal["parquet", "ndjson"] = "parquet"
    #: Storage Write API stream: "committed" (exactly-once, offsets kept beside the
    #: claimed batch) or "default" (the shared ``_default`` stream, at-least-once).
    write_stream: Literal["committed", "default"] = "committed"
    #: Storage Write API row encoding: protobuf (built from the stream config) or Arrow.
    write_format: Literal["proto", "arrow"] = "proto"


#: A SQL identifier the SQL sinks quote without escaping (a schema).
SqlName = Annotated[str, Meta(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]


class PostgresConfig(_Base, frozen=True):
    """``[sink.postgres]``: tables in ``schema`` of the database ``$url_env`` names (docs/ARCHITECTURE.md)."""

    #: Environment variable holding ``postgresql://user:password@host:port/db``: the
    #: URL carries a password, so never this file.
    url_env: Annotated[str, Meta(pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")] = "OCEANUS_PG_URL"
    #: Optional URL of a read-only role for ``oceanus query`` and ``POST /query`` ("" = url_env's).
    query_url_env: Annotated[str, Meta(pattern=r"^$|^[A-Z_][A-Z0-9_]{0,127}$")] = ""
    schema: SqlName = "public"
    connect_timeout_s: PositiveFloat = 10.0
    #: A write statement running longer than this is cancelled (a transient ``timeout``).
    statement_timeout_s: PositiveFloat = 60.0
    #: Day partitions created ahead of today (UTC) at start-up; a batch's own days are always created.
    partition_days_ahead: Annotated[int, Meta(ge=0, le=366)] = 2


class MySQLConfig(_Base, frozen=True):
    """``[sink.mysql]``: tables in the database ``$url_env`` names (MySQL 8 or MariaDB 10.5+)."""

    #: Environment variable holding ``mysql://user:password@host:port/db`` (never this file).
    url_env: Annotated[str, Meta(pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")] = "OCEANUS_MYSQL_URL"
    #: Optional URL of a read-only user for ``oceanus query`` and ``POST /query`` ("" = url_env's).
    query_url_env: Annotated[str, Meta(pattern=r"^$|^[A-Z_][A-Z0-9_]{0,127}$")] = ""
    connect_timeout_s: PositiveFloat = 10.0
    #: Socket read/write timeout of a write (seconds): a silent server is a transient ``timeout``.
    timeout_s: PositiveFloat = 60.0
    #: One multi-row INSERT carries at most this many bytes of SQL (below max_allowed_packet).
    max_statement_bytes: Annotated[int, Meta(ge=4096, le=64 * 1024 * 1024)] = 4 * 1024 * 1024


#: A source table: ``table`` or ``schema.table`` (PostgreSQL) / ``database.table`` (MySQL).
SourceTable = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$")]
#: A source column: a plain identifier, so it can be quoted without escaping.
SourceColumn = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")]
#: Columns the importer adds to every imported table.
IMPORT_COLUMNS: tuple[str, ...] = ("_imported_at", "_deleted")


class ImportConfig(_Base, frozen=True, kw_only=True):
    """``[imports.NAME]``: one shop table copied next to the events (docs/ARCHITECTURE.md, importer).

    Only ``columns`` are ever read: the SELECT names them and nothing else, so a
    personal column left out of the list never leaves the source database.
    """

    name: Name = "unnamed"
    #: Environment variable holding the source URL (``postgresql://...`` or
    #: ``mysql://...``); the URL carries a password, so never this file.
    source_url_env: Annotated[str, Meta(pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")]
    table: SourceTable
    columns: Annotated[tuple[SourceColumn, ...], Meta(min_length=1)]
    primary_key: SourceColumn
    #: "incremental": rows whose (cursor_column, primary_key) is past the stored
    #: watermark; "full": every row each run (small tables).
    mode: Literal["incremental", "full"] = "incremental"
    #: A column that only grows: ``updated_at``, or the primary key of an append-only table.
    cursor_column: SourceColumn | None = None
    every_s: PositiveFloat = 3600.0
    #: "soft": a row whose ``soft_delete_column`` is set (non-NULL, not false/0) is
    #: deleted; "key_diff": keys gone from the source get a tombstone row.
    deletes: Literal["none", "soft", "key_diff"] = "none"
    soft_delete_column: SourceColumn | None = None
    #: Seconds between two key diffs (0: every run). A diff reads every key of the source.
    key_diff_every_s: Annotated[float, Meta(ge=0)] = 0.0
    #: Rows per fetch from the server-side cursor and per warehouse commit.
    batch_rows: Annotated[int, Meta(gt=0, le=1_000_000)] = 10_000
    #: BLOB/BYTEA columns are refused unless this is set (they are rarely analysis data).
    allow_binary: bool = False

    def __post_init__(self) -> None:
        listed = set(self.columns)
        if len(listed) != len(self.columns):
            raise ValueError("`columns` lists a column twice")
        for col in self.columns:
            if col.lower() in IMPORT_COLUMNS:
                raise ValueError(f"`columns`: `{col}` is a column oceanus adds itself")
        if self.primary_key not in listed:
            raise ValueError(f"`primary_key` `{self.primary_key}` is not in `columns`")
        if self.mode == "incremental":
            if self.cursor_column is None:
                raise ValueError('`cursor_column` is required when `mode = "incremental"`')
            if self.cursor_column not in listed:
                raise ValueError(f"`cursor_column` `{self.cursor_column}` is not in `columns`")
        elif self.deletes == "key_diff":
            raise ValueError('`deletes = "key_diff"` applies to `mode = "incremental"`: a full reload drops gone rows')
        if self.deletes == "soft":
            if self.soft_delete_column is None:
                raise ValueError('`soft_delete_column` is required when `deletes = "soft"`')
            if self.soft_delete_column not in listed:
                raise ValueError(f"`soft_delete_column` `{self.soft_delete_column}` is not in `columns`")
        elif self.soft_delete_column is not None:
            raise ValueError('`soft_delete_column` applies to `deletes = "soft"` only')


#: A rule or channel name: like a stream's (it appears in metric labels and Redis keys).
RuleName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
#: An environment variable holding a secret (never the secret itself).
EnvName = Annotated[str, Meta(pattern=r"^$|^[A-Z_][A-Z0-9_]{0,127}$")]
#: Operators of a rule condition; exactly one per condition (docs/NOTIFY.md).
CONDITION_OPS: tuple[str, ...] = ("eq", "ne", "in", "contains", "prefix", "regex", "gt", "ge", "lt", "le", "exists")
#: Names a message template may insert besides the stream's columns.
TEMPLATE_NAMES: tuple[str, ...] = ("rule", "stream", "count", "group", "window_s")


class Condition(_Base, frozen=True):
    """One test on one field, or a nested ``all``/``any`` list of conditions."""

    field: str = ""
    eq: str | int | float | bool | None = None
    ne: str | int | float | bool | None = None
    in_: tuple[str | int | float, ...] | None = msgspec.field(default=None, name="in")
    contains: str | None = None
    prefix: str | None = None
    regex: str | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    exists: bool | None = None
    all: tuple[Condition, ...] | None = None
    any: tuple[Condition, ...] | None = None

    def __post_init__(self) -> None:
        ops = [op for op in (*CONDITION_OPS, "all", "any") if getattr(self, "in_" if op == "in" else op) is not None]
        if len(ops) != 1:
            raise ValueError(
                f"a condition has exactly one operator of {', '.join(CONDITION_OPS)}, all, any "
                f"(got {', '.join(ops) or 'none'})"
            )
        if ops[0] in ("all", "any"):
            if self.field:
                raise ValueError(f"`{ops[0]}` takes a list of conditions, not `field`")
        elif not self.field:
            raise ValueError(f"`{ops[0]}` needs `field`")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"`regex` {self.regex!r} does not compile: {exc}") from None

    @property
    def op(self) -> str:
        return next(
            op for op in (*CONDITION_OPS, "all", "any") if getattr(self, "in_" if op == "in" else op) is not None
        )


class ThresholdConfig(_Base, frozen=True, kw_only=True):
    """Fire once when ``count`` matching events arrive within ``window_s`` (per ``group_by`` value)."""

    count: Annotated[int, Meta(ge=2)]
    window_s: PositiveFloat
    group_by: str = ""


class RateLimitConfig(_Base, frozen=True):
    """At most ``max`` messages per rule and channel every ``per_s``; the rest are summed up."""

    max: PositiveInt = 20
    per_s: PositiveFloat = 300.0


class RuleConfig(_Base, frozen=True, kw_only=True):
    """``[rules.NAME]``: which events of a stream go to which channels, and the message."""

    name: RuleName = "unnamed"
    stream: str
    channels: Annotated[tuple[str, ...], Meta(min_length=1)]
    #: ``all`` conditions must hold, or ``any`` one; no conditions: every event of the stream.
    match: Literal["all", "any"] = "all"
    conditions: tuple[Condition, ...] = ()
    #: The message: text with ``{field}`` insertions only (a column, or rule, stream, count, group, window_s).
    template: str = "{rule}: {stream} event {event_id}"
    #: E-mail subject (same insertions), one line.
    subject: str = "oceanus: {rule}"
    #: Columns of a Sheets row and of a webhook's ``event`` object (default: every column).
    fields: tuple[str, ...] = ()
    threshold: ThresholdConfig | None = None
    rate_limit: RateLimitConfig = RateLimitConfig()
    enabled: bool = True


class _ChannelBase(_Base, frozen=True, kw_only=True, tag_field="kind"):
    #: A delivery that has failed for this long goes to the dead-letter list (seconds).
    give_up_after_s: PositiveFloat = 3600.0
    retry_base_s: PositiveFloat = 1.0
    retry_max_s: PositiveFloat = 60.0
    timeout_s: PositiveFloat = 10.0

    def secrets(self) -> dict[str, tuple[str, str]]:
        """Secret name -> (environment variable, file) it is read from."""
        return {}


class LogChannel(_ChannelBase, frozen=True, kw_only=True, tag="log"):
    """One line per notification on stdout, or appended to ``path``."""

    path: str = ""


class SlackChannel(_ChannelBase, frozen=True, kw_only=True, tag="slack"):
    """A Slack incoming webhook; its URL is the secret."""

    url_env: EnvName = ""
    url_file: str = ""

    def secrets(self) -> dict[str, tuple[str, str]]:
        return {"url": (self.url_env, self.url_file)}


class WebhookChannel(_ChannelBase, frozen=True, kw_only=True, tag="webhook"):
    """A signed JSON POST (``X-Oceanus-Signature``, docs/NOTIFY.md)."""

    url: Annotated[str, Meta(pattern=r"^https?://")]
    secret_env: EnvName = ""
    secret_file: str = ""

    def secrets(self) -> dict[str, tuple[str, str]]:
        return {"secret": (self.secret_env, self.secret_file)}


class SheetsChannel(_ChannelBase, frozen=True, kw_only=True, tag="sheets"):
    """Google Sheets ``spreadsheets.values.append``; one row per notification."""

    spreadsheet_id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,200}$")]
    #: The tab; ``{yyyy}`` and ``{mm}`` insert the event's UTC year and month (monthly tabs).
    tab: Annotated[str, Meta(min_length=1, max_length=100)] = "oceanus {yyyy}-{mm}"
    endpoint: Annotated[str, Meta(pattern=r"^https?://")] = "https://sheets.googleapis.com"
    #: Empty: Application Default Credentials. Else a variable holding an OAuth access token.
    token_env: EnvName = ""


class EmailChannel(_ChannelBase, frozen=True, kw_only=True, tag="email"):
    """SMTP with STARTTLS (``starttls = false`` only for a relay on localhost)."""

    host: Annotated[str, Meta(min_length=1)]
    port: Annotated[int, Meta(ge=1, le=65535)] = 587
    starttls: bool = True
    #: PEM file of the CA(s) to trust instead of the system's.
    ca_file: str = ""
    username: str = ""
    password_env: EnvName = ""
    password_file: str = ""
    sender: Annotated[str, Meta(pattern=r"^[^\s<>@]+@[^\s<>@]+$")]
    to: Annotated[tuple[Annotated[str, Meta(pattern=r"^[^\s<>@,]+@[^\s<>@,]+$")], ...], Meta(min_length=1)]

    def secrets(self) -> dict[str, tuple[str, str]]:
        return {"password": (self.password_env, self.password_file)} if self.username else {}


ChannelConfig = LogChannel | SlackChannel | WebhookChannel | SheetsChannel | EmailChannel


class NotifyConfig(_Base, frozen=True):
    """``oceanus notify``: the rules consumer and the channel workers."""

    admin_host: str = "127.0.0.1"
    admin_port: Annotated[int, Meta(ge=0, le=65535)] = 9102
    #: Frames claimed from a stream's notify queue at once.
    claim_frames: PositiveInt = 64
    #: How often an idle notifier looks at its queues (seconds).
    poll_s: Annotated[float, Meta(gt=0, le=5)] = 0.05
    heartbeat_ttl_s: PositiveFloat = 30.0
    #: How long a delivery key remembers a sent notification (seconds; redelivery within it is not re-sent).
    delivered_ttl_s: PositiveFloat = 604_800.0
    #: Characters of one field value inserted into a message (longer values are cut, marked with …).
    max_value_chars: Annotated[int, Meta(ge=16, le=100_000)] = 500
    dead_letter_max: PositiveInt = 10_000
    drain_timeout_s: PositiveFloat = 10.0


def _decode_rule(
    name: str, raw: Any, streams: Mapping[str, StreamConfig], channels: Mapping[str, ChannelConfig]
) -> RuleConfig:
    path = f"rules.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a table")
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise ConfigError(f"{path}: rule names are lowercase letters, digits and _ (<= 63)")
    rule = _convert({**raw, "name": name}, RuleConfig, path)
    stream = streams.get(rule.stream)
    if stream is None:
        raise ConfigError(f"{path}.stream: no stream named {rule.stream!r}")
    columns = set(stream.columns)
    for i, ch in enumerate(rule.channels):
        if ch not in channels:
            raise ConfigError(f"{path}.channels[{i}]: no channel named {ch!r} ([channels.{ch}])")

    def check(conds: tuple[Condition, ...], where: str) -> None:
        for i, c in enumerate(conds):
            if c.all is not None or c.any is not None:
                check(c.all or c.any or (), f"{where}[{i}].{c.op}")
            elif c.field not in columns:
                raise ConfigError(f"{where}[{i}].field: `{c.field}` is not a column of stream {stream.name!r}")

    check(rule.conditions, f"{path}.conditions")
    _check_rule_texts(rule, path, stream)
    return rule


def _check_rule_texts(rule: RuleConfig, path: str, stream: StreamConfig) -> None:
    """The template, subject, fields and threshold group of a rule name columns of its stream."""
    columns = set(stream.columns)
    for key in ("template", "subject"):
        for ref in _template_names(getattr(rule, key), f"{path}.{key}"):
            if ref not in columns and ref not in TEMPLATE_NAMES:
                raise ConfigError(
                    f"{path}.{key}: {{{ref}}} is not a column of stream {stream.name!r} "
                    f"nor one of {', '.join(TEMPLATE_NAMES)}"
                )
    if "\n" in rule.subject or "\r" in rule.subject:
        raise ConfigError(f"{path}.subject: one line")
    for i, f in enumerate(rule.fields):
        if f not in columns:
            raise ConfigError(f"{path}.fields[{i}]: `{f}` is not a column of stream {stream.name!r}")
    if rule.threshold is not None and rule.threshold.group_by and rule.threshold.group_by not in columns:
        raise ConfigError(
            f"{path}.threshold.group_by: `{rule.threshold.group_by}` is not a column of stream {stream.name!r}"
        )


_TEMPLATE_PART = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def _template_names(template: str, where: str) -> list[str]:
    """The names a template inserts; anything but ``{name}``, ``{{`` and ``}}`` is an error (no code)."""
    names: list[str] = []
    for m in _TEMPLATE_PART.finditer(template):
        token = m.group(0)
        if token in ("{{", "}}"):
            continue
        name = m.group(1)
        if name is None or not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ConfigError(
                f"{where}: {token!r} at offset {m.start()}: a template inserts `{{field}}` only "
                "(write {{ and }} for braces)"
            )
        names.append(name)
    return names


def _decode_channel(name: str, raw: Any) -> ChannelConfig:
    path = f"channels.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a table")
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise ConfigError(f"{path}: channel names are lowercase letters, digits and _ (<= 63)")
    if "kind" not in raw:
        raise ConfigError(f"{path}.kind: required (log, slack, webhook, sheets or email)")
    for key in ("url", "secret", "password", "token"):
        if key in raw and not (key == "url" and raw.get("kind") == "webhook"):
            raise ConfigError(f"{path}.{key}: secrets are never written in oceanus.toml; use {key}_env or {key}_file")
    try:
        channel: ChannelConfig = msgspec.convert(raw, ChannelConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(_with_path(str(exc), path)) from None
    for secret, (env, file) in channel.secrets().items():
        if not env and not file:
            raise ConfigError(f"{path}: the {secret} comes from {secret}_env or {secret}_file; set one")
    return channel


def missing_secrets(cfg: Config, env: Mapping[str, str] | None = None) -> list[str]:
    """``channels.NAME: VAR`` for every secret a channel cannot read, and the SQL sink's database URL
    when its variable is unset (``oceanus check-config``)."""
    env = os.environ if env is None else env
    out: list[str] = []
    if cfg.sink.kind in ("postgres", "mysql"):
        sql_sink = cfg.sink.postgres if cfg.sink.kind == "postgres" else cfg.sink.mysql
        for key, var in (("url_env", sql_sink.url_env), ("query_url_env", sql_sink.query_url_env)):
            if var and not env.get(var):
                out.append(f"sink.{cfg.sink.kind}.{key}: the database URL is missing (${var})")
    for name, channel in cfg.channels.items():
        for secret, (var, file) in channel.secrets().items():
            if var and env.get(var):
                continue
            if file and Path(file).is_file():
                continue
            where = " or ".join(x for x in (f"${var}" if var else "", f"file {file}" if file else "") if x)
            out.append(f"channels.{name}: the {secret} is missing ({where})")
        if isinstance(channel, SheetsChannel) and channel.token_env and not env.get(channel.token_env):
            out.append(f"channels.{name}: the token is missing (${channel.token_env})")
    return out


class SinkConfig(_Base, frozen=True):
    kind: Literal["duckdb", "bigquery", "postgres", "mysql"] = "duckdb"
    duckdb: DuckDBConfig = DuckDBConfig()
    bigquery: BigQueryConfig = BigQueryConfig()
    postgres: PostgresConfig = PostgresConfig()
    mysql: MySQLConfig = MySQLConfig()


class Config(_Base, frozen=True):
    collector: CollectorConfig = CollectorConfig()
    redis: RedisConfig = RedisConfig()
    flusher: FlusherConfig = FlusherConfig()
    sink: SinkConfig = SinkConfig()
    streams: dict[str, StreamConfig] = {}
    #: Shop tables copied into the warehouse: ``[imports.NAME]`` (``oceanus import``).
    imports: dict[str, ImportConfig] = {}
    #: ``oceanus notify``: ``[notify]``, ``[rules.NAME]``, ``[channels.NAME]``.
    notify: NotifyConfig = NotifyConfig()
    rules: dict[str, RuleConfig] = {}
    channels: dict[str, ChannelConfig] = {}
    #: Where this config came from (not a TOML key).
    source: str = ""


REPO_CONFIG = Path(__file__).resolve().parent.parent / "oceanus.toml"

_T = TypeVar("_T")


def _convert(value: Any, type_: type[_T], path: str) -> _T:
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        raise ConfigError(_with_path(str(exc), path)) from None


def _with_path(message: str, prefix: str) -> str:
    """Rewrite msgspec's ``- at `$.x[0]``` into ``at `prefix.x[0]```."""
    match = re.search(r" - at `\$(.*)`$", message)
    if match:
        where = (prefix + match.group(1)).lstrip(".")
        return f"{where}: {message[: match.start()]}"
    if prefix:
        return f"{prefix.lstrip('.')}: {message}"
    return message


def _decode_stream(name: str, raw: Any) -> StreamConfig:
    path = f"streams.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a table")
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise ConfigError(f"{path}: stream names are lowercase letters, digits and _ (<= 63)")
    raw_fields = raw.get("fields", {})
    if not isinstance(raw_fields, dict):
        raise ConfigError(f"{path}.fields: expected a table of fields")
    fields: dict[str, FieldConfig] = {}
    for fname, fraw in raw_fields.items():
        fpath = f"{path}.fields.{fname}"
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", fname):
            raise ConfigError(f"{fpath}: field names are lowercase letters, digits and _ (<= 63)")
        if fname in RESERVED_NAMES:
            raise ConfigError(f"{fpath}: `{fname}` is a column oceanus sets itself")
        fields[fname] = _convert(fraw, FieldConfig, fpath)
    rest = {k: v for k, v in raw.items() if k != "fields"}
    rest["name"] = name
    stream = _convert(rest, StreamConfig, path)
    stream = msgspec.structs.replace(stream, fields=fields)
    if not fields:
        raise ConfigError(f"{path}.fields: a stream needs at least one field")
    columns = set(stream.columns)
    for i, col in enumerate(stream.clustering):
        if col not in columns:
            raise ConfigError(f"{path}.clustering[{i}]: `{col}` is not a column of the stream")
    if len(stream.clustering) > 4:
        raise ConfigError(f"{path}.clustering: BigQuery allows at most 4 clustering columns")
    _check_stream_extras(stream, path)
    return stream


def _check_stream_extras(stream: StreamConfig, path: str) -> None:
    """Field aliases, the time zone, profiles and legacy routes of one stream."""
    try:
        zoneinfo.ZoneInfo(stream.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f'{path}.timezone: unknown time zone {stream.timezone!r} (an IANA name, e.g. "Asia/Tokyo")'
        ) from None
    names: dict[str, str] = {n: n for n in stream.fields}
    for fname, f in stream.fields.items():
        for i, alias in enumerate(f.aliases):
            if alias in RESERVED_NAMES:
                raise ConfigError(f"{path}.fields.{fname}.aliases[{i}]: `{alias}` is a column oceanus sets itself")
            if alias in names:
                raise ConfigError(f"{path}.fields.{fname}.aliases[{i}]: `{alias}` already names field `{names[alias]}`")
            names[alias] = fname
    for pname, profile in stream.profiles.items():
        for fname, f in profile.fields.items():
            own = stream.fields.get(fname)
            if own is None:
                raise ConfigError(
                    f"{path}.profiles.{pname}.fields.{fname}: not a field of the stream "
                    "(a profile changes rules, never columns)"
                )
            if f.type != own.type:
                raise ConfigError(
                    f"{path}.profiles.{pname}.fields.{fname}.type: {f.type!r}, but the stream's field is {own.type!r}"
                )
    for i, route in enumerate(stream.aliases):
        if route.profile and route.profile not in stream.profiles:
            raise ConfigError(f"{path}.aliases[{i}].profile: no profile named {route.profile!r}")


def _env_paths(struct_type: type[Struct], prefix: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Map ``OCEANUS_A_B`` names to key paths for every scalar key outside ``streams``."""
    out: dict[str, tuple[str, ...]] = {}
    for field in msgspec.structs.fields(struct_type):
        if not prefix and field.name in ("streams", "imports", "rules", "channels", "source"):
            continue
        path = (*prefix, field.name)
        ftype = field.type
        if isinstance(ftype, type) and issubclass(ftype, Struct):
            out.update(_env_paths(ftype, path))
        else:
            out["OCEANUS_" + "_".join(path).upper()] = path
    return out


#: Variables with the prefix that are not config keys.
ENV_NOT_KEYS = frozenset(
    {
        "OCEANUS_CONFIG",
        "OCEANUS_DATA_DIR",
        "OCEANUS_LOG_LEVEL",
        "OCEANUS_QUERY_TOKEN",
        # the SQL sinks' default url_env: a secret's variable, not a key
        "OCEANUS_PG_URL",
        "OCEANUS_MYSQL_URL",
    }
)


def _named_env(raw: Mapping[str, Any]) -> set[str]:
    """Variables the config names in its ``*_env`` keys (secrets such as a database URL), at any depth."""
    out: set[str] = set()
    for key, value in raw.items():
        if isinstance(value, Mapping):
            out |= _named_env(value)
        elif key.endswith("_env") and isinstance(value, str):
            out.add(value)
    return out


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# What the kubelet injects for a Service <SVC> (its name upper-cased, "-" -> "_")
# and each of its ports (k8s pkg/kubelet/envvars): the name's suffix, then the
# shape of the value that suffix always has.
_SERVICE_LINK_NAME = re.compile(
    r"^[A-Z_][A-Z0-9_]*?_(?:(?P<host>SERVICE_HOST)|(?P<port>SERVICE_PORT(?:_[A-Z0-9_]+)?)|(?P<url>PORT)"
    r"|PORT_(?P<n>[0-9]{1,5})_(?P<proto>TCP|UDP|SCTP)(?:_(?P<part>PROTO|PORT|ADDR))?)$"
)
_SERVICE_LINK_URL = re.compile(r"^(?:tcp|udp|sctp)://(?P<ip>[0-9.]+|\[[0-9a-fA-F:.]+\]):(?P<port>[0-9]{1,5})$")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_service_link(name: str, value: str) -> bool:
    """True for a variable the kubelet injects for a Service (exact name shape and value shape)."""
    m = _SERVICE_LINK_NAME.match(name)
    if m is None:
        return False
    if m["host"]:
        return _is_ip(value)
    if m["port"]:
        return value.isascii() and value.isdigit()
    url = _SERVICE_LINK_URL.match(value)
    if m["url"]:
        return url is not None and _is_ip(url["ip"].strip("[]"))
    n, proto, part = m["n"], m["proto"], m["part"]
    if part == "PROTO":
        return value == proto.lower()
    if part == "PORT":
        return value == n
    if part == "ADDR":
        return _is_ip(value)
    return (
        url is not None
        and _is_ip(url["ip"].strip("[]"))
        and url["port"] == n
        and value.startswith(proto.lower() + "://")
    )


def _wants_int(path: tuple[str, ...]) -> bool:
    node: Any = Config
    for key in path:
        node = next(f.type for f in msgspec.structs.fields(node) if f.name == key)
    if typing.get_origin(node) is Annotated:
        node = typing.get_args(node)[0]
    return node is int


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    paths = _env_paths(Config)
    # ... and the ones an override names (OCEANUS_SINK_POSTGRES_URL_ENV=OCEANUS_DW_URL).
    secrets = _named_env(raw) | {v for k, v in env.items() if k.startswith("OCEANUS_") and k.endswith("_ENV")}
    for name, text in env.items():
        if not name.startswith("OCEANUS_") or name in ENV_NOT_KEYS or name in secrets:
            continue
        path = paths.get(name)
        # A Service named oceanus-collector makes OCEANUS_COLLECTOR_PORT=tcp://10.0.0.1:80,
        # the name of the collector.port key: such a value is never a port number.
        if (path is None or _wants_int(path)) and is_service_link(name, text):
            log.debug("%s: a Kubernetes service-link variable, not a configuration key; ignored", name)
            continue
        if path is None:
            raise ConfigError(f"{name}: not a configuration key (known: OCEANUS_REDIS_URL, ...)")
        node = raw
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path)}: expected a table")
            node = child
        node[path[-1]] = _parse_env_value(text)


def decode(raw: dict[str, Any], source: str = "") -> Config:
    """Build a :class:`Config` from already-parsed TOML data."""
    raw = dict(raw)
    raw_streams = raw.pop("streams", {})
    raw_imports = raw.pop("imports", {})
    raw_rules = raw.pop("rules", {})
    raw_channels = raw.pop("channels", {})
    if not isinstance(raw_rules, dict) or not isinstance(raw_channels, dict):
        raise ConfigError("rules, channels: expected tables ([rules.NAME], [channels.NAME])")
    if not isinstance(raw_imports, dict):
        raise ConfigError("imports: expected a table of imports ([imports.NAME])")
    imports = {name: _decode_import(name, body) for name, body in raw_imports.items()}
    if not isinstance(raw_streams, dict):
        raise ConfigError("streams: expected a table of streams ([streams.NAME])")
    streams = {name: _decode_stream(name, body) for name, body in raw_streams.items()}
    base = _convert(raw, Config, "")
    if not streams:
        raise ConfigError("streams: at least one stream must be defined")
    _check_load_quota(base.sink.bigquery, streams)
    if base.redis.min_replicas_ack and base.redis.wait_timeout_ms >= base.redis.timeout_s * 1000:
        # WAIT blocks the round for up to wait_timeout_ms; past timeout_s the link gives up first.
        raise ConfigError(
            f"redis.wait_timeout_ms: {base.redis.wait_timeout_ms} ms must be below redis.timeout_s "
            f"({base.redis.timeout_s:g} s), or the round times out before WAIT answers"
        )
    for name in base.collector.access:
        if name not in streams:
            raise ConfigError(f"collector.access.{name}: no stream named {name!r}")
    for key, proto in (("segment", base.collector.segment), ("snowplow", base.collector.snowplow)):
        if proto.stream and proto.stream not in streams:
            raise ConfigError(f'collector.{key}.stream: no stream named {proto.stream!r} ("" turns {key} off)')
    for name in imports:
        if name in streams or name.removesuffix("_latest") in streams:
            raise ConfigError(f"imports.{name}: a stream has that table name")
    _check_route_paths(base.collector, streams)
    _check_legacy_views(streams)
    channels = {name: _decode_channel(name, body) for name, body in raw_channels.items()}
    rules = {name: _decode_rule(name, body, streams, channels) for name, body in raw_rules.items()}
    return msgspec.structs.replace(
        base, streams=streams, imports=imports, rules=rules, channels=channels, source=source
    )


def rule_streams(cfg: Config) -> tuple[str, ...]:
    """Streams with at least one enabled rule: the notifier taps their queues, and the flusher's claim
    copies the frames the tap has not reached yet (notifier/tap.py)."""
    return tuple(sorted({r.stream for r in cfg.rules.values() if r.enabled}))


#: Paths (and prefixes, ending in "/") the collector answers itself: no legacy route may take them.
NATIVE_PATHS = (
    "/b/",
    "/e/",
    "/_/",
    "/demo",
    "/demo/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/oceanus.js",
    "/oceanus-2016.js",
)


#: The paths of the Segment and Snowplow protocols (collector/protocols/), while they are on.
SEGMENT_PATHS = ("/v1/",)
SNOWPLOW_PATHS = ("/i", "/com.snowplowanalytics.snowplow/")


def _check_route_paths(c: CollectorConfig, streams: Mapping[str, StreamConfig]) -> None:
    taken = NATIVE_PATHS + (SEGMENT_PATHS if c.segment.stream else ()) + (SNOWPLOW_PATHS if c.snowplow.stream else ())
    seen: dict[str, str] = {}
    routes = [(f"collector.legacy_routes.{p}", p) for p in c.legacy_routes]
    for name, s in streams.items():
        routes.extend((f"streams.{name}.aliases[{i}].path", a.path) for i, a in enumerate(s.aliases))
    for where, route in routes:
        if any(route == n or route.startswith(n) if n.endswith("/") else route == n for n in taken):
            raise ConfigError(f"{where}: {route} is a route of the collector itself")
        if route in seen:
            raise ConfigError(f"{where}: {route} is also {seen[route]}")
        seen[route] = where
    for i, net in enumerate(c.debug_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"collector.debug_networks[{i}]: {net!r} is not an address or network") from None


def _decode_import(name: str, raw: Any) -> ImportConfig:
    path = f"imports.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a table")
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise ConfigError(f"{path}: import names are lowercase letters, digits and _ (<= 63)")
    if name.startswith("_oceanus") or name.endswith("_latest"):
        raise ConfigError(f"{path}: the name is kept for the importer's own tables and views")
    return _convert({**raw, "name": name}, ImportConfig, path)


def _check_legacy_views(streams: Mapping[str, StreamConfig]) -> None:
    """A 2016-layout view may not take the name of a table or view oceanus makes."""
    taken = {name: f"streams.{name}" for name in streams}
    taken.update({f"{name}_dedup": f"streams.{name} (its _dedup view)" for name in streams})
    for name, s in streams.items():
        if s.legacy_view is None:
            continue
        if s.legacy_view in taken:
            raise ConfigError(f"streams.{name}.legacy_view: {s.legacy_view} is the name of {taken[s.legacy_view]}")
        taken[s.legacy_view] = f"streams.{name}.legacy_view"


def _check_load_quota(bq: BigQueryConfig, streams: Mapping[str, StreamConfig]) -> None:
    """Refuse a load-job cadence BigQuery's daily quota would cut off mid-day.

    The load writer starts at most one job per table every ``load_interval_s``
    (whatever the stream's ``batch.max_wait_s``), so that key alone bounds the
    job count: 86400 / load_interval_s jobs per table per day, at most 1,500.
    """
    loaded = sorted(name for name, s in streams.items() if s.mode == "load")
    if not loaded:
        return
    per_day = SECONDS_PER_DAY / bq.load_interval_s
    if per_day > BIGQUERY_LOADS_PER_TABLE_PER_DAY:
        minimum = SECONDS_PER_DAY / BIGQUERY_LOADS_PER_TABLE_PER_DAY
        raise ConfigError(
            f"sink.bigquery.load_interval_s: {bq.load_interval_s:g} s between load jobs means "
            f"{SECONDS_PER_DAY} / {bq.load_interval_s:g} = {per_day:,.0f} jobs per table per day for "
            f'stream(s) {", ".join(loaded)} (mode = "load"), over BigQuery\'s quota of '
            f"{BIGQUERY_LOADS_PER_TABLE_PER_DAY:,}; set it to at least {SECONDS_PER_DAY} / "
            f"{BIGQUERY_LOADS_PER_TABLE_PER_DAY:,} = {minimum:g} s"
        )


def config_path(explicit: str | None = None, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("OCEANUS_CONFIG"):
        return Path(env["OCEANUS_CONFIG"])
    if Path("oceanus.toml").exists():
        return Path("oceanus.toml")
    return REPO_CONFIG


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, and validate. Raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    p = config_path(os.fspath(path) if path is not None else None, env)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file ({exc.strerror})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    _apply_env(raw, env)
    return decode(raw, source=str(p))


def loads(text: str, env: Mapping[str, str] | None = None) -> Config:
    """Decode TOML text (tests, the k8s ConfigMap check)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML ({exc})") from None
    _apply_env(raw, env or {})
    return decode(raw, source="<string>")
