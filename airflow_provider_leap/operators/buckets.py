"""``bucket_items``: hand one triage bucket on as a return value, so it can be mapped over.

A module of its own because ``@task`` pulls in Airflow's decorator machinery (tens of
milliseconds): DAG files that only use ``TriageOperator`` do not pay for it at parse time.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import task


@task
def bucket_items(items: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """One bucket as this task's return value, so it can be mapped over with ``.expand``.

    Airflow refuses to map over an XCom pushed under a custom key such as ``"not_started"``.
    """
    return items or []
