"""Triage page: keep large buckets out of Airflow's metadata database."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_leap.operators.triage import TriageOperator

with DAG(
    dag_id="leap_triage_large",
    schedule="17 * * * *",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
) as dag:
    # --8<-- [start:offload]
    triage = TriageOperator(
        task_id="triage",
        # Buckets with more than 1,000 items are written as JSON lines under
        # <bucket_storage>/<dag_id>/<run_id>/<task_id>/<bucket>.jsonl; their XCom holds the URL.
        bucket_storage="file:///var/lib/airflow/leap-buckets",  # or "s3://my-bucket/leap"
        bucket_storage_conn_id=None,  # e.g. "aws_default" for s3://
        offload_threshold=1000,
    )

    @task
    def resend_links(items: Any) -> int:
        from airflow_provider_leap.storage import load_bucket

        # The XCom value is either the list itself or the file's URL: load_bucket reads both.
        rows = load_bucket(items)  # pass conn_id=... when the storage needs credentials
        return len(rows)

    resend_links(triage.output["not_started"])
    # --8<-- [end:offload]
