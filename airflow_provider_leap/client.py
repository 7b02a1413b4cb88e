"""HTTP core of the provider: session, auth, retries, paging. No Airflow import.

The hook adapts an Airflow connection to :class:`LeapClient`; the deferrable trigger runs the
same client in a thread. Everything that crosses the wire lives here, once.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Union
from urllib.parse import quote, urlsplit

import msgspec
import requests

from airflow_provider_leap import wire
from airflow_provider_leap.errors import (
    LeapAPIError,
    LeapAuthError,
    LeapConfigError,
    LeapPagingError,
)
from airflow_provider_leap.models import (
    ConnectRecord,
    Meter,
    decode_connect_record,
    decode_meter,
    parse_timestamp,
)
from airflow_provider_leap.retry import RetryPolicy, is_retryable_status, parse_retry_after

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
DEFAULT_PAGE_SIZE = 500
# Reference IDs go into the query string; keep each request's query well under the 8 KB URL
# limits common in front of APIs. IDs are at most 256 characters, so a chunk is never empty.
MAX_REF_ID_QUERY_CHARS = 6000
REF_ID_MAX_LEN = 256
REF_ID_MIN_LEN = 3
REF_ID_FORBIDDEN = frozenset("/\\?][{}!#$%^&*()<>|")

_TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
_ANY_DECODER = msgspec.json.Decoder()

NO_RETRY = RetryPolicy(max_retries=0)

AUTH_HINTS = {
    401: "the Authorization header was missing or malformed: does the API key hold spaces or "
    "line breaks, or does a proxy strip the header?",
    403: "the API key is invalid, belongs to the other environment (production vs staging), "
    "or lacks permission for this endpoint",
}


def validate_base_url(url: str, *, allow_insecure_http: bool = False) -> str:
    """Return ``url`` without a trailing slash; plain HTTP only to loopback unless allowed."""
    text = url.strip().rstrip("/")
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LeapConfigError(f"Leap base URL {url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise LeapConfigError("Leap base URL must not carry credentials; put the key in password")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise LeapConfigError(
            f"Refusing plain http:// to {parts.hostname}: the API key would cross the network "
            "unencrypted. Use https, or set the extra allow_insecure_http=true."
        )
    return text


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def format_timestamp(value: datetime | date | str) -> str:
    """ISO-8601 UTC with ``Z``, the form Leap's filters take; naive datetimes are taken as UTC."""
    if isinstance(value, str):
        parsed = parse_timestamp(value)
        if parsed is None:
            raise LeapConfigError(f"{value!r} is not an ISO-8601 date or timestamp")
        value = parsed
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).replace(tzinfo=None, microsecond=0).isoformat() + "Z"


def validate_ref_ids(ref_ids: Iterable[str] | str) -> list[str]:
    """Unique Reference IDs in first-seen order; an ID Leap would reject raises at once."""
    if isinstance(ref_ids, str):
        ref_ids = [ref_ids]
    unique: dict[str, None] = {}
    for ref_id in ref_ids:
        if not isinstance(ref_id, str):
            raise LeapConfigError(f"Reference ID {ref_id!r} is not a string")
        bad = REF_ID_FORBIDDEN.intersection(ref_id)
        if not REF_ID_MIN_LEN <= len(ref_id) <= REF_ID_MAX_LEN or bad:
            raise LeapConfigError(
                f"Reference ID {ref_id!r} is not valid for Leap: 3 to 256 characters, none of "
                f"/ \\ ? ] [ {{ }} ! # $ % ^ & * ( ) < > |"
            )
        unique[ref_id] = None
    return list(unique)


def chunk_ref_ids(
    ref_ids: Sequence[str], param: str, max_chars: int = MAX_REF_ID_QUERY_CHARS
) -> list[list[str]]:
    """Split IDs so that each request's ``ref-id=..`` query part stays under ``max_chars``."""
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for ref_id in ref_ids:
        cost = len(param) + len(quote(ref_id, safe="")) + 2
        if current and size + cost > max_chars:
            chunks.append(current)
            current, size = [], 0
        current.append(ref_id)
        size += cost
    if current:
        chunks.append(current)
    return chunks


