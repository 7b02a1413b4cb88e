"""Emulator page: a test of your own DAG (dags/my_leap.py), run with dag.test()."""

# --8<-- [start:test]
# test_my_leap.py
import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from airflow_provider_leap.hooks.leap import connection_json


def load_dag_file(name: str) -> ModuleType:
    """The DAG file from the DAGs folder: dag.test() runs the DAG serialized from there."""
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_my_dag_messages_each_customer_once(
    airflow_db: None, leap_emulator: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conn = connection_json(leap_emulator.url, leap_emulator.api_key, connect_account="acme")
    monkeypatch.setenv("AIRFLOW_CONN_LEAP_DEFAULT", conn)
    my_leap = load_dag_file("my_leap")
    monkeypatch.setattr(my_leap, "OUTBOX", tmp_path / "outbox.jsonl")  # where its send writes
    assert my_leap.dag.test().state == "success"
    sent = [json.loads(line) for line in my_leap.OUTBOX.read_text().splitlines()]
    assert sent and len({message["to"] for message in sent}) == len(sent)
    assert my_leap.dag.test().state == "success"  # run again: nothing is sent twice
    assert len(my_leap.OUTBOX.read_text().splitlines()) == len(sent)


# --8<-- [end:test]
