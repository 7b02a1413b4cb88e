"""Record parsing: the guide's example verbatim, unknown values, malformed shapes."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from leap_guide import GUIDE_EXAMPLE_TEXT, GUIDE_PATH, guide_example

from airflow_provider_leap.models import (
    ConnectionStatus,
    TransmissionRegion,
    UtilityStatus,
    connect_record_from_mapping,
    decode_connect_record,
    record_region,
)


def test_guide_example_is_the_guides_text() -> None:
    if not GUIDE_PATH.exists():
        pytest.skip("shared/leap is not beside this checkout")
    assert GUIDE_EXAMPLE_TEXT in GUIDE_PATH.read_text(encoding="utf-8")


def test_guide_example_parses_verbatim() -> None:
    record = decode_connect_record(GUIDE_EXAMPLE_TEXT.encode())
    assert record.parse_error is None
    assert record.id == "CAISO_62631455-9dfd-433b-9482-fd043f2336d4_Test1012"
    assert record.ref_id == "Test1012"
    assert record.transmission_region == "CAISO"
    assert record.connection_status == ConnectionStatus.ERROR
    (utility,) = record.utility_connections
    assert utility.utility_name == "SDG&E: San Diego Gas & Electric"
    assert utility.utility_is_required is True
    assert utility.status == UtilityStatus.ERROR
    assert utility.error_code == "USER_CANCELED"
    assert utility.authorization_uuid == "910bfb80-8b22-4341-8b5b-8752a21dccad"
    assert record.agreements == {
        "prohibited_resource_attestation_status": "NOT_REQUIRED",
        "demand_response_participation_agreement_status": "NOT_REQUIRED",
    }
    assert record.last_interaction == datetime(2023, 1, 11, 2, 45, 50, tzinfo=timezone.utc)
    assert record.raw == guide_example()


def test_records_are_immutable() -> None:
    record = decode_connect_record(GUIDE_EXAMPLE_TEXT.encode())
    with pytest.raises(AttributeError):
        record.connection_status = "COMPLETED"  # type: ignore[misc]


def test_unknown_values_and_fields_flow_through_as_data() -> None:
    data = guide_example()
    data["connection_status"] = "PAUSED_BY_LEAP"
    data["utility_connections"][0]["status"] = "VERIFYING"
    data["utility_connections"][0]["error_code"] = "BRAND_NEW_CODE"
    data["agreements"]["new_form_status"] = {"state": "PENDING", "version": 2}
    data["loyalty_tier"] = "gold"
    record = connect_record_from_mapping(data)
    assert record.parse_error is None
    assert record.connection_status == "PAUSED_BY_LEAP"
    assert record.utility_connections[0].status == "VERIFYING"
    assert record.utility_connections[0].error_code == "BRAND_NEW_CODE"
    assert record.agreements["new_form_status"] == {"state": "PENDING", "version": 2}
    assert record.raw["loyalty_tier"] == "gold"


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "x", "ref_id": 5, "connection_status": "ERROR"}',
        b'{"id": "x", "ref_id": "abc", "utility_connections": "none"}',
        b'{"id": "x", "ref_id": "abc", "agreements": []}',
        b"[1, 2]",
        b'"just a string"',
    ],
)
def test_malformed_record_is_reported_not_raised(body: bytes) -> None:
    record = decode_connect_record(body)
    assert record.parse_error
    assert record.raw is not None


def test_malformed_record_keeps_what_is_readable() -> None:
    record = decode_connect_record(b'{"id": "x", "ref_id": "abc", "utility_connections": 3}')
    assert (record.id, record.ref_id) == ("x", "abc")
    assert "utility_connections" in (record.parse_error or "")


def test_parse_error_names_what_is_wrong_not_a_null_read_as_empty() -> None:
    body = b'{"id": "a", "ref_id": "abc", "utility_connections": null, "connection_status": 5}'
    record = decode_connect_record(body)
    assert "connection_status" in (record.parse_error or "")
    assert "utility_connections" not in (record.parse_error or "")


def test_last_interaction_falls_back_to_start() -> None:
    record = connect_record_from_mapping(
        {
            "id": "a",
            "start_date_time_utc": "2023-01-11T02:44:57Z",
            "last_interaction_date_time_utc": "bad",
        }
    )
    assert record.last_interaction == datetime(2023, 1, 11, 2, 44, 57, tzinfo=timezone.utc)


def test_null_collections_read_as_empty() -> None:
    body = (
        b'{"id": "x", "ref_id": "abc", "connection_status": "NOT_STARTED",'
        b' "utility_connections": null, "agreements": null}'
    )
    record = decode_connect_record(body)
    assert record.parse_error is None
    assert (record.utility_connections, record.agreements) == ((), {})
    assert record.raw["utility_connections"] is None  # the source stays as sent


def test_null_collection_next_to_a_real_error_stays_malformed() -> None:
    record = decode_connect_record(b'{"id": "x", "ref_id": 7, "utility_connections": null}')
    assert record.parse_error and "ref_id" in record.parse_error


UUID = "62631455-9dfd-433b-9482-fd043f2336d4"


@pytest.mark.parametrize(
    ("record", "region"),
    [
        ({"transmission_region": "PJM", "id": f"CAISO_{UUID}_r1", "ref_id": "r1"}, "PJM"),
        ({"transmission_region": "NEW_GRID", "id": None}, "NEW_GRID"),  # unknown is data
        # null (or empty, or mistyped): the region Leap's id starts with
        (
            {"transmission_region": None, "id": f"CAISO_{UUID}_Test1012", "ref_id": "Test1012"},
            "CAISO",
        ),
        ({"transmission_region": "", "id": f"WECC_PC_{UUID}_a_b_c", "ref_id": "a_b_c"}, "WECC_PC"),
        ({"transmission_region": 7, "id": f"ISONE_{UUID.upper()}_+1-555"}, "ISONE"),
        ({"id": f"SERC_{UUID}_x_{UUID}_y", "ref_id": f"x_{UUID}_y"}, "SERC"),
        # no region anyone can know: not one Leap lists, not Leap's shape, another customer's id
        ({"transmission_region": None, "id": f"MARS_{UUID}_r1", "ref_id": "r1"}, None),
        ({"transmission_region": None, "id": f"WECC_{UUID}_r1", "ref_id": "r1"}, None),
        ({"transmission_region": None, "id": "CAISO_r1", "ref_id": "r1"}, None),
        ({"transmission_region": None, "id": f"CAISO_{UUID}_r2", "ref_id": "r1"}, None),
        ({"transmission_region": None, "id": None, "ref_id": "r1"}, None),
        ({}, None),
    ],
)
def test_the_region_of_a_record_is_its_own_else_the_one_its_id_names(
    record: dict[str, object], region: str | None
) -> None:
    assert record_region(record) == region


def test_every_region_leap_lists_is_read_back_from_an_id() -> None:
    for region in TransmissionRegion:
        record = {"transmission_region": None, "id": f"{region.value}_{UUID}_r1", "ref_id": "r1"}
        assert record_region(record) == region.value
