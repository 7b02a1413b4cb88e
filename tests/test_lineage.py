"""OpenLineage: real ``dag.test()`` runs with Airflow's OpenLineage provider enabled and its file
transport, against the emulator; the events must name the right datasets with the right counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import forget_ledger_records
from jsonschema import Draft202012Validator
from shared_execution_api import child_env

import airflow_provider_leap
from airflow_provider_leap import datasets
from airflow_provider_leap.hooks.leap import connection_json
from airflow_provider_leap.testing import EMULATOR_API_KEY
from airflow_provider_leap.triage import BUCKETS

pytest.importorskip("airflow.providers.openlineage", reason="the openlineage extra")

DAG_SOURCE = """
from datetime import datetime, timezone
from airflow.sdk import DAG
from airflow_provider_leap.operators.contact import LeapContactOperator
from airflow_provider_leap.operators.triage import TriageOperator
from airflow_provider_leap.sensors.connect import ConnectStatusSensor

def send(contact):
    pass

start = datetime(2026, 1, 1, tzinfo=timezone.utc)
with DAG("leap_lineage", schedule=None, start_date=start) as dag:
    wait = ConnectStatusSensor(
        task_id="wait", ref_ids={watched!r}, poke_interval=1, timeout=60, deferrable=False
    )
    triage = TriageOperator(
        task_id="triage", ref_ids={ref_ids!r}, interacted_after="2020-01-02T03:04:05Z"
    )
    contact = LeapContactOperator(task_id="contact", send=send, ledger_url={ledger!r})
    wait >> triage >> contact
"""

RUN = """
import shared_execution_api
shared_execution_api.share()  # before Airflow runs a task
import importlib.util, json, sys
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session

spec = importlib.util.spec_from_file_location("dag_file", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
dag = module.dag
run = dag.test()
with create_session() as session:
    rows = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=dag.dag_id)).all()
    stored = {f"{row.task_id}/{row.key}": row.value for row in rows}
with open(sys.argv[2], "w") as out:
    json.dump({"state": str(run.state), "stored": stored}, out, default=str)
"""

SCHEMA = json.loads(
    (Path(airflow_provider_leap.__file__).parent / "lineage_facets.json").read_text("utf-8")
)


def facet_errors(facet: dict[str, Any], name: str) -> list[str]:
    schema = {**SCHEMA, "$ref": f"#/$defs/{name}"}
    assert facet["_schemaURL"].endswith(f"lineage_facets.json#/$defs/{name}")
    return [e.message for e in Draft202012Validator(schema).iter_errors(facet)]


@pytest.fixture(scope="module")
def lineage_run(
    airflow_db: str, leap_emulator_session: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One run of sensor >> triage >> contact with OpenLineage on, the XCom object store
    offloading buckets above 1000 bytes; the events as the file transport wrote them."""
    emulator = leap_emulator_session
    emulator.reset()
    folder = tmp_path_factory.mktemp("lineage")
    records = emulator.records
    watched = sorted({r["ref_id"] for r in records if r["connection_status"] == "COMPLETED"})[:3]
    ref_ids = sorted({r["ref_id"] for r in records})[:80]  # small buckets and large ones
    dag_file = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "leap_lineage.py"
    dag_file.parent.mkdir(parents=True, exist_ok=True)
    ledger = f"file://{folder}/ledger"
    dag_file.write_text(DAG_SOURCE.format(watched=watched, ref_ids=ref_ids, ledger=ledger))
    events_file = folder / "events.jsonl"
    forget_ledger_records("channel:")  # earlier tests' ledgers: this one is new, on purpose
    env = {
        **os.environ,
        "AIRFLOW_CONN_LEAP_DEFAULT": connection_json(emulator.url, EMULATOR_API_KEY),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "leap-tests",
        "AIRFLOW__CORE__XCOM_BACKEND": (
            "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend"
        ),
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"file://{folder}/xcom",
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": "1000",
    }
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(dag_file), str(folder / "run.json")],
        env=child_env(env), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((folder / "run.json").read_text())
    assert result["state"] == "success", done.stderr[-3000:]
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    complete = {
        e["job"]["name"].rpartition(".")[2]: e
        for e in events
        if e["eventType"] == "COMPLETE" and e["job"]["name"].startswith("leap_lineage.")
    }
    emulator.reset()
    return {
        "stored": result["stored"],
        "complete": complete,
        "url": emulator.url,
        "watched": watched,
        "ref_ids": ref_ids,
        "ledger": folder / "ledger",
    }


def connect_source(event: dict[str, Any]) -> dict[str, Any]:
    (source,) = event["inputs"]
    assert (source["namespace"], source["name"]) == ("leap://leap_default", "connections")
    return source


