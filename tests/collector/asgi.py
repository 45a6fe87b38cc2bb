"""A minimal in-process ASGI client for the collector's raw app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.app import App


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    @property
    def error(self) -> str:
        return self.headers.get("x-oceanus-error", "")


async def request(
    app: App,
    method: str,
    path: str,
    query: str = "",
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    chunks: Sequence[bytes] | None = None,
    client: tuple[str, int] = ("203.0.113.5", 40000),
) -> Response:
    raw_query = query.encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": raw_query,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers],
        "client": client,
        "server": ("127.0.0.1", 8080),
    }
    parts = list(chunks) if chunks is not None else [body]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    response = Response(status=0)

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = {k.decode(): v.decode("latin-1") for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            response.body += message.get("body", b"")

    await app(scope, receive, send)
    return response


@contextlib.asynccontextmanager
async def running(app: App) -> AsyncIterator[App]:
    await app.startup()
    try:
        yield app
    finally:
        await app.shutdown()
