"""LeapHook: an Airflow connection of type ``leap`` adapted to the provider's HTTP core."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Collection, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException

from airflow_provider_leap import DEFAULT_CONN_ID, webhooks
from airflow_provider_leap.client import LeapClient, deprecated_alias
from airflow_provider_leap.config import LeapConfig
from airflow_provider_leap.connect_url import DEFAULT_CONNECT_BASE_URL, DEFAULT_VARIANT, connect_url
from airflow_provider_leap.errors import LeapConfigError, LeapError
from airflow_provider_leap.watch import WatchResult, check_ref_ids
from airflow_provider_leap.webhooks import EnsureResult, Events, HeadersArg

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class LeapException(AirflowException):
    """Every Leap failure, as Airflow sees it; the core error is its ``__cause__``, ``status`` and
    ``title`` the HTTP status and Leap's error title when there was one."""

    def __init__(self, message: str, status: int | None = None, title: str | None = None):
        super().__init__(message)
        self.status = status
        self.title = title


@contextlib.contextmanager
def airflow_errors() -> Iterator[None]:
    """Re-raise the core's errors as ``LeapException``, the message and the status kept."""
    try:
        yield
    except LeapError as exc:
        status, title = getattr(exc, "status", None), getattr(exc, "title", None)
        raise LeapException(str(exc), status=status, title=title) from exc


def _translated(items: Iterator[T]) -> Iterator[T]:
    with airflow_errors():
        yield from items


