"""``GET /openapi.json``: the collector's ingestion API, derived from the stream config.

:func:`build` is a pure function of :class:`oceanus.config.Config`: one schema
per stream (``components.schemas.<Stream>Event``) built from the same
:class:`~oceanus.config.FieldConfig` rules the validator compiles, and the
routes every stream gets (``GET /b/{stream}``, ``POST /e/{stream}``). Nothing
here is written by hand per stream, so the document cannot drift from what
the collector enforces; a fuzzer (schemathesis) reads it to know what to send.

Where a rule cannot be said in JSON Schema (``transforms`` run before the
checks, so ``lowercase`` + ``pattern = "^[0-9a-f]+$"`` also accepts ``"AB"``)
the schema states the stricter form and the description says which transform
applies: valid per the schema implies accepted by the collector, which is the
direction a client and a fuzzer need.
"""

from __future__ import annotations

from typing import Any

from oceanus.config import Config, FieldConfig, StreamConfig

OPENAPI_VERSION = "3.0.3"
#: Media types the event endpoint decodes.
JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Why the request was refused; the X-Oceanus-Error header says the same as `field: rule: message`.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "field": {"type": "string", "description": "the field, or the limit's subject (body, url...)"},
                "rule": {"type": "string", "description": "the rule or the config key of the limit"},
                "message": {"type": "string"},
                "index": {"type": "integer", "minimum": 0, "description": "the event's index in a JSON array"},
            },
            "required": ["field", "rule", "message"],
        },
    },
    "required": ["error"],
}


