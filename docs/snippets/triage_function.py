"""Triage page: the pure ``triage`` function, without Airflow or HTTP."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow_provider_leap.triage import BUCKETS, Reason, TriageResult, split_reason, triage

# --8<-- [start:function]
# The example record of Leap's guide: an ERROR on the one required utility.
RECORD = {
    "id": "CAISO_62631455-9dfd-433b-9482-fd043f2336d4_Test1012",
    "transmission_region": "CAISO",
    "ref_id": "Test1012",
    "start_date_time_utc": "2023-01-11T02:44:57Z",
    "last_interaction_date_time_utc": "2023-01-11T02:45:50Z",
    "connection_status": "ERROR",
    "utility_connections": [
        {
            "authorization_uuid": "910bfb80-8b22-4341-8b5b-8752a21dccad",
            "utility_name": "SDG&E: San Diego Gas & Electric",
            "utility_is_required": True,
            "status": "ERROR",
            "error_code": "USER_CANCELED",
            "start_date_time_utc": "2023-01-11T02:44:57Z",
            "last_interaction_date_time_utc": "2023-01-11T02:45:50Z",
        }
    ],
    "agreements": {
        "prohibited_resource_attestation_status": "NOT_REQUIRED",
        "demand_response_participation_agreement_status": "NOT_REQUIRED",
    },
}


def sort_one_record() -> TriageResult:
    # `now` is required: triage never reads the clock, so the same input gives the same buckets.
    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    result = triage([RECORD], now=now, quiet_period=timedelta(hours=1))

    assert set(result.buckets) == set(BUCKETS)  # every bucket is present, most are empty
    (item,) = result.buckets["utility_error"]
    assert item["reason"] == "error:USER_CANCELED"
    assert item["error_codes"] == {"SDG&E: San Diego Gas & Electric": "USER_CANCELED"}
    assert split_reason(item["reason"]) == (Reason.ERROR, "USER_CANCELED")
    assert result.summary["counts"]["utility_error"] == 1

    # Ten minutes after the last interaction, the same record is too recent to act on.
    just_now = datetime(2023, 1, 11, 2, 55, 50, tzinfo=timezone.utc)
    assert triage([RECORD], now=just_now).buckets["too_recent"][0]["reason"] == "quiet_period"
    return result


# --8<-- [end:function]
