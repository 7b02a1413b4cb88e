"""What the two re-engagement example DAGs share: one policy, the same channels, one ledger.

``leap_connect_reengagement`` (hourly) and ``leap_connect_events`` (on Leap's webhooks) both
hand due contacts to the senders below, under the same channel names and so the same delivery
ledger (``[leap] ledger_url``): whichever DAG finds a stall first sends its message, and the
other finds it already sent. Not a DAG file (see ``.airflowignore``); it sits beside the DAGs
so that both import it from the DAGs folder.

Where the output goes, so the DAGs run anywhere:
- messages: email through the ``smtp_default`` connection to the addresses in the
  ``leap_contacts`` Variable (a JSON map ref_id -> email); a customer without an address is
  counted and reported. Without ``smtp_default``, messages go to an outbox of JSON lines under
  ``LEAP_OUTPUT_DIR`` (default ``$AIRFLOW_HOME/leap_output``).
- CRM: each contact POSTed as JSON to the ``leap_crm`` HTTP connection (``Idempotency-Key`` =
  the contact key); without it, JSON lines under ``LEAP_OUTPUT_DIR``.
- Connect links: the ``leap_default`` connection's extras ``connect_account`` (required: the
  messages ask the customer to continue, so a run without it fails before sending) and
  ``connect_variant``; a staging connection also needs ``connect_base_url``. A customer whose
  region cannot be known (``models.record_region``) gets no message without the link: the send
  is reported for a person (``ContactUnreachable``) and tried again next run.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from email.utils import parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from airflow.sdk import task

from airflow_provider_leap.contact import Contact, ContactPolicy
from airflow_provider_leap.delivery import ChannelDown, ContactUnreachable, SendUnconfirmed
from airflow_provider_leap.models import record_region
from airflow_provider_leap.triage import UNKNOWN_ERROR_CODE, Bucket, Reason, format_reason
from airflow_provider_leap.webhooks import REFRESH_LANDED_BY

if TYPE_CHECKING:
    import smtplib

log = logging.getLogger(__name__)

# Hourly, once Leap's refresh of the hour has landed.
HOURLY_SCHEDULE = f"{REFRESH_LANDED_BY.seconds // 60} * * * *"

POLICY = ContactPolicy()  # first contact 1 h after a stall, reminders at 1, 3 and 7 days

CONTINUE = "Continue here: "  # before the customer's Connect link, the one link in a message

# Wording per bucket, then per (bucket, reason) where an error code deserves its own message.
# Error codes beyond USER_CANCELED are illustrative. ``{utilities}`` is the utilities the
# wording is about ("A or B" when any one will do), ``{agreements}`` the forms by name and
# ``{forms}`` "form" or "forms" by their number.
MESSAGES: dict[str, tuple[str, str]] = {
    "not_started": (
        "Finish connecting your utility account",
        "You opened your enrolment link but have not logged into your utility yet. "
        "It takes two minutes to pick up where you left off.",
    ),
    "utility_not_connected": (
        "Finish connecting {utilities}",
        "We still need access to {utilities}. Please log in to finish.",
    ),
    "utility_error": (
        "We could not connect your utility account",
        "Connecting {utilities} did not finish. Your link still works; if the utility keeps "
        "turning you away, contact us and we will help.",
    ),
    "utility_error/error:USER_CANCELED": (
        "Did you mean to stop?",
        "You cancelled while connecting {utilities}. If that was a mistake, your link still works.",
    ),
    "utility_error/error:INVALID_CREDENTIALS": (
        "Check your utility login",
        "Your utility did not accept the username or password for {utilities}. Reset it on the "
        "utility's website, then try again.",
    ),
    "agreements_pending": (
        "Sign the last {forms} to finish enrolling",
        "Your utility is connected. Please complete {agreements}.",
    ),
    "other_utility": (
        "Did you connect the right utility?",
        # Not "instead of": a commercial customer may have connected the others asked for too.
        "One of the utilities you connected is not one we asked for. We still need access to "
        "{utilities}: if you have an account with {utilities}, please connect it too.",
    ),
}


def output_dir(kind: str) -> Path:
    base = os.environ.get("LEAP_OUTPUT_DIR") or os.path.join(
        os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "leap_output"
    )
    path = Path(base) / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def _append_line(path: Path, row: dict[str, Any]) -> None:
    """One JSON line, flushed before the ledger records the send."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def _connection_exists(conn_id: str) -> bool:
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(conn_id)
    except Exception:  # not defined (the SDK raises its own not-found error)
        return False
    return True


