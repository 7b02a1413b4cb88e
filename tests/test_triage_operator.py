"""TriageOperator in real DAG runs against the emulator: buckets reach downstream tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fake_server import active_window_records
from shared_execution_api import child_env

from airflow_provider_leap.hooks.leap import connection_json
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
        out = os.path.join(os.environ["LEAP_TEST_OUT"], bucket + ".json")
        with open(out, "w") as handle:
            json.dump(items, handle)

    for name in BUCKETS:
        receive.override(task_id="receive_" + name)(name, triage.output[name])
"""


def dag_source(dag_id: str, retries: int = 0, extra_args: str = "") -> str:
    return DOWNSTREAM_DAG.format(dag_id=dag_id, retries=retries, extra_args=extra_args)


@pytest.fixture
def out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LEAP_TEST_OUT", str(tmp_path))
    return tmp_path


@pytest.mark.usefixtures("leap_conn")
def test_each_bucket_reaches_its_downstream_task(run_dag, leap_emulator, out_dir) -> None:
    result = run_dag("triage_buckets", dag_source("triage_buckets"))
    assert result.state == "success", result.task_states
    summary = result.xcoms[("triage", "return_value")]
    # Recompute with the operator's own clock reading: the same records must give the same buckets.
    now = datetime.fromisoformat(summary["now"].replace("Z", "+00:00"))
    expected = triage(leap_emulator.records, now=now)
    assert summary["counts"] == expected.summary["counts"]
    for name in BUCKETS:
        pushed = result.xcoms[("triage", name)]
        received = json.loads((out_dir / f"{name}.json").read_text())
        assert pushed == received == expected.buckets[name], name
    assert (
        sum(summary["counts"].values())
        == len(leap_emulator.records) - summary["duplicates_dropped"]
    )
    assert summary["counts"]["utility_error"] > 0 and summary["records_read"] > 0


def test_api_failure_mid_run_pushes_no_bucket(run_dag, leap_emulator, monkeypatch, out_dir) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_LEAP_DEFAULT",
        connection_json(leap_emulator.url, EMULATOR_API_KEY, max_retries=0),
    )
    leap_emulator.faults.on_page(3, FaultKind.UNAVAILABLE, times=None)
    result = run_dag("triage_fails", dag_source("triage_fails"))
    assert result.task_states["triage"] == "failed"
    assert not [k for (task, k) in result.xcoms if task == "triage" and not k.startswith("_link")]
    assert list(out_dir.iterdir()) == []
    assert [r.status for r in leap_emulator.requests] == [200, 200, 503]


def test_retry_after_failure_starts_clean_and_completes(
    run_dag, leap_emulator, monkeypatch, out_dir
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_LEAP_DEFAULT",
        connection_json(leap_emulator.url, EMULATOR_API_KEY, max_retries=0),
    )
    leap_emulator.faults.on_page(3, FaultKind.UNAVAILABLE, times=1)
    result = run_dag("triage_retry", dag_source("triage_retry", retries=1))
    assert result.state == "success", result.task_states
    summary = result.xcoms[("triage", "return_value")]
    assert summary["records_read"] == len(leap_emulator.records)
    assert [r.status for r in leap_emulator.requests][:3] == [200, 200, 503]
    received = sum(len(json.loads((out_dir / f"{n}.json").read_text())) for n in BUCKETS)
    assert received == len(leap_emulator.records) - summary["duplicates_dropped"]


# The same DAG, plus a task mapped over one bucket, run in a fresh process: Airflow picks its
# XCom backend once, at import.
RUN_WITH_BACKEND = """
import shared_execution_api
shared_execution_api.share()  # before Airflow runs a task
import importlib.util, json, sys
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session

spec = importlib.util.spec_from_file_location("dag_file", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
run = module.dag.test()
with create_session() as session:
    rows = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=module.dag.dag_id)).all()
    stored = {f"{row.task_id}/{row.key}/{row.map_index}": row.value for row in rows}
print(json.dumps({"state": str(run.state), "stored": stored}, default=str))
"""

MAPPED = """
    from airflow_provider_leap.operators.buckets import bucket_items

    @task
    def one(item):
        return item["ref_id"]

    one.expand(item=bucket_items(triage.output["not_started"]))
"""


def test_large_buckets_stay_out_of_the_metadata_db(
    airflow_db, leap_conn, leap_emulator, out_dir, tmp_path
) -> None:
    """Airflow's XComObjectStorageBackend (common-io provider) writes every bucket above its
    threshold to object storage, and downstream and mapped tasks still receive the lists."""
    dag_file = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "triage_offload.py"
    dag_file.parent.mkdir(parents=True, exist_ok=True)
    ref_ids = sorted({r["ref_id"] for r in leap_emulator.records})[:60]  # a few items a bucket
    source = dag_source("triage_offload", extra_args=f"ref_ids={ref_ids!r}") + MAPPED
    dag_file.write_text(source, encoding="utf-8")
    store = tmp_path / "xcom"
    env = {
        **os.environ,
        "AIRFLOW__CORE__XCOM_BACKEND": (
            "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend"
        ),
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"file://{store}",
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": "1000",  # bytes
    }
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITH_BACKEND, str(dag_file)],
        env=child_env(env), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["state"] == "success"
    offloaded = 0
    for name in BUCKETS:
        received = json.loads((out_dir / f"{name}.json").read_text())
        stored = result["stored"][f"triage/{name}/-1"]
        if len(json.dumps(received)) >= 1000:  # in object storage: the database holds its path
            offloaded += 1
            assert stored.startswith(f"file://{store}") and Path(stored[7:]).is_file()
        else:
            assert stored == received
    assert offloaded >= 2
    not_started = json.loads((out_dir / "not_started.json").read_text())
    mapped = [v for k, v in result["stored"].items() if k.startswith("one/return_value/")]
    assert sorted(mapped) == sorted(item["ref_id"] for item in not_started) != []


