"""A fault-injecting HTTP proxy for tests: client -> proxy -> BigQuery emulator.

It forwards every request to the upstream unchanged, except the next N that
match a rule, which get the fault the rule names instead. The faults mimic what
the real BigQuery answers (error bodies with the same ``reason`` values), so
the sink's error mapping is tested against the service's contract rather than
the emulator's own habits (which answers many client mistakes with a 500).

    proxy = FaultProxy(emulator.rest_url).start()
    proxy.inject("unavailable", times=3, path="insertAll")   # 503 three times
    proxy.inject("lost_reply")                                # stored upstream, answer never sent
    ...
    assert proxy.count("insertAll") == 4

Loopback only, a free port, one thread per connection; ``stop()`` releases
requests held by a ``hang`` fault.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

FaultKind = Literal[
    "unavailable", "throttled", "hang", "lost_reply", "too_large", "payload_limit", "row_errors", "status"
]

#: Bodies shaped like the real service's error responses.
_ERROR_BODIES: dict[str, tuple[int, str, str, str]] = {
    # kind: (status, reason, status text, message)
    "unavailable": (
        503,
        "backendError",
        "UNAVAILABLE",
        "Error encountered during execution. Retrying may solve the problem.",
    ),
    "throttled": (
        429,
        "rateLimitExceeded",
        "RESOURCE_EXHAUSTED",
        "Exceeded rate limits: too many api requests per user per method for this user_method.",
    ),
    "too_large": (413, "badRequest", "INVALID_ARGUMENT", "Request Entity Too Large"),
    "payload_limit": (400, "badRequest", "INVALID_ARGUMENT", "Request payload size exceeds the limit: 10485760 bytes."),
}

#: Per-row messages as the real insertAll words them.
_ROW_MESSAGES = {
    "invalid": "Cannot convert value to integer (bad value): not-a-number",
    "stopped": "",
    "backendError": "Error encountered during execution. Retrying may solve the problem.",
}

_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
        "server",
        "date",
    }
)


@dataclass
class Fault:
    kind: FaultKind
    times: int
    path: str = ""
    #: ``row_errors``: index in the request -> reason (``invalid``, ``stopped``, ``backendError``...).
    rows: Mapping[int, str] = field(default_factory=dict)
    #: ``status``: the status to answer with; ``hang``: seconds to hold the request.
    status: int = 500
    hang_s: float = 30.0
    #: Let this many matching requests through before the fault starts.
    after: int = 0


@dataclass
class Seen:
    """One request the proxy received, and what it did with it."""

    method: str
    path: str
    body: bytes
    fault: str = ""
    status: int = 0

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class FaultProxy:
    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fault proxy only forwards to loopback upstreams")
        self.upstream_host = parsed.hostname or "127.0.0.1"
        self.upstream_port = parsed.port or 80
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._seen: list[Seen] = []
        self._release = threading.Event()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------- commands

    def inject(
        self,
        kind: FaultKind,
        times: int = 1,
        path: str = "insertAll",
        rows: Mapping[int, str] | None = None,
        status: int = 500,
        hang_s: float = 30.0,
        after: int = 0,
    ) -> None:
        """The next ``times`` requests whose path contains ``path`` get this fault (rules apply in order).

        ``after``: let that many matching requests through first.
        """
        with self._lock:
            self._faults.append(Fault(kind, times, path, dict(rows or {}), status, hang_s, after))

    def clear(self) -> None:
        """Drop the remaining faults; requests held by ``hang`` are released."""
        with self._lock:
            self._faults.clear()
        self._release.set()
        self._release = threading.Event()

    def seen(self, path: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self._seen if path in s.path]

    def count(self, path: str = "", fault: str | None = None) -> int:
        return sum(1 for s in self.seen(path) if fault is None or s.fault == fault)

    def pending(self) -> int:
        with self._lock:
            return sum(f.times for f in self._faults)

    # ------------------------------------------------------------- internals

    def _take(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path in path and fault.times > 0:
                    if fault.after > 0:
                        fault.after -= 1
                        return None
                    fault.times -= 1
                    taken = Fault(fault.kind, 1, fault.path, fault.rows, fault.status, fault.hang_s)
                    self._faults = [f for f in self._faults if f.times > 0]
                    return taken
        return None

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    def forward(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=120)
        try:
            conn.request(
                method,
                path,
                body=body or None,
                headers={
                    **{k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS},
                    "Content-Length": str(len(body)),
                },
            )
            resp = conn.getresponse()
            data = resp.read()
            out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_HEADERS]
            return resp.status, out_headers, data
        finally:
            conn.close()


def error_body(status: int, reason: str, status_text: str, message: str) -> bytes:
    return json.dumps(
        {
            "error": {
                "code": status,
                "message": message,
                "status": status_text,
                "errors": [{"message": message, "domain": "global", "reason": reason}],
            }
        }
    ).encode()


def insert_errors_body(errors: Mapping[int, str]) -> bytes:
    """A ``tableDataInsertAllResponse`` naming rows by their index in the request."""
    return json.dumps(
        {
            "kind": "bigquery#tableDataInsertAllResponse",
            "insertErrors": [
                {
                    "index": i,
                    "errors": [
                        {
                            "reason": reason,
                            "location": "" if reason == "stopped" else "age",
                            "debugInfo": "",
                            "message": _ROW_MESSAGES.get(reason, reason),
                        }
                    ],
                }
                for i, reason in sorted(errors.items())
            ],
        }
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the test reads ``seen()`` instead

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(self.command, self.path, body)
        self.owner._record(seen)
        fault = self.owner._take(self.path)
        headers = {k: v for k, v in self.headers.items()}
        if fault is None:
            status, out_headers, data = self.owner.forward(self.command, self.path, headers, body)
            seen.status = status
            self._reply(status, data, out_headers)
            return
        seen.fault = fault.kind
        if fault.kind == "lost_reply":
            # The upstream stores the rows but the answer never arrives: the
            # ambiguous case that makes at-least-once delivery duplicate.
            seen.status = self.owner.forward(self.command, self.path, headers, body)[0]
            self.owner._release.wait(fault.hang_s)
            self.close_connection = True
            return
        if fault.kind == "hang":
            # Hold the request without an answer until released or hang_s passes,
            # then drop the connection: the client sees its own read timeout.
            self.owner._release.wait(fault.hang_s)
            self.close_connection = True
            return
        if fault.kind in _ERROR_BODIES:
            status, reason, text, message = _ERROR_BODIES[fault.kind]
            seen.status = status
            self._reply(status, error_body(status, reason, text, message))
            return
        if fault.kind == "status":
            seen.status = fault.status
            reason, text = ("internalError", "INTERNAL") if fault.status >= 500 else ("invalid", "INVALID_ARGUMENT")
            self._reply(fault.status, error_body(fault.status, reason, text, f"injected HTTP {fault.status}"))
            return
        self._row_errors(fault, seen, headers, body)

    def _row_errors(self, fault: Fault, seen: Seen, headers: Mapping[str, str], body: bytes) -> None:
        """What the real service does with bad rows in an insertAll request.

        skipInvalidRows=true: the other rows are stored (forwarded here) and the
        named rows come back in insertErrors. false: nothing is stored, the bad
        rows come back with their reason and every other row as ``stopped``.
        """
        request = json.loads(body)
        rows = request.get("rows", [])
        bad = {i: r for i, r in fault.rows.items() if 0 <= i < len(rows)}
        if request.get("skipInvalidRows"):
            errors = dict(bad)
            keep = [i for i in range(len(rows)) if i not in bad]
            if keep:
                forwarded = json.dumps({**request, "rows": [rows[i] for i in keep]}).encode()
                status, out_headers, data = self.owner.forward(self.command, self.path, headers, forwarded)
                if status != 200:
                    seen.status = status
                    self._reply(status, data, out_headers)
                    return
                # The upstream's own per-row errors, renumbered to the client's request.
                for err in json.loads(data).get("insertErrors", []):
                    errors[keep[int(err["index"])]] = err["errors"][0].get("reason", "invalid")
        else:
            errors = {i: bad.get(i, "stopped") for i in range(len(rows))}
        seen.status = 200
        self._reply(200, insert_errors_body(errors))

    def _reply(self, status: int, data: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        has_type = False
        for k, v in headers or []:
            has_type = has_type or k.lower() == "content-type"
            self.send_header(k, v)
        if not has_type:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle
