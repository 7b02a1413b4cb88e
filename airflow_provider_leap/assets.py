"""Airflow assets that Leap's webhooks update: one per Leap connection and event kind.

``leap://<conn_id>/connect_session`` receives every accepted ``connect_session.*`` event
addressed to ``/leap/webhooks/<conn_id>``, ``leap://<conn_id>/meter`` every ``meter.*`` event.
Schedule a DAG on :func:`leap_asset` to run when Leap reports customers acting. The URIs are the
provider's ``leap://`` scheme (``datasets.py``: checked when a DAG is parsed, and the same
OpenLineage datasets as the operators' lineage).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_leap import DEFAULT_CONN_ID
from airflow_provider_leap.datasets import dataset_uri
from airflow_provider_leap.webhooks import CONNECT_SESSION, METER

if TYPE_CHECKING:
    from airflow.sdk import Asset

KINDS: tuple[str, ...] = (CONNECT_SESSION, METER)  # the kinds webhooks update


def asset_uri(conn_id: str, kind: str = CONNECT_SESSION) -> str:
    """The URI of the asset for ``kind`` events arriving for connection ``conn_id``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    return dataset_uri(conn_id, kind)


def leap_asset(conn_id: str = DEFAULT_CONN_ID, kind: str = CONNECT_SESSION) -> Asset:
    """The Airflow asset to schedule a DAG on: ``schedule=[leap_asset("leap_default")]``."""
    from airflow.sdk import Asset

    uri = asset_uri(conn_id, kind)
    return Asset(name=uri, uri=uri)