@pytest.mark.usefixtures("leap_conn", "out_dir")
def test_filters_are_templated_and_string_dates_parsed(run_dag, leap_emulator) -> None:
    args = (
        # The docs' own example: renders as "2026-11-25 01:02:03.456+00:00", parsed as a date.
        'interacted_after="{{ dag_run.run_after - macros.timedelta(days=3) }}", quiet_period=0'
    )
    result = run_dag("triage_templated", dag_source("triage_templated", extra_args=args))
    assert result.state == "success", result.task_states
    (request,) = [r for r in leap_emulator.requests if r.path == "/v1.1/connections"][:1]
    sent = dict(request.query)["last-interaction-date"]
    assert sent.endswith("Z")
    cutoff = datetime.fromisoformat(sent.replace("Z", "+00:00"))
    assert abs(cutoff - (datetime.now(timezone.utc) - timedelta(days=3))) < timedelta(minutes=5)
    summary = result.xcoms[("triage", "return_value")]
    assert 0 < summary["records_read"] < len(leap_emulator.records)
    assert summary["counts"]["too_recent"] == 0


@pytest.mark.usefixtures("leap_conn", "out_dir")
def test_ref_ids_filter(run_dag, leap_emulator) -> None:
    args = "ref_ids=['Test1012']"
    result = run_dag("triage_ref_ids", dag_source("triage_ref_ids", extra_args=args))
    pushed = result.xcoms[("triage", "utility_error")]
    assert [i["ref_id"] for i in pushed] == ["Test1012"]
    assert pushed[0]["reason"] == "error:USER_CANCELED"


@pytest.mark.usefixtures("leap_conn", "out_dir")
def test_now_is_templated_and_a_run_with_no_logical_date_triages_at_run_after(
    run_dag, leap_emulator
) -> None:
    args = 'now="{{ dag_run.run_after }}"'
    run_after = leap_emulator.now - timedelta(days=2)
    result = run_dag(
        "triage_now",
        dag_source("triage_now", extra_args=args),
        logical_date=None,
        run_after=run_after,
    )
    assert result.state == "success", result.task_states
    summary = result.xcoms[("triage", "return_value")]
    assert datetime.fromisoformat(summary["now"].replace("Z", "+00:00")) == run_after
    expected = triage(leap_emulator.records, now=run_after)
    assert summary["counts"] == expected.summary["counts"]


def test_a_misspelt_bucket_fails_when_the_dag_is_parsed(tmp_path: Path) -> None:
    """s13b F4: ``triage.output["not_startd"]`` failed only when its task ran."""
    from airflow.dag_processing.dagbag import DagBag

    source = dag_source("triage_typo").replace("triage.output[name]", "triage.output[name[:-1]]")
    (tmp_path / "typo.py").write_text(source)
    bag = DagBag(dag_folder=str(tmp_path))
    (error,) = bag.import_errors.values()
    assert "triage.output['complete']: TriageOperator pushes no such XCom" in error, error
    assert "its buckets are completed, not_started" in error


@pytest.mark.usefixtures("out_dir")
def test_active_after_triages_customers_who_never_interacted(
    run_dag, leap_emulator_factory, monkeypatch
) -> None:
    """Review s14c: NOT_STARTED customers with no last interaction, left out of Leap's
    last-interaction filter, were never read by an hourly DAG (none was ever messaged)."""
    records, active = active_window_records()
    emulator = leap_emulator_factory(records=records)
    monkeypatch.setenv("AIRFLOW_CONN_LEAP_DEFAULT", connection_json(emulator.url, EMULATOR_API_KEY))
    args = 'active_after="2026-03-10", now="2026-03-13"'
    result = run_dag("triage_active", dag_source("triage_active", extra_args=args))
    assert result.state == "success", result.task_states
    read = [i["ref_id"] for b in BUCKETS for i in result.xcoms[("triage", b)]]
    assert sorted(read) == sorted(active - {"unreadable-both"})
    assert "opened-only" in [i["ref_id"] for i in result.xcoms[("triage", "not_started")]]


def test_active_after_and_interacted_after_are_one_or_the_other() -> None:
    from airflow_provider_leap.operators.triage import TriageOperator

    with pytest.raises(ValueError, match="active_after or interacted_after, not both"):
        TriageOperator(task_id="t", active_after="2026-03-10", interacted_after="2026-03-10")
