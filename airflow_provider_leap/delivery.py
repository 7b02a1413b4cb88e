"""Handing due contacts to a send function, each exactly once, one failure never blocking the rest.

No Airflow import: the Airflow operator, the webhook DAG and a user's own code all deliver
through :func:`deliver`.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airflow_provider_leap.contact import Contact
from airflow_provider_leap.errors import LeapConfigError, LeapRefIdError
from airflow_provider_leap.ledger import DeliveryLedger

log = logging.getLogger(__name__)


class ContactUnreachable(Exception):
    """Raised by a send function that has no address (or number, or CRM record) for a customer.

    Counted and reported, not an attempt: the contact stays due and is tried again next run.
    """


class SendUnconfirmed(Exception):
    """Raised by a send function that handed its message over but lost the connection before the
    answer (an SMTP session gone while the relay had the whole message): it may have gone out.

    Recorded as sent, so never sent again (a customer missing one message is better off than one
    getting it twice), and listed for a person (``unconfirmed`` in ``attention``).
    """


# Raised by a send function, these most likely say that its code is broken (a misspelt
# attribute or ``contact.item`` key, a wrong call, a missing import): logged with the traceback,
# and never the channel's trouble, even while handling it. Each is still a failed attempt, as
# the message may have gone out before the error (see ``deliver`` for the same failure in a row).
CODE_ERRORS = (AttributeError, NameError, TypeError, ImportError, LookupError)


class ChannelDown(Exception):
    """Raised by a send function whose channel can take no message now (the SMTP server ended
    the session and refuses a new one).

    Not an attempt, and the run stops there: the contacts left are not each charged a failed
    attempt against a channel that is down; they stay due for a retry or the next run.
    """


# A failure that says the channel, not the customer, is in trouble: no connection could be made
# or kept (refused, reset, no such host, no route, TLS refused, no answer while connecting), no
# answer in time, or an HTTP answer refusing our credentials, throttling us or failing
# (``_STATUSES``, 5xx). Found in the exception or its causes (``requests``, ``httpx``,
# ``urllib``, ``urllib3``, ``botocore`` and ``smtplib`` keep the socket's error or the response
# there), by attributes and class names: no client library is imported here.
NEVER_CONNECTED = (ConnectionError, socket.gaierror)  # refused, reset, aborted, broken pipe
_NO_ROUTE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH})
# Class names (in the MRO) of the clients' own: checked before the timeouts, which are among the
# base classes of some (urllib3's ``NewConnectionError`` is a ``ConnectTimeoutError``).
_NOT_CONNECTED = frozenset(
    {
        "ConnectTimeout",  # requests, httpx
        "ConnectTimeoutError",  # urllib3
        "NewConnectionError",  # urllib3
        "EndpointConnectionError",  # botocore
        "ConnectError",  # httpx, httpcore
        "RemoteProtocolError",  # httpx: the server closed the connection without an answer
        "SSLError",  # ssl, requests, urllib3: the certificate refused
    }
)
# Base classes of every timeout in the standard library, requests, httpx and urllib3.
_TIMEOUTS = frozenset({"TimeoutError", "Timeout", "TimeoutException"})
# A 403 may be about one record (no permission on that lead): it says the channel refuses us
# only while no send of this try has gone through (a retry's 403 wall too: review s17a F1).
FORBIDDEN = "were forbidden (403)"
_STATUSES = {401: "were refused (401)", 403: FORBIDDEN, 429: "were throttled (429)"}
# urllib3's retries spent on error answers (``Retry(status_forcelist=...)``): the status is
# only in the text of its ``ResponseError``.
_RETRIES_SPENT = re.compile(r"too many (\d{3}) error responses")
# Failed sends alike in a row that stop a delivery: before any send went through, and after
# (a channel failing now and then, one send in five, must not stop runs: 4 in a row is rare).
IN_A_ROW = (2, 4)


def channel_trouble(exc: BaseException) -> str | None:
    """What ``exc`` or one of its causes says of the channel (``could not connect``,
    ``timed out``, ``got a server error (5xx)``, ``were throttled (429)``...), or None when it
    says nothing of it, or a cause answered about the message itself (a 400, 404, 422). An error
    the send function raised ``from None`` says nothing of what it handled; a library's does
    (httpcore raises its ``ConnectError`` so)."""
    for seen in _causes(exc):
        names = {kind.__name__ for kind in type(seen).__mro__}
        if (
            isinstance(seen, NEVER_CONNECTED)
            or (isinstance(seen, OSError) and seen.errno in _NO_ROUTE)
            or names & _NOT_CONNECTED
        ):
            return "could not connect"
        if names & _TIMEOUTS:
            return "timed out"
        status = _status(seen)
        if status:
            return _STATUSES.get(status, "got a server error (5xx)" if status >= 500 else None)
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or while handling (urllib3's ``MaxRetryError``
    keeps the last failure as ``reason``); not past the send function's own ``from None``."""
    seen: BaseException | None = exc
    for depth in range(8):  # a chain is short; a cycle must not loop
        if seen is None:
            return
        yield seen
        reason = getattr(seen, "reason", None)
        context = None if depth == 0 and seen.__suppress_context__ else seen.__context__
        seen = seen.__cause__ or context or (reason if isinstance(reason, BaseException) else None)


