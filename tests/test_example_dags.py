"""The example DAGs: they import cleanly and run end to end against the emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "example_dags"


@pytest.mark.usefixtures("airflow_db")
def test_example_dags_import_cleanly() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(EXAMPLES))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {"leap_connect_reengagement", "leap_connection_watch"}
    hourly = bag.get_dag("leap_connect_reengagement")
    assert hourly.max_active_runs == 1 and hourly.catchup is False
    assert hourly.timetable.expression == "17 * * * *"


@pytest.mark.usefixtures("leap_conn")
def test_reengagement_runs_end_to_end(run_dag, leap_emulator, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LEAP_OUTPUT_DIR", str(tmp_path))
    source = (EXAMPLES / "leap_connect_reengagement.py").read_text()
    result = run_dag("leap_connect_reengagement", source)
    assert result.state == "success", result.task_states
    counts = result.xcoms[("triage", "return_value")]["counts"]
    for bucket in ("not_started", "utility_not_connected", "utility_error", "agreements_pending"):
        sent = result.xcoms[(f"message_{bucket}", "return_value")]
        lines = Path(sent["outbox"]).read_text().splitlines()
        assert len(lines) == counts[bucket] > 0
        message = json.loads(lines[0])
        assert message["subject"] and message["body"] and "{" not in message["body"]
    crm = result.xcoms[("record_in_crm", "return_value")]
    assert crm["records"] == sum(v for k, v in counts.items() if k != "too_recent")
    assert len(Path(crm["target"]).read_text().splitlines()) == crm["records"]
    errors = Path(result.xcoms[("message_utility_error", "return_value")]["outbox"])
    by_reason = {
        json.loads(line)["reason"]: json.loads(line) for line in errors.read_text().splitlines()
    }
    if "error:USER_CANCELED" in by_reason:  # error codes get their own wording
        assert by_reason["error:USER_CANCELED"]["subject"] == "Did you mean to stop?"


@pytest.mark.usefixtures("leap_conn")
def test_connection_watch_runs_end_to_end(run_dag, leap_emulator) -> None:
    done = sorted(
        {r["ref_id"] for r in leap_emulator.records if r["connection_status"] == "COMPLETED"}
    )[:3]
    source = (EXAMPLES / "leap_connection_watch.py").read_text()
    result = run_dag("leap_connection_watch", source, run_conf={"ref_ids": done})
    assert result.state == "success", result.task_states
    rows = result.xcoms[("follow_up_meters", "return_value")]
    assert sorted(row["ref_id"] for row in rows) == done
    visible = {m["meter_id"] for m in leap_emulator.visible_meters()}
    for row in rows:
        assert set(row["meters"]) <= visible
        assert (
            row["state"] == "meters found"
            if row["meters"]
            else row["state"].startswith(("waiting", "overdue"))
        )
    assert result.xcoms[("report", "return_value")]["total"] == 3


def test_render_message_prefers_the_most_specific_template() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "reeng", EXAMPLES / "leap_connect_reengagement.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    item = {"reason": "error:INVALID_CREDENTIALS", "error_codes": {"PG&E": "INVALID_CREDENTIALS"}}
    assert module.render_message("utility_error", item)["subject"] == "Check your utility login"
    item = {"reason": "error:SOMETHING_NEW", "error_codes": {"PG&E": "SOMETHING_NEW"}}
    rendered = module.render_message("utility_error", item)
    assert rendered["subject"] == "We could not connect your utility account"
    assert "PG&E" in rendered["body"]
    pending = {
        "reason": "agreement:x",
        "agreements": ["demand_response_participation_agreement_status"],
    }
    assert "demand_response" in module.render_message("agreements_pending", pending)["body"]
