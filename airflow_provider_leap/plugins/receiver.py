"""The webhook receiver: a FastAPI app for ``/leap/webhooks/{conn_id}`` on Airflow's API server.

Each delivery is checked in this order, answered as soon as one check decides:

1. the connection ``conn_id`` is a Leap connection with a ``webhook_secret``, and the header
   named by its ``webhook_header`` extra carries that secret (constant-time comparison):
   otherwise **401**, nothing read further, nothing recorded; the connection could not be
   looked up (database or secrets backend down): **503**, so Leap delivers it again later;
2. the body is at most 1 MiB: otherwise **413**;
3. the body is Leap's envelope of a valid event (``webhooks.read_event``): otherwise **400**,
   logged by field name only (payloads hold Reference IDs);
4. an event type of neither family this provider records (``connect_session.*``,
   ``meter.*``): **202**, logged by type name, not recorded (a new type of either family is
   recorded as an event of its kind, like a published one);
5. the event is accepted: its marker is created exclusively in the inbox beside the delivery
   ledger (``inbox.WebhookInbox``; shared by every API server worker and machine, kept across
   restarts): **200** ``accepted``; it existed already: **200** ``duplicate``; the storage
   failed: **503**, so Leap delivers it again later.

Then, off the request path, each worker's :class:`Recorder` records accepted events in batches
as Airflow asset events on ``leap://<conn_id>/<kind>`` (``assets.asset_uri``), through Airflow's
asset manager (the call the REST API's ``POST /api/v2/assets/events`` makes), retrying while the
database is unavailable. Markers a dead worker left unrecorded, or claimed and never marked done,
are recovered by the others (see :meth:`Recorder.recover` for why none is recorded twice).

``plugins.webhooks.LeapWebhooksPlugin`` mounts it; only the API server imports this module.
"""

from __future__ import annotations

import contextlib
import gc
import hmac
import importlib
import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple, cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from airflow_provider_leap.inbox import (
    Accepted,
    Marker,
    WebhookInbox,
    inbox_folders,
    utcnow,
    valid_folder_name,
)
from airflow_provider_leap.timeutil import parse_timestamp
from airflow_provider_leap.webhooks import (
    KIND_PREFIXES,
    MAX_BODY_BYTES,
    EnvelopeError,
    read_event,
    receiver_secret,
)

log = logging.getLogger("airflow_provider_leap.webhooks.receiver")

ROUTE = "/webhooks/{conn_id}"
MAX_TYPE_SHOWN = 100  # characters of an unknown event type's name in the log
SETTINGS_TTL = 10.0  # seconds a connection's secret is cached: a rotated secret counts after it
BATCH = 200  # accepted events recorded in one database transaction
RECOVER_EVERY = 120.0  # seconds between looks for markers a dead worker left unrecorded
STALE = timedelta(minutes=2)  # a marker nobody took for this long was left by a dead worker
LEASE = timedelta(minutes=10)  # a claim not done by then was left by a dead worker: far longer
# than any transaction (the one provider-wide option is [leap] ledger_url: this stays a constant)
SKEW = timedelta(minutes=10)  # clocks of API server machines may differ by this much
RECORDED, NO_ASSET, ALREADY = "recorded", "no asset", "already recorded"
MAX_BACKOFF = 30.0
SQLITE_ATTEMPTS = 5


@dataclass(frozen=True)
class _Settings:
    header: str | None  # None: this connection cannot receive (``reason`` says why)
    secret: bytes
    reason: str
    fetched: float


def storage_root(url: str) -> Marker:
    """The inbox's root for ``[leap] ledger_url``: a plain path for local folders (no
    filesystem layer on the request path), an ``ObjectStoragePath`` otherwise."""
    # Both fit Marker; pathlib's read-only ``name`` and wider signatures are not mypy's idea of it.
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() in ("", "file"):
        return cast("Marker", Path(parts.path if parts.scheme else url))
    from airflow.sdk import ObjectStoragePath

    return cast("Marker", ObjectStoragePath(url))


class Pending(NamedTuple):
    """An accepted event to record, with the claim that records it. ``check``: an earlier
    attempt may have committed it (a recovered event, or a retry), so look in the database."""

    inbox: WebhookInbox
    marker: Marker
    accepted: Accepted
    claim: int = 1
    check: bool = False


