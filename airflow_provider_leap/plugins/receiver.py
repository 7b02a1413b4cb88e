"""The webhook receiver: a FastAPI app for ``/leap/webhooks/{conn_id}`` on Airflow's API server.

Each delivery is checked in this order, answered as soon as one check decides:

1. the connection ``conn_id`` is a Leap connection with a ``webhook_secret``, and the header
   named by its ``webhook_header`` extra carries that secret (constant-time comparison):
   otherwise **401**, nothing read further, nothing recorded;
2. the body is at most 1 MiB: otherwise **413**;
3. the body is Leap's envelope of a valid event (``webhooks.read_event``): otherwise **400**,
   logged by field name only (payloads hold Reference IDs);
4. an event type this version does not know: **202**, logged, not recorded;
5. its ``webhook_event_id`` was not accepted before (``dedupe.SeenEvents``, an exclusive-create
   marker beside the delivery ledger, shared by every API server worker and machine and kept
   across restarts): otherwise **200** ``duplicate``;
6. recorded as an Airflow asset event on ``leap://<conn_id>/<kind>`` (``assets.asset_uri``)
   through Airflow's asset manager, the same call the REST API's ``POST /assets/events`` makes:
   **200** ``recorded``. If the database fails, the marker is removed and the answer is **503**,
   so Leap's retry records it later.

``plugins.webhooks.LeapWebhooksPlugin`` mounts it; only the API server imports this module.
"""

from __future__ import annotations

import contextlib
import hmac
import importlib
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from airflow_provider_leap.webhooks import MAX_BODY_BYTES, EnvelopeError, read_event

if TYPE_CHECKING:
    from airflow_provider_leap.dedupe import SeenEvents
    from airflow_provider_leap.webhooks import WebhookEvent

log = logging.getLogger("airflow_provider_leap.webhooks.receiver")

ROUTE = "/webhooks/{conn_id}"
SETTINGS_TTL = 10.0  # seconds a connection's secret is cached: a rotated secret counts after it


@dataclass(frozen=True)
class _Settings:
    header: str | None  # None: this connection cannot receive (``reason`` says why)
    secret: bytes
    reason: str
    fetched: float


class Receiver:
    """The receiver's state in one API server worker: cached secrets and dedupe stores."""

    def __init__(self) -> None:
        self._settings: dict[str, _Settings] = {}
        self._seen: dict[str, SeenEvents] = {}
        self._lock = threading.Lock()

    # -- 1. who may deliver ----------------------------------------------------------------------

    def cached(self, conn_id: str) -> _Settings | None:
        """The connection's header and secret if read less than ``SETTINGS_TTL`` seconds ago."""
        cached = self._settings.get(conn_id)
        if cached is not None and time.monotonic() - cached.fetched < SETTINGS_TTL:
            return cached
        return None

    def settings(self, conn_id: str) -> _Settings:
        """The connection's header and secret, read again (blocking: a database or secrets
        backend lookup) and cached."""
        settings = self._read_settings(conn_id)
        with self._lock:
            if len(self._settings) > 1000:  # a flood of made-up ids must not grow this forever
                self._settings.clear()
            self._settings[conn_id] = settings
        return settings

    @staticmethod
    def _read_settings(conn_id: str) -> _Settings:
        from airflow.sdk import BaseHook

        from airflow_provider_leap.dedupe import valid_folder_name
        from airflow_provider_leap.errors import LeapConfigError
        from airflow_provider_leap.hooks.leap import LeapHook, connection_extras
        from airflow_provider_leap.webhooks import receiver_secret

        now = time.monotonic()
        if not valid_folder_name(conn_id):
            return _Settings(None, b"", "not a connection id", now)
        try:
            conn = BaseHook.get_connection(conn_id)
        except Exception:  # the SDK raises its own not-found error
            return _Settings(None, b"", "no such connection", now)
        if conn.conn_type != LeapHook.conn_type:
            return _Settings(None, b"", f"connection type is {conn.conn_type!r}, not 'leap'", now)
        extras = connection_extras(conn)
        try:
            header, secret = receiver_secret(
                extras.get("webhook_header"), extras.get("webhook_secret")
            )
        except LeapConfigError as exc:
            return _Settings(None, b"", str(exc), now)
        return _Settings(header, secret.encode(), "", now)

    # -- 5. seen before? -------------------------------------------------------------------------

    def seen(self, conn_id: str) -> SeenEvents:
        found = self._seen.get(conn_id)
        if found is None:
            from airflow.sdk import ObjectStoragePath

            from airflow_provider_leap.dedupe import SeenEvents
            from airflow_provider_leap.operators.contact import default_ledger_url

            found = SeenEvents(ObjectStoragePath(default_ledger_url()), conn_id)
            with self._lock:
                self._seen.setdefault(conn_id, found)
        return found

    # -- 5 and 6, in a worker thread --------------------------------------------------------------

    def record(self, conn_id: str, event: WebhookEvent, received_at: datetime) -> tuple[int, str]:
        """Claim the event and record it as an asset event: (HTTP status, outcome)."""
        from airflow_provider_leap.assets import asset_uri

        seen = self.seen(conn_id)
        marker = seen.claim(event.event_id)
        if marker is None:
            log.info("Leap webhook %s (%s): duplicate, already recorded", event.event_id, conn_id)
            return 200, "duplicate"
        assert event.kind is not None
        uri = asset_uri(conn_id, event.kind)
        try:
            recorded = _register_asset_event(uri, event.extra(received_at))
        except Exception:
            seen.release(marker)
            log.exception("Leap webhook %s: recording on %s failed", event.event_id, uri)
            return 503, "not recorded; retry"
        if not recorded:
            log.warning(
                "Leap webhook %s (%s): no DAG is scheduled on %s, so Airflow has no such asset; "
                "the event was not recorded (schedule a DAG on leap_asset(%r))",
                event.event_id,
                event.event_type,
                uri,
                conn_id,
            )
            return 200, "ignored: no DAG is scheduled on this asset"
        log.info(
            "Leap webhook %s: %s %s recorded on %s",
            event.event_id,
            event.event_type,
            event.status,
            uri,
        )
        return 200, "recorded"