def _stops_at_once(exc: Exception) -> str | None:
    """Why a send's failure stops the delivery before it is charged to anyone, if it does: the
    send function says its channel is down, or this provider's settings are unusable (a Connect
    link with no ``connect_account``: the same for every customer; review s17b F1, F2)."""
    if isinstance(exc, ChannelDown):
        return "Channel down"
    for seen in _causes(exc):  # not one customer's Reference ID (a record triage keeps)
        if isinstance(seen, LeapConfigError) and not isinstance(seen, LeapRefIdError):
            return "The Leap connection's settings are unusable"
    return None


def _status(exc: BaseException) -> int:
    """The HTTP status an exception carries, else 0: ``requests`` and ``httpx`` keep the
    response, ``botocore`` its metadata, ``urllib`` and ``aiohttp`` a ``status``, SendGrid's
    client a ``status_code``."""
    try:  # a library's property may raise when the exception has no response
        response = getattr(exc, "response", None)
        if isinstance(response, Mapping):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        elif response is not None:
            status = response.status_code
        elif type(exc).__name__ == "ResponseError":
            spent = _RETRIES_SPENT.search(str(exc))
            status = int(spent.group(1)) if spent else None
        else:  # an attribute of the instance: ``AirflowException`` has a class-wide 500
            status = getattr(exc, "status", None) or vars(exc).get("status_code")
    except Exception:
        return 0
    return status if isinstance(status, int) and 100 <= status <= 599 else 0


@dataclass
class DeliveryReport:
    """Counts of one delivery, and the cases a person should look at."""

    sent: int = 0
    failed: int = 0
    given_up: int = 0
    # Failed sends whose step's next attempt is not its last: a retry of the run may make it
    # (the last waits ``ContactPolicy.last_attempt_after``: see ``plan_contacts``).
    retry_soon: int = 0
    unreachable: int = 0
    unconfirmed: int = 0  # sends that raised ``SendUnconfirmed``: recorded as sent
    claimed_elsewhere: int = 0
    not_tried: int = 0  # left when the delivery stopped
    channel_down: str | None = None  # the failure that stopped it, when nobody is to blame
    stopped: str = ""  # why it stopped (when ``channel_down``)
    same_failure: str | None = None  # what sends in a row raised alike, when that stopped it
    code_errors: int = 0  # failed sends that raised one of ``CODE_ERRORS`` (in ``failed`` too)
    code_error: str | None = None  # the first of them
    attention: list[dict[str, Any]] = field(default_factory=list)

    def stop(self, exc: Exception, not_tried: int, why: str) -> None:
        """The channel is down (``exc`` says why): the delivery stops, ``not_tried`` left."""
        self.channel_down, self.not_tried, self.stopped = _describe(exc, whole=True), not_tried, why
        log.warning("%s, %d contact(s) not tried: %s", why, not_tried, exc)

    def counts(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "given_up": self.given_up,
            "unreachable": self.unreachable,
            "unconfirmed": self.unconfirmed,
            "claimed_elsewhere": self.claimed_elsewhere,
            "not_tried": self.not_tried,
            "code_errors": self.code_errors,
        }


