"""Leap's webhooks: the subscription API and the events Leap delivers. No Airflow import.

Subscriptions (``/v1.1/webhooks``, Leap's published "Webhook Subscription API" 1.1) are managed
with plain functions over :meth:`LeapClient.request`; :func:`ensure_webhook` makes Leap's
subscription for one receiver URL match what is wanted, and is safe to run again and again.

Events arrive as Leap's envelope ``{"webhook_event_id": <uuid>, "payload": {...}}``;
:func:`read_event` checks one against the published schema and returns a small typed
:class:`WebhookEvent`. Event types and values this version does not know are data: a new status
or utility passes through as a string, and a new ``connect_session.*`` or ``meter.*`` type is an
event of that kind, read best-effort. Only a type of neither family comes back with ``kind`` None.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import msgspec

from airflow_provider_leap.config import unsafe_in_header
from airflow_provider_leap.errors import LeapAPIError, LeapConfigError
from airflow_provider_leap.refids import is_valid_ref_id
from airflow_provider_leap.timeutil import parse_timestamp

if TYPE_CHECKING:  # the HTTP client loads only when a subscription call is made
    from airflow_provider_leap.client import LeapClient

WEBHOOKS_PATH = "/v1.1/webhooks"

CONNECT_SESSION_UPDATED = "connect_session.updated"
CONNECT_AUTHORIZATION_UPDATED = "connect_session.authorization_updated"
METER_CREATED = "meter.created"
METER_GLOBAL_STATUS_UPDATED = "meter.enrollment.global-status.updated"
METER_PARTICIPATION_STATUS_UPDATED = "meter.enrollment.participation-status.updated"
METER_REQUIRED_ACTIONS_UPDATED = "meter.enrollment.required-actions.updated"
METER_GROUP_UPDATED = "meter.enrollment.group.updated"

# The event kinds: one Airflow asset per connection and kind (see ``assets.py``).
CONNECT_SESSION = "connect_session"
METER = "meter"

CONNECT_EVENT_TYPES: tuple[str, ...] = (CONNECT_SESSION_UPDATED, CONNECT_AUTHORIZATION_UPDATED)
METER_EVENT_TYPES: tuple[str, ...] = (
    METER_CREATED,
    METER_GLOBAL_STATUS_UPDATED,
    METER_PARTICIPATION_STATUS_UPDATED,
    METER_REQUIRED_ACTIONS_UPDATED,
    METER_GROUP_UPDATED,
)
EVENT_TYPES: tuple[str, ...] = CONNECT_EVENT_TYPES + METER_EVENT_TYPES
# A type Leap adds later belongs to the kind its family prefix names.
KIND_PREFIXES: dict[str, str] = {CONNECT_SESSION + ".": CONNECT_SESSION, METER + ".": METER}

# Leap publishes no signature scheme: the subscription's headers carry a shared secret, which the
# receiver compares with the connection's ``webhook_secret``.
DEFAULT_SECRET_HEADER = "x-leap-webhook-secret"
MIN_SECRET_LENGTH = 16
MAX_BODY_BYTES = 1024 * 1024  # larger deliveries are refused (413): Leap's events are tiny

# Leap refreshes Connect data once an hour; the project assumes each refresh has landed by this
# long after the hour (the hourly example DAG runs at that minute). An assumption, not published.
REFRESH_LANDED_BY = timedelta(minutes=17)
REFRESH = timedelta(hours=1)
# An event received this long before a refresh's hour may still be missing from that refresh:
# webhook receipt times are the receiver's clock, refreshes Leap's (the receiver allows its own
# machines this much skew), and Leap publishes no cut-off time of a refresh. Holding back such a
# customer's message costs nothing when the refresh did show the event: it is then a new stall,
# younger at the hourly run (REFRESH_LANDED_BY + STALE_MARGIN = 27 min) than the quiet period.
STALE_MARGIN = timedelta(minutes=10)
# Completions received this long before ``stale_from`` still hold a customer whose data shows a
# stall from before them (``held_back``): data up to two hours later than REFRESH_LANDED_BY
# assumes never asks one to finish. The rule is exact at any length; the length is the cost:
# every run reads this much of the asset's events in one Execution API request, which Airflow
# answers event by event (a day of events at a few thousand a day outlasts its 5 s timeout).
LATE_DATA = timedelta(hours=2)

# The published pattern of ``partner_reference`` (the Connect Reference ID).
PARTNER_REFERENCE_PATTERN = r"^[^\/\\?\]\[{}!#$%^&*()<>|]{3,256}$"
RefId = Annotated[str, msgspec.Meta(pattern=PARTNER_REFERENCE_PATTERN)]


# -- subscriptions ---------------------------------------------------------------------------------


class Header(msgspec.Struct, frozen=True):
    """One header Leap sends with every delivery of a subscription (its value is a secret)."""

    name: str
    value: str

    def __repr__(self) -> str:  # never show the value
        return f"Header(name={self.name!r}, value='***')"


class Webhook(msgspec.Struct, frozen=True, kw_only=True):
    """A subscription as Leap lists it. Fields Leap adds later are ignored, not an error."""

    webhook_id: str
    receiver_url: str
    event_types: tuple[str, ...] = ()
    headers: tuple[Header, ...] = ()


class WebhookTestResult(msgspec.Struct, frozen=True, kw_only=True):
    """What Leap got from the receiver when it sent a test event."""

    is_successful: bool
    status_code: int | None = None
    response_time_ms: int | None = None
    error: str | None = None


class EnsureResult(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`ensure_webhook` did: ``action`` is created, updated or unchanged."""

    webhook_id: str
    action: str
    removed: tuple[str, ...] = ()  # other subscriptions to the same URL, deleted