def _register_asset_event(uri: str, extra: dict[str, Any]) -> bool:
    """One asset event through Airflow's configured asset manager (``[core]
    asset_manager_class``), as the REST API's ``POST /api/v2/assets/events`` records one: the
    event, the runs it queues for DAGs scheduled on the asset, listeners and metrics, in one
    committed transaction. False when no DAG references the asset (Airflow does not know it).

    On SQLite (development only) concurrent writers fail at once with "database is locked"
    instead of waiting: the worker's threads take turns, and another worker's lock is retried.
    """
    from airflow.assets.manager import asset_manager
    from airflow.serialization.definitions.assets import SerializedAssetUniqueKey
    from airflow.utils.session import create_session

    key = SerializedAssetUniqueKey(name=uri, uri=uri)
    for attempt in range(1, SQLITE_ATTEMPTS + 1):
        try:
            with _SQLITE.turn(), create_session() as session:
                event = asset_manager.register_asset_change(
                    asset=key, extra=extra, source_is_api=True, session=session
                )
            return event is not None
        except Exception as exc:
            if not _SQLITE.enabled or "locked" not in str(exc) or attempt == SQLITE_ATTEMPTS:
                raise
            time.sleep(0.02 * attempt)
    raise AssertionError("unreachable")


class _SqliteTurns:
    """Serialises this worker's writes when the metadata database is SQLite."""

    def __init__(self) -> None:
        self._enabled: bool | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        if self._enabled is None:
            from airflow.configuration import conf

            url = conf.get("database", "sql_alchemy_conn", fallback="")
            self._enabled = url.startswith("sqlite")
        return self._enabled

    def turn(self) -> threading.Lock | contextlib.nullcontext[None]:
        return self._lock if self.enabled else contextlib.nullcontext()


SQLITE_ATTEMPTS = 5
_SQLITE = _SqliteTurns()


# Imported by the first delivery otherwise, while Leap waits for the answer.
_RECORDING_MODULES = (
    "airflow.assets.manager",
    "airflow.sdk",
    "airflow.serialization.definitions.assets",
    "airflow.utils.session",
    "airflow_provider_leap.assets",
    "airflow_provider_leap.dedupe",
    "airflow_provider_leap.hooks.leap",
    "airflow_provider_leap.operators.contact",
)


def _import_recording_path() -> None:
    for name in _RECORDING_MODULES:
        importlib.import_module(name)


def create_app(receiver: Receiver | None = None) -> FastAPI:
    """The FastAPI app the plugin mounts at ``/leap`` (``receiver``: for tests)."""
    state = receiver or Receiver()
    app = FastAPI(title="Leap webhook receiver", docs_url=None, redoc_url=None, openapi_url=None)

    def answer(code: int, **body: str) -> JSONResponse:
        return JSONResponse(body, status_code=code)

    async def read_body(request: Request) -> bytes | None:
        """The body, or None as soon as it exceeds the limit (nothing more is read)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post(ROUTE)
    async def receive(conn_id: str, request: Request) -> JSONResponse:
        received_at = datetime.now(timezone.utc)
        settings = state.cached(conn_id) or await run_in_threadpool(state.settings, conn_id)
        if settings.header is None:
            log.warning("Leap webhook for %r refused (401): %s", conn_id, settings.reason)
            return answer(401, error="unauthorized")
        presented = request.headers.get(settings.header)
        if presented is None or not hmac.compare_digest(presented.encode(), settings.secret):
            log.warning(
                "Leap webhook for %r refused (401): header %s %s",
                conn_id,
                settings.header,
                "missing" if presented is None else "does not match webhook_secret",
            )
            return answer(401, error="unauthorized")
        body = await read_body(request)
        if body is None:
            log.warning("Leap webhook for %r refused (413): over %d bytes", conn_id, MAX_BODY_BYTES)
            return answer(413, error=f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            event = read_event(body)
        except EnvelopeError as exc:
            log.warning("Leap webhook for %r refused (400): %s", conn_id, exc)
            return answer(400, error=str(exc))
        if event.kind is None:
            log.warning(
                "Leap webhook %s for %r: event type %r is not known to this provider version; "
                "acknowledged, not recorded",
                event.event_id,
                conn_id,
                event.event_type,
            )
            return answer(202, status="ignored: unknown event type")
        code, outcome = await run_in_threadpool(state.record, conn_id, event, received_at)
        if code >= 500:
            return answer(code, error=outcome)
        return answer(code, status=outcome, webhook_event_id=event.event_id)

    return app