def _names(names: Iterable[object], glue: str = "and") -> str:
    """Utility names for a sentence, each once, on one line (a line break in a subject would end
    the email's headers); a name Leap did not send (``UNKNOWN``) is left out."""
    named = [" ".join(str(n).split()) for n in names if n and n != UNKNOWN_ERROR_CODE]
    named = list(dict.fromkeys(n for n in named if n))
    if len(named) < 2:
        return named[0] if named else "your utility"
    return f"{', '.join(named[:-1])} {glue} {named[-1]}"


def _form(field: str) -> str:
    """An agreement field as the customer knows the form: ``demand_response_participation_
    agreement_status`` -> "the demand response participation agreement" (new fields too)."""
    return "the " + field.removesuffix("_status").replace("_", " ").strip()


def _wording_key(bucket: str, reason: str) -> str:
    """The key in ``MESSAGES`` of the most specific wording of (bucket, reason)."""
    key = f"{bucket}/{reason}"
    return key if key in MESSAGES else bucket


def _wording(bucket: str, reason: str) -> tuple[str, str]:
    """The most specific wording of (bucket, reason)."""
    key = _wording_key(bucket, reason)
    if key in MESSAGES:
        return MESSAGES[key]
    # a failed send, then a person's: never a message without words
    raise LookupError(f"no wording for bucket {bucket!r}: add one to MESSAGES")


def _utility_errors(item: Mapping[str, Any], body: str) -> str:
    """The first error code's body about the utilities with that code, then each other wording
    about its utilities (codes sharing a wording share a sentence), then the utilities still
    missing without an error: as "also" when all are needed, as an alternative when one will do."""
    failed: Mapping[str, Any] = item.get("error_codes") or {}
    by_wording: dict[str, list[str]] = {body: []}
    for index, (name, code) in enumerate(failed.items()):
        reason = format_reason(Reason.ERROR, str(code))
        wording = body if index == 0 else _wording(Bucket.UTILITY_ERROR, reason)[1]
        by_wording.setdefault(wording, []).append(name)
    sentences = [wording.format(utilities=_names(names)) for wording, names in by_wording.items()]
    waiting = [n for n in item.get("utilities") or () if n not in failed]
    if not item.get("any_one"):
        if waiting:
            sentences.append(f"We also still need access to {_names(waiting)}.")
    elif waiting:
        named = any(n != UNKNOWN_ERROR_CODE for n in waiting)
        instead = _names(waiting, "or") if named else "another of your utilities"
        sentences.append(f"Connecting {instead} instead will do too.")
    elif sum(1 for n in failed if n != UNKNOWN_ERROR_CODE) > 1:
        sentences.append("Connecting any one of them is enough.")
    return " ".join(sentences)


def render_message(contact: Contact, link: str | None) -> dict[str, str]:
    """Subject, body (the most specific wording of (bucket, reason), the step, the link) and the
    link alone ("" for none)."""
    item = contact.item
    subject, body = _wording(contact.bucket, contact.reason)
    utilities = _names(item.get("utilities") or (), "or" if item.get("any_one") else "and")
    agreements = [_form(str(f)) for f in item.get("agreements") or ()]
    values = {
        "utilities": utilities,
        "agreements": _names(agreements) if agreements else "the remaining forms",
        "forms": "form" if len(set(agreements)) == 1 else "forms",
    }
    subject = subject.format(**values)
    if contact.bucket == Bucket.UTILITY_ERROR:  # each code's advice about its own utilities
        body = _utility_errors(item, body)
    else:
        body = body.format(**values)
    if not contact.first:
        subject = f"Reminder: {subject}"
    if link:
        body += f" {CONTINUE}{link}"
    if contact.also:  # other regions' records: one COMPLETED and the customer hears no more
        body += " (You started more than one enrolment with us: finishing this one is enough.)"
    if contact.final and not contact.first:
        body += " This is our last reminder."
    return {"subject": subject, "body": body, "link": link or ""}