class _List(msgspec.Struct):
    webhooks: list[Webhook]


class _Created(msgspec.Struct):
    webhook_id: str


_LIST = msgspec.json.Decoder(_List)
_CREATED = msgspec.json.Decoder(_Created)
_TEST_RESULT = msgspec.json.Decoder(WebhookTestResult)

HeadersArg = Mapping[str, str] | Iterable[Header | tuple[str, str] | Mapping[str, str]] | None
Events = Sequence[str] | None  # None: CONNECT_EVENT_TYPES


def as_headers(headers: HeadersArg) -> tuple[Header, ...]:
    """Headers from a mapping of names to values, or a list of ``Header`` items, (name, value)
    pairs or Leap's ``{"name": ..., "value": ...}``; names are compared case-insensitively later.
    Errors name the shape, never a value: header values are secrets."""
    if headers is None:
        return ()
    if isinstance(headers, Mapping):
        return tuple(_header(item) for item in headers.items())
    if isinstance(headers, str | bytes):
        raise LeapConfigError("webhook headers must be a mapping or a list of headers, got a str")
    return tuple(_header(item) for item in headers)


def _header(item: object) -> Header:
    if isinstance(item, Mapping) and set(item) == {"name", "value"}:
        item = (item["name"], item["value"])
    if isinstance(item, tuple | list) and len(item) == 2 and not isinstance(item, Header):
        item = Header(str(item[0]), str(item[1]))
    if not isinstance(item, Header):
        raise LeapConfigError(
            "webhook headers must be (name, value) pairs, {'name': ..., 'value': ...} or Header "
            f"items, got a {type(item).__name__}"
        )
    if not item.name.strip():
        raise LeapConfigError("a webhook header has an empty name")
    return item


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes, method: str, path: str) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise LeapAPIError(
            f"Leap {method} {path} answered a body of an unexpected shape ({exc})",
            method=method,
            path=path,
        ) from None


