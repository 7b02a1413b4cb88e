"""Sensor page: ConnectStatusSensor in its three modes, and what to do with its XCom."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_leap.sensors.connect import ConnectStatusSensor

with DAG(
    dag_id="leap_sensor_modes",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params={"ref_ids": Param(["Test1012"], type="array", items={"type": "string"})},
) as dag:
    # --8<-- [start:poke]
    # poke: the task holds a worker slot and sleeps between checks. For short waits only.
    wait_poke = ConnectStatusSensor(
        task_id="wait_poke",
        ref_ids=["cust-000101", "cust-000102"],
        mode="poke",
        deferrable=False,
        poke_interval=timedelta(hours=1),
        timeout=timedelta(hours=6),
    )
    # --8<-- [end:poke]

    # --8<-- [start:reschedule]
    # reschedule: the slot is released between checks; the timeout counts from the first try.
    wait_reschedule = ConnectStatusSensor(
        task_id="wait_reschedule",
        ref_ids="cust-000101,cust-000102",  # a comma-separated string works too
        mode="reschedule",
        deferrable=False,
        timeout=timedelta(days=3),
    )
    # --8<-- [end:reschedule]

    # --8<-- [start:deferrable]
    # deferrable: the wait runs in the triggerer; no worker slot and no task process meanwhile.
    wait_deferred = ConnectStatusSensor(
        task_id="wait_deferred",
        ref_ids="{{ params.ref_ids }}",  # templated
        target_statuses=["COMPLETED"],
        fail_on_statuses=["ERROR"],  # stop at once, without retries, if one lands in ERROR
        deferrable=True,
        poke_interval=timedelta(hours=1),
        timeout=timedelta(days=7),  # becomes the trigger's end_time
        soft_fail=False,  # True: skip instead of failing on a fail status or the timeout
    )
    # --8<-- [end:deferrable]

    # --8<-- [start:xcom]
    @task
    def follow_up(records: list[dict[str, Any]]) -> list[str]:
        """The sensor's XCom: one small dict per Connect record of the watched Reference IDs."""
        for record in records:
            print(
                record["ref_id"],
                record["transmission_region"],
                record["connection_status"],
                record["last_interaction_date_time_utc"],
            )
        return sorted({record["ref_id"] for record in records})

    follow_up(wait_deferred.output)
    # --8<-- [end:xcom]
