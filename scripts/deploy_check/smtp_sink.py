"""A loopback SMTP server that accepts every message and writes one JSON line per delivery.

The re-engagement example emails customers through Airflow's ``smtp_default`` connection; this
sink lets the deployment check count what was really sent, per recipient and time, which is what
"nothing sent twice" is about (an outbox file can be rewritten; a sent email cannot). Plain SMTP
only: the connection sets ``disable_tls`` and ``disable_ssl``.
"""

from __future__ import annotations

import json
import socketserver
import threading
import time
from email import message_from_bytes
from pathlib import Path
from typing import Any


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def _reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self._reply("220 leap-deploy-check sink")
        sender, recipients = "", list[str]()
        while line := self.rfile.readline(65536):
            verb = line[:4].decode("ascii", "replace").upper()
            if verb in ("HELO", "EHLO"):
                self._reply("250 sink")
            elif verb == "MAIL":
                sender, recipients = line.decode().split(":", 1)[1].strip(), list[str]()
                self._reply("250 OK")
            elif verb == "RCPT":
                recipients.append(line.decode().split(":", 1)[1].strip().strip("<>"))
                self._reply("250 OK")
            elif verb == "DATA":
                self._reply("354 end with <CRLF>.<CRLF>")
                self.server.deliver(sender, recipients, self._data())
                self._reply("250 queued")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:  # RSET, NOOP and anything else
                self._reply("250 OK")

    def _data(self) -> bytes:
        lines = []
        while (line := self.rfile.readline(65536)) not in (b".\r\n", b".\n", b""):
            lines.append(line[1:] if line.startswith(b"..") else line)
        return b"".join(lines)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, log: Path) -> None:
        self.log = log
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def deliver(self, sender: str, recipients: list[str], data: bytes) -> None:
        message = message_from_bytes(data)
        row = {
            "at": time.time(),
            "from": sender,
            "subject": message.get("Subject", ""),
            "contact_key": message.get("X-Leap-Contact-Key"),  # the example's idempotency key
        }
        with self.lock, self.log.open("a", encoding="utf-8") as handle:
            for recipient in recipients:
                handle.write(json.dumps({**row, "to": recipient}) + "\n")


class SmtpSink:
    """``with SmtpSink(path) as sink:`` serves on ``sink.port`` until the block ends."""

    def __init__(self, log: Path) -> None:
        self._server = _Server(log)
        self.log = log
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> SmtpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def deliveries(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]
