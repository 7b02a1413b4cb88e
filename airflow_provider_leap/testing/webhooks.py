"""The emulator's webhooks: Leap's subscription API, and deliveries when customers act.

``/v1.1/webhooks`` follows Leap's published "Webhook Subscription API" 1.1 (list, create,
update, delete, test), with its ``{"error", "message"}`` error bodies. When the emulator's clock
moves over a :class:`~airflow_provider_leap.testing.journeys.Population` (``LeapEmulator.play``),
each customer's step becomes Leap's event(s) at once (webhooks do not wait for the hourly
refresh) and is POSTed, in Leap's envelope and with the subscription's headers (names lower
case), to every subscription of that event type. A delivery that gets no 2xx within 10 s is
retried on Leap's schedule (immediately, then after about 1, 2, 4, 8, 16, 29 min, 1, 2 and 4 h),
multiplied by ``time_scale`` so tests wait milliseconds instead of hours.

Emulator choices, not Leap facts: a receiver on plain ``http://`` is accepted on loopback only;
unknown body fields and unknown event types are 400s; one ``webhook_event_id`` per event, shared
by every subscription that receives it; the step-to-event mapping of :func:`journey_events`.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from airflow_provider_leap import webhooks as leap
from airflow_provider_leap.config import is_loopback
from airflow_provider_leap.testing.data import UTILITIES
from airflow_provider_leap.testing.journeys import Journey, Population, Step

# Leap's documented retry delays in seconds, before retry 1..10 (about 8 hours in all).
RETRY_DELAYS: tuple[float, ...] = (0, 60, 120, 240, 480, 960, 1740, 3600, 7200, 14400)
DEFAULT_TIME_SCALE = 0.001  # 8 hours of retries in about 30 seconds
DELIVERY_TIMEOUT = 10.0  # Leap's limit for the receiver's 2xx
_ID_NAMESPACE = uuid.UUID("6f1d8f8e-3c0b-4a57-9d1c-2f6a4c1e9b70")
_UTILITY_CODES = {name: code for options in UTILITIES.values() for name, code in options}

_encode = msgspec.json.encode


class WebhookApiError(Exception):
    """An answer in the subscription API's error shape ``{"error", "message"}``."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers: dict[str, str] = {}

    def body(self) -> bytes:
        return _encode({"error": self.error, "message": self.message})


@dataclass(frozen=True)
class Answer:
    """A 200 answer, shaped like the server's page answers so faults can act on it too."""

    body: bytes
    page: int = 1

    def render(self, *, repeat_token: bool = False) -> bytes:
        return self.body


@dataclass
class Subscription:
    webhook_id: str
    receiver_url: str
    event_types: list[str]
    headers: list[dict[str, str]]

    def as_json(self) -> dict[str, Any]:
        return {
            "webhook_id": self.webhook_id,
            "event_types": list(self.event_types),
            "headers": [dict(h) for h in self.headers],
            "receiver_url": self.receiver_url,
        }


@dataclass(frozen=True)
class Delivery:
    """One attempt to deliver one event to one subscription, and what the receiver said."""

    webhook_id: str
    event_id: str
    event_type: str
    attempt: int  # 1 = the first delivery, 2.. = Leap's retries
    status: int | None  # None: no answer (connection refused, timeout)
    error: str | None
    seconds: float
    at: float = field(default_factory=time.monotonic)


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    webhook_id: str = field(compare=False)
    event_id: str = field(compare=False)
    event_type: str = field(compare=False)
    body: bytes = field(compare=False)
    attempt: int = field(compare=False, default=1)


