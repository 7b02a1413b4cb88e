"""Leap's webhooks without Airflow processes: events, subscriptions (against the emulator over
HTTP), the emulator's deliveries, the hook's methods and the inbox."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_leap import webhooks as wh
from airflow_provider_leap.errors import LeapAPIError, LeapAuthError, LeapConfigError
from airflow_provider_leap.inbox import TAKEN, WebhookInbox, inbox_folders
from airflow_provider_leap.testing import EMULATOR_API_KEY, LeapEmulator
from airflow_provider_leap.testing.journeys import Population
from airflow_provider_leap.testing.webhooks import RETRY_DELAYS, journey_events

EVENT_ID = "31f6b61a-712e-42e7-83af-ea441777a32f"
SECRET = "s3cret-" + "x" * 20


def envelope(payload: dict[str, Any], event_id: str = EVENT_ID) -> bytes:
    return json.dumps({"webhook_event_id": event_id, "payload": payload}).encode()


# -- events ----------------------------------------------------------------------------------------

METER = {"meter_id": "m-1", "transmission_region": "CAISO"}


@pytest.mark.parametrize(
    ("payload", "kind", "status"),
    [
        (
            {
                "webhook_event_type": wh.CONNECT_SESSION_UPDATED,
                "partner_reference": "ref-1",
                "status": "CLOSED",
            },
            "connect_session",
            "CLOSED",
        ),
        (
            {
                "webhook_event_type": wh.CONNECT_AUTHORIZATION_UPDATED,
                "partner_reference": "ref-1",
                "status": "FAILED",
                "utility_name": "PGE",
            },
            "connect_session",
            "FAILED",
        ),
        ({"webhook_event_type": wh.METER_CREATED, **METER}, "meter", None),
        (
            {
                "webhook_event_type": wh.METER_GLOBAL_STATUS_UPDATED,
                **METER,
                "global_enrollment_status": "ACTIVE",
            },
            "meter",
            "ACTIVE",
        ),
        (
            {
                "webhook_event_type": wh.METER_PARTICIPATION_STATUS_UPDATED,
                **METER,
                "participation_preference": "IDLE",
                "start_time": "2026-01-01T00:00:00Z",
            },
            "meter",
            "IDLE",
        ),
        (
            {
                "webhook_event_type": wh.METER_REQUIRED_ACTIONS_UPDATED,
                **METER,
                "global_enrollment_status": "PENDING",
                "required_actions": {"partner": []},
            },
            "meter",
            "PENDING",
        ),
        (
            {
                "webhook_event_type": wh.METER_GROUP_UPDATED,
                "market_group_id": "g",
                "market_group_name": "G1",
                "start_date_time": "2026-05-01T04:00:00Z",
                "end_date_time": "2026-06-01T04:00:00Z",
                "meter_ids": ["m-1"],
            },
            "meter",
            None,
        ),
    ],
)
def test_every_published_event_type_is_read(
    payload: dict[str, Any], kind: str, status: Any
) -> None:
    event = wh.read_event(envelope(payload))
    assert (event.event_id, event.event_type, event.kind) == (
        EVENT_ID,
        payload["webhook_event_type"],
        kind,
    )
    assert event.status == status
    assert event.ref_id == payload.get("partner_reference")
    assert set(wh.EVENT_TYPES) >= {payload["webhook_event_type"]}


def test_new_values_and_fields_are_data() -> None:
    payload = {
        "webhook_event_type": wh.CONNECT_AUTHORIZATION_UPDATED,
        "partner_reference": "cust-9",
        "status": "SOMETHING_NEW",
        "utility_name": "NEW_UTILITY",
        "session_id": "added later",
    }
    event = wh.read_event(envelope(payload).replace(b"}}", b'}, "delivered_at": "x"}'))
    assert (event.status, event.utility, event.ref_id) == ("SOMETHING_NEW", "NEW_UTILITY", "cust-9")


def test_an_event_type_of_no_known_family_is_data_not_an_error() -> None:
    event = wh.read_event(envelope({"webhook_event_type": "invoice.paid", "amount": 3}))
    assert (event.kind, event.event_type, event.ref_id) == (None, "invoice.paid", None)


@pytest.mark.parametrize(
    ("payload", "read"),
    [
        (
            {
                "webhook_event_type": "connect_session.created",
                "partner_reference": "cust-9",
                "status": "OPENED",
                "utility_name": "PGE",
                "session_id": "s-1",
            },
            (wh.CONNECT_SESSION, "cust-9", "OPENED", "PGE", None),
        ),
        ({"webhook_event_type": "connect_session."}, (wh.CONNECT_SESSION, None, None, None, None)),
        (  # fields missing, mistyped, empty or outside Leap's rule: left out, never refused
            {
                "webhook_event_type": "connect_session.created",
                "partner_reference": "pii/ref#7",
                "status": ["CREATED"],
                "utility_name": "",
                "meter_id": 12,
            },
            (wh.CONNECT_SESSION, None, None, None, None),
        ),
        (
            {"webhook_event_type": "meter.deleted", "meter_id": "m-1", "partner_reference": 5},
            (wh.METER, None, None, None, "m-1"),
        ),
        ({"webhook_event_type": "meters.created"}, (None, None, None, None, None)),
        ({"webhook_event_type": "connect_session"}, (None, None, None, None, None)),
    ],
)
def test_a_new_event_type_takes_its_kind_from_its_family(
    payload: dict[str, Any], read: tuple[Any, ...]
) -> None:
    event = wh.read_event(envelope(payload))
    assert event.event_type == payload["webhook_event_type"]
    assert (event.kind, event.ref_id, event.status, event.utility, event.meter_id) == read
    assert wh.kind_of(event.event_type) == event.kind


def test_the_event_id_is_canonical() -> None:
    body = envelope({"webhook_event_type": "x.y"}, event_id=EVENT_ID.replace("-", "").upper())
    assert wh.read_event(body).event_id == EVENT_ID


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"payload": {"webhook_event_type": "x.y"}}',
        b'{"webhook_event_id": "not-a-uuid", "payload": {"webhook_event_type": "x.y"}}',
        b'{"webhook_event_id": "' + EVENT_ID.encode() + b'"}',
        envelope({"status": "CREATED"}),
        envelope({"webhook_event_type": 7}),
        # a new type of a known family is read best-effort, but its envelope still counts
        b'{"webhook_event_id": "pii-1", "payload": {"webhook_event_type": "meter.deleted"}}',
        b'{"webhook_event_id": "' + EVENT_ID.encode() + b'", "payload": "connect_session.x"}',
        envelope({"webhook_event_type": wh.CONNECT_SESSION_UPDATED, "status": "CREATED"}),
        envelope(
            {
                "webhook_event_type": wh.CONNECT_SESSION_UPDATED,
                "partner_reference": "pii/ref#7",
                "status": "CREATED",
            }
        ),
        envelope(
            {
                "webhook_event_type": wh.CONNECT_AUTHORIZATION_UPDATED,
                "partner_reference": "pii-ref-7",
                "status": "FAILED",
            }
        ),
    ],
)
def test_bad_deliveries_are_refused_by_field_never_by_value(body: bytes) -> None:
    with pytest.raises(wh.EnvelopeError) as caught:
        wh.read_event(body)
    assert "pii" not in str(caught.value)


def test_the_asset_extra_is_small_and_json_ready() -> None:
    payload = {
        "webhook_event_type": wh.CONNECT_AUTHORIZATION_UPDATED,
        "partner_reference": "cust-9",
        "status": "FAILED",
        "utility_name": "PGE",
    }
    at = datetime(2026, 3, 2, 10, 2, tzinfo=timezone.utc)
    extra = wh.read_event(envelope(payload)).extra(at)
    assert extra == {
        "ref_id": "cust-9",
        "status": "FAILED",
        "event_type": wh.CONNECT_AUTHORIZATION_UPDATED,
        "event_time": "2026-03-02T10:02:00+00:00",
        "webhook_event_id": EVENT_ID,
        "utility_name": "PGE",
    }
    assert json.loads(json.dumps(extra)) == extra


@pytest.mark.parametrize(
    ("received", "quiet", "landed", "answer"),
    [
        ("10:02", 60, 17, "11:17"),  # the refresh decides: the 11:00 refresh lands by 11:17
        ("10:49", 60, 17, "11:49"),  # the quiet period decides
        ("10:50", 60, 17, "12:17"),  # within the margin before 11:00: the 12:00 refresh
        ("10:00", 60, 17, "11:17"),
        ("10:40", 120, 17, "12:40"),
        ("10:40", 30, 0, "11:10"),  # the emulator's refresh, on the hour
        ("10:05", 30, 0, "11:00"),
    ],
)
def test_answer_time_waits_for_the_quiet_period_and_the_refresh(
    received: str, quiet: int, landed: int, answer: str
) -> None:
    def at(hhmm: str) -> datetime:
        hour, minute = map(int, hhmm.split(":"))
        return datetime(2026, 3, 2, hour, minute, tzinfo=timezone.utc)

    got = wh.answer_time(
        at(received),
        quiet_period=timedelta(minutes=quiet),
        refresh_landed_by=timedelta(minutes=landed),
    )
    assert got == at(answer)


def test_stale_from_is_the_hour_of_the_refresh_landed_less_the_margin() -> None:
    def at(hhmm: str, day: int = 2) -> datetime:
        hour, minute = map(int, hhmm.split(":"))
        return datetime(2026, 3, day, hour, minute, tzinfo=timezone.utc)

    assert wh.stale_from(at("10:17")) == at("09:50")  # the 10:00 refresh has landed
    assert wh.stale_from(at("10:16")) == at("08:50")  # it may not have: the data is 9:00's
    assert wh.stale_from(at("00:05")) == at("22:50", day=1)
    assert wh.stale_from(at("10:17"), margin=timedelta(0)) == at("10:00")
    india = timezone(timedelta(hours=5, minutes=30))  # the refresh is on the UTC hour
    assert wh.stale_from(at("10:17").astimezone(india)) == at("09:50")


def test_a_run_at_the_answer_time_is_never_held_back_by_the_event_it_answers() -> None:
    """The events DAG answers at ``answer_time``: by then the data read shows the event, and a
    minute earlier it may not (unless the quiet period decided)."""
    start = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
    quiet = timedelta(hours=1)
    for minute in range(0, 24 * 60, 7):
        received = start + timedelta(minutes=minute, seconds=minute % 60)
        answer = wh.answer_time(received, quiet_period=quiet)
        assert wh.stale_from(answer) > received
        earlier = answer - timedelta(minutes=1)
        assert answer == received + quiet or wh.stale_from(earlier) <= received


def test_held_back_reads_the_receivers_extras() -> None:
    since = datetime(2026, 3, 2, 9, 50, tzinfo=timezone.utc)
    recorded = since + timedelta(hours=3)  # Airflow records an event when received or later
    event = wh.read_event(envelope(wh.sample_payload("cust-9")))
    before = since - timedelta(seconds=1)
    session = {"event_type": wh.CONNECT_SESSION_UPDATED, "event_time": before.isoformat()}
    events = [
        (event.extra(since), recorded),  # received at the cut-off: held
        (event.extra(before) | {"ref_id": "before"}, recorded),
        ({"ref_id": "no-event-time"}, since),  # recorded time stands in
        ({"ref_id": "no-event-time-before"}, before),
        ({"event_time": since.isoformat()}, recorded),  # names nobody
        (None, recorded),  # an event posted by hand without extras
        # Review s10a F1: a completion before the cut-off holds too (the refresh may be late:
        # the data of a due customer does not show it); another status does not.
        (session | {"ref_id": "completed", "status": "COMPLETED"}, recorded),
        (session | {"ref_id": "updated", "status": "UPDATED"}, recorded),
        (session | {"ref_id": "authorized", "status": "COMPLETED", "event_type": "x"}, recorded),
        # Review s11a F1: a completion holds the stalls before it (its latest); a later event
        # of any kind holds every stall.
        (session | {"ref_id": "twice", "status": "COMPLETED"}, recorded),
        (session | {"ref_id": "twice", "status": "COMPLETED", "event_time": "2026-03-01"}, since),
        (session | {"ref_id": "then-more", "status": "COMPLETED"}, recorded),
        ({"ref_id": "then-more", "event_time": since.isoformat()}, recorded),
    ]
    assert wh.held_back(events, since) == {
        event.ref_id: None,
        "no-event-time": None,
        "completed": before + wh.STALE_MARGIN,  # the receiver's clock against Leap's
        "twice": before + wh.STALE_MARGIN,
        "then-more": None,
    }


def test_receiver_secret_defaults_and_checks() -> None:
    assert wh.receiver_secret(None, SECRET) == (wh.DEFAULT_SECRET_HEADER, SECRET)
    assert wh.receiver_secret("X-My-Token", SECRET) == ("x-my-token", SECRET)
    for header, secret, hint in [
        (None, None, "no webhook_secret"),
        (None, "short", "at least 16"),
        (None, f" {SECRET}", "surrounding spaces"),
        ("x bad:name", SECRET, "not an HTTP header"),
        (None, "Grüße-aus-Köln-0123456789", "non-ASCII character .* at position 3 of 25"),
        (None, "tab\there-0123456789", "control character at position 4 of 19"),
    ]:
        with pytest.raises(LeapConfigError, match=hint) as raised:
            wh.receiver_secret(header, secret)
        assert secret is None or secret.strip() not in str(raised.value)
    # A header arrives as latin-1: a non-ASCII secret could never match, so it is refused
    # before it is sent to Leap; inner spaces are printable ASCII and do match.
    assert wh.receiver_secret(None, "with inner space-0123")[1] == "with inner space-0123"


def test_headers_come_in_every_shape_and_errors_never_show_a_value() -> None:
    expected = (wh.Header("x-leap-webhook-secret", SECRET),)
    for shape in (
        {"x-leap-webhook-secret": SECRET},
        [("x-leap-webhook-secret", SECRET)],
        [{"name": "x-leap-webhook-secret", "value": SECRET}],
        expected,
    ):
        assert wh.as_headers(shape) == expected  # type: ignore[arg-type]
    for bad in (
        [("x-leap-webhook-secret", SECRET, "extra")],
        [{"x-leap-webhook-secret": SECRET}],
        [SECRET],
        SECRET,
        [("", SECRET)],
    ):
        with pytest.raises(LeapConfigError) as raised:
            wh.as_headers(bad)  # type: ignore[arg-type]
        assert SECRET not in str(raised.value)


def test_header_values_never_show() -> None:
    webhook = wh.Webhook(
        webhook_id="w", receiver_url="https://x", headers=(wh.Header("x-token", SECRET),)
    )
    assert SECRET not in repr(webhook) and SECRET not in str([webhook])


# -- subscriptions, over HTTP against the emulator -------------------------------------------------


@pytest.fixture
def leap(make_client):  # type: ignore[no-untyped-def]
    return make_client()


def test_ensure_webhook_creates_keeps_then_updates(leap, leap_emulator: LeapEmulator) -> None:  # type: ignore[no-untyped-def]
    url = "https://airflow.example.com/leap/webhooks/leap_default"
    headers = {"X-Leap-Webhook-Secret": SECRET}
    first = wh.ensure_webhook(leap, url, headers=headers)
    assert first.action == "created"
    # Leap may send header names back lower-cased: still the same subscription.
    assert wh.ensure_webhook(leap, url, headers={"x-leap-webhook-secret": SECRET}).action == (
        "unchanged"
    )
    updated = wh.ensure_webhook(leap, url, wh.EVENT_TYPES, headers=headers)
    assert (updated.action, updated.webhook_id) == ("updated", first.webhook_id)
    rotated = wh.ensure_webhook(
        leap, url, wh.EVENT_TYPES, headers={"x-leap-webhook-secret": "n" * 20}
    )
    assert rotated.action == "updated"
    [webhook] = wh.list_webhooks(leap)
    assert webhook.event_types == wh.EVENT_TYPES
    assert webhook.headers == (wh.Header("x-leap-webhook-secret", "n" * 20),)


def test_ensure_webhook_removes_other_subscriptions_to_the_same_url(leap) -> None:  # type: ignore[no-untyped-def]
    url = "https://airflow.example.com/leap/webhooks/leap_default"
    kept = wh.create_webhook(leap, url, headers={"x": SECRET})
    extra = wh.create_webhook(leap, url, headers={"x": SECRET})
    other = wh.create_webhook(leap, "https://elsewhere.example.com/hook")
    result = wh.ensure_webhook(leap, url, headers={"x": SECRET})
    assert (result.webhook_id, result.action, result.removed) == (kept, "unchanged", (extra,))
    assert sorted(w.webhook_id for w in wh.list_webhooks(leap)) == sorted([kept, other])


def test_subscription_calls_round_trip(leap, leap_emulator: LeapEmulator) -> None:  # type: ignore[no-untyped-def]
    webhook_id = wh.create_webhook(leap, "http://127.0.0.1:9/nobody-listens")
    headers = {"x-leap-webhook-secret": SECRET}
    updated = wh.update_webhook(leap, webhook_id, "https://b.example.com/h", None, headers)
    assert updated == webhook_id
    [webhook] = wh.list_webhooks(leap)
    assert (webhook.receiver_url, webhook.event_types) == (
        "https://b.example.com/h",
        wh.CONNECT_EVENT_TYPES,
    )
    assert [(h.name, h.value) for h in webhook.headers] == list(headers.items())
    wh.delete_webhook(leap, webhook_id)
    assert wh.list_webhooks(leap) == []
    with pytest.raises(LeapAPIError, match="HTTP 404: The specified resource was not found"):
        wh.delete_webhook(leap, webhook_id)
    with pytest.raises(LeapAPIError, match="404"):
        wh.update_webhook(leap, webhook_id, "https://b.example.com/h", None, [])
    with pytest.raises(LeapConfigError, match=r"give the headers \(\[\] for none\)"):
        wh.update_webhook(leap, webhook_id, "https://b.example.com/h", None, None)


def test_a_create_that_failed_is_not_retried_and_ensure_finds_it(leap, leap_emulator) -> None:  # type: ignore[no-untyped-def]
    leap_emulator.faults.fail_next(1, "unavailable")  # Leap created it, the answer was lost
    url = "https://airflow.example.com/leap/webhooks/leap_default"
    with pytest.raises(LeapAPIError, match="503"):
        wh.create_webhook(leap, url)
    assert leap_emulator.request_log.count(wh.WEBHOOKS_PATH) == 1  # no blind retry of a create
    assert wh.ensure_webhook(leap, url).action == "unchanged"


def test_unknown_event_types_in_a_listing_are_data(leap, leap_emulator) -> None:  # type: ignore[no-untyped-def]
    from airflow_provider_leap.testing.webhooks import Subscription

    leap_emulator.webhooks._subscriptions["w-1"] = Subscription(
        "w-1", "https://x.example.com", ["connect_session.renamed"], []
    )
    [webhook] = wh.list_webhooks(leap)
    assert webhook.event_types == ("connect_session.renamed",)


def test_a_wrong_key_is_an_auth_error(make_client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LeapAuthError, match="403"):
        wh.list_webhooks(make_client(key="emulator:wrong"))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"receiver_url": "https://x.example.com", "event_types": ["invoice.paid"]},
            "Unknown event type",
        ),
        ({"receiver_url": "http://x.example.com", "event_types": [wh.METER_CREATED]}, "https"),
        ({"receiver_url": "https://x.example.com", "event_types": []}, "non-empty"),
        (
            {
                "receiver_url": "https://x.example.com",
                "event_types": [wh.METER_CREATED],
                "secret": 1,
            },
            "Unknown field",
        ),
        (
            {
                "receiver_url": "https://x.example.com",
                "event_types": [wh.METER_CREATED],
                "headers": [{"name": "x"}],
            },
            "name, value",
        ),
    ],
)
def test_the_emulator_validates_subscriptions(leap, body: dict[str, Any], message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LeapAPIError, match="HTTP 400") as caught:
        leap.request("POST", wh.WEBHOOKS_PATH, json=body)
    assert message in str(caught.value)


def test_the_emulator_answers_leaps_error_shape(leap_emulator: LeapEmulator) -> None:
    import requests

    auth = {"Authorization": f"Bearer {EMULATOR_API_KEY}"}
    missing = requests.get(leap_emulator.url + wh.WEBHOOKS_PATH, timeout=10)
    assert missing.status_code == 401
    assert missing.json() == {"error": "Unauthorized", "message": "Auth token is invalid"}
    gone = requests.delete(
        f"{leap_emulator.url}{wh.WEBHOOKS_PATH}/{uuid.uuid4()}", headers=auth, timeout=10
    )
    assert (gone.status_code, gone.json()["error"]) == (404, "Not Found")
    wrong = requests.patch(leap_emulator.url + wh.WEBHOOKS_PATH, headers=auth, timeout=10)
    assert (wrong.status_code, wrong.headers["Allow"]) == (405, "GET, POST")


# -- the emulator's deliveries ---------------------------------------------------------------------


class Catcher:
    """A receiver on loopback: records each delivery, answers ``statuses`` in turn (then 200)."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                catcher.deliveries.append((dict(self.headers.items()), body))
                status = catcher.statuses.pop(0) if catcher.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/leap/webhooks/leap_default"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[wh.WebhookEvent]:
        return [wh.read_event(body) for _, body in self.deliveries]


