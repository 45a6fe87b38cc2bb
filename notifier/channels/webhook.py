"""``kind = "webhook"``: a signed JSON POST.

Headers: ``X-Oceanus-Timestamp`` (unix seconds), ``X-Oceanus-Signature:
sha256=<hex>`` = HMAC-SHA256(secret, timestamp + "." + body), and
``Idempotency-Key`` (the job id: rule, channel and event). A receiver recomputes
the HMAC over the raw body, compares in constant time, refuses timestamps older
than a few minutes, and ignores a key it has seen (docs/NOTIFY.md).
"""

from __future__ import annotations

import hashlib
import hmac
import time

import msgspec

from notifier.channels.base import check_status, post, read_secret
from notifier.jobs import Job
from notifier.rules import render
from oceanus.config import WebhookChannel

_json = msgspec.json.Encoder()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookSink:
    kind = "webhook"

    def __init__(self, name: str, cfg: WebhookChannel) -> None:
        self.name = name
        self.cfg = cfg
        self.secret = read_secret(cfg.secret_env, cfg.secret_file, f"channels.{name}.secret_env").encode()

    def body(self, job: Job) -> bytes:
        return _json.encode(
            {
                "id": job.id,
                "kind": job.kind,
                "rule": job.rule,
                "stream": job.stream,
                "event_id": job.event_id,
                "event_ms": job.event_ms,
                "message": render(job.template, job.values),
                "event": {f: job.values.get(f) for f in job.fields},
            }
        )

    async def send(self, job: Job) -> None:
        body = self.body(job)
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Oceanus-Timestamp": ts,
            "X-Oceanus-Signature": sign(self.secret, ts, body),
            "Idempotency-Key": job.id,
        }
        status, answer = await post(self.cfg.url, body, headers, self.cfg.timeout_s)
        check_status(status, answer, f"webhook {self.cfg.url} (channels.{self.name})")