def _describe(exc: BaseException, *, whole: bool = False) -> str:
    """One line for a report: the first 200 characters of the first line, or (``whole``: a
    channel's reason for stopping, which quotes the server's reply) all of it."""
    text = " ".join(str(exc).split()) if whole else (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def deliver(
    contacts: Iterable[Contact],
    send: Callable[[Contact], Any],
    ledger: DeliveryLedger,
    *,
    now: datetime,
    max_attempts: int,
    took_before: int = 0,
) -> DeliveryReport:
    """Send each contact whose attempt this process can claim; record each outcome at once.

    A send that raises counts as a failed attempt (tried again by a retry or the next run, up
    to ``max_attempts``, the last spaced from the one before: ``retry_soon`` counts those a
    retry may make; then that step is given up and reported, once, and the stall's next step is
    planned afresh); :class:`SendUnconfirmed` is recorded as sent and listed for a person;
    :class:`ContactUnreachable` is not an attempt, nor is
    :class:`ChannelDown` or this provider's ``LeapConfigError``, which also stop the delivery
    (``report.channel_down``). Failed sends in a row alike (``IN_A_ROW``) stop it too, the rest
    ``not_tried``: each with :func:`channel_trouble` (the channel is down, refusing or
    throttling us: ``report.channel_down``), or the same failure (message and all: one naming
    its customer is that customer's) before any send went through (a bug in the send function,
    or every customer failing alike: ``report.same_failure``), else one fault would spend every
    due customer's attempts within a run. Either stop takes more once a send of this delivery
    or ``took_before`` (of earlier tries of the run) went through. A record of one bucket may
    be what fails: when they are all of one bucket, a contact of another is tried first (once
    per streak). Anything that is not an
    ``Exception`` (the task being killed or timing out) leaves the claim ``sending``: that
    message may have gone out, so it is never sent again.
    """
    report = DeliveryReport()
    contacts = list(contacts)
    streak = _Streak()
    for index, contact in enumerate(contacts):
        if not ledger.claim(contact, now):
            report.claimed_elsewhere += 1
            continue
        try:
            send(contact)
        except ContactUnreachable as exc:
            ledger.release(contact)
            report.unreachable += 1
            report.attention.append(attention_item(contact, "unreachable", _describe(exc)))
        except SendUnconfirmed as exc:  # the channel had it whole: no failure in a row
            ledger.settle(contact, now, sent=True)
            report.unconfirmed += 1
            report.attention.append(attention_item(contact, "unconfirmed", _describe(exc)))
            log.warning("Sending %s may have gone out; not repeated: %s", contact.contact_key, exc)
            streak = _Streak()
        except Exception as exc:
            at_once = _stops_at_once(exc)
            if at_once:
                ledger.release(contact)
                report.stop(exc, len(contacts) - index, at_once)
                break
            reason, bug = _describe(exc), isinstance(exc, CODE_ERRORS)
            trouble = None if bug else channel_trouble(exc)  # a bug handling a timeout: a bug
            if trouble == FORBIDDEN and report.sent:  # this try's (review s17a F1)
                trouble = None
            ledger.settle(contact, now, sent=False, error=reason)
            report.failed += 1
            log.warning(
                "Sending %s (%s, step %d, attempt %d/%d) failed: %s",
                contact.contact_key,
                contact.ref_id,
                contact.step,
                contact.attempt,
                max_attempts,
                reason,
            )
            if contact.attempt >= max_attempts:
                report.given_up += 1
                report.attention.append(attention_item(contact, "given_up", reason))
            elif contact.attempt + 1 < max_attempts:
                report.retry_soon += 1
            if bug:
                report.code_errors += 1
                if report.code_error is None:
                    report.code_error = reason
                    log.error("Is the send function broken? It raised:", exc_info=exc)
            alike = "trouble" if trouble else ("" if report.sent else reason)
            streak = streak.add(alike, contact.bucket)
            if alike and streak.count >= IN_A_ROW[report.sent + took_before > 0]:
                other = None  # once per streak: the one moved up may be claimed or unreachable
                if streak.one_bucket and not streak.swapped:
                    other = _other_bucket(contacts, index)
                if other is not None:
                    contacts.insert(index + 1, contacts.pop(other))  # that bucket's data?
                    streak.swapped = True
                elif trouble:
                    why = f"{streak.count} sends in a row met the channel in trouble ({trouble})"
                    report.stop(exc, len(contacts) - index - 1, why)
                    break
                else:
                    report.not_tried, report.same_failure = len(contacts) - index - 1, reason
                    log.error(
                        "%d sends in a row raised %s before any went through: %s Stopping, %d "
                        "contact(s) not tried",
                        streak.count,
                        reason,
                        "is the send function broken?" if bug else "does every send fail so?",
                        report.not_tried,
                    )
                    break
        else:
            ledger.settle(contact, now, sent=True)
            report.sent += 1
            streak = _Streak()
    return report


@dataclass
class _Streak:
    """Failed sends in a row alike (see :func:`deliver`)."""

    alike: str = ""  # what they are alike in ("": nothing, a new streak)
    bucket: str = ""  # the last one's
    count: int = 0
    one_bucket: bool = True  # all of ``bucket``
    swapped: bool = False  # another bucket's contact was moved up in this streak

    def add(self, alike: str, bucket: str) -> _Streak:
        """The streak with one more failed send, alike in ``alike``."""
        if not alike or alike != self.alike:
            return _Streak(alike, bucket, 1)
        one = self.one_bucket and bucket == self.bucket
        return _Streak(alike, bucket, self.count + 1, one, self.swapped)


def _other_bucket(contacts: list[Contact], index: int) -> int | None:
    """The position of the next contact after ``index`` in another bucket than its, if any."""
    bucket = contacts[index].bucket
    return next((j for j in range(index + 1, len(contacts)) if contacts[j].bucket != bucket), None)


def attention_item(contact: Contact, why: str, detail: str) -> dict[str, Any]:
    """What a person needs to act on one contact (``why``: ``given_up``, ``unreachable``,
    ``unconfirmed``); ``first``: no message of this stall has reached the customer yet."""
    return {
        "why": why,
        "detail": detail,
        "contact_key": contact.contact_key,
        "ref_id": contact.ref_id,
        "stall": contact.stall,
        "step": contact.step,
        "first": contact.first,
        "bucket": contact.bucket,
        "attempt": contact.attempt,
    }
