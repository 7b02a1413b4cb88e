"""Emulator page: the emulator from Python and from pytest."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_leap.client import LeapClient
from airflow_provider_leap.retry import RetryPolicy
from airflow_provider_leap.testing import (
    EMULATOR_API_KEY,
    GUIDE_EXAMPLE_RECORD,
    Fault,
    FaultKind,
    LeapEmulator,
)


# --8<-- [start:python]
def read_through_faults() -> int:
    """Page through 300 records while the emulator rate-limits and fails a page."""
    with LeapEmulator(seed=1, records=300) as emu:
        emu.faults.fail_next(2, Fault(FaultKind.RATE_LIMIT, retry_after=0))  # two 429s first
        emu.faults.on_page(2, "503")  # then page 2 fails once
        client = LeapClient(
            emu.url,  # http://127.0.0.1:<free port>
            EMULATOR_API_KEY,
            page_size=100,
            retry=RetryPolicy(max_retries=3, max_wait=30),
            sleep=lambda seconds: None,  # a test seam: skip the real backoff waits
        )
        with client:
            records = list(client.iter_connect_records())
        assert len(records) == len(emu.records)
        statuses = [r.status for r in emu.requests]
        assert statuses == [429, 429, 200, 503, 200, 200]
        return len(records)


# --8<-- [end:python]


# --8<-- [start:pytest]
def test_client_reads_every_record(leap_emulator: LeapEmulator) -> None:
    """``leap_emulator``: the session's emulator, reset before and after the test."""
    client = LeapClient(leap_emulator.url, leap_emulator.api_key, page_size=200)
    assert len(list(client.iter_connect_records())) == len(leap_emulator.records)
    pages = -(-len(leap_emulator.records) // 200)  # 500 records by default: 3 pages
    assert leap_emulator.request_log.count("/v1.1/connections", status=200) == pages


def test_hook_against_odd_records(
    leap_emulator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``leap_emulator_factory``: a private emulator with its own records and key."""
    from airflow_provider_leap.hooks.leap import LeapHook, connection_json

    odd = {**GUIDE_EXAMPLE_RECORD, "id": "x_1_odd", "connection_status": "ON_HOLD"}
    emu = leap_emulator_factory(records=[GUIDE_EXAMPLE_RECORD, odd], api_key="partner:test")
    monkeypatch.setenv("AIRFLOW_CONN_LEAP_TEST", connection_json(emu.url, "partner:test"))
    records = LeapHook("leap_test").get_connect_records()
    assert [r.connection_status for r in records] == ["ERROR", "ON_HOLD"]


# --8<-- [end:pytest]
