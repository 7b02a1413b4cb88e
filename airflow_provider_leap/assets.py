"""Airflow assets that Leap's webhooks update: one per Leap connection and event kind.

``leap://<conn_id>/connect_session`` receives every accepted ``connect_session.*`` event
addressed to ``/leap/webhooks/<conn_id>``, ``leap://<conn_id>/meter`` every ``meter.*`` event.
Schedule a DAG on :func:`leap_asset` to run when Leap reports customers acting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import SplitResult

from airflow_provider_leap.webhooks import CONNECT_SESSION, METER

if TYPE_CHECKING:
    from airflow.sdk import Asset

SCHEME = "leap"
KINDS: tuple[str, ...] = (CONNECT_SESSION, METER)


def asset_uri(conn_id: str, kind: str = CONNECT_SESSION) -> str:
    """The URI of the asset for ``kind`` events arriving for connection ``conn_id``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if not conn_id or "/" in conn_id or "@" in conn_id or ":" in conn_id:
        raise ValueError(f"{conn_id!r} is not an Airflow connection id")
    return f"{SCHEME}://{conn_id}/{kind}"


def leap_asset(conn_id: str = "leap_default", kind: str = CONNECT_SESSION) -> Asset:
    """The Airflow asset to schedule a DAG on: ``schedule=[leap_asset("leap_default")]``."""
    from airflow.sdk import Asset

    uri = asset_uri(conn_id, kind)
    return Asset(name=uri, uri=uri)


def normalize_uri(parts: SplitResult) -> SplitResult:
    """Airflow's check of ``leap://`` asset URIs (registered as the scheme's handler).

    A typo such as ``leap://leap_default/connect_sessions`` fails when the DAG is parsed instead
    of leaving the DAG waiting for events that never come.
    """
    kind = parts.path.lstrip("/")
    if not parts.netloc or kind not in KINDS or parts.query:
        raise ValueError(
            f"A Leap asset URI is leap://<connection id>/<kind> with kind one of {list(KINDS)}; "
            f"got {parts.geturl()!r}"
        )
    return parts
