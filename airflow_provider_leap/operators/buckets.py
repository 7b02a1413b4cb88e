"""``bucket_items``, its own module: ``@task`` loads Airflow's decorator machinery, which
``TriageOperator`` users should not pay for when their DAG files are parsed."""

from __future__ import annotations

from typing import Any

from airflow.sdk import task


@task
def bucket_items(items: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """One bucket as a return value: Airflow refuses to ``.expand`` over a custom XCom key."""
    return items or []
