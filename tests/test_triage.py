"""docs/triage.md's decision table, one case per row: breaking a row fails the case named for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from leap_guide import GUIDE_EXAMPLE_TEXT, guide_example

from airflow_provider_leap.models import (
    ConnectRecord,
    UtilityConnection,
    connect_record_from_mapping,
    decode_connect_record,
)
from airflow_provider_leap.triage import (
    BUCKETS,
    REASONS,
    Reason,
    TriageResult,
    format_reason,
    split_reason,
    triage,
)

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
TWO_HOURS_AGO = "2024-06-01T10:00:00Z"
THREE_HOURS_AGO = "2024-06-01T09:00:00Z"
TEN_MINUTES_AGO = "2024-06-01T11:50:00Z"
COMMON_KEYS = ("id", "ref_id", "transmission_region", "connection_status", "last_interaction")
SDGE = "SDG&E: San Diego Gas & Electric"
PGE = "PG&E: Pacific Gas and Electric"
SCE = "SCE: Southern California Edison"


def utility(
    name: str | None = SDGE,
    status: str | None = "CONNECTED",
    *,
    required: bool | None = True,
    code: str | None = None,
) -> dict[str, Any]:
    return {
        "authorization_uuid": "910bfb80-8b22-4341-8b5b-8752a21dccad",
        "utility_name": name,
        "utility_is_required": required,
        "status": status,
        "error_code": code,
        "start_date_time_utc": THREE_HOURS_AGO,
        "last_interaction_date_time_utc": TWO_HOURS_AGO,
    }


def record(
    status: str | None = "PARTIAL",
    utilities: list[dict[str, Any]] | None = None,
    agreements: dict[str, Any] | None = None,
    *,
    last: str | None = TWO_HOURS_AGO,
    start: str | None = THREE_HOURS_AGO,
    id: str | None = "CAISO_1_Ref1",
    ref_id: str | None = "Ref1",
    region: str | None = "CAISO",
) -> dict[str, Any]:
    """A Connect record as the API sends it; arguments set to None leave the key out."""
    data: dict[str, Any] = {
        "id": id,
        "transmission_region": region,
        "ref_id": ref_id,
        "start_date_time_utc": start,
        "last_interaction_date_time_utc": last,
        "connection_status": status,
        "utility_connections": utilities if utilities is not None else [utility()],
        "agreements": agreements
        if agreements is not None
        else {"prohibited_resource_attestation_status": "NOT_REQUIRED"},
    }
    return {key: value for key, value in data.items() if value is not None}


@dataclass
class Case:
    record: Any
    bucket: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)  # the bucket-specific fields, exactly
    last_interaction: str | None = TWO_HOURS_AGO
    kwargs: dict[str, Any] = field(default_factory=dict)


PENDING_DR = {
    "prohibited_resource_attestation_status": "NOT_REQUIRED",
    "demand_response_participation_agreement_status": "PENDING",
}

CASES: dict[str, Case] = {
    # row 0: unreadable
    "row0-malformed-no-ref_id": Case(
        record(ref_id=None), "needs_review", "malformed", last_interaction=TWO_HOURS_AGO
    ),
    "row0-malformed-empty-ref_id": Case(record(ref_id=""), "needs_review", "malformed"),
    "row0-malformed-no-connection_status": Case(record(status=None), "needs_review", "malformed"),
    "row0-malformed-no-timestamp": Case(
        record(last=None, start=None), "needs_review", "malformed", last_interaction=None
    ),
    "row0-malformed-neither-timestamp-parses": Case(
        record(last="yesterday", start="2024-13-45T00:00:00Z"),
        "needs_review",
        "malformed",
        last_interaction=None,
    ),
    # Review s15b: Leap renaming or dropping the last interaction counted every customer from
    # the start; one active half an hour ago got the 7-day reminder. PARTIAL or ERROR says a
    # utility was tried, so neither is counted from its start.
    "row0-malformed-partial-without-last-interaction": Case(
        record("PARTIAL", last=None), "needs_review", "malformed", last_interaction=None
    ),
    "row0-malformed-error-with-unreadable-last-interaction": Case(
        record("ERROR", [utility(status="ERROR", code="USER_CANCELED")], last="03/10/2026 11:47"),
        "needs_review",
        "malformed",
        last_interaction=None,
    ),
    "row1-completed-without-last-interaction-counts-from-start": Case(
        record("COMPLETED", last=None), "completed", "completed", last_interaction=THREE_HOURS_AGO
    ),
    "row0-unknown-status-without-last-interaction-counts-from-start": Case(
        record("CANCELLED", last=None),
        "needs_review",
        "unknown_status:CANCELLED",
        last_interaction=THREE_HOURS_AGO,
    ),
    "row0-malformed-wrong-shape": Case(
        record(utilities=[{"status": 5}]), "needs_review", "malformed"
    ),
    # A null list is read as empty (models), so row 4 applies, not row 0.
    "row4-utility_connections-null": Case(
        {**record(), "utility_connections": None}, "needs_review", "no_utilities"
    ),
    "row3-not-started-with-null-collections": Case(
        {**record("NOT_STARTED"), "utility_connections": None, "agreements": None},
        "not_started",
        "not_started",
    ),
    # row 0: unknown connection_status, compared exactly as Leap sends it
    "row0-unknown-status": Case(record("CANCELLED"), "needs_review", "unknown_status:CANCELLED"),
    "row0-unknown-status-lower-case": Case(
        record("completed"), "needs_review", "unknown_status:completed"
    ),
    "row0-unknown-status-outranks-quiet-period": Case(
        record("CANCELLED", last=TEN_MINUTES_AGO),
        "needs_review",
        "unknown_status:CANCELLED",
        last_interaction=TEN_MINUTES_AGO,
    ),
    # row 1
    "row1-completed": Case(record("COMPLETED"), "completed", "completed"),
    "row1-completed-outranks-quiet-period": Case(
        record("COMPLETED", last=TEN_MINUTES_AGO),
        "completed",
        "completed",
        last_interaction=TEN_MINUTES_AGO,
    ),
    # row 2: quiet period
    "row2-too-recent": Case(
        record("ERROR", [utility(status="ERROR", code="USER_CANCELED")], last=TEN_MINUTES_AGO),
        "too_recent",
        "quiet_period",
        last_interaction=TEN_MINUTES_AGO,
    ),
    "row2-boundary-exactly-quiet-period-is-not-recent": Case(
        record("NOT_STARTED", last="2024-06-01T11:00:00Z"),
        "not_started",
        "not_started",
        last_interaction="2024-06-01T11:00:00Z",
    ),
    "row2-boundary-one-microsecond-inside-is-recent": Case(
        record("NOT_STARTED", last="2024-06-01T11:00:00.000001Z"),
        "too_recent",
        "quiet_period",
        last_interaction="2024-06-01T11:00:00.000001Z",
    ),
    "row2-future-counts-as-recent": Case(
        record("PARTIAL", last="2024-06-02T12:00:00Z"),
        "too_recent",
        "quiet_period",
        last_interaction="2024-06-02T12:00:00Z",
    ),
    "row2-falls-back-to-start-when-no-last-interaction": Case(
        record("NOT_STARTED", last=None, start=TEN_MINUTES_AGO),
        "too_recent",
        "quiet_period",
        last_interaction=TEN_MINUTES_AGO,
    ),
    "row2-falls-back-to-start-when-last-interaction-unparseable": Case(
        record("NOT_STARTED", last="not a time", start=THREE_HOURS_AGO),
        "not_started",
        "not_started",
        last_interaction=THREE_HOURS_AGO,
    ),
    "row2-last-interaction-preferred-over-start": Case(
        record("NOT_STARTED", last=TEN_MINUTES_AGO, start=THREE_HOURS_AGO),
        "too_recent",
        "quiet_period",
        last_interaction=TEN_MINUTES_AGO,
    ),
    "row2-offset-timestamp-normalised-to-utc": Case(
        record("NOT_STARTED", last="2024-06-01T13:30:00+02:00"),
        "too_recent",
        "quiet_period",
        last_interaction="2024-06-01T11:30:00Z",
    ),
    "row2-custom-quiet-period": Case(
        record("NOT_STARTED"),
        "too_recent",
        "quiet_period",
        kwargs={"quiet_period": timedelta(hours=3)},
    ),
    # row 3
    "row3-not-started": Case(record("NOT_STARTED", []), "not_started", "not_started"),
    # row 4
    "row4-no-utilities-partial": Case(record("PARTIAL", []), "needs_review", "no_utilities"),
    "row4-no-utilities-error": Case(record("ERROR", []), "needs_review", "no_utilities"),
    "row4-unknown-utility-status": Case(
        record("PARTIAL", [utility(status="PENDING")]),
        "needs_review",
        "unknown_utility_status:PENDING",
    ),
    "row4-unknown-utility-status-outranks-error": Case(
        record("ERROR", [utility(status="ERROR", code="X"), utility(PGE, "PENDING")]),
        "needs_review",
        "unknown_utility_status:PENDING",
    ),
    "row4-missing-utility-status": Case(
        record("PARTIAL", [utility(status=None)]), "needs_review", "unknown_utility_status:"
    ),
    "row4-unknown-status-of-a-not-required-utility-ignored": Case(
        record("PARTIAL", [utility(), utility(PGE, "WEIRD", required=False)], PENDING_DR),
        "agreements_pending",
        "agreement:demand_response_participation_agreement_status",
        {"agreements": ["demand_response_participation_agreement_status"]},
    ),
    # row 5
    "row5-utility-error": Case(
        record("ERROR", [utility(status="ERROR", code="INVALID_CREDENTIALS")]),
        "utility_error",
        "error:INVALID_CREDENTIALS",
        {"error_codes": {SDGE: "INVALID_CREDENTIALS"}, "utilities": [SDGE]},
    ),
    "row5-missing-error-code-is-UNKNOWN": Case(
        record("ERROR", [utility(status="ERROR")]),
        "utility_error",
        "error:UNKNOWN",
        {"error_codes": {SDGE: "UNKNOWN"}, "utilities": [SDGE]},
    ),
    "row5-first-code-names-the-reason": Case(
        record(
            "ERROR",
            [
                utility(SDGE, "CONNECTED"),
                utility(PGE, "ERROR", code="USER_CANCELED"),
                utility(SCE, "ERROR", code="INVALID_CREDENTIALS"),
            ],
        ),
        "utility_error",
        "error:USER_CANCELED",
        {
            "error_codes": {PGE: "USER_CANCELED", SCE: "INVALID_CREDENTIALS"},
            "utilities": [PGE, SCE],
        },
    ),
    "row5-error-outranks-not-connected-and-other-utility": Case(
        record(
            "PARTIAL",
            [
                utility(SDGE, "NOT_CONNECTED"),
                utility(PGE, "ERROR", code="USER_CANCELED"),
                utility(SCE, "CONNECTED", required=False),
            ],
        ),
        "utility_error",
        "error:USER_CANCELED",
        {"error_codes": {PGE: "USER_CANCELED"}, "utilities": [SDGE, PGE]},
    ),
    "row5-error-of-a-not-required-utility-ignored": Case(
        record("PARTIAL", [utility(), utility(PGE, "ERROR", required=False, code="X")]),
        "needs_review",
        "status_mismatch",
    ),
    # row 6
    "row6-other-utility": Case(
        record("PARTIAL", [utility(SDGE, "NOT_CONNECTED"), utility(PGE, required=False)]),
        "other_utility",
        "other_utility",
        {"utilities": [SDGE]},
    ),
    # row 7
    "row7-not-connected": Case(
        record("PARTIAL", [utility(status="NOT_CONNECTED")]),
        "utility_not_connected",
        "not_connected",
        {"utilities": [SDGE]},
    ),
    "row7-names-only-the-required-utilities-missing": Case(
        record(
            "PARTIAL",
            [
                utility(SDGE, "CONNECTED"),
                utility(PGE, "NOT_CONNECTED"),
                utility(SCE, "NOT_CONNECTED", required=False),
            ],
        ),
        "utility_not_connected",
        "not_connected",
        {"utilities": [PGE]},
    ),
    "row7-utility-without-a-name": Case(
        record("PARTIAL", [utility(None, "NOT_CONNECTED")]),
        "utility_not_connected",
        "not_connected",
        {"utilities": ["UNKNOWN"]},
    ),
    "row7-utility-with-a-blank-name": Case(  # review s11b F7: no "Finish connecting    "
        record("PARTIAL", [utility("  ", "NOT_CONNECTED")]),
        "utility_not_connected",
        "not_connected",
        {"utilities": ["UNKNOWN"]},
    ),
    # row 8
    "row8-agreements-pending": Case(
        record("PARTIAL", [utility()], PENDING_DR),
        "agreements_pending",
        "agreement:demand_response_participation_agreement_status",
        {"agreements": ["demand_response_participation_agreement_status"]},
    ),
    "row8-not-required-and-done-agreements-ignored": Case(
        record(
            "PARTIAL",
            [utility()],
            {
                "a_status": "NOT_REQUIRED",
                "b_status": "SIGNED",
                "c_status": "PENDING",
                "d_status": "COMPLETED",
                "e_status": "ACCEPTED",
                "f_status": None,
            },
        ),
        "agreements_pending",
        "agreement:c_status",
        {"agreements": ["c_status", "f_status"]},
    ),
    "row8-agreement-done-statuses-parameter": Case(
        record("PARTIAL", [utility()], {"a_status": "SIGNED", "b_status": "DONE"}),
        "agreements_pending",
        "agreement:a_status",
        {"agreements": ["a_status"]},
        kwargs={"agreement_done_statuses": frozenset({"DONE"})},
    ),
    # row 9
    "row9-status-mismatch-partial": Case(
        record("PARTIAL", [utility()], {"a_status": "NOT_REQUIRED", "b_status": "SIGNED"}),
        "needs_review",
        "status_mismatch",
    ),
    "row9-status-mismatch-error": Case(
        record("ERROR", [utility(), utility(PGE)], {}), "needs_review", "status_mismatch"
    ),
    "row9-agreement-done-statuses-parameter": Case(
        record("PARTIAL", [utility()], {"a_status": "DONE"}),
        "needs_review",
        "status_mismatch",
        kwargs={"agreement_done_statuses": {"DONE"}},
    ),
    # no utility marked required: one CONNECTED utility is enough
    "no-required-none-connected-one-in-error-row5": Case(
        record(
            "ERROR",
            [
                utility(SDGE, "NOT_CONNECTED", required=False),
                utility(PGE, "ERROR", required=False, code="USER_CANCELED"),
            ],
        ),
        "utility_error",
        "error:USER_CANCELED",
        {"error_codes": {PGE: "USER_CANCELED"}, "utilities": [SDGE, PGE], "any_one": True},
    ),
    "no-required-none-connected-none-in-error-row7": Case(
        record(
            "PARTIAL",
            [
                utility(SDGE, "NOT_CONNECTED", required=False),
                utility(PGE, "NOT_CONNECTED", required=None),
            ],
        ),
        "utility_not_connected",
        "not_connected",
        {"utilities": [SDGE, PGE], "any_one": True},
    ),
    "no-required-one-connected-never-row6-agreements": Case(
        record(
            "PARTIAL",
            [
                utility(SDGE, "NOT_CONNECTED", required=False),
                utility(PGE, "CONNECTED", required=False),
            ],
            PENDING_DR,
        ),
        "agreements_pending",
        "agreement:demand_response_participation_agreement_status",
        {"agreements": ["demand_response_participation_agreement_status"]},
    ),
    "no-required-one-connected-never-row6-mismatch": Case(
        record(
            "PARTIAL",
            [
                utility(SDGE, "ERROR", required=False, code="X"),
                utility(PGE, "CONNECTED", required=False),
            ],
        ),
        "needs_review",
        "status_mismatch",
    ),
    "no-required-unknown-status-when-none-connected": Case(
        record("PARTIAL", [utility(SDGE, "PENDING", required=False)]),
        "needs_review",
        "unknown_utility_status:PENDING",
    ),
}


def only_item(result: TriageResult) -> tuple[str, dict[str, Any]]:
    placed = [(name, item) for name, items in result.buckets.items() for item in items]
    assert len(placed) == 1, placed
    return placed[0]


def assert_case(case: Case, data: Any) -> None:
    result = triage([data], now=NOW, **case.kwargs)
    bucket, item = only_item(result)
    assert (bucket, item["reason"]) == (case.bucket, case.reason)
    assert {k: v for k, v in item.items() if k not in (*COMMON_KEYS, "reason")} == case.details
    assert item["last_interaction"] == case.last_interaction
    source = case.record
    for key, source_key in (
        ("id", "id"),
        ("ref_id", "ref_id"),
        ("transmission_region", "transmission_region"),
        ("connection_status", "connection_status"),
    ):
        expected = source.get(source_key)
        assert item[key] == (expected if isinstance(expected, str) else None)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_table_row_from_mapping(case: Case) -> None:
    assert_case(case, case.record)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_table_row_from_typed_record(case: Case) -> None:
    assert_case(case, decode_connect_record(json.dumps(case.record).encode()))


def test_every_bucket_and_fixed_reason_has_a_case() -> None:
    assert {case.bucket for case in CASES.values()} == set(BUCKETS)
    reasons = {split_reason(case.reason)[0] for case in CASES.values()}
    assert reasons == REASONS


@pytest.mark.parametrize("typed", [False, True], ids=["mapping", "typed"])
def test_guide_example_is_a_utility_error(typed: bool) -> None:
    data: Any = guide_example()
    if typed:
        data = decode_connect_record(GUIDE_EXAMPLE_TEXT.encode())
    result = triage([data], now=datetime(2023, 1, 11, 12, tzinfo=timezone.utc))
    assert result.buckets["utility_error"] == [
        {
            "id": "CAISO_62631455-9dfd-433b-9482-fd043f2336d4_Test1012",
            "ref_id": "Test1012",
            "transmission_region": "CAISO",
            "connection_status": "ERROR",
            "last_interaction": "2023-01-11T02:45:50Z",
            "reason": "error:USER_CANCELED",
            "error_codes": {"SDG&E: San Diego Gas & Electric": "USER_CANCELED"},
            "utilities": ["SDG&E: San Diego Gas & Electric"],
        }
    ]


# --- duplicates -------------------------------------------------------------------------------


@pytest.mark.parametrize("newest_first", [False, True], ids=["newest-last", "newest-first"])
def test_duplicates_keep_the_latest_last_interaction(newest_first: bool) -> None:
    older = record("NOT_STARTED", last=THREE_HOURS_AGO)
    newer = record("PARTIAL", [utility(status="NOT_CONNECTED")], last=TWO_HOURS_AGO)
    records = [newer, older] if newest_first else [older, newer]
    result = triage(records, now=NOW)
    assert result.buckets["not_started"] == []
    (item,) = result.buckets["utility_not_connected"]
    assert item["last_interaction"] == TWO_HOURS_AGO
    assert result.summary["duplicates_dropped"] == 1
    assert result.summary["records_read"] == 2
    assert sum(result.summary["counts"].values()) == 1


def test_duplicate_tie_keeps_the_copy_fetched_later() -> None:
    first = record("NOT_STARTED")
    second = record("PARTIAL", [utility(status="NOT_CONNECTED")])
    result = triage([first, second], now=NOW)
    assert [item["reason"] for b in BUCKETS for item in result.buckets[b]] == ["not_connected"]


def test_duplicate_same_bucket_replaced_in_place() -> None:
    records = [
        record("NOT_STARTED", id="a", last=THREE_HOURS_AGO),
        record("NOT_STARTED", id="b"),
        record("NOT_STARTED", id="a", last=TWO_HOURS_AGO),
        record("NOT_STARTED", id="a", last="2024-06-01T08:00:00Z"),
    ]
    result = triage(records, now=NOW)
    assert [(i["id"], i["last_interaction"]) for i in result.buckets["not_started"]] == [
        ("b", TWO_HOURS_AGO),
        ("a", TWO_HOURS_AGO),
    ]
    assert result.summary["duplicates_dropped"] == 2


def test_duplicate_without_a_readable_time_never_wins() -> None:
    good = record("NOT_STARTED")
    unreadable = record("NOT_STARTED", last=None, start=None)
    for records in ([good, unreadable], [unreadable, good]):
        result = triage(records, now=NOW)
        assert len(result.buckets["not_started"]) == 1
        assert result.buckets["needs_review"] == []
        assert result.summary["malformed"] == 0
        assert result.summary["duplicates_dropped"] == 1


def test_records_without_an_id_are_never_duplicates() -> None:
    records = [record("NOT_STARTED", id=None), record("NOT_STARTED", id=None)]
    records.append({**record("NOT_STARTED"), "id": ""})
    records.append({**record("NOT_STARTED"), "id": ""})
    result = triage(records, now=NOW)
    assert len(result.buckets["not_started"]) == 4
    assert result.summary["duplicates_dropped"] == 0


def test_same_ref_id_in_two_regions_is_two_items() -> None:
    caiso = record("NOT_STARTED", id="CAISO_x_Ref1", region="CAISO")
    ercot = record("NOT_STARTED", id="ERCOT_y_Ref1", region="ERCOT")
    result = triage([caiso, ercot], now=NOW)
    items = result.buckets["not_started"]
    assert [(i["ref_id"], i["transmission_region"]) for i in items] == [
        ("Ref1", "CAISO"),
        ("Ref1", "ERCOT"),
    ]
    assert result.summary["duplicates_dropped"] == 0


# --- inputs -----------------------------------------------------------------------------------


def all_case_records() -> list[dict[str, Any]]:
    """Every case's record under its own id (only default-argument cases)."""
    return [
        {**case.record, "id": f"id-{n}"} for n, case in enumerate(CASES.values()) if not case.kwargs
    ]


