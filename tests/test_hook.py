"""LeapHook through real Airflow connections, and the provider's registration with Airflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException

from airflow_provider_leap import get_provider_info, wire
from airflow_provider_leap.config import KNOWN_EXTRAS
from airflow_provider_leap.errors import LeapAuthError, LeapConfigError
from airflow_provider_leap.hooks.leap import LeapException, LeapHook, connection_json
from airflow_provider_leap.models import ConnectRecord
from airflow_provider_leap.retry import RetryPolicy
from airflow_provider_leap.testing import EMULATOR_API_KEY

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "leap", **fields})
    )


@pytest.mark.usefixtures("leap_conn")
def test_hook_streams_typed_records(leap_emulator) -> None:
    hook = LeapHook()
    records = hook.get_connect_records()
    assert all(isinstance(r, ConnectRecord) for r in records)
    assert Counter(r.id for r in records) == Counter(r["id"] for r in leap_emulator.records)
    assert hook.client is hook.client  # one session per hook
    assert [r.id for r in hook.iter_connect_records(ref_ids="Test1012")] == [
        r["id"] for r in leap_emulator.records if r["ref_id"] == "Test1012"
    ]


@pytest.mark.usefixtures("leap_conn")
def test_old_names_still_work_for_one_release() -> None:
    hook = LeapHook()
    with pytest.warns(
        DeprecationWarning, match="get_connections is deprecated; use get_connect_records"
    ):
        old = hook.get_connections(ref_ids=["Test1012"])
    with pytest.warns(DeprecationWarning, match="iter_connections is deprecated"):
        assert list(hook.iter_connections(ref_ids=["Test1012"])) == old
    with pytest.warns(DeprecationWarning, match="iter_connections is deprecated"):
        assert list(hook.client.iter_connections(ref_ids=["Test1012"])) == old


def test_hook_errors_are_airflow_exceptions_without_the_key(monkeypatch, leap_emulator) -> None:
    set_conn(monkeypatch, "leap_bad", host=leap_emulator.url, password="partner:secret-key-123")
    with pytest.raises(LeapException) as err:
        LeapHook("leap_bad").get_connect_records()
    assert isinstance(err.value, AirflowException)
    assert err.value.status == 403
    assert isinstance(err.value.__cause__, LeapAuthError)
    assert "partner:secret-key-123" not in str(err.value)


def test_an_unusable_connection_is_a_leap_exception_naming_it(monkeypatch) -> None:
    set_conn(monkeypatch, "leap_x", password="k:k", extra={"enviroment": "staging"})
    with pytest.raises(
        LeapException, match="Leap connection 'leap_x': unknown extra 'enviroment'"
    ) as err:
        LeapHook("leap_x").get_connect_records()
    assert isinstance(err.value.__cause__, LeapConfigError)


@pytest.mark.usefixtures("leap_conn")
def test_argument_errors_raise_at_the_call() -> None:
    with pytest.raises(LeapException, match="Reference ID 'a/b' is not valid for Leap"):
        LeapHook().iter_connect_records(ref_ids=["a/b"])
    with pytest.raises(LeapException, match="meters page_size must be 1 to 500"):
        LeapHook().iter_meters(page_size=501)


def test_constructor_settings_replace_the_connections(monkeypatch, leap_emulator) -> None:
    set_conn(
        monkeypatch,
        "leap_x",
        host=leap_emulator.url,
        password=EMULATOR_API_KEY,
        extra={"timeout": 7},
    )
    assert LeapHook("leap_x").config.timeout == 7.0
    assert LeapHook("leap_x", timeout=120, page_size=50).config.timeout == 120.0
    with pytest.raises(LeapException, match="timeout must be seconds > 0"):
        LeapHook("leap_x", timeout=0).config  # noqa: B018
    # Checked like the extras: by name (a retry bound too), of the extra's type, with a hint.
    hook = LeapHook("leap_x", max_retries="3", connections_path="/v2/c")
    assert (hook.config.retry.max_retries, hook.config.wire.connections_path) == (3, "/v2/c")
    with pytest.raises(LeapException, match="'leap_x': extra timeout='soon' is not a finite"):
        LeapHook("leap_x", timeout="soon").config  # noqa: B018
    with pytest.raises(LeapException, match="unknown extra 'timoeut': did you mean 'timeout'"):
        LeapHook("leap_x", timoeut=5).config  # noqa: B018
    policy = RetryPolicy(max_retries=9)
    assert LeapHook("leap_x", retry=policy, max_retries=1).config.retry == policy
    with pytest.raises(LeapException, match="retry must be a RetryPolicy"):
        LeapHook("leap_x", retry={"max_retries": 9}).config  # noqa: B018


def test_wire_name_extras_reach_the_requests(monkeypatch, leap_emulator) -> None:
    extra = {"connections_path": "/v9/elsewhere", "page_size": 321}
    set_conn(monkeypatch, "leap_x", host=leap_emulator.url, password=EMULATOR_API_KEY, extra=extra)
    with pytest.raises(LeapException, match="GET /v9/elsewhere answered HTTP 404"):
        LeapHook("leap_x").get_connect_records()
    assert leap_emulator.requests[-1].path == "/v9/elsewhere"
    assert dict(leap_emulator.requests[-1].query)["page-size"] == "321"


@pytest.mark.usefixtures("leap_conn")
def test_meters_through_the_hook(leap_emulator) -> None:
    records = leap_emulator.records
    completed = sorted({r["ref_id"] for r in records if r["connection_status"] == "COMPLETED"})
    meters = LeapHook().search_meters(connection_reference_ids=completed)
    assert {m.meter_id for m in meters} == {m["meter_id"] for m in leap_emulator.visible_meters()}


@pytest.mark.usefixtures("leap_conn")
def test_check_ref_ids_errors_are_leap_exceptions(monkeypatch, leap_emulator) -> None:
    result = LeapHook().check_ref_ids(["Test1012"], ["COMPLETED"])
    assert result.waiting == {"Test1012": ["ERROR"]}
    set_conn(monkeypatch, "leap_bad", host=leap_emulator.url, password="nope:nope")
    with pytest.raises(LeapException, match="HTTP 403"):
        LeapHook("leap_bad").check_ref_ids(["Test1012"], ["COMPLETED"])


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"password": "nope:nope"}, "HTTP 403"),
        ({"password": "abcd:SECRET\nX-Evil: 1"}, "holds a space, line break or other control"),
        ({"password": "abcd:SECRET\u200b"}, "holds a non-ASCII character (U+200B"),
        ({"password": "k:k", "extra": {"timeout": "nan"}}, "extra timeout='nan' is not a finite"),
        ({"password": "k:k", "extra": "[1, 2]"}, "must be a JSON object of settings"),
    ],
)
def test_test_connection_always_answers(monkeypatch, leap_emulator, fields, expected) -> None:
    fields = {"host": leap_emulator.url, **fields}
    if "\\" in fields["password"]:
        fields["password"] = fields["password"].encode().decode("unicode_escape")
    set_conn(monkeypatch, "leap_t", **fields)
    ok, message = LeapHook("leap_t").test_connection()
    assert not ok and expected in message
    assert "SECRET" not in message and "nope:nope" not in message


def test_test_connection_answers_for_a_missing_connection_and_an_unknown_host(monkeypatch) -> None:
    ok, message = LeapHook("leap_missing").test_connection()
    assert not ok and "leap_missing" in message
    set_conn(monkeypatch, "leap_dns", host="https://no-such-host.invalid", password="k:k")
    ok, message = LeapHook("leap_dns").test_connection()
    assert not ok and "host name does not resolve" in message


@pytest.mark.usefixtures("leap_conn")
def test_test_connection_succeeds() -> None:
    assert LeapHook().test_connection() == (
        True,
        f"Connected to Leap at {LeapHook().config.base_url}: the Connect API answered.",
    )


def test_the_form_is_the_hooks_and_its_fields_are_extras() -> None:
    (conn_type,) = get_provider_info()["connection-types"]
    assert conn_type["connection-type"] == LeapHook.conn_type
    assert conn_type["hook-class-name"] == f"{LeapHook.__module__}.{LeapHook.__qualname__}"
    assert set(conn_type["conn-fields"]) <= set(KNOWN_EXTRAS)
    assert conn_type["conn-fields"]["environment"]["schema"]["enum"] == list(wire.ENVIRONMENT_URLS)


def test_a_staging_host_saved_through_the_form_is_staging(monkeypatch) -> None:
    # Airflow's form saves every field into the extra, empty ones as null: a user who only
    # types the staging host and the key gets staging and the provider's defaults.
    (conn_type,) = get_provider_info()["connection-types"]
    saved = {name: f["schema"].get("default") for name, f in conn_type["conn-fields"].items()}
    host = wire.ENVIRONMENT_URLS["staging"]
    set_conn(monkeypatch, "leap_form", host=host, password="lk_test_0123456789", extra=saved)
    assert (LeapHook("leap_form").config.environment, LeapHook("leap_form").config.base_url) == (
        "staging",
        host,
    )


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


def test_airflow_cli_lists_the_provider_and_tests_the_connection(leap_emulator, tmp_path) -> None:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW_CONN_LEAP_DEFAULT": connection_json(leap_emulator.url, EMULATOR_API_KEY),
        "AIRFLOW_CONN_LEAP_WRONG": connection_json(leap_emulator.url, "wrong:key"),
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


def test_the_ui_test_button_answers_for_a_damaged_key(monkeypatch, leap_emulator) -> None:
    """Airflow's own ``Connection.test_connection`` (the UI's and the CLI's path) gets an answer
    that names the problem and not the key."""
    from airflow.models.connection import Connection

    broken = connection_json(leap_emulator.url, "abcd:SECRETKEY123\nfoo")
    monkeypatch.setenv("AIRFLOW_CONN_LEAP_BROKEN", broken)
    ok, message = Connection.get_connection_from_secrets("leap_broken").test_connection()
    assert not ok and "line break or other control character" in message
    assert "SECRETKEY" not in message


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
    assert extra["environment"]["value"] is None  # empty: the Base URL decides, else production
    assert extra["timeout"]["schema"]["title"] == "Timeout (seconds)"
