"""The deployment check's own DAG: the example's sensor, polling every 5 seconds.

The check copies this file into its throwaway DAGs folder, next to the example DAGs, so the
defer / resume / triggerer-restart checks take seconds instead of the example's hourly polls.
It does not pass ``deferrable``: the deployment's ``[operators] default_deferrable = True``
makes it defer. Trigger it with ``{"ref_ids": [...]}``.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import DAG, Param

from airflow_provider_leap.sensors.connect import ConnectStatusSensor

with DAG(
    dag_id="leap_deploy_check_watch",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params={"ref_ids": Param(type="array", items={"type": "string"}, minItems=1)},
    tags=["leap", "deploy-check"],
) as dag:
    ConnectStatusSensor(
        task_id="wait_for_completed",
        ref_ids="{{ params.ref_ids }}",
        target_statuses=["COMPLETED"],
        poke_interval=5,
        timeout=600,
    )
