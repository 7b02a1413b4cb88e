"""TriageOperator in real DAG runs against the emulator: buckets reach downstream tasks."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from airflow_provider_leap.hooks.leap import connection_json
from airflow_provider_leap.operators.triage import TriageOperator
from airflow_provider_leap.storage import load_bucket
from airflow_provider_leap.testing import EMULATOR_API_KEY, FaultKind
from airflow_provider_leap.triage import BUCKETS, triage

DOWNSTREAM_DAG = """
import json, os
from datetime import datetime, timezone
from airflow.sdk import DAG, task
from airflow_provider_leap.operators.triage import TriageOperator
from airflow_provider_leap.triage import BUCKETS

with DAG("{dag_id}", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
         default_args={{"retries": {retries}, "retry_delay": 0}}) as dag:
    triage = TriageOperator(task_id="triage", page_size=100, {extra_args})

    @task
    def receive(bucket, items):
        from airflow_provider_leap.storage import load_bucket
        out = os.path.join(os.environ["LEAP_TEST_OUT"], bucket + ".json")
        with open(out, "w") as handle:
            json.dump(load_bucket(items), handle)

    for name in BUCKETS:
        receive.override(task_id="receive_" + name)(name, triage.output[name])
"""


def dag_source(dag_id: str, retries: int = 0, extra_args: str = "") -> str:
    return DOWNSTREAM_DAG.format(dag_id=dag_id, retries=retries, extra_args=extra_args)


@pytest.fixture
def out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LEAP_TEST_OUT", str(tmp_path))
    return tmp_path


def test_each_bucket_reaches_its_downstream_task(run_dag, leap_conn, emu, out_dir) -> None:
    result = run_dag("triage_buckets", dag_source("triage_buckets"))
    assert result.state == "success", result.task_states
    summary = result.xcoms[("triage", "return_value")]
    # Recompute with the operator's own clock reading: the same records must give the same buckets.
    now = datetime.fromisoformat(summary["now"].replace("Z", "+00:00"))
    expected = triage(emu.records, now=now)
    assert summary["counts"] == expected.summary["counts"]
    for name in BUCKETS:
        pushed = result.xcoms[("triage", name)]
        received = json.loads((out_dir / f"{name}.json").read_text())
        assert pushed == received == expected.buckets[name], name
    assert sum(summary["counts"].values()) == len(emu.records) - summary["duplicates_dropped"]
    assert all(summary["counts"][name] > 0 for name in BUCKETS)


def test_api_failure_mid_run_pushes_no_bucket(run_dag, emu, monkeypatch, out_dir) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_LEAP_DEFAULT", connection_json(emu.url, EMULATOR_API_KEY, max_retries=0)
    )
    emu.faults.on_page(3, FaultKind.UNAVAILABLE, times=None)
    result = run_dag("triage_fails", dag_source("triage_fails"))
    assert result.task_states["triage"] == "failed"
    assert not [k for (task, k) in result.xcoms if task == "triage" and not k.startswith("_link")]
    assert list(out_dir.iterdir()) == []
    assert [r.status for r in emu.requests] == [200, 200, 503]


def test_retry_after_failure_starts_clean_and_completes(run_dag, emu, monkeypatch, out_dir) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_LEAP_DEFAULT", connection_json(emu.url, EMULATOR_API_KEY, max_retries=0)
    )
    emu.faults.on_page(3, FaultKind.UNAVAILABLE, times=1)
    result = run_dag("triage_retry", dag_source("triage_retry", retries=1))
    assert result.state == "success", result.task_states
    summary = result.xcoms[("triage", "return_value")]
    assert summary["records_read"] == len(emu.records)
    assert [r.status for r in emu.requests][:3] == [200, 200, 503]
    received = sum(len(json.loads((out_dir / f"{n}.json").read_text())) for n in BUCKETS)
    assert received == len(emu.records) - summary["duplicates_dropped"]


def test_large_buckets_go_to_object_storage(run_dag, leap_conn, emu, out_dir, tmp_path) -> None:
    store = tmp_path / "store"
    args = f'bucket_storage="file://{store}", offload_threshold=10'
    result = run_dag("triage_offload", dag_source("triage_offload", extra_args=args))
    assert result.state == "success", result.task_states
    counts = result.xcoms[("triage", "return_value")]["counts"]
    for name in BUCKETS:
        value = result.xcoms[("triage", name)]
        received = json.loads((out_dir / f"{name}.json").read_text())
        if counts[name] > 10:
            assert isinstance(value, str) and value.endswith(f"{name}.jsonl")
            assert Path(value.removeprefix("file://")).is_file()
            assert load_bucket(value) == received
        else:
            assert value == received
        assert len(received) == counts[name]


def test_filters_are_templated_and_string_dates_parsed(run_dag, leap_conn, emu, out_dir) -> None:
    args = (
        # The issue's own example: renders as "2026-11-25 01:02:03.456+00:00", parsed as a date.
        'interacted_after="{{ dag_run.run_after - macros.timedelta(days=3) }}", quiet_period=0'
    )
    result = run_dag("triage_templated", dag_source("triage_templated", extra_args=args))
    assert result.state == "success", result.task_states
    (request,) = [r for r in emu.requests if r.path == "/v1.1/connections"][:1]
    sent = dict(request.query)["last-interaction-date"]
    assert sent.endswith("Z")
    cutoff = datetime.fromisoformat(sent.replace("Z", "+00:00"))
    assert abs(cutoff - (datetime.now(timezone.utc) - timedelta(days=3))) < timedelta(minutes=5)
    summary = result.xcoms[("triage", "return_value")]
    assert 0 < summary["records_read"] < len(emu.records)
    assert summary["counts"]["too_recent"] == 0


def test_ref_ids_filter(run_dag, leap_conn, emu, out_dir) -> None:
    args = "ref_ids=['Test1012']"
    result = run_dag("triage_ref_ids", dag_source("triage_ref_ids", extra_args=args))
    pushed = result.xcoms[("triage", "utility_error")]
    assert [i["ref_id"] for i in pushed] == ["Test1012"]
    assert pushed[0]["reason"] == "error:USER_CANCELED"


def test_operator_arguments_are_checked_early() -> None:
    with pytest.raises(ValueError, match="quiet_period"):
        TriageOperator(task_id="t", quiet_period=-1)
    assert TriageOperator(task_id="t", quiet_period=600).quiet_period == timedelta(minutes=10)
    assert set(TriageOperator.template_fields) >= {"ref_ids", "started_after", "interacted_after"}


def test_now_is_templated_and_a_run_with_no_logical_date_triages_at_run_after(
    run_dag, leap_conn, emu, out_dir
) -> None:
    args = 'now="{{ dag_run.run_after }}"'
    run_after = emu.now - timedelta(days=2)
    result = run_dag(
        "triage_now",
        dag_source("triage_now", extra_args=args),
        logical_date=None,
        run_after=run_after,
    )
    assert result.state == "success", result.task_states
    summary = result.xcoms[("triage", "return_value")]
    assert datetime.fromisoformat(summary["now"].replace("Z", "+00:00")) == run_after
    expected = triage(emu.records, now=run_after)
    assert summary["counts"] == expected.summary["counts"]