def journey_events(journey: Journey, index: int) -> list[dict[str, str]]:
    """The webhook payloads Leap would send for step ``index`` of a journey (emulator mapping).

    click: session CREATED; a utility picked but no login: authorization INITIATED; a failed or
    cancelled login: authorization FAILED; a utility connected: authorization COMPLETED; the
    final step: session COMPLETED (after authorization COMPLETED when not connected before).
    """
    step = journey.events[index].step
    ref = {"partner_reference": journey.ref_id}
    utility = {"utility_name": _UTILITY_CODES.get(journey.utility, "OTHER")}
    session = leap.CONNECT_SESSION_UPDATED
    authorization = leap.CONNECT_AUTHORIZATION_UPDATED
    if step is Step.CLICK:
        return [{"webhook_event_type": session, **ref, "status": "CREATED"}]
    if step is Step.NOT_CONNECTED:
        return [{"webhook_event_type": authorization, **ref, **utility, "status": "INITIATED"}]
    if step is Step.ERROR:
        return [{"webhook_event_type": authorization, **ref, **utility, "status": "FAILED"}]
    authorized = {"webhook_event_type": authorization, **ref, **utility, "status": "COMPLETED"}
    if step is Step.CONNECTED:
        return [authorized]
    before = journey.events[index - 1].step if index else None
    done = {"webhook_event_type": session, **ref, "status": "COMPLETED"}
    return [done] if before is Step.CONNECTED else [authorized, done]


