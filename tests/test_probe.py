"""``airflow leap probe``: through the real Airflow CLI against the emulator configured with
other wire names than the provider's defaults; the probe's rules against a lenient server that
ignores what it does not know."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from fake_server import Reply, Seen, fake_leap, page, record

from airflow_provider_leap.client import LeapClient
from airflow_provider_leap.hooks.leap import connection_json
from airflow_provider_leap.probe import CANDIDATES, MAX_REQUESTS, WIRE_FIELDS, assumed_names, probe
from airflow_provider_leap.testing import EMULATOR_API_KEY
from airflow_provider_leap.wire import WireNames

OTHER_NAMES = WireNames(
    connections_path="/v1/connections",
    ref_id_param="refId",
    start_date_param="startDate",
    last_interaction_param="lastInteractionDate",
    page_size_param="pageSize",
    page_token_param="pageToken",
    records_key="results",
    next_token_key="next_page_token",
)
SPEC = Path(__file__).resolve().parents[1] / "spec" / "connect-openapi.assumed.yml"


def airflow_leap_probe(url: str, *args: str, key: str = EMULATOR_API_KEY) -> tuple[int, str, str]:
    env = {**os.environ, "AIRFLOW_CONN_LEAP_PROBE": connection_json(url, key)}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "leap", "probe", "--conn-id",
         "leap_probe", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def renamed_emulator():
    from airflow_provider_leap.testing import LeapEmulator

    with LeapEmulator(records=50, wire_names=OTHER_NAMES) as emulator:
        yield emulator


def test_the_cli_finds_every_name_and_prints_the_extras(renamed_emulator, airflow_db) -> None:
    code, out, err = airflow_leap_probe(renamed_emulator.url, "--json")
    assert code == 0, err[-2000:]
    report = json.loads(out)
    assert {k: v["value"] for k, v in report["findings"].items()} == asdict(OTHER_NAMES)
    defaults = asdict(WireNames())
    assert report["extras"] == asdict(OTHER_NAMES)  # every name differs from the defaults
    assert report["differences"] == {
        name: {"assumed": defaults[name], "found": value}
        for name, value in asdict(OTHER_NAMES).items()
    }
    requests = renamed_emulator.requests
    assert len(requests) == report["requests"] <= MAX_REQUESTS
    assert {r.method for r in requests} == {"GET"}
    ok = [r for r in requests if r.status == 200]
    assert ok and all(dict(r.query).get("pageSize") in ("1", "2") for r in ok)
    assert EMULATOR_API_KEY not in out + err
    # The extras it prints make the provider read the emulator.
    wire = WireNames(**report["extras"])
    with LeapClient(renamed_emulator.url, EMULATOR_API_KEY, wire=wire) as client:
        assert len(list(client.iter_connect_records(page_size=7))) == 50


def test_the_text_report_and_a_spec_to_compare_with(renamed_emulator, tmp_path) -> None:
    spec = {
        "paths": {
            "/v1/connections": {
                "x-leap-wire-name": "connections_path",
                "get": {
                    "parameters": [
                        {"name": "refId", "in": "query", "x-leap-wire-name": "ref_id_param"}
                    ]
                },
            }
        }
    }
    (tmp_path / "spec.yml").write_text(yaml.safe_dump(spec))
    code, out, _ = airflow_leap_probe(renamed_emulator.url, "--spec", str(tmp_path / "spec.yml"))
    assert code == 0
    assert f"Against {tmp_path / 'spec.yml'}: no difference." in out
    assert "Set these extras on the Airflow connection" in out
    assert json.loads(out.strip().splitlines()[-1]) == asdict(OTHER_NAMES)


def test_a_wrong_key_stops_at_once_without_showing_it(renamed_emulator) -> None:
    renamed_emulator.reset_requests()
    code, out, err = airflow_leap_probe(renamed_emulator.url, "--json", key="wrong:key-123")
    assert code == 1
    report = json.loads(out)
    assert "HTTP 403" in report["stopped"]
    assert report["complete"] is False  # its empty differences and extras are no verdict
    assert report["requests"] <= len(CANDIDATES["connections_path"])
    assert "wrong:key-123" not in out + err
    code, out, _ = airflow_leap_probe(renamed_emulator.url, key="wrong:key-123")
    assert code == 1 and "no extra to set" not in out and "no difference." not in out
    assert "Not every wire name was found, so this is no verdict" in out


def test_a_server_that_ignores_unknown_filters_is_told_apart() -> None:
    """A lenient server answers 200 to every name: the probe must see that an ignored page size,
    token or filter changes nothing, and find the names that do."""
    records = [record(f"ref-{n:03}") for n in range(5)]

    def respond(seen: Seen) -> Reply:
        if seen.path != "/v1.1/connections":
            return Reply(404, {"title": "Not found"})
        query = dict(seen.query)
        selected = [r for r in records if "ref_id" not in query or r["ref_id"] in
                    {v for k, v in seen.query if k == "ref_id"}]  # fmt: skip
        start = int(query.get("cursor", 0))
        size = int(query.get("limit", 3))
        following = start + size if start + size < len(selected) else None
        return page(selected[start : start + size], None if following is None else str(following))

    with fake_leap(respond) as fake, LeapClient(fake.url, "k:k") as client:
        report = probe(client)
    found = report.found()
    assert found["page_size_param"] == "limit"
    assert found["page_token_param"] == "cursor"
    assert found["ref_id_param"] == "ref_id"
    for name in ("start_date_param", "last_interaction_param"):  # this server has no such filter
        assert report.findings[name].value is None
        assert "ignored: a date tomorrow gave records" in report.findings[name].how
    assert report.extras() == {"page_size_param": "limit", "page_token_param": "cursor",
                               "ref_id_param": "ref_id"}  # fmt: skip
    assert not report.complete and report.requests <= MAX_REQUESTS


@pytest.mark.skipif(not SPEC.exists(), reason="the assumed Connect contract is not in spec/ yet")
def test_the_assumed_contract_names_the_provider_defaults() -> None:
    """Comparing with spec/connect-openapi.assumed.yml is comparing with ``WireNames()``."""
    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    assert assumed_names(spec) == assumed_names() == asdict(WireNames())
    assert set(assumed_names()) == set(WIRE_FIELDS)
