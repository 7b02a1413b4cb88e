"""ConnectStatusSensor (poke, reschedule, deferrable) against the emulator; its trigger is in
test_trigger.py."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)
from emulator_refs import connect_requests, refs

from airflow_provider_leap.hooks.leap import LeapException, connection_json
from airflow_provider_leap.sensors.connect import ConnectStatusSensor
from airflow_provider_leap.triggers.connect import ConnectStatusTrigger


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
def test_a_status_leap_does_not_document_is_waited_for_with_one_warning(
    leap_emulator, capfd
) -> None:
    """Review s13b F5: a typo (COMPLETE) waited in silence until the timeout."""
    s = sensor(
        ref_ids=refs(leap_emulator, "COMPLETED", 1),
        target_statuses="complete",
        fail_on_statuses="ERROR,erorr",
    )
    assert not s.poke({}).is_done and not s.poke({}).is_done
    log = "".join(capfd.readouterr())
    known = "none of the statuses Leap documents: COMPLETED, ERROR, NOT_STARTED, PARTIAL"
    assert log.count(f"target_statuses: 'COMPLETE' is {known}; waiting for it anyway") == 1
    assert log.count(f"fail_on_statuses: 'ERORR' is {known}; failing on it anyway") == 1
    assert log.count("Leap documents") == 2  # ERROR is one of them
    sensor(ref_ids=refs(leap_emulator, "COMPLETED", 1)).poke({})
    assert "Leap documents" not in "".join(capfd.readouterr())


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
    assert 1 <= len(connect_requests(leap_emulator)) <= most


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
    # Absolute times: a restarted triggerer resumes them. The worker just polled, so the next
    # poll is on the 120 s grid that every sensor of this interval shares, 60 to 180 s on.
    now = time.time()
    assert kwargs["next_poll_at"] % 120 == 0 and now + 30 < kwargs["next_poll_at"] < now + 180
    assert abs(kwargs["end_time"] - (now + 600)) < 30
    assert err.value.timeout == timedelta(seconds=600)  # Airflow's own timeout agrees
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


@pytest.mark.usefixtures("leap_conn")
def test_execute_complete_reads_the_records_the_event_does_not_carry(leap_emulator) -> None:
    ids = refs(leap_emulator, "COMPLETED", 2)
    event = {"status": "success", "message": "2 of 2", "counts": {"reached": 2}}
    records = sensor(ref_ids=ids).execute_complete({}, event)
    assert sorted({r["ref_id"] for r in records}) == sorted(ids)
    assert len(connect_requests(leap_emulator)) == 1
    assert sensor(ref_ids=ids, return_records=False).execute_complete({}, event) is None
    assert len(connect_requests(leap_emulator)) == 1  # not asked for: not read


def test_execute_complete_takes_an_event_of_the_previous_version() -> None:
    records = [{"ref_id": "abc", "connection_status": "COMPLETED"}]
    event = {"status": "success", "records": records}
    assert sensor(ref_ids=["abc"]).execute_complete({}, event) == records
    assert sensor(ref_ids=["abc"], return_records=False).execute_complete({}, event) is None


@pytest.mark.usefixtures("leap_conn")
def test_return_records_false_pushes_no_records_when_poked(leap_emulator) -> None:
    result = sensor(ref_ids=refs(leap_emulator, "COMPLETED", 1), return_records=False).poke({})
    assert result.is_done and result.xcom_value is None


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
        while len(connect_requests(leap_emulator)) < 1 and time.monotonic() < deadline:
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
    assert (
        len(connect_requests(leap_emulator)) >= 2
    )  # released the slot at least once, then poked again
