"""The HTTP core over real HTTP against the emulator: paging, filters, faults, auth, meters."""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from airflow_provider_leap.client import (
    LeapClient,
    chunk_ref_ids,
    format_timestamp,
    page_shape,
    validate_base_url,
    validate_ref_ids,
)
from airflow_provider_leap.errors import (
    LeapAPIError,
    LeapAuthError,
    LeapConfigError,
    LeapPagingError,
)
from airflow_provider_leap.models import parse_timestamp
from airflow_provider_leap.retry import RetryPolicy
from airflow_provider_leap.testing import EMULATOR_API_KEY, Fault, FaultKind, LeapEmulator

CONNECTIONS = "/v1.1/connections"


def ids_of(records: Any) -> list[str]:
    return [r.id if hasattr(r, "id") else r["id"] for r in records]


def connection_requests(emu: LeapEmulator) -> list[Any]:
    return [r for r in emu.requests if r.path == CONNECTIONS]


def test_pages_through_every_record_exactly_once(make_client, emu) -> None:
    client = make_client(page_size=100)
    got = ids_of(client.iter_connections())
    assert Counter(got) == Counter(ids_of(emu.records))
    assert len(connection_requests(emu)) == -(-len(emu.records) // 100)


def test_page_token_is_url_encoded_exactly_once(make_client, emu) -> None:
    list(make_client(page_size=500).iter_connections())
    tokens = [dict(r.query).get("page-token") for r in connection_requests(emu)]
    assert tokens[0] is None
    # The emulator's tokens hold "/", "+", "=", "&", "%" and a space: sent mis-encoded they
    # would have come back as 400s; decoded server-side they are the tokens it issued.
    assert all(t and t.startswith("lp1/") and t.endswith(" &%+") for t in tokens[1:])
    assert all(r.status == 200 for r in connection_requests(emu))


def test_records_are_typed_and_keep_their_json(make_client, emu) -> None:
    first = next(make_client().iter_connections(ref_ids=["Test1012"]))
    assert first.ref_id == "Test1012"
    assert first.raw == next(r for r in emu.records if r["ref_id"] == "Test1012")


def test_filter_by_reference_ids_with_special_characters(make_client, emu) -> None:
    wanted = [r["ref_id"] for r in emu.records[::97]]
    got = list(make_client().iter_connections(ref_ids=wanted))
    expected = [r for r in emu.records if r["ref_id"] in set(wanted)]
    assert Counter(ids_of(got)) == Counter(ids_of(expected))
    (request,) = connection_requests(emu)
    assert [v for k, v in request.query if k == "ref-id"] == wanted


def test_filter_by_start_and_last_interaction(make_client, emu) -> None:
    cutoff = emu.now - timedelta(days=5)
    by_start = ids_of(make_client().iter_connections(started_after=cutoff))
    by_last = ids_of(make_client().iter_connections(interacted_after=cutoff.isoformat()))

    def after(key: str) -> list[str]:
        return [
            r["id"]
            for r in emu.records
            if (t := parse_timestamp(r[key])) is not None and t >= cutoff.replace(microsecond=0)
        ]

    assert sorted(by_start) == sorted(after("start_date_time_utc"))
    assert sorted(by_last) == sorted(after("last_interaction_date_time_utc"))
    assert 0 < len(by_last) < len(emu.records)


def test_many_reference_ids_are_batched_not_one_request_each(make_client, emu) -> None:
    ids = [f"REF-{i:06d}" for i in range(1000)]
    assert list(make_client().iter_connections(ref_ids=ids)) == []
    requests = connection_requests(emu)
    assert 1 < len(requests) <= 5
    sent = [v for r in requests for k, v in r.query if k == "ref-id"]
    assert sent == ids


@pytest.mark.parametrize(
    ("fault", "expected_wait"),
    [
        (Fault(FaultKind.RATE_LIMIT, retry_after=7), 7.0),
        (Fault(FaultKind.RATE_LIMIT, retry_after=3, retry_after_http_date=True), None),
        (Fault(FaultKind.SERVER_ERROR), None),
        (Fault(FaultKind.BAD_GATEWAY), None),
        (Fault(FaultKind.UNAVAILABLE), None),
        (Fault(FaultKind.RESET), None),
    ],
    ids=["429-seconds", "429-http-date", "500", "502", "503", "reset"],
)
def test_transient_faults_are_retried(make_client, emu, sleeps, fault, expected_wait) -> None:
    emu.faults.on_page(2, fault)
    got = ids_of(make_client(page_size=200).iter_connections())
    assert Counter(got) == Counter(ids_of(emu.records))
    assert len(sleeps.waits) == 1
    if expected_wait is not None:
        assert sleeps.waits == [expected_wait]
    if fault.retry_after_http_date:
        assert 0.0 <= sleeps.waits[0] <= 3.0  # an HTTP date, to the second


def test_slow_server_hits_the_timeout_and_is_retried(make_client, emu, sleeps) -> None:
    emu.faults.fail_next(1, Fault(FaultKind.SLOW, delay=1.0))
    got = list(make_client(timeout=0.2).iter_connections(ref_ids=["Test1012"]))
    assert ids_of(got) == ids_of(r for r in emu.records if r["ref_id"] == "Test1012")
    assert len(sleeps.waits) == 1


def test_outage_longer_than_the_bound_fails_clearly(make_client, emu, sleeps) -> None:
    emu.faults.outage()
    client = make_client(retry=RetryPolicy(max_retries=3, max_wait=100, jitter=0))
    with pytest.raises(LeapAPIError) as err:
        list(client.iter_connections())
    assert err.value.status == 503
    assert "GET /v1.1/connections answered HTTP 503" in str(err.value)
    assert "after 3 retries" in str(err.value)
    assert sleeps.waits == [1.0, 2.0, 4.0]
    assert len(connection_requests(emu)) == 4


def test_retry_after_beyond_the_budget_fails_at_once(make_client, emu, sleeps) -> None:
    emu.faults.fail_next(1, Fault(FaultKind.RATE_LIMIT, retry_after=3600))
    with pytest.raises(LeapAPIError, match="HTTP 429"):
        list(make_client(retry=RetryPolicy(max_wait=60)).iter_connections())
    assert sleeps.waits == []


def test_other_client_errors_are_not_retried(make_client, emu, sleeps) -> None:
    with pytest.raises(LeapAPIError) as err:
        list(make_client(page_size=5000).iter_connections())
    assert err.value.status == 400
    assert err.value.title
    assert sleeps.waits == []
    assert len(connection_requests(emu)) == 1


def test_malformed_page_names_the_page(make_client, emu) -> None:
    emu.faults.on_page(3, FaultKind.MALFORMED)
    seen = []
    with pytest.raises(LeapPagingError, match="page 3 is not readable JSON"):
        for record in make_client(page_size=100).iter_connections():
            seen.append(record.id)
    assert len(seen) == 200  # the two good pages were delivered, nothing after


def test_repeated_page_token_stops_instead_of_looping(make_client, emu) -> None:
    emu.faults.on_page(2, FaultKind.REPEAT_TOKEN, times=None)
    with pytest.raises(LeapPagingError, match="repeated an earlier page token"):
        list(make_client(page_size=100).iter_connections())
    assert len(connection_requests(emu)) <= 4


def test_wrong_key_is_403_without_the_key_anywhere(make_client, emu, caplog) -> None:
    secret = "partner:very-secret-key"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LeapAuthError) as err:
        list(make_client(key=secret).iter_connections())
    message = str(err.value)
    assert err.value.status == 403
    assert "403" in message and "other environment" in message
    assert secret not in message and secret not in repr(err.value)
    assert secret not in caplog.text
    assert all(secret not in r.raw_query for r in emu.requests)


