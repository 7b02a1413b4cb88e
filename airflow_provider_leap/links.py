"""Operator extra link to the Connections tab of Leap's Partner Portal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

from airflow_provider_leap import wire

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


def portal_url(leap_conn_id: str) -> str:
    """The portal for the connection's environment; the ``portal_url`` extra overrides it."""
    from airflow_provider_leap.hooks.leap import LeapHook, connection_extras, environment_for

    conn = LeapHook.get_connection(leap_conn_id)
    extras = connection_extras(conn)
    override = extras.get("portal_url")
    if override:
        return str(override)
    return wire.PORTAL_URLS[environment_for(conn, extras)]


class LeapConnectionsLink(BaseOperatorLink):
    """ "Leap Connections": the Partner Portal page that lists the same connections.

    Airflow 3 resolves the link in the worker when the task finishes and stores it, so the
    connection is read there, never in the web server.
    """

    name = "Leap Connections"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        conn_id = getattr(operator, "leap_conn_id", None)
        if not conn_id:
            return ""
        return portal_url(conn_id)
