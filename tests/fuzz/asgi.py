"""Drive the collector's ASGI app in-process: one event loop, real Redis behind it.

Hypothesis runs hundreds of examples per test; a live server would spend most
of that time in the network stack. The app is the same object granian serves,
so what this finds is what production would answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.app import App
from oceanus.config import Config

#: Bound on one in-process request (a hung request is a failure, not a stuck suite).
REQUEST_TIMEOUT_S = 10.0


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""

    @property
    def error(self) -> str:
        return self.headers.get(b"x-oceanus-error", b"").decode("latin-1")


class Driver:
    """An :class:`App` started on a private event loop."""

    def __init__(self, cfg: Config) -> None:
        self.loop = asyncio.new_event_loop()
        self.app = App(cfg)
        self.loop.run_until_complete(self.app.startup())

    def close(self) -> None:
        try:
            # A writer that died in a test re-raises here; the test has already failed for it.
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(asyncio.wait_for(self.app.shutdown(), REQUEST_TIMEOUT_S * 3))
        finally:
            self.loop.close()

    def request(
        self,
        method: str,
        path: str,
        query: bytes = b"",
        body: bytes | Sequence[bytes] = b"",
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> Response:
        return self.loop.run_until_complete(
            asyncio.wait_for(self._request(method, path, query, body, headers), REQUEST_TIMEOUT_S)
        )

    async def _request(
        self,
        method: str,
        path: str,
        query: bytes,
        body: bytes | Sequence[bytes],
        headers: Sequence[tuple[bytes, bytes]],
    ) -> Response:
        chunks = [body] if isinstance(body, bytes) else list(body)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode("utf-8", "surrogateescape"),
            "query_string": query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in headers],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8080),
        }

        async def receive() -> dict[str, Any]:
            if chunks:
                chunk = chunks.pop(0)
                return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
            # Nothing more to send: a real server would wait for the disconnect.
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        out = Response(0)
        parts: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if out.status:
                    raise AssertionError("response started twice")
                out.status = int(message["status"])
                for k, v in message.get("headers", []):
                    if not isinstance(k, bytes) or not isinstance(v, bytes):
                        raise AssertionError(f"header not bytes: {k!r}: {v!r}")
                    if b"\r" in v or b"\n" in v or b"\r" in k or b"\n" in k:
                        raise AssertionError(f"CR/LF in a response header: {k!r}: {v!r}")
                    out.headers[k.lower()] = v
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self.app(scope, receive, send)  # type: ignore[arg-type]
        out.body = b"".join(parts)
        return out


def assert_answer(resp: Response) -> None:
    """The contract for any input: a 2xx, or a 4xx whose header names what was wrong."""
    if 200 <= resp.status < 300:
        return
    if not 400 <= resp.status < 500:
        raise AssertionError(f"status {resp.status} (only 2xx or 4xx are answers to client input): {resp.error}")
    field_, _, rest = resp.error.partition(": ")
    rule, _, detail = rest.partition(": ")
    if not (field_ and rule and detail):
        raise AssertionError(f"4xx without `field: rule: detail` in X-Oceanus-Error: {resp.error!r}")
