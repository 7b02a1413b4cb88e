"""The emulator's admin endpoints, its key handling on the command line, and the watch example's
defaults: what the deployment check (scripts/deploy_check.sh) relies on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_leap.client import LeapClient
from airflow_provider_leap.testing import EMULATOR_API_KEY, LeapEmulator
from airflow_provider_leap.testing.admin import RECORDS_PATH, STATUS_PATH
from airflow_provider_leap.testing.data import parse_utc, to_us
from airflow_provider_leap.triage import triage
from airflow_provider_leap.watch import check_ref_ids

EXAMPLES = Path(__file__).resolve().parent.parent / "example_dags"
TIMEOUT = 10


@pytest.fixture
def admin_emulator(leap_emulator_factory: Callable[..., LeapEmulator]) -> LeapEmulator:
    return leap_emulator_factory(admin=True)


def _first_ref(emulator: LeapEmulator, status: str) -> str:
    """A Reference ID with exactly one record, in ``status``."""
    counts: dict[str, int] = {}
    for record in emulator.records:
        counts[record["ref_id"]] = counts.get(record["ref_id"], 0) + 1
    return next(
        r["ref_id"]
        for r in emulator.records
        if r["connection_status"] == status and counts[r["ref_id"]] == 1
    )


def test_admin_paths_are_unknown_unless_enabled(leap_emulator: LeapEmulator) -> None:
    response = requests.get(leap_emulator.url + RECORDS_PATH, timeout=TIMEOUT)
    assert response.status_code == 404
    body = {"ref_ids": ["Test1012"], "connection_status": "COMPLETED"}
    response = requests.post(leap_emulator.url + STATUS_PATH, json=body, timeout=TIMEOUT)
    assert response.status_code == 404
    assert leap_emulator.records[0]["connection_status"] == "ERROR"


def test_completing_a_customer_is_seen_by_the_sensor_check_and_by_triage(
    admin_emulator: LeapEmulator,
) -> None:
    ref = _first_ref(admin_emulator, "NOT_STARTED")
    client = LeapClient(admin_emulator.url, EMULATOR_API_KEY)
    try:
        assert not check_ref_ids(client, [ref], ["COMPLETED"]).done
        body = {"ref_ids": [ref], "connection_status": "COMPLETED"}
        answer = requests.post(admin_emulator.url + STATUS_PATH, json=body, timeout=TIMEOUT)
        assert answer.status_code == 200 and answer.json() == {"changed": 1}
        assert check_ref_ids(client, [ref], ["COMPLETED"]).done
    finally:
        client.close()
    served = requests.get(
        admin_emulator.url + RECORDS_PATH, params={"ref_id": ref}, timeout=TIMEOUT
    ).json()["records"]
    [record] = served
    # A completion reads as one: utilities connected, no error, forms signed, fresh interaction.
    assert record["utility_connections"]
    assert all(u["status"] == "CONNECTED" for u in record["utility_connections"])
    assert "PENDING" not in record["agreements"].values()
    now = admin_emulator.now
    stamped = parse_utc(record["last_interaction_date_time_utc"])
    assert stamped is not None and 0 <= to_us(now) - stamped < 1000  # Connect stamps in ms
    result = triage(served, now=now + timedelta(hours=2))
    assert [i["ref_id"] for i in result.buckets["completed"]] == [ref]


def test_any_status_is_set_as_given_and_reset_restores_the_data(
    admin_emulator: LeapEmulator,
) -> None:
    ref = _first_ref(admin_emulator, "COMPLETED")
    before = [dict(r) for r in admin_emulator.records]
    body = {"ref_ids": [ref], "connection_status": "ON_HOLD"}
    requests.post(admin_emulator.url + STATUS_PATH, json=body, timeout=TIMEOUT).raise_for_status()
    listed = requests.get(
        admin_emulator.url + RECORDS_PATH,
        params={"connection_status": "ON_HOLD", "ref_id": ref},
        timeout=TIMEOUT,
    ).json()["records"]
    assert [r["ref_id"] for r in listed] == [ref]
    admin_emulator.reset()
    assert admin_emulator.records == before


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", STATUS_PATH, {"ref_ids": ["no-such-ref"], "connection_status": "COMPLETED"}, 404),
        ("POST", STATUS_PATH, {"ref_ids": [], "connection_status": "COMPLETED"}, 400),
        ("POST", STATUS_PATH, {"ref_ids": ["Test1012"]}, 400),
        ("POST", STATUS_PATH, None, 400),
        ("GET", STATUS_PATH, None, 405),
        ("POST", RECORDS_PATH, None, 405),
        ("GET", "/_emulator/nothing", None, 404),
        ("GET", RECORDS_PATH + "?status=COMPLETED", None, 400),
    ],
)
def test_bad_admin_requests_are_clear_errors_and_change_nothing(
    admin_emulator: LeapEmulator, method: str, path: str, body: Any, status: int
) -> None:
    before = admin_emulator.records
    response = requests.request(method, admin_emulator.url + path, json=body, timeout=TIMEOUT)
    assert response.status_code == status, response.text
    assert response.json()["title"]
    assert admin_emulator.records is before


def test_cli_takes_the_key_from_the_environment_and_never_prints_it() -> None:
    key = "lk_live_ENVKEY_only_in_env"
    command = [sys.executable, "-m", "airflow_provider_leap.testing", "--port", "0"]
    command += ["--records", "40", "--admin", "--verbose"]
    env = {**os.environ, "LEAP_EMULATOR_API_KEY": key}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert "api_key=from-$LEAP_EMULATOR_API_KEY" in banner and "admin=/_emulator/" in banner
        url = banner.split("url=")[1].split()[0]
        ok = requests.get(
            url + "/v1.1/connections", headers={"Authorization": f"Bearer {key}"}, timeout=5
        )
        assert ok.status_code == 200
        default = {"Authorization": f"Bearer {EMULATOR_API_KEY}"}
        assert (
            requests.get(url + "/v1.1/connections", headers=default, timeout=5).status_code == 403
        )
        assert requests.get(url + RECORDS_PATH, timeout=5).status_code == 200
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert key not in banner + stdout + stderr
    assert "GET /v1.1/connections" in stderr  # --verbose logged the requests, not the key


def test_watch_example_defaults_are_completed_in_the_default_emulator(
    leap_emulator: LeapEmulator,
) -> None:
    """A default run of ``leap_connection_watch`` finishes at the sensor's first check there."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("watch", EXAMPLES / "leap_connection_watch.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    defaults = module.dag.params.get_param("ref_ids").value
    client = LeapClient(leap_emulator.url, EMULATOR_API_KEY)
    try:
        result = check_ref_ids(client, defaults, ["COMPLETED"])
    finally:
        client.close()
    assert result.done, result.describe(len(defaults))
    assert len(defaults) == 3
