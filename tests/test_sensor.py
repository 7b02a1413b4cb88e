"""ConnectStatusSensor (poke, reschedule, deferrable) and its trigger, against the emulator."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from airflow.exceptions import AirflowException, TaskDeferred
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSensorTimeout,
    AirflowSkipException,
)

from airflow_provider_leap.hooks.leap import LeapException, connection_json
from airflow_provider_leap.sensors.connect import ConnectStatusSensor
from airflow_provider_leap.testing import EMULATOR_API_KEY, FaultKind
from airflow_provider_leap.triggers.connect import ConnectStatusTrigger

CONNECTIONS = "/v1.1/connections"


def refs(leap_emulator: Any, status: str, count: int = 3) -> list[str]:
    """Reference IDs whose every record has ``status`` (an ID may exist in two regions)."""
    by_ref: dict[str, set[str]] = {}
    for record in leap_emulator.records:
        by_ref.setdefault(record["ref_id"], set()).add(record["connection_status"])
    return [ref for ref, statuses in by_ref.items() if statuses == {status}][:count]


def connect_requests(leap_emulator: Any) -> int:
    return sum(1 for r in leap_emulator.requests if r.path == CONNECTIONS)


def sensor(**kwargs: Any) -> ConnectStatusSensor:
    kwargs.setdefault("task_id", "wait")
    kwargs.setdefault("deferrable", False)
    return ConnectStatusSensor(**kwargs)


# -- poke ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("leap_conn")
def test_poke_succeeds_when_every_id_is_completed(leap_emulator) -> None:
    ids = refs(leap_emulator, "COMPLETED")
    result = sensor(ref_ids=ids).poke({})
    assert result.is_done
    assert sorted({r["ref_id"] for r in result.xcom_value}) == sorted(ids)
    assert all(r["connection_status"] == "COMPLETED" for r in result.xcom_value)
    assert set(result.xcom_value[0]) >= {"id", "ref_id", "last_interaction_date_time_utc"}


@pytest.mark.usefixtures("leap_conn")
def test_poke_waits_and_names_what_it_waits_on(leap_emulator, capfd) -> None:
    ids = (
        refs(leap_emulator, "COMPLETED", 2)
        + refs(leap_emulator, "PARTIAL", 1)
        + ["never-clicked-1"]
    )
    result = sensor(ref_ids=",".join(ids)).poke({})
    assert not result.is_done
    captured = capfd.readouterr()
    log = captured.out + captured.err
    assert "2 of 4 Reference ID(s) reached the target status" in log
    assert f"waiting on 1: {ids[2]} (PARTIAL)" in log
    assert "not listed by Leap yet (link not clicked?) 1: never-clicked-1" in log


@pytest.mark.usefixtures("leap_conn")
def test_fail_on_statuses_stops_early(leap_emulator) -> None:
    ids = refs(leap_emulator, "COMPLETED", 1) + refs(leap_emulator, "ERROR", 1)
    with pytest.raises(AirflowFailException, match="fail status"):
        sensor(ref_ids=ids, fail_on_statuses=["ERROR"]).poke({})


@pytest.mark.usefixtures("leap_conn")
def test_soft_fail_skips_instead_of_failing(leap_emulator) -> None:
    ids = refs(leap_emulator, "ERROR", 1)
    s = sensor(ref_ids=ids, fail_on_statuses=["ERROR"], soft_fail=True, mode="poke")
    with pytest.raises(AirflowSkipException):
        s.execute({})


@pytest.mark.usefixtures("leap_conn")
def test_poke_mode_times_out(leap_emulator, mocker) -> None:
    mocker.patch("airflow.sdk.bases.sensor.time.sleep")  # the seam: no real waiting
    s = sensor(ref_ids=refs(leap_emulator, "PARTIAL", 1), timeout=0, poke_interval=60)
    with pytest.raises(AirflowSensorTimeout):
        s.execute({})


@pytest.mark.parametrize(("count", "most"), [(1, 1), (100, 1), (1000, 5)])
@pytest.mark.usefixtures("leap_conn")
def test_one_pass_per_poke_batches_reference_ids(leap_emulator, count, most) -> None:
    ids = [f"cust-{i:06d}" for i in range(count)]
    sensor(ref_ids=ids).poke({})
    assert 1 <= connect_requests(leap_emulator) <= most


def test_poke_errors_are_leap_exceptions(monkeypatch, leap_emulator) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_LEAP_BAD", connection_json(leap_emulator.url, "wrong:key"))
    with pytest.raises(LeapException, match="HTTP 403") as err:
        sensor(ref_ids=["abc"], leap_conn_id="leap_bad").poke({})
    assert "wrong:key" not in str(err.value)


# -- reschedule ---------------------------------------------------------------------------------


class FakeTI:
    """The only part of a task instance reschedule mode reads: when the first try started."""

    def get_first_reschedule_date(self, context: Any) -> None:
        return None


@pytest.mark.usefixtures("leap_conn")
def test_reschedule_mode_frees_the_slot_until_the_next_poke(leap_emulator) -> None:
    s = sensor(ref_ids=refs(leap_emulator, "PARTIAL", 1), mode="reschedule", poke_interval=3600)
    before = datetime.now(timezone.utc)
    with pytest.raises(AirflowRescheduleException) as err:
        s.execute({"ti": FakeTI()})
    assert timedelta(minutes=59) < err.value.reschedule_date - before < timedelta(minutes=61)


@pytest.mark.usefixtures("leap_conn")
def test_reschedule_mode_returns_records_when_done(leap_emulator) -> None:
    ids = refs(leap_emulator, "COMPLETED", 2)
    records = sensor(ref_ids=ids, mode="reschedule").execute({"ti": FakeTI()})
    assert sorted({r["ref_id"] for r in records}) == sorted(ids)


# -- deferrable ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("leap_conn")
def test_deferrable_defers_with_a_serialisable_trigger(leap_emulator) -> None:
    ids = refs(leap_emulator, "PARTIAL", 2)
    s = sensor(ref_ids=ids, deferrable=True, timeout=600, poke_interval=120)
    with pytest.raises(TaskDeferred) as err:
        s.execute({})
    trigger = err.value.trigger
    assert isinstance(trigger, ConnectStatusTrigger)
    assert err.value.method_name == "execute_complete"
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_leap.triggers.connect.ConnectStatusTrigger"
    assert kwargs["ref_ids"] == ids and kwargs["poll_interval"] == 120
    assert kwargs["poll_first"] is False  # the worker just polled: no second request at once
    assert abs(kwargs["end_time"] - (time.time() + 600)) < 30
    rebuilt = ConnectStatusTrigger(**kwargs)
    assert rebuilt.serialize() == (path, kwargs)


@pytest.mark.usefixtures("leap_conn")
def test_deferrable_returns_at_once_when_already_done(leap_emulator) -> None:
    ids = refs(leap_emulator, "COMPLETED", 1)
    assert sensor(ref_ids=ids, deferrable=True).execute({})[0]["ref_id"] == ids[0]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"status": "timeout", "message": "m"}, AirflowSensorTimeout),
        ({"status": "failed", "message": "m"}, AirflowFailException),
        ({"status": "error", "message": "m"}, AirflowException),
        ({"status": "surprise"}, AirflowException),
        (None, AirflowException),
    ],
)
def test_execute_complete_maps_every_event(event, expected) -> None:
    with pytest.raises(expected):
        sensor(ref_ids=["abc"]).execute_complete({}, event)


def test_execute_complete_success_returns_records() -> None:
    records = [{"ref_id": "abc", "connection_status": "COMPLETED"}]
    event = {"status": "success", "records": records}
    assert sensor(ref_ids=["abc"]).execute_complete({}, event) == records


# -- trigger run loop ---------------------------------------------------------------------------


async def first_event(trigger: ConnectStatusTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("trigger ended without an event")


def make_trigger(ids: list[str], **kwargs: Any) -> ConnectStatusTrigger:
    kwargs.setdefault("end_time", time.time() + 30)
    kwargs.setdefault("poll_interval", 0.05)
    return ConnectStatusTrigger(
        leap_conn_id="leap_default", ref_ids=ids, target_statuses=["COMPLETED"], **kwargs
    )


@pytest.mark.usefixtures("leap_conn")
def test_trigger_succeeds_against_the_emulator(leap_emulator) -> None:
    ids = refs(leap_emulator, "COMPLETED", 3)
    event = asyncio.run(first_event(make_trigger(ids)))
    assert event["status"] == "success"
    assert sorted({r["ref_id"] for r in event["records"]}) == sorted(ids)


def test_trigger_rides_out_transient_faults(monkeypatch, leap_emulator) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_LEAP_DEFAULT",
        connection_json(leap_emulator.url, EMULATOR_API_KEY, max_retries=0),
    )
    leap_emulator.faults.fail_next(2, FaultKind.UNAVAILABLE)
    event = asyncio.run(first_event(make_trigger(refs(leap_emulator, "COMPLETED", 1))))
    assert event["status"] == "success"
    assert [r.status for r in leap_emulator.requests] == [503, 503, 200]


@pytest.mark.usefixtures("leap_conn")
def test_trigger_times_out_at_end_time(leap_emulator) -> None:
    started = time.monotonic()
    trigger = make_trigger(
        refs(leap_emulator, "PARTIAL", 1), end_time=time.time() + 0.3, poll_interval=0.1
    )
    event = asyncio.run(first_event(trigger))
    assert event["status"] == "timeout"
    assert "waiting on 1" in event["message"]
    assert time.monotonic() - started < 5
    assert connect_requests(leap_emulator) >= 2


@pytest.mark.usefixtures("leap_conn")
def test_trigger_reports_a_fail_status(leap_emulator) -> None:
    trigger = make_trigger(refs(leap_emulator, "ERROR", 1), fail_on_statuses=["ERROR"])
    event = asyncio.run(first_event(trigger))
    assert event["status"] == "failed" and event["failed"]


def test_trigger_gives_up_on_a_refused_key(monkeypatch, leap_emulator) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_LEAP_DEFAULT", connection_json(leap_emulator.url, "wrong:key"))
    event = asyncio.run(first_event(make_trigger(["abc"])))
    assert event["status"] == "error" and "HTTP 403" in event["message"]
    assert "wrong:key" not in event["message"]


@pytest.mark.usefixtures("leap_conn")
def test_trigger_does_not_block_the_event_loop(leap_emulator) -> None:
    leap_emulator.faults.fail_next(1, "slow")  # a 1 s answer: the loop must keep ticking meanwhile

    async def main() -> tuple[dict[str, Any], int]:
        ticks = 0
        task = asyncio.create_task(first_event(make_trigger(refs(leap_emulator, "COMPLETED", 1))))
        while not task.done():
            await asyncio.sleep(0.01)
            ticks += 1
        return task.result(), ticks

    event, ticks = asyncio.run(main())
    assert event["status"] == "success"
    assert ticks > 5  # the loop kept running while the thread waited on the answer


# -- in a DAG run -------------------------------------------------------------------------------

SENSOR_DAG = """
from datetime import datetime, timezone
from airflow.sdk import DAG
from airflow_provider_leap.sensors.connect import ConnectStatusSensor

