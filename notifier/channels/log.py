"""``kind = "log"``: one JSON line per notification, on stdout or appended to a file."""

from __future__ import annotations

import asyncio
import sys

import msgspec

from notifier.jobs import Job
from notifier.rules import render
from oceanus.config import LogChannel

_json = msgspec.json.Encoder()


class LogSink:
    kind = "log"

    def __init__(self, name: str, cfg: LogChannel) -> None:
        self.name = name
        self.cfg = cfg

    def line(self, job: Job) -> bytes:
        # JSON-encoded: a CR/LF in a value cannot start a forged line.
        return (
            _json.encode(
                {"notify": job.rule, "channel": self.name, "id": job.id, "message": render(job.template, job.values)}
            )
            + b"\n"
        )

    async def send(self, job: Job) -> None:
        data = self.line(job)
        if not self.cfg.path:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            return
        await asyncio.to_thread(_append, self.cfg.path, data)


def _append(path: str, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)