def _body(receiver_url: str, event_types: Events, headers: HeadersArg) -> dict[str, Any]:
    """The subscription as Leap's API takes it; no ``event_types``: Connect's session events."""
    if not isinstance(receiver_url, str) or not receiver_url.strip():
        raise LeapConfigError("receiver_url must be the public URL of your webhook receiver")
    if event_types is None:
        event_types = CONNECT_EVENT_TYPES
    types = [event_types] if isinstance(event_types, str) else list(event_types)
    if not types or not all(isinstance(t, str) and t for t in types):
        raise LeapConfigError(f"event_types must be a non-empty list of names, got {event_types!r}")
    return {
        "receiver_url": receiver_url.strip(),
        "event_types": types,
        "headers": [{"name": h.name, "value": h.value} for h in as_headers(headers)],
    }


def _webhook_path(webhook_id: str, suffix: str = "") -> str:
    if not webhook_id:
        raise LeapConfigError("webhook_id must not be empty")
    return f"{WEBHOOKS_PATH}/{quote(str(webhook_id), safe='')}{suffix}"


def list_webhooks(client: LeapClient) -> list[Webhook]:
    """Every subscription of this API key."""
    response = client.request("GET", WEBHOOKS_PATH)
    return list(_decode(_LIST, response.body, "GET", WEBHOOKS_PATH).webhooks)


def create_webhook(
    client: LeapClient, receiver_url: str, event_types: Events = None, headers: HeadersArg = None
) -> str:
    """Subscribe ``receiver_url``; returns the new ``webhook_id``.

    Not retried (a create that timed out may have succeeded): :func:`ensure_webhook` is the
    call that is safe to repeat.
    """
    return _post(client, _body(receiver_url, event_types, headers))


def _post(client: LeapClient, body: dict[str, Any]) -> str:
    from airflow_provider_leap.client import NO_RETRY

    response = client.request("POST", WEBHOOKS_PATH, json=body, retry=NO_RETRY)
    return str(_decode(_CREATED, response.body, "POST", WEBHOOKS_PATH).webhook_id)


def update_webhook(
    client: LeapClient, webhook_id: str, receiver_url: str, event_types: Events, headers: HeadersArg
) -> str:
    """Replace every setting of a subscription. Leap's PUT overwrites all of them, so nothing is
    defaulted: headers left out would drop the receiver's secret (``[]`` says "none")."""
    if headers is None:
        raise LeapConfigError(
            "update_webhook replaces every setting: give the headers ([] for none)"
        )
    return _put(client, webhook_id, _body(receiver_url, event_types, headers))


def _put(client: LeapClient, webhook_id: str, body: dict[str, Any]) -> str:
    path = _webhook_path(webhook_id)
    response = client.request("PUT", path, json=body)
    return str(_decode(_CREATED, response.body, "PUT", path).webhook_id)


def delete_webhook(client: LeapClient, webhook_id: str) -> None:
    """Remove a subscription; a 404 (already gone) raises :class:`LeapAPIError`."""
    client.request("DELETE", _webhook_path(webhook_id))


def sample_payload(ref_id: str = "leap-webhook-test") -> dict[str, str]:
    """A ``connect_session.updated`` payload for a test delivery: a click by ``ref_id``."""
    return {
        "webhook_event_type": CONNECT_SESSION_UPDATED,
        "partner_reference": ref_id,
        "status": "CREATED",
    }


def send_test_event(
    client: LeapClient, webhook_id: str, payload: Mapping[str, Any] | None = None
) -> WebhookTestResult:
    """Ask Leap to deliver one test event now and report what the receiver answered."""
    from airflow_provider_leap.client import NO_RETRY

    path = _webhook_path(webhook_id, "/test")
    body = dict(payload) if payload is not None else sample_payload()
    response = client.request("POST", path, json=body, retry=NO_RETRY)
    return _decode(_TEST_RESULT, response.body, "POST", path)  # type: ignore[no-any-return]


def _same(webhook: Webhook, body: dict[str, Any]) -> bool:
    """Whether ``webhook`` already delivers what ``body`` asks for (header names: any case)."""
    sent = {(h["name"].lower(), h["value"]) for h in body["headers"]}
    kept = {(h.name.lower(), h.value) for h in webhook.headers}
    return set(webhook.event_types) == set(body["event_types"]) and kept == sent