@pytest.fixture
def catcher() -> Iterator[Catcher]:
    catcher = Catcher()
    yield catcher
    catcher.server.shutdown()
    catcher.server.server_close()


START = datetime(2026, 3, 1, tzinfo=timezone.utc)


def test_customers_acting_are_delivered_with_the_subscription_headers(
    leap, leap_emulator: LeapEmulator, catcher: Catcher
) -> None:  # type: ignore[no-untyped-def]
    wh.ensure_webhook(leap, catcher.url, headers={"X-Leap-Webhook-Secret": SECRET})
    population = Population(seed=4, customers=30, start=START, days=1)
    leap_emulator.now = START
    leap_emulator.play(population)
    leap_emulator.advance(timedelta(hours=8))
    assert leap_emulator.webhooks.wait_idle(30)
    expected = [
        (journey.ref_id, payload["status"])
        for customer in population.customers
        for journey in customer.journeys
        for index, event in enumerate(journey.events)
        if START < event.at <= START + timedelta(hours=8)
        for payload in journey_events(journey, index)
    ]
    got = [(e.ref_id, e.status) for e in catcher.events()]
    assert sorted(got) == sorted(expected) and expected
    headers = catcher.deliveries[0][0]
    assert headers["x-leap-webhook-secret"] == SECRET  # names lower-cased, as Leap may
    assert headers["content-type"] == "application/json"
    assert len({e.event_id for e in catcher.events()}) == len(expected)