class Receiver:
    """One API server worker's receiver state: cached secrets, inboxes and the recorder.

    :param root: the inbox's root (default: from ``[leap] ledger_url``).
    :param clock: wall clock of the inboxes (claims and their lease), injectable for tests.
    """

    def __init__(
        self, root: Marker | None = None, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._root = root
        self._clock = clock
        self._settings: dict[str, _Settings] = {}
        self._inboxes: dict[str, WebhookInbox] = {}
        self._lock = threading.Lock()
        self.recorder = Recorder(self)

    @property
    def root(self) -> Marker:
        if self._root is None:
            from airflow_provider_leap.operators.contact import default_ledger_url

            self._root = storage_root(default_ledger_url())
        return self._root

    # -- 1. who may deliver ----------------------------------------------------------------------

    def cached(self, conn_id: str) -> _Settings | None:
        """The connection's header and secret if read less than ``SETTINGS_TTL`` seconds ago."""
        cached = self._settings.get(conn_id)
        if cached is not None and time.monotonic() - cached.fetched < SETTINGS_TTL:
            return cached
        return None

    def settings(self, conn_id: str) -> _Settings:
        """The connection's header and secret, read again (blocking: a database or secrets
        backend lookup) and cached; raises when the lookup fails (nothing cached then)."""
        settings = self._read_settings(conn_id)
        with self._lock:
            if len(self._settings) > 1000:  # a flood of made-up ids must not grow this forever
                self._settings.clear()
            self._settings[conn_id] = settings
        return settings

    @staticmethod
    def _read_settings(conn_id: str) -> _Settings:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        from airflow_provider_leap.config import LeapConfig
        from airflow_provider_leap.errors import LeapConfigError
        from airflow_provider_leap.hooks.leap import LeapHook

        now = time.monotonic()
        if not valid_folder_name(conn_id):
            return _Settings(None, b"", "not a connection id", now)
        try:
            conn = BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:  # anything else: the lookup failed, the caller says 503
            return _Settings(None, b"", "no such connection", now)
        if conn.conn_type != LeapHook.conn_type:
            return _Settings(None, b"", f"connection type is {conn.conn_type!r}, not 'leap'", now)
        try:
            config = LeapConfig.from_connection(conn)
            header, secret = receiver_secret(config.webhook_header, config.webhook_secret)
        except LeapConfigError as exc:
            return _Settings(None, b"", str(exc), now)
        return _Settings(header, secret.encode(), "", now)

    # -- 5. accept, in a worker thread -----------------------------------------------------------

    def inbox(self, conn_id: str) -> WebhookInbox:
        found = self._inboxes.get(conn_id)
        if found is None:
            with self._lock:
                inbox = WebhookInbox(self.root, conn_id, clock=self._clock)
                found = self._inboxes.setdefault(conn_id, inbox)
        return found

    def accept(self, conn_id: str, event_id: str, uri: str, extra: dict[str, Any]) -> str:
        """``accepted`` (and queued for recording) or ``duplicate``; raises if storage fails."""
        inbox = self.inbox(conn_id)
        marker = inbox.accept(event_id, uri, extra)
        if marker is None:
            return "duplicate"
        self.recorder.submit(Pending(inbox, marker, Accepted(uri, extra, "")))
        return "accepted"


class Recorder:
    """Records accepted events as Airflow asset events, in batches, on a thread of its own.

    A batch is one database transaction. While the database fails, the batch's events are given
    back (another worker may take them) and tried again with a growing pause. A claim that is
    not recorded is always given back; once recorded, the event is marked done.
    """

    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self._queue: queue.Queue[Pending | None] = queue.Queue()
        self._busy = 0
        self._idle = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(
                    target=self._run, name="leap-webhook-recorder", daemon=True
                )
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Record what is queued within ``timeout``; the rest stays in the inbox, recovered
        by a worker that is still running (or by this one after a restart)."""
        self.flush(timeout)
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)  # wakes it up; it ends on reading it
            thread.join(timeout)

    def submit(self, pending: Pending) -> None:
        with self._idle:
            self._busy += 1
        self._queue.put(pending)
        if self._thread is None:
            self.start()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every submitted event was recorded (or given back); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _done(self, count: int) -> None:
        with self._idle:
            self._busy -= count
            self._idle.notify_all()

    def _run(self) -> None:
        next_recovery = time.monotonic() + RECOVER_EVERY / 4
        while not self._stopping.is_set():
            try:
                first = self._queue.get(timeout=max(0.0, next_recovery - time.monotonic()))
            except queue.Empty:
                self.recover()
                next_recovery = time.monotonic() + RECOVER_EVERY
                continue
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            try:
                self._record(batch)
            except Exception:  # storage trouble: the markers stay; a later recovery retries
                log.exception("Recording %d Leap webhook event(s) failed", len(batch))
            finally:
                self._done(len(batch))

    def _record(self, batch: list[Pending]) -> None:
        pause = 0.5
        while not self._stopping.is_set():
            taken = _take(batch)  # a storage error: raised, the markers wait for a recovery
            if not taken:
                return
            outcomes: list[str] | None = None
            try:
                outcomes = _register_asset_events(
                    [(t.accepted.uri, t.accepted.extra, t.check) for t in taken]
                )
            except Exception:
                log.exception(
                    "Recording %d accepted Leap webhook event(s) failed; retrying in %.1f s "
                    "(they stay in the inbox until recorded)",
                    len(taken),
                    pause,
                )
            finally:
                if outcomes is None:
                    _give_back(taken)
            if outcomes is None:  # a failed commit may still have committed: check next time
                batch = [item._replace(check=True) for item in batch]
                self._stopping.wait(pause)
                pause = min(pause * 2, MAX_BACKOFF)
                continue
            for item, outcome in zip(taken, outcomes, strict=True):
                _log_recorded(item.accepted, outcome)
                try:
                    item.inbox.done(item.marker)
                except Exception as exc:  # its claim expires, and the recovery finds it recorded
                    log.warning("Marking %s recorded failed: %s", item.marker, exc)
            return

    def recover(self) -> int:
        """Queue the accepted events left unrecorded; returns how many.

        Those are markers never claimed (a worker died before recording them) and claims older
        than the lease with no ``.done`` (a worker died, or lost its storage, while recording).
        None is recorded twice: a recovered event is first looked up among the asset's events,
        in the transaction that would record it, and only recorded if absent. The one case this
        cannot see is a transaction still open when its claim expires, which the lease, far
        longer than any transaction, rules out; a claim is taken over only after the lease plus
        ``SKEW``, so a recovering worker whose clock runs ahead does not cut a live one short.
        """
        try:
            root = self._receiver.root
            found = [
                Pending(inbox, marker, accepted, claim, check=True)
                for conn_id in inbox_folders(root)
                for inbox in [self._receiver.inbox(conn_id)]
                for marker, accepted, claim in inbox.unrecorded(STALE, LEASE + SKEW)
            ]
        except Exception:
            log.exception("Looking for unrecorded Leap webhook events failed")
            return 0
        for pending in found:
            log.warning("Recovering accepted Leap webhook event %s", pending.marker)
            self.submit(pending)
        return len(found)


def _take(batch: list[Pending]) -> list[Pending]:
    """The events of ``batch`` this worker now holds a claim on; if claiming fails half-way,
    the claims already taken are given back before the error is raised."""
    taken: list[Pending] = []
    try:
        for item in batch:
            if item.inbox.take(item.marker, item.claim):
                taken.append(item)
    except BaseException:
        _give_back(taken)
        raise
    return taken


def _give_back(taken: list[Pending]) -> None:
    for item in taken:
        try:
            item.inbox.give_back(item.marker, item.claim)
        except Exception as exc:  # the claim expires after the lease, then it is recovered
            log.warning("Giving back the claim of %s failed: %s", item.marker, exc)


def _log_recorded(accepted: Accepted, outcome: str) -> None:
    extra = accepted.extra
    if outcome == RECORDED:
        status = extra.get("status")
        log.info(
            "Leap webhook %s: %s%s recorded on %s",
            extra.get("webhook_event_id"),
            extra.get("event_type"),
            "" if status is None else f" {status}",
            accepted.uri,
        )
    elif outcome == ALREADY:
        log.info(
            "Leap webhook %s: found recorded on %s already, not recorded again",
            extra.get("webhook_event_id"),
            accepted.uri,
        )
    else:
        log.warning(
            "Leap webhook %s (%s): no DAG is scheduled on %s, so Airflow has no such asset and "
            "the event was not recorded; schedule a DAG on leap_asset(...) for it",
            extra.get("webhook_event_id"),
            extra.get("event_type"),
            accepted.uri,
        )


def _register_asset_events(events: list[tuple[str, dict[str, Any], bool]]) -> list[str]:
    """Asset events through Airflow's configured asset manager (``[core] asset_manager_class``),
    as the REST API's ``POST /api/v2/assets/events`` records one: the event, the runs it queues
    for DAGs scheduled on the asset, listeners and metrics; all in one committed transaction.
    Each event's outcome: ``RECORDED``; ``NO_ASSET`` when no DAG references its asset (Airflow
    does not know it); ``ALREADY`` when it is to be checked (its third item) and the asset has
    it already.

    On SQLite (development only) concurrent writers fail at once with "database is locked"
    instead of waiting: the worker's threads take turns, and another worker's lock is retried.
    """
    from airflow.assets.manager import asset_manager
    from airflow.serialization.definitions.assets import SerializedAssetUniqueKey
    from airflow.utils.session import create_session

    for attempt in range(1, SQLITE_ATTEMPTS + 1):
        try:
            with _SQLITE.turn(), create_session() as session:
                there = _recorded_already([(u, e) for u, e, check in events if check], session)
                return [
                    ALREADY
                    if (uri, extra.get("webhook_event_id")) in there
                    else RECORDED
                    if asset_manager.register_asset_change(
                        asset=SerializedAssetUniqueKey(name=uri, uri=uri),
                        extra=extra,
                        source_is_api=True,
                        session=session,
                    )
                    is not None
                    else NO_ASSET
                    for uri, extra, _ in events
                ]
        except Exception as exc:
            if not _SQLITE.enabled or "locked" not in str(exc) or attempt == SQLITE_ATTEMPTS:
                raise
            time.sleep(0.02 * attempt)
    raise AssertionError("unreachable")


def _recorded_already(
    events: list[tuple[str, dict[str, Any]]], session: Any
) -> set[tuple[str, Any]]:
    """The (asset URI, webhook_event_id) pairs of ``events`` the database has already: one
    query per asset, over its events since the earliest of them was received (less ``SKEW``;
    all of them when one has no time). The ids are compared here, not in SQL: JSON queries
    differ between databases."""
    from airflow.models.asset import AssetEvent, AssetModel
    from sqlalchemy import select

    since: dict[str, datetime | None] = {}
    for uri, extra in events:
        received = parse_timestamp(extra.get("event_time"))
        earliest = since.get(uri, received)
        since[uri] = None if received is None or earliest is None else min(received, earliest)
    found: set[tuple[str, Any]] = set()
    for uri, start in since.items():
        query = select(AssetEvent.extra).join(AssetModel, AssetModel.id == AssetEvent.asset_id)
        query = query.where(AssetModel.uri == uri)
        if start is not None:
            query = query.where(AssetEvent.timestamp >= start - SKEW)
        found.update((uri, e.get("webhook_event_id")) for e in session.scalars(query) if e)
    return found


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


_SQLITE = _SqliteTurns()

# Imported by the first delivery otherwise, while Leap waits for the answer.
_RECORDING_MODULES = (
    "airflow.assets.manager",
    "airflow.sdk",
    "airflow.serialization.definitions.assets",
    "airflow.utils.session",
    "airflow_provider_leap.assets",
    "airflow_provider_leap.hooks.leap",
    "airflow_provider_leap.operators.contact",
)


def _warm_up(receiver: Receiver) -> None:
    for name in _RECORDING_MODULES:
        importlib.import_module(name)
    # The API server's heap is large: a full collection walks all of it, and stalls every
    # request of the worker meanwhile (0.3 to 1.5 s on 2 busy cores, bench.webhooks). What
    # exists once the app has started lives as long as the worker: kept out of collections,
    # as Airflow's DAG processor and LocalExecutor do.
    gc.freeze()
    receiver.recorder.start()


def create_app(receiver: Receiver | None = None) -> FastAPI:
    """The FastAPI app the plugin mounts at ``/leap`` (``receiver``: for tests)."""
    from airflow_provider_leap.assets import asset_uri

    state = receiver or Receiver()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(_warm_up, state)
        yield
        await run_in_threadpool(state.recorder.stop)

    app = FastAPI(
        title="Leap webhook receiver",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.receiver = state

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
        settings = state.cached(conn_id)
        if settings is None:
            try:
                settings = await run_in_threadpool(state.settings, conn_id)
            except Exception as exc:  # its message may quote a connection: the type only
                log.warning(
                    "Leap webhook for %r not accepted (503): looking up the connection failed "
                    "(%s); the database or secrets backend may be down, Leap delivers it again",
                    conn_id,
                    type(exc).__name__,
                )
                return answer(503, error="not accepted; deliver again later")
        if settings.header is None:
            log.warning("Leap webhook for %r refused (401): %s", conn_id, settings.reason)
            return answer(401, error="unauthorized")
        presented = request.headers.get(settings.header)
        # Starlette decodes header bytes as latin-1: encoding so gives back the bytes sent.
        if presented is None or not hmac.compare_digest(
            presented.encode("latin-1"), settings.secret
        ):
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
        if event.kind is None:  # the type's name only: the payload holds Reference IDs
            log.warning(
                "Leap webhook %s for %r: event type %r is of no family this provider records "
                "(%s); acknowledged (202), not recorded. If a DAG needs it, upgrade the provider "
                "or ask its maintainers to add it",
                event.event_id,
                conn_id,
                event.event_type[:MAX_TYPE_SHOWN],
                ", ".join(f"{prefix}*" for prefix in KIND_PREFIXES),
            )
            return answer(202, status="ignored: unknown event type")
        uri = asset_uri(conn_id, event.kind)
        extra = event.extra(received_at)
        try:
            outcome = await run_in_threadpool(state.accept, conn_id, event.event_id, uri, extra)
        except Exception:
            log.exception("Leap webhook %s for %r: inbox not writable", event.event_id, conn_id)
            return answer(503, error="not accepted; deliver again later")
        if outcome == "duplicate":
            log.info("Leap webhook %s for %r: duplicate, accepted before", event.event_id, conn_id)
        return answer(200, status=outcome, webhook_event_id=event.event_id)

    return app