def as_html(message: Mapping[str, str]) -> str:
    """A message's body as the HTML the email carries: Leap's values escaped (a utility named
    ``A <B>`` shows as typed), the Connect link clickable and nothing else (an address inside
    Leap's data stays text)."""
    escaped = html.escape(message["body"], quote=False)
    link = message["link"]
    if not link:
        return escaped
    shown = CONTINUE + html.escape(link, quote=False)
    head, found, tail = escaped.rpartition(shown)
    anchor = f'{CONTINUE}<a href="{html.escape(link)}">{html.escape(link, quote=False)}</a>'
    return head + anchor + tail if found else escaped


# This many messages deferred (an SMTP 4xx reply) since the last one the relay took: it is
# throttling or failing, not each recipient, so the run stops instead of charging everyone.
RELAY_DEFERRALS = 3
# This many messages in a row refused (5xx) with the same reply, once addresses, ids and numbers
# are left out (``_refusal``): a refusal of us, not of each recipient. Of one wording, a filter
# on it, maybe: that wording is not sent again in the run (its customers listed as unreachable,
# not charged), and the other buckets go on (review s17c F1: one bucket's refused wording held
# every bucket after it for a day). Of two, the sender is refused: the run stops. Replies about
# the recipient (``RECIPIENT_STATUS``) count in no streak.
RELAY_REFUSALS = 2
# RFC 3463 enhanced status codes (subject.detail) about the recipient's mailbox: bad mailbox,
# domain or address syntax, moved, not found (Exchange's 5.1.10), disabled, full.
RECIPIENT_STATUS = frozenset({"1.1", "1.2", "1.3", "1.6", "1.10", "2.1", "2.2"})