def test_failed_deliveries_are_retried_on_leaps_schedule(
    leap, leap_emulator: LeapEmulator, catcher: Catcher
) -> None:  # type: ignore[no-untyped-def]
    leap_emulator.webhooks.time_scale = 0.0002  # Leap's 8 hours in about 6 seconds
    wh.ensure_webhook(leap, catcher.url)
    catcher.statuses = [500, 503, 404]
    event_id = leap_emulator.webhooks.emit(wh.sample_payload("cust-1"))
    assert leap_emulator.webhooks.wait_idle(30)
    attempts = [(d.attempt, d.status) for d in leap_emulator.webhooks.deliveries]
    assert attempts == [(1, 500), (2, 503), (3, 404), (4, 200)]
    assert {e.event_id for e in catcher.events()} == {event_id}  # the same event each time
    gaps = [
        b.at - a.at
        for a, b in zip(
            leap_emulator.webhooks.deliveries, leap_emulator.webhooks.deliveries[1:], strict=False
        )
    ]
    assert gaps[1] >= RETRY_DELAYS[1] * 0.0002 and gaps[2] >= RETRY_DELAYS[2] * 0.0002


def test_leap_gives_up_after_ten_retries(
    leap, leap_emulator: LeapEmulator, catcher: Catcher
) -> None:  # type: ignore[no-untyped-def]
    leap_emulator.webhooks.time_scale = 0.00002
    wh.ensure_webhook(leap, catcher.url)
    catcher.statuses = [500] * 20
    leap_emulator.webhooks.emit(wh.sample_payload("cust-1"))
    assert leap_emulator.webhooks.wait_idle(30)
    assert [d.attempt for d in leap_emulator.webhooks.deliveries] == list(range(1, 12))