def test_missing_key_is_a_config_error() -> None:
    with pytest.raises(LeapConfigError, match="No Leap API key"):
        LeapClient("http://127.0.0.1:1", "  ")


def test_retries_are_logged_with_wait_and_reason(make_client, emu, caplog) -> None:
    emu.faults.fail_next(1, Fault(FaultKind.RATE_LIMIT, retry_after=2))
    caplog.set_level(logging.WARNING)
    list(make_client().iter_connections(ref_ids=["Test1012"]))
    assert "HTTP 429 (Retry-After 2 s); retry 1/4 in 2.0 s" in caplog.text
    assert EMULATOR_API_KEY not in caplog.text


def test_connection_reuse(make_client, emu) -> None:
    client = make_client(page_size=100)
    list(client.iter_connections())
    assert len(connection_requests(emu)) == 13
    pools = client.session.get_adapter(emu.url).poolmanager.pools
    (key,) = pools.keys()
    assert pools[key].num_connections == 1  # one keep-alive connection for every page


def test_check(make_client) -> None:
    ok, message = make_client().check()
    assert ok and "Connect API answered" in message
    ok, message = make_client(key="wrong:key").check()
    assert not ok and "403" in message and "wrong:key" not in message


# -- meters ------------------------------------------------------------------------------------


def test_meters_search_chunks_reference_ids_by_100(make_client, emu) -> None:
    completed = sorted({r["ref_id"] for r in emu.records if r["connection_status"] == "COMPLETED"})
    ids = completed + [f"NOPE-{i}" for i in range(250 - len(completed) % 250)]
    meters = list(make_client().iter_meters(connection_reference_ids=ids))
    bodies = [r.body for r in emu.requests if r.path == "/v2/meters/search"]
    assert all(len(b["connection_reference_ids"]) <= 100 for b in bodies)
    assert sum(len(b["connection_reference_ids"]) for b in bodies if "page_token" not in b) == len(
        ids
    )
    expected = {m["meter_id"] for m in emu.visible_meters()}
    assert {m.meter_id for m in meters} == expected
    assert len(meters) == len(expected)