def test_mappings_and_typed_records_give_identical_results() -> None:
    mappings = all_case_records()
    typed = [decode_connect_record(json.dumps(m).encode()) for m in mappings]
    built = [connect_record_from_mapping(m) for m in mappings]
    mixed = [t if n % 2 else m for n, (m, t) in enumerate(zip(mappings, typed, strict=True))]
    expected = triage(mappings, now=NOW)
    for other in (typed, built, mixed):
        assert triage(other, now=NOW) == expected


def test_hand_built_records_are_triaged_like_decoded_ones() -> None:
    built = ConnectRecord(
        id="a",
        ref_id="Ref1",
        connection_status="PARTIAL",
        last_interaction_date_time_utc=TWO_HOURS_AGO,
        utility_connections=(UtilityConnection(utility_name=SDGE, utility_is_required=True),),
    )
    # status None on the required utility: row 4
    (item,) = triage([built], now=NOW).buckets["needs_review"]
    assert item["reason"] == "unknown_utility_status:"
    connected = msgspec.structs.replace(
        built,
        utility_connections=(
            UtilityConnection(utility_name=SDGE, utility_is_required=True, status="CONNECTED"),
        ),
        agreements={"x_status": "PENDING"},
    )
    (item,) = triage([connected], now=NOW).buckets["agreements_pending"]
    assert item["agreements"] == ["x_status"]


