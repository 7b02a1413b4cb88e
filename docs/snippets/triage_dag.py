"""Triage page: TriageOperator arguments and the ways downstream tasks consume its buckets."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_leap.operators.buckets import bucket_items
from airflow_provider_leap.operators.triage import TriageOperator

with DAG(
    dag_id="leap_triage_patterns",
    schedule="17 * * * *",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    params={"lookback_days": Param(30, type="integer", minimum=1)},
) as dag:
    # --8<-- [start:arguments]
    triage = TriageOperator(
        task_id="triage",
        leap_conn_id="leap_default",
        # Filters (all templated; leave them out to read every connection).
        ref_ids=None,  # or ["cust-000123", ...], "a,b,c" or "{{ params.ref_ids }}"; never empty
        started_after=None,
        # Last interaction, else start (interacted_after= would miss customers with none).
        active_after=(
            "{{ (dag_run.run_after - macros.timedelta(days=params.lookback_days)).isoformat() }}"
        ),
        now="{{ dag_run.run_after }}",  # default None: the wall clock
        # Decision parameters.
        quiet_period=timedelta(hours=1),  # or seconds: 3600
        agreement_done_statuses={"COMPLETED", "SIGNED", "ACCEPTED"},
        # Paging: records per API page (default: the connection's page_size, else 500).
        page_size=500,
    )
    # --8<-- [end:arguments]

    # --8<-- [start:mapped]
    @task
    def open_crm_task(item: dict[str, Any]) -> str:
        """One mapped task instance per Reference ID in the bucket (each run lists them again:
        a message to the customer goes through LeapContactOperator)."""
        print(f"CRM task for {item['ref_id']}: not started")
        return item["ref_id"]

    @task
    def tag_in_crm(bucket: str, item: dict[str, Any]) -> str:
        reason = item["reason"]  # e.g. "error:USER_CANCELED": the CRM's tag, not a message
        return f"{bucket}/{reason} -> {item['ref_id']}"

    not_started = bucket_items.override(task_id="not_started_items")(triage.output["not_started"])
    open_crm_task.expand(item=not_started)

    errors = bucket_items.override(task_id="utility_error_items")(triage.output["utility_error"])
    tag_in_crm.partial(bucket="utility_error").expand(item=errors)
    # --8<-- [end:mapped]

    # --8<-- [start:batch]
    @task
    def record_in_crm(buckets: dict[str, list[dict[str, Any]]]) -> int:
        """One task for several buckets: a dict of bucket name to items."""
        rows = [
            {"ref_id": item["ref_id"], "bucket": bucket, "reason": item["reason"]}
            for bucket, items in buckets.items()
            for item in items
        ]
        print(f"{len(rows)} CRM row(s)")
        return len(rows)

    record_in_crm({name: triage.output[name] for name in ("completed", "needs_review")})
    # --8<-- [end:batch]