with DAG("{dag_id}", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc)) as dag:
    ConnectStatusSensor(task_id="wait", ref_ids={ref_ids!r}, deferrable=True,
                        target_statuses="{{{{ 'completed' }}}}",  # one status, templated
                        poke_interval=0.2, timeout={timeout})
"""


@pytest.mark.usefixtures("leap_conn")
def test_deferred_sensor_completes_in_a_dag_run(run_dag, leap_emulator) -> None:
    ids = refs(leap_emulator, "PARTIAL", 1)
    leap_emulator.faults.clear()
    # Completes between polls: the first check (in the worker) sees PARTIAL, the trigger COMPLETED.
    original = [dict(r) for r in leap_emulator.records]

    def complete_later() -> None:
        time.sleep(1.0)
        leap_emulator.set_records(
            [{**r, "connection_status": "COMPLETED"} if r["ref_id"] in ids else r for r in original]
        )

    import threading

    threading.Thread(target=complete_later, daemon=True).start()
    source = SENSOR_DAG.format(dag_id="watch_completes", ref_ids=ids, timeout=60)
    result = run_dag("watch_completes", source)
    assert result.state == "success", result.task_states
    assert {r["ref_id"] for r in result.xcoms[("wait", "return_value")]} == set(ids)


@pytest.mark.usefixtures("leap_conn")
def test_deferred_sensor_times_out_as_configured(run_dag, leap_emulator) -> None:
    source = SENSOR_DAG.format(
        dag_id="watch_times_out", ref_ids=refs(leap_emulator, "PARTIAL", 1), timeout=2
    )
    started = time.monotonic()
    result = run_dag("watch_times_out", source)
    assert result.task_states["wait"] == "failed"
    assert result.state == "failed"
    assert time.monotonic() - started < 60


RESCHEDULE_DAG = """
from datetime import datetime, timezone
from airflow.sdk import DAG
from airflow_provider_leap.sensors.connect import ConnectStatusSensor

