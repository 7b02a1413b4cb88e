"""A real SMTP server on loopback that keeps what it receives: the customers' inbox in tests.

What reached the inbox was sent, whatever a file or the ledger says, so "nothing sent twice" is
checked here. It can refuse chosen addresses (with ``bounce``, by default 550 5.1.1: a bad
address); answer 451 (try later) to the next ``fail_next`` messages, to fail a send task
mid-batch; end each session after ``session_limit`` messages (421, then closed), as relays
limiting messages per connection do; refuse new sessions (421) after ``sessions_left``, as a
relay going down; answer ``refuse_sender`` (a reply, say ``550 5.7.1 sender not verified``) to
every MAIL FROM, as a relay refusing the From address; take the next ``hang_up_next`` messages
and close the connection before answering (the relay had each one whole: a crash or a cut line
after queueing it); and answer ``refuse_message`` to a
message's DATA: one reply to every message, or a function of the message that words each reply
(naming the recipient, as Amazon SES does, or carrying a message id, as Gmail does) or takes the
message (None). Plain SMTP only: point an ``smtp`` connection at it with
``SmtpSink.connection()``.
"""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

# What ``refuse_message`` may hold: one reply for every message, or a function of the recipients
# and the message giving the reply, or None to take it.
MessageRefusal = str | Callable[[list[str], Message], str | None] | None


@dataclass(frozen=True)
class Received:
    """One message as one recipient received it."""

    to: str
    sender: str
    subject: str
    body: str
    contact_key: str | None  # the X-Leap-Contact-Key header the re-engagement example sets
    message_id: str | None  # the Message-ID header, when the sender set one
    at: float  # wall clock, seconds since the epoch
    tag: Any  # whatever the test set ``sink.tag`` to then (a simulated time, say)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def _reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        if not self.server.sink.open_session():
            self._reply("421 4.3.2 service not available, closing")
            return
        self._reply("220 leap-testing smtp sink")
        sender, recipients, accepted = "", list[str](), 0
        while line := self.rfile.readline(65536):
            verb = line[:4].decode("ascii", "replace").upper()
            argument = line.decode("utf-8", "replace").partition(":")[2].strip().strip("<>")
            if verb in ("HELO", "EHLO"):
                self._reply("250 sink")
            elif verb == "MAIL":
                refusal = self.server.sink.refuse_sender
                sender, recipients = "" if refusal else argument, []
                self._reply(refusal or "250 OK")
            elif verb == "RCPT":
                if argument in self.server.sink.refuse:
                    self._reply(self.server.sink.bounce)
                else:
                    recipients.append(argument)
                    self._reply("250 OK")
            elif verb == "DATA":
                self._reply("354 end with <CRLF>.<CRLF>")
                reply = self.server.sink.deliver(sender, recipients, self._data())
                if reply.startswith("250") and self.server.sink.hang_up():
                    return
                self._reply(reply)
                accepted += reply.startswith("250")
                if accepted == self.server.sink.session_limit:
                    self._reply("421 4.7.0 too many messages in this session, closing")
                    return
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

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink
        super().__init__(("127.0.0.1", 0), _Handler)


class SmtpSink:
    """``with SmtpSink() as sink:`` serves on ``sink.port``; ``sink.inbox`` is what arrived.

    :param log: also append each delivery to this file as a JSON line (kept after the test).
    """

    def __init__(self, log: Path | None = None) -> None:
        self.refuse: set[str] = set()
        self.bounce = "550 5.1.1 mailbox unavailable"  # the reply to a refused recipient
        self.refuse_sender: str | None = None  # the reply to every MAIL FROM, as "550 5.7.1 ..."
        self.refuse_message: MessageRefusal = None  # the reply to DATA, as "554 5.7.1 ..."
        self.fail_next = 0
        self.defer_after: int | None = None  # then every message is deferred (451): a quota
        self.session_limit: int | None = None
        self.hang_up_next = 0  # take this many more messages, each answered by a hang-up
        self.sessions_left: int | None = None  # then new sessions are refused (421)
        self.tag: Any = None
        self.log = log
        self._inbox: list[Received] = []
        self._lock = threading.Lock()
        self._server = _Server(self)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> SmtpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def inbox(self) -> list[Received]:
        with self._lock:
            return list(self._inbox)

    def open_session(self) -> bool:
        """Whether a new session is served (called by the server at each connection)."""
        with self._lock:
            if self.sessions_left is None:
                return True
            self.sessions_left -= 1
            return self.sessions_left >= 0

    def hang_up(self) -> bool:
        """Whether to close the connection instead of answering the message just taken."""
        with self._lock:
            self.hang_up_next, hang_up = max(0, self.hang_up_next - 1), self.hang_up_next > 0
            return hang_up

    def deliver(self, sender: str, recipients: list[str], data: bytes) -> str:
        """Keep one message (called by the server): the SMTP reply to its DATA."""
        with self._lock:
            over_quota = self.defer_after is not None and len(self._inbox) >= self.defer_after
            if self.fail_next > 0 or over_quota:
                self.fail_next = max(0, self.fail_next - 1)
                return "451 4.3.0 try again later"
            message = message_from_bytes(data)
            refusal = self.refuse_message
            if callable(refusal):
                refusal = refusal(list(recipients), message)
            if refusal:
                return refusal
            texts = [p for p in message.walk() if p.get_content_maintype() == "text"]
            body = texts[0].get_payload(decode=True) if texts else b""
            for recipient in recipients:
                received = Received(
                    to=recipient,
                    sender=sender,
                    subject=str(message.get("Subject", "")),
                    body=body.decode("utf-8", "replace") if isinstance(body, bytes) else "",
                    contact_key=message.get("X-Leap-Contact-Key"),
                    message_id=message.get("Message-ID"),
                    at=time.time(),
                    tag=self.tag,
                )
                self._inbox.append(received)
                if self.log is not None:
                    with self.log.open("a", encoding="utf-8") as handle:
                        handle.write(json.dumps(asdict(received), default=str) + "\n")
        return "250 queued"

    def connection(self) -> dict[str, Any]:
        """An ``smtp`` connection for this sink (no TLS, and no resends by the SMTP hook)."""
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
