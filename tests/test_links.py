"""The operator extra link to Leap's Partner Portal resolves from the connection."""

from __future__ import annotations

import json

import pytest

from airflow_provider_leap import get_provider_info, wire
from airflow_provider_leap.links import LeapConnectionsLink
from airflow_provider_leap.operators.triage import TriageOperator
from airflow_provider_leap.sensors.connect import ConnectStatusSensor


@pytest.mark.parametrize(
    ("conn", "expected"),
    [
        ({"password": "k:k"}, wire.PORTAL_URLS["production"]),
        ({"password": "k:k", "extra": {"environment": " Staging "}}, wire.PORTAL_URLS["staging"]),
        (
            {"host": "https://api.staging.leap.energy", "password": "k:k"},
            wire.PORTAL_URLS["staging"],
        ),
        (
            {
                "host": "http://127.0.0.1:8765",
                "password": "k",
                "extra": {"portal_url": "http://x/y"},
            },
            "http://x/y",
        ),
    ],
)
def test_link_follows_the_connections_environment(monkeypatch, conn, expected) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_LEAP_LINK", json.dumps({"conn_type": "leap", **conn}))
    for task in (
        TriageOperator(task_id="t", leap_conn_id="leap_link"),
        ConnectStatusSensor(task_id="s", ref_ids=["abc"], leap_conn_id="leap_link"),
    ):
        (link,) = task.operator_extra_links
        assert isinstance(link, LeapConnectionsLink)
        assert link.get_link(task, ti_key=None) == expected  # type: ignore[arg-type]


def test_link_is_registered_with_airflow() -> None:
    link_path = f"{LeapConnectionsLink.__module__}.{LeapConnectionsLink.__qualname__}"
    assert link_path in get_provider_info()["extra-links"]


@pytest.mark.usefixtures("leap_conn")
def test_link_is_stored_when_the_task_runs(run_dag, leap_emulator) -> None:
    source = """
from datetime import datetime, timezone
from airflow.sdk import DAG
from airflow_provider_leap.operators.triage import TriageOperator

with DAG("link_dag", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc)) as dag:
    TriageOperator(task_id="triage", ref_ids=["Test1012"])
"""
    result = run_dag("link_dag", source)
    assert result.xcoms[("triage", "_link_LeapConnectionsLink")] == wire.PORTAL_URLS["production"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, "connect_account"),  # no account: no link (review s17b F1: was None)
        ({"connect_account": "acme"}, "https://connect.leap.energy?"),
        ({"connect_account": "acme", "environment": "staging"}, "connect_base_url"),
        (
            {
                "connect_account": "acme",
                "environment": "staging",
                "connect_base_url": "https://connect.staging.example",
            },
            "https://connect.staging.example?",
        ),
    ],
)
def test_customers_connect_link_follows_the_connections_environment(
    monkeypatch, extra, expected
) -> None:
    """Review s10c F9: a staging connection sent its customers production's Connect links."""
    from airflow_provider_leap.hooks.leap import LeapException, LeapHook

    conn = {"conn_type": "leap", "password": "k:k", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_LEAP_LINK", json.dumps(conn))
    hook = LeapHook(leap_conn_id="leap_link")
    if expected == "connect_base_url":
        with pytest.raises(LeapException, match=r"staging.*set the extra connect_base_url"):
            hook.connect_url("r1", "PJM")
    elif expected == "connect_account":
        with pytest.raises(LeapException, match=r"set the connection extra connect_account"):
            hook.connect_url("r1", "PJM")
    else:
        assert hook.connect_url("r 1", "PJM") == (
            f"{expected}transmissionRegion=PJM&variant=RESIDENTIAL&account=acme&refId=r%201"
        )
        # Review s14c F4: a commercial customer of a partner with both kinds
        assert "&variant=COMMERCIAL&" in hook.connect_url("r 1", "PJM", variant="COMMERCIAL")
        # Review s14d: as a CRM field may hold it (a stray space or line end kept the link's
        # variant from matching); blank is the connection's
        assert "&variant=COMMERCIAL&" in hook.connect_url("r 1", "PJM", variant=" COMMERCIAL\n")
        assert "&variant=RESIDENTIAL&" in hook.connect_url("r 1", "PJM", variant=" ")
        # A record with no region is that customer's (a failed send), not the settings'
        with pytest.raises(ValueError, match="needs the Reference ID and the transmission"):
            hook.connect_url("r1", "")
