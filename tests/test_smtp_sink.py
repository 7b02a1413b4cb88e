"""The testing tool's SMTP sink: what the re-engagement tests count as sent."""

from __future__ import annotations

import json
import smtplib
from email.message import EmailMessage
from pathlib import Path

import pytest

from airflow_provider_leap.testing.smtp import SmtpSink


def message(to: str, key: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "noreply@partner.example", to, "Hello"
    mail["X-Leap-Contact-Key"] = key
    mail.set_content("Continue here: https://connect.leap.energy?refId=a")
    return mail


def test_the_inbox_keeps_what_arrived_refuses_and_fails_on_demand(tmp_path: Path) -> None:
    with SmtpSink(log=tmp_path / "log.jsonl") as sink:
        sink.refuse = {"bounce@example.com"}
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=5) as client:
            sink.tag = "hour 1"
            client.send_message(message("pat@example.com", "lc1-a"))
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.send_message(message("bounce@example.com", "lc1-b"))
            sink.refuse_sender = "553 5.7.1 sender not allowed"
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.send_message(message("sam@example.com", "lc1-c"))
            assert (refused.value.smtp_code, refused.value.sender) == (
                553,
                "noreply@partner.example",
            )
            sink.refuse_sender = None
            sink.fail_next = 1
            with pytest.raises(smtplib.SMTPDataError) as failed:
                client.send_message(message("sam@example.com", "lc1-c"))
            assert failed.value.smtp_code == 451
            client.send_message(message("sam@example.com", "lc1-c"))  # the session goes on
    assert [(m.to, m.contact_key, m.tag) for m in sink.inbox] == [
        ("pat@example.com", "lc1-a", "hour 1"),
        ("sam@example.com", "lc1-c", "hour 1"),
    ]
    assert "connect.leap.energy" in sink.inbox[0].body
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [row["contact_key"] for row in logged] == ["lc1-a", "lc1-c"]