def _title(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _describe(f: FieldConfig) -> str:
    parts = [f.description] if f.description else []
    if f.transforms:
        parts.append("transforms before the checks: " + ", ".join(f.transforms))
    return "; ".join(parts)


def field_schema(f: FieldConfig, text: bool = False) -> dict[str, Any]:
    """JSON Schema of one field's value (``text``: as a query/form value)."""
    schema: dict[str, Any]
    if f.type == "string":
        schema = {"type": "string"}
        if f.max_length is not None:
            schema["maxLength"] = f.max_length
        if f.required:
            schema["minLength"] = 1
        if f.pattern is not None:
            schema["pattern"] = f.pattern
        if f.enum is not None:
            schema["enum"] = list(f.enum)
        if f.format == "email":
            schema["format"] = "email"
    elif f.type in ("int", "float"):
        schema = {"type": "integer" if f.type == "int" else "number"}
        if f.min is not None:
            schema["minimum"] = f.min
        if f.max is not None:
            schema["maximum"] = f.max
    elif f.type == "bool":
        schema = {"type": "boolean"}
    elif f.type == "timestamp":
        # ISO 8601 text or unix seconds / milliseconds (a number >= 0).
        iso: dict[str, Any] = {"type": "string", "format": "date-time"}
        number: dict[str, Any] = {"type": "number", "minimum": 0}
        schema = iso if text else {"oneOf": [iso, number]}
    else:  # json
        # Any JSON value; in a query or form value, its JSON text. max_length is in encoded bytes,
        # which JSON Schema cannot bound for a structured value, so only the text form says it.
        schema = {"type": "string", "description": "JSON text"} if text else {}
        if text and f.max_length is not None:
            schema["maxLength"] = f.max_length
    description = _describe(f)
    if description:
        schema["description"] = description
    return schema


def event_schema(stream: StreamConfig, cfg: Config, text: bool = False) -> dict[str, Any]:
    """One event of ``stream``: its fields, plus a bounded number of unknown keys (kept in ``extra``)."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: field_schema(f, text) for name, f in stream.fields.items()},
        "maxProperties": len(stream.fields) + cfg.collector.max_extra_keys,
        "description": (
            f"Unknown keys are kept in the `extra` column (at most {cfg.collector.max_extra_keys} keys, "
            f"{cfg.collector.max_extra_bytes} bytes as JSON)."
        ),
    }
    if text:
        # Extra query/form values are text.
        schema["additionalProperties"] = {"type": "string"}
    required = [name for name, f in stream.fields.items() if f.required]
    if required:
        schema["required"] = required
    return schema


def _error(description: str, pixel: bool = False) -> dict[str, Any]:
    """An error answer; the pixel answers errors with the GIF too (an <img> shows nothing else)."""
    content = (
        {"image/gif": {"schema": {"type": "string", "format": "binary"}}}
        if pixel
        else {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/Error"}}}
    )
    return {
        "description": description,
        "headers": {"X-Oceanus-Error": {"schema": {"type": "string"}, "description": "field: rule: detail"}},
        "content": content,
    }


def _common_errors(cfg: Config, pixel: bool = False) -> dict[str, Any]:
    c = cfg.collector
    return {
        "400": _error("An event broke a rule; the answer names the field and the rule.", pixel),
        "413": _error(
            f"Body over {c.max_body_bytes} bytes, over {c.max_decompressed_bytes} bytes decompressed, "
            f"or more than {c.max_batch_events} events in one array.",
            pixel,
        ),
        "414": _error(f"URL over {c.max_url_bytes} bytes.", pixel),
        "503": _error("Redis is unreachable and the local spool is full, or the collector is draining.", pixel),
    }


def _pixel(stream: StreamConfig, cfg: Config) -> dict[str, Any]:
    params = [
        {
            "name": name,
            "in": "query",
            "required": f.required,
            "schema": field_schema(f, text=True),
            **({"description": f.description} if f.description else {}),
        }
        for name, f in stream.fields.items()
    ]
    return {
        "get": {
            "operationId": f"pixel_{stream.name}",
            "summary": f"One {stream.name} event as a query string (an image beacon).",
            "parameters": params,
            "responses": {
                "200": {
                    "description": "Stored in Redis (or the spool): a 1x1 GIF.",
                    "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}},
                },
                **_common_errors(cfg, pixel=True),
            },
        }
    }


def _events(stream: StreamConfig, cfg: Config) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{_title(stream.name)}Event"}
    batch = {"type": "array", "items": ref, "minItems": 1, "maxItems": cfg.collector.max_batch_events}
    return {
        "post": {
            "operationId": f"events_{stream.name}",
            "summary": f"{stream.name} events: one JSON object, a JSON array, or a form post.",
            "requestBody": {
                "required": True,
                "content": {
                    JSON_TYPE: {"schema": {"oneOf": [ref, batch]}},
                    FORM_TYPE: {"schema": {"$ref": f"#/components/schemas/{_title(stream.name)}Form"}},
                },
            },
            "responses": {
                "200": {
                    "description": "Every event is stored in Redis (or the spool).",
                    "content": {
                        JSON_TYPE: {
                            "schema": {
                                "type": "object",
                                "properties": {"accepted": {"type": "integer", "minimum": 0}},
                                "required": ["accepted"],
                            }
                        }
                    },
                },
                **_common_errors(cfg),
                "408": _error(
                    f"The body did not arrive within collector.body_timeout_s ({cfg.collector.body_timeout_s:g} s)."
                ),
                "415": _error("A Content-Encoding other than gzip."),
            },
        }
    }


def _probe(summary: str, media: str = "text/plain") -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "responses": {
                "200": {"description": "OK", "content": {media: {"schema": {"type": "string"}}}},
                "503": {"description": "Not ready", "content": {media: {"schema": {"type": "string"}}}},
            },
        }
    }


def _protocol_paths(cfg: Config) -> dict[str, Any]:
    """The Segment and Snowplow paths while they are on (collector/protocols/). Their bodies are the
    vendors' formats, stated loosely here; the stream schemas say what a stored row holds."""
    c = cfg.collector
    paths: dict[str, Any] = {}
    limits = _error(f"Body over {c.max_body_bytes} bytes (or {c.max_decompressed_bytes} inflated), or too many events.")
    if c.segment.stream:
        ok = {"description": "Stored", "content": {JSON_TYPE: {"schema": {"type": "object"}}}}
        for call in ("batch", "track", "identify", "page", "screen", "group", "alias"):
            paths[f"/v1/{call}"] = {
                "post": {
                    "operationId": f"segment_{call}",
                    "summary": f"Segment HTTP API {call}: stored in the {c.segment.stream} stream (write key as the "
                    "HTTP Basic user or writeKey).",
                    "requestBody": {"required": True, "content": {JSON_TYPE: {"schema": {"type": "object"}}}},
                    "responses": {
                        "200": ok,
                        "400": _error("A message broke a rule or the spec's 32 KB / 500 KB limits."),
                        "401": _error("The write key is missing or not listed."),
                        "413": limits,
                        "414": _error(f"URL over {c.max_url_bytes} bytes."),
                        "415": _error("A Content-Encoding other than gzip."),
                        "429": _error("Over a rate limit."),
                        "503": _error(
                            "Redis is unreachable and the local spool is full, or the collector is draining."
                        ),
                    },
                }
            }
    if c.snowplow.stream:
        gif = {"description": "Stored", "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}}}
        paths["/i"] = {
            "get": {
                "operationId": "snowplow_pixel",
                "summary": f"Snowplow tracker protocol, one event in the query: stored in the {c.snowplow.stream} "
                "stream.",
                "responses": {
                    "200": gif,
                    "400": _error("A parameter broke a rule; the GIF, with X-Oceanus-Error.", pixel=True),
                    "414": _error(f"URL over {c.max_url_bytes} bytes."),
                    "429": _error("Over a rate limit.", pixel=True),
                    "503": _error("Redis is unreachable and the local spool is full.", pixel=True),
                },
            }
        }
        paths["/com.snowplowanalytics.snowplow/tp2"] = {
            "post": {
                "operationId": "snowplow_tp2",
                "summary": "Snowplow tracker protocol, a payload_data batch.",
                "requestBody": {"required": True, "content": {JSON_TYPE: {"schema": {"type": "object"}}}},
                "responses": {
                    "200": {"description": "Stored", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "400": _error("An event broke a rule, or the body is not payload_data."),
                    "413": limits,
                    "414": _error(f"URL over {c.max_url_bytes} bytes."),
                    "415": _error("A Content-Encoding other than gzip."),
                    "429": _error("Over a rate limit."),
                    "503": _error("Redis is unreachable and the local spool is full, or the collector is draining."),
                },
            }
        }
    return paths


def build(cfg: Config) -> dict[str, Any]:
    """The OpenAPI 3 document of ``cfg``'s ingestion API."""
    schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA}
    paths: dict[str, Any] = {}
    for stream in cfg.streams.values():
        title = _title(stream.name)
        schemas[f"{title}Event"] = event_schema(stream, cfg)
        schemas[f"{title}Form"] = event_schema(stream, cfg, text=True)
        paths[f"/b/{stream.name}"] = _pixel(stream, cfg)
        paths[f"/e/{stream.name}"] = _events(stream, cfg)
    paths.update(_protocol_paths(cfg))
    paths["/healthz"] = _probe("Liveness: the process answers.")
    paths["/readyz"] = _probe("Readiness: Redis answers or the spool has room, and not draining.")
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "oceanus collector",
            "version": "1",
            "description": (
                "Ingestion API generated from the stream config"
                + (f" ({cfg.source})" if cfg.source else "")
                + ". A 2xx means every event of the request is stored in Redis (or the collector's fsync'd spool)."
            ),
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
