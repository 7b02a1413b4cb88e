"""Hook page: LeapHook from a task or any Python code running with Airflow connections."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

from airflow_provider_leap.hooks.leap import LeapException, LeapHook
from airflow_provider_leap.models import ConnectionStatus


# --8<-- [start:stream]
def statuses_last_week(conn_id: str = "leap_default") -> Counter[str]:
    """Count connection statuses; records stream in page by page, never all in memory."""
    hook = LeapHook(leap_conn_id=conn_id)
    since = datetime.now(timezone.utc) - timedelta(days=7)
    counts: Counter[str] = Counter()
    for record in hook.iter_connect_records(interacted_after=since):
        if record.parse_error is not None:  # did not fit the documented shape
            counts["unreadable"] += 1
            continue
        counts[str(record.connection_status)] += 1  # unknown statuses arrive as plain strings
    return counts


# --8<-- [end:stream]


# --8<-- [start:records]
def completed_ref_ids(ref_ids: list[str], conn_id: str = "leap_default") -> dict[str, str]:
    """Reference ID -> last interaction, for the given IDs that are COMPLETED."""
    hook = LeapHook(leap_conn_id=conn_id)
    done: dict[str, str] = {}
    for record in hook.get_connect_records(ref_ids=ref_ids):  # a list: fine for a few IDs
        if record.connection_status == ConnectionStatus.COMPLETED:
            done[str(record.ref_id)] = str(record.last_interaction_date_time_utc)
        extra = set(record.raw) - {"id", "ref_id", "utility_connections", "agreements"}
        print(record.ref_id, record.last_interaction, sorted(extra))
    return done


# --8<-- [end:records]


# --8<-- [start:meters]
def meters_since(ref_ids: list[str], since: datetime, conn_id: str = "leap_default") -> list[str]:
    """Meter IDs created since ``since`` for these Reference IDs (100 IDs per request)."""
    hook = LeapHook(leap_conn_id=conn_id)
    meters = hook.search_meters(connection_reference_ids=ref_ids, created_after=since)
    return [str(meter.meter_id) for meter in meters]


# --8<-- [end:meters]


# --8<-- [start:errors]
def can_read_connections(conn_id: str = "leap_default") -> bool:
    """False (and why) when Leap refuses the key; other failures still fail the task."""
    try:
        LeapHook(leap_conn_id=conn_id).get_connect_records(ref_ids=["Test1012"])
    except LeapException as exc:
        if exc.status in (401, 403):
            print(f"Leap refused the API key (HTTP {exc.status}): {exc.title}")
            return False
        raise
    return True


# --8<-- [end:errors]
