"""A real SMTP server on loopback that keeps what it receives: the customers' inbox in tests.

It can refuse chosen addresses (550, a bad address) and answer 451 (try later) to the next
``fail_next`` messages, to fail a send task mid-batch.
"""

from __future__ import annotations

import email
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Received:
    to: str
    subject: str
    body: str
    contact_key: str | None
    at: Any  # the test's notion of "now" when it arrived (a simulated time, say)


@dataclass
class _Handler:
    refuse: set[str] = field(default_factory=set)
    fail_next: int = 0
    now: Any = None
    inbox: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address in self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return "451 4.3.0 try again later"
            message = email.message_from_bytes(envelope.content)
            body = (
                message.get_payload(0).get_payload(decode=True).decode()
                if message.is_multipart()
                else ""
            )
            for to in envelope.rcpt_tos:
                self.inbox.append(
                    Received(
                        to, str(message["Subject"]), body, message["X-Leap-Contact-Key"], self.now
                    )
                )
        return "250 OK"


class SmtpSink:
    """``with SmtpSink() as sink:`` then point an ``smtp`` connection at ``sink.port``."""

    def __init__(self) -> None:
        self.handler = _Handler()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> SmtpSink:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    @property
    def inbox(self) -> list[Received]:
        return self.handler.inbox

    def connection(self) -> dict[str, Any]:
        """An ``smtp_default`` connection for this sink (no TLS, no hook-level resends)."""
        return {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": self.port,
            "extra": {
                "from_email": "noreply@partner.example",
                "disable_tls": True,
                "disable_ssl": True,
                "retry_limit": 0,
                "timeout": 10,
            },
        }
