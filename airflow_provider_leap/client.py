"""HTTP core of the provider: requests, retries, paging, and checking what Leap sent. No Airflow.

The rules (``ConnectQuery``, ``Pager``, ``RequestAttempts``, ``transport_failure``) do no I/O,
so the trigger's async transport reuses them without a second copy."""

from __future__ import annotations

import contextlib
import logging
import random
import re
import socket
import ssl
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime
from itertools import chain, filterfalse
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlsplit

import msgspec
import requests
import urllib3
from requests.adapters import HTTPAdapter

from airflow_provider_leap import wire
from airflow_provider_leap.config import LeapConfig
from airflow_provider_leap.errors import (
    LeapAPIError,
    LeapAuthError,
    LeapConfigError,
    LeapPagingError,
)
from airflow_provider_leap.models import ConnectRecord, Meter, decode_connect_records, decode_meters
from airflow_provider_leap.refids import validate_ref_ids
from airflow_provider_leap.retry import RetryPolicy, is_retryable_status, parse_retry_after
from airflow_provider_leap.timeutil import as_utc, format_timestamp, parse_timestamp

log = logging.getLogger(__name__)
T = TypeVar("T")
Query = list[tuple[str, str]]
TimeArg = datetime | date | str

# Reference IDs go into the query string; keep each request's query well under the 8 KB URL
# limits common in front of APIs. IDs are at most 256 characters, so a chunk is never empty.
MAX_REF_ID_QUERY_CHARS = 6000
NO_RETRY = RetryPolicy(max_retries=0)
AUTH_HINTS = {
    401: "the Authorization header was missing or malformed: does a proxy strip the header?",
    403: "the API key is invalid, belongs to the other environment (production vs staging), "
    "or lacks permission for this endpoint",
}
RETRYABLE_FAILURES = frozenset({"timeout", "connection", "deadline"})
# OpenSSL's reasons for a TLS handshake answered in plain HTTP (1.1/3.0, and 3.2 on).
PLAIN_HTTP_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"})
# Time filters: the extra naming the query parameter -> the record field checked against it.
TIME_FILTERS = {
    "start_date_param": "start_date_time_utc",
    "last_interaction_param": "last_interaction_date_time_utc",
}
_METERS_KEYS = (("meters",), ("next_page_token",))
_READ_SIZE = 1 << 20
_ANY = msgspec.json.Decoder()
_ENVELOPE = msgspec.json.Decoder(dict[str, msgspec.Raw] | list[msgspec.Raw])
_TOKEN = msgspec.json.Decoder(str | int | None)
_NULL = msgspec.Raw(b"null")
# An envelope key (lower case, no ``_`` or ``-``) that looks like a next-page token under a name
# we do not read (pageToken, cursor, continuation, next, next_page_url, nextPageLink,
# next_offset, next_page_number...), unless it names something else about tokens or pages.
_TOKEN_LIKE = re.compile(
    r"token|cursor|continu|^next(page)?(url|uri|link|href|offset|number|num|index|key|marker"
    r"|start)?$"
).search
_NOT_TOKEN = re.compile(r"expire|remaining|size|count|total|limit").search


