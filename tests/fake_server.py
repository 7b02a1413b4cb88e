"""A tiny HTTP server each test scripts itself: server misbehaviour the emulator does not play
(ignored filters, unknown page shapes, dripping bodies, redirects, a self-signed certificate)."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Seen:
    """A request as the server received it."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Reply:
    """What to answer: ``body`` bytes or JSON; ``pause`` seconds between ``chunks`` bytes of the
    body, or, with ``drip_head``, between single bytes of the status line and headers."""

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    pause: float = 0.0
    chunks: int = 0
    drip_head: bool = False
    hang_up: bool = False  # close the connection without an answer

    def encoded(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


Respond = Callable[[Seen], Reply]


class FakeLeap:
    """Answers every request with ``respond(seen)`` and logs them; run it with ``fake_leap``."""

    def __init__(self, respond: Respond, certificate: Path | None = None) -> None:
        self.respond = respond
        self.requests: list[Seen] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = urlsplit(self.path)
                seen = Seen(
                    self.command, parts.path, parse_qsl(parts.query), dict(self.headers), body
                )
                fake.requests.append(seen)
                reply = fake.respond(seen)
                if reply.hang_up:
                    self.close_connection = True
                    return
                body = reply.encoded()
                self.send_response(reply.status)
                for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                if reply.drip_head:
                    head, self._headers_buffer = b"".join(self._headers_buffer) + b"\r\n", []
                    for byte in range(len(head)):
                        self.wfile.write(head[byte : byte + 1])
                        self.wfile.flush()
                        time.sleep(reply.pause)
                else:
                    self.end_headers()
                step = reply.chunks or len(body) or 1
                for start in range(0, len(body), step):
                    self.wfile.write(body[start : start + step])
                    self.wfile.flush()
                    time.sleep(reply.pause)

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certificate)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"


@contextmanager
def fake_leap(respond: Respond, certificate: Path | None = None) -> Iterator[FakeLeap]:
    """A ``FakeLeap`` serving on its own thread while the block runs."""
    fake = FakeLeap(respond, certificate)
    threading.Thread(target=fake.server.serve_forever, daemon=True).start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


def self_signed_certificate(folder: Path) -> Path:
    """A PEM file with a key and a self-signed certificate for 127.0.0.1 (needs ``openssl``)."""
    pem = folder / "self-signed.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(pem), "-out", str(folder / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    pem.write_text(pem.read_text() + (folder / "cert.pem").read_text())
    return pem


def page(
    records: list[dict[str, Any]], token: str | None = None, key: str = "connections"
) -> Reply:
    """A Connect page in the adopted shape."""
    body: dict[str, Any] = {key: records}
    if token is not None:
        body["nextPageToken"] = token
    return Reply(body=body)


def record(
    ref_id: str, status: str = "COMPLETED", when: str = "2026-01-01T00:00:00Z"
) -> dict[str, Any]:
    """A small Connect record."""
    return {
        "id": f"CAISO_x_{ref_id}",
        "transmission_region": "CAISO",
        "ref_id": ref_id,
        "start_date_time_utc": when,
        "last_interaction_date_time_utc": when,
        "connection_status": status,
        "utility_connections": [],
        "agreements": {},
    }


def active_window_records() -> tuple[list[dict[str, Any]], set[str]]:
    """Records around a cutoff of 2026-03-10, and the ref_ids active since then (review s14c)."""
    before, after = "2026-03-01T00:00:00Z", "2026-03-12T00:00:00Z"
    rows = {  # ref_id: (start, last interaction); None: null, "-": no such key
        "touched": (before, after),
        "touched-long-ago": (before, before),
        "opened-only": (after, None),  # NOT_STARTED with no last interaction: the one missed
        "opened-no-key": (after, "-"),
        "opened-long-ago": (before, None),
        "unreadable-last": (after, "soon"),
        "unreadable-both": ("?", "?"),  # malformed: read once, for triage to report
    }
    records = []
    for ref_id, (start, last) in rows.items():
        row = record(ref_id, "NOT_STARTED", start)
        if last == "-":
            del row["last_interaction_date_time_utc"]
        else:
            row["last_interaction_date_time_utc"] = last
        records.append(row)
    active = {"touched", "opened-only", "opened-no-key", "unreadable-last", "unreadable-both"}
    return records, active