def test_anything_else_is_malformed_and_does_not_stop_the_others() -> None:
    bad_typed = ConnectRecord(
        id="bad",
        ref_id="Ref1",
        connection_status="PARTIAL",
        last_interaction_date_time_utc=TWO_HOURS_AGO,
        utility_connections=[{"status": "CONNECTED"}],  # type: ignore[arg-type]
    )
    wrong_types = ConnectRecord(id=["x"], ref_id="R", connection_status="NOT_STARTED")  # type: ignore[arg-type]
    garbage: list[Any] = [
        None,
        42,
        "CAISO_1_Ref1",
        b"{}",
        ["a"],
        {"ref_id": {"nested": True}},
        {"id": "x", "ref_id": "R", "connection_status": "PARTIAL", "odd": object()},
        bad_typed,
        wrong_types,
    ]
    good = record("NOT_STARTED", id="good")
    result = triage([*garbage, good], now=NOW)
    assert [i["id"] for i in result.buckets["not_started"]] == ["good"]
    reviews = result.buckets["needs_review"]
    assert [i["reason"] for i in reviews] == ["malformed"] * len(garbage)
    assert [i["id"] for i in reviews] == [None] * 6 + ["x", "bad", None]
    assert result.summary["malformed"] == len(garbage)
    assert result.summary["records_read"] == len(garbage) + 1
    json.dumps(result.to_dict())


