"""Triage page: the pure ``triage`` function, without Airflow or HTTP."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow_provider_leap.testing import GUIDE_EXAMPLE_RECORD
from airflow_provider_leap.triage import BUCKETS, Reason, TriageResult, split_reason, triage

# --8<-- [start:function]
# The example record of Leap's guide (an ERROR on its one required utility, USER_CANCELED), as
# `airflow_provider_leap.testing.GUIDE_EXAMPLE_RECORD` ships it: a mapping as the API returns it.
RECORD = GUIDE_EXAMPLE_RECORD


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
