"""Where XComs were stored, for lineage: the object-storage file of each XCom that Airflow's
``XComObjectStorageBackend`` offloaded.

Looked up in the task's own process, right after the push: Airflow's OpenLineage listener asks
for lineage from a forked child, where a request to the task's supervisor is not safe (under
``dag.test()`` it hangs). Only when OpenLineage is on and that backend is configured: otherwise
nothing is asked, nothing is imported.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


def lineage_enabled() -> bool:
    """Airflow's OpenLineage provider is installed and configured to emit."""
    if importlib.util.find_spec("airflow.providers.openlineage") is None:
        return False
    from airflow.providers.openlineage import conf

    return not conf.is_disabled()


def offloaded(
    ti: Any, task_id: str, keys: Iterable[str], *, mapped: bool = False
) -> dict[str, str]:
    """The object-storage URL of each of these XComs of ``task_id`` (in ``ti``'s run; of
    ``ti``'s own map index when ``mapped``) that the backend moved out of the database; {} when
    OpenLineage is off or another backend is configured. Lineage never fails a task: a lookup
    that fails reports nothing."""
    try:
        map_index = ti.map_index if mapped and ti.map_index is not None else -1
        return _offloaded(ti, task_id, keys, map_index)
    except Exception:
        log.warning("Could not tell where the XComs of %s are stored, for lineage", task_id)
        log.debug("XCom lookup failure", exc_info=True)
        return {}


def _offloaded(ti: Any, task_id: str, keys: Iterable[str], map_index: int) -> dict[str, str]:
    from airflow.sdk.bases.xcom import BaseXCom
    from airflow.sdk.execution_time.xcom import XCom

    if not any(c.__name__ == "XComObjectStorageBackend" for c in XCom.__mro__):
        return {}
    if not lineage_enabled():
        return {}
    found = {}
    for key in keys:
        # The stored reference itself: every public getter would read the whole file back.
        stored = XCom._get_xcom_db_ref(
            key=key, dag_id=ti.dag_id, task_id=task_id, run_id=ti.run_id, map_index=map_index
        )
        value = BaseXCom.deserialize_value(stored)
        if isinstance(value, str) and "://" in value:  # a bucket is a list: a str is its path
            found[key] = value
    return found