def test_input_is_consumed_once_as_a_stream() -> None:
    pulled: list[int] = []

    def pages() -> Iterator[dict[str, Any]]:
        for n in range(3):
            pulled.append(n)
            yield record("NOT_STARTED", id=f"id-{n}")

    result = triage(pages(), now=NOW)
    assert pulled == [0, 1, 2]
    assert result.summary["records_read"] == 3


def test_an_error_raised_by_the_input_propagates() -> None:
    def failing() -> Iterator[dict[str, Any]]:
        yield record("NOT_STARTED")
        raise RuntimeError("page fetch failed")

    with pytest.raises(RuntimeError, match="page fetch failed"):
        triage(failing(), now=NOW)


# --- result shape -----------------------------------------------------------------------------


def test_all_buckets_present_when_empty() -> None:
    result = triage([], now=NOW)
    assert list(result.buckets) == list(BUCKETS)
    assert all(items == [] for items in result.buckets.values())
    assert result.summary == {
        "counts": dict.fromkeys(BUCKETS, 0),
        "records_read": 0,
        "duplicates_dropped": 0,
        "malformed": 0,
        "now": "2024-06-01T12:00:00Z",
        "quiet_period_seconds": 3600.0,
    }


def test_summary_totals() -> None:
    records: list[Any] = all_case_records()
    records += [records[0], records[1], "garbage"]
    result = triage(records, now=NOW, quiet_period=timedelta(minutes=90))
    summary = result.summary
    assert summary["records_read"] == len(records)
    assert summary["duplicates_dropped"] == 2
    assert summary["counts"] == {name: len(items) for name, items in result.buckets.items()}
    assert sum(summary["counts"].values()) + 2 == len(records)
    malformed = [i for i in result.buckets["needs_review"] if i["reason"] == "malformed"]
    assert summary["malformed"] == len(malformed)
    assert summary["quiet_period_seconds"] == 5400.0
    assert summary["now"] == "2024-06-01T12:00:00Z"