def ensure_webhook(
    client: LeapClient, receiver_url: str, event_types: Events = None, headers: HeadersArg = None
) -> EnsureResult:
    """Make Leap's subscription for ``receiver_url`` deliver ``event_types`` with ``headers``.

    Creates it when missing, updates it when any setting differs, leaves it alone otherwise; other
    subscriptions to the same URL would deliver every event twice, so they are deleted.
    """
    body = _body(receiver_url, event_types, headers)
    matches = [w for w in list_webhooks(client) if w.receiver_url == body["receiver_url"]]
    if not matches:
        return EnsureResult(webhook_id=_post(client, body), action="created")
    keep, *others = matches
    for other in others:
        delete_webhook(client, other.webhook_id)
    removed = tuple(other.webhook_id for other in others)
    if _same(keep, body):
        return EnsureResult(webhook_id=keep.webhook_id, action="unchanged", removed=removed)
    _put(client, keep.webhook_id, body)
    return EnsureResult(webhook_id=keep.webhook_id, action="updated", removed=removed)


def receiver_secret(header: object, secret: object) -> tuple[str, str]:
    """The header name (lower case) and the secret a receiver checks, from a connection's extras
    ``webhook_header`` (None or "": :data:`DEFAULT_SECRET_HEADER`) and ``webhook_secret``."""
    name = str(header).strip().lower() if header not in (None, "") else DEFAULT_SECRET_HEADER
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise LeapConfigError(f"webhook_header {header!r} is not an HTTP header name")
    if not isinstance(secret, str) or not secret.strip():
        raise LeapConfigError(
            "no webhook_secret in the connection's extras: the receiver refuses every delivery "
            "until one is set"
        )
    if len(secret) < MIN_SECRET_LENGTH or secret != secret.strip():
        raise LeapConfigError(
            f"webhook_secret must be at least {MIN_SECRET_LENGTH} characters, without surrounding "
            f"spaces ({_MAKE_SECRET})"
        )
    unsafe = unsafe_in_header(secret, spaces=True)
    if unsafe is not None:  # it could never match: headers arrive as latin-1, not as typed
        position, what = unsafe
        raise LeapConfigError(
            f"webhook_secret holds {what} at position {position} of {len(secret)}; a header "
            f"carries printable ASCII only ({_MAKE_SECRET}; the secret is never shown here)"
        )
    return name, secret


_MAKE_SECRET = "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"


# -- events ----------------------------------------------------------------------------------------


class EnvelopeError(ValueError):
    """A delivery that is not Leap's envelope of a valid event (answered 400).

    The message names the field, never the value: payloads hold customers' Reference IDs.
    """


class WebhookEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One delivered event, reduced to what a DAG acts on.

    ``kind`` is ``connect_session`` or ``meter`` (for a type this version does not know, the one
    its prefix names), or None for a type of neither family. ``status`` is the event's status
    (for meter events, the enrollment status or participation preference); ``ref_id`` is Leap's
    ``partner_reference``.
    """

    event_id: str
    event_type: str
    kind: str | None
    ref_id: str | None = None
    status: str | None = None
    utility: str | None = None
    meter_id: str | None = None

    def extra(self, received_at: datetime) -> dict[str, Any]:
        """The small, JSON-ready summary stored with the Airflow asset event."""
        summary = {
            "ref_id": self.ref_id,
            "status": self.status,
            "event_type": self.event_type,
            "event_time": received_at.isoformat(),
            "webhook_event_id": self.event_id,
            "utility_name": self.utility,
            "meter_id": self.meter_id,
        }
        return {key: value for key, value in summary.items() if value is not None}


class _Envelope(msgspec.Struct):
    webhook_event_id: uuid.UUID
    payload: msgspec.Raw


class _Type(msgspec.Struct):
    webhook_event_type: str


class _ConnectSession(msgspec.Struct):
    partner_reference: RefId
    status: str


class _ConnectAuthorization(msgspec.Struct):
    partner_reference: RefId
    status: str
    utility_name: str


class _Meter(msgspec.Struct, kw_only=True):
    meter_id: str
    transmission_region: str
    partner_reference: RefId | None = None

    @property
    def status(self) -> str | None:
        return None


class _MeterGlobalStatus(_Meter, kw_only=True):
    global_enrollment_status: str

    @property
    def status(self) -> str | None:
        return self.global_enrollment_status


class _MeterParticipation(_Meter, kw_only=True):
    participation_preference: str
    start_time: str

    @property
    def status(self) -> str | None:
        return self.participation_preference


class _MeterRequiredActions(_MeterGlobalStatus, kw_only=True):
    required_actions: dict[str, Any]


class _MeterGroup(msgspec.Struct):
    market_group_id: str
    market_group_name: str
    start_date_time: str
    end_date_time: str
    meter_ids: list[str]


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_TYPE = msgspec.json.Decoder(_Type)
_OBJECT = msgspec.json.Decoder(dict[str, Any])
_PAYLOADS: dict[str, tuple[str, msgspec.json.Decoder[Any]]] = {
    CONNECT_SESSION_UPDATED: (CONNECT_SESSION, msgspec.json.Decoder(_ConnectSession)),
    CONNECT_AUTHORIZATION_UPDATED: (CONNECT_SESSION, msgspec.json.Decoder(_ConnectAuthorization)),
    METER_CREATED: (METER, msgspec.json.Decoder(_Meter)),
    METER_GLOBAL_STATUS_UPDATED: (METER, msgspec.json.Decoder(_MeterGlobalStatus)),
    METER_PARTICIPATION_STATUS_UPDATED: (METER, msgspec.json.Decoder(_MeterParticipation)),
    METER_REQUIRED_ACTIONS_UPDATED: (METER, msgspec.json.Decoder(_MeterRequiredActions)),
    METER_GROUP_UPDATED: (METER, msgspec.json.Decoder(_MeterGroup)),
}


def read_event(body: bytes) -> WebhookEvent:
    """Check one delivery against Leap's published schema and reduce it to a WebhookEvent.

    Raises :class:`EnvelopeError` for malformed JSON or a wrong shape. An unknown event type is
    not an error: see :func:`kind_of`; what its payload offers is read best-effort.
    """
    try:
        envelope = _ENVELOPE.decode(body)
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"not Leap's webhook envelope: {exc}") from None
    raw = envelope.payload
    try:
        event_type = _TYPE.decode(raw).webhook_event_type
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"payload: {exc}") from None
    event_id = str(envelope.webhook_event_id)
    known = _PAYLOADS.get(event_type)
    if known is None:
        return _unknown(event_id, event_type, raw)
    kind, decoder = known
    try:
        payload = decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"payload of {event_type}: {exc}") from None
    return WebhookEvent(
        event_id=event_id,
        event_type=event_type,
        kind=kind,
        ref_id=getattr(payload, "partner_reference", None),
        status=getattr(payload, "status", None),
        utility=getattr(payload, "utility_name", None),
        meter_id=getattr(payload, "meter_id", None),
    )


def kind_of(event_type: str) -> str | None:
    """The kind of an event type: a published one's, else the one its family prefix names
    (``connect_session.created`` is a ``connect_session`` event), else None."""
    known = _PAYLOADS.get(event_type)
    if known is not None:
        return known[0]
    return next((k for p, k in KIND_PREFIXES.items() if event_type.startswith(p)), None)


def _unknown(event_id: str, event_type: str, raw: msgspec.Raw) -> WebhookEvent:
    """An event of a type Leap added after this version: no schema to hold it to, so each field
    is taken only when present and of the published type (a Reference ID only within Leap's
    rule); a field missing or of another type is left out, never a refused delivery."""
    kind = kind_of(event_type)
    if kind is None:
        return WebhookEvent(event_id=event_id, event_type=event_type, kind=None)
    payload = _OBJECT.decode(raw)  # an object already: the type was read from it

    def text(name: str) -> str | None:
        value = payload.get(name)
        return value if isinstance(value, str) and value else None

    ref_id = text("partner_reference")
    return WebhookEvent(
        event_id=event_id,
        event_type=event_type,
        kind=kind,
        ref_id=ref_id if is_valid_ref_id(ref_id) else None,
        status=text("status"),
        utility=text("utility_name"),
        meter_id=text("meter_id"),
    )


def received_at(extra: Mapping[str, Any], recorded: datetime) -> datetime:
    """When the receiver got a recorded asset event: its ``event_time``
    (:meth:`WebhookEvent.extra`), else when Airflow recorded it (never earlier)."""
    return parse_timestamp(extra.get("event_time")) or recorded


def held_back(
    events: Iterable[tuple[Mapping[str, Any] | None, datetime]], since: datetime
) -> dict[str, datetime | None]:
    """The Reference IDs whose Connect data may predate an event Leap announced for them, each
    with the time before which a stall the data shows is held (None: any stall).

    ``events`` are (``extra``, recorded time) pairs of the asset events the receiver recorded
    (events with no ``ref_id`` name nobody). A customer is held for an event received
    (:func:`received_at`) at or after ``since`` (:func:`stale_from`: the refresh read may not
    show it yet), whatever their stall. An earlier event that announced their Connect session
    COMPLETED holds a stall from before it (less ``STALE_MARGIN``, for the two clocks): a due
    customer is not COMPLETED in the data, so data showing a stall older than the completion
    predates it, however late Leap's refresh landed (``REFRESH_LANDED_BY`` is an assumption); a
    stall after it is news the data does show (the customer came back). The caller reads events
    from ``LATE_DATA`` before ``since``.
    """
    held: dict[str, datetime | None] = {}
    for extra, recorded in events:
        extra = extra or {}
        ref_id = extra.get("ref_id")
        if not isinstance(ref_id, str) or not ref_id or (ref_id in held and held[ref_id] is None):
            continue
        received = received_at(extra, recorded)
        completed = (
            extra.get("event_type") == CONNECT_SESSION_UPDATED
            and extra.get("status") == "COMPLETED"
        )
        if received >= since:
            held[ref_id] = None
        elif completed:  # Leap's clock stamps the stall, the receiver's the event: a margin
            until, latest = received + STALE_MARGIN, held.get(ref_id)
            held[ref_id] = until if latest is None else max(latest, until)
    return held


def stale_from(
    now: datetime,
    *,
    refresh_landed_by: timedelta = REFRESH_LANDED_BY,
    margin: timedelta = STALE_MARGIN,
) -> datetime:
    """The earliest receipt time of a webhook event the Connect data read at ``now`` may miss.

    That data is Leap's latest hourly refresh landed by ``now``: it shows interactions before
    that hour. An event received at or after the hour, less ``margin``, announces something the
    data may not show yet: acting on the record then answers an old state (see
    :data:`STALE_MARGIN`).
    """
    return _hour(now - refresh_landed_by) - margin


def answer_time(
    received_at: datetime,
    *,
    quiet_period: timedelta,
    refresh_landed_by: timedelta = REFRESH_LANDED_BY,
    margin: timedelta = STALE_MARGIN,
) -> datetime:
    """When the Connect API can be asked about an interaction Leap notified at ``received_at``.

    Both a quiet period after it (the contact policy's first step) and the first hourly refresh
    that surely shows it must have passed: before that refresh, the API still shows the
    customer's previous state, and acting on it would answer an old stall instead of this one.
    This is the first time :func:`stale_from` has passed ``received_at``, so a run at this time
    does not hold the customer back for the very event it answers.
    """
    refreshed = _hour(received_at + margin) + REFRESH + refresh_landed_by
    return max(received_at + quiet_period, refreshed)


def _hour(when: datetime) -> datetime:
    """The start of ``when``'s hour in UTC (Leap refreshes on the UTC hour; +05:30 is not)."""
    return when.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
