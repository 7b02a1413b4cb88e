"""Quickstart: triage Leap Connect statuses every hour and hand two buckets to downstream tasks.

A bucket lists every customer in that state at each run: it feeds reports and CRM views, not
messages. To message customers (once per stall, then on a cadence), use LeapContactOperator.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_leap.operators.triage import TriageOperator

with DAG(
    dag_id="leap_quickstart",
    schedule="17 * * * *",  # hourly, after Leap's hourly refresh has landed
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["leap"],
) as dag:
    # One API pass over every connection touched in the last 30 days; one XCom per bucket.
    triage = TriageOperator(
        task_id="triage",
        leap_conn_id="leap_default",
        active_after="{{ (dag_run.run_after - macros.timedelta(days=30)).isoformat() }}",
        now="{{ dag_run.run_after }}",  # triage as of the run's time, manual runs included
    )

    @task
    def list_not_started(items: list[dict[str, Any]]) -> list[str]:
        """not_started: the customer opened the link but never logged into the utility. The
        same customers are listed again next hour: this task must not message them."""
        ref_ids = [item["ref_id"] for item in items]
        for ref_id in ref_ids:
            print(f"not started: {ref_id}")
        return ref_ids

    @task
    def count_error_codes(items: list[dict[str, Any]]) -> dict[str, int]:
        """utility_error: the reason carries the first error code, e.g. error:USER_CANCELED."""
        counts: dict[str, int] = {}
        for item in items:
            counts[item["reason"]] = counts.get(item["reason"], 0) + 1
        return counts

    @task
    def log_summary(summary: dict[str, Any]) -> dict[str, int]:
        """The operator's return value: counts per bucket, records read, duplicates dropped."""
        print(f"{summary['records_read']} record(s) read: {summary['counts']}")
        return summary["counts"]

    # --8<-- [start:wiring]
    list_not_started(triage.output["not_started"])
    count_error_codes(triage.output["utility_error"])
    log_summary(triage.output)
    # --8<-- [end:wiring]
