"""The Segment HTTP Tracking API, decoded (also RudderStack's and Jitsu's).

Input: the JSON value of one request body, the call type the path names
(``track`` for ``/v1/track``, None for ``/v1/batch``) and the arrival time.
Output: one event dict per message, keyed by the ``segment`` stream's field
names, with the message id and the message's own time for
:mod:`collector.protocols.ids`. Nothing here touches the request.

Spec points (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/):

- ``/v1/batch`` carries ``{"batch": [...]}``; the batch's ``context`` and
  ``integrations`` apply to every message (a message's own keys win);
- 32 KB per message, 500 KB per batch: a 400 naming the limit, as the API answers;
- every call needs ``userId`` or ``anonymousId`` (``alias``: ``userId`` and
  ``previousId``); ``track`` needs ``event``, ``group`` needs ``groupId``;
- ``timestamp`` corrects the client's clock: ``receivedAt - (sentAt -
  originalTimestamp)`` when the client sent both; else the client's
  ``timestamp`` as given (a backfill sets it on purpose); else the arrival.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from collector.validate import Invalid, parse_timestamp
from oceanus.config import BIGQUERY_TIMESTAMP_END_US, BIGQUERY_TIMESTAMP_MIN_US

#: The spec's limits, in bytes of JSON.
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
#: Call types, and the short paths analytics.js uses for them.
TYPES = ("track", "identify", "page", "screen", "group", "alias")
SHORT = {"t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group", "a": "alias"}

#: Message key -> stream field. ``timestamp`` and ``originalTimestamp`` are handled apart.
_RENAMES = {
    "type": "type",
    "event": "event",
    "userId": "user_id",
    "anonymousId": "anonymous_id",
    "messageId": "message_id",
    "sentAt": "sent_at",
    "name": "name",
    "category": "category",
    "groupId": "group_id",
    "previousId": "previous_id",
    "context": "context",
    "properties": "properties",
    "traits": "traits",
    "integrations": "integrations",
}
#: Keys that are never stored: the write key is a credential; receivedAt is ours to set.
_DROPPED = ("writeKey", "receivedAt")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The validator reads an int timestamp at or past 100,000,000,000 as milliseconds (1973-03-03).
_MS_INT_MIN_US = 100_000_000_000_000
_encode = msgspec.json.Encoder().encode


class Message(msgspec.Struct, frozen=True):
    """One decoded message: its event dict and what the id and placement derive from."""

    event: dict[str, Any]
    message_id: str | None
    own_us: int | None


def iso(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=us)).isoformat()


def stored_time(us: int) -> int | str:
    """A time as the validator's timestamp rule takes it: whole milliseconds as an int
    (no text to format and parse again: most SDK times are ms), else ISO 8601."""
    if us % 1000 == 0 and us >= _MS_INT_MIN_US:
        return us // 1000
    return iso(us)


def sent_time(value: Any) -> int | None:
    """A batch's ``sentAt`` (parsed once per batch, not per message)."""
    return _time({"sentAt": value}, "sentAt")


def messages(body: Any, call: str | None, body_bytes: int) -> tuple[list[dict[str, Any]], Any, str | None]:
    """The raw messages of a body, the batch's ``sentAt`` and the body's ``writeKey``.

    ``call``: the path's type (None for a batch). ``body_bytes``: the size of the
    (inflated) JSON body, for the spec's limits.
    """
    if type(body) is not dict:
        raise Invalid("body", "type", "expected a JSON object")
    key = body.get("writeKey")
    write_key = key if type(key) is str and key else None
    if call is not None:
        if body_bytes > MAX_MESSAGE_BYTES:
            raise Invalid("body", "max_message_bytes", f"a message is larger than {MAX_MESSAGE_BYTES} bytes")
        return [body], body.get("sentAt"), write_key
    if body_bytes > MAX_BATCH_BYTES:
        raise Invalid("body", "max_batch_bytes", f"a batch is larger than {MAX_BATCH_BYTES} bytes")
    batch = body.get("batch")
    if type(batch) is not list:
        raise Invalid("batch", "type", "expected an array of messages")
    if not batch:
        raise Invalid("batch", "required", "the batch is empty")
    shared = {k: body[k] for k in ("context", "integrations") if type(body.get(k)) is dict}
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(batch):
        if type(msg) is not dict:
            raise Invalid("batch", "type", "each message must be a JSON object", i)
        # Only a batch larger than one message's limit can hold a message over it.
        if body_bytes > MAX_MESSAGE_BYTES and len(_encode(msg)) > MAX_MESSAGE_BYTES:
            raise Invalid("batch", "max_message_bytes", f"a message is larger than {MAX_MESSAGE_BYTES} bytes", i)
        if shared:
            msg = dict(msg)
            for k, v in shared.items():
                own = msg.get(k)
                msg[k] = {**v, **own} if type(own) is dict else v if own is None else own
        out.append(msg)
    return out, body.get("sentAt"), write_key


