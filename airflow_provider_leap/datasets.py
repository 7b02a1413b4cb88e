"""What the provider's tasks read, named once: ``leap://<conn_id>/<kind>``. No Airflow import.

One Airflow connection is one Leap environment and one partner account (a key works in one
environment only), so the connection id names the source; the kind names what is read:

- ``connections``: the Connect API's records (``TriageOperator``, ``ConnectStatusSensor``);
- ``connect_session`` and ``meter``: the events Leap's webhooks push (the webhook receiver).

The same string is an Airflow asset URI (``Asset("leap://leap_default/connections")``) and,
split at the kind, an OpenLineage dataset: namespace ``leap://<conn_id>``, name ``<kind>``. So an
asset a user declares and the lineage the operators report meet in one dataset.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult, urlsplit

SCHEME = "leap"
CONNECTIONS = "connections"
KINDS: tuple[str, ...] = (CONNECTIONS, "connect_session", "meter")
_FORBIDDEN_IN_CONN_ID = frozenset("/@:?#")


def dataset_uri(conn_id: str, kind: str = CONNECTIONS) -> str:
    """``leap://<conn_id>/<kind>``; a bad connection id or kind is a ``ValueError``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if not conn_id or _FORBIDDEN_IN_CONN_ID & set(conn_id) or conn_id != conn_id.strip():
        raise ValueError(f"{conn_id!r} cannot be a Leap dataset's connection id")
    return f"{SCHEME}://{conn_id}/{kind}"


def dataset_name(conn_id: str, kind: str = CONNECTIONS) -> tuple[str, str]:
    """The OpenLineage namespace and name of ``dataset_uri(conn_id, kind)``."""
    uri = dataset_uri(conn_id, kind)
    namespace, _, name = uri.rpartition("/")
    return namespace, name


def normalize_uri(parts: SplitResult) -> SplitResult:
    """Airflow's check of ``leap://`` asset URIs (the scheme's registered handler).

    ``leap://<conn_id>/<kind>``, a trailing slash dropped; anything else (a port, a user, a
    query, an unknown kind such as ``connect_sessions``) fails when the DAG is parsed, instead of
    leaving a DAG waiting on an asset nothing updates.
    """
    kind = parts.path.strip("/")
    problem = None
    if not parts.netloc or _FORBIDDEN_IN_CONN_ID & set(parts.netloc):
        problem = "the part after leap:// must be an Airflow connection id"
    elif kind not in KINDS:
        problem = f"the path must be one of {', '.join('/' + k for k in KINDS)}"
    elif parts.query or parts.fragment:
        problem = "it takes no query or fragment"
    if problem:
        raise ValueError(
            f"{parts.geturl()!r} is not a Leap asset URI: {problem} "
            f"(leap://<conn_id>/<kind>, e.g. leap://leap_default/{CONNECTIONS})"
        )
    return parts._replace(path="/" + kind)


def asset_to_openlineage(asset: Any, lineage_context: Any) -> Any:
    """A ``leap://`` asset as the OpenLineage dataset the operators report (the scheme's
    registered converter). Airflow imports this module whenever it meets an asset URI, so
    OpenLineage is imported only here, when a conversion is asked for."""
    from openlineage.client.event_v2 import Dataset

    parts = urlsplit(asset.uri)
    return Dataset(*dataset_name(parts.netloc, parts.path.strip("/")))
