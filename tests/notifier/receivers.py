"""Real local servers the channels talk to: an HTTP receiver for Slack-format and webhook posts
(verifying the signature the way a receiver would), a Google Sheets ``values.append`` server, and
aiosmtpd with STARTTLS. No oceanus code runs inside them."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import json
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers ``status`` (200 by default; set ``down_until`` to answer 503 until then)."""

    secret: bytes = b""
    status: int = 200
    down_until: float = 0.0
    #: Seconds each accepted post takes (deliveries in flight when a test kills the notifier).
    delay_s: float = 0.0
    posts: list[Received] = field(default_factory=list)
    bad_signatures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        """What a webhook receiver does: recompute the HMAC over timestamp + "." + raw body."""
        ts = headers.get("x-oceanus-timestamp", "")
        sig = headers.get("x-oceanus-signature", "")
        if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
            return False
        want = "sha256=" + hmac.new(self.secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, sig)

    def ids(self) -> list[str]:
        with self.lock:
            return [p.headers.get("idempotency-key", "") for p in self.posts]


@contextmanager
def http_receiver(receiver: Receiver) -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            if time.time() < receiver.down_until:
                self.send_response(503)
                self.end_headers()
                return
            if receiver.secret and not receiver.verify(headers, body):
                with receiver.lock:
                    receiver.bad_signatures += 1
                self.send_response(401)
                self.end_headers()
                return
            if receiver.delay_s:
                time.sleep(receiver.delay_s)
            if receiver.status == 200:
                with receiver.lock:
                    receiver.posts.append(Received(self.path, headers, body, time.time()))
            self.send_response(receiver.status)
            self.end_headers()
            self.wfile.write(b"ok" if receiver.status == 200 else b"no_service")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class FakeSheets:
    """``spreadsheets.values.append`` and ``spreadsheets.batchUpdate`` (addSheet), as Google documents them:
    400 INVALID_ARGUMENT "Unable to parse range" for a missing tab, 401 without a bearer token."""

    token: str
    sheets: dict[str, list[list[Any]]] = field(default_factory=lambda: {"Sheet1": []})
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _google_error(code: int, status: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()


@contextmanager
def sheets_server(fake: FakeSheets, spreadsheet_id: str) -> Iterator[FakeSheets]:
    append = re.compile(rf"^/v4/spreadsheets/{spreadsheet_id}/values/([^/?]+):append\?(.*)$")
    batch = f"/v4/spreadsheets/{spreadsheet_id}:batchUpdate"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            if self.headers.get("Authorization") != f"Bearer {fake.token}":
                return self.answer(401, _google_error(401, "UNAUTHENTICATED", "Request had invalid credentials."))
            fake.requests.append((self.path, body))
            if self.path == batch:
                title = body["requests"][0]["addSheet"]["properties"]["title"]
                if title in fake.sheets:
                    return self.answer(
                        400,
                        _google_error(
                            400,
                            "INVALID_ARGUMENT",
                            f'Invalid requests[0].addSheet: A sheet with the name "{title}" already exists.',
                        ),
                    )
                fake.sheets[title] = []
                return self.answer(
                    200,
                    json.dumps(
                        {
                            "spreadsheetId": spreadsheet_id,
                            "replies": [{"addSheet": {"properties": {"sheetId": len(fake.sheets), "title": title}}}],
                        }
                    ).encode(),
                )
            m = append.match(self.path)
            if not m:
                return self.answer(404, _google_error(404, "NOT_FOUND", "Requested entity was not found."))
            rng = urllib.parse.unquote(m.group(1))
            query = urllib.parse.parse_qs(m.group(2))
            if query.get("valueInputOption") not in (["RAW"], ["USER_ENTERED"]):
                return self.answer(400, _google_error(400, "INVALID_ARGUMENT", "valueInputOption is required"))
            tab_m = re.fullmatch(r"'((?:[^']|'')+)'!A1", rng)
            tab = tab_m.group(1).replace("''", "'") if tab_m else ""
            if tab not in fake.sheets or body.get("range") != rng or body.get("majorDimension", "ROWS") != "ROWS":
                return self.answer(400, _google_error(400, "INVALID_ARGUMENT", f"Unable to parse range: {rng}"))
            rows = fake.sheets[tab]
            start = len(rows) + 1
            rows.extend(body["values"])
            width = max(len(r) for r in body["values"])
            updated = f"'{tab}'!A{start}:{chr(64 + min(width, 26))}{len(rows)}"
            return self.answer(
                200,
                json.dumps(
                    {
                        "spreadsheetId": spreadsheet_id,
                        "tableRange": f"'{tab}'!A1:A{start - 1}" if start > 1 else "",
                        "updates": {
                            "spreadsheetId": spreadsheet_id,
                            "updatedRange": updated,
                            "updatedRows": len(body["values"]),
                            "updatedColumns": width,
                            "updatedCells": sum(len(r) for r in body["values"]),
                        },
                    }
                ).encode(),
            )

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key (PEM), made with ``cryptography``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class Mailbox:
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    port: int = 0


@contextmanager
def smtp_server(directory: Path) -> Iterator[tuple[Mailbox, Path]]:
    """aiosmtpd on a free port, STARTTLS required, with a fresh self-signed certificate (returned as the CA)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP, Envelope, Session

    from tests.support.servers import free_port

    cert, key = self_signed_cert(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    box = Mailbox(port=free_port())

    class Handler:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            data = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
            box.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), data))
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=box.port, tls_context=context, require_starttls=True)
    controller.start()
    try:
        yield box, cert
    finally:
        controller.stop()