def test_the_test_endpoint_reports_the_receivers_answer(
    leap, leap_emulator: LeapEmulator, catcher: Catcher
) -> None:  # type: ignore[no-untyped-def]
    webhook_id = wh.ensure_webhook(leap, catcher.url).webhook_id
    ok = wh.send_test_event(leap, webhook_id)
    assert ok.is_successful and ok.status_code == 200 and ok.response_time_ms is not None
    catcher.statuses = [401]
    refused = wh.send_test_event(leap, webhook_id)
    assert (refused.is_successful, refused.status_code) == (False, 401)
    catcher.server.shutdown()
    catcher.server.server_close()
    down = wh.send_test_event(leap, webhook_id)
    assert not down.is_successful and down.status_code is None and down.error
    assert [e.ref_id for e in catcher.events()] == ["leap-webhook-test"] * 2


def test_a_deleted_subscription_gets_nothing(
    leap, leap_emulator: LeapEmulator, catcher: Catcher
) -> None:  # type: ignore[no-untyped-def]
    webhook_id = wh.ensure_webhook(leap, catcher.url).webhook_id
    wh.delete_webhook(leap, webhook_id)
    leap_emulator.webhooks.emit(wh.sample_payload("cust-1"))
    assert leap_emulator.webhooks.wait_idle(10)
    assert catcher.deliveries == []