def _time(msg: dict[str, Any], key: str) -> int | None:
    v = msg.get(key)
    if v is None:
        return None
    try:
        return parse_timestamp(v)
    except (ValueError, OverflowError):
        raise Invalid(key, "type", "expected ISO 8601 or unix seconds/milliseconds") from None


def _id(msg: dict[str, Any], key: str) -> Any:
    v = msg.get(key)
    # The SDKs pass numeric ids through; the column is text.
    return str(v) if type(v) is int else v


def decode(
    msg: dict[str, Any], call: str | None, batch_sent_us: int | None, arrival_us: int, collected: int | str
) -> Message:
    """One message -> the ``segment`` stream's event dict; Invalid naming the key.

    ``batch_sent_us``: the batch's :func:`sent_time`; ``collected``: ``stored_time(arrival_us)``,
    made once per request.
    """
    kind = msg.get("type", call)
    if call is not None and kind != call:
        raise Invalid("type", "enum", f"a /v1/{call} call carries type {call!r}")
    if kind not in TYPES:
        raise Invalid("type", "enum", f"one of {', '.join(TYPES)}")
    user, anonymous = _id(msg, "userId"), _id(msg, "anonymousId")
    if kind == "alias":
        if not user or not _id(msg, "previousId"):
            raise Invalid("userId" if not user else "previousId", "required", "alias needs userId and previousId")
    elif not user and not anonymous:
        raise Invalid("userId", "required", "userId or anonymousId is required")
    if kind == "track" and not msg.get("event"):
        raise Invalid("event", "required", "a track call needs event")
    if kind == "group" and not _id(msg, "groupId"):
        raise Invalid("groupId", "required", "a group call needs groupId")
    original = _time(msg, "originalTimestamp")
    given = _time(msg, "timestamp")
    sent = _time(msg, "sentAt") if "sentAt" in msg else batch_sent_us
    if original is not None and sent is not None:
        corrected = arrival_us - (sent - original)
        if not BIGQUERY_TIMESTAMP_MIN_US <= corrected < BIGQUERY_TIMESTAMP_END_US:
            # Each time is in range, their difference need not be: year 1 sent in year 9999.
            raise Invalid("sentAt", "range", "sentAt - originalTimestamp puts the call before 0001 or after 9999")
    elif given is not None:
        corrected = given
    else:
        corrected = arrival_us
    event: dict[str, Any] = {}
    for key, value in msg.items():
        if key in _DROPPED or key == "timestamp" or key == "originalTimestamp":
            continue
        event[_RENAMES.get(key, key)] = value
    event["type"] = kind
    event["user_id"] = user
    event["anonymous_id"] = anonymous
    event["group_id"] = _id(msg, "groupId")
    event["previous_id"] = _id(msg, "previousId")
    event["timestamp"] = stored_time(corrected)
    own = original if original is not None else given
    # Segment's definition: the client's time of the call, or the timestamp a server library passed.
    event["original_timestamp"] = stored_time(own) if own is not None else None
    event["sent_at"] = stored_time(sent) if sent is not None else None
    event["collected_at"] = collected
    message_id = msg.get("messageId")
    if message_id is not None and type(message_id) is not str:
        raise Invalid("messageId", "type", "expected a string")
    return Message(event, message_id or None, own)