def test_triage_reports_its_source_each_bucket_with_rows_and_the_funnel(lineage_run) -> None:
    event = lineage_run["complete"]["triage"]
    summary = lineage_run["stored"]["triage/return_value"]
    source = connect_source(event)
    assert source["facets"]["dataSource"]["uri"] == lineage_run["url"]
    query = source["inputFacets"]["leapQuery"]
    assert query["refIds"] == len(lineage_run["ref_ids"])
    assert query["interactedAfter"] == "2020-01-02T03:04:05+00:00" and "startedAfter" not in query
    assert source["inputFacets"]["inputStatistics"]["rowCount"] == summary["records_read"] > 0
    assert facet_errors(query, "LeapQueryInputDatasetFacet") == []

    outputs = {o["name"].rpartition("/")[2]: o for o in event["outputs"] if "xcom" not in o["name"]}
    assert len(event["outputs"]) == len(BUCKETS)
    offloaded = 0
    for output in event["outputs"]:
        stored = lineage_run["stored"]
        symlinks = output["facets"].get("symlinks", {}).get("identifiers", [])
        if symlinks:  # offloaded: the dataset is the file the database points to
            (link,) = symlinks
            bucket = link["name"].rpartition("/")[2]
            path = stored[f"triage/{bucket}"]
            assert urlsplit(path).path == output["name"] and Path(output["name"]).is_file()
            assert link["namespace"] == "xcom://leap-tests"
            assert link["name"] == f"leap_lineage/triage/{bucket}"
            items = json.loads(Path(output["name"]).read_text())
            offloaded += 1
        else:  # kept in the database: the dataset is the XCom
            assert output["namespace"] == "xcom://leap-tests"
            bucket = output["name"].removeprefix("leap_lineage/triage/")
            items = stored[f"triage/{bucket}"]
        assert bucket in BUCKETS
        rows = output["outputFacets"]["outputStatistics"]["rowCount"]
        assert rows == len(items) == summary["counts"][bucket]
    assert 0 < offloaded < len(BUCKETS), outputs

    funnel = event["run"]["facets"]["leapTriage"]
    assert facet_errors(funnel, "LeapTriageRunFacet") == []
    assert funnel["buckets"] == summary["counts"]
    assert funnel["recordsRead"] == summary["records_read"]
    for bucket, reasons in funnel["reasons"].items():
        assert sum(reasons.values()) == summary["counts"][bucket]
    assert any(r.startswith("error:") for r in funnel["reasons"]["utility_error"])


def test_sensor_reports_its_source_with_the_number_of_watched_ids(lineage_run) -> None:
    source = connect_source(lineage_run["complete"]["wait"])
    assert source["inputFacets"]["leapQuery"]["refIds"] == len(lineage_run["watched"]) == 3
    assert source["facets"]["dataSource"]["uri"] == lineage_run["url"]
    assert lineage_run["complete"]["wait"]["outputs"] == []


def test_contact_reads_the_triage_buckets_and_writes_the_ledger(lineage_run) -> None:
    event = lineage_run["complete"]["contact"]
    triage = lineage_run["complete"]["triage"]
    triage_outputs = {(o["namespace"], o["name"]) for o in triage["outputs"]}
    assert {(i["namespace"], i["name"]) for i in event["inputs"]} == triage_outputs
    (ledger,) = event["outputs"]
    assert (ledger["namespace"], ledger["name"]) == ("file", f"{lineage_run['ledger']}/email")
    counts = lineage_run["stored"]["contact/return_value"]
    facet = event["run"]["facets"]["leapContact"]
    assert facet_errors(facet, "LeapContactRunFacet") == []
    assert facet["counts"] == counts and facet["channel"] == "email"
    assert ledger["outputFacets"]["outputStatistics"]["rowCount"] == counts["sent"] > 0


def test_users_assets_map_to_the_datasets_the_operators_report(airflow_db) -> None:
    from airflow.providers.openlineage.utils.utils import translate_airflow_asset
    from airflow.sdk import Asset

    for kind in datasets.KINDS:
        asset = Asset(f"leap://leap_default/{kind}/")
        assert asset.uri == f"leap://leap_default/{kind}"
        converted = translate_airflow_asset(asset, None)
        assert converted is not None
        assert (converted.namespace, converted.name) == datasets.dataset_name("leap_default", kind)
    for bad in ("leap://leap_default/connect_sessions", "leap://leap_default", "leap://x:1/meter"):
        with pytest.raises(ValueError, match="not a Leap asset URI"):
            Asset(bad)


def test_reason_counts_per_bucket() -> None:
    from airflow_provider_leap.lineage import reason_counts

    buckets = {"a": [{"reason": "error:X"}, {"reason": "error:X"}, {"reason": "error:Y"}], "b": []}
    assert reason_counts(buckets) == {"a": dict(Counter({"error:X": 2, "error:Y": 1})), "b": {}}


def test_parsing_a_dag_never_imports_openlineage() -> None:
    """OpenLineage installed or not, a DAG file using the operators and a leap:// asset pays for
    none of it (Airflow itself reads the OpenLineage provider's metadata, no more): only the
    listener, at the end of a task, imports the lineage module and the OpenLineage client."""
    code = (
        "import sys\n"
        "LINEAGE = 'airflow_provider_leap.lineage'\n"
        "import airflow_provider_leap.operators.triage, airflow_provider_leap.operators.contact\n"
        "import airflow_provider_leap.sensors.connect\n"
        "from airflow.sdk import Asset\n"
        "assert Asset('leap://leap_default/connections').uri == 'leap://leap_default/connections'\n"
        "print(sorted(m for m in sys.modules if m.startswith(('openlineage', LINEAGE))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_an_xcom_location_lookup_that_fails_never_fails_the_task(tmp_path) -> None:
    """With OpenLineage on and the object-storage XCom backend, the triage asks where its buckets
    went right after pushing them; when that question fails (here: no task supervisor to ask),
    the task goes on with no file to report (its lineage then names the XComs) and the log says
    why."""
    code = (
        "import types\n"
        "from airflow_provider_leap.xcom_store import lineage_enabled, offloaded\n"
        "assert lineage_enabled()\n"
        "ti = types.SimpleNamespace(dag_id='d', run_id='r', map_index=-1)\n"
        "print(offloaded(ti, 'triage', ['utility_error']))\n"
    )
    env = {
        **os.environ,
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(tmp_path / "events.jsonl")}
        ),
        "AIRFLOW__CORE__XCOM_BACKEND": (
            "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend"
        ),
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"file://{tmp_path}/xcom",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "{}"
    assert "Could not tell where the XComs of triage are stored" in done.stdout + done.stderr