def test_items_are_json_serialisable_and_small() -> None:
    result = triage(all_case_records(), now=NOW)
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()
    for items in result.buckets.values():
        for item in items:
            assert set(COMMON_KEYS) | {"reason"} <= set(item)
            assert len(json.dumps(item)) < 400
            for key in ("error_codes", "utilities", "agreements"):
                assert item.get(key, "absent") != []


def test_keys_and_reasons_are_plain_strings() -> None:
    result = triage(all_case_records(), now=NOW)
    assert all(type(name) is str for name in result.buckets)
    for items in result.buckets.values():
        assert all(type(item["reason"]) is str for item in items)


# --- arguments --------------------------------------------------------------------------------


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="aware"):
        triage([], now=datetime(2024, 6, 1, 12))


def test_now_must_be_a_datetime() -> None:
    with pytest.raises(TypeError, match="datetime"):
        triage([], now="2024-06-01T12:00:00Z")  # type: ignore[arg-type]


def test_now_in_another_zone_is_the_same_instant() -> None:
    paris = timezone(timedelta(hours=2))
    records = all_case_records()
    local = triage(records, now=NOW.astimezone(paris))
    assert local == triage(records, now=NOW)
    assert local.summary["now"] == "2024-06-01T12:00:00Z"


def test_pendulum_now_is_accepted() -> None:
    pendulum = pytest.importorskip("pendulum")
    now = pendulum.datetime(2024, 6, 1, 14, tz="Europe/Paris")
    assert triage(all_case_records(), now=now) == triage(all_case_records(), now=NOW)