def test_meters_created_after_and_paging(make_client, emu) -> None:
    since = emu.now - timedelta(days=10)
    meters = list(make_client().iter_meters(created_after=since, page_size=7))
    expected = [
        m
        for m in emu.visible_meters()
        if parse_timestamp(m["audit"]["created_at"]) >= since.replace(microsecond=0)
    ]
    assert sorted(m.meter_id for m in meters) == sorted(m["meter_id"] for m in expected)
    assert meters and all(m.connection_references for m in meters)


@pytest.mark.parametrize("size", [0, 501])
def test_meters_page_size_is_checked_before_any_request(make_client, emu, size) -> None:
    with pytest.raises(LeapConfigError, match="1 to 500"):
        list(make_client().iter_meters(page_size=size))
    assert emu.requests == []


# -- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8765", "http://localhost:1", "http://[::1]:2", "https://api.leap.energy/"],
)
def test_accepted_base_urls(url: str) -> None:
    assert validate_base_url(url) == url.rstrip("/")


def test_plain_http_to_a_remote_host_needs_an_explicit_opt_in() -> None:
    with pytest.raises(LeapConfigError, match="allow_insecure_http"):
        validate_base_url("http://leap.internal:8080")
    assert validate_base_url("http://leap.internal:8080", allow_insecure_http=True)


def test_bare_host_means_https() -> None:
    assert validate_base_url("api.staging.leap.energy") == "https://api.staging.leap.energy"


@pytest.mark.parametrize("bad", ["ab", "x" * 257, "a/b", "a#b", "a&b", "a%b", "a b|c"])
def test_invalid_reference_ids_are_refused(bad: str) -> None:
    with pytest.raises(LeapConfigError, match="not valid for Leap"):
        validate_ref_ids([bad])


def test_reference_ids_are_deduplicated_in_order() -> None:
    assert validate_ref_ids(["abc", "a b+c=d", "abc"]) == ["abc", "a b+c=d"]


def test_chunks_respect_the_query_budget() -> None:
    ids = [f"ID-{i:05d}-" + "x" * 200 for i in range(100)]
    chunks = chunk_ref_ids(ids, "ref-id", max_chars=6000)
    assert [i for c in chunks for i in c] == ids
    assert all(sum(len("ref-id") + len(i) + 2 for i in c) <= 6000 for c in chunks)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-01", "2026-11-01T00:00:00Z"),
        ("2026-11-01 10:00:00+02:00", "2026-11-01T08:00:00Z"),
        ("2026-11-01T10:00:00.123Z", "2026-11-01T10:00:00Z"),
    ],
)
def test_timestamps_are_sent_as_utc_z(value: str, expected: str) -> None:
    assert format_timestamp(value) == expected


def test_unparseable_timestamp_is_a_clear_error() -> None:
    with pytest.raises(LeapConfigError, match="not an ISO-8601"):
        format_timestamp("last tuesday")


@pytest.mark.parametrize(
    ("body", "ids", "token"),
    [
        (
            b'{"connections": [{"id": "a"}, {"id": "b"}], "nextPageToken": "t/+="}',
            ["a", "b"],
            "t/+=",
        ),
        (b'{"connections": [{"id": "a"}], "nextPageToken": ""}', ["a"], None),
        (b'{"connections": [], "nextPageToken": null}', [], None),
        (b'[{"id": "a"}, {"id": "b"}]', ["a", "b"], None),
        (b'{"data": [{"id": "a"}], "next_page_token": "n"}', ["a"], "n"),
        (b'{"items": [{"id": "a"}], "nextPageToken": 7, "extra": {"x": 1}}', ["a"], "7"),
        (b"{}", [], None),
    ],
    ids=["adopted", "empty-token", "null-token", "bare-array", "data", "items-int-token", "empty"],
)
def test_page_shapes_leap_may_send(body: bytes, ids: list[str], token: str | None) -> None:
    client = LeapClient("http://127.0.0.1:1", "k:k")
    shape = page_shape("connections", "nextPageToken")
    records, next_token = client._decode_page(body, "GET", "/p", 1, shape)
    assert [json.loads(bytes(r))["id"] for r in records] == ids
    assert next_token == token


def test_wire_name_overrides_shape_the_page() -> None:
    client = LeapClient("http://127.0.0.1:1", "k:k")
    shape = page_shape("results", "cursor")
    records, token = client._decode_page(
        b'{"results": [{"id": "a"}], "cursor": "c"}', "GET", "/p", 1, shape
    )
    assert len(records) == 1 and token == "c"


@pytest.mark.parametrize("body", [b'{"meters": [', b'{"meters": 5}', b"<html>"])
def test_unreadable_page_is_a_paging_error(body: bytes) -> None:
    client = LeapClient("http://127.0.0.1:1", "k:k")
    with pytest.raises(LeapPagingError, match="page 4 is not readable JSON"):
        client._decode_page(
            body, "POST", "/v2/meters/search", 4, page_shape("meters", "next_page_token")
        )
