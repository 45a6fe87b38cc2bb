"""The Snowplow tracker protocol, decoded.

Input: the parameters of one event (``GET /i``'s query, or one item of a
``POST .../tp2`` ``payload_data`` array) and the arrival time. Output: the
``snowplow`` stream's event dict, with ``eid`` and the event's own time for
:mod:`collector.protocols.ids`. Nothing here touches the request.

Protocol points (https://docs.snowplow.io/docs/sources/trackers/snowplow-tracker-protocol/):

- ``ue_pr`` (JSON) or ``ue_px`` (base64url JSON): a self-describing event,
  ``{"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
  "data": {"schema": "iglu:...", "data": {...}}}``; the inner
  ``{"schema", "data"}`` is stored in ``ue``;
- ``co`` (JSON) or ``cx`` (base64url JSON): contexts, ``{"schema":
  "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-x", "data": [...]}``,
  each entity ``{"schema": "iglu:...", "data": ...}``; the array is stored in ``contexts``;
- ``dtm``/``stm``/``ttm`` are unix milliseconds (device created, device sent, true);
- a ``POST`` body is ``{"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/
  jsonschema/1-0-x", "data": [{...}, ...]}`` whose values are strings.

Base64 comes padded or not, URL-safe or standard (trackers differ); anything
else is a 400 naming the parameter and the rule (``base64``, ``json``, ``schema``).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from typing import Any

import msgspec

from collector.validate import Invalid

PAYLOAD_SCHEMA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-"
UNSTRUCT_SCHEMA = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-"
CONTEXTS_SCHEMA = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-"
#: The network user id of a tracker that asked not to be tracked (``SP-Anonymous``).
ANONYMOUS_NUID = "00000000-0000-0000-0000-000000000000"
_IGLU = re.compile(r"^iglu:[a-zA-Z0-9_.-]+/[a-zA-Z0-9_-]+/jsonschema/[1-9][0-9]*-[0-9]+-[0-9]+$")
_decode = msgspec.json.Decoder().decode

#: Fields the decoder fills: a tracker parameter of the same name would be taken for ours.
_OURS = ("ue", "contexts", "nuid", "collected_at", "user_ipaddress", "useragent")
#: Parameter -> stream field, where they differ (the rest keep the tracker's names).
#: ``ip``/``ua`` are a server-side tracker's word for its end user: kept in their own columns
#: (Snowplow's enriched names), never in the sender's ``ip``/``ua`` the collector resolves itself.
_RENAMES = {"tnuid": "nuid", "ip": "user_ipaddress", "ua": "useragent"}


class Event(msgspec.Struct, frozen=True):
    event: dict[str, Any]
    eid: str | None
    own_us: int | None


def payload_items(body: Any) -> list[Any]:
    """The events of a ``tp2`` body; Invalid naming ``schema`` or ``data``."""
    if type(body) is not dict:
        raise Invalid("body", "type", "expected a payload_data JSON object")
    schema = body.get("schema")
    if type(schema) is not str or not schema.startswith(PAYLOAD_SCHEMA):
        raise Invalid("schema", "payload_data", f"expected {PAYLOAD_SCHEMA}x-y")
    data = body.get("data")
    if type(data) is not list:
        raise Invalid("data", "type", "expected an array of events")
    if not data:
        raise Invalid("data", "required", "the array is empty")
    return data


def _b64json(name: str, text: str) -> Any:
    # Trackers send base64url without padding (JS) or standard base64 (some older ones).
    raw = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        data = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(name, "base64", "is not valid base64") from None
    return _json(name, data)


def _json(name: str, data: str | bytes) -> Any:
    try:
        return _decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise Invalid(name, "json", "is not valid JSON") from None


def _entity(name: str, value: Any) -> dict[str, Any]:
    if (
        type(value) is not dict
        or type(value.get("schema")) is not str
        or _IGLU.match(value["schema"]) is None
        or "data" not in value
    ):
        raise Invalid(
            name, "schema", 'each entity must be {"schema": "iglu:vendor/name/jsonschema/1-0-0", "data": ...}'
        )
    return value


def _envelope(name: str, value: Any, schema: str) -> Any:
    if type(value) is not dict or type(value.get("schema")) is not str or not value["schema"].startswith(schema):
        raise Invalid(name, "schema", f'expected {{"schema": "{schema}x-y", "data": ...}}')
    return value.get("data")


def _param(params: dict[str, Any], plain: str, encoded: str) -> tuple[str, Any] | None:
    """The decoded JSON of ``plain`` (JSON text) or ``encoded`` (base64url); None when neither is given."""
    v = params.pop(plain, None)
    b = params.pop(encoded, None)
    if v not in (None, ""):
        return plain, _json(plain, v) if type(v) is str else v
    if b not in (None, ""):
        if type(b) is not str:
            raise Invalid(encoded, "type", "expected base64 text")
        return encoded, _b64json(encoded, b)
    return None


def _ms(params: dict[str, Any], key: str) -> int | None:
    v = params.get(key)
    # isascii: str.isdigit() is also true for "¹" and other digits int() refuses.
    if type(v) is str and v.isascii() and v.isdigit() and len(v) <= 15:
        return int(v) * 1000
    if type(v) is int and 0 <= v < 10**15:
        return v * 1000
    return None


def decode(params: dict[str, Any], nuid: str | None, collected: int | str) -> Event:
    """One event's parameters -> the ``snowplow`` stream's event dict; Invalid naming the parameter.

    ``params`` is consumed. ``nuid``: the network user id from the cookie (the
    tracker's ``tnuid`` wins); ``collected``: the arrival as
    :func:`collector.protocols.segment.stored_time` gives it, made once per request.
    """
    for key in _OURS:
        if key in params:
            raise Invalid(key, "reserved", "is set by the collector and may not be sent")
    for key, value in params.items():
        if type(value) is not str:
            if type(value) in (int, float, bool):
                params[key] = str(value).lower() if type(value) is bool else str(value)
            else:
                # An empty name still needs a field in the answer: the event's index says which.
                raise Invalid(key or "data", "type", "tracker parameters are strings")
    ue = _param(params, "ue_pr", "ue_px")
    if ue is not None:
        params["ue"] = _entity(ue[0], _envelope(ue[0], ue[1], UNSTRUCT_SCHEMA))
    co = _param(params, "co", "cx")
    if co is not None:
        entities = _envelope(co[0], co[1], CONTEXTS_SCHEMA)
        if type(entities) is not list:
            raise Invalid(co[0], "schema", "the contexts' data must be an array")
        params["contexts"] = [_entity(co[0], e) for e in entities]
    own = _ms(params, "dtm")
    if own is None:
        own = _ms(params, "ttm")
    eid = params.get("eid")
    if eid is not None:
        try:
            eid = str(uuid.UUID(eid))
        except ValueError:
            raise Invalid("eid", "format", "is not a UUID") from None
        params["eid"] = eid
    for old, new in _RENAMES.items():
        if old in params:
            params[new] = params.pop(old)
    if nuid is not None and not params.get("nuid"):
        params["nuid"] = nuid
    params["collected_at"] = collected
    return Event(params, eid, own)


def valid_nuid(cookie: str | None) -> str | None:
    """The cookie's network user id when it is a UUID (a forged value is replaced, not stored)."""
    if not cookie or len(cookie) != 36:
        return None
    try:
        return str(uuid.UUID(cookie))
    except ValueError:
        return None