class Streak:
    """Messages that failed in a row for one reason about the channel, not the customers.

    When it is long enough the sender raises ``ChannelDown``: the run stops, and the streak's
    earlier messages stay charged. That is what makes progress: a streak that is about those
    messages after all charges its customers one per try, those not charged yet first, so the
    runs move past them; a stop that charged nobody would come at the same customers in every
    run, for ever. So a streak of 2 costs one attempt per try, whatever the channel's outage.
    ``wordings``: what the streak's messages said (see ``RELAY_REFUSALS``).
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.reason, self.count = limit, "", 0
        self.wordings: set[str] = set()

    def add(self, reason: str = "", wording: str = "") -> bool:
        """One more (a new streak if ``reason`` differs); whether the streak is long enough."""
        if reason != self.reason:
            self.clear()
            self.reason = reason
        self.count += 1
        self.wordings.add(wording)
        return self.count >= self.limit

    def clear(self) -> None:
        self.reason, self.count = "", 0
        self.wordings = set()


class EmailSender:
    """``send`` for the email channel: one SMTP session per task run, entered by the operator."""

    def __enter__(self) -> EmailSender:
        from airflow.sdk import Variable
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_leap.hooks.leap import LeapException, LeapHook

        self.addresses: dict[str, str] = Variable.get(
            "leap_contacts", default={}, deserialize_json=True
        )
        self.hook = LeapHook()
        # The messages ask the customer to continue: without a link that works, none is sent,
        # nobody is charged, and the task fails without retries (they would not fix a setting).
        try:
            self.hook.connect_url("link-check", "PJM")
        except LeapException as exc:
            raise AirflowFailException(f"No Connect links: {exc}") from exc
        self.smtp: Any = None
        if _connection_exists("smtp_default"):
            self.smtp = _smtp_session()  # a relay down at the start fails the task at once
        self.outbox = output_dir("outbox") / "messages.jsonl"
        self.deferred = Streak(RELAY_DEFERRALS)  # since the relay last took a message
        self.refused = Streak(RELAY_REFUSALS)  # in a row, with the same reply
        self.refused_wordings: dict[str, str] = {}  # wording -> the relay's refusal of it
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        if self.smtp is not None:
            with contextlib.suppress(Exception):  # a session the server has closed already
                self.smtp.__exit__(None, None, None)

    def link(self, contact: Contact) -> str:
        """The customer's Connect link."""
        region = record_region(contact.item)
        if region is None:  # the link is what the customer acts on: a person decides
            raise ContactUnreachable(
                f"no Connect link for {contact.ref_id}: Leap's record has no "
                "transmission_region, and its id names no region Leap lists"
            )
        return self.hook.connect_url(contact.ref_id, region)

    def __call__(self, contact: Contact) -> None:
        message = render_message(contact, self.link(contact))
        if self.smtp is None:
            _append_line(
                self.outbox, {"contact_key": contact.contact_key, **_row(contact), **message}
            )
            return
        address = self.addresses.get(contact.ref_id)
        if not address:
            raise ContactUnreachable(f"no address for {contact.ref_id} in leap_contacts")
        wording = _wording_key(contact.bucket, contact.reason)
        if wording in self.refused_wordings:
            raise self._refused(wording)
        try:
            self._send_in_session(address, message, contact)
        except Exception as exc:
            self._check_relay(exc, wording)
            raise
        self.deferred.clear()
        self.refused.clear()

    def _check_relay(self, exc: Exception, wording: str) -> None:
        """Raise ``ChannelDown`` when the relay's answer is about us, not the recipient."""
        import smtplib

        if isinstance(exc, smtplib.SMTPSenderRefused) and 400 <= exc.smtp_code < 500:
            raise ChannelDown(  # review s17d F3: a throttle or quota charged customers
                f"the relay defers our messages at MAIL FROM, answering {_reply(exc)}: "
                "throttled or over a quota, not the recipients"
            ) from exc
        if _sender_refused(exc):
            raise ChannelDown(
                f"the relay refuses our sender address {exc.sender}, answering {_reply(exc)}: "
                "check the smtp_default connection's from_email and the relay's sender "
                "verification"
            ) from exc
        if _about_recipient(exc):  # that customer's failed attempt, and no news of the relay
            return
        if _deferred(exc):
            self.refused.clear()
            if self.deferred.add():
                raise ChannelDown(
                    f"the relay answered {_reply(exc)}, deferring {self.deferred.limit} messages "
                    "since it last took one: throttled or failing, not the recipients"
                ) from exc
            return
        refusal = _refusal(exc)
        if refusal and _OUR_LIMITS.search(refusal):  # review s17d F5: not the wording
            raise ChannelDown(
                f"the relay refuses our messages, answering {_reply(exc)}: a sending quota or "
                "an account setting of ours (a sandbox?), not the recipients nor the wording"
            ) from exc
        if not refusal:
            self.refused.clear()
        elif self.refused.add(refusal, wording) and self.refused.wordings == {wording}:
            self.refused_wordings[wording] = _reply(exc)
            log.warning("The relay refuses messages worded as MESSAGES[%r]: %s", wording, exc)
            raise self._refused(wording) from exc  # this one is not charged either
        elif self.refused.count >= self.refused.limit:
            raise ChannelDown(
                f"the relay answered {_reply(exc)}, refusing {self.refused.count} messages in a "
                "row alike (addresses and ids aside) worded as "
                f"{', '.join(sorted(self.refused.wordings))}, so it refuses us, not the "
                "recipients: check the sender address and its verification at the relay"
            ) from exc

    def _refused(self, wording: str) -> ContactUnreachable:
        return ContactUnreachable(
            f"not sent: the relay refused {RELAY_REFUSALS} messages in a row worded as "
            f"MESSAGES[{wording!r}] this run, answering {self.refused_wordings[wording]}: check "
            "that wording against the relay's content filter"
        )

    def _send_in_session(self, address: str, message: dict[str, str], contact: Contact) -> None:
        try:
            self._send(address, message, contact)
        except Exception as exc:
            if not _session_ended(exc):
                raise
            # Relays end a session after so many messages: this one was not taken, so it goes
            # on a new session, once (a second failure is the attempt's), and the customers
            # after it are not each charged an attempt on a dead session. No new session: the
            # channel is down, and the rest wait for a retry.
            self._close()
            try:
                self.smtp = _smtp_session()
            except Exception as down:
                raise ChannelDown(f"SMTP session ended; reconnecting: {down!r}") from down
            self._send(address, message, contact)

    def _send(self, address: str, message: dict[str, str], contact: Contact) -> None:
        try:
            self.smtp.send_email_smtp(
                to=address,
                subject=message["subject"],
                html_content=as_html(message),
                custom_headers={
                    "X-Leap-Contact-Key": contact.contact_key,
                    "Message-ID": message_id(contact.contact_key, self.smtp.from_email),
                },
            )
        except Exception as exc:
            if _unanswered(exc):  # the next message finds the session gone and opens another
                raise SendUnconfirmed(
                    f"the connection to the relay was lost after it had the whole message, "
                    f"before its answer ({exc}): it may have been sent, so it is not sent again"
                ) from exc
            raise