# -- the hook --------------------------------------------------------------------------------------


def test_the_hook_subscribes_with_the_connections_secret(
    leap_emulator: LeapEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_leap.hooks.leap import LeapHook, connection_json

    monkeypatch.setenv(
        "AIRFLOW_CONN_LEAP_HOOKED",
        connection_json(
            leap_emulator.url, EMULATOR_API_KEY, webhook_secret=SECRET, webhook_header="X-Tok"
        ),
    )
    hook = LeapHook("leap_hooked")
    url = "https://airflow.example.com/leap/webhooks/leap_hooked"
    result = hook.ensure_webhook(url)
    assert result.action == "created"
    [webhook] = hook.list_webhooks()
    assert webhook.headers == (wh.Header("x-tok", SECRET),)
    assert webhook.event_types == wh.CONNECT_EVENT_TYPES
    assert hook.ensure_webhook(url).action == "unchanged"
    assert hook.test_webhook(result.webhook_id).is_successful is False  # nobody listens there
    hook.delete_webhook(result.webhook_id)
    assert hook.list_webhooks() == []


def test_the_hook_says_what_is_missing(
    leap_emulator: LeapEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_leap.hooks.leap import LeapException, LeapHook, connection_json

    monkeypatch.setenv(
        "AIRFLOW_CONN_LEAP_BARE", connection_json(leap_emulator.url, EMULATOR_API_KEY)
    )
    hook = LeapHook("leap_bare")
    with pytest.raises(LeapException, match=r"leap_bare.*webhook_secret"):
        hook.ensure_webhook("https://airflow.example.com/leap/webhooks/leap_bare")
    with pytest.raises(LeapException) as caught:
        hook.delete_webhook(str(uuid.uuid4()))
    assert caught.value.status == 404


# -- the inbox -------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


EXTRA = {"ref_id": "cust-1", "webhook_event_id": EVENT_ID}
URI = "leap://leap_default/connect_session"


def test_each_event_is_accepted_once_however_many_workers_race(tmp_path: Path) -> None:
    workers = [WebhookInbox(tmp_path, "leap_default") for _ in range(4)]
    results: list[object] = []
    barrier = threading.Barrier(12)

    def deliver(inbox: WebhookInbox) -> None:
        barrier.wait()
        results.append(inbox.accept(EVENT_ID, URI, EXTRA))

    threads = [threading.Thread(target=deliver, args=(workers[i % 4],)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # One delivery accepted; a marker is created whole or not at all, so no other delivery can
    # see it half-written and take it for a failed write.
    [marker] = [r for r in results if r is not None]
    assert WebhookInbox.read(marker).extra == EXTRA  # type: ignore[arg-type]


def test_a_repeat_reaching_a_worker_whose_clock_is_before_midnight_is_a_duplicate(
    tmp_path: Path,
) -> None:
    after = WebhookInbox(
        tmp_path, "leap_default", clock=lambda: datetime(2026, 3, 3, 0, 1, tzinfo=timezone.utc)
    )
    before = WebhookInbox(
        tmp_path,
        "leap_default",
        clock=lambda: datetime(2026, 3, 2, 23, 59, 30, tzinfo=timezone.utc),
    )
    assert after.accept(EVENT_ID, URI, EXTRA) is not None
    assert before.accept(EVENT_ID, URI, EXTRA) is None  # Leap's retry, two minutes of skew apart


def test_a_retry_after_midnight_is_still_a_duplicate_and_old_days_go(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 3, 1, 23, 59, tzinfo=timezone.utc))
    inbox = WebhookInbox(tmp_path, "leap_default", clock=clock)
    assert inbox.accept(EVENT_ID, URI, EXTRA) is not None
    clock.now += timedelta(hours=8)  # Leap's last retry, the next day
    assert inbox.accept(EVENT_ID, URI, EXTRA) is None
    clock.now += timedelta(days=1, hours=12)  # replayed two days on (review s14a F4)
    assert inbox.accept(EVENT_ID, URI, EXTRA) is None
    later = WebhookInbox(tmp_path, "leap_default", clock=Clock(clock.now + timedelta(days=3)))
    assert later.accept(str(uuid.uuid4()), URI, EXTRA) is not None
    days = sorted(p.name for p in (tmp_path / ".webhooks" / "leap_default").iterdir())
    assert days == ["2026-03-06"]  # the first day was pruned
    assert inbox_folders(tmp_path) == ["leap_default"]


def test_one_recorder_takes_an_event_and_dead_workers_leftovers_are_found(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc))
    inbox = WebhookInbox(tmp_path, "leap_default", clock=clock)
    marker = inbox.accept(EVENT_ID, URI, EXTRA)
    assert marker is not None
    left = inbox.accept(str(uuid.uuid4()), URI, EXTRA)
    assert left is not None
    assert inbox.take(marker) and not inbox.take(marker)
    stale, lease = timedelta(minutes=2), timedelta(minutes=10)
    assert list(inbox.unrecorded(stale, lease)) == []  # too fresh: its worker is on it
    clock.now += timedelta(minutes=5)
    assert [(m.name, a.uri, n) for m, a, n in inbox.unrecorded(stale, lease)] == [
        (left.name, URI, 1)
    ]
    inbox.give_back(marker)
    assert not (marker.parent / (marker.name + TAKEN)).exists()
    assert sorted(m.name for m, _, _ in inbox.unrecorded(stale, lease)) == sorted(
        [marker.name, left.name]
    )


def test_an_expired_claim_is_taken_over_by_one_recoverer_and_done_ends_it(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc))
    inbox = WebhookInbox(tmp_path, "leap_default", clock=clock)
    marker = inbox.accept(EVENT_ID, URI, EXTRA)
    assert marker is not None and inbox.take(marker)  # then its worker died while recording
    stale, lease = timedelta(minutes=2), timedelta(minutes=10)
    clock.now += timedelta(minutes=9)
    assert list(inbox.unrecorded(stale, lease)) == []  # the lease still holds
    clock.now += timedelta(minutes=2)
    recoverers = [WebhookInbox(tmp_path, "leap_default", clock=clock) for _ in range(3)]
    found = [list(r.unrecorded(stale, lease)) for r in recoverers]
    assert [[(m.name, n) for m, _, n in f] for f in found] == [[(EVENT_ID, 2)]] * 3
    assert [r.take(marker, 2) for r in recoverers] == [True, False, False]
    assert list(inbox.unrecorded(stale, lease)) == []  # the new claim is fresh
    clock.now += timedelta(minutes=11)
    assert [n for _, _, n in inbox.unrecorded(stale, lease)] == [3]  # that one died too
    inbox.done(marker)
    assert list(inbox.unrecorded(stale, lease)) == []  # recorded: no claim of it expires


def test_a_marker_whose_write_failed_is_not_a_duplicate(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc))
    inbox = WebhookInbox(tmp_path, "leap_default", clock=clock)
    empty = tmp_path / ".webhooks" / "leap_default" / "2026-02-28" / EVENT_ID
    empty.parent.mkdir(parents=True)
    empty.write_bytes(b"")  # created yesterday, the disk full before its content was written
    marker = inbox.accept(EVENT_ID, URI, EXTRA)  # Leap's retry
    assert marker == empty and WebhookInbox.read(marker).extra == EXTRA
    assert inbox.accept(EVENT_ID, URI, EXTRA) is None  # now it is a duplicate


def test_connection_ids_that_cannot_name_a_folder_are_refused(tmp_path: Path) -> None:
    for bad in ("..", "", "a/b", "x y"):
        with pytest.raises(ValueError, match="cannot name a folder"):
            WebhookInbox(tmp_path, bad)


def test_the_journey_mapping_covers_every_step() -> None:
    population = Population(seed=2, customers=200, start=START, days=3)
    seen = {
        (payload["webhook_event_type"], payload["status"])
        for customer in population.customers
        for journey in customer.journeys
        for index in range(len(journey.events))
        for payload in journey_events(journey, index)
    }
    assert seen == {
        (wh.CONNECT_SESSION_UPDATED, "CREATED"),
        (wh.CONNECT_SESSION_UPDATED, "COMPLETED"),
        (wh.CONNECT_AUTHORIZATION_UPDATED, "INITIATED"),
        (wh.CONNECT_AUTHORIZATION_UPDATED, "FAILED"),
        (wh.CONNECT_AUTHORIZATION_UPDATED, "COMPLETED"),
    }
