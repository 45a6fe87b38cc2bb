"""A delivery job: one message of one rule to one channel, self-contained (JSON in Redis)."""

from __future__ import annotations

from typing import Literal

import msgspec

Value = str | int | float | bool | None
Kind = Literal["event", "threshold", "summary"]


class Job(msgspec.Struct, frozen=True, kw_only=True):
    #: ``rule:channel:<event id hex>`` (or ``...:thr:<group>:<event id>``, ``...:summary:<window>``):
    #: the delivery key, and the ``Idempotency-Key`` a webhook receiver sees.
    id: str
    kind: Kind = "event"
    rule: str
    channel: str
    stream: str
    event_id: str = ""
    #: When the event was received (ms), for the latency histogram and the Sheets tab's month.
    event_ms: int
    #: When the job was written (ms): give_up_after_s counts from here.
    created_ms: int
    template: str
    subject: str
    #: The values the template, the subject and ``fields`` use, already cut to ``notify.max_value_chars``.
    values: dict[str, Value]
    #: Column order of a Sheets row / a webhook's ``event`` object.
    fields: tuple[str, ...] = ()


encode = msgspec.json.Encoder().encode
decode = msgspec.json.Decoder(Job).decode