def message_id(contact_key: str, sender: str | None) -> str:
    """One Message-ID per contact key, in the sender's domain: a message that goes out twice
    after all (a relay that took it and answered an error) is the same message to mail systems
    that drop duplicates of a Message-ID, as some mailbox providers do."""
    domain = parseaddr(sender or "")[1].rpartition("@")[2] or "localhost"
    return f"<{contact_key}@{domain}>"


def _smtp_session() -> Any:
    """An open session of the ``smtp_default`` connection, sending each message once whatever
    the connection's ``retry_limit`` (the hook's own resend, after a lost answer, would hide the
    loss from ``_unanswered`` and send the message twice; the ledger does the retrying)."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    class OnceSmtpHook(SmtpHook):
        @property
        def smtp_retry_limit(self) -> int:
            return 0

    return OnceSmtpHook(smtp_conn_id="smtp_default").__enter__()


def _unanswered(exc: Exception) -> bool:
    """Whether the session was lost while waiting for the relay's answer to a message it had
    whole (smtplib's ``data`` had sent it, end mark and all): the relay may have taken it. Read
    from the traceback, as smtplib raises the same error for a session lost before the message
    (a relay closing idle sessions), which is safe to send again."""
    import smtplib

    if not isinstance(exc, smtplib.SMTPServerDisconnected):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        if tb.tb_frame.f_code is smtplib.SMTP.data.__code__:
            sent = "q" in tb.tb_frame.f_locals  # the message as sent (smtplib 3.10 to 3.13)
            return sent and tb.tb_next.tb_frame.f_code is smtplib.SMTP.getreply.__code__
        tb = tb.tb_next
    return False


def _session_ended(exc: Exception) -> bool:
    """Whether the SMTP server closed the session instead of taking the message: a 421 reply at
    any step, or the connection gone before the relay had the whole message (after it:
    ``_unanswered``)."""
    import smtplib

    return isinstance(exc, smtplib.SMTPServerDisconnected) or getattr(exc, "smtp_code", 0) == 421


def _sender_refused(exc: Exception) -> TypeGuard[smtplib.SMTPSenderRefused]:
    """Whether the relay refused our sender address (a 5xx to MAIL FROM): the same for every
    message, so the channel's, not the customer's. A 552 there is this message's size (RFC 1870),
    and a 5xx to RCPT TO or after DATA may be this recipient or this message's content: those
    stay the attempt's."""
    import smtplib

    return (
        isinstance(exc, smtplib.SMTPSenderRefused)
        and 500 <= exc.smtp_code < 600
        and exc.smtp_code != 552
    )


_ENHANCED = re.compile(r"\s*([245])\.(\d{1,3}\.\d{1,3})\b")  # RFC 3463: class.subject.detail
_ENCLOSED = re.compile(r"<[^>]*>|\[[^\]]*\]")


def _replies(exc: Exception) -> list[tuple[int, str]]:
    """The SMTP server's replies (code, text) behind a failed send; [] for any other failure."""
    import smtplib

    pairs: list[tuple[int, bytes | str]]
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        pairs = list(exc.recipients.values())
    elif isinstance(exc, smtplib.SMTPResponseException):
        pairs = [(exc.smtp_code, exc.smtp_error)]
    else:
        return []
    return [
        (code, error.decode("utf-8", "replace") if isinstance(error, bytes) else error)
        for code, error in pairs
    ]


def _reply(exc: Exception) -> str:
    """The reply as the server wrote it, on one line: what a person reads."""
    return " / ".join(f"{code} {' '.join(text.split())}" for code, text in _replies(exc))


def _about_recipient(exc: Exception) -> bool:
    """Whether every reply is about the recipient's mailbox: its enhanced status code (in
    ``RECIPIENT_STATUS``), or, without one, its words (review s17c F5: "550 No such user here"
    twice in a row read as a relay refusing us)."""
    replies = _replies(exc)
    return bool(replies) and all(_about_mailbox(text) for _, text in replies)


def _about_mailbox(reply: str) -> bool:
    match = _ENHANCED.match(reply)
    return match[2] in RECIPIENT_STATUS if match else _NO_MAILBOX.search(reply) is not None


# A reply without an enhanced status code saying the mailbox does not exist (not RFC 5321's
# stock "mailbox unavailable", which relays answer for a policy refusal of us too: s17d F1).
_NO_MAILBOX = re.compile(
    r"no such (user|mailbox|recipient|address)|(user|recipient|mailbox|address) (unknown|not "
    r"found|does not exist|doesn't exist)|unknown (user|recipient|mailbox)",
    re.IGNORECASE,
)


# A refusal of any message we send, whatever it says and to whom: a sending quota or rate of
# ours (Microsoft 365's SubmissionQuotaExceeded), or an account that may send to verified
# addresses only (Amazon SES's sandbox: "Email address is not verified").
_OUR_LIMITS = re.compile(r"quota|rate limit|limit (exceeded|reached)|not verified")


def _refusal(exc: Exception) -> str:
    """A 5xx reply refusing a message, reduced to what it would say of any message ("" for
    anything else): its status codes, then its words in lower case without addresses, what
    ``<...>`` or ``[...]`` enclose, or words with a digit (message ids, IP addresses, regions).
    So Amazon SES's "Email address is not verified ...: <recipient>" and Gmail's "... <id> -
    gsmtp" read the same message after message."""
    replies = _replies(exc)
    if not replies or not all(500 <= code < 600 for code, _ in replies):
        return ""
    joined = " / ".join(text for _, text in replies)
    enhanced = _ENHANCED.match(joined)
    words = _ENCLOSED.sub(" ", joined).lower().split()
    kept = [w for w in words if "@" not in w and not any(c.isdigit() for c in w)]
    codes = [str(replies[0][0]), *([enhanced[0].strip()] if enhanced else [])]
    return " ".join([*codes, *kept])


def _deferred(exc: Exception) -> bool:
    """Whether the SMTP server deferred the message (a 4xx reply: try again later)."""
    replies = _replies(exc)
    return bool(replies) and all(400 <= code < 500 for code, _ in replies)


def _row(contact: Contact) -> dict[str, Any]:
    return {
        "ref_id": contact.ref_id,
        "stall": contact.stall,
        "step": contact.step,
        "bucket": contact.bucket,
        "reason": contact.reason,
        "transmission_region": record_region(contact.item),
    }


class CrmSender:
    """``send`` for the CRM channel: the contact key is the upsert key.

    A CRM that cannot be reached (the request never left: connection refused, no such host,
    no answer while connecting, its certificate refused) or refuses our credentials (401)
    stops the run at once (``ChannelDown``: nobody is charged). A connection dropped once the
    record was sent is that record's failed attempt (one that breaks the CRM), but the second
    in a row stops the run too (it drops every record). 403, 429, a 5xx or a timeout is the
    record's failed attempt, and the operator stops the run when they come in a row (a record
    that breaks the CRM costs only its customer, or that bucket's). Any other 4xx (400, 404,
    409, 422) is about the record: that customer's failed attempt.
    """

    def __enter__(self) -> CrmSender:
        self.url: str | None = None
        if _connection_exists("leap_crm"):
            from airflow.sdk import BaseHook

            self.url = str(BaseHook.get_connection("leap_crm").host)
        self.records = output_dir("crm") / "records.jsonl"
        self.dropped = 0  # requests in a row the CRM dropped after they were sent
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __call__(self, contact: Contact) -> None:
        row = {
            "contact_key": contact.contact_key,
            **_row(contact),
            "leap_id": contact.item.get("id"),
        }
        if self.url is None:
            _append_line(self.records, row)
            return
        import requests

        try:
            response = requests.post(
                self.url, json=row, headers={"Idempotency-Key": contact.contact_key}, timeout=30
            )
        except requests.ConnectionError as exc:
            if _never_sent(exc):
                raise ChannelDown(f"the CRM at {self.url} cannot be reached: {exc}") from exc
            self.dropped += 1  # on this record (review s17c F3: it stopped every run, for a month)
            if self.dropped > 1:  # or on every record (review s17d F4: each was charged)
                raise ChannelDown(
                    f"the CRM at {self.url} dropped {self.dropped} requests in a row: {exc}"
                ) from exc
            raise
        self.dropped = 0
        if response.status_code == 401:
            raise ChannelDown(
                f"the CRM at {self.url} refuses our credentials: it answered 401 "
                f"{response.reason}: {response.text[:200]}"
            )
        response.raise_for_status()


def _never_sent(exc: Exception) -> bool:
    """Whether a ``requests`` connection error came before the request went out."""
    import requests
    from urllib3.exceptions import NewConnectionError  # refused, or no such host

    if isinstance(exc, (requests.ConnectTimeout, requests.exceptions.SSLError)):
        return True
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    return isinstance(reason, NewConnectionError)


def _senders(dag: Any) -> list[str]:
    """The DAG's LeapContactOperator tasks, whatever their ids (one per channel)."""
    from airflow_provider_leap.operators.contact import LeapContactOperator

    return sorted(t.task_id for t in dag.tasks if isinstance(t, LeapContactOperator))


@task(trigger_rule="all_done", retries=0)
def flag_for_review(ti: Any = None, run_id: str | None = None, dag: Any = None) -> dict[str, Any]:
    """What a person looks at: records triage could not sort, and sends that need a hand.

    Runs whatever the senders did, and writes what there is. Then fails, without retries (none
    would help), when triage or a sender did not finish: this is the DAG's last task, so its
    state is the run's, and a run that did not message everyone due must not look green.
    """
    from airflow.sdk.exceptions import AirflowFailException

    needs_review = ti.xcom_pull(task_ids="triage", key="needs_review")
    if needs_review is None:
        raise AirflowFailException("triage did not finish (see its log): nothing to review")
    name = f"{getattr(dag, 'dag_id', 'dag')}__{run_id}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    path = output_dir("review") / f"{safe}.jsonl"
    rows = [{"kind": "needs_review", **item} for item in needs_review]
    senders = _senders(dag)
    for sender in senders:  # every channel's sends that need a person
        attention = ti.xcom_pull(task_ids=sender, key="attention") or []
        rows += [{"kind": "send", "task": sender, **item} for item in attention]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"{len(rows)} item(s) for a person -> {path}")
    unfinished = [task for task in senders if ti.xcom_pull(task_ids=task) is None]
    if unfinished:  # a sender returns its counts only when it finished
        raise AirflowFailException(f"{' and '.join(unfinished)} did not finish: see the log")
    return {"items": len(rows), "path": str(path)}