def test_negative_quiet_period_is_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        triage([], now=NOW, quiet_period=timedelta(seconds=-1))


def test_huge_quiet_period_makes_everything_recent() -> None:
    result = triage(
        [record("NOT_STARTED", last="0001-01-01T00:00:00Z")],
        now=NOW,
        quiet_period=timedelta(days=999_999_999),
    )
    assert [i["reason"] for i in result.buckets["too_recent"]] == ["quiet_period"]


def test_single_string_agreement_done_statuses_is_rejected() -> None:
    with pytest.raises(TypeError, match="collection"):
        triage([], now=NOW, agreement_done_statuses="SIGNED")


def test_timestamp_forms() -> None:
    forms = {
        "2024-06-01T10:00:00Z": "2024-06-01T10:00:00Z",
        "2024-06-01T10:00:00.250Z": "2024-06-01T10:00:00.250Z",
        "2024-06-01T10:00:00z": "2024-06-01T10:00:00Z",
        "2024-06-01T10:00:00+00:00": "2024-06-01T10:00:00Z",
        "2024-06-01T12:00:00+02:00": "2024-06-01T10:00:00Z",
        "2024-06-01T10:00:00": "2024-06-01T10:00:00Z",  # no zone: UTC, as models assumes
    }
    for text, expected in forms.items():
        (item,) = triage([record("NOT_STARTED", last=text)], now=NOW).buckets["not_started"]
        assert item["last_interaction"] == expected, text
    # No UTC equivalent: unreadable, so the start is used.
    (item,) = triage([record("NOT_STARTED", last="0001-01-01T00:00:00+01:00")], now=NOW).buckets[
        "not_started"
    ]
    assert item["last_interaction"] == THREE_HOURS_AGO


# --- reasons ----------------------------------------------------------------------------------


def test_reason_helpers() -> None:
    assert format_reason(Reason.ERROR, "USER_CANCELED") == "error:USER_CANCELED"
    assert format_reason(Reason.UNKNOWN_UTILITY_STATUS, None) == "unknown_utility_status:"
    assert split_reason("error:A:B") == (Reason.ERROR, "A:B")
    assert split_reason("completed") == (Reason.COMPLETED, None)
    with pytest.raises(ValueError):
        format_reason(Reason.COMPLETED, "x")
    with pytest.raises(ValueError):
        split_reason("nonsense:1")
    with pytest.raises(ValueError):
        split_reason("completed:x")