def _delegate(
    method: Callable[Concatenate[LeapClient, P], R], name: str = ""
) -> Callable[Concatenate[LeapHook, P], R]:
    """A function of the client as a hook method: same arguments, errors as ``LeapException``."""

    @functools.wraps(method)
    def call(hook: LeapHook, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with airflow_errors():
            result = method(hook.client, *args, **kwargs)
        return cast("R", _translated(result)) if isinstance(result, Iterator) else result

    call.__name__ = call.__qualname__ = name or method.__name__
    return call


def _collect(
    method: Callable[Concatenate[LeapClient, P], Iterator[T]], name: str
) -> Callable[Concatenate[LeapHook, P], list[T]]:
    """The client's iterator method as a hook method ``name`` returning a list."""

    def call(hook: LeapHook, /, *args: P.args, **kwargs: P.kwargs) -> list[T]:
        with airflow_errors():
            return list(method(hook.client, *args, **kwargs))

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"``{method.__name__}`` as a list (same arguments): for small result sets."
    return call


class LeapHook(BaseHook):
    """Talks to Leap's partner API through an Airflow connection of type ``leap``.

    The password is the API key, the host a base URL (empty: the ``environment`` extra decides).
    Keyword arguments replace the connection's extras and are checked alike, e.g.
    ``LeapHook(timeout=120)``. Methods take the arguments of the same
    :class:`~airflow_provider_leap.client.LeapClient` methods and raise :class:`LeapException`.
    """

    conn_name_attr = "leap_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "leap"
    hook_name = "Leap"

    def __init__(self, leap_conn_id: str = default_conn_name, **overrides: Any) -> None:
        super().__init__()
        self.leap_conn_id = leap_conn_id
        self._overrides = overrides

    @functools.cached_property
    def config(self) -> LeapConfig:
        """The connection, read and checked once: base URL, environment, portal, settings."""
        conn = self.get_connection(self.leap_conn_id)
        with airflow_errors():
            return LeapConfig.from_connection(conn, **self._overrides)

    @functools.cached_property
    def client(self) -> LeapClient:
        """One client (one keep-alive session) per hook instance."""
        return LeapClient(self.config)

    def get_conn(self) -> LeapClient:
        return self.client

    iter_connect_records = _delegate(LeapClient.iter_connect_records)
    get_connect_records = _collect(LeapClient.iter_connect_records, "get_connect_records")
    iter_connections = deprecated_alias(iter_connect_records, "iter_connections")
    iter_active_records = _delegate(LeapClient.iter_active_records)
    get_connections = deprecated_alias(get_connect_records, "get_connections")
    iter_meters = _delegate(LeapClient.iter_meters)
    search_meters = _collect(LeapClient.iter_meters, "search_meters")

    def check_ref_ids(
        self, ref_ids: Collection[str], targets: Collection[str], fails: Collection[str] = ()
    ) -> WatchResult:
        """Where these Reference IDs stand: one pass over the Connect API (the sensor's poke)."""
        with airflow_errors():
            return check_ref_ids(self.client, ref_ids, targets, fails)

    def connect_url(self, ref_id: str, transmission_region: str, variant: str | None = None) -> str:
        """The customer's Leap Connect link, from the extras ``connect_account`` (required:
        raises ``LeapException`` without it, as a message with no link asks for what the
        customer cannot do; review s17b F1), ``connect_variant`` and ``connect_base_url``.
        ``variant``: this customer's, when not the connection's (commercial customers of a
        partner whose connection says ``RESIDENTIAL``, say), spaces around it dropped.

        Leap's Connect host is production's: a staging connection must name its own
        ``connect_base_url`` (raises ``LeapException`` otherwise), or its customers would get
        links to production, which does not know their Reference IDs."""
        config = self.config
        with airflow_errors():
            if not config.connect_base_url and config.environment != "production":
                raise LeapConfigError(
                    f"Leap connection {self.leap_conn_id!r} is {config.environment}, and Leap's "
                    f"Connect links ({DEFAULT_CONNECT_BASE_URL}) are production's: set the extra "
                    "connect_base_url to the Connect host of that environment"
                )
            return connect_url(
                ref_id,
                transmission_region=transmission_region,
                account=config.connect_account or "",
                variant=(variant or "").strip() or config.connect_variant or DEFAULT_VARIANT,
                base_url=config.connect_base_url or DEFAULT_CONNECT_BASE_URL,
            )

    def test_connection(self) -> tuple[bool, str]:
        """One cheap request, no retries: for ``airflow connections test`` and the UI button."""
        try:
            return self.client.check()
        except Exception as exc:  # the Test button gets an answer, whatever went wrong
            return False, str(exc)

    def __repr__(self) -> str:
        return f"LeapHook(leap_conn_id={self.leap_conn_id!r})"

    # -- webhook subscriptions (see airflow_provider_leap.webhooks) ------------------------------

    def webhook_headers(self) -> dict[str, str]:
        """The header the receiver checks, from the extras ``webhook_header`` (default
        ``x-leap-webhook-secret``) and ``webhook_secret``: what a subscription must send."""
        config = self.config
        try:
            header, secret = webhooks.receiver_secret(config.webhook_header, config.webhook_secret)
        except LeapError as exc:
            raise LeapException(f"Leap connection {self.leap_conn_id!r}: {exc}") from exc
        return {header: secret}

    def _subscribe(
        self, func: Callable[..., R], *args: str, events: Events, headers: HeadersArg
    ) -> R:
        """``func(client, *args, events, headers)``; no events (None or empty): the core's default,
        Connect's session events; no headers: :meth:`webhook_headers`."""
        sent = self.webhook_headers() if headers is None else headers
        with airflow_errors():
            return func(self.client, *args, events or None, sent)

    list_webhooks = _delegate(webhooks.list_webhooks)
    delete_webhook = _delegate(webhooks.delete_webhook)
    test_webhook = _delegate(webhooks.send_test_event, "test_webhook")

    def create_webhook(
        self, receiver_url: str, event_types: Events = None, headers: HeadersArg = None
    ) -> str:
        """Subscribe ``receiver_url`` (defaults as for :meth:`ensure_webhook`) and return the
        ``webhook_id``. Not retried: prefer :meth:`ensure_webhook`, which is safe to repeat."""
        return self._subscribe(
            webhooks.create_webhook, receiver_url, events=event_types, headers=headers
        )

    def update_webhook(
        self,
        webhook_id: str,
        receiver_url: str,
        event_types: Events = None,
        headers: HeadersArg = None,
    ) -> str:
        """Overwrite every setting of subscription ``webhook_id`` (defaults as for ensure)."""
        return self._subscribe(
            webhooks.update_webhook, webhook_id, receiver_url, events=event_types, headers=headers
        )

    def ensure_webhook(
        self, url: str, events: Events = None, headers: HeadersArg = None
    ) -> EnsureResult:
        """Make Leap deliver ``events`` (default: both Connect session events) to ``url`` with
        ``headers`` (default: :meth:`webhook_headers`): creates, updates or leaves the
        subscription as it is, and says which in ``EnsureResult.action``. Safe to repeat."""
        result = self._subscribe(webhooks.ensure_webhook, url, events=events, headers=headers)
        removed = f" (removed duplicates {list(result.removed)})" if result.removed else ""
        self.log.info(
            "Leap webhook %s for %s: %s%s", result.webhook_id, url, result.action, removed
        )
        return result


def connection_json(base_url: str, api_key: str, **extra: Any) -> str:
    """An ``AIRFLOW_CONN_<ID>`` JSON value for a Leap connection (tests, examples)."""
    return json.dumps(
        {"conn_type": LeapHook.conn_type, "host": base_url, "password": api_key, "extra": extra}
    )
