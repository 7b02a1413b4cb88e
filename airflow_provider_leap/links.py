"""Operator extra link to Leap's Partner Portal, for the connection's environment."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class LeapConnectionsLink(BaseOperatorLink):
    """ "Leap Connections": the Partner Portal of the connection's environment (or the
    ``portal_url`` extra). Airflow 3 resolves it in the worker, never in the web server."""

    name = "Leap Connections"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        # Imported here: the hook loads the HTTP stack, which parsing a DAG file need not pay for.
        from airflow_provider_leap.hooks.leap import LeapHook

        conn_id = getattr(operator, "leap_conn_id", None)
        return LeapHook(conn_id).config.portal_url if conn_id else ""
