"""Fault tolerance at scale: seeded chaos over tens of thousands of records, sized for CI."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from airflow_provider_leap.client import LeapClient
from airflow_provider_leap.errors import LeapAPIError
from airflow_provider_leap.hooks.leap import connection_json
from airflow_provider_leap.retry import RetryPolicy
from airflow_provider_leap.testing import (
    DEFAULT_CHAOS_KINDS,
    EMULATOR_API_KEY,
    Fault,
    FaultKind,
)
from airflow_provider_leap.triage import BUCKETS

RECORDS = 10_000


@pytest.fixture
def big(leap_emulator_factory):
    return leap_emulator_factory(seed=11, records=RECORDS)


@pytest.mark.parametrize("seed", [1, 2])
def test_chaos_delivers_every_record_exactly_once(big, sleeps, seed) -> None:
    # A fifth of the requests: 429 with Retry-After, 500/502/503, connection resets, and
    # answers slower than the client's timeout.
    kinds = (*DEFAULT_CHAOS_KINDS, Fault(FaultKind.SLOW, delay=0.4))
    big.faults.chaos(0.2, seed=seed, kinds=kinds)
    policy = RetryPolicy(max_retries=8, max_wait=600)
    with LeapClient(big.url, EMULATOR_API_KEY, timeout=0.2, sleep=sleeps, retry=policy) as client:
        got = Counter(r.id for r in client.iter_connect_records(page_size=200))
    assert got == Counter(r["id"] for r in big.records)
    faults = Counter(r.fault for r in big.requests if r.fault)
    assert sum(faults.values()) >= 3 and len(faults) >= 2  # the run really met faults ...
    assert len(sleeps.waits) >= sum(faults.values()) - faults.get(
        "slow", 0
    )  # ... and rode them out
    pages = -(-RECORDS // 200)
    assert sum(1 for r in big.requests if r.status == 200) >= pages


def test_chaos_with_reference_id_batches(big, sleeps) -> None:
    big.faults.chaos(0.1, seed=5)
    wanted = sorted({r["ref_id"] for r in big.records[::7]})
    with LeapClient(big.url, EMULATOR_API_KEY, sleep=sleeps) as client:
        got = Counter(r.id for r in client.iter_connect_records(ref_ids=wanted))
    assert got == Counter(r["id"] for r in big.records if r["ref_id"] in set(wanted))


def test_outage_longer_than_the_bound_fails_with_a_clear_error(big, sleeps) -> None:
    big.faults.outage()
    policy = RetryPolicy(max_retries=5, max_wait=20, jitter=0)
    client = LeapClient(big.url, EMULATOR_API_KEY, sleep=sleeps, retry=policy)
    with client, pytest.raises(LeapAPIError) as err:
        list(client.iter_connect_records())
    assert "HTTP 503" in str(err.value) and "still failing after 4 retries" in str(err.value)
    assert sum(sleeps.waits) <= 20  # bounded by max_wait, not by max_retries alone


TRIAGE_DAG = """
import json, os
from datetime import datetime, timezone
from airflow.sdk import DAG, task
from airflow_provider_leap.operators.triage import TriageOperator
from airflow_provider_leap.triage import BUCKETS

with DAG("chaos_outage", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
         default_args={"retries": 1, "retry_delay": 0}) as dag:
    triage = TriageOperator(task_id="triage")

    @task
    def count(buckets):
        with open(os.environ["LEAP_TEST_OUT"], "w") as handle:
            json.dump({name: len(items) for name, items in buckets.items()}, handle)

    count({name: triage.output[name] for name in BUCKETS})
"""


def test_outage_fails_the_try_and_the_retry_completes(run_dag, big, monkeypatch, tmp_path):
    out = tmp_path / "counts.json"
    monkeypatch.setenv("LEAP_TEST_OUT", str(out))
    extras = {"max_retries": 2, "retry_backoff": 0.01, "max_retry_wait": 5}
    monkeypatch.setenv(
        "AIRFLOW_CONN_LEAP_DEFAULT", connection_json(big.url, EMULATOR_API_KEY, **extras)
    )
    big.faults.on_page(10, FaultKind.UNAVAILABLE, times=5)  # try 1 gives up on page 10
    result = run_dag("chaos_outage", TRIAGE_DAG)
    assert result.state == "success", result.task_states
    statuses = [r.status for r in big.requests]
    assert statuses.count(503) == 5
    summary = result.xcoms[("triage", "return_value")]
    assert summary["records_read"] == RECORDS
    counts = json.loads(out.read_text())
    assert set(counts) == set(BUCKETS)
    assert sum(counts.values()) == RECORDS - summary["duplicates_dropped"]


def test_fifty_thousand_records_at_page_size_500_each_once(leap_emulator_factory, sleeps) -> None:
    emu = leap_emulator_factory(seed=50, records=50_000)
    with LeapClient(emu.url, EMULATOR_API_KEY, sleep=sleeps) as client:
        got = Counter(r.id for r in client.iter_connect_records(page_size=500))
    assert got == Counter(r["id"] for r in emu.records)
    assert len(emu.requests) == 100