class WebhookHub:
    """Subscriptions and deliveries of one emulator. ``deliveries`` lists every attempt made.

    :param authorize: the emulator's API key check (raises for a missing or wrong key).
    :param time_scale: multiplies Leap's retry delays (1.0: real time).
    """

    def __init__(
        self,
        authorize: Callable[[str | None], None],
        *,
        time_scale: float = DEFAULT_TIME_SCALE,
        workers: int = 4,
    ) -> None:
        self._authorize = authorize
        self.time_scale = time_scale
        self._subscriptions: dict[str, Subscription] = {}
        self._deliveries: list[Delivery] = []
        self._queue: list[_Pending] = []
        self._seq = itertools.count()
        self._busy = 0
        self._lock = threading.Condition()
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._population: Population | None = None
        self._last: datetime | None = None

    # -- subscription API ------------------------------------------------------------------------

    @staticmethod
    def handles(path: str) -> bool:
        return path == leap.WEBHOOKS_PATH or path.startswith(leap.WEBHOOKS_PATH + "/")

    def route(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        """Answer one subscription API call (raises :class:`WebhookApiError`)."""
        from airflow_provider_leap.testing.server import ApiError

        try:
            self._authorize(headers.get("authorization"))
        except ApiError as exc:
            if exc.status == 401:
                raise WebhookApiError(401, "Unauthorized", "Auth token is invalid") from None
            raise WebhookApiError(
                403, "Forbidden", "You do not have permission to perform this action"
            ) from None
        rest = path[len(leap.WEBHOOKS_PATH) :].strip("/")
        parts = rest.split("/") if rest else []
        if not parts:
            allowed = {"GET": self._list, "POST": self._create}
        elif len(parts) == 1:
            allowed = {"PUT": self._update, "DELETE": self._delete, "GET": self._get}
        elif len(parts) == 2 and parts[1] == "test":
            allowed = {"POST": self._test}
        else:
            raise WebhookApiError(404, "Not Found", "The specified resource was not found")
        handler = allowed.get(method)
        if handler is None:
            error = WebhookApiError(405, "Method Not Allowed", f"{method} is not allowed here")
            error.headers["Allow"] = ", ".join(allowed)
            raise error
        return handler(parts[0] if parts else "", body)

    def _subscription(self, webhook_id: str) -> Subscription:
        with self._lock:
            found = self._subscriptions.get(webhook_id)
        if found is None:
            raise WebhookApiError(404, "Not Found", "The specified resource was not found")
        return found

    def _list(self, _: str, __: bytes) -> Answer:
        with self._lock:
            items = [s.as_json() for s in self._subscriptions.values()]
        return Answer(_encode({"webhooks": items}))

    def _get(self, webhook_id: str, _: bytes) -> Answer:
        return Answer(_encode(self._subscription(webhook_id).as_json()))

    def _create(self, _: str, body: bytes) -> Answer:
        fields = self._settings(body)
        webhook_id = str(uuid.uuid4())
        with self._lock:
            self._subscriptions[webhook_id] = Subscription(webhook_id, **fields)
        return Answer(_encode({"webhook_id": webhook_id}))

    def _update(self, webhook_id: str, body: bytes) -> Answer:
        self._subscription(webhook_id)
        fields = self._settings(body)
        with self._lock:
            self._subscriptions[webhook_id] = Subscription(webhook_id, **fields)
        return Answer(_encode({"webhook_id": webhook_id}))

    def _delete(self, webhook_id: str, _: bytes) -> Answer:
        self._subscription(webhook_id)
        with self._lock:
            self._subscriptions.pop(webhook_id, None)
            self._queue = [p for p in self._queue if p.webhook_id != webhook_id]
            heapq.heapify(self._queue)
        return Answer(_encode({"message": "Operation completed successfully"}))

    def _test(self, webhook_id: str, body: bytes) -> Answer:
        subscription = self._subscription(webhook_id)
        payload = self._json_object(body)
        if not isinstance(payload.get("webhook_event_type"), str):
            raise WebhookApiError(400, "Bad Request", "webhook_event_type is required")
        envelope = _encode({"webhook_event_id": str(uuid.uuid4()), "payload": payload})
        status, error, seconds = self._post(subscription, envelope)
        result: dict[str, Any] = {"is_successful": status is not None and 200 <= status < 300}
        if status is None:
            result["error"] = error
        else:
            result.update(status_code=status, response_time_ms=round(seconds * 1000))
        return Answer(_encode(result))

    @staticmethod
    def _json_object(body: bytes) -> dict[str, Any]:
        try:
            value = msgspec.json.decode(body) if body.strip() else None
        except msgspec.DecodeError:
            raise WebhookApiError(400, "Bad Request", "The body is not valid JSON") from None
        if not isinstance(value, dict):
            raise WebhookApiError(400, "Bad Request", "The body must be a JSON object")
        return value

    def _settings(self, body: bytes) -> dict[str, Any]:
        request = self._json_object(body)
        unknown = sorted(set(request) - {"receiver_url", "event_types", "headers"})
        if unknown:
            raise WebhookApiError(400, "Bad Request", f"Unknown field(s): {unknown}")
        url = request.get("receiver_url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookApiError(400, "Bad Request", "receiver_url must be an absolute URL")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise WebhookApiError(400, "Bad Request", "receiver_url must use https")
        types = request.get("event_types")
        if not isinstance(types, list) or not types:
            raise WebhookApiError(400, "Bad Request", "event_types must be a non-empty list")
        unknown_types = [t for t in types if t not in leap.EVENT_TYPES]
        if unknown_types:
            raise WebhookApiError(400, "Bad Request", f"Unknown event type(s): {unknown_types}")
        headers = request.get("headers", [])
        if not isinstance(headers, list) or not all(
            isinstance(h, dict)
            and set(h) == {"name", "value"}
            and all(isinstance(v, str) for v in h.values())
            for h in headers
        ):
            raise WebhookApiError(400, "Bad Request", "headers must be a list of {name, value}")
        return {"receiver_url": url, "event_types": list(types), "headers": headers}

    # -- events ----------------------------------------------------------------------------------

    def clock_moved(self, population: Population | None, now: datetime) -> None:
        """Send the events of every journey step after the previous clock and up to ``now``.

        The first call for a population only starts the clock: earlier steps were before any
        subscription could hear them.
        """
        if population is not self._population or self._last is None or now <= self._last:
            self._population, self._last = population, now
            return
        before, self._last = self._last, now
        assert population is not None
        for customer in population.customers:
            for journey in customer.journeys:
                for index, event in enumerate(journey.events):
                    if before < event.at <= now:
                        for payload in journey_events(journey, index):
                            key = f"{journey.record_id}|{event.at.isoformat()}|{payload}"
                            self.emit(payload, event_id=str(uuid.uuid5(_ID_NAMESPACE, key)))

    def emit(self, payload: Mapping[str, Any], *, event_id: str | None = None) -> str:
        """Queue one event for every subscription of its type; returns its ``webhook_event_id``."""
        event_id = event_id or str(uuid.uuid4())
        event_type = str(payload.get("webhook_event_type"))
        body = _encode({"webhook_event_id": event_id, "payload": dict(payload)})
        with self._lock:
            targets = [
                s.webhook_id for s in self._subscriptions.values() if event_type in s.event_types
            ]
            for webhook_id in targets:
                due = time.monotonic()
                item = _Pending(due, next(self._seq), webhook_id, event_id, event_type, body)
                heapq.heappush(self._queue, item)
            if targets:
                self._start()
                self._lock.notify_all()
        return event_id

    # -- delivery --------------------------------------------------------------------------------

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is queued or being delivered; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))
        return True

    def _start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="leap-webhook")
            self._thread = threading.Thread(
                target=self._dispatch, name="leap-webhooks", daemon=True
            )
            self._thread.start()

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and (
                    not self._queue or self._queue[0].due > time.monotonic()
                ):
                    wait = self._queue[0].due - time.monotonic() if self._queue else None
                    self._lock.wait(wait)
                if self._stopping:
                    return
                item = heapq.heappop(self._queue)
                subscription = self._subscriptions.get(item.webhook_id)
                if subscription is None:
                    continue
                self._busy += 1
            assert self._pool is not None
            self._pool.submit(self._deliver, subscription, item)

    def _deliver(self, subscription: Subscription, item: _Pending) -> None:
        try:
            status, error, seconds = self._post(subscription, item.body)
            record = Delivery(
                subscription.webhook_id,
                item.event_id,
                item.event_type,
                item.attempt,
                status,
                error,
                seconds,
            )
            with self._lock:
                self._deliveries.append(record)
                failed = status is None or not 200 <= status < 300
                if failed and item.attempt <= len(RETRY_DELAYS) and not self._stopping:
                    delay = RETRY_DELAYS[item.attempt - 1] * self.time_scale
                    item.due, item.attempt = time.monotonic() + delay, item.attempt + 1
                    item.seq = next(self._seq)
                    heapq.heappush(self._queue, item)
        finally:
            with self._lock:
                self._busy -= 1
                self._lock.notify_all()

    @staticmethod
    def _post(subscription: Subscription, body: bytes) -> tuple[int | None, str | None, float]:
        """POST one envelope; (status, None, seconds) or (None, error, seconds)."""
        parts = urlsplit(subscription.receiver_url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        connection_type = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        headers = {h["name"].lower(): h["value"] for h in subscription.headers}
        headers.update({"content-type": "application/json", "user-agent": "LeapEmulator/1"})
        started = time.monotonic()
        connection = connection_type(parts.hostname or "", parts.port, timeout=DELIVERY_TIMEOUT)
        try:
            connection.request("POST", target, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status, None, time.monotonic() - started
        except (OSError, http.client.HTTPException) as exc:
            return None, f"{type(exc).__name__}: {exc}", time.monotonic() - started
        finally:
            connection.close()

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop delivering (queued deliveries are dropped)."""
        with self._lock:
            self._stopping = True
            self._queue.clear()
            self._lock.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def reset(self) -> None:
        """No subscriptions, no deliveries, no clock (the emulator's reset)."""
        self.stop()
        with self._lock:
            self._subscriptions.clear()
            self._deliveries.clear()
            self._population, self._last = None, None


_CONSUMER_DAG = """
from datetime import datetime, timezone
from airflow.sdk import DAG, task
from airflow_provider_leap.assets import leap_asset

with DAG({dag_id!r}, schedule=[leap_asset({conn_id!r}, {kind!r})],
         start_date=datetime(2026, 1, 1, tzinfo=timezone.utc)) as dag:
    @task
    def nothing() -> None:
        pass

    nothing()
"""


def add_consumer_dag(
    folder: Path, conn_id: str, dag_id: str, kind: str = leap.CONNECT_SESSION
) -> None:
    """Write a DAG scheduled on ``leap://<conn_id>/<kind>`` into ``folder``, parse it
    into Airflow's metadata database and unpause it, so that the receiver can record events
    for that connection (Airflow knows only assets a DAG references). For tests and benchmarks
    of a receiver without a DAG processor; Airflow's database must be set up."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    folder.mkdir(parents=True, exist_ok=True)
    source = _CONSUMER_DAG.format(dag_id=dag_id, conn_id=conn_id, kind=kind)
    (folder / f"{dag_id}.py").write_text(source, encoding="utf-8")
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(folder))
    if bag.import_errors:
        raise RuntimeError(f"the consumer DAG does not import: {bag.import_errors}")
    sync_bag_to_db(bag, "dags-folder", None)
    with create_session() as session:
        session.get(DagModel, dag_id).is_paused = False
