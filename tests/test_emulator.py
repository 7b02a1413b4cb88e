"""The Leap emulator over real HTTP: auth, paging and tokens, filters, meters, faults, data."""

from __future__ import annotations

import email.utils
import math
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
import requests
from leap_guide import guide_example

from airflow_provider_leap import wire
from airflow_provider_leap.models import parse_timestamp
from airflow_provider_leap.testing import (
    EMULATOR_API_KEY,
    Fault,
    FaultKind,
    LeapEmulator,
    generate_meters,
    generate_records,
    meters_visible_at,
)
from airflow_provider_leap.testing import data as emu_data

NAMES = wire.WireNames()
AUTH = {"Authorization": f"Bearer {EMULATOR_API_KEY}"}
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
TIMEOUT = 30  # a guard against a hung server, not a speed limit: generous for a loaded machine

# Typed again from Leap's guide (tests/leap_guide.py), independently of data.py.
GUIDE_RECORD = guide_example()


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers.update(AUTH)
        yield session


@pytest.fixture(scope="module")
def fixed() -> Iterator[LeapEmulator]:
    """A module-wide instance with a fixed clock, for answers computed from the data."""
    with LeapEmulator(seed=3, records=2000, now=NOW) as emulator:
        yield emulator


def get(emulator: LeapEmulator, session: requests.Session, params: Any = None) -> requests.Response:
    return session.get(emulator.connections_url, params=params, timeout=TIMEOUT)


def search(emulator: LeapEmulator, session: requests.Session, body: Any) -> requests.Response:
    return session.post(emulator.meters_search_url, json=body, timeout=TIMEOUT)