def error_title(body: bytes) -> str | None:
    """Leap's ``title`` from a v2 error body, or a plain-string body; None if neither."""
    try:
        data = _ANY_DECODER.decode(body)
    except msgspec.DecodeError:
        text = body.decode("utf-8", "replace").strip()
        return text[:200] or None
    if isinstance(data, dict):
        title = data.get("title") or data.get("message") or data.get("detail")
        return str(title)[:200] if title else None
    if isinstance(data, str):
        return data[:200] or None
    return None


@dataclass(frozen=True)
class PageShape:
    """How to read one page: a decoder built from the wire names, and its field names."""

    decoder: msgspec.json.Decoder[Any]
    record_fields: tuple[str, ...]
    token_fields: tuple[str, ...]


@functools.lru_cache(maxsize=16)
def page_shape(records_key: str, token_key: str) -> PageShape:
    """A page type for these wire names (plus the accepted fallbacks), built once.

    The page is decoded in one pass into a small struct whose record list stays raw JSON, so
    each record is decoded exactly once, straight into its typed record.
    """
    record_keys = tuple(dict.fromkeys((records_key, *wire.RECORDS_KEY_FALLBACKS)))
    token_keys = tuple(dict.fromkeys((token_key, *wire.NEXT_TOKEN_KEY_FALLBACKS)))
    record_fields = tuple(f"records_{i}" for i in range(len(record_keys)))
    token_fields = tuple(f"token_{i}" for i in range(len(token_keys)))
    fields: list[tuple[str, Any, Any]] = [
        (f, list[msgspec.Raw] | None, None) for f in record_fields
    ]
    fields += [(f, str | int | None, None) for f in token_fields]
    rename = dict(zip(record_fields + token_fields, record_keys + token_keys, strict=True))
    page_type = msgspec.defstruct("Page", fields, rename=rename)
    decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Union[page_type, list[msgspec.Raw]])  # noqa: UP007
    return PageShape(decoder, record_fields, token_fields)


