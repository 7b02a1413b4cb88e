"""LeapHook: an Airflow connection of type ``leap`` adapted to the provider's HTTP core."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException

from airflow_provider_leap import CONNECTION_FORM, wire
from airflow_provider_leap.errors import LeapError

if TYPE_CHECKING:
    from airflow.sdk.definitions.connection import Connection

    from airflow_provider_leap.client import LeapClient
    from airflow_provider_leap.models import ConnectRecord, Meter
    from airflow_provider_leap.webhooks import EnsureResult, Webhook, WebhookTestResult

T = TypeVar("T")


class LeapException(AirflowException):
    """Provider exception for every Leap failure; the core error is kept as ``__cause__``.

    ``status`` and ``title`` carry the HTTP status and Leap's error title when there was one.
    """

    def __init__(self, message: str, status: int | None = None, title: str | None = None):
        super().__init__(message)
        self.status = status
        self.title = title


def _as_airflow_error(error: LeapError) -> LeapException:
    return LeapException(
        str(error), status=getattr(error, "status", None), title=getattr(error, "title", None)
    )


def _iter_airflow_errors(items: Iterator[T]) -> Iterator[T]:
    try:
        yield from items
    except LeapError as exc:
        raise _as_airflow_error(exc) from exc


def _call_airflow_errors(call: Callable[..., T], *args: Any) -> T:
    try:
        return call(*args)
    except LeapError as exc:
        raise _as_airflow_error(exc) from exc


def connection_extras(conn: Connection) -> dict[str, Any]:
    """The connection's extras; keys the UI may prefix (``extra__leap__x``) are unprefixed."""
    raw = conn.extra_dejson if conn.extra else {}
    prefix = f"extra__{LeapHook.conn_type}__"
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in raw.items()}


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def base_url_for(conn: Connection, extras: Mapping[str, Any]) -> str:
    """Host when set (full URL or bare host), else Leap's host for ``environment``."""
    if conn.host:
        host = conn.host.strip()
        if "://" not in host and conn.schema in ("http", "https"):
            host = f"{conn.schema}://{host}"
        if conn.port and host.count(":") < 2:
            host = f"{host}:{conn.port}"
        return host
    env = str(extras.get("environment") or "production").strip().lower()
    if env not in wire.ENVIRONMENT_URLS:
        raise LeapException(
            f"Leap connection {conn.conn_id!r}: environment {env!r} is not one of "
            f"{sorted(wire.ENVIRONMENT_URLS)}; or set the host to a base URL"
        )
    return wire.ENVIRONMENT_URLS[env]


def environment_for(conn: Connection, extras: Mapping[str, Any]) -> str:
    """``staging`` when the connection points there (by extra or host), else ``production``."""
    host = (conn.host or "").lower()
    if "staging" in host or str(extras.get("environment", "")).lower() == "staging":
        return "staging"
    return "production"


def client_from_connection(conn: Connection, **overrides: Any) -> LeapClient:
    """Build the HTTP core from an Airflow connection (shared by the hook and the trigger)."""
    from airflow_provider_leap.client import DEFAULT_PAGE_SIZE, DEFAULT_TIMEOUT, LeapClient
    from airflow_provider_leap.retry import RetryPolicy

    extras = connection_extras(conn)

    def number(key: str, default: float, cast: type = float) -> Any:
        # The form sends null or "" for a field left empty: that means the default.
        value = extras.get(key)
        if value is None or value == "":
            return default
        try:
            return cast(value)
        except (TypeError, ValueError):
            raise LeapException(
                f"Leap connection {conn.conn_id!r}: extra {key}={value!r} is not a number"
            ) from None

    try:
        retry = RetryPolicy(
            max_retries=number("max_retries", RetryPolicy.max_retries, int),
            max_wait=number("max_retry_wait", RetryPolicy.max_wait),
            backoff_base=number("retry_backoff", RetryPolicy.backoff_base),
        )
    except ValueError as exc:
        raise LeapException(f"Leap connection {conn.conn_id!r}: invalid extra: {exc}") from None
    settings: dict[str, Any] = {
        "timeout": number("timeout", DEFAULT_TIMEOUT),
        "page_size": number("page_size", DEFAULT_PAGE_SIZE, int),
        "retry": retry,
        "wire_names": wire.WireNames.from_extras(extras),
        "allow_insecure_http": _flag(extras.get("allow_insecure_http", False)),
    }
    settings.update(overrides)
    try:
        return LeapClient(base_url_for(conn, extras), conn.password or "", **settings)
    except LeapError as exc:
        raise LeapException(f"Leap connection {conn.conn_id!r}: {exc}") from exc


