"""The one-rule modules: timestamps (timeutil), Reference IDs and rendered arguments (refids)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from airflow_provider_leap.errors import LeapConfigError
from airflow_provider_leap.refids import (
    is_valid_ref_id,
    ref_ids_argument,
    rendered_list,
    validate_ref_ids,
)
from airflow_provider_leap.timeutil import as_utc, format_timestamp, parse_timestamp
from airflow_provider_leap.watch import statuses_argument

UTC = timezone.utc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-01-11T02:44:57Z", datetime(2023, 1, 11, 2, 44, 57, tzinfo=UTC)),
        ("2024-10-21T11:43:05.892Z", datetime(2024, 10, 21, 11, 43, 5, 892000, tzinfo=UTC)),
        ("2024-10-21T13:43:05+02:00", datetime(2024, 10, 21, 11, 43, 5, tzinfo=UTC)),
        ("2024-10-21T11:43:05", datetime(2024, 10, 21, 11, 43, 5, tzinfo=UTC)),
        ("2024-10-21T11:43:05z", datetime(2024, 10, 21, 11, 43, 5, tzinfo=UTC)),
        # Python 3.10's fromisoformat reads none of these; Leap's and users' times may be so
        ("2026-02-01T00:00:00.5Z", datetime(2026, 2, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        ("2024-10-21T11:43:05.1234567Z", datetime(2024, 10, 21, 11, 43, 5, 123456, tzinfo=UTC)),
        ("2024-10-21T13:43:05.25+0200", datetime(2024, 10, 21, 11, 43, 5, 250000, tzinfo=UTC)),
        ("0001-01-01T00:00:00+01:00", None),
        ("yesterday", None),
        ("", None),
        (None, None),
        (12345, None),
    ],
)
def test_parse_timestamp(text: object, expected: datetime | None) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    ("when", "source", "expected"),
    [
        (datetime(2026, 11, 1, 8, tzinfo=UTC), None, "2026-11-01T08:00:00Z"),
        (datetime(2026, 11, 1, 8, 0, 0, 250000, tzinfo=UTC), None, "2026-11-01T08:00:00.250Z"),
        (datetime(2026, 11, 1, 8, 0, 0, 250001, tzinfo=UTC), None, "2026-11-01T08:00:00.250001Z"),
        (
            datetime(2026, 11, 1, 10, tzinfo=timezone(timedelta(hours=2))),
            None,
            "2026-11-01T08:00:00Z",
        ),
        # One text per instant (a stall's identity): a source is reused only when it is that text.
        (datetime(2026, 11, 1, 8, tzinfo=UTC), "2026-11-01T08:00:00.000Z", "2026-11-01T08:00:00Z"),
        (
            datetime(2026, 11, 1, 8, 0, 0, 892000, tzinfo=UTC),
            "2026-11-01T08:00:00.892Z",
            "2026-11-01T08:00:00.892Z",
        ),
        (
            datetime(2026, 11, 1, 8, 0, 0, 800000, tzinfo=UTC),
            "2026-11-01T08:00:00.8Z",
            "2026-11-01T08:00:00.800Z",
        ),
        (datetime(2026, 11, 1, 8, tzinfo=UTC), "2026-11-01T10:00:00+02:00", "2026-11-01T08:00:00Z"),
    ],
)
def test_format_timestamp(when: datetime, source: str | None, expected: str) -> None:
    assert format_timestamp(when, source) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        (" 2026-11-01 10:00:00+02:00 ", datetime(2026, 11, 1, 8, tzinfo=UTC)),
        (date(2026, 11, 1), datetime(2026, 11, 1, tzinfo=UTC)),
        (datetime(2026, 11, 1, 8), datetime(2026, 11, 1, 8, tzinfo=UTC)),
    ],
)
def test_arguments_become_utc(value: object, expected: datetime) -> None:
    assert as_utc(value, "x") == expected  # type: ignore[arg-type]


def test_an_unreadable_time_argument_is_named() -> None:
    with pytest.raises(ValueError, match="interacted_after 'last tuesday' is not an ISO-8601"):
        as_utc("last tuesday", "interacted_after")


@pytest.mark.parametrize("bad", ["ab", "x" * 257, "a/b", "a#b", "a&b", "a%b", "a b|c", 5, None])
def test_invalid_reference_ids_are_refused(bad: object) -> None:
    assert not is_valid_ref_id(bad)
    with pytest.raises(LeapConfigError, match="not valid for Leap: 3 to 256 characters"):
        validate_ref_ids([bad])  # type: ignore[list-item]


def test_reference_ids_are_deduplicated_in_order() -> None:
    assert validate_ref_ids(["abc", "a b+c=d", "abc", "Jane Doe 0001"]) == [
        "abc",
        "a b+c=d",
        "Jane Doe 0001",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("cust-1", ["cust-1"]),
        ("cust-1, cust-2,", ["cust-1", "cust-2"]),
        ("['cust-1', 'cust-2']", ["cust-1", "cust-2"]),
        ('["cust-1", "a,b"]', ["cust-1", "a,b"]),
        (["cust-1", " padded "], ["cust-1", " padded "]),
        (("cust-1",), ["cust-1"]),
    ],
)
def test_rendered_lists(value: object, expected: list[str]) -> None:
    assert rendered_list(value, "ref_ids") == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("None", "ref_ids rendered to 'None': a template that found no value?"),
        ("['a', ", "looks like a list but is not one"),
        ([1, 2], "ref_ids holds 1, which is not a string"),
    ],
)
def test_unreadable_rendered_lists(value: object, message: str) -> None:
    with pytest.raises(LeapConfigError, match=message):
        rendered_list(value, "ref_ids")  # type: ignore[arg-type]


@pytest.mark.parametrize("empty", ["", "  ", "[]", [], (), " , "])
def test_empty_ref_ids_are_an_error_never_everyone(empty: object) -> None:
    with pytest.raises(
        LeapConfigError, match=r"ref_ids is empty .* give at least one Reference ID"
    ):
        ref_ids_argument(empty)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("COMPLETED", ["COMPLETED"]),
        ("completed, partial", ["COMPLETED", "PARTIAL"]),
        ("['COMPLETED']", ["COMPLETED"]),
        (["ERROR", "error"], ["ERROR"]),
        ((), []),
    ],
)
def test_statuses_one_or_many_any_case(value: object, expected: list[str]) -> None:
    assert statuses_argument(value, "target_statuses") == expected  # type: ignore[arg-type]