class LeapClient:
    """A keep-alive session to one Leap environment with bounded retries and streaming paging.

    ``sleep``, ``clock`` and ``rng`` are injectable so tests never wait for real backoff.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        wire_names: wire.WireNames | None = None,
        allow_insecure_http: bool = False,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not api_key or not api_key.strip():
            raise LeapConfigError(
                "No Leap API key: set it as the password of the Airflow connection"
            )
        if timeout <= 0:
            raise LeapConfigError(f"timeout must be > 0 seconds, got {timeout}")
        self.base_url = validate_base_url(base_url, allow_insecure_http=allow_insecure_http)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.page_size = self._check_page_size(page_size)
        self.wire = wire_names or wire.WireNames()
        self.log = logger or log
        self._key = api_key.strip()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.session = session or requests.Session()
        self.session.headers.update(
            {"Authorization": f"Bearer {self._key}", "Accept": "application/json"}
        )

    def __repr__(self) -> str:  # never show the key
        return f"LeapClient(base_url={self.base_url!r})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> LeapClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _check_page_size(page_size: int) -> int:
        if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size < 1:
            raise LeapConfigError(f"page_size must be a positive integer, got {page_size!r}")
        return page_size

    # -- one request, with retries --------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        json: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> requests.Response:
        """Send one API call, retrying transient failures within the policy's bounds.

        Raises :class:`LeapAPIError` (or a subclass) naming method, path, status and Leap's title.
        """
        url = self.base_url + path
        policy = retry or self.retry
        waited = 0.0
        retry_number = 0
        while True:
            retry_number += 1
            try:
                response = self.session.request(
                    method, url, params=params, json=json, timeout=self.timeout
                )
            except _TRANSIENT_ERRORS as exc:
                reason = type(exc).__name__
                delay = policy.next_wait(retry_number, waited, self._rng)
                if delay is None:
                    raise self._gave_up(method, path, reason, retry_number, policy) from None
                self._log_retry(method, path, reason, retry_number, policy, delay)
            else:
                status = response.status_code
                if status < 400:
                    return response
                if not is_retryable_status(status):
                    raise self._http_error(method, path, response)
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                delay = policy.next_wait(retry_number, waited, self._rng, retry_after)
                if delay is None:
                    raise self._http_error(method, path, response, retries=retry_number - 1)
                hint = f" (Retry-After {retry_after:g} s)" if retry_after is not None else ""
                self._log_retry(method, path, f"HTTP {status}{hint}", retry_number, policy, delay)
                response.close()
            self._sleep(delay)
            waited += delay

    def _log_retry(
        self, method: str, path: str, reason: str, number: int, policy: RetryPolicy, delay: float
    ) -> None:
        self.log.warning(
            "Leap %s %s failed: %s; retry %d/%d in %.1f s",
            method,
            path,
            reason,
            number,
            policy.max_retries,
            delay,
        )

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key in text else text

    def _gave_up(
        self, method: str, path: str, reason: str, attempts: int, policy: RetryPolicy
    ) -> LeapAPIError:
        return LeapAPIError(
            f"Leap {method} {path}: {reason} after {attempts} attempt(s); "
            f"gave up within the retry bound (max_retries={policy.max_retries}, "
            f"max_wait={policy.max_wait:g} s) at {self.base_url}",
            method=method,
            path=path,
        )

    def _http_error(
        self, method: str, path: str, response: requests.Response, retries: int = 0
    ) -> LeapAPIError:
        status = response.status_code
        title = error_title(response.content)
        title = self._redact(title) if title else None
        message = f"Leap {method} {path} answered HTTP {status}"
        if title:
            message += f": {title}"
        if status in AUTH_HINTS:
            message += f" ({AUTH_HINTS[status]}; base URL {self.base_url})"
        if retries:
            message += f"; still failing after {retries} retr{'y' if retries == 1 else 'ies'}"
        cls = LeapAuthError if status in AUTH_HINTS else LeapAPIError
        return cls(message, method=method, path=path, status=status, title=title)

    # -- paging ----------------------------------------------------------------------------------

    def _decode_page(
        self, body: bytes, method: str, path: str, page_no: int, shape: PageShape
    ) -> tuple[list[msgspec.Raw], str | None]:
        """Split one page into raw records and the next token, reading the body once."""
        try:
            page = shape.decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise LeapPagingError(
                f"Leap {method} {path}: page {page_no} is not readable JSON of the expected shape "
                f"({exc}); nothing after it was read",
                method=method,
                path=path,
            ) from None
        if isinstance(page, list):  # a bare array: one page, no token
            return page, None
        records: list[msgspec.Raw] = next(
            (r for r in map(page.__getattribute__, shape.record_fields) if r), []
        )
        token = next((t for t in map(page.__getattribute__, shape.token_fields) if t), None)
        return records, None if token is None else str(token)

    def _pages(
        self,
        method: str,
        path: str,
        build: Callable[[str | None], tuple[list[tuple[str, str]] | None, dict[str, Any] | None]],
        records_key: str,
        token_key: str,
    ) -> Iterator[list[msgspec.Raw]]:
        """Follow page tokens until the last page; a token seen before is an error, not a loop."""
        shape = page_shape(records_key, token_key)
        seen: set[str] = set()
        token: str | None = None
        page_no = 0
        while True:
            page_no += 1
            params, body = build(token)
            response = self.request(method, path, params=params, json=body)
            records, token = self._decode_page(response.content, method, path, page_no, shape)
            yield records
            if token is None:
                self.log.info("Leap %s %s: read %d page(s)", method, path, page_no)
                return
            if token in seen:
                raise LeapPagingError(
                    f"Leap {method} {path}: page {page_no} repeated an earlier page token; "
                    "stopped instead of looping",
                    method=method,
                    path=path,
                )
            seen.add(token)

    def iter_connections(
        self,
        ref_ids: Iterable[str] | str | None = None,
        started_after: datetime | date | str | None = None,
        interacted_after: datetime | date | str | None = None,
        page_size: int | None = None,
    ) -> Iterator[ConnectRecord]:
        """Every Connect record matching the filters, page by page (memory: one page).

        Reference IDs are sent as repeated ``ref-id`` parameters, split into several requests
        when the query would get too long. Records that do not fit the documented shape come
        back with ``parse_error`` set instead of stopping the run.
        """
        names = self.wire
        size = self._check_page_size(page_size) if page_size is not None else self.page_size
        base: list[tuple[str, str]] = [(names.page_size_param, str(size))]
        if started_after is not None:
            base.append((names.start_date_param, format_timestamp(started_after)))
        if interacted_after is not None:
            base.append((names.last_interaction_param, format_timestamp(interacted_after)))
        if ref_ids is None:
            groups: list[list[tuple[str, str]]] = [[]]
        else:
            ids = validate_ref_ids(ref_ids)
            if not ids:
                return
            groups = [
                [(names.ref_id_param, r) for r in chunk]
                for chunk in chunk_ref_ids(ids, names.ref_id_param)
            ]
        for group in groups:
            query = group + base

            def build(
                token: str | None, query: list[tuple[str, str]] = query
            ) -> tuple[list[tuple[str, str]], None]:
                # requests URL-encodes each value exactly once; the token goes in as received.
                return (query if token is None else [*query, (names.page_token_param, token)]), None

            for raw_records in self._pages(
                "GET", names.connections_path, build, names.records_key, names.next_token_key
            ):
                for raw in raw_records:
                    yield decode_connect_record(raw)

    def iter_meters(
        self,
        connection_reference_ids: Iterable[str] | str | None = None,
        created_after: datetime | date | str | None = None,
        page_size: int | None = None,
        **filters: Any,
    ) -> Iterator[Meter]:
        """Meters from ``POST /v2/meters/search``; IDs go in requests of at most 100 each.

        A meter listed under several chunks is yielded once.
        """
        low, high = wire.METERS_PAGE_SIZE_RANGE
        size = min(high, self.page_size) if page_size is None else page_size
        if not isinstance(size, int) or not low <= size <= high:
            raise LeapConfigError(f"meters page_size must be {low} to {high}, got {size!r}")
        body: dict[str, Any] = {k: v for k, v in filters.items() if v is not None}
        body["page_size"] = size
        if created_after is not None:
            body["created_after_date_time"] = format_timestamp(created_after)
        if connection_reference_ids is None:
            chunks: list[list[str] | None] = [None]
        else:
            ids = validate_ref_ids(connection_reference_ids)
            if not ids:
                return
            step = wire.METERS_MAX_REFERENCE_IDS
            chunks = [ids[i : i + step] for i in range(0, len(ids), step)]
        seen: set[str] = set()
        for chunk in chunks:
            chunk_body = body if chunk is None else {**body, "connection_reference_ids": chunk}

            def build(
                token: str | None, chunk_body: dict[str, Any] = chunk_body
            ) -> tuple[None, dict[str, Any]]:
                return None, (chunk_body if token is None else {**chunk_body, "page_token": token})

            for raw_meters in self._pages(
                "POST", wire.METERS_SEARCH_PATH, build, "meters", "next_page_token"
            ):
                for raw in raw_meters:
                    try:
                        meter = decode_meter(raw)
                    except msgspec.DecodeError as exc:
                        self.log.warning("Skipped a meter that does not fit the schema: %s", exc)
                        continue
                    if meter.meter_id is not None:
                        if meter.meter_id in seen:
                            continue
                        seen.add(meter.meter_id)
                    yield meter

    def check(self) -> tuple[bool, str]:
        """One cheap authenticated request; ``(ok, message)`` for Airflow's connection test."""
        params = [(self.wire.page_size_param, "1")]
        try:
            # No retries: a connection test in the UI must answer within seconds.
            self.request("GET", self.wire.connections_path, params=params, retry=NO_RETRY)
        except LeapAPIError as exc:
            return False, str(exc)
        return True, f"Connected to Leap at {self.base_url}: the Connect API answered."
