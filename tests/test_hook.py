"""LeapHook through real Airflow connections, and the provider's registration with Airflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from airflow.exceptions import AirflowException

from airflow_provider_leap import get_provider_info, wire
from airflow_provider_leap.hooks.leap import LeapException, LeapHook, connection_json
from airflow_provider_leap.models import ConnectRecord
from airflow_provider_leap.testing import EMULATOR_API_KEY

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "leap", **fields})
    )


def test_hook_streams_typed_records(leap_conn, emu) -> None:
    hook = LeapHook()
    records = hook.get_connections()
    assert all(isinstance(r, ConnectRecord) for r in records)
    assert Counter(r.id for r in records) == Counter(r["id"] for r in emu.records)
    assert hook.client is hook.client  # one session per hook


def test_hook_errors_are_airflow_exceptions_without_the_key(monkeypatch, emu) -> None:
    set_conn(monkeypatch, "leap_bad", host=emu.url, password="partner:secret-key-123")
    with pytest.raises(LeapException) as err:
        LeapHook("leap_bad").get_connections()
    assert isinstance(err.value, AirflowException)
    assert err.value.status == 403
    assert "partner:secret-key-123" not in str(err.value)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, wire.PRODUCTION_URL),
        ({"environment": "production"}, wire.PRODUCTION_URL),
        ({"environment": "staging"}, wire.STAGING_URL),
        ({"extra__leap__environment": "staging"}, wire.STAGING_URL),
    ],
)
def test_environment_picks_the_host(monkeypatch, extra, expected) -> None:
    set_conn(monkeypatch, "leap_env", password="k:k", extra=extra)
    assert LeapHook("leap_env").client.base_url == expected


def test_unknown_environment_is_a_clear_error(monkeypatch) -> None:
    set_conn(monkeypatch, "leap_env", password="k:k", extra={"environment": "prod"})
    with pytest.raises(LeapException, match="environment 'prod' is not one of"):
        LeapHook("leap_env").client  # noqa: B018


def test_plain_http_to_remote_host_is_refused(monkeypatch) -> None:
    set_conn(monkeypatch, "leap_http", host="http://leap.example.com", password="k:k")
    with pytest.raises(LeapException, match="allow_insecure_http"):
        LeapHook("leap_http").client  # noqa: B018
    set_conn(
        monkeypatch,
        "leap_http",
        host="http://leap.example.com",
        password="k:k",
        extra={"allow_insecure_http": "true"},
    )
    assert LeapHook("leap_http").client.base_url == "http://leap.example.com"


def test_invalid_extra_is_named(monkeypatch) -> None:
    set_conn(
        monkeypatch, "leap_x", host="https://x.test", password="k:k", extra={"timeout": "soon"}
    )
    with pytest.raises(LeapException, match="extra timeout='soon' is not a number"):
        LeapHook("leap_x").client  # noqa: B018


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"timeout": 0}, "timeout must be > 0"),
        ({"page_size": 0}, "page_size must be a positive integer"),
        ({"max_retries": -1}, "max_retries must be >= 0"),
    ],
)
def test_out_of_range_extras_are_refused(monkeypatch, extra, message) -> None:
    set_conn(monkeypatch, "leap_x", host="https://x.test", password="k:k", extra=extra)
    with pytest.raises(LeapException, match=message):
        LeapHook("leap_x").client  # noqa: B018


def test_empty_form_fields_mean_the_defaults(monkeypatch) -> None:
    empty = {
        "timeout": None,
        "page_size": "",
        "max_retries": None,
        "max_retry_wait": "",
        "retry_backoff": None,
        "environment": None,
    }
    set_conn(monkeypatch, "leap_x", password="k:k", extra=empty)
    client = LeapHook("leap_x").client
    assert (client.timeout, client.page_size, client.retry.max_retries) == (30.0, 500, 5)
    assert client.base_url == wire.PRODUCTION_URL


def test_extras_configure_timeout_retries_page_size_and_wire_names(monkeypatch, emu) -> None:
    extra = {
        "timeout": 7,
        "max_retries": 2,
        "max_retry_wait": 9,
        "retry_backoff": 0.25,
        "page_size": 321,
        "connections_path": "/v9/elsewhere",
    }
    set_conn(monkeypatch, "leap_x", host=emu.url, password=EMULATOR_API_KEY, extra=extra)
    client = LeapHook("leap_x").client
    assert (client.timeout, client.retry.max_retries, client.retry.max_wait) == (7.0, 2, 9.0)
    assert client.retry.backoff_base == 0.25
    assert client.page_size == 321
    with pytest.raises(LeapException, match="GET /v9/elsewhere answered HTTP 404"):
        LeapHook("leap_x").get_connections()
    assert emu.requests[-1].path == "/v9/elsewhere"


def test_meters_through_the_hook(leap_conn, emu) -> None:
    completed = sorted({r["ref_id"] for r in emu.records if r["connection_status"] == "COMPLETED"})
    meters = LeapHook().search_meters(connection_reference_ids=completed)
    assert {m.meter_id for m in meters} == {m["meter_id"] for m in emu.visible_meters()}


def test_test_connection(leap_conn, monkeypatch, emu) -> None:
    assert LeapHook().test_connection()[0] is True
    set_conn(monkeypatch, "leap_bad", host=emu.url, password="nope:nope")
    ok, message = LeapHook("leap_bad").test_connection()
    assert not ok and "HTTP 403" in message and "nope:nope" not in message


def test_ui_metadata_and_hook_agree() -> None:
    (conn_type,) = get_provider_info()["connection-types"]
    behaviour = conn_type["ui-field-behaviour"]
    assert LeapHook.get_ui_field_behaviour() == {
        "hidden_fields": behaviour["hidden-fields"],
        "relabeling": behaviour["relabeling"],
        "placeholders": behaviour["placeholders"],
    }
    assert conn_type["connection-type"] == LeapHook.conn_type
    assert conn_type["hook-class-name"] == f"{LeapHook.__module__}.{LeapHook.__qualname__}"
    assert behaviour["relabeling"]["password"] == "API key"
    assert conn_type["conn-fields"]["environment"]["schema"]["enum"] == list(wire.ENVIRONMENT_URLS)


def test_providers_manager_sees_the_connection_form() -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()
    assert "airflow-provider-leap" in manager.providers
    hook = ProvidersManagerTaskRuntime().hooks["leap"]
    assert hook is not None and hook.connection_type == "leap"
    assert manager.field_behaviours["leap"]["relabeling"]["password"] == "API key"
    env_field = manager.connection_form_widgets["extra__leap__environment"]
    assert env_field.field["schema"]["enum"] == ["production", "staging"]


def _airflow_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_airflow_cli_lists_the_provider_and_tests_the_connection(emu, tmp_path) -> None:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW_CONN_LEAP_DEFAULT": connection_json(emu.url, EMULATOR_API_KEY),
        "AIRFLOW_CONN_LEAP_WRONG": connection_json(emu.url, "wrong:key"),
    }
    listed = _airflow_cli("providers", "list", "-o", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert any(p["package_name"] == "airflow-provider-leap" for p in json.loads(listed.stdout))
    hooks = _airflow_cli("providers", "hooks", "-o", "json", env=env)
    assert any(h.get("connection_type") == "leap" for h in json.loads(hooks.stdout))
    ok = _airflow_cli("connections", "test", "leap_default", env=env)
    assert ok.returncode == 0 and "Connection success!" in ok.stdout, ok.stdout + ok.stderr
    bad = _airflow_cli("connections", "test", "leap_wrong", env=env)
    assert "HTTP 403" in bad.stdout + bad.stderr
    assert "wrong:key" not in bad.stdout + bad.stderr


def test_ui_connection_form_as_airflow_3_serves_it() -> None:
    """What the Airflow 3 UI receives for the ``leap`` type (the API server's own code path)."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    (meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "leap"]
    fields = meta.standard_fields
    assert fields is not None
    assert fields.password.title == "API key"
    assert fields.host.title == "Base URL" and fields.host.placeholder
    assert fields.port.hidden and fields.login.hidden and fields.url_schema.hidden
    extra = meta.extra_fields or {}
    assert extra["environment"]["schema"]["enum"] == ["production", "staging"]
    assert extra["environment"]["value"] == "production"
    assert extra["timeout"]["schema"]["title"] == "Timeout (seconds)"