def fetch_all(
    emulator: LeapEmulator, session: requests.Session, params: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Follow ``nextPageToken`` (requests URL-encodes it exactly once) to the last page."""
    out: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page_params = [*params, *([(NAMES.page_token_param, token)] if token else [])]
        response = get(emulator, session, page_params)
        assert response.status_code == 200, response.text
        body = response.json()
        out += body[NAMES.records_key]
        token = body.get(NAMES.next_token_key)
        if not token:
            return out


def search_all(
    emulator: LeapEmulator, session: requests.Session, body: dict[str, Any]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        response = search(emulator, session, {**body, **({"page_token": token} if token else {})})
        assert response.status_code == 200, response.text
        payload = response.json()
        out += payload["meters"]
        token = payload.get("next_page_token")
        if not token:
            return out


def us(text: str) -> datetime:
    value = parse_timestamp(text)
    assert value is not None, text
    return value


# --- auth and routing ------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["connections", "meters"])
def test_auth_answers_401_403_200(leap_emulator: LeapEmulator, endpoint: str) -> None:
    def call(headers: dict[str, str]) -> requests.Response:
        if endpoint == "connections":
            return requests.get(leap_emulator.connections_url, headers=headers, timeout=TIMEOUT)
        url = leap_emulator.meters_search_url
        return requests.post(url, headers=headers, json={}, timeout=TIMEOUT)

    unauthorized = {"title": "Unauthorized", "status": 401, "details": {}}
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}):
        response = call(headers)
        assert (response.status_code, response.json()) == (401, unauthorized)
    forbidden = call({"Authorization": "Bearer someone:else"})
    assert forbidden.status_code == 403
    assert forbidden.json() == {
        "title": "You do not have the necessary permissions for this operation",
        "status": 403,
        "details": {},
    }
    assert call(AUTH).status_code == 200


def test_unknown_path_404_and_undeclared_methods_405_in_json(
    leap_emulator: LeapEmulator, http: requests.Session
) -> None:
    missing = http.get(leap_emulator.url + "/v1/connections", timeout=TIMEOUT)
    assert missing.status_code == 404
    assert missing.json()["status"] == 404
    for url, allowed in (
        (leap_emulator.connections_url, "GET"),
        (leap_emulator.meters_search_url, "POST"),
    ):
        for method in ("POST", "PUT", "PATCH", "DELETE", "TRACE", "OPTIONS", "HEAD"):
            if method == allowed:
                continue
            wrong = http.request(method, url, timeout=TIMEOUT)
            assert wrong.status_code == 405, method
            assert wrong.headers["Allow"] == allowed
            if method != "HEAD":
                assert wrong.json()["details"] == {"allowed": [allowed], "method": method}


def test_requests_http_server_refuses_get_json_errors_too(leap_emulator: LeapEmulator) -> None:
    response = requests.get(
        leap_emulator.connections_url, headers={"X-Long": "a" * 70_000}, timeout=TIMEOUT
    )
    assert response.status_code == 431
    assert response.json() == {"title": "Line too long", "status": 431, "details": {}}


# --- connections: paging and page tokens --------------------------------------------------------


def test_paging_with_tokens_encoded_once_returns_every_record_once(
    leap_emulator: LeapEmulator, http: requests.Session
) -> None:
    records = fetch_all(leap_emulator, http, [(NAMES.page_size_param, "37")])
    assert [r["id"] for r in records] == [r["id"] for r in leap_emulator.records]
    assert records == leap_emulator.records
    assert len(leap_emulator.requests) == math.ceil(len(leap_emulator.records) / 37)
    assert fetch_all(leap_emulator, http, [(NAMES.page_size_param, "37")]) == records  # stable


def test_page_size_default_max_and_invalid(
    leap_emulator: LeapEmulator, http: requests.Session
) -> None:
    body = get(leap_emulator, http).json()
    assert len(body[NAMES.records_key]) == 100
    assert len(get(leap_emulator, http, {NAMES.page_size_param: 1000}).json()["connections"]) == 500
    last = get(leap_emulator, http, {NAMES.page_size_param: 1000}).json()
    assert NAMES.next_token_key not in last
    for bad in ("0", "1001", "abc", "-1", "", "1.5"):
        response = get(leap_emulator, http, {NAMES.page_size_param: bad})
        assert response.status_code == 400, bad


def test_tokens_need_url_encoding_and_mis_encoded_ones_are_400(
    leap_emulator: LeapEmulator, http: requests.Session
) -> None:
    token = get(leap_emulator, http, {NAMES.page_size_param: 5}).json()[NAMES.next_token_key]
    assert set("+/=&% ") <= set(token)
    base = f"{leap_emulator.connections_url}?{NAMES.page_size_param}=5&{NAMES.page_token_param}="
    good = http.get(base + quote(token, safe=""), timeout=TIMEOUT)
    assert good.status_code == 200
    assert good.json()["connections"] == leap_emulator.records[5:10]
    sent = [
        token,  # not encoded at all
        quote(quote(token, safe=""), safe=""),  # encoded twice
        quote(token, safe="/+="),  # partly encoded
        token[:-1],
        "abc",
        "",
    ]
    for raw in sent:
        response = http.get(base + raw, timeout=TIMEOUT)
        assert response.status_code == 400, raw
        body = response.json()
        assert body["title"] == "Invalid page token"
        assert body["status"] == 400
        assert isinstance(body["details"], dict)


def test_tokens_belong_to_their_endpoint(
    leap_emulator: LeapEmulator, http: requests.Session
) -> None:
    token = get(leap_emulator, http, {NAMES.page_size_param: 5}).json()[NAMES.next_token_key]
    meters = search(leap_emulator, http, {"page_token": token})
    assert meters.status_code == 400  # a Connect token is not a meters token
    assert meters.json()["title"] == "Invalid page token"
    meters_token = search(leap_emulator, http, {"page_size": 1}).json()["next_page_token"]
    connect = get(leap_emulator, http, {NAMES.page_token_param: meters_token})
    assert connect.status_code == 400


# --- connections: filters -----------------------------------------------------------------------


def test_ref_id_filter_with_url_sensitive_ids(fixed: LeapEmulator, http: requests.Session) -> None:
    refs = [*emu_data.TRICKY_REF_IDS, "Test1012", "no-such-ref"]
    found = fetch_all(fixed, http, [(NAMES.ref_id_param, r) for r in refs])
    assert found == [r for r in fixed.records if r["ref_id"] in refs]
    assert {r["ref_id"] for r in found} == set(refs) - {"no-such-ref"}
    query = fixed.requests[-1].query
    assert [v for k, v in query if k == NAMES.ref_id_param] == refs
    twice = Counter(r["ref_id"] for r in fixed.records)
    ref, count = twice.most_common(1)[0]
    assert count >= 2
    same_ref = fetch_all(fixed, http, [(NAMES.ref_id_param, ref)])
    assert len(same_ref) == count
    assert len({r["transmission_region"] for r in same_ref}) == count
    empty = get(fixed, http, {NAMES.ref_id_param: "no-such-ref"}).json()
    assert empty == {"connections": []}


@pytest.mark.parametrize("param", [NAMES.start_date_param, NAMES.last_interaction_param])
def test_date_filters_are_inclusive_and_accept_iso_forms(
    fixed: LeapEmulator, http: requests.Session, param: str
) -> None:
    key = {
        NAMES.start_date_param: "start_date_time_utc",
        NAMES.last_interaction_param: "last_interaction_date_time_utc",
    }[param]
    pivot = next(r[key] for r in fixed.records[100:] if "." in r[key])  # has milliseconds
    at = us(pivot)
    expected = [r["id"] for r in fixed.records if us(r[key]) >= at]
    assert 0 < len(expected) < len(fixed.records)
    plus_two = at.astimezone(timezone(timedelta(hours=2))).isoformat()
    for value in (pivot, at.isoformat(), plus_two):
        got = fetch_all(fixed, http, [(param, value), (NAMES.page_size_param, "1000")])
        assert [r["id"] for r in got] == expected, value


def test_combined_filters(fixed: LeapEmulator, http: requests.Session) -> None:
    since = NOW - timedelta(days=7)
    refs = [r["ref_id"] for r in fixed.records[1:400:3]]
    params = [(NAMES.ref_id_param, r) for r in refs]
    params += [(NAMES.last_interaction_param, since.isoformat()), (NAMES.page_size_param, "9")]
    got = fetch_all(fixed, http, params)
    expected = [
        r
        for r in fixed.records
        if r["ref_id"] in refs and us(r["last_interaction_date_time_utc"]) >= since
    ]
    assert got == expected
    assert expected


def test_bad_dates_and_unknown_or_repeated_params_are_400(
    leap_emulator: LeapEmulator, http: requests.Session
) -> None:
    bad_dates = ("yesterday", "2024-13-01T00:00:00Z", "2024-01-01T00:00:00", "2024-01-01", "")
    for value in (*bad_dates, "2024-01-01 00:00:00Z", "20240101T000000Z"):
        response = get(leap_emulator, http, {NAMES.start_date_param: value})
        assert response.status_code == 400, value
        assert response.json()["title"] == "Invalid date"
    # "+00:00" not URL-encoded arrives as " 00:00"
    url = (
        f"{leap_emulator.connections_url}?{NAMES.last_interaction_param}=2024-01-01T00:00:00+00:00"
    )
    assert http.get(url, timeout=TIMEOUT).status_code == 400
    assert get(leap_emulator, http, {"refId": "abc"}).status_code == 400
    repeated = [(NAMES.page_size_param, "5"), (NAMES.page_size_param, "6")]
    assert get(leap_emulator, http, repeated).status_code == 400


# --- meters -------------------------------------------------------------------------------------


def test_meters_search_limits(leap_emulator: LeapEmulator, http: requests.Session) -> None:
    max_ids = wire.METERS_MAX_REFERENCE_IDS
    ids = [f"ref-{i:04d}" for i in range(max_ids + 1)]
    too_many = search(leap_emulator, http, {"connection_reference_ids": ids})
    assert too_many.status_code == 400
    assert too_many.json()["details"] == {"fields": ["connection_reference_ids"]}
    assert search(leap_emulator, http, {"connection_reference_ids": ids[:max_ids]}).ok
    low, high = wire.METERS_PAGE_SIZE_RANGE
    for size in (low - 1, high + 1, "10", True, 1.5):
        assert search(leap_emulator, http, {"page_size": size}).status_code == 400, size
    assert len(search(leap_emulator, http, {"page_size": low}).json()["meters"]) == 1
    assert search(leap_emulator, http, {"page_size": high}).ok
    bad_bodies: list[Any] = [
        {"connection_reference_ids": []},
        {"connection_reference_ids": ["abc", "abc"]},
        {"connection_reference_ids": ["a/b"]},
        {"meter_ids": ["not-a-uuid"]},
        {"tags": []},
        {"load_types": ["SOLAR"]},
        {"transmission_region": "MISO"},
        {"exclude_archived": "yes"},
        {"created_after_date_time": "last week"},
        {"created_after_date_time": "2024-01-01T00:00:00"},
        [],
    ]
    for body in bad_bodies:
        response = search(leap_emulator, http, body)
        assert response.status_code == 400, body
        assert set(response.json()) == {"title", "status", "details"}
    # Valid in Leap's schema (it allows other fields): accepted, and the unknown field ignored.
    assert search(leap_emulator, http, {"connection_ref_ids": ["abc"]}).json()["meters"]
    raw = http.post(
        leap_emulator.meters_search_url,
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert raw.status_code == 400
    empty_body = http.post(leap_emulator.meters_search_url, timeout=TIMEOUT)
    assert empty_body.status_code == 200  # the request body is optional in Leap's spec


def test_meters_paging_visibility_and_shape(fixed: LeapEmulator, http: requests.Session) -> None:
    fixed.reset_requests()
    visible = meters_visible_at(generate_meters(fixed.records, fixed.seed), NOW)
    got = search_all(fixed, http, {"page_size": 7})
    assert got == visible == fixed.visible_meters()
    assert len(fixed.requests) == math.ceil(len(visible) / 7)
    by_ref: dict[str, list[dict[str, Any]]] = {}
    for record in fixed.records:
        by_ref.setdefault(record["ref_id"], []).append(record)
    per_record: Counter[tuple[str, str]] = Counter()
    delays = []
    for meter in fixed.meters:
        assert set(meter) >= {"meter_id", "partner_reference", "transmission_region", "audit"}
        assert meter["customer_classification"] in ("RESIDENTIAL", "COMMERCIAL")
        assert meter["utility"]["utility_name"]
        [ref] = meter["connection_references"]
        [source] = [
            r
            for r in by_ref[ref]
            if r["transmission_region"] == meter["transmission_region"]
            and r["connection_status"] == "COMPLETED"
        ]
        per_record[(ref, meter["transmission_region"])] += 1
        delay = us(meter["audit"]["created_at"]) - us(source["last_interaction_date_time_utc"])
        assert delay >= timedelta(hours=24)
        delays.append(delay)
    completed = [r for r in fixed.records if r["connection_status"] == "COMPLETED"]
    assert len(per_record) == len(completed)
    assert set(per_record.values()) == {1, 2}
    assert any(d > timedelta(hours=48) for d in delays)
    assert len(fixed.meters) > len(visible)  # recent completions have no meter yet
    fixed.advance(timedelta(days=5))
    try:
        assert search_all(fixed, http, {}) == fixed.meters
    finally:
        fixed.now = NOW


def test_meters_filters(fixed: LeapEmulator, http: requests.Session) -> None:
    visible = fixed.visible_meters()
    refs = sorted({m["connection_references"][0] for m in visible[::5]})[:100]
    got = search_all(fixed, http, {"connection_reference_ids": refs, "page_size": 3})
    assert got == [m for m in visible if m["connection_references"][0] in refs]
    since = us(visible[len(visible) // 2]["audit"]["created_at"])
    after = search_all(fixed, http, {"created_after_date_time": since.isoformat()})
    assert after == [m for m in visible if us(m["audit"]["created_at"]) >= since]
    before = search_all(fixed, http, {"created_before_date_time": since.isoformat()})
    assert before == [m for m in visible if us(m["audit"]["created_at"]) < since]
    modified = search_all(fixed, http, {"last_modified_date_time": since.isoformat()})
    assert modified == [m for m in visible if us(m["audit"]["updated_at"]) >= since]
    assert len(after) <= len(modified) < len(visible)
    pjm = search_all(fixed, http, {"transmission_region": "PJM", "meter_types": ["UTILITY_METER"]})
    assert pjm == [m for m in visible if m["transmission_region"] == "PJM"]
    some = [visible[0]["meter_id"], visible[-1]["meter_id"]]
    assert [m["meter_id"] for m in search_all(fixed, http, {"meter_ids": some})] == some
    partner = visible[3]["partner_reference"]
    by_partner = search_all(fixed, http, {"partner_references": [partner]})
    assert by_partner == [m for m in visible if m["partner_reference"] == partner]
    # Emulated meters carry no tags, groups, load types, archive flag or pending action...
    for body in (
        {"tags": ["x"]},
        {"customer_groups": ["g"]},
        {"load_types": ["HVAC"]},
        {"partner_action_required": True},
    ):
        assert search_all(fixed, http, body) == [], body
    assert search_all(fixed, http, {"exclude_archived": True}) == visible
    # ...and Leap's read schema gives a meter no enrollment status or action type to match.
    ignored = {"global_enrollment_statuses": ["ACTIVE"], "action_type": ["HAS_AMI"]}
    assert search_all(fixed, http, ignored) == visible


# --- faults ---------------------------------------------------------------------------------


def test_rate_limit_with_retry_after_seconds_or_http_date(
    leap_emulator: LeapEmulator, http: requests.Session
) -> None:
    faults = leap_emulator.faults
    faults.fail_next(1, Fault(FaultKind.RATE_LIMIT, retry_after=7))
    limited = get(leap_emulator, http)
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "7")
    assert limited.json()["status"] == 429
    assert get(leap_emulator, http).status_code == 200
    faults.fail_next(1, Fault(FaultKind.RATE_LIMIT, retry_after=30, retry_after_http_date=True))
    before = datetime.now(timezone.utc)
    dated = get(leap_emulator, http)
    after = datetime.now(timezone.utc)
    when = email.utils.parsedate_to_datetime(dated.headers["Retry-After"])
    # 30 s after the server's clock, in whole seconds: bracketed, however long the request took.
    assert before + timedelta(seconds=29) < when <= after + timedelta(seconds=30)
    faults.fail_next(1, Fault(FaultKind.RATE_LIMIT, retry_after=None))
    bare = search(leap_emulator, http, {})
    assert bare.status_code == 429
    assert "Retry-After" not in bare.headers


def test_server_errors(leap_emulator: LeapEmulator, http: requests.Session) -> None:
    leap_emulator.faults.fail_next(1, "500").fail_next(1, "502").fail_next(1, "503")
    plain = get(leap_emulator, http)
    assert plain.status_code == 500
    assert plain.json() == "An error happened whilst processing your request"
    for status in (502, 503):
        response = get(leap_emulator, http)
        assert response.status_code == status
        assert response.json()["status"] == status
    assert get(leap_emulator, http).ok
    assert [r.fault for r in leap_emulator.requests] == [
        "server-error",
        "bad-gateway",
        "unavailable",
        None,
    ]


def test_slow_answer_and_client_timeout(
    leap_emulator: LeapEmulator, http: requests.Session
) -> None:
    leap_emulator.faults.fail_next(1, Fault(FaultKind.SLOW, delay=0.3))
    started = time.monotonic()
    assert get(leap_emulator, http).status_code == 200
    assert time.monotonic() - started >= 0.3
    leap_emulator.faults.fail_next(1, Fault(FaultKind.SLOW, delay=0.3))
    with pytest.raises(requests.Timeout):
        http.get(leap_emulator.connections_url, timeout=0.1)
    # On a loaded machine the server may take the request in only after the client gave up:
    # wait until it has (it took the fault), so the reset below surely comes after its arrival.
    deadline = time.monotonic() + 30
    while leap_emulator.faults.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not leap_emulator.faults.active
    leap_emulator.reset_requests()
    # The abandoned answer goes out at most 0.3 s later, after the reset: not logged, so it
    # cannot land in the next test's log. (Waiting is the point here, not a backoff; should the
    # answer be later still, the test proves less but does not fail.)
    time.sleep(1.0)
    assert get(leap_emulator, http).status_code == 200
    assert [r.fault for r in leap_emulator.requests] == [None]


def test_malformed_page_and_repeated_token(
    leap_emulator: LeapEmulator, http: requests.Session
) -> None:
    faults = leap_emulator.faults
    faults.on_page(2, FaultKind.MALFORMED, path=NAMES.connections_path)
    size = {NAMES.page_size_param: 10}
    token = get(leap_emulator, http, size).json()[NAMES.next_token_key]
    broken = get(leap_emulator, http, {**size, NAMES.page_token_param: token})
    assert broken.status_code == 200
    with pytest.raises(ValueError):
        broken.json()
    again = get(leap_emulator, http, {**size, NAMES.page_token_param: token}).json()
    assert again["connections"] == leap_emulator.records[10:20]
    faults.on_page(2, "repeat-token")
    stuck = get(leap_emulator, http, {**size, NAMES.page_token_param: token}).json()
    assert stuck[NAMES.next_token_key] == token
    assert stuck["connections"] == leap_emulator.records[10:20]


def test_connection_reset(leap_emulator: LeapEmulator, http: requests.Session) -> None:
    leap_emulator.faults.fail_next(1, "reset")
    with pytest.raises(requests.ConnectionError):
        get(leap_emulator, http)
    assert get(leap_emulator, http).ok
    assert [r.status for r in leap_emulator.requests] == [None, 200]


def test_outage_every_nth_and_faults_never_hide_auth_or_bad_requests(
    leap_emulator: LeapEmulator, http: requests.Session
) -> None:
    faults = leap_emulator.faults
    faults.outage(3)
    assert [get(leap_emulator, http).status_code for _ in range(4)] == [503, 503, 503, 200]
    faults.outage()
    forbidden = requests.get(
        leap_emulator.connections_url, headers={"Authorization": "Bearer x"}, timeout=TIMEOUT
    )
    assert forbidden.status_code == 403
    assert get(leap_emulator, http, {NAMES.page_token_param: "nope"}).status_code == 400
    assert [get(leap_emulator, http).status_code for _ in range(3)] == [503] * 3
    faults.end_outage()
    assert get(leap_emulator, http).ok
    faults.clear().every(3, "502")
    assert [get(leap_emulator, http).status_code for _ in range(6)] == [200, 200, 502] * 2


def test_chaos_is_seeded_and_a_retrying_client_gets_every_record_once(
    leap_emulator: LeapEmulator, http: requests.Session
) -> None:
    def statuses(seed: int) -> list[int | None]:
        leap_emulator.faults.clear().chaos(0.4, seed=seed, kinds=["429", "503", "malformed"])
        leap_emulator.reset_requests()
        for _ in range(60):
            get(leap_emulator, http, {NAMES.page_size_param: 1})
        return [r.status if r.fault != "malformed" else -1 for r in leap_emulator.requests]

    first = statuses(11)
    assert first == statuses(11)
    assert first != statuses(12)
    assert 10 < sum(s != 200 for s in first) < 40

    leap_emulator.faults.clear().chaos(0.3, seed=5)
    seen: list[str] = []
    token: str | None = None
    attempts = 0
    while True:
        attempts += 1
        params = {NAMES.page_size_param: 25, **({NAMES.page_token_param: token} if token else {})}
        try:
            response = get(leap_emulator, http, params)
        except requests.ConnectionError:
            continue
        if response.status_code != 200:
            continue
        body = response.json()
        seen += [r["id"] for r in body["connections"]]
        token = body.get(NAMES.next_token_key)
        if not token:
            break
    assert seen == [r["id"] for r in leap_emulator.records]
    assert attempts > math.ceil(len(seen) / 25)


# --- observability, plugin, CLI -------------------------------------------------------------


def test_request_log_records_and_resets(
    leap_emulator: LeapEmulator, http: requests.Session
) -> None:
    assert leap_emulator.requests == []  # the fixture reset what earlier tests left
    assert not leap_emulator.faults.active
    get(leap_emulator, http, [(NAMES.ref_id_param, "a b+c"), (NAMES.ref_id_param, "Test1012")])
    search(leap_emulator, http, {"page_size": 3})
    conn, meters = leap_emulator.requests
    assert (conn.method, conn.path, conn.status) == ("GET", NAMES.connections_path, 200)
    assert conn.query == [(NAMES.ref_id_param, "a b+c"), (NAMES.ref_id_param, "Test1012")]
    assert (meters.method, meters.path, meters.body) == (
        "POST",
        wire.METERS_SEARCH_PATH,
        {"page_size": 3},
    )
    assert leap_emulator.request_log.count(wire.METERS_SEARCH_PATH) == 1
    leap_emulator.reset_requests()
    assert leap_emulator.requests == []


def test_factory_fixture_custom_key_wire_names_and_records(
    leap_emulator_factory: Any, http: requests.Session
) -> None:
    names = wire.WireNames(
        connections_path="/v2/connect",
        ref_id_param="refId",
        records_key="data",
        next_token_key="next_page_token",
        page_size_param="limit",
    )
    odd = [{**GUIDE_RECORD, "connection_status": "SOMETHING_NEW"}, {"ref_id": "bare"}]
    emulator = leap_emulator_factory(api_key="abc:def", records=odd, wire_names=names)
    url = emulator.url + "/v2/connect"
    assert http.get(url, timeout=TIMEOUT).status_code == 403  # the session sends the default key
    response = requests.get(
        url,
        params={"refId": "bare", "limit": "1"},
        headers={"Authorization": "Bearer abc:def"},
        timeout=TIMEOUT,
    )
    assert response.json() == {"data": [{"ref_id": "bare"}]}
    assert emulator.meters == []


def test_cli_serves_until_sigterm(tmp_path: Any) -> None:
    command = [sys.executable, "-m", "airflow_provider_leap.testing", "--port", "0"]
    command += ["--records", "40", "--seed", "2", "--api-key", "cli:key", "--fail-next", "1:429"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"url=(\S+) api_key=from-flag ", line)
        assert match, line
        assert "cli:key" not in line  # the banner never prints the key
        url = match.group(1)
        headers = {"Authorization": "Bearer cli:key"}
        assert (
            requests.get(url + NAMES.connections_path, headers=headers, timeout=TIMEOUT).status_code
            == 429
        )
        body = requests.get(url + NAMES.connections_path, headers=headers, timeout=TIMEOUT).json()
        assert len(body["connections"]) == 40
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None
        assert process.stderr.read() == ""  # quiet by default
    finally:
        if process.poll() is None:
            process.kill()


def test_plugin_import_is_light_and_nothing_imports_airflow() -> None:
    code = (
        "import sys, airflow_provider_leap.testing.pytest_plugin as p;"
        "assert 'airflow_provider_leap.testing.server' not in sys.modules;"
        "import airflow_provider_leap.testing.server, airflow_provider_leap.testing.__main__;"
        "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- data -----------------------------------------------------------------------------------


def test_same_seed_same_data_and_server_serves_generated_data(leap_emulator: LeapEmulator) -> None:
    assert generate_records(7, 300, NOW) == generate_records(7, 300, NOW)
    assert generate_records(7, 300, NOW) != generate_records(8, 300, NOW)
    records = generate_records(7, 300, NOW)
    assert generate_meters(records, 7) == generate_meters(records, 7)
    assert leap_emulator.records == generate_records(0, 500, leap_emulator.initial_now)


def test_guide_example_is_record_zero_verbatim(
    leap_emulator: LeapEmulator, http: requests.Session
) -> None:
    assert leap_emulator.records[0] == GUIDE_RECORD
    assert list(leap_emulator.records[0]) == list(GUIDE_RECORD)
    served = get(leap_emulator, http, {NAMES.ref_id_param: "Test1012"})
    assert served.json()["connections"] == [GUIDE_RECORD]
    assert emu_data.GUIDE_EXAMPLE_RECORD == GUIDE_RECORD


def _requirement_met(utilities: list[dict[str, Any]]) -> bool:
    required = [u for u in utilities if u["utility_is_required"]]
    if required:
        return all(u["status"] == "CONNECTED" for u in required)
    return any(u["status"] == "CONNECTED" for u in utilities)


@pytest.mark.parametrize("count", [emu_data.MIN_COVERAGE_RECORDS, 500])
def test_data_covers_every_case_coherently(count: int) -> None:
    records = generate_records(0, count, NOW)
    utilities = [u for r in records for u in r["utility_connections"]]
    assert {r["connection_status"] for r in records} == {
        "COMPLETED",
        "NOT_STARTED",
        "PARTIAL",
        "ERROR",
        emu_data.UNKNOWN_STATUS,  # unknown is data: a status Leap may add later
    }
    assert {u["status"] for u in utilities} == {
        "CONNECTED",
        "NOT_CONNECTED",
        "ERROR",
        emu_data.UNKNOWN_UTILITY_STATUS,
    }
    assert any(
        r["connection_status"] == "PARTIAL" and not r["utility_connections"] for r in records
    )
    assert {r["transmission_region"] for r in records} == set(emu_data.REGIONS)
    agreement_values = {v for r in records for v in r["agreements"].values()}
    assert agreement_values == {"NOT_REQUIRED", "PENDING", "COMPLETED", "SIGNED"}
    codes = {u["error_code"] for u in utilities} - {None}
    assert "USER_CANCELED" in codes
    assert len(codes) >= (3 if count < 100 else len(emu_data.ERROR_CODES))
    required_counts = [
        sum(u["utility_is_required"] for u in r["utility_connections"]) for r in records
    ]
    assert sum(c >= 2 for c in required_counts) >= 3  # commercial, several required
    assert any(
        len(r["utility_connections"]) >= 2 and c == 0
        for r, c in zip(records, required_counts, strict=True)
    )
    assert any(
        r["connection_status"] == "PARTIAL"
        and any(
            u["utility_is_required"] and u["status"] == "NOT_CONNECTED"
            for u in r["utility_connections"]
        )
        and any(
            not u["utility_is_required"] and u["status"] == "CONNECTED"
            for u in r["utility_connections"]
        )
        for r in records
    )
    regions_per_ref: dict[str, set[str]] = {}
    for r in records:
        regions_per_ref.setdefault(r["ref_id"], set()).add(r["transmission_region"])
    assert any(len(v) >= 2 for v in regions_per_ref.values())
    assert len({r["id"] for r in records}) == len(records)
    ages = [NOW - us(r["last_interaction_date_time_utc"]) for r in records[1:]]
    assert all(timedelta(0) <= a <= timedelta(days=30) for a in ages)
    recent = sum(a < timedelta(hours=1) for a in ages) / len(ages)
    assert recent >= (0.01 if count >= 500 else 2 / len(ages))
    if count >= 500:
        assert recent <= 0.08
        assert max(ages) > timedelta(days=25)
    stamps = [r["last_interaction_date_time_utc"] for r in records]
    assert any("." in s for s in stamps) and any("." not in s for s in stamps)
    forbidden = set("/\\?][{}!#$%^&*()<>|")
    for r in records:
        assert list(r) == list(GUIDE_RECORD)
        assert 3 <= len(r["ref_id"]) <= 256 and not forbidden & set(r["ref_id"])
        assert re.fullmatch(
            rf"{r['transmission_region']}_[0-9a-f]{{8}}(-[0-9a-f]{{4}}){{3}}-[0-9a-f]{{12}}_"
            + re.escape(r["ref_id"]),
            r["id"],
        )
        start, last = us(r["start_date_time_utc"]), us(r["last_interaction_date_time_utc"])
        assert start <= last
        for u in r["utility_connections"]:
            assert list(u) == list(GUIDE_RECORD["utility_connections"][0])
            assert (u["error_code"] is not None) == (u["status"] == "ERROR")
            assert (
                start
                <= us(u["start_date_time_utc"])
                <= us(u["last_interaction_date_time_utc"])
                <= last
            )
        if r["utility_connections"]:
            assert last == max(
                us(u["last_interaction_date_time_utc"]) for u in r["utility_connections"]
            )
        outstanding = [v for v in r["agreements"].values() if v == "PENDING"]
        done = _requirement_met(r["utility_connections"]) and not outstanding
        status = r["connection_status"]
        if status == "COMPLETED":
            assert r["utility_connections"] and done
        elif status == "NOT_STARTED":
            assert all(u["status"] == "NOT_CONNECTED" for u in r["utility_connections"])
            assert set(r["agreements"].values()) == {"NOT_REQUIRED"}
        elif status == "ERROR":
            assert any(u["status"] == "ERROR" for u in r["utility_connections"]) and not done
        elif status == "PARTIAL" and (not r["utility_connections"] or done):
            continue  # deliberate anomalies, for the triage's needs_review bucket
        elif status == "PARTIAL":
            assert not done
            assert all(u["status"] != "ERROR" for u in r["utility_connections"])
    chars = set("".join(r["ref_id"] for r in records))
    assert set("-_.+@:= ") <= chars


def test_fifty_thousand_records_page_completely(
    leap_emulator_factory: Any, http: requests.Session
) -> None:
    emulator = leap_emulator_factory(records=50_000, seed=1)
    ids = [r["id"] for r in fetch_all(emulator, http, [(NAMES.page_size_param, "1000")])]
    assert len(ids) == len(set(ids)) == 50_000