def deprecated_alias(func: Callable[..., T], old: str) -> Callable[..., T]:
    """``func`` under its old name for one more release, with a ``DeprecationWarning``."""

    def alias(*args: Any, **kwargs: Any) -> T:
        warnings.warn(f"{old} is deprecated; use {func.__name__}", DeprecationWarning, 2)
        return func(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated alias of ``{func.__name__}``, removed in the next release."
    return alias


def redact(text: str, config: LeapConfig) -> str:
    """``text`` with the API key replaced by ``***`` (Leap may echo the key in an error)."""
    return text.replace(config.api_key, "***")


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, its body read whole."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Failure:
    """No answer: ``kind`` (``RETRYABLE_FAILURES``, ``tls``, ``dns``, ``other``) decides the
    retry; ``detail`` names the cause, never the URL (its query holds IDs) or the key."""

    kind: str
    detail: str


def error_title(body: bytes) -> str | None:
    """Leap's ``title`` from an error body, or a plain-text body; None for HTML or nothing."""
    try:
        data = _ANY.decode(body)
    except msgspec.DecodeError:
        text = body.decode("utf-8", "replace").strip()
        return None if text.startswith("<") else text[:200] or None
    if isinstance(data, dict):
        data = data.get("title") or data.get("message") or data.get("detail")
    return str(data)[:200] if isinstance(data, (str, int, float)) and data != "" else None


def http_error(
    method: str, path: str, answer: Answer, config: LeapConfig, why: str = ""
) -> LeapAPIError:
    """The error for an HTTP answer that is no success: what Leap said, and what to check."""
    status, title = answer.status, error_title(answer.body)
    title = redact(title, config) if title else None
    message = f"Leap {method} {path} answered HTTP {status}" + (f": {title}" if title else "")
    if status in AUTH_HINTS:
        message += f" ({AUTH_HINTS[status]}; base URL {config.base_url})"
    elif status in (400, 422) and path == config.wire.connections_path:
        message += (
            " (the Connect query's parameter names are assumptions: `airflow leap probe` tells "
            "which this account answers to, and the connection extras to set)"
        )
    elif 300 <= status < 400:
        to = urlsplit(answer.headers.get("Location", ""))
        message += (
            f", a redirect to {to.scheme}://{to.netloc}{to.path}: redirects are not followed (the "
            f"key must not travel on); set the base URL ({config.base_url}) to where Leap answers"
        )
    cls = LeapAuthError if status in AUTH_HINTS else LeapAPIError
    transient = is_retryable_status(status)
    return cls(
        message + why, method=method, path=path, status=status, title=title, transient=transient
    )


class RequestAttempts:
    """The retry rules of one request: ``after`` takes an attempt's outcome and returns the
    answer or the seconds to wait, or raises when retrying is pointless or the budget spent."""

    def __init__(
        self, config: LeapConfig, method: str, path: str, rng: random.Random, policy: RetryPolicy
    ) -> None:
        self.config, self.method, self.path = config, method, path
        self.rng, self.policy = rng, policy
        self.number, self.waited = 0, 0.0

    def after(self, outcome: Answer | Failure) -> Answer | float:
        self.number += 1
        method, path, config, policy = self.method, self.path, self.config, self.policy
        if isinstance(outcome, Answer):
            if outcome.status < 300:
                return outcome
            if not is_retryable_status(outcome.status):
                raise http_error(method, path, outcome, config)
            retry_after = parse_retry_after(outcome.headers.get("Retry-After"))
            hint = "" if retry_after is None else f" (Retry-After {retry_after:g} s)"
            reason = f"HTTP {outcome.status}{hint}"
        elif outcome.kind in RETRYABLE_FAILURES:
            retry_after, reason = None, outcome.detail
        else:
            where = f"at {config.base_url}; not retried, waiting would not change it"
            raise LeapAPIError(
                f"Leap {method} {path}: {outcome.detail} {where}", method=method, path=path
            )
        delay = policy.next_wait(self.number, self.waited, self.rng, retry_after)
        if delay is None:
            why = f"({policy.give_up_reason(self.number, self.waited, retry_after)})"
            if isinstance(outcome, Answer):
                retries = self.number - 1
                tail = f"; still failing after {retries} retr{'y' if retries == 1 else 'ies'} {why}"
                raise http_error(method, path, outcome, config, tail)
            where = f"gave up after {self.number} attempt(s) {why} at {config.base_url}"
            raise LeapAPIError(
                f"Leap {method} {path}: {reason}; {where}", method=method, path=path, transient=True
            )
        log.warning(
            "Leap %s %s failed: %s; retry %d/%d in %.1f s",
            *(method, path, reason, self.number, policy.max_retries, delay),
        )
        self.waited += delay
        return delay


def decode_page(
    body: bytes, record_keys: Sequence[str], token_keys: Sequence[str], where: str
) -> tuple[msgspec.Raw, str | None]:
    """One page's raw record list and next token (None: the last page). A bare JSON array is
    one page; an object without any of ``record_keys`` is an error (null is an empty page)."""
    try:
        page = _ENVELOPE.decode(body)
        if isinstance(page, list):
            return msgspec.Raw(body), None
        records = next((page[k] for k in record_keys if k in page), None)
        tokens = (_TOKEN.decode(page[k]) for k in token_keys if k in page)
        token = next((str(t) for t in tokens if t is not None and t != ""), None)
    except msgspec.DecodeError as exc:  # a body cut off on the way, most likely: transient
        raise LeapPagingError(
            f"{where} is not readable JSON of the expected shape ({exc})", transient=True
        ) from None
    if records is None:
        seen = ", ".join(sorted(page)) or "none"
        raise LeapPagingError(
            f"{where} has none of the record keys {', '.join(record_keys)} (keys seen: {seen}); "
            "if the records are under another key, set the extra records_key"
        )
    if token is None:  # the last page, unless the token went under a new name
        for key, value in page.items():
            name = key.lower().replace("_", "").replace("-", "")
            if (
                key not in token_keys
                and _TOKEN_LIKE(name)
                and not _NOT_TOKEN(name)
                and _could_be_a_token(value)
            ):
                raise LeapPagingError(
                    f"{where} has no next-page token under {', '.join(token_keys)} but carries "
                    f"{key!r}: if that is the token, set the extra next_token_key (else only "
                    "this page would be read)"
                )
    return (msgspec.Raw(b"[]") if records == _NULL else records), token


def _could_be_a_token(value: msgspec.Raw) -> bool:
    """Whether a token-like key's value could lead to a next page: not a placeholder (null, "",
    a boolean, a number below 1, an empty object or list) that a last page carries."""
    data = _ANY.decode(value)
    if isinstance(data, bool) or data is None or data in ("", {}, []):
        return False
    return not (isinstance(data, (int, float)) and data < 1)


class Pager(Generic[T]):
    """One listing's paging rules, for any transport: ``while pager.more(): pager.page(<the
    answer to pager.params / pager.body>)``. ``more`` follows the token only after ``page`` has
    handed on the records, so an error about the next page never loses them."""

    def __init__(
        self,
        method: str,
        path: str,
        config: LeapConfig,
        keys: tuple[Sequence[str], Sequence[str]],
        decode: Callable[[msgspec.Raw], tuple[list[T], int]],
        *,
        query: Query | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        self.method, self.path, self.name = method, path, f"Leap {method} {path}"
        self.config, self.keys, self.decode = config, keys, decode
        self.query, self.params, self.body = query, query, body
        self.pages, self.seen = 0, set[str]()
        self.token: str | None = None
        self.records: list[T] = []
        self.previous: list[T] = []

    def page(self, answer: Answer) -> list[T]:
        """The records of one answer, decoded (a record that does not fit is logged)."""
        where = f"{self.name}: page {self.pages + 1}"
        records_json, token = decode_page(answer.body, *self.keys, where)
        try:
            records, skipped = self.decode(records_json)
        except msgspec.DecodeError:
            raise LeapPagingError(f"{where}: the records are not a JSON list") from None
        if skipped:
            log.warning("%s: skipped %d record(s) that do not fit", where, skipped)
        self.pages += 1
        self.token, self.previous, self.records = token, self.records, records
        return records

    def more(self) -> bool:
        """Whether a request follows; a repeated token, a page repeating the previous one (a
        server ignoring the token) and a listing longer than ``max_pages`` raise instead."""
        token, max_pages = self.token, self.config.max_pages
        if self.pages == 0:
            return True
        if token is None:
            log.info("%s: read %d page(s)", self.name, self.pages)
            return False
        if token in self.seen:
            problem = "repeated an earlier page token"
        elif self.records and self.records == self.previous:
            problem = (
                f"repeated the records of page {self.pages - 1} under a new token: the server "
                f"seems to ignore {self.config.wire.page_token_param!r} (extra page_token_param)"
            )
        elif self.pages >= max_pages:
            problem = (
                f"still has a next page at max_pages={max_pages}; raise the extra max_pages if "
                "the account really holds that many records"
            )
        else:
            self.seen.add(token)
            if self.body is None:
                self.params = [*(self.query or []), (self.config.wire.page_token_param, token)]
            else:
                self.body = {**self.body, "page_token": token}
            return True
        raise LeapPagingError(f"{self.name}: page {self.pages} {problem}; stopped")


def connect_queries(
    names: wire.WireNames, page_size: int, ref_ids: list[str] | None, after: Mapping[str, datetime]
) -> list[Query]:
    """One query per request: page size, time filters (parameter -> time) and the IDs, split
    so that each URL stays short."""
    base = [(names.page_size_param, str(page_size))]
    base += [(param, format_timestamp(when)) for param, when in after.items()]
    if ref_ids is None:
        return [base]
    groups: list[Query] = []
    size = MAX_REF_ID_QUERY_CHARS
    for ref_id in ref_ids:
        cost = len(names.ref_id_param) + len(quote(ref_id, safe="")) + 2
        if size + cost > MAX_REF_ID_QUERY_CHARS:
            groups.append([])
            size = 0
        groups[-1].append((names.ref_id_param, ref_id))
        size += cost
    return [group + base for group in groups]


def _sent_time(value: TimeArg, param: str) -> datetime:
    """A time filter as sent: UTC, whole seconds (what the server compares with)."""
    try:
        return as_utc(value, param).replace(microsecond=0)
    except ValueError as exc:
        raise LeapConfigError(str(exc)) from None


class ConnectQuery:
    """One Connect listing as asked for, whatever the transport: the arguments checked at once
    (a bad one raises here), a ``Pager`` per request, and the check of every page."""

    def __init__(
        self,
        config: LeapConfig,
        ref_ids: Iterable[str] | str | None = None,
        started_after: TimeArg | None = None,
        interacted_after: TimeArg | None = None,
        page_size: int | None = None,
    ) -> None:
        names, size = config.wire, config.page_size if page_size is None else page_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise LeapConfigError(f"page_size must be a positive integer, got {size!r}")
        times = zip(TIME_FILTERS, (started_after, interacted_after), strict=True)
        self.after = {
            name: _sent_time(t, getattr(names, name)) for name, t in times if t is not None
        }
        self.ids = None if ref_ids is None else validate_ref_ids(ref_ids)
        self.wanted = None if self.ids is None else set(self.ids)
        self.config, self.size = config, size

    def pagers(self) -> Iterator[Pager[ConnectRecord]]:
        """A ``Pager`` per request; none for an empty list of IDs (``None``: every record)."""
        names = self.config.wire
        sent = {getattr(names, name): when for name, when in self.after.items()}
        keys = (
            (names.records_key, *wire.RECORDS_KEY_FALLBACKS),
            (names.next_token_key, *wire.NEXT_TOKEN_KEY_FALLBACKS),
        )
        for query in connect_queries(names, self.size, self.ids, sent):
            path = names.connections_path
            yield Pager("GET", path, self.config, keys, decode_connect_records, query=query)

    def check(self, records: list[ConnectRecord]) -> list[ConnectRecord]:
        """Trust, but verify: records outside the filters sent (a server ignoring a filter whose
        wire name is wrong) are dropped with a warning, or we would message the wrong customers.
        A record whose timestamp does not parse is kept, and so is one with no ``ref_id`` to
        check (with a warning): triage sends them to review, so nothing is lost."""
        if self.wanted is None and not self.after:
            return records
        outside = [self._outside(record) for record in records]
        unnamed = sum(1 for record in records if record.ref_id is None)
        if unnamed and self.wanted is not None:
            log.warning(
                "Leap answered %d record(s) without a ref_id to check against the IDs sent: has "
                "the record shape changed (a renamed key)? They are passed on (triage reviews "
                "them; a sensor cannot match them)",
                unnamed,
            )
        for extra, count in Counter(x for x in outside if x is not None).items():
            why = ""
            if extra == "ref_id_param":
                pairs = zip(records, outside, strict=True)
                why = self._loose_ids([r for r, x in pairs if x == extra])
            why = why or (
                "the server seems to ignore that parameter, or to read it otherwise (check the "
                f"extra {extra}; `airflow leap probe` tells)"
            )
            log.warning(
                "Leap answered %d record(s) outside the %r filter sent: %s; they were dropped",
                *(count, getattr(self.config.wire, extra), why),
            )
        return [record for record, x in zip(records, outside, strict=True) if x is None]

    def _outside(self, record: ConnectRecord) -> str | None:
        """The extra naming the first filter sent that ``record`` is outside of, if any."""
        ref_id = record.ref_id
        if self.wanted is not None and ref_id is not None and ref_id not in self.wanted:
            return "ref_id_param"
        for name, since in self.after.items():
            when = parse_timestamp(getattr(record, TIME_FILTERS[name]))
            if when is not None and when < since:
                return name
        return None

    def _loose_ids(self, strays: list[ConnectRecord]) -> str:
        """When every ID answered outside the ones sent differs from one of them only in case
        or spaces, that said with an example; else "" (a server ignoring the filter)."""
        loose = {w.strip().casefold(): w for w in self.wanted or ()}
        sent = [loose.get((record.ref_id or "").strip().casefold()) for record in strays]
        if not strays or None in sent:
            return ""
        return f"Leap seems to match IDs loosely ({strays[0].ref_id!r} for {sent[0]!r})"


def _no_last_interaction(record: ConnectRecord) -> bool:
    """Whether the record has no readable last interaction: the start read brings it (triage
    counts a NOT_STARTED one from its start, and sends any other to review)."""
    return parse_timestamp(record.last_interaction_date_time_utc) is None


class DeadlinePassed(Exception):
    """A transport's read loop passed ``request_deadline``."""


@dataclass(frozen=True)
class TransportErrors:
    """One HTTP library's exceptions by what they mean for a retry: ``caught`` is all one attempt
    may raise; a ``timeout`` type anywhere in the causes makes a timeout, ``connection`` and
    ``tls`` types are matched on the exception itself."""

    caught: tuple[type[BaseException], ...]
    timeout: tuple[type[BaseException], ...]
    connection: tuple[type[BaseException], ...]
    tls: tuple[type[BaseException], ...] = ()


# OSError includes requests' own exceptions; ValueError covers UnicodeError and http.client
# refusing a header value. Not urllib3's TimeoutError as a timeout: its NewConnectionError
# (refused) is one.
REQUESTS_ERRORS = TransportErrors(
    caught=(OSError, urllib3.exceptions.HTTPError, ValueError, DeadlinePassed),
    timeout=(requests.Timeout, TimeoutError, urllib3.exceptions.ReadTimeoutError),
    connection=(OSError, urllib3.exceptions.ProtocolError),
    tls=(requests.exceptions.SSLError,),
)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and all it wraps: HTTP libraries nest causes in several ways."""
    found: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop()
        if all(current is not e for e in found):
            found.append(current)
            nested = (getattr(current, "reason", None), current.__cause__, current.__context__)
            todo += [e for e in (*nested, *current.args) if isinstance(e, BaseException)]
    return found


def transport_failure(
    exc: BaseException, config: LeapConfig, errors: TransportErrors = REQUESTS_ERRORS
) -> Failure:
    """What went wrong, from an HTTP library's or the socket layer's error; never its URL (the
    query holds Reference IDs) or the key."""
    causes = _causes(exc)
    tls = next((e for e in causes if isinstance(e, ssl.SSLError)), None)
    dns = next((e for e in causes if isinstance(e, socket.gaierror)), None)
    os_error = next((e for e in causes[::-1] if isinstance(e, OSError) and e.strerror), None)
    name = type(exc).__name__ + (f": {os_error.strerror}" if os_error else "")
    if tls is not None and tls.reason in PLAIN_HTTP_REASONS:
        why = "the server seems to speak plain HTTP (the emulator does: write http:// in the host)"
        kind, detail = "tls", f"TLS failed ({tls}): {why}"
    elif tls is not None or isinstance(exc, errors.tls):
        kind, detail = "tls", f"TLS failed ({tls or name}): check the certificate and the host"
    elif dns is not None:
        kind, detail = "dns", f"the host name does not resolve ({dns}): check the host"
    elif isinstance(exc, DeadlinePassed):
        deadline = config.request_deadline
        kind, detail = "deadline", f"no whole answer in request_deadline={deadline:g} s"
    elif any(isinstance(e, errors.timeout) for e in causes):
        kind, detail = "timeout", f"{type(exc).__name__} (timeout={config.timeout:g} s)"
    elif isinstance(exc, errors.connection):
        kind, detail = "connection", name
    else:
        kind, detail = "other", name
    return Failure(kind, redact(detail, config))


# When the head of the answer under way on this thread is due (time.monotonic()), in _send.
_HEAD_DEADLINE: ContextVar[float | None] = ContextVar("leap_head_deadline", default=None)


class _HeadDeadline:
    """urllib3 connection part: ``timeout`` bounds each wait on the socket, so a server dripping
    its head byte by byte could hold a call for ever; at the deadline a timer shuts the socket."""

    sock: socket.socket | None

    def getresponse(self) -> Any:
        deadline = _HEAD_DEADLINE.get()
        if deadline is None:
            return super().getresponse()  # type: ignore[misc]
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._cut)
        timer.daemon = True
        timer.start()
        try:
            return super().getresponse()  # type: ignore[misc]
        finally:
            timer.cancel()

    def _cut(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]


class _HTTPConnection(_HeadDeadline, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_HeadDeadline, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """``requests``' adapter with connections that keep the head deadline (direct, no proxy)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class LeapClient:
    """A keep-alive session to one Leap environment: bounded retries, streaming paging.

    Takes a ``LeapConfig``, or a base URL, a key and ``LeapConfig`` fields as keywords
    (``LeapClient(url, key, page_size=100)``); tests inject ``sleep`` and ``rng``."""

    def __init__(
        self,
        config: LeapConfig | str,
        api_key: str | None = None,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        **settings: Any,
    ) -> None:
        if isinstance(config, str):
            config = LeapConfig(base_url=config, api_key=api_key or "", **settings)
        self.config, self.rng, self._sleep = config, rng or random.Random(), sleep
        if session is None:
            session = requests.Session()
            for prefix in ("http://", "https://"):
                session.mount(prefix, _DeadlineAdapter())
        self.session = session
        self.session.headers.update(
            {"Authorization": f"Bearer {config.api_key}", "Accept": "application/json"}
        )

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> LeapClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        json: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> Answer:
        """One API call, transient failures retried within the policy's bounds; raises
        :class:`LeapAPIError` (or a subclass) naming method, path, status and Leap's title."""
        attempts = RequestAttempts(self.config, method, path, self.rng, retry or self.config.retry)
        while True:
            step = attempts.after(self._send(method, path, params, json))
            if isinstance(step, Answer):
                return step
            self._sleep(step)

    def _send(
        self, method: str, path: str, params: Sequence[tuple[str, str]] | None, body: Any
    ) -> Answer | Failure:
        """One attempt, read whole within ``request_deadline`` (the head by ``_HeadDeadline``'s
        timer, the body checked between reads). Never raises: the exception becomes a ``Failure``,
        so no later error has it (or its request, key included) as its context."""
        config, url = self.config, self.config.base_url + path
        deadline = time.monotonic() + config.request_deadline
        timeout = min(config.timeout, config.request_deadline)  # each wait on the socket
        token = _HEAD_DEADLINE.set(deadline)
        try:
            response = self.session.request(
                method, url, params, json=body, timeout=timeout, stream=True, allow_redirects=False
            )
            try:
                raw = response.raw
                read = getattr(raw, "read1", raw.read)  # read1: what has arrived (urllib3 2)
                chunks = []
                while chunk := read(_READ_SIZE, decode_content=True):
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise DeadlinePassed
            except BaseException:
                response.close()
                raise
            raw.release_conn()  # read to the end: the connection goes back to the pool
            return Answer(response.status_code, response.headers, b"".join(chunks))
        except REQUESTS_ERRORS.caught as exc:
            cut = time.monotonic() >= deadline  # the head's timer shut the socket
            failure = transport_failure(DeadlinePassed() if cut else exc, config)
        finally:
            _HEAD_DEADLINE.reset(token)
        return failure

    def _pages(self, pager: Pager[T]) -> Iterator[list[T]]:
        while pager.more():
            yield pager.page(
                self.request(pager.method, pager.path, params=pager.params, json=pager.body)
            )

    def iter_connect_records(
        self,
        ref_ids: Iterable[str] | str | None = None,
        started_after: TimeArg | None = None,
        interacted_after: TimeArg | None = None,
        page_size: int | None = None,
    ) -> Iterator[ConnectRecord]:
        """Every Connect record matching the filters, page by page (memory: two pages).

        IDs go as repeated ``ref-id`` parameters, over several requests when the URL would get
        long; none means no record (``None``: every record). A record that does not fit comes
        back with ``parse_error`` set; one outside the filters sent is dropped with a warning.
        Invalid arguments raise at the call, API failures while iterating.
        """
        query = ConnectQuery(self.config, ref_ids, started_after, interacted_after, page_size)
        pages = (self._pages(pager) for pager in query.pagers())
        return chain.from_iterable(map(query.check, chain.from_iterable(pages)))

    iter_connections = deprecated_alias(iter_connect_records, "iter_connections")

    def iter_active_records(
        self,
        active_after: TimeArg,
        ref_ids: Iterable[str] | str | None = None,
        started_after: TimeArg | None = None,
        page_size: int | None = None,
    ) -> Iterator[ConnectRecord]:
        """Every record active at or after ``active_after``: its last interaction, or its start
        when it has no readable last interaction (what triage counts a stall from).

        Leap filters on one time per request, and its ``interacted_after`` may leave out the
        records with no last interaction (a customer who opened the link and went no further),
        so two listings: by start, then by last interaction, each keeping the records the other
        does not, however Leap treats a missing time. A first interaction landing between the
        two (a refresh mid-run) makes its record come twice, old then new (``triage`` keeps the
        later), where the other order would lose it.
        """
        since = _sent_time(active_after, "active_after")
        start = since
        if started_after is not None:
            start = max(since, _sent_time(started_after, "started_after"))
        by_start = self.iter_connect_records(ref_ids, start, None, page_size)
        by_last = self.iter_connect_records(ref_ids, started_after, since, page_size)
        return chain(
            filter(_no_last_interaction, by_start),
            filterfalse(_no_last_interaction, by_last),
        )

    def iter_meters(
        self,
        /,
        connection_reference_ids: Iterable[str] | str | None = None,
        created_after: TimeArg | None = None,
        page_size: int | None = None,
        **filters: Any,
    ) -> Iterator[Meter]:
        """Meters from ``POST /v2/meters/search``, IDs in requests of at most 100 each (a meter
        listed under several is yielded once); ``filters`` are further fields of the body."""
        low, high = wire.METERS_PAGE_SIZE_RANGE
        size = min(high, self.config.page_size) if page_size is None else page_size
        if not isinstance(size, int) or not low <= size <= high:
            raise LeapConfigError(f"meters page_size must be {low} to {high}, got {size!r}")
        body = {k: v for k, v in filters.items() if v is not None} | {"page_size": size}
        if created_after is not None:
            when = _sent_time(created_after, "created_after_date_time")
            body["created_after_date_time"] = format_timestamp(when)
        refs = connection_reference_ids
        return self._meters(body, None if refs is None else validate_ref_ids(refs))

    def _meters(self, body: dict[str, Any], ids: list[str] | None) -> Iterator[Meter]:
        step, path = wire.METERS_MAX_REFERENCE_IDS, wire.METERS_SEARCH_PATH
        chunks = [None] if ids is None else [ids[i : i + step] for i in range(0, len(ids), step)]
        seen: set[str | None] = set()
        for chunk in chunks:
            chunk_body = body if chunk is None else {**body, "connection_reference_ids": chunk}
            pager = Pager("POST", path, self.config, _METERS_KEYS, decode_meters, body=chunk_body)
            asked = set(chunk or ())
            for page in self._pages(pager):
                outside = 0
                for meter in page:
                    refs = meter.connection_references  # none listed: nothing to verify against
                    if asked and refs and asked.isdisjoint(refs):
                        outside += 1
                    elif meter.meter_id is None or meter.meter_id not in seen:
                        seen.add(meter.meter_id)
                        yield meter
                if outside:
                    log.warning(
                        "Leap answered %d meter(s) for none of the Reference IDs sent: the server "
                        "seems to ignore connection_reference_ids; they were dropped",
                        outside,
                    )

    def check(self) -> tuple[bool, str]:
        """One cheap authenticated request; ``(ok, message)`` for Airflow's connection test."""
        params = [(self.config.wire.page_size_param, "1")]
        try:
            # No retries: a connection test in the UI must answer within seconds.
            self.request("GET", self.config.wire.connections_path, params=params, retry=NO_RETRY)
        except LeapAPIError as exc:
            return False, str(exc)
        return True, f"Connected to Leap at {self.config.base_url}: the Connect API answered."
