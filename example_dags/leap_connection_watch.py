"""Wait for particular customers to complete Leap Connect, then follow up on their meters.

A deferrable ``ConnectStatusSensor`` waits (in the triggerer, holding no worker slot) until every
Reference ID in the ``ref_ids`` param is COMPLETED, polling at Leap's hourly refresh rhythm. The
meters follow-up searches meters created since the connections' last interaction: meters appear
about 24 hours after COMPLETED, sometimes days later, so a missing meter is only "overdue" after
``meter_grace_hours``. The report lists each Reference ID with its meters or its wait.

The default ``ref_ids`` are three customers who have completed Connect in the local emulator
(``python -m airflow_provider_leap.testing``, default seed), so a run with the defaults finishes
there; trigger with your own Reference IDs (the trigger form or ``--conf``) against Leap.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_leap.sensors.connect import ConnectStatusSensor

with DAG(
    dag_id="leap_connection_watch",
    description="Wait for Reference IDs to complete Leap Connect, then check their meters",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params={
        "ref_ids": Param(
            ["Jane Doe 0001", "user+tag@example.com", "crm:lead:42"],
            type="array",
            items={"type": "string"},
            description="Reference IDs to wait for",
        ),
        "meter_grace_hours": Param(
            72,
            type="integer",
            minimum=1,
            description="Hours after COMPLETED before a missing meter is overdue",
        ),
    },
    tags=["leap", "example"],
) as dag:
    wait = ConnectStatusSensor(
        task_id="wait_for_completed",
        ref_ids="{{ params.ref_ids }}",
        target_statuses=["COMPLETED"],
        deferrable=True,
        poke_interval=timedelta(hours=1),
        timeout=timedelta(days=7).total_seconds(),
    )

    @task
    def follow_up_meters(
        records: list[dict[str, Any]], params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Meters created since each connection's last interaction, or how long to wait still."""
        from airflow_provider_leap.hooks.leap import LeapHook
        from airflow_provider_leap.models import parse_timestamp

        grace = timedelta(hours=int((params or {}).get("meter_grace_hours", 72)))
        now = datetime.now(timezone.utc)
        since = {
            r["ref_id"]: parse_timestamp(r["last_interaction_date_time_utc"]) or now
            for r in records
        }
        if not since:
            return []
        meters: dict[str, list[str]] = {ref: [] for ref in since}
        for meter in LeapHook().iter_meters(
            connection_reference_ids=list(since), created_after=min(since.values())
        ):
            for ref in meter.connection_references:
                if ref in meters and meter.meter_id:
                    meters[ref].append(meter.meter_id)
        rows = []
        for ref, last in since.items():
            if meters[ref]:
                state = "meters found"
            elif now - last < grace:
                state = f"waiting: meters appear ~24 h after COMPLETED ({last:%Y-%m-%d %H:%M}Z)"
            else:
                state = f"overdue: no meter {grace} after completion; check with Leap"
            rows.append({"ref_id": ref, "meters": meters[ref], "state": state})
        return rows

    @task
    def report(rows: list[dict[str, Any]]) -> dict[str, int]:
        for row in rows:
            print(f"{row['ref_id']:<40} {len(row['meters'])} meter(s)  {row['state']}")
        found = sum(1 for row in rows if row["meters"])
        print(f"{found} of {len(rows)} Reference ID(s) have meters")
        return {"with_meters": found, "total": len(rows)}

    report(follow_up_meters(wait.output))