class LeapHook(BaseHook):
    """Talks to Leap's partner API through an Airflow connection of type ``leap``.

    The connection's password is the API key; host is a base URL (empty: ``environment`` extra
    picks production or staging). Extras: ``timeout``, ``max_retries``, ``max_retry_wait``,
    ``retry_backoff`` (first backoff in seconds, doubling), ``page_size``,
    ``allow_insecure_http``, ``portal_url`` and the wire-name overrides of
    :class:`airflow_provider_leap.wire.WireNames`.

    :param leap_conn_id: the Airflow connection to use.
    """

    conn_name_attr = "leap_conn_id"
    default_conn_name = "leap_default"
    conn_type = "leap"
    hook_name = "Leap"

    def __init__(self, leap_conn_id: str = default_conn_name, **client_overrides: Any) -> None:
        super().__init__()
        self.leap_conn_id = leap_conn_id
        self._client_overrides = client_overrides

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Form behaviour for Airflow versions that still ask the hook (same source as 3.x)."""
        behaviour = CONNECTION_FORM["ui-field-behaviour"]
        return {
            "hidden_fields": list(behaviour["hidden-fields"]),
            "relabeling": dict(behaviour["relabeling"]),
            "placeholders": dict(behaviour["placeholders"]),
        }

    @functools.cached_property
    def connection(self) -> Connection:
        return self.get_connection(self.leap_conn_id)

    @functools.cached_property
    def client(self) -> LeapClient:
        """One client (one keep-alive session) per hook instance."""
        return client_from_connection(self.connection, **self._client_overrides)

    def get_conn(self) -> LeapClient:
        return self.client

    def iter_connections(
        self,
        ref_ids: Iterable[str] | str | None = None,
        started_after: datetime | date | str | None = None,
        interacted_after: datetime | date | str | None = None,
        page_size: int | None = None,
    ) -> Iterator[ConnectRecord]:
        """Stream every Connect record matching the filters (memory bounded by one page)."""
        return _iter_airflow_errors(
            self.client.iter_connections(ref_ids, started_after, interacted_after, page_size)
        )

    def get_connections(
        self,
        ref_ids: Iterable[str] | str | None = None,
        started_after: datetime | date | str | None = None,
        interacted_after: datetime | date | str | None = None,
        page_size: int | None = None,
    ) -> list[ConnectRecord]:
        """All matching Connect records as a list: for small result sets."""
        return list(self.iter_connections(ref_ids, started_after, interacted_after, page_size))

    def iter_meters(
        self,
        connection_reference_ids: Iterable[str] | str | None = None,
        created_after: datetime | date | str | None = None,
        page_size: int | None = None,
        **filters: Any,
    ) -> Iterator[Meter]:
        """Stream meters from ``POST /v2/meters/search`` (IDs sent 100 per request)."""
        return _iter_airflow_errors(
            self.client.iter_meters(connection_reference_ids, created_after, page_size, **filters)
        )

    def search_meters(
        self,
        connection_reference_ids: Iterable[str] | str | None = None,
        created_after: datetime | date | str | None = None,
        page_size: int | None = None,
        **filters: Any,
    ) -> list[Meter]:
        """All meters matching the filters, across every page and ID chunk."""
        return list(self.iter_meters(connection_reference_ids, created_after, page_size, **filters))

    def connect_url(self, ref_id: str, transmission_region: str) -> str | None:
        """The customer's Leap Connect link, from the extras ``connect_account`` (required),
        ``connect_variant`` and ``connect_base_url``; None when no account is configured."""
        from airflow_provider_leap.connect_url import (
            DEFAULT_CONNECT_BASE_URL,
            DEFAULT_VARIANT,
            connect_url,
        )

        extras = connection_extras(self.connection)
        account = extras.get("connect_account")
        if not account:
            return None
        return connect_url(
            ref_id,
            transmission_region=transmission_region,
            account=str(account),
            variant=str(extras.get("connect_variant") or DEFAULT_VARIANT),
            base_url=str(extras.get("connect_base_url") or DEFAULT_CONNECT_BASE_URL),
        )

    def test_connection(self) -> tuple[bool, str]:
        """One cheap request, no retries: for ``airflow connections test`` and the UI button."""
        try:
            return self.client.check()
        except (LeapException, LeapError) as exc:
            return False, str(exc)

    def __repr__(self) -> str:
        return f"LeapHook(leap_conn_id={self.leap_conn_id!r})"

    # -- webhook subscriptions (see airflow_provider_leap.webhooks) ------------------------------

    def webhook_headers(self) -> dict[str, str]:
        """The header the receiver checks, from the extras ``webhook_header`` (default
        ``x-leap-webhook-secret``) and ``webhook_secret``: what a subscription must send."""
        from airflow_provider_leap.webhooks import receiver_secret

        extras = connection_extras(self.connection)
        try:
            header, secret = receiver_secret(
                extras.get("webhook_header"), extras.get("webhook_secret")
            )
        except LeapError as exc:
            raise LeapException(f"Leap connection {self.leap_conn_id!r}: {exc}") from exc
        return {header: secret}

    def list_webhooks(self) -> list[Webhook]:
        """Every webhook subscription of this connection's API key."""
        from airflow_provider_leap import webhooks

        return _call_airflow_errors(webhooks.list_webhooks, self.client)

    def create_webhook(
        self,
        receiver_url: str,
        event_types: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Subscribe ``receiver_url`` (default events: Connect sessions; default headers:
        :meth:`webhook_headers`) and return the ``webhook_id``. Not retried: prefer
        :meth:`ensure_webhook`, which is safe to repeat."""
        from airflow_provider_leap import webhooks

        events = event_types or webhooks.CONNECT_EVENT_TYPES
        sent = self.webhook_headers() if headers is None else headers
        return _call_airflow_errors(
            webhooks.create_webhook, self.client, receiver_url, events, sent
        )

    def update_webhook(
        self,
        webhook_id: str,
        receiver_url: str,
        event_types: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Overwrite every setting of subscription ``webhook_id`` (defaults as for create)."""
        from airflow_provider_leap import webhooks

        events = event_types or webhooks.CONNECT_EVENT_TYPES
        sent = self.webhook_headers() if headers is None else headers
        return _call_airflow_errors(
            webhooks.update_webhook, self.client, webhook_id, receiver_url, events, sent
        )

    def delete_webhook(self, webhook_id: str) -> None:
        """Remove subscription ``webhook_id``."""
        from airflow_provider_leap import webhooks

        _call_airflow_errors(webhooks.delete_webhook, self.client, webhook_id)

    def test_webhook(
        self, webhook_id: str, payload: Mapping[str, Any] | None = None
    ) -> WebhookTestResult:
        """Have Leap deliver a test event (default: a ``connect_session.updated`` click by
        ``leap-webhook-test``) and return what the receiver answered."""
        from airflow_provider_leap import webhooks

        return _call_airflow_errors(webhooks.send_test_event, self.client, webhook_id, payload)

    def ensure_webhook(
        self,
        url: str,
        events: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> EnsureResult:
        """Make Leap deliver ``events`` (default: both Connect session events) to ``url`` with
        ``headers`` (default: :meth:`webhook_headers`): creates, updates or leaves the
        subscription as it is, and says which in ``EnsureResult.action``. Safe to repeat."""
        from airflow_provider_leap import webhooks

        wanted = events or webhooks.CONNECT_EVENT_TYPES
        sent = self.webhook_headers() if headers is None else headers
        result: EnsureResult = _call_airflow_errors(
            webhooks.ensure_webhook, self.client, url, wanted, sent
        )
        self.log.info(
            "Leap webhook %s for %s: %s%s",
            result.webhook_id,
            url,
            result.action,
            f" (removed duplicates {list(result.removed)})" if result.removed else "",
        )
        return result


def connection_json(base_url: str, api_key: str, **extra: Any) -> str:
    """An ``AIRFLOW_CONN_<ID>`` JSON value for a Leap connection (used by the demo and docs)."""
    return json.dumps(
        {"conn_type": LeapHook.conn_type, "host": base_url, "password": api_key, "extra": extra}
    )
