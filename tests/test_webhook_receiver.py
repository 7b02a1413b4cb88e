"""The webhook receiver in-process, on real Airflow (SQLite metadata DB): every answer it gives,
what it records, and what it does when storage or the database fails. The same app in a real
API server process, with a scheduler and a triggerer, is a check of ``scripts/deploy_check.sh``
(``scripts/webhooks_check.py``)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_leap import webhooks as wh
from airflow_provider_leap.inbox import WebhookInbox

CONN = "leap_rx"
SECRET = "rx-secret-" + "y" * 16
HEADERS = {"x-leap-webhook-secret": SECRET}
URI = f"leap://{CONN}/connect_session"


@pytest.fixture(scope="module")
def consumer(airflow_db: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Unpaused DAGs scheduled on ``leap://leap_rx/connect_session`` (its id returned) and on
    ``leap://leap_rx/meter``, in the database."""
    from airflow_provider_leap.testing.webhooks import add_consumer_dag

    folder = tmp_path_factory.mktemp("rx_dags")
    add_consumer_dag(folder, CONN, "rx_consumer")
    add_consumer_dag(folder, CONN, "rx_meter_consumer", kind=wh.METER)
    return "rx_consumer"


@pytest.fixture
def connection(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_leap.hooks.leap import connection_json

    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}",
        connection_json("http://127.0.0.1:9", "unused", webhook_secret=SECRET),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_LEAP_NOSECRET", connection_json("http://127.0.0.1:9", "unused")
    )
    monkeypatch.setenv("AIRFLOW_CONN_NOT_LEAP", json.dumps({"conn_type": "http", "host": "x"}))


@pytest.fixture
def receiver(consumer: str, connection: None, tmp_path: Path) -> Iterator[Any]:
    from airflow_provider_leap.plugins.receiver import Receiver

    receiver = Receiver(root=tmp_path / "ledger")
    yield receiver
    receiver.recorder.stop()


@pytest.fixture
def client(receiver: Any) -> Any:
    from fastapi.testclient import TestClient

    from airflow_provider_leap.plugins.receiver import create_app

    return TestClient(create_app(receiver))


def delivery(ref_id: str = "cust-rx-1", event_id: str | None = None, **payload: Any) -> dict:
    body = {
        "webhook_event_type": wh.CONNECT_SESSION_UPDATED,
        "partner_reference": ref_id,
        "status": "CLOSED",
        **payload,
    }
    return {"webhook_event_id": event_id or str(uuid.uuid4()), "payload": body}