with DAG("{dag_id}", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc)) as dag:
    ConnectStatusSensor(task_id="wait", ref_ids={ref_ids!r}, mode="reschedule",
                        poke_interval=1, timeout=60)
"""


@pytest.mark.usefixtures("leap_conn")
def test_reschedule_mode_in_a_dag_run(run_dag, leap_emulator) -> None:
    import threading

    ids = refs(leap_emulator, "PARTIAL", 1)
    original = [dict(r) for r in leap_emulator.records]

    def complete_after_first_poke() -> None:
        deadline = time.monotonic() + 60
        while connect_requests(leap_emulator) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        leap_emulator.set_records(
            [{**r, "connection_status": "COMPLETED"} if r["ref_id"] in ids else r for r in original]
        )

    threading.Thread(target=complete_after_first_poke, daemon=True).start()
    result = run_dag(
        "watch_reschedule", RESCHEDULE_DAG.format(dag_id="watch_reschedule", ref_ids=ids)
    )
    assert result.state == "success", result.task_states
    assert {r["ref_id"] for r in result.xcoms[("wait", "return_value")]} == set(ids)
    assert connect_requests(leap_emulator) >= 2  # released the slot at least once, then poked again


@pytest.mark.usefixtures("leap_conn")
def test_trigger_can_wait_one_interval_before_its_first_poll(leap_emulator) -> None:
    trigger = make_trigger(refs(leap_emulator, "COMPLETED", 1), poll_interval=0.3, poll_first=False)
    started = time.monotonic()
    event = asyncio.run(first_event(trigger))
    assert event["status"] == "success"
    assert time.monotonic() - started >= 0.3
    assert connect_requests(leap_emulator) == 1
