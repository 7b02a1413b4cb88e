"""The HTTP core over real HTTP against the emulator: paging, filters, faults, auth, meters."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests
from fake_server import (
    Reply,
    active_window_records,
    fake_leap,
    page,
    record,
    self_signed_certificate,
)

from airflow_provider_leap.async_client import AsyncLeapClient
from airflow_provider_leap.client import NO_RETRY, LeapClient, connect_queries, decode_page
from airflow_provider_leap.config import LeapConfig
from airflow_provider_leap.errors import (
    LeapAPIError,
    LeapAuthError,
    LeapConfigError,
    LeapPagingError,
)
from airflow_provider_leap.retry import RetryPolicy
from airflow_provider_leap.testing import (
    EMULATOR_API_KEY,
    Fault,
    FaultKind,
    LeapEmulator,
    generate_records,
)
from airflow_provider_leap.timeutil import parse_timestamp
from airflow_provider_leap.triage import triage
from airflow_provider_leap.wire import WireNames

CONNECTIONS = "/v1.1/connections"


def ids_of(records: Any) -> list[str]:
    return [r.id if hasattr(r, "id") else r["id"] for r in records]


def connection_requests(leap_emulator: LeapEmulator) -> list[Any]:
    return [r for r in leap_emulator.requests if r.path == CONNECTIONS]


def test_pages_through_every_record_exactly_once(make_client, leap_emulator) -> None:
    client = make_client(page_size=100)
    got = ids_of(client.iter_connect_records())
    assert Counter(got) == Counter(ids_of(leap_emulator.records))
    assert len(connection_requests(leap_emulator)) == -(-len(leap_emulator.records) // 100)


def test_page_token_is_url_encoded_exactly_once(make_client, leap_emulator) -> None:
    list(make_client(page_size=500).iter_connect_records())
    tokens = [dict(r.query).get("page-token") for r in connection_requests(leap_emulator)]
    assert tokens[0] is None
    # The emulator's tokens hold "/", "+", "=", "&", "%" and a space: sent mis-encoded they
    # would have come back as 400s; decoded server-side they are the tokens it issued.
    assert all(t and t.startswith("lp1/") and t.endswith(" &%+") for t in tokens[1:])
    assert all(r.status == 200 for r in connection_requests(leap_emulator))


def test_records_are_typed_and_keep_their_json(make_client, leap_emulator) -> None:
    first = next(make_client().iter_connect_records(ref_ids=["Test1012"]))
    assert first.ref_id == "Test1012"
    assert first.raw == next(r for r in leap_emulator.records if r["ref_id"] == "Test1012")


def test_filter_by_reference_ids_with_special_characters(make_client, leap_emulator) -> None:
    wanted = [r["ref_id"] for r in leap_emulator.records[::97]]
    got = list(make_client().iter_connect_records(ref_ids=wanted))
    expected = [r for r in leap_emulator.records if r["ref_id"] in set(wanted)]
    assert Counter(ids_of(got)) == Counter(ids_of(expected))
    (request,) = connection_requests(leap_emulator)
    assert [v for k, v in request.query if k == "ref-id"] == wanted


def test_filter_by_start_and_last_interaction(make_client, leap_emulator) -> None:
    cutoff = leap_emulator.now - timedelta(days=5)
    by_start = ids_of(make_client().iter_connect_records(started_after=cutoff))
    by_last = ids_of(make_client().iter_connect_records(interacted_after=cutoff.isoformat()))

    def after(key: str) -> list[str]:
        return [
            r["id"]
            for r in leap_emulator.records
            if (t := parse_timestamp(r[key])) is not None and t >= cutoff.replace(microsecond=0)
        ]

    assert sorted(by_start) == sorted(after("start_date_time_utc"))
    assert sorted(by_last) == sorted(after("last_interaction_date_time_utc"))
    assert 0 < len(by_last) < len(leap_emulator.records)


def test_many_reference_ids_are_batched_not_one_request_each(make_client, leap_emulator) -> None:
    ids = [f"REF-{i:06d}" for i in range(1000)]
    assert list(make_client().iter_connect_records(ref_ids=ids)) == []
    requests = connection_requests(leap_emulator)
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
def test_transient_faults_are_retried(
    make_client, leap_emulator, sleeps, fault, expected_wait
) -> None:
    leap_emulator.faults.on_page(2, fault)
    got = ids_of(make_client(page_size=200).iter_connect_records())
    assert Counter(got) == Counter(ids_of(leap_emulator.records))
    assert len(sleeps.waits) == 1
    if expected_wait is not None:
        assert sleeps.waits == [expected_wait]
    if fault.retry_after_http_date:
        assert 0.0 <= sleeps.waits[0] <= 3.0  # an HTTP date, to the second


def test_slow_server_hits_the_timeout_and_is_retried(make_client, leap_emulator, sleeps) -> None:
    leap_emulator.faults.fail_next(1, Fault(FaultKind.SLOW, delay=1.0))
    got = list(make_client(timeout=0.2).iter_connect_records(ref_ids=["Test1012"]))
    assert ids_of(got) == ids_of(r for r in leap_emulator.records if r["ref_id"] == "Test1012")
    assert len(sleeps.waits) == 1


def test_outage_longer_than_the_bound_fails_clearly(make_client, leap_emulator, sleeps) -> None:
    leap_emulator.faults.outage()
    client = make_client(retry=RetryPolicy(max_retries=3, max_wait=100, jitter=0))
    with pytest.raises(LeapAPIError) as err:
        list(client.iter_connect_records())
    assert err.value.status == 503
    assert "GET /v1.1/connections answered HTTP 503" in str(err.value)
    assert "after 3 retries" in str(err.value)
    assert sleeps.waits == [1.0, 2.0, 4.0]
    assert len(connection_requests(leap_emulator)) == 4


def test_retry_after_beyond_the_budget_fails_at_once(make_client, leap_emulator, sleeps) -> None:
    leap_emulator.faults.fail_next(1, Fault(FaultKind.RATE_LIMIT, retry_after=3600))
    with pytest.raises(LeapAPIError, match="HTTP 429"):
        list(make_client(retry=RetryPolicy(max_wait=60)).iter_connect_records())
    assert sleeps.waits == []


def test_other_client_errors_are_not_retried(make_client, leap_emulator, sleeps) -> None:
    with pytest.raises(LeapAPIError) as err:
        list(make_client(page_size=5000).iter_connect_records())
    assert err.value.status == 400
    assert err.value.title
    assert sleeps.waits == []
    assert len(connection_requests(leap_emulator)) == 1


def test_malformed_page_names_the_page(make_client, leap_emulator) -> None:
    leap_emulator.faults.on_page(3, FaultKind.MALFORMED)
    seen = []
    with pytest.raises(LeapPagingError, match="page 3 is not readable JSON"):
        for record in make_client(page_size=100).iter_connect_records():
            seen.append(record.id)
    assert len(seen) == 200  # the two good pages were delivered, nothing after


def test_repeated_page_token_stops_instead_of_looping(make_client, leap_emulator) -> None:
    leap_emulator.faults.on_page(2, FaultKind.REPEAT_TOKEN, times=None)
    with pytest.raises(LeapPagingError, match="repeated an earlier page token"):
        list(make_client(page_size=100).iter_connect_records())
    assert len(connection_requests(leap_emulator)) <= 4


def test_wrong_key_is_403_without_the_key_anywhere(make_client, leap_emulator, caplog) -> None:
    secret = "partner:very-secret-key"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LeapAuthError) as err:
        list(make_client(key=secret).iter_connect_records())
    message = str(err.value)
    assert err.value.status == 403
    assert "403" in message and "other environment" in message
    assert secret not in message and secret not in repr(err.value)
    assert secret not in caplog.text
    assert all(secret not in r.raw_query for r in leap_emulator.requests)


def test_missing_key_is_a_config_error() -> None:
    with pytest.raises(LeapConfigError, match="No Leap API key"):
        LeapClient("http://127.0.0.1:1", "  ")


def test_retries_are_logged_with_wait_and_reason(make_client, leap_emulator, caplog) -> None:
    leap_emulator.faults.fail_next(1, Fault(FaultKind.RATE_LIMIT, retry_after=2))
    caplog.set_level(logging.WARNING)
    list(make_client().iter_connect_records(ref_ids=["Test1012"]))
    assert "HTTP 429 (Retry-After 2 s); retry 1/4 in 2.0 s" in caplog.text
    assert EMULATOR_API_KEY not in caplog.text


def test_connection_reuse(make_client, leap_emulator) -> None:
    client = make_client(page_size=100)
    list(client.iter_connect_records())
    assert len(connection_requests(leap_emulator)) == -(-len(leap_emulator.records) // 100) > 1
    pools = client.session.get_adapter(leap_emulator.url).poolmanager.pools
    (key,) = pools.keys()
    assert pools[key].num_connections == 1  # one keep-alive connection for every page


def test_check(make_client) -> None:
    ok, message = make_client().check()
    assert ok and "Connect API answered" in message
    ok, message = make_client(key="wrong:key").check()
    assert not ok and "403" in message and "wrong:key" not in message


# -- meters ------------------------------------------------------------------------------------


def test_meters_search_chunks_reference_ids_by_100(make_client, leap_emulator) -> None:
    completed = sorted(
        {r["ref_id"] for r in leap_emulator.records if r["connection_status"] == "COMPLETED"}
    )
    ids = completed + [f"NOPE-{i}" for i in range(250 - len(completed) % 250)]
    meters = list(make_client().iter_meters(connection_reference_ids=ids))
    bodies = [r.body for r in leap_emulator.requests if r.path == "/v2/meters/search"]
    assert all(len(b["connection_reference_ids"]) <= 100 for b in bodies)
    assert sum(len(b["connection_reference_ids"]) for b in bodies if "page_token" not in b) == len(
        ids
    )
    expected = {m["meter_id"] for m in leap_emulator.visible_meters()}
    assert {m.meter_id for m in meters} == expected
    assert len(meters) == len(expected)


def test_meters_created_after_and_paging(make_client, leap_emulator) -> None:
    since = leap_emulator.now - timedelta(days=10)
    meters = list(make_client().iter_meters(created_after=since, page_size=7))
    expected = [
        m
        for m in leap_emulator.visible_meters()
        if parse_timestamp(m["audit"]["created_at"]) >= since.replace(microsecond=0)
    ]
    assert sorted(m.meter_id for m in meters) == sorted(m["meter_id"] for m in expected)
    assert meters and all(m.connection_references for m in meters)


@pytest.mark.parametrize("size", [0, 501])
def test_meters_page_size_is_checked_before_any_request(make_client, leap_emulator, size) -> None:
    with pytest.raises(LeapConfigError, match="1 to 500"):
        list(make_client().iter_meters(page_size=size))
    assert leap_emulator.requests == []


# -- pure helpers ------------------------------------------------------------------------------


def test_ids_are_split_to_keep_each_query_short() -> None:
    ids = [f"ID-{i:05d}-" + "x" * 200 for i in range(100)]
    queries = connect_queries(WireNames(), 500, ids, {})
    assert [v for q in queries for k, v in q if k == "ref-id"] == ids
    assert all(
        sum(len("ref-id") + len(v) + 2 for k, v in q if k == "ref-id") <= 6000 for q in queries
    )
    assert all(("page-size", "500") in q for q in queries)


PAGES = [
    (b'{"connections": [{"id": "a"}, {"id": "b"}], "nextPageToken": "t/+="}', ["a", "b"], "t/+="),
    (b'{"connections": [{"id": "a"}], "nextPageToken": ""}', ["a"], None),
    (b'{"connections": [], "nextPageToken": null}', [], None),
    (b'{"connections": null}', [], None),
    (b'[{"id": "a"}, {"id": "b"}]', ["a", "b"], None),
    (b'{"data": [{"id": "a"}], "next_page_token": "n"}', ["a"], "n"),
    (b'{"items": [{"id": "a"}], "nextPageToken": 7, "extra": {"x": 1}}', ["a"], "7"),
    (b'{"connections": [{"id": "a"}], "nextPageToken": 0}', ["a"], "0"),
]


@pytest.mark.parametrize(("body", "ids", "token"), PAGES)
def test_page_shapes_leap_may_send(body: bytes, ids: list[str], token: str | None) -> None:
    keys = (("connections", "data", "items"), ("nextPageToken", "next_page_token"))
    records, next_token = decode_page(body, *keys, "page 1")
    assert [item["id"] for item in json.loads(bytes(records))] == ids
    assert next_token == token


@pytest.mark.parametrize(
    ("body", "seen"),
    [(b"{}", "none"), (b'{"results": [{"id": "a"}], "error": "x"}', "error, results")],
)
def test_page_without_a_records_key_is_an_error_naming_the_keys(body: bytes, seen: str) -> None:
    with pytest.raises(
        LeapPagingError, match=rf"none of the record keys connections \(keys seen: {seen}\)"
    ):
        decode_page(body, ("connections",), ("nextPageToken",), "page 1")


@pytest.mark.parametrize(
    "body", [b'{"meters": [', b"<html>", b'{"meters": [], "next_page_token": {}}']
)
def test_unreadable_page_is_a_paging_error(body: bytes) -> None:
    with pytest.raises(LeapPagingError, match="page 4 is not readable JSON"):
        decode_page(body, ("meters",), ("next_page_token",), "page 4")


# -- a server that misbehaves (issue 10): each case has its own tiny fake server ----------------

GOOD_KEY = "partner:very-secret-key"


def fake_client(url: str, sleeps: Any, **settings: Any) -> LeapClient:
    settings.setdefault("retry", RetryPolicy(max_retries=2, max_wait=60, jitter=0))
    return LeapClient(url, GOOD_KEY, sleep=sleeps, **settings)


def test_a_server_ignoring_the_ref_id_filter_cannot_widen_the_result(sleeps, caplog) -> None:
    everyone = [record(ref) for ref in ("aaa", "bbb", "ccc")]
    with fake_leap(lambda seen: page(everyone)) as server:
        got = list(fake_client(server.url, sleeps).iter_connect_records(ref_ids=["aaa"]))
    assert [r.ref_id for r in got] == ["aaa"]
    assert "2 record(s) outside the 'ref-id' filter" in caplog.text
    assert "check the extra ref_id_param" in caplog.text


def test_a_server_ignoring_a_time_filter_cannot_widen_the_result(sleeps, caplog) -> None:
    records = [
        record("old", when="2026-01-01T00:00:00Z"),
        record("new", when="2026-03-01T00:00:00Z"),
    ]
    with fake_leap(lambda seen: page(records)) as server:
        client = fake_client(server.url, sleeps)
        got = list(client.iter_connect_records(interacted_after="2026-02-01T00:00:00.5Z"))
    assert [r.ref_id for r in got] == ["new"]
    assert dict(server.requests[0].query)["last-interaction-date"] == "2026-02-01T00:00:00Z"
    assert "outside the 'last-interaction-date' filter" in caplog.text


def test_a_server_ignoring_the_meters_reference_filter_cannot_widen_the_result(
    sleeps, caplog
) -> None:
    meters = [
        {"meter_id": "m1", "connection_references": ["bbb", "aaa"]},
        {"meter_id": "m2", "connection_references": ["zzz"]},  # somebody else's
        {"meter_id": "m3"},  # no references listed: nothing to check it against, kept
    ]
    with fake_leap(lambda seen: Reply(body={"meters": meters})) as server:
        got = list(fake_client(server.url, sleeps).iter_meters(["aaa"]))
    assert [m.meter_id for m in got] == ["m1", "m3"]
    assert "1 meter(s) for none of the Reference IDs sent" in caplog.text


def test_records_without_a_ref_id_are_named_as_such_not_as_an_ignored_filter(
    sleeps, caplog
) -> None:
    renamed = [
        {("refId" if key == "ref_id" else key): value for key, value in record(ref).items()}
        for ref in ("aaa", "bbb")
    ]
    with fake_leap(lambda seen: page(renamed)) as server:
        got = list(fake_client(server.url, sleeps).iter_connect_records(ref_ids=["aaa", "bbb"]))
    # kept (review s11b F5): triage sends them to review instead of a green run reading nothing
    assert [(r.id, r.ref_id) for r in got] == [("CAISO_x_aaa", None), ("CAISO_x_bbb", None)]
    assert "2 record(s) without a ref_id" in caplog.text and "renamed key" in caplog.text
    assert "They are passed on (triage reviews them" in caplog.text
    assert "outside the 'ref-id' filter" not in caplog.text


def test_ids_answered_in_another_case_are_dropped_and_named_as_such(sleeps, caplog) -> None:
    """Review s11b F5: a server matching IDs loosely is not blamed for ignoring the filter."""
    answered = [record("lead-42"), record("Lead-43 "), record("Lead-44")]
    with fake_leap(lambda seen: page(answered)) as server:
        client = fake_client(server.url, sleeps)
        got = list(client.iter_connect_records(ref_ids=["Lead-42", "Lead-43", "Lead-44"]))
    assert [r.ref_id for r in got] == ["Lead-44"]
    assert "2 record(s) outside the 'ref-id' filter sent: Leap seems to match IDs loosely " in (
        caplog.text
    )
    assert "('lead-42' for 'Lead-42')" in caplog.text and "seems to ignore" not in caplog.text


def test_a_loose_match_among_records_never_asked_for_is_no_excuse(sleeps, caplog) -> None:
    """Review s11d: a server ignoring the filter is named as such, even when one of the records
    it answered happens to be a case variant of an ID sent."""
    answered = [record("lead-42"), record("someone-else"), record("Lead-42")]
    with fake_leap(lambda seen: page(answered)) as server:
        got = list(fake_client(server.url, sleeps).iter_connect_records(ref_ids=["Lead-42"]))
    assert [r.ref_id for r in got] == ["Lead-42"]
    assert "2 record(s) outside the 'ref-id' filter sent: the server seems to ignore" in (
        caplog.text
    )


@pytest.mark.parametrize(
    "key",
    [
        "pageToken",
        "next_page_url",
        "nextPageLink",
        "next_offset",
        "continuation",
        "next",
        "cursor",
        "nextPageNumber",  # review s11e: caught before the anchoring, then missed
        "next_page_uri",
        "continuationKey",
    ],
)
def test_a_next_page_token_under_a_new_name_is_an_error_not_one_page(sleeps, key: str) -> None:
    """A token renamed to any of these would stop the listing after one page (the names after
    pageToken: review s11b F3)."""
    body = {"connections": [record("aaa")], key: "https://api.leap.energy/v1/x?page=2"}
    with (
        fake_leap(lambda seen: Reply(body=body)) as server,
        pytest.raises(LeapPagingError, match=f"carries {key!r}: .* extra next_token_key"),
    ):
        list(fake_client(server.url, sleeps).iter_connect_records())


@pytest.mark.parametrize(
    "extra",
    [
        {"cursor": None},
        {"nextPage": ""},
        {"next_refresh": "soon"},
        {"next": False},
        {"offset": 8},
        # review s11d: placeholders and names that are no token
        {"next_page_size": 100},
        {"nextPageNumber": 0},
        {"next_offset": -1},
        {"continue": True},
        {"continuous": True},
        {"after": "2026-01-01T00:00:00Z"},
        {"nextPageLink": {}},
        {"token_expires_in": 3600},
        {"tokens_remaining": 99},
    ],
)
def test_an_empty_token_like_key_or_another_field_still_ends_the_listing(
    sleeps, extra: dict[str, Any]
) -> None:
    body = {"connections": [record("aaa")], **extra}
    with fake_leap(lambda seen: Reply(body=body)) as server:
        got = list(fake_client(server.url, sleeps).iter_connect_records())
    assert [r.ref_id for r in got] == ["aaa"] and len(server.requests) == 1


def test_an_unknown_records_key_is_an_error_not_zero_records(sleeps) -> None:
    with (
        fake_leap(lambda seen: Reply(body={"results": [record("aaa")]})) as server,
        pytest.raises(LeapPagingError, match=r"keys seen: results\); .* extra records_key"),
    ):
        list(fake_client(server.url, sleeps).iter_connect_records())


def test_paging_stops_when_the_server_ignores_the_token(sleeps) -> None:
    fresh = iter(range(1000))
    with (
        fake_leap(lambda seen: page([record("aaa")], token=f"t{next(fresh)}")) as server,
        pytest.raises(LeapPagingError, match=r"repeated the records of page 1 .* 'page-token'"),
    ):
        list(fake_client(server.url, sleeps).iter_connect_records())
    assert len(server.requests) == 2


def test_paging_stops_at_max_pages(sleeps) -> None:
    pages = iter(range(1000))

    def respond(seen: Any) -> Reply:
        n = next(pages)
        return page([record(f"ref{n:03d}")], token=f"t{n}")

    with (
        fake_leap(respond) as server,
        pytest.raises(LeapPagingError, match="page 3 still has a next page at max_pages=3"),
    ):
        list(fake_client(server.url, sleeps, max_pages=3).iter_connect_records())
    assert len(server.requests) == 3


# Each byte well within `timeout`; the whole answer would take about one second (a body dripped
# byte by byte) or ten (a head with a padded header dripped): the deadline cuts either.
BODY_DRIP = Reply(body=json.dumps({"connections": []}).encode(), chunks=1, pause=0.05)
HEAD_DRIP = Reply(
    body={"connections": []}, headers={"X-Pad": "x" * 100}, pause=0.05, drip_head=True
)


@pytest.mark.parametrize("drip", [BODY_DRIP, HEAD_DRIP], ids=["body", "head"])
def test_a_dripping_answer_hits_the_request_deadline(sleeps, drip: Reply) -> None:
    with fake_leap(lambda seen: drip) as server:
        client = fake_client(server.url, sleeps, timeout=5, request_deadline=0.2)
        started = time.monotonic()
        with pytest.raises(LeapAPIError, match=r"no whole answer in request_deadline=0.2 s"):
            list(client.iter_connect_records())
    assert time.monotonic() - started < 3  # three attempts, each cut at the deadline
    assert len(server.requests) == 3 and sleeps.waits == [1.0, 2.0]


def test_the_async_client_keeps_the_deadline_over_a_dripping_head() -> None:
    async def read(url: str) -> Any:
        config = LeapConfig(url, GOOD_KEY, timeout=5, request_deadline=0.3, retry=NO_RETRY)
        async with AsyncLeapClient(config) as client:
            return await client.get_connect_records()

    with fake_leap(lambda seen: HEAD_DRIP) as server:
        started = time.monotonic()
        with pytest.raises(LeapAPIError, match=r"no whole answer in request_deadline=0.3 s"):
            asyncio.run(read(server.url))
    assert time.monotonic() - started < 2


def test_retry_after_beyond_the_budget_says_so(sleeps) -> None:
    with (
        fake_leap(
            lambda seen: Reply(429, {"title": "slow down"}, {"Retry-After": "10000"})
        ) as server,
        pytest.raises(LeapAPIError) as err,
    ):
        list(fake_client(server.url, sleeps).iter_connect_records())
    assert "HTTP 429: slow down" in str(err.value)
    assert "Leap asked to wait 10000 s (Retry-After)" in str(err.value)
    assert "raise max_retry_wait" in str(err.value)
    assert sleeps.waits == []


@pytest.mark.parametrize("header", ["-5", "Thu, 01 Jan 1970 00:00:00 GMT", "inf"])
def test_unusable_retry_after_falls_back_to_backoff(sleeps, header: str) -> None:
    answers = iter([Reply(429, {}, {"Retry-After": header}), page([record("aaa")])])
    with fake_leap(lambda seen: next(answers)) as server:
        assert len(list(fake_client(server.url, sleeps).iter_connect_records())) == 1
    assert sleeps.waits == [1.0]


def test_a_redirect_is_not_followed(sleeps) -> None:
    moved = Reply(301, b"", {"Location": "https://elsewhere.example/v1.1/connections?ref-id=x"})
    with fake_leap(lambda seen: moved) as server, pytest.raises(LeapAPIError) as err:
        list(fake_client(server.url, sleeps).iter_connect_records())
    assert err.value.status == 301 and len(server.requests) == 1
    assert "redirect to https://elsewhere.example/v1.1/connections: redirects are not followed" in (
        str(err.value)
    )
    assert "ref-id=x" not in str(err.value)


def test_an_html_error_page_is_not_a_title(sleeps) -> None:
    html = b"<html><head><title>502 Bad Gateway</title></head></html>"
    with (
        fake_leap(lambda seen: Reply(502, html, {"Content-Type": "text/html"})) as server,
        pytest.raises(LeapAPIError) as err,
    ):
        list(fake_client(server.url, sleeps, retry=NO_RETRY).iter_connect_records())
    assert str(err.value).startswith("Leap GET /v1.1/connections answered HTTP 502;")
    assert "<html" not in str(err.value) and err.value.title is None


def test_a_self_signed_certificate_is_a_tls_error_not_an_outage(sleeps, tmp_path) -> None:
    certificate = self_signed_certificate(tmp_path)
    with (
        fake_leap(lambda seen: page([]), certificate) as server,
        pytest.raises(LeapAPIError) as err,
    ):
        list(fake_client(server.url, sleeps).iter_connect_records())
    message = str(err.value)
    assert "TLS failed" in message and "certificate verify failed" in message
    assert "not retried" in message and sleeps.waits == []


def test_active_records_include_those_never_interacted_with(leap_emulator_factory) -> None:
    """The emulator, like a strict Leap, leaves records with no last interaction out of the
    last-interaction filter: an hourly DAG reading by it never heard of them."""
    records, active = active_window_records()
    emulator = leap_emulator_factory(records=records)
    with LeapClient(emulator.url, EMULATOR_API_KEY) as client:
        by_last = [r.ref_id for r in client.iter_connect_records(interacted_after="2026-03-10")]
        got = [r.ref_id for r in client.iter_active_records("2026-03-10")]
    assert "opened-only" not in by_last
    # Each once; the record with no readable time matches no time filter of a strict server.
    assert sorted(got) == sorted(active - {"unreadable-both"})


def test_a_first_interaction_landing_between_the_active_reads_is_not_lost(
    leap_emulator_factory,
) -> None:
    """Review s14d: Leap's refresh lands after the first listing; the customer who had only
    opened the link then has a last interaction. Read by last interaction first, they fell
    between the two reads and went unread for the hour."""
    records, _ = active_window_records()
    emulator = leap_emulator_factory(records=records)
    refreshed = [dict(r) for r in records]
    moved = next(r for r in refreshed if r["ref_id"] == "opened-only")
    moved["last_interaction_date_time_utc"] = "2026-03-12T06:00:00Z"
    read = []
    with LeapClient(emulator.url, EMULATOR_API_KEY) as client:
        for record in client.iter_active_records("2026-03-10"):
            if len(emulator.requests) == 1 and not read:
                emulator.set_records(refreshed)  # the first listing is done: the refresh lands
            read.append(record)
    assert [r.last_interaction_date_time_utc for r in read if r.ref_id == "opened-only"] == [
        None,
        "2026-03-12T06:00:00Z",
    ]
    result = triage(read, now=datetime(2026, 3, 13, tzinfo=timezone.utc))
    kept = [i for items in result.buckets.values() for i in items if i["ref_id"] == "opened-only"]
    assert [i["last_interaction"] for i in kept] == ["2026-03-12T06:00:00Z"]


def test_a_renamed_last_interaction_never_counts_a_stall_from_the_start(
    leap_emulator_factory,
) -> None:
    """Review s15b: with Leap's last interaction under another key, every record came from the
    start read and was counted from its start, and a customer active half an hour before got
    the 7-day reminder. Only NOT_STARTED customers (who tried no utility) are counted so."""
    now = datetime(2026, 3, 20, 12, tzinfo=timezone.utc)
    records = generate_records(seed=3, count=300, now=now)
    for row in records:
        row["last_interaction_utc"] = row.pop("last_interaction_date_time_utc")
    emulator = leap_emulator_factory(records=records)
    with LeapClient(emulator.url, EMULATOR_API_KEY) as client:
        result = triage(client.iter_active_records(now - timedelta(days=30)), now=now)
    attempted = {"PARTIAL", "ERROR"}
    sorted_by_start = [
        item
        for name, items in result.buckets.items()
        if name not in ("needs_review", "completed")
        for item in items
    ]
    assert sorted_by_start and {i["connection_status"] for i in sorted_by_start} == {"NOT_STARTED"}
    review = [i for i in result.buckets["needs_review"] if i["connection_status"] in attempted]
    started = [r for r in records if r["start_date_time_utc"] >= "2026-02-18T12:00:00Z"]
    assert len(review) == sum(r["connection_status"] in attempted for r in started) > 0
    assert {i["reason"] for i in review} == {"malformed"}


def test_a_refused_connect_query_points_at_the_probe(leap_emulator_factory) -> None:
    """Review s14d: an account naming the start filter otherwise answers the examples' second
    read with HTTP 400; the error says how to find the name to set."""
    emulator = leap_emulator_factory(wire_names=WireNames(start_date_param="startDate"))
    with LeapClient(emulator.url, EMULATOR_API_KEY) as client, pytest.raises(LeapAPIError) as err:
        list(client.iter_active_records("2026-03-10"))
    assert err.value.status == 400 and "`airflow leap probe` tells" in str(err.value)
    refused = fake_leap(lambda seen: Reply(422, {"title": "invalid date"}))  # review s15b
    with refused as server, pytest.raises(LeapAPIError, match=r"invalid date .*leap probe` tells"):
        list(LeapClient(server.url, "k:k").iter_active_records("2026-03-10"))


def test_active_records_come_once_from_a_server_that_ignores_filters(sleeps, caplog) -> None:
    records, active = active_window_records()
    with fake_leap(lambda seen: page(records)) as server:
        got = [r.ref_id for r in fake_client(server.url, sleeps).iter_active_records("2026-03-10")]
    assert sorted(got) == sorted(active)
    first, second = (dict(request.query) for request in server.requests)
    assert first["start-date"] == "2026-03-10T00:00:00Z" and "last-interaction-date" not in first
    assert second["last-interaction-date"] == "2026-03-10T00:00:00Z"


def test_https_to_a_plain_http_server_says_to_write_http(sleeps) -> None:
    """A host given without its scheme is https; the emulator speaks plain HTTP (review s13b)."""
    with fake_leap(lambda seen: page([])) as server:
        client = fake_client(server.url.replace("http://", "https://"), sleeps)
        with pytest.raises(LeapAPIError) as err:
            list(client.iter_connect_records())
    assert "the server seems to speak plain HTTP" in str(err.value), err.value
    assert "write http:// in the host" in str(err.value) and sleeps.waits == []


def test_an_unknown_host_is_a_dns_error_not_an_outage(sleeps) -> None:
    client = fake_client("https://no-such-host.invalid", sleeps)
    with pytest.raises(LeapAPIError, match=r"host name does not resolve .* not retried"):
        list(client.iter_connect_records())
    assert sleeps.waits == []


def test_connection_refused_is_retried_and_named(sleeps) -> None:
    with pytest.raises(LeapAPIError) as err:
        list(fake_client("http://127.0.0.1:1", sleeps).iter_connect_records())
    assert "ConnectionError: Connection refused; gave up after 3 attempt(s)" in str(err.value)
    assert sleeps.waits == [1.0, 2.0]


class LeakySession(requests.Session):
    """A transport failing with the Authorization header in its message, as requests does
    for a header it refuses."""

    def request(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        header = self.headers["Authorization"]
        raise requests.exceptions.InvalidHeader(f"Invalid header value: {header!r}")


def test_no_exception_cause_context_or_log_line_carries_the_key(sleeps, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    client = LeapClient("http://127.0.0.1:1", GOOD_KEY, session=LeakySession(), sleep=sleeps)
    with pytest.raises(LeapAPIError) as err:
        list(client.iter_connect_records())
    assert "InvalidHeader" in str(err.value)
    assert err.value.__cause__ is None and err.value.__context__ is None
    text = "".join(traceback.format_exception(err.value)) + repr(err.value) + caplog.text
    assert GOOD_KEY not in text and "very-secret" not in text
    ok, message = client.check()
    assert not ok and GOOD_KEY not in message
