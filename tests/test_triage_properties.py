"""Properties of triage over generated records, valid-ish and garbage alike."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_triage import CASES

from airflow_provider_leap.models import connect_record_from_mapping
from airflow_provider_leap.triage import BUCKETS, Reason, TriageResult, split_reason, triage

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
SETTINGS = settings(max_examples=200, deadline=None)

# Which reasons each bucket may carry, from the decision table's own cases: a record in the
# wrong bucket for its reason is a bug.
REASONS_BY_BUCKET: dict[str, set[str]] = {}
for case in CASES.values():
    REASONS_BY_BUCKET.setdefault(case.bucket, set()).add(split_reason(case.reason)[0])
DETAIL_KEYS_BY_BUCKET = {
    "utility_error": {"error_codes", "utilities"},
    "utility_not_connected": {"utilities"},
    "other_utility": {"utilities"},
    "agreements_pending": {"agreements"},
}
COMMON_KEYS = {"id", "ref_id", "transmission_region", "connection_status", "last_interaction"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


# Values of the wrong type for any field (cheaper to draw than json_values, as varied for us).
wrong_types = st.sampled_from([0, -1, 1.5, True, False, "", [], {}, ["x"], {"k": "v"}, [None]])


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the strategy, sometimes a value of the wrong type."""
    return st.one_of(strategy, strategy, strategy, wrong_types)


timestamps = st.one_of(
    st.datetimes(  # around NOW, in Leap's form
        min_value=datetime(2024, 5, 31),
        max_value=datetime(2024, 6, 2),
        timezones=st.just(timezone.utc),
    ).map(lambda d: d.isoformat().replace("+00:00", "Z")),
    st.datetimes(  # any year, other zones: includes times with no UTC equivalent
        timezones=st.sampled_from([timezone(timedelta(hours=5)), timezone(timedelta(hours=-8))])
    ).map(datetime.isoformat),
    st.sampled_from(["2024-06-01T11:00:00Z", "2024-06-01T11:00:00.000001Z", "", "yesterday"]),
    st.text(max_size=12),
)
statuses = st.sampled_from(["COMPLETED", "NOT_STARTED", "PARTIAL", "ERROR", "CANCELLED", "partial"])
utility_statuses = st.sampled_from(["CONNECTED", "NOT_CONNECTED", "ERROR", "PENDING"])
names = st.sampled_from(["SDG&E: San Diego Gas & Electric", "PG&E", "SCE", ""])
agreement_values = st.sampled_from(["NOT_REQUIRED", "SIGNED", "COMPLETED", "ACCEPTED", "PENDING"])


def optional_keys(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict where every key may be missing, null or (sometimes) of the wrong type."""
    return st.fixed_dictionaries(
        {}, optional={key: st.none() | maybe(value) for key, value in fields.items()}
    )


utilities = optional_keys(
    authorization_uuid=st.uuids().map(str),
    utility_name=names,
    utility_is_required=st.booleans(),
    status=utility_statuses,
    error_code=st.sampled_from(["USER_CANCELED", "INVALID_CREDENTIALS", ""]),
    start_date_time_utc=timestamps,
    last_interaction_date_time_utc=timestamps,
)


def records(ids: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return optional_keys(
        id=ids,
        transmission_region=st.sampled_from(["CAISO", "ERCOT", "PJM"]),
        ref_id=st.sampled_from(["Ref1", "Ref2", "Test1012", ""]),
        start_date_time_utc=timestamps,
        last_interaction_date_time_utc=timestamps,
        connection_status=statuses,
        utility_connections=st.lists(utilities, max_size=3),
        agreements=st.dictionaries(st.sampled_from(["a_status", "b_status"]), agreement_values),
    )


few_ids = st.sampled_from(["CAISO_1", "CAISO_2", "ERCOT_1", ""])
any_input = st.one_of(
    records(few_ids),
    records(few_ids).map(connect_record_from_mapping),  # typed records mixed in
    json_values,  # not a record at all
)
quiet_periods = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3))


def placed(result: TriageResult) -> list[tuple[str, dict[str, Any]]]:
    return [(name, item) for name, items in result.buckets.items() for item in items]


@SETTINGS
@given(st.lists(any_input, max_size=12), quiet_periods)
def test_every_record_lands_in_exactly_one_bucket(inputs: list[Any], quiet: timedelta) -> None:
    result = triage(iter(inputs), now=NOW, quiet_period=quiet)  # never crashes
    summary = result.summary
    assert tuple(result.buckets) == BUCKETS
    assert summary["records_read"] == len(inputs)
    assert sum(summary["counts"].values()) + summary["duplicates_dropped"] == len(inputs)
    assert summary["counts"] == {name: len(items) for name, items in result.buckets.items()}
    ids = [item["id"] for _, item in placed(result) if item["id"]]
    assert len(ids) == len(set(ids))  # duplicates collapsed to one item
    malformed = [item for _, item in placed(result) if item["reason"] == Reason.MALFORMED]
    assert summary["malformed"] == len(malformed)
    json.dumps(result.to_dict())


@SETTINGS
@given(st.lists(any_input, max_size=12))
def test_items_have_the_common_keys_and_a_reason_matching_their_bucket(inputs: list[Any]) -> None:
    for bucket, item in placed(triage(inputs, now=NOW)):
        assert COMMON_KEYS | {"reason"} <= set(item)
        assert set(item) - COMMON_KEYS - {"reason"} == DETAIL_KEYS_BY_BUCKET.get(bucket, set())
        assert split_reason(item["reason"])[0] in REASONS_BY_BUCKET[bucket]
        last = item["last_interaction"]
        assert last is None or (last.endswith("Z") and parse(last) is not None)


@SETTINGS
@given(
    st.lists(records(st.just("")), max_size=12).map(
        lambda rs: [{**r, "id": f"id-{n}"} for n, r in enumerate(rs)]
    ),
    st.randoms(use_true_random=False),
)
def test_input_order_does_not_change_the_outcome(inputs: list[dict[str, Any]], random: Any) -> None:
    shuffled = list(inputs)
    random.shuffle(shuffled)

    def by_id(result: TriageResult) -> dict[str, tuple[str, dict[str, Any]]]:
        return {item["id"]: (bucket, item) for bucket, item in placed(result)}

    first, second = triage(inputs, now=NOW), triage(shuffled, now=NOW)
    assert by_id(first) == by_id(second)
    assert first.summary == second.summary


@SETTINGS
@given(st.lists(records(few_ids), max_size=12))
def test_mappings_and_typed_records_agree(inputs: list[dict[str, Any]]) -> None:
    typed = [connect_record_from_mapping(r) for r in inputs]
    assert triage(typed, now=NOW) == triage(inputs, now=NOW)


def alone(record: dict[str, Any]) -> datetime | None:
    """The last interaction triage reads from this record on its own."""
    ((_, item),) = placed(triage([record], now=NOW))
    return parse(item["last_interaction"])


def parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text[:-1] + "+00:00")


@SETTINGS
@given(st.lists(records(few_ids), min_size=1, max_size=12))
def test_the_kept_duplicate_has_the_latest_time(inputs: list[dict[str, Any]]) -> None:
    for _, item in placed(triage(inputs, now=NOW)):
        if not item["id"]:
            continue
        copies = [alone(r) for r in inputs if r.get("id") == item["id"]]
        readable = [when for when in copies if when is not None]
        assert parse(item["last_interaction"]) == (max(readable) if readable else None)