def extras(uri: str = URI) -> list[dict[str, Any]]:
    """The extras of every asset event recorded on the asset ``uri``."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return list(
            session.scalars(
                select(AssetEvent.extra)
                .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                .where(AssetModel.uri == uri)
            ).all()
        )


def recorded(event_ids: set[str], uri: str = URI) -> list[dict[str, Any]]:
    """The extras of the asset events recorded for ``event_ids`` on the asset ``uri``."""
    return [extra for extra in extras(uri) if extra.get("webhook_event_id") in event_ids]


def post(client: Any, body: Any, headers: dict[str, str] | None = None, conn: str = CONN) -> Any:
    return client.post(
        f"/webhooks/{conn}", json=body, headers=HEADERS if headers is None else headers
    )


# -- who may deliver -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conn", "headers"),
    [
        (CONN, {}),
        (CONN, {"x-leap-webhook-secret": SECRET[:-1] + "z"}),
        (CONN, {"x-other-header": SECRET}),
        ("leap_nosecret", HEADERS),  # no secret configured: nobody may deliver
        ("not_leap", HEADERS),
        ("no_such_connection", HEADERS),
        ("...", HEADERS),  # could not name a folder of the inbox
    ],
)
def test_no_secret_no_entry(client: Any, conn: str, headers: dict[str, str]) -> None:
    body = delivery()
    answer = post(client, body, headers, conn=conn)
    assert (answer.status_code, answer.json()) == (401, {"error": "unauthorized"})
    client.app.state.receiver.recorder.flush()
    assert recorded({body["webhook_event_id"]}) == []


def test_a_connection_lookup_that_fails_is_503_and_not_cached(
    client: Any, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:  # type: ignore[no-untyped-def]
    import sqlalchemy.exc
    from airflow.sdk import BaseHook

    real, calls = BaseHook.get_connection, []

    def database_down(conn_id: str) -> Any:
        calls.append(conn_id)
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("connection refused"))

    caplog.set_level(logging.WARNING, logger="airflow_provider_leap.webhooks.receiver")
    monkeypatch.setattr(BaseHook, "get_connection", staticmethod(database_down))
    answers = [post(client, delivery()) for _ in range(2)]
    assert [a.status_code for a in answers] == [503, 503]  # Leap delivers them again
    assert calls == [CONN, CONN]  # not cached: the next delivery looks again
    assert "(OperationalError)" in caplog.text and "no such connection" not in caplog.text
    monkeypatch.setattr(BaseHook, "get_connection", real)
    assert post(client, delivery()).status_code == 200  # back at once, no 10 s of refusals


def test_the_header_name_is_case_insensitive(client: Any) -> None:
    answer = post(client, delivery(), {"X-Leap-Webhook-Secret": SECRET})
    assert answer.status_code == 200


# -- what is accepted, and recorded --------------------------------------------------------------


def test_an_event_is_recorded_once_however_often_it_arrives(client: Any, consumer: str) -> None:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import select

    body = delivery("cust-rx-once", status="CLOSED")
    answers = [post(client, body) for _ in range(3)]
    assert [(a.status_code, a.json()["status"]) for a in answers] == [
        (200, "accepted"),
        (200, "duplicate"),
        (200, "duplicate"),
    ]
    assert client.app.state.receiver.recorder.flush(30)
    [extra] = recorded({body["webhook_event_id"]})
    assert extra["ref_id"] == "cust-rx-once" and extra["status"] == "CLOSED"
    assert extra["event_type"] == wh.CONNECT_SESSION_UPDATED
    assert datetime.fromisoformat(extra["event_time"]) <= datetime.now(timezone.utc)
    with create_session() as session:  # the scheduler will create a run of the consumer
        queued = session.scalars(select(AssetDagRunQueue.target_dag_id)).all()
    assert consumer in queued


def test_another_worker_sees_the_same_event_as_a_duplicate(client: Any, receiver: Any) -> None:
    from fastapi.testclient import TestClient

    from airflow_provider_leap.plugins.receiver import Receiver, create_app

    other = Receiver(root=receiver.root)  # a second API server worker, same ledger storage
    body = delivery()
    assert post(client, body).json()["status"] == "accepted"
    assert post(TestClient(create_app(other)), body).json()["status"] == "duplicate"
    other.recorder.stop()


@pytest.mark.parametrize(
    ("payload", "uri", "expected"),
    [
        (  # a connect_session type Leap adds later: what it offers is read
            {
                "webhook_event_type": "connect_session.created",
                "partner_reference": "cust-rx-new",
                "status": "OPENED",
                "utility_name": "PGE",
            },
            URI,
            {"ref_id": "cust-rx-new", "status": "OPENED", "utility_name": "PGE"},
        ),
        (  # nothing but its type: still the customer acting, recorded as such
            {"webhook_event_type": "connect_session.reopened"},
            URI,
            {},
        ),
        (  # fields of another type, or a Reference ID outside Leap's rule: left out
            {
                "webhook_event_type": "connect_session.created",
                "partner_reference": "pii/ref#7",
                "status": 3,
                "utility_name": ["PGE"],
            },
            URI,
            {},
        ),
        (
            {
                "webhook_event_type": "meter.deleted",
                "meter_id": "m-rx-1",
                "partner_reference": "cust-rx-meter",
            },
            f"leap://{CONN}/meter",
            {"meter_id": "m-rx-1", "ref_id": "cust-rx-meter"},
        ),
    ],
)
def test_a_new_event_type_of_a_known_family_is_recorded_as_data(
    client: Any, payload: dict[str, Any], uri: str, expected: dict[str, Any]
) -> None:
    body = {"webhook_event_id": str(uuid.uuid4()), "payload": payload}
    answer = post(client, body)
    assert (answer.status_code, answer.json()["status"]) == (200, "accepted")
    assert client.app.state.receiver.recorder.flush(30)
    [extra] = recorded({body["webhook_event_id"]}, uri)
    event_time = extra.pop("event_time")
    assert datetime.fromisoformat(event_time) <= datetime.now(timezone.utc)
    assert extra == {
        "event_type": payload["webhook_event_type"],
        "webhook_event_id": body["webhook_event_id"],
        **expected,
    }


def test_a_new_event_type_reaches_the_receiver_from_leaps_sender_over_http(
    receiver: Any, make_client: Any
) -> None:
    """Leap's test delivery (the emulator's sender) to the receiver served by uvicorn on
    loopback: a ``connect_session`` type this version does not know is answered 200 and
    recorded for the DAGs scheduled on the asset."""
    import threading

    import uvicorn

    from airflow_provider_leap.plugins.receiver import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(receiver), host="127.0.0.1", port=0, lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:  # waits for the bind, a few milliseconds
            assert thread.is_alive(), "uvicorn did not start"
            threading.Event().wait(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        leap = make_client()
        url = f"http://127.0.0.1:{port}/webhooks/{CONN}"
        webhook_id = wh.ensure_webhook(leap, url, headers=HEADERS).webhook_id
        payload = {"webhook_event_type": "connect_session.created", "partner_reference": "c-http"}
        result = wh.send_test_event(leap, webhook_id, payload)
        assert (result.is_successful, result.status_code) == (True, 200)
        assert receiver.recorder.flush(30)
    finally:
        server.should_exit = True
        thread.join(10)
    [extra] = [e for e in extras() if e.get("ref_id") == "c-http"]
    assert extra["event_type"] == "connect_session.created"


def test_a_type_of_no_known_family_is_acknowledged_and_logged_by_name_only(
    client: Any, receiver: Any, caplog
) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="airflow_provider_leap.webhooks.receiver")
    payload = {"webhook_event_type": "invoice.paid", "partner_reference": "cust-secret-77"}
    body = {"webhook_event_id": str(uuid.uuid4()), "payload": payload}
    answer = post(client, body)
    assert (answer.status_code, answer.json()["status"]) == (202, "ignored: unknown event type")
    assert not (Path(receiver.root) / ".webhooks").exists()
    [line] = [r.getMessage() for r in caplog.records if "invoice.paid" in r.getMessage()]
    assert body["webhook_event_id"] in line and "connect_session.*, meter.*" in line
    assert "cust-secret-77" not in caplog.text


def test_bad_input_is_400_and_logged_without_the_payload(client: Any, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="airflow_provider_leap.webhooks.receiver")
    bad = delivery("ssn-123-45-678/9")  # a Reference ID that breaks Leap's pattern
    answers = [
        post(client, bad),
        client.post(f"/webhooks/{CONN}", content=b'{"webhook_event_id": ', headers=HEADERS),
        post(client, {"webhook_event_id": "1", "payload": {}}),
    ]
    assert [a.status_code for a in answers] == [400, 400, 400]
    assert "partner_reference" in answers[0].json()["error"]
    assert "ssn-123" not in caplog.text and "ssn-123" not in answers[0].text
    assert caplog.text.count("refused (400)") == 3


def test_bodies_over_one_mebibyte_are_refused_unread(client: Any) -> None:
    big = b" " * (wh.MAX_BODY_BYTES + 1)
    declared = client.post(f"/webhooks/{CONN}", content=big, headers=HEADERS)
    streamed = client.post(
        f"/webhooks/{CONN}",
        content=(big[i : i + 65536] for i in range(0, len(big), 65536)),
        headers=HEADERS,
    )
    assert [declared.status_code, streamed.status_code] == [413, 413]
    at_limit = b" " * (wh.MAX_BODY_BYTES - 2) + b"{}"
    assert client.post(f"/webhooks/{CONN}", content=at_limit, headers=HEADERS).status_code == 400


def test_an_event_no_dag_is_scheduled_on_is_acknowledged_and_said(
    connection: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from airflow_provider_leap.hooks.leap import connection_json
    from airflow_provider_leap.plugins.receiver import Receiver, create_app

    monkeypatch.setenv(
        "AIRFLOW_CONN_LEAP_UNUSED",
        connection_json("http://127.0.0.1:9", "k", webhook_secret=SECRET),
    )
    caplog.set_level(logging.WARNING, logger="airflow_provider_leap.webhooks.receiver")
    receiver = Receiver(root=tmp_path)
    answer = post(TestClient(create_app(receiver)), delivery(), conn="leap_unused")
    assert answer.json()["status"] == "accepted"
    assert receiver.recorder.flush(30)
    receiver.recorder.stop()
    assert "no DAG is scheduled on leap://leap_unused/connect_session" in caplog.text


# -- failures ------------------------------------------------------------------------------------


def test_an_unwritable_inbox_is_503_so_leap_delivers_again(
    consumer: str, connection: None, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from airflow_provider_leap.plugins.receiver import Receiver, create_app

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    answer = post(TestClient(create_app(Receiver(root=blocked))), delivery())
    assert answer.status_code == 503


def test_a_database_outage_delays_recording_and_loses_nothing(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import airflow.assets.manager as manager

    real = manager.asset_manager
    calls = {"n": 0}

    class Outage:
        def register_asset_change(self, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] <= 2:
                raise RuntimeError("database unavailable")
            return real.register_asset_change(**kwargs)

    monkeypatch.setattr(manager, "asset_manager", Outage())
    body = delivery("cust-rx-outage")
    assert post(client, body).json()["status"] == "accepted"  # durable before the database
    assert client.app.state.receiver.recorder.flush(30)
    assert calls["n"] == 3
    assert [e["ref_id"] for e in recorded({body["webhook_event_id"]})] == ["cust-rx-outage"]


def test_events_a_dead_worker_accepted_are_recovered_once(receiver: Any) -> None:
    from airflow_provider_leap.assets import asset_uri

    dead = WebhookInbox(
        receiver.root,
        CONN,
        clock=lambda: datetime.now(timezone.utc) - timedelta(minutes=10),
    )
    event_id = str(uuid.uuid4())
    extra = {"ref_id": "cust-rx-recovered", "webhook_event_id": event_id}
    assert dead.accept(event_id, asset_uri(CONN), extra) is not None  # then the worker died
    assert receiver.recorder.recover() == 1
    assert receiver.recorder.flush(30)
    assert receiver.recorder.recover() == 0
    assert [e["ref_id"] for e in recorded({event_id})] == ["cust-rx-recovered"]


def marker_files(root: Path, event_id: str) -> list[str]:
    return sorted(p.name.replace(event_id, "<id>") for p in root.rglob(f"{event_id}*"))


@pytest.mark.parametrize("committed", [False, True])
def test_a_claim_left_by_a_worker_killed_while_recording_is_recovered_once(
    client: Any, receiver: Any, committed: bool
) -> None:
    """A worker killed mid-batch leaves its claim: before its transaction committed, or after
    it but before the event was marked done. Either way the event ends recorded once."""
    from fastapi.testclient import TestClient

    from airflow_provider_leap.plugins.receiver import Receiver, create_app

    past = datetime.now(timezone.utc) - timedelta(minutes=25)  # past the lease (10) + skew (10)
    body = delivery("cust-rx-killed")
    event_id = body["webhook_event_id"]
    if committed:
        dead = Receiver(root=receiver.root, clock=lambda: past)
        assert post(TestClient(create_app(dead)), body).json()["status"] == "accepted"
        assert dead.recorder.flush(30)
        dead.recorder.stop()
        (next(Path(receiver.root).rglob(event_id + ".done"))).unlink()  # killed before this
    else:
        inbox = WebhookInbox(receiver.root, CONN, clock=lambda: past)
        extra = {"ref_id": "cust-rx-killed", "webhook_event_id": event_id}
        marker = inbox.accept(event_id, URI, extra)
        assert marker is not None and inbox.take(marker)  # killed in the transaction
        assert recorded({event_id}) == []
    assert marker_files(Path(receiver.root), event_id) == ["<id>", "<id>.taken"]
    assert receiver.recorder.recover() == 1
    assert receiver.recorder.flush(30)
    assert len(recorded({event_id})) == 1
    assert marker_files(Path(receiver.root), event_id) == [
        "<id>",
        "<id>.2.taken",
        "<id>.done",
        "<id>.taken",
    ]
    assert receiver.recorder.recover() == 0
    assert post(client, body).json()["status"] == "duplicate"


def test_a_claim_within_the_lease_plus_the_clock_skew_is_left_to_its_worker(
    receiver: Any,
) -> None:
    """A recovering worker whose clock runs up to ``SKEW`` ahead must not cut a live claim short:
    15 minutes by its clock is past the 10-minute lease, but not past lease plus skew."""
    past = datetime.now(timezone.utc) - timedelta(minutes=15)
    event_id = delivery("cust-rx-live")["webhook_event_id"]
    inbox = WebhookInbox(receiver.root, CONN, clock=lambda: past)
    marker = inbox.accept(event_id, URI, {"ref_id": "cust-rx-live", "webhook_event_id": event_id})
    assert marker is not None and inbox.take(marker)
    assert receiver.recorder.recover() == 0


def test_a_storage_error_while_claiming_hands_every_claim_back(
    client: Any, receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from airflow_provider_leap.plugins.receiver import Receiver

    real_take, calls, five_queued = WebhookInbox.take, [], threading.Event()

    def flaky_take(inbox: WebhookInbox, marker: Any, claim: int = 1) -> bool:
        calls.append(marker.name)
        if len(calls) == 1:  # hold the first batch until the other four form the next one
            five_queued.wait(30)
        if len(calls) == 3:
            raise OSError(503, "SlowDown: please reduce your request rate")
        return real_take(inbox, marker, claim)

    monkeypatch.setattr(WebhookInbox, "take", flaky_take)
    bodies = [delivery(f"cust-rx-batch-{i}") for i in range(5)]
    assert {post(client, body).json()["status"] for body in bodies} == {"accepted"}
    five_queued.set()
    assert receiver.recorder.flush(30)
    ids = {body["webhook_event_id"] for body in bodies}
    root = Path(receiver.root)
    assert len(calls) == 3 and len(recorded(ids)) == 1  # the first; the second batch failed
    assert len(list(root.rglob("*.taken"))) == 1  # no claim left behind by the failed batch
    monkeypatch.setattr(WebhookInbox, "take", real_take)
    later = Receiver(root=root, clock=lambda: datetime.now(timezone.utc) + timedelta(minutes=3))
    assert later.recorder.recover() == 4  # another worker, a little later, finds the four
    assert later.recorder.flush(30)
    later.recorder.stop()
    assert sorted(e["ref_id"] for e in recorded(ids)) == [f"cust-rx-batch-{i}" for i in range(5)]


def test_a_marker_whose_write_failed_is_accepted_again_and_recorded(
    client: Any, receiver: Any
) -> None:
    """A full disk: the marker was created, its content not written, the delivery answered 503;
    Leap's retry is accepted (not a duplicate) and recorded."""
    body = delivery("cust-rx-disk-full")
    event_id = body["webhook_event_id"]
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    empty = Path(receiver.root) / ".webhooks" / CONN / today / event_id
    empty.parent.mkdir(parents=True)
    empty.touch()
    assert post(client, body).json()["status"] == "accepted"
    assert client.app.state.receiver.recorder.flush(30)
    assert [e["ref_id"] for e in recorded({event_id})] == ["cust-rx-disk-full"]
    assert post(client, body).json()["status"] == "duplicate"


# -- the plugin, as Airflow loads it -------------------------------------------------------------


def test_the_plugin_mounts_the_receiver_at_leap(airflow_db: str) -> None:
    from airflow import plugins_manager

    apps, _ = plugins_manager.get_fastapi_plugins()
    [mounted] = [a for a in apps if a["name"] == "Leap webhook receiver"]
    assert mounted["url_prefix"] == "/leap"
    assert any(getattr(r, "path", "") == "/webhooks/{conn_id}" for r in mounted["app"].routes)


def test_asset_uris_are_checked_when_the_dag_is_parsed() -> None:
    from airflow.sdk import Asset

    from airflow_provider_leap.assets import leap_asset

    assert leap_asset("leap_default").uri == "leap://leap_default/connect_session"
    assert leap_asset("leap_default", "meter").uri == "leap://leap_default/meter"
    with pytest.raises(ValueError, match="connect_session"):
        Asset("leap://leap_default/connect_sessions")
    with pytest.raises(ValueError, match="kind must be one of"):
        leap_asset("leap_default", "sessions")
